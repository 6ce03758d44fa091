"""MoldUDP64 receive: session and sequence tracking, message blocks split into whole messages."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import moldudp64 as mold, itch
from .packet import packet_layout, byte_lane, be_value
from .csr import Register, registers_signature

__all__ = ["MoldUdp64", "message_layout", "gap_layout", "MAX_OPEN_GAPS"]

#: Gaps the sequencer keeps open for filling at a time (default of ``max_open_gaps``).
MAX_OPEN_GAPS = 4


def message_layout(max_message_length: int) -> data.StructLayout:
    """One whole message: its sequence number, its length and its first ``max_message_length``
    bytes (first byte in bits [7:0]; bytes past ``length`` are undefined). ``recovered`` is set
    on a message that filled an open gap: later sequence numbers were delivered before it."""
    return data.StructLayout({
        "sequence_number": 64,
        "length": 16,
        "data": 8 * max_message_length,
        "recovered": 1,
    })


#: A gap event: the missing range as a MoldUDP64 retransmission request names it (the session in
#: wire order, first byte in bits [7:0]; ``message_count`` may exceed one request's 16 bits).
gap_layout = data.StructLayout({
    "session": 8 * mold.HEADER["session"].width,
    "sequence_number": 64,
    "message_count": 64,
})


# Lane-chain phases.
_LEN_HI, _LEN_LO, _BODY, _SKIP = range(4)


class MoldUdp64(wiring.Component):
    """Splits MoldUDP64 datagrams into sequenced messages; drops duplicates, reports and fills gaps.

    The 20-byte header is at fixed lanes (the payload arrives aligned to lane 0); a block may
    start and end in any lane and a word may finish one message and start the next. A block
    shorter than the shortest ITCH message is malformed (it and the rest of the datagram are
    dropped), which also bounds the messages finished per word to one: so each word is framed
    from its start state at once (where the running block ends, where the next length field
    and body start), with byte rotations into the message buffer, not a lane-by-lane chain.

    Live data never waits for a gap: the message past the gap is delivered at once, the gap is
    reported on ``o_gap`` and kept open (up to ``max_open_gaps``, oldest abandoned first); a
    later message whose sequence number is the next missing one of an open gap (a slower feed
    line's copy, or a retransmission the host injects) is delivered with ``recovered`` set.
    docs/pipeline-contract.md, section "moldudp64", is the full rule set.

    Parameters
    ----------
    max_message_length : int
        Bytes of each message kept (longer ones are framed, counted by their sequence number and
        passed on with their true length and their first bytes).
    min_message_length : int
        Shortest legal message block (shorter ones are malformed).
    max_open_gaps : int
        Gaps kept open for filling at a time.

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        MoldUDP64 datagrams (UDP payloads from :class:`~tickwire.hdl.net.NetRx`, or several
        sources merged datagram by datagram by :class:`~tickwire.hdl.arbiter.PacketArbiter`).
    o_stream : Out(stream.Signature(message_layout(max_message_length)))
    o_gap : Out(stream.Signature(gap_layout, always_ready=True))
        One beat per gap detected, the cycle after the message or heartbeat that revealed it.
    regs : Out(registers_signature(MoldUdp64.registers))

    Latency
    -------
    A message leaves one cycle after the word holding its last byte arrives, live or recovered
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
        Register("recovered", 32, "ro", "Messages delivered late because they filled an open gap."),
        Register("late_datagrams", 32, "ro", "Datagrams with whole messages, none of them delivered."),
        Register("gaps_abandoned", 32, "ro", "Open gaps given up unfilled (table full, or new session)."),
        Register("open_gaps", 8, "ro", "Gaps open now, waiting to be filled."),
    )

    def __init__(self, *, max_message_length: int = itch.MAX_LENGTH, min_message_length: int = itch.MIN_LENGTH,
                 max_open_gaps: int = MAX_OPEN_GAPS):
        if not 8 <= max_message_length <= 256:
            raise ValueError(f"max_message_length must be 8..256, not {max_message_length!r}")
        if min_message_length < 7:
            raise ValueError(f"min_message_length must be at least 7 (one message end per word), "
                             f"not {min_message_length!r}")
        if not 1 <= max_open_gaps <= 16:
            raise ValueError(f"max_open_gaps must be 1..16, not {max_open_gaps!r}")
        self.max_message_length = max_message_length
        self.min_message_length = min_message_length
        self.max_open_gaps = max_open_gaps
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(message_layout(max_message_length))),
            "o_gap": Out(stream.Signature(gap_layout, always_ready=True)),
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

        G = self.max_open_gaps
        n_open = Signal(range(G + 1))                       # open gaps, oldest in slot 0
        gap_next = [Signal(64, name=f"gap{k}_next") for k in range(G)]  # next missing number
        gap_end = [Signal(64, name=f"gap{k}_end") for k in range(G)]    # one past the last
        framed = Signal()           # this datagram has finished a message ...
        delivered = Signal()        # ... and delivered one

        status = {"expected_sequence": expected, "open_gaps": n_open}
        counters = {r.name: Signal(r.width, name=r.name) for r in self.registers if r.name not in status}
        for name, sig in {**counters, **status}.items():
            m.d.comb += getattr(self.regs, name).eq(sig)

        def bump(name, by=1):
            m.d.sync += counters[name].eq(counters[name] + by)

        def open_gap(first, end):
            """Keep [first, end) open; with every slot taken the oldest gap is abandoned."""
            with m.If(n_open == G):
                bump("gaps_abandoned")
                for k in range(G - 1):
                    m.d.sync += [gap_next[k].eq(gap_next[k + 1]), gap_end[k].eq(gap_end[k + 1])]
                m.d.sync += [gap_next[G - 1].eq(first), gap_end[G - 1].eq(end)]
            with m.Else():
                with m.Switch(n_open):
                    for k in range(G):
                        with m.Case(k):
                            m.d.sync += [gap_next[k].eq(first), gap_end[k].eq(end)]
                m.d.sync += n_open.eq(n_open + 1)

        o_gap = self.o_gap
        m.d.sync += o_gap.valid.eq(0)

        def report_gap(gap_session, first, count):
            bump("gaps")
            m.d.sync += [counters["last_gap_first"].eq(first), counters["last_gap_count"].eq(count),
                         o_gap.valid.eq(1), o_gap.payload.session.eq(gap_session),
                         o_gap.payload.sequence_number.eq(first), o_gap.payload.message_count.eq(count)]
            open_gap(first, first + count)

        d = i.payload.data
        # Open gaps whose next missing sequence number is the message finishing now.
        fills = Signal(G)
        m.d.comb += fills.eq(Cat((k < n_open) & (gap_next[k] == cur_seq) for k in range(G)))
        delivering = Signal()       # the message finishing now is delivered (live or recovered)
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

        # -- framing: one word at a time, without a lane-by-lane chain ---------------------------
        # The active lanes of a word are [lo, hi). A block is at least ``min_message_length`` (7 or
        # more) bytes, so a word finishes at most one message: the word starts in the current
        # message's body (or its length field), the message may end at lane ``e``, and then the
        # next block's length field and first body bytes follow. Every position below is
        # computed from the word's start state directly (no lane depends on the lane before).
        MIN = self.min_message_length
        start_phase = Signal(2)
        m.d.comb += start_phase.eq(phase)
        with m.If(header_now):
            m.d.comb += start_phase.eq(Mux((h_count == 0) | (h_count == mold.END_OF_SESSION_COUNT),
                                           _SKIP, _LEN_HI))
        seen0 = Mux(header_now, 0, seen)
        cnt = Mux(header_now, h_count, count)
        lane = [byte_lane(d, k) for k in range(8)]

        def lane_at(index):
            """The byte in lane ``index`` (a signal, 0..7)."""
            sel = Signal(8, name="lane_sel")
            with m.Switch(index[:3]):
                for k in range(8):
                    with m.Case(k):
                        m.d.comb += sel.eq(lane[k])
            return sel

        lo = Signal(4)
        hi = Signal(4)
        m.d.comb += [lo.eq(Mux(word == 2, 4, 0)), hi.eq(Mux(word >= 2, i.payload.nbytes, 0))]
        n_act = Signal(4)
        m.d.comb += n_act.eq(Mux(hi > lo, hi - lo, 0))
        b_lo, b_lo1 = lane_at(lo), lane_at(lo + 1)

        # The body run before any message end: first lane a1, first index p1, block length lc.
        body = Signal()             # a body run starts in this word
        a1 = Signal(4)
        p1 = Signal(16)
        lc = Signal(16)
        pre_bad = Signal()
        pre_phase = Signal(2)       # the phase after the word when no body run starts
        pre_blen = Signal(16)
        m.d.comb += [pre_phase.eq(start_phase), pre_blen.eq(blen)]
        with m.Switch(start_phase):
            with m.Case(_BODY):
                m.d.comb += [body.eq(1), a1.eq(lo), p1.eq(idx), lc.eq(blen)]
            with m.Case(_LEN_HI):
                length = Cat(b_lo1, b_lo)
                with m.If(n_act == 1):
                    m.d.comb += [pre_phase.eq(_LEN_LO), pre_blen.eq(Cat(Const(0, 8), b_lo))]
                with m.Elif(n_act >= 2):
                    with m.If(length < MIN):
                        m.d.comb += [pre_bad.eq(1), pre_phase.eq(_SKIP)]
                    with m.Else():
                        m.d.comb += [body.eq(1), a1.eq(lo + 2), lc.eq(length)]
            with m.Case(_LEN_LO):
                length = Cat(b_lo, blen[8:])
                with m.If(n_act >= 1):
                    with m.If(length < MIN):
                        m.d.comb += [pre_bad.eq(1), pre_phase.eq(_SKIP)]
                    with m.Else():
                        m.d.comb += [body.eq(1), a1.eq(lo + 1), lc.eq(length)]
        avail = Signal(4)           # body lanes of the word from a1 on
        m.d.comb += avail.eq(Mux(hi > a1, hi - a1, 0))
        left = Signal(16)           # body bytes of the block still to come
        m.d.comb += left.eq(lc - p1)
        completed = Signal()
        m.d.comb += completed.eq(body & (left[4:] == 0) & (left[:4] <= avail))
        n1 = Signal(4)              # bytes of the run
        m.d.comb += n1.eq(Mux(completed, left[:4], avail))
        e = Signal(4)               # the lane of the message's last byte
        m.d.comb += e.eq(a1 + left[:4] - 1)
        done_len = Signal(16)
        m.d.comb += done_len.eq(lc)
        m.d.comb += delivering.eq(completed & ((cur_seq >= expected) | fills.any()))

        # After the end: the next block's length field at e+1, e+2 and its body from e+3.
        seen1 = Signal(16)
        m.d.comb += seen1.eq(seen0 + 1)
        rest = Signal(4)
        m.d.comb += rest.eq(hi - e - 1)
        b_e1, b_e2 = lane_at(e + 1), lane_at(e + 2)
        next_len = Cat(b_e2, b_e1)
        run2 = Signal()             # a new block's first body bytes follow in this word
        st_phase, st_idx, st_blen, st_seen, st_bad = (Signal(2, name="end_phase"), Signal(16, name="end_idx"),
                                                      Signal(16, name="end_blen"), Signal(16, name="end_seen"),
                                                      Signal(name="end_bad"))
        m.d.comb += [st_phase.eq(pre_phase), st_idx.eq(idx), st_blen.eq(pre_blen), st_seen.eq(seen0),
                     st_bad.eq(pre_bad)]
        with m.If(completed):
            m.d.comb += st_seen.eq(seen1)
            with m.If(seen1 == cnt):
                m.d.comb += st_phase.eq(_SKIP)
            with m.Elif(rest == 0):
                m.d.comb += st_phase.eq(_LEN_HI)
            with m.Elif(rest == 1):
                m.d.comb += [st_phase.eq(_LEN_LO), st_blen.eq(Cat(Const(0, 8), b_e1))]
            with m.Elif(next_len < MIN):
                m.d.comb += [st_phase.eq(_SKIP), st_bad.eq(1)]
            with m.Else():
                # At most 5 body bytes follow: fewer than any block, so no second end here.
                m.d.comb += [run2.eq(1), st_phase.eq(_BODY), st_blen.eq(next_len), st_idx.eq(rest - 2)]
        with m.Elif(body):
            m.d.comb += [st_phase.eq(_BODY), st_blen.eq(lc), st_idx.eq(p1 + avail)]

        # Bytes into the message buffer: the run before the end at indices p1.., the next block's
        # first bytes at 0.. (the buffer starts again from zeros when a message ends).
        shift1 = Signal(3)
        m.d.comb += shift1.eq(a1[:3] - p1[:3])
        shift2 = Signal(3)
        m.d.comb += shift2.eq(e[:3] + 3)
        rot1 = [lane_at(Const(q, 3) + shift1) for q in range(8)]
        rot2 = [lane_at(Const(q, 3) + shift2) for q in range(8)]
        span = (MAX + 8).bit_length()
        p1_near = Signal()          # p1 within reach of the kept bytes
        m.d.comb += p1_near.eq(p1[span:] == 0)
        end1 = Signal(span + 1)
        m.d.comb += end1.eq(p1[:span] + n1)
        n2 = Signal(4)
        m.d.comb += n2.eq(Mux(run2, rest - 2, 0))
        out_data = Signal(8 * MAX)
        new_buf = Signal(8 * MAX)
        for q in range(MAX):
            kept = byte_lane(buf, q)
            written = Mux(body & p1_near & (p1[:span] <= q) & (q < end1), rot1[q % 8], kept)
            fresh = Mux(q < n2, rot2[q % 8], 0) if q < 8 else Const(0, 8)
            m.d.comb += [out_data[8 * q:8 * q + 8].eq(written),
                         new_buf[8 * q:8 * q + 8].eq(Mux(completed, fresh, written))]

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
                    # The old session's sequence numbers mean nothing any more.
                    bump("gaps_abandoned", n_open)
                    m.d.sync += n_open.eq(0)
                with m.If(h_count == mold.HEARTBEAT_COUNT):
                    bump("heartbeats")
                    with m.If(h_seq > exp_after):
                        report_gap(h_session, exp_after, h_seq - exp_after)
                        m.d.sync += expected.eq(h_seq)
                with m.If(h_count == mold.END_OF_SESSION_COUNT):
                    bump("end_of_session")
            m.d.sync += [phase.eq(st_phase), idx.eq(st_idx), blen.eq(st_blen), seen.eq(st_seen),
                         buf.eq(new_buf)]
            with m.If(completed):
                m.d.sync += [cur_seq.eq(cur_seq + 1), framed.eq(1)]

                def deliver(recovered):
                    bump("messages")
                    m.d.sync += [delivered.eq(1), o.valid.eq(1),
                                 o.payload.sequence_number.eq(cur_seq), o.payload.length.eq(done_len),
                                 o.payload.data.eq(out_data), o.payload.recovered.eq(recovered)]

                with m.If(cur_seq >= expected):
                    deliver(0)
                    m.d.sync += expected.eq(cur_seq + 1)
                    with m.If(cur_seq > expected):
                        report_gap(session, expected, cur_seq - expected)
                with m.Elif(fills.any()):
                    deliver(1)
                    bump("recovered")
                    # The filled gap moves on by one; a gap filled completely leaves the table
                    # and the younger ones move down a slot.
                    closes = Cat(fills[k] & (gap_next[k] + 1 == gap_end[k]) for k in range(G))
                    for k in range(G):
                        with m.If(closes[:k + 1].any()):
                            if k + 1 < G:
                                m.d.sync += [gap_next[k].eq(gap_next[k + 1]), gap_end[k].eq(gap_end[k + 1])]
                        with m.Elif(fills[k]):
                            m.d.sync += gap_next[k].eq(gap_next[k] + 1)
                    with m.If(closes.any()):
                        m.d.sync += n_open.eq(n_open - 1)
                with m.Else():
                    bump("duplicates")
            with m.If(st_bad):
                bump("malformed")
            with m.If(i.payload.last):
                m.d.sync += [word.eq(0), phase.eq(_SKIP), framed.eq(0), delivered.eq(0)]
                with m.If((framed | completed) & ~(delivered | delivering)):
                    bump("late_datagrams")
                short = (word < 2) | (header_now & (i.payload.nbytes < 4))
                with m.If(short):
                    bump("malformed")
                with m.Elif(~st_bad & ((st_phase == _LEN_LO) | (st_phase == _BODY) |
                                       ((st_phase == _LEN_HI) & (st_seen != cnt)))):
                    bump("truncated")
        return m
