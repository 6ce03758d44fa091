"""10G Ethernet MAC on a 64-bit XGMII: store-and-forward receive with FCS check, transmit with FCS."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, fifo, data
from amaranth.lib.wiring import In, Out

from ..protocols.net import MIN_FRAME_LENGTH, MIN_FRAME_LENGTH_WITH_FCS
from .packet import packet_layout, byte_lane
from .csr import Register, registers_signature
from .crc32 import CRC_INIT, CRC_RESIDUE, crc32_update

__all__ = ["XgmiiSignature", "MacRx", "MacTx", "XGMII_IDLE", "XGMII_START", "XGMII_TERMINATE",
           "XGMII_ERROR", "PREAMBLE_SFD"]

XGMII_IDLE = 0x07
XGMII_START = 0xFB
XGMII_TERMINATE = 0xFD
XGMII_ERROR = 0xFE
#: Lanes 1..7 of a lane-0 start word: six preamble bytes and the start frame delimiter.
PREAMBLE_SFD = bytes([0x55] * 6 + [0xD5])


class XgmiiSignature(wiring.Signature):
    """One direction of a 64-bit XGMII: ``data`` (lane k in bits [8k+7:8k]) and ``ctrl`` (lane k in bit k)."""

    def __init__(self):
        super().__init__({"data": Out(64), "ctrl": Out(8)})


class MacRx(wiring.Component):
    """XGMII receive: frame delineation (start in lane 0 or 4), FCS check, store and forward.

    A frame is written into the buffer as it arrives and released downstream only once its FCS
    checked good, so nothing downstream ever sees a bad frame. The FCS is stripped.

    Parameters
    ----------
    buffer_words : int
        Depth of the frame buffer in 64-bit words.
    max_frame : int
        Longest frame accepted, bytes including FCS.

    Members
    -------
    xgmii : In(XgmiiSignature)
    o_stream : Out(stream.Signature(packet_layout()))
    regs : Out(registers_signature(MacRx.registers))

    Latency
    -------
    Store and forward: the first word leaves 5 cycles after the XGMII word holding /T/ arrives
    (4 when the frame started in lane 4 and /T/ is in lanes 0..3), when the output is idle;
    ``mac_rx_latency`` in tests/hdl/test_mac.py measures it.
    """

    registers = (
        Register("frames_ok", 32, "ro", "Frames received with a good FCS and passed on."),
        Register("bad_fcs", 32, "ro", "Frames dropped for a bad FCS or an /E/ inside the frame."),
        Register("runt", 32, "ro", "Frames dropped for being shorter than 64 bytes with FCS."),
        Register("oversize", 32, "ro", "Frames dropped for being longer than max_frame."),
        Register("overflow", 32, "ro", "Frames dropped because the frame buffer was full."),
    )

    def __init__(self, *, buffer_words: int = 512, max_frame: int = 1536):
        if buffer_words < 2 * ((max_frame + 7) // 8) or buffer_words & (buffer_words - 1):
            raise ValueError(f"buffer_words must be a power of two holding two max frames, "
                             f"not {buffer_words!r}")
        if not 64 <= max_frame <= 9600:
            raise ValueError(f"max_frame must be 64..9600, not {max_frame!r}")
        self.buffer_words = buffer_words
        self.max_frame = max_frame
        super().__init__({
            "xgmii": In(XgmiiSignature()),
            "o_stream": Out(stream.Signature(packet_layout())),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        max_words = (self.max_frame + 7) // 8

        # -- lane alignment: a start in lane 4 is shifted down by four lanes --------------------
        prev_d = Signal(64)
        prev_c = Signal(8)
        m.d.sync += [prev_d.eq(self.xgmii.data), prev_c.eq(self.xgmii.ctrl)]
        shift = Signal()
        shift_now = Signal()
        start0 = prev_c[0] & (byte_lane(prev_d, 0) == XGMII_START)
        start4 = prev_c[4] & (byte_lane(prev_d, 4) == XGMII_START)
        m.d.comb += shift_now.eq(Mux(start0, 0, Mux(start4, 1, shift)))
        m.d.sync += shift.eq(shift_now)
        al_d = Signal(64)
        al_c = Signal(8)
        with m.If(shift_now):
            m.d.comb += [al_d.eq(Cat(prev_d[32:], self.xgmii.data[:32])),
                         al_c.eq(Cat(prev_c[4:], self.xgmii.ctrl[:4]))]
        with m.Else():
            m.d.comb += [al_d.eq(prev_d), al_c.eq(prev_c)]

        # -- frame delineation on the aligned lanes --------------------------------------------
        is_start = al_c[0] & (byte_lane(al_d, 0) == XGMII_START) & (al_c[1:] == 0) & \
            (al_d[8:] == int.from_bytes(PREAMBLE_SFD, "little"))
        # First lane holding a control character (8 when none).
        term_lane = Signal(4)
        m.d.comb += term_lane.eq(8)
        for k in reversed(range(8)):
            with m.If(al_c[k]):
                m.d.comb += term_lane.eq(k)
        term_ok = Signal()
        m.d.comb += term_ok.eq(0)
        with m.Switch(term_lane):
            for k in range(8):
                with m.Case(k):
                    m.d.comb += term_ok.eq(byte_lane(al_d, k) == XGMII_TERMINATE)

        data_fifo = m.submodules.data_fifo = fifo.SyncFIFOBuffered(width=64, depth=self.buffer_words)
        # Descriptor: good, length in bytes including FCS, words written.
        desc_layout = data.StructLayout({"good": 1, "length": 16, "words": 12})
        desc_fifo = m.submodules.desc_fifo = fifo.SyncFIFOBuffered(
            width=desc_layout.size, depth=max(4, self.buffer_words // 8))

        in_frame = Signal()
        crc = Signal(32, init=CRC_INIT)
        length = Signal(16)
        words = Signal(12)
        error = Signal()        # /E/ or a control character other than /T/ inside the frame
        dropping = Signal()     # buffer overflow: stop writing, drop at the end
        too_long = Signal()

        nbytes = Signal(4)
        m.d.comb += nbytes.eq(term_lane)
        crc_next = crc32_update(m, crc, al_d, nbytes)

        end_pending = Signal()
        end_crc = Signal(32)
        end_kind = Signal(range(5))  # 0 ok, 1 bad fcs, 2 runt, 3 oversize, 4 overflow

        counters = {r.name: Signal(32, name=r.name) for r in self.registers}
        for name, sig in counters.items():
            m.d.comb += getattr(self.regs, name).eq(sig)

        m.d.sync += end_pending.eq(0)
        with m.If(~in_frame):
            with m.If(is_start):
                m.d.sync += [in_frame.eq(1), crc.eq(CRC_INIT), length.eq(0), words.eq(0),
                             error.eq(0), too_long.eq(0), dropping.eq(desc_fifo.level >= desc_fifo.depth - 1)]
        with m.Else():
            new_length = length + nbytes
            with m.If(nbytes != 0):
                m.d.sync += [crc.eq(crc_next), length.eq(new_length)]
                with m.If(~dropping & ~too_long):
                    with m.If(words == max_words):
                        m.d.sync += too_long.eq(1)
                    with m.Elif(data_fifo.w_rdy):
                        m.d.comb += [data_fifo.w_en.eq(1), data_fifo.w_data.eq(al_d)]
                        m.d.sync += words.eq(words + 1)
                    with m.Else():
                        m.d.sync += dropping.eq(1)
            with m.If(term_lane != 8):
                m.d.sync += [in_frame.eq(0), end_pending.eq(1), end_crc.eq(crc_next),
                             error.eq(error | ~term_ok)]
        with m.If(end_pending):
            bad_fcs = error | (end_crc != CRC_RESIDUE)
            with m.If(dropping):
                m.d.comb += end_kind.eq(4)
            with m.Elif(error):
                # An /E/ (or stray control character) cut the frame: a corrupt frame, whatever
                # length it reached.
                m.d.comb += end_kind.eq(1)
            with m.Elif(too_long | (length > self.max_frame)):
                m.d.comb += end_kind.eq(3)
            with m.Elif(length < MIN_FRAME_LENGTH_WITH_FCS):
                m.d.comb += end_kind.eq(2)
            with m.Elif(bad_fcs):
                m.d.comb += end_kind.eq(1)
            with m.Else():
                m.d.comb += end_kind.eq(0)
            desc = Signal(desc_layout)
            m.d.comb += [desc.good.eq(end_kind == 0), desc.length.eq(length), desc.words.eq(words)]
            # When the frame was dropped before any write (descriptor FIFO full) nothing is pushed.
            with m.If(words != 0):
                m.d.comb += [desc_fifo.w_en.eq(1), desc_fifo.w_data.eq(desc)]
            with m.Switch(end_kind):
                for kind, name in enumerate(("frames_ok", "bad_fcs", "runt", "oversize", "overflow")):
                    with m.Case(kind):
                        m.d.sync += counters[name].eq(counters[name] + 1)

        # -- read side: forward good frames without their FCS, discard the rest ---------------
        active = Signal()
        cur = Signal(desc_layout)
        words_left = Signal(12)     # words still in the data FIFO for this frame
        out_left = Signal(12)       # words still to send downstream
        payload_len = Signal(16)
        m.d.comb += payload_len.eq(cur.length - 4)
        with m.If(~active):
            m.d.comb += desc_fifo.r_en.eq(1)
            with m.If(desc_fifo.r_rdy):
                d = Signal(desc_layout)
                m.d.comb += d.eq(desc_fifo.r_data)
                m.d.sync += [active.eq(1), cur.eq(d), words_left.eq(d.words),
                             out_left.eq(Mux(d.good, (d.length - 4 + 7) >> 3, 0))]
        with m.Else():
            sending = out_left != 0
            m.d.comb += [
                self.o_stream.valid.eq(sending & data_fifo.r_rdy),
                self.o_stream.payload.data.eq(data_fifo.r_data),
                self.o_stream.payload.length.eq(payload_len),
                self.o_stream.payload.last.eq(out_left == 1),
                self.o_stream.payload.nbytes.eq(Mux(out_left == 1, (payload_len - 1)[:3] + 1, 8)),
            ]
            take = Signal()
            m.d.comb += take.eq(Mux(sending, self.o_stream.ready, 1) & data_fifo.r_rdy)
            m.d.comb += data_fifo.r_en.eq(take)
            with m.If(take):
                m.d.sync += words_left.eq(words_left - 1)
                with m.If(sending):
                    m.d.sync += out_left.eq(out_left - 1)
                with m.If(words_left == 1):
                    m.d.sync += active.eq(0)
        return m


class MacTx(wiring.Component):
    """XGMII transmit: start in lane 0, preamble and SFD, padding to 60 bytes, FCS, /T/, idle gap.

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        Frames without FCS; a frame's words must follow one another without a gap (an underrun
        ends the frame with /E/ and is counted).
    xgmii : Out(XgmiiSignature)
    regs : Out(registers_signature(MacTx.registers))

    Latency
    -------
    The start word goes out the cycle after the first word is offered, data one cycle later
    (tests/hdl/test_mac.py).
    """

    registers = (
        Register("frames_sent", 32, "ro", "Frames sent."),
        Register("underruns", 32, "ro", "Frames cut short with /E/ because a word was missing."),
    )

    def __init__(self, *, ifg_words: int = 2):
        if ifg_words < 2:
            raise ValueError(f"ifg_words must be at least 2 (12 idle bytes), not {ifg_words!r}")
        self.ifg_words = ifg_words
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "xgmii": Out(XgmiiSignature()),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        idle_word = int.from_bytes(bytes([XGMII_IDLE] * 8), "little")
        start_word = int.from_bytes(bytes([XGMII_START]) + PREAMBLE_SFD, "little")

        frames_sent = Signal(32)
        underruns = Signal(32)
        m.d.comb += [self.regs.frames_sent.eq(frames_sent), self.regs.underruns.eq(underruns)]

        out_d = Signal(64, init=idle_word)
        out_c = Signal(8, init=0xFF)
        m.d.comb += [self.xgmii.data.eq(out_d), self.xgmii.ctrl.eq(out_c)]

        # The word on hand: accepted last cycle, goes out this cycle.
        held_d = Signal(64)
        held_n = Signal(4)
        held_last = Signal()
        crc = Signal(32, init=CRC_INIT)
        count = Signal(16)        # bytes accepted so far, padding included
        padding = Signal()        # the real frame ended short: zero words follow until 60 bytes
        discard = Signal()        # after an underrun: drop the rest of the frame
        spill = Signal(32)        # FCS bytes that did not fit the last data word
        spill_n = Signal(3)
        ifg = Signal(range(self.ifg_words + 1))

        # -- the next word to send: the input stream, or zero padding --------------------------
        src_valid = Signal()
        src_d = Signal(64)
        src_n = Signal(4)
        src_last = Signal()
        src_pad = Signal()        # accepting this word starts padding
        pad_need = Signal(16)
        m.d.comb += pad_need.eq(MIN_FRAME_LENGTH - count)
        with m.If(padding):
            m.d.comb += [src_valid.eq(1), src_d.eq(0),
                         src_n.eq(Mux(pad_need >= 8, 8, pad_need)), src_last.eq(pad_need <= 8)]
        with m.Else():
            p = self.i_stream.payload
            mask = Signal(64)
            for k in range(8):
                m.d.comb += mask[8 * k:8 * k + 8].eq(Mux(k < p.nbytes, 0xFF, 0))
            short = p.last & (count + p.nbytes < MIN_FRAME_LENGTH)
            m.d.comb += [src_valid.eq(self.i_stream.valid), src_d.eq(p.data & mask)]
            with m.If(short):
                m.d.comb += [src_n.eq(Mux(pad_need >= 8, 8, pad_need)), src_last.eq(pad_need <= 8),
                             src_pad.eq(pad_need > 8)]
            with m.Else():
                m.d.comb += [src_n.eq(Mux(p.last, p.nbytes, 8)), src_last.eq(p.last)]

        crc_next = crc32_update(m, crc, src_d, src_n)
        take = Signal()

        def accept():
            m.d.comb += take.eq(1)
            m.d.sync += [held_d.eq(src_d), held_n.eq(src_n), held_last.eq(src_last),
                         count.eq(count + src_n), crc.eq(crc_next)]
            with m.If(src_pad):
                m.d.sync += padding.eq(1)
            with m.If(src_last):
                m.d.sync += padding.eq(0)

        m.d.comb += self.i_stream.ready.eq(take & ~padding)
        with m.If(discard):
            m.d.comb += self.i_stream.ready.eq(1)
            with m.If(self.i_stream.valid & self.i_stream.payload.last):
                m.d.sync += discard.eq(0)

        fcs = Signal(32)
        m.d.comb += fcs.eq(~crc)
        with m.FSM():
            with m.State("IDLE"):
                # Waits for the inter-frame gap to pass and a frame to be offered.
                m.d.sync += [out_d.eq(idle_word), out_c.eq(0xFF)]
                with m.If(ifg != 0):
                    m.d.sync += ifg.eq(ifg - 1)
                with m.Elif(src_valid & ~discard):
                    m.d.sync += [out_d.eq(start_word), out_c.eq(0x01)]
                    accept()
                    m.next = "DATA"
            with m.State("DATA"):
                # Sends the held word and takes the next one, until the held word is the last.
                with m.If(~held_last):
                    m.d.sync += [out_d.eq(held_d), out_c.eq(0)]
                    with m.If(src_valid):
                        accept()
                    with m.Else():
                        # Underrun: the frame cannot be paused on XGMII; end it with /E/ /T/.
                        err = int.from_bytes(bytes([XGMII_ERROR, XGMII_TERMINATE] + [XGMII_IDLE] * 6), "little")
                        m.d.sync += [out_d.eq(err), out_c.eq(0xFF), underruns.eq(underruns + 1),
                                     discard.eq(1), ifg.eq(self.ifg_words), padding.eq(0),
                                     crc.eq(CRC_INIT), count.eq(0)]
                        m.next = "IDLE"
                with m.Else():
                    # Last word: data, then FCS (little-endian), then /T/ where they fit.
                    with m.Switch(held_n):
                        for n in range(1, 9):
                            with m.Case(n):
                                lanes = []
                                ctrl = 0
                                for k in range(8):
                                    if k < n:
                                        lanes.append(byte_lane(held_d, k))
                                    elif k < n + 4:
                                        lanes.append(fcs[8 * (k - n):8 * (k - n) + 8])
                                    elif k == n + 4:
                                        lanes.append(Const(XGMII_TERMINATE, 8))
                                        ctrl |= 1 << k
                                    else:
                                        lanes.append(Const(XGMII_IDLE, 8))
                                        ctrl |= 1 << k
                                m.d.sync += [out_d.eq(Cat(*lanes)), out_c.eq(ctrl)]
                                if n + 4 <= 7:
                                    m.d.sync += ifg.eq(self.ifg_words)
                                    m.next = "IDLE"
                                else:
                                    m.d.sync += [spill.eq(fcs >> (8 * (8 - n))), spill_n.eq(n + 4 - 8)]
                                    m.next = "TAIL"
                    m.d.sync += [frames_sent.eq(frames_sent + 1), crc.eq(CRC_INIT), count.eq(0)]
            with m.State("TAIL"):
                # The FCS bytes that spilled over, then /T/ and idles.
                with m.Switch(spill_n):
                    for s in range(0, 5):   # n + 4 - 8 FCS bytes spill: 0..4
                        with m.Case(s):
                            lanes = [spill[8 * k:8 * k + 8] for k in range(s)]
                            lanes.append(Const(XGMII_TERMINATE, 8))
                            lanes += [Const(XGMII_IDLE, 8)] * (7 - s)
                            ctrl = 0xFF & ~((1 << s) - 1)
                            m.d.sync += [out_d.eq(Cat(*lanes)), out_c.eq(ctrl)]
                m.d.sync += ifg.eq(self.ifg_words)
                m.next = "IDLE"
        return m
