"""MoldUDP64 receive: session and sequence tracking, message blocks split into whole messages."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import moldudp64 as mold, itch
from .packet import packet_layout, byte_lane, be_value
from .csr import Register, registers_signature

__all__ = ["MoldUdp64", "message_layout"]


def message_layout(max_message_length: int) -> data.StructLayout:
    """One whole message: its sequence number, its length and its first ``max_message_length``
    bytes (first byte in bits [7:0]; bytes past ``length`` are undefined)."""
    return data.StructLayout({
        "sequence_number": 64,
        "length": 16,
        "data": 8 * max_message_length,
    })


# Lane-chain phases.
_LEN_HI, _LEN_LO, _BODY, _SKIP = range(4)


class MoldUdp64(wiring.Component):
    """Splits MoldUDP64 datagrams into sequenced messages; drops duplicates, reports gaps.

    The 20-byte header is at fixed lanes (the payload arrives aligned to lane 0); message blocks
    are framed by a chain of eight per-lane steps, so a block may start and end in any lane and
    a word may finish one message and start the next. A block shorter than the shortest ITCH
    message is malformed (it and the rest of the datagram are dropped), which also bounds the
    messages finished per word to one.

    Parameters
    ----------
    max_message_length : int
        Bytes of each message kept (longer ones are framed, counted by their sequence number and
        passed on with their true length and their first bytes).

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        UDP payloads from :class:`~tickwire.hdl.net.NetRx`.
    o_stream : Out(stream.Signature(message_layout(max_message_length)))
    regs : Out(registers_signature(MoldUdp64.registers))

    Latency
    -------
    A message leaves one cycle after the word holding its last byte arrives
    (tests/hdl/test_moldudp64.py).
    """

    registers = (
        Register("messages", 32, "ro", "Messages delivered in sequence."),
        Register("duplicates", 32, "ro", "Messages dropped as already seen (sequence below expected)."),
        Register("gaps", 32, "ro", "Gaps detected (sequence above expected)."),
        Register("last_gap_first", 64, "ro", "First missing sequence number of the latest gap."),
        Register("last_gap_count", 32, "ro", "Number of messages missing in the latest gap."),
        Register("malformed", 32, "ro", "Datagrams cut short: under 20 bytes or a block length below 12."),
        Register("truncated", 32, "ro", "Datagrams whose blocks run past their end or fall short of the count."),
        Register("session_changes", 32, "ro", "Datagrams that carried a new session."),
        Register("heartbeats", 32, "ro", "Heartbeat datagrams (message count 0)."),
        Register("end_of_session", 32, "ro", "End-of-session datagrams (message count 0xFFFF)."),
        Register("expected_sequence", 64, "ro", "Next sequence number expected."),
    )

    def __init__(self, *, max_message_length: int = itch.MAX_LENGTH, min_message_length: int = itch.MIN_LENGTH):
        if not 8 <= max_message_length <= 256:
            raise ValueError(f"max_message_length must be 8..256, not {max_message_length!r}")
        if min_message_length < 7:
            raise ValueError(f"min_message_length must be at least 7 (one message end per word), "
                             f"not {min_message_length!r}")
        self.max_message_length = max_message_length
        self.min_message_length = min_message_length
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(message_layout(max_message_length))),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        MAX = self.max_message_length
        hdr = mold.HEADER
        s_off, s_len = hdr["session"].offset, hdr["session"].width
        q_off, q_len = hdr["sequence_number"].offset, hdr["sequence_number"].width
        c_off, c_len = hdr["message_count"].offset, hdr["message_count"].width
        assert hdr.length == 20  # fixed lanes below: header ends in word 2, lane 3

        word = Signal(2)            # payload word index, saturating at 3
        head = Signal(128)          # payload bytes 0..15
        session = Signal(8 * s_len)
        have_session = Signal()
        expected = Signal(64)
        cur_seq = Signal(64)
        count = Signal(16)
        phase = Signal(2, init=_SKIP)
        idx = Signal(16)
        blen = Signal(16)
        seen = Signal(16)
        buf = Signal(8 * MAX)

        counters = {r.name: Signal(r.width, name=r.name) for r in self.registers}
        for name, sig in counters.items():
            if name != "expected_sequence":
                m.d.comb += getattr(self.regs, name).eq(sig)
        m.d.comb += self.regs.expected_sequence.eq(expected)

        def bump(name):
            m.d.sync += counters[name].eq(counters[name] + 1)

        d = i.payload.data
        take = Signal()
        m.d.comb += [i.ready.eq(~o.valid | o.ready), take.eq(i.valid & i.ready)]
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

        # -- header, word 2 -----------------------------------------------------------------
        all_bytes = [byte_lane(head, k) for k in range(16)] + [byte_lane(d, k) for k in range(8)]
        h_session = Cat(*all_bytes[s_off:s_off + s_len])  # wire order, first byte in bits [7:0]
        h_seq = be_value(all_bytes[q_off:q_off + q_len])
        h_count = be_value(all_bytes[c_off:c_off + c_len])
        header_now = (word == 2)
        new_session = ~have_session | (h_session != session)
        exp_after = Signal(64)
        m.d.comb += exp_after.eq(Mux(new_session, h_seq, expected))

        # -- lane chain ------------------------------------------------------------------------
        start_phase = Signal(2)
        m.d.comb += start_phase.eq(phase)
        with m.If(header_now):
            m.d.comb += start_phase.eq(Mux((h_count == 0) | (h_count == mold.END_OF_SESSION_COUNT),
                                           _SKIP, _LEN_HI))
        st_phase, st_idx, st_blen, st_seen = start_phase, idx, blen, Mux(header_now, 0, seen)
        st_done = Const(0, 1)
        st_bad = Const(0, 1)
        cnt = Mux(header_now, h_count, count)
        lanes = []
        for k in range(8):
            active = Signal(name=f"lane{k}_active")
            m.d.comb += active.eq((k < i.payload.nbytes) & (word >= 2) & ((word != 2) | (k >= 4)))
            b = byte_lane(d, k)
            n_phase = Signal(2, name=f"lane{k}_phase")
            n_idx = Signal(16, name=f"lane{k}_idx")
            n_blen = Signal(16, name=f"lane{k}_blen")
            n_seen = Signal(16, name=f"lane{k}_seen")
            n_done = Signal(name=f"lane{k}_done")
            n_bad = Signal(name=f"lane{k}_bad")
            we = Signal(name=f"lane{k}_we")
            complete = Signal(name=f"lane{k}_complete")
            m.d.comb += [n_phase.eq(st_phase), n_idx.eq(st_idx), n_blen.eq(st_blen),
                         n_seen.eq(st_seen), n_done.eq(st_done), n_bad.eq(st_bad)]
            with m.If(active):
                with m.Switch(st_phase):
                    with m.Case(_LEN_HI):
                        m.d.comb += [n_blen.eq(Cat(Const(0, 8), b)), n_phase.eq(_LEN_LO)]
                    with m.Case(_LEN_LO):
                        length = Cat(b, st_blen[8:])
                        m.d.comb += [n_blen.eq(length), n_idx.eq(0)]
                        with m.If(length < self.min_message_length):
                            m.d.comb += [n_phase.eq(_SKIP), n_bad.eq(1)]
                        with m.Else():
                            m.d.comb += n_phase.eq(_BODY)
                    with m.Case(_BODY):
                        m.d.comb += [we.eq(1), n_idx.eq(st_idx + 1)]
                        with m.If(st_idx + 1 == st_blen):
                            m.d.comb += [complete.eq(1), n_done.eq(1), n_seen.eq(st_seen + 1),
                                         n_phase.eq(Mux(st_seen + 1 == cnt, _SKIP, _LEN_HI))]
            lanes.append((b, we, st_idx, st_done, complete, st_blen))
            st_phase, st_idx, st_blen, st_seen, st_done, st_bad = n_phase, n_idx, n_blen, n_seen, n_done, n_bad

        completed = st_done
        done_len = Signal(16)
        for b, we, lidx, before, complete, lblen in lanes:
            with m.If(complete):
                m.d.comb += done_len.eq(lblen)

        out_data = Signal(8 * MAX)
        new_buf = Signal(8 * MAX)
        for p in range(MAX):
            cur_v = byte_lane(buf, p)
            next_v = Const(0, 8)
            for b, we, lidx, before, complete, lblen in lanes:
                hit = we & (lidx == p)
                cur_v = Mux(hit & ~before, b, cur_v)
                next_v = Mux(hit & before, b, next_v)
            m.d.comb += [out_data[8 * p:8 * p + 8].eq(cur_v),
                         new_buf[8 * p:8 * p + 8].eq(Mux(completed, next_v, cur_v))]

        with m.If(take):
            with m.If(word != 3):
                m.d.sync += word.eq(word + 1)
            with m.If(word == 0):
                m.d.sync += head[:64].eq(d)
            with m.If(word == 1):
                m.d.sync += head[64:].eq(d)
            with m.If(header_now & (i.payload.nbytes >= 4)):
                m.d.sync += [session.eq(h_session), have_session.eq(1), count.eq(h_count),
                             cur_seq.eq(h_seq), expected.eq(exp_after)]
                with m.If(have_session & (h_session != session)):
                    bump("session_changes")
                with m.If(h_count == mold.HEARTBEAT_COUNT):
                    bump("heartbeats")
                    with m.If(h_seq > exp_after):
                        bump("gaps")
                        m.d.sync += [counters["last_gap_first"].eq(exp_after),
                                     counters["last_gap_count"].eq(h_seq - exp_after),
                                     expected.eq(h_seq)]
                with m.If(h_count == mold.END_OF_SESSION_COUNT):
                    bump("end_of_session")
            m.d.sync += [phase.eq(st_phase), idx.eq(st_idx), blen.eq(st_blen), seen.eq(st_seen),
                         buf.eq(new_buf)]
            with m.If(completed):
                m.d.sync += cur_seq.eq(cur_seq + 1)
                with m.If(cur_seq < expected):
                    bump("duplicates")
                with m.Else():
                    bump("messages")
                    m.d.sync += [expected.eq(cur_seq + 1), o.valid.eq(1),
                                 o.payload.sequence_number.eq(cur_seq), o.payload.length.eq(done_len),
                                 o.payload.data.eq(out_data)]
                    with m.If(cur_seq > expected):
                        bump("gaps")
                        m.d.sync += [counters["last_gap_first"].eq(expected),
                                     counters["last_gap_count"].eq(cur_seq - expected)]
            with m.If(st_bad):
                bump("malformed")
            with m.If(i.payload.last):
                m.d.sync += [word.eq(0), phase.eq(_SKIP)]
                short = (word < 2) | (header_now & (i.payload.nbytes < 4))
                with m.If(short):
                    bump("malformed")
                with m.Elif(~st_bad & ((st_phase == _LEN_LO) | (st_phase == _BODY) |
                                       ((st_phase == _LEN_HI) & (st_seen != cnt)))):
                    bump("truncated")
        return m
