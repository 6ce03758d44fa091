"""1 GbE RGMII MAC front end: DDR pins to GMII bytes, and GMII bytes to and from 64-bit XGMII words."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux, ClockDomain, ClockSignal, Elaboratable, IOPort
from amaranth.lib import wiring, fifo, io
from amaranth.lib.wiring import In, Out

from .mac import XgmiiSignature, XGMII_IDLE, XGMII_START, XGMII_TERMINATE, XGMII_ERROR, PREAMBLE_SFD

__all__ = ["GmiiSignature", "admit_whole_frames", "RgmiiPhy", "GmiiToXgmii", "XgmiiToGmii", "RgmiiMac", "RGMII_CLOCK_HZ",
           "XGMII_WORD_RATE_HZ", "IDLE_WORD", "START_WORD"]

#: RGMII clock at 1 Gb/s: 125 MHz, one byte per cycle (a nibble on each edge).
RGMII_CLOCK_HZ = 125_000_000
#: 64-bit words per second at 1 Gb/s: the lowest core clock that keeps up with the wire.
XGMII_WORD_RATE_HZ = RGMII_CLOCK_HZ // 8
IDLE_WORD = int.from_bytes(bytes([XGMII_IDLE] * 8), "little")
#: The XGMII word that opens every frame: /S/ in lane 0, six preamble bytes, the SFD.
START_WORD = int.from_bytes(bytes([XGMII_START]) + PREAMBLE_SFD, "little")
_SFD = PREAMBLE_SFD[-1]
_PREAMBLE = PREAMBLE_SFD[0]
#: One FIFO entry: an XGMII word, its control lanes and a flag for the frame's last word.
_ENTRY_BITS = 64 + 8 + 1


class GmiiSignature(wiring.Signature):
    """One direction of GMII: a byte per cycle, ``en`` (RX_DV / TX_EN) and ``er`` (RX_ER / TX_ER)."""

    def __init__(self):
        super().__init__({"data": Out(8), "en": Out(1), "er": Out(1)})


class _DdrModel(Elaboratable):
    """What ``io.DDRBuffer`` does, for the simulator (Amaranth cannot simulate DDR buffers): a
    rising and a falling-edge register on the same clock. ``i[0]`` is the bit sampled on the
    rising edge, ``i[1]`` the one on the following falling edge, both presented one cycle later;
    ``o[0]`` leaves on the rising edge, ``o[1]`` on the falling edge."""

    def __init__(self, direction, port, domain):
        self.port = port
        self.domain = domain
        self.direction = direction
        width = len(port)
        self.i = [Signal(width, name="i0"), Signal(width, name="i1")]
        self.o = [Signal(width, name="o0"), Signal(width, name="o1")]

    def elaborate(self, platform):
        m = Module()
        fall = f"{self.domain}_fall"
        m.domains += ClockDomain(fall, clk_edge="neg", reset_less=True, local=True)
        m.d.comb += ClockSignal(fall).eq(ClockSignal(self.domain))
        if self.direction == "i":
            rise_q = Signal(len(self.port))
            fall_q = Signal(len(self.port))
            m.d[self.domain] += rise_q.eq(self.port.i)
            m.d[fall] += fall_q.eq(self.port.i)
            m.d[self.domain] += [self.i[0].eq(rise_q), self.i[1].eq(fall_q)]
        else:
            rise_q = Signal(len(self.port))
            fall_q = Signal(len(self.port))
            m.d[self.domain] += [rise_q.eq(self.o[0]), fall_q.eq(self.o[1])]
            # Drive the rising-edge half while the clock is high, the falling-edge half after.
            m.d.comb += [self.port.o.eq(Cat(*[
                (ClockSignal(self.domain) & rise_q[k]) | (~ClockSignal(self.domain) & fall_q[k])
                for k in range(len(self.port))])), self.port.oe.eq(1)]
        return m


def _ddr(m, name, direction, port, domain, platform):
    """A DDR buffer on ``port``: the vendor primitive on hardware, a model in simulation. Returns
    (i0, i1) for an input and (o0, o1) for an output."""
    if platform is not None:
        if direction == "i":
            buf = m.submodules[name] = io.DDRBuffer("i", port, i_domain=domain)
            return buf.i[0], buf.i[1]
        buf = m.submodules[name] = io.DDRBuffer("o", port, o_domain=domain)
        return buf.o[0], buf.o[1]
    buf = m.submodules[name] = _DdrModel(direction, port, domain)
    return (buf.i[0], buf.i[1]) if direction == "i" else (buf.o[0], buf.o[1])


class RgmiiPhy(wiring.Component):
    """RGMII pins to GMII: DDR input and output registers (IDDRX1F / ODDRX1F on ECP5 through
    ``io.DDRBuffer``), the receive clock domain from the PHY's RXC, TXC forwarded from the transmit
    domain.

    Receive: the low nibble is sampled on RXC's rising edge, the high nibble on its falling edge;
    RX_CTL is RX_DV on the rising edge and RX_DV xor RX_ER on the falling edge (RGMII 2.0). The
    transmit side mirrors it. TXC leaves edge-aligned with the data: the PHY must add the 2 ns
    clock delay (RGMII-ID), as the RTL8211 on the ECPIX-5 does when strapped for it.

    Parameters
    ----------
    pads : object with ``rx_clk``, ``rx_ctrl``, ``rx_data``, ``tx_clk``, ``tx_ctrl``, ``tx_data``
        I/O ports (``platform.request(..., dir="-")``, or ``io.SimulationPort`` in simulation).
    rx_domain, tx_domain : str
        The receive domain this component creates from RXC (the simulator's testbench creates it
        instead), and the 125 MHz transmit domain it uses.

    Members
    -------
    rx : Out(GmiiSignature)   -- in ``rx_domain``
    tx : In(GmiiSignature)    -- in ``tx_domain``

    Latency
    -------
    Two receive clocks from the pins to ``rx`` (the DDR input register, then the GMII register);
    one transmit clock from ``tx`` to the output register. tests/bitstreams/test_rgmii.py checks
    the framing, not these figures.
    """

    def __init__(self, pads, *, rx_domain: str = "rgmii_rx", tx_domain: str = "rgmii_tx"):
        for name in ("rx_clk", "rx_ctrl", "rx_data", "tx_clk", "tx_ctrl", "tx_data"):
            if not hasattr(pads, name):
                raise ValueError(f"pads must have {name!r}, not {pads!r}")
        self.pads = pads
        self.rx_domain = rx_domain
        self.tx_domain = tx_domain
        super().__init__({"rx": Out(GmiiSignature()), "tx": In(GmiiSignature())})

    def elaborate(self, platform):
        m = Module()
        pads = self.pads
        if platform is not None:
            m.domains += ClockDomain(self.rx_domain)
            rx_clk = m.submodules.rx_clk_buffer = io.Buffer("i", pads.rx_clk)
            m.d.comb += ClockSignal(self.rx_domain).eq(rx_clk.i)
            # On the pin (FREQUENCY PORT): nextpnr ignores a constraint on the buffer's net,
            # which synthesis renames, and would leave RXC unconstrained.
            port = getattr(pads.rx_clk, "io", None)
            platform.add_clock_constraint(port if isinstance(port, IOPort) else rx_clk.i,
                                          RGMII_CLOCK_HZ)

        d0, d1 = _ddr(m, "rx_data_ddr", "i", pads.rx_data, self.rx_domain, platform)
        c0, c1 = _ddr(m, "rx_ctrl_ddr", "i", pads.rx_ctrl, self.rx_domain, platform)
        m.d[self.rx_domain] += [self.rx.data.eq(Cat(d0, d1)), self.rx.en.eq(c0),
                                self.rx.er.eq(c0 ^ c1)]

        o0, o1 = _ddr(m, "tx_data_ddr", "o", pads.tx_data, self.tx_domain, platform)
        e0, e1 = _ddr(m, "tx_ctrl_ddr", "o", pads.tx_ctrl, self.tx_domain, platform)
        k0, k1 = _ddr(m, "tx_clk_ddr", "o", pads.tx_clk, self.tx_domain, platform)
        m.d.comb += [o0.eq(self.tx.data[:4]), o1.eq(self.tx.data[4:]),
                     e0.eq(self.tx.en), e1.eq(self.tx.en ^ self.tx.er),
                     k0.eq(1), k1.eq(0)]
        return m


class GmiiToXgmii(wiring.Component):
    """Receive width and clock adapter: GMII bytes at 125 MHz to a continuous 64-bit XGMII word
    stream in the core domain, as ``MacRx`` expects it.

    In the GMII domain each frame's preamble (any length) and SFD become an XGMII start word
    (/S/ in lane 0), the bytes after the SFD are packed eight to a word, RX_ER inside a frame
    becomes /E/ in its lane, and the end of RX_DV becomes /T/ followed by idles. Words cross into
    the core domain through an ``AsyncFIFO``; a frame leaves only once the whole frame is in the
    FIFO (an XGMII frame cannot pause), followed by at least one idle word. The core side sends
    idle words in between. A frame that arrives while the FIFO cannot hold a frame of
    ``max_frame`` bytes is dropped whole and counted in ``dropped``; a longer frame is cut with
    /E/ /T/ after ``max_frame`` bytes (``MacRx`` counts it as a bad frame).

    Parameters
    ----------
    max_frame : int
        Longest frame passed whole, bytes after the SFD (FCS included).
    depth : int
        FIFO depth in 64-bit words (a power of two, at least two max frames).
    gmii_domain : str
        The 125 MHz receive domain. The core domain is ``sync``.

    Members
    -------
    gmii : In(GmiiSignature)        -- in ``gmii_domain``
    xgmii : Out(XgmiiSignature)     -- in ``sync``
    dropped : Out(32)               -- frames dropped for want of room (``gmii_domain``)
    frames : Out(32)                -- frames passed on (``sync``)

    Latency
    -------
    Store and forward: the start word leaves the core side a few core cycles (the FIFO's two
    synchronizer stages plus two) after the GMII cycle that ends RX_DV, so a frame takes its
    1 Gb/s serialization time plus that; tests/bitstreams/test_rgmii.py measures it.
    """

    def __init__(self, *, max_frame: int = 1536, depth: int = 512, gmii_domain: str = "rgmii_rx"):
        if not 64 <= max_frame <= 9600:
            raise ValueError(f"max_frame must be 64..9600, not {max_frame!r}")
        max_words = (max_frame + 7) // 8 + 2
        if depth & (depth - 1) or depth < 2 * max_words:
            raise ValueError(f"depth must be a power of two of at least {2 * max_words} words "
                             f"(two frames of max_frame={max_frame}), not {depth!r}")
        self.max_frame = max_frame
        self.depth = depth
        self.gmii_domain = gmii_domain
        super().__init__({"gmii": In(GmiiSignature()), "xgmii": Out(XgmiiSignature()),
                          "dropped": Out(32), "frames": Out(32)})

    def elaborate(self, platform):
        m = Module()
        g = self.gmii_domain
        max_words = (self.max_frame + 7) // 8 + 2     # start word and the /T/ word

        words = m.submodules.words = fifo.AsyncFIFO(width=_ENTRY_BITS, depth=self.depth,
                                                    r_domain="sync", w_domain=g)
        # One entry per frame written whole: the core side starts a frame only with one in hand.
        ends = m.submodules.ends = fifo.AsyncFIFO(width=1, depth=16, r_domain="sync", w_domain=g)

        # -- GMII side: bytes into words -------------------------------------------------------
        lane = Signal(3)
        acc_d = Signal(64)
        acc_c = Signal(8)
        count = Signal(range(max_words + 2))   # words written for this frame
        dropped = Signal(32)
        m.d.comb += self.dropped.eq(dropped)

        # Room for a whole frame, registered (so the 125 MHz start decision does not wait for the
        # FIFO's level arithmetic): two words and two entries short of the limit, because the
        # level it reads is up to two clocks old and this side writes the only words that raise it.
        room = Signal()
        m.d[g] += room.eq((words.w_level <= self.depth - max_words - 2) & (ends.w_level < 14))

        # The GMII byte registered once more with what the FSM asks of it decoded, so that no
        # compare stands between a register and the FIFO's write enable.
        in_en = Signal()
        in_sfd = Signal()          # RX_DV with the SFD and no RX_ER
        in_other = Signal()        # RX_DV with anything but a preamble byte
        byte_d = Signal(8)
        byte_c = Signal()
        m.d[g] += [in_en.eq(self.gmii.en),
                   in_sfd.eq(self.gmii.en & ~self.gmii.er & (self.gmii.data == _SFD)),
                   in_other.eq(self.gmii.en & (self.gmii.er | (self.gmii.data != _PREAMBLE))),
                   byte_d.eq(Mux(self.gmii.er, XGMII_ERROR, self.gmii.data)),
                   byte_c.eq(self.gmii.er)]
        # The frame has reached max_frame: registered, so one clock late; the frame then takes one
        # byte more into the same word before the cut, still within max_words.
        at_limit = Signal()
        m.d[g] += at_limit.eq(count == max_words - 1)

        def put(d, c, *, last=False, rest_idle=False):
            """Place a byte in the current lane; write the word when it is full (or ``last``)."""
            new_d = Signal(64, name="new_d")
            new_c = Signal(8, name="new_c")
            m.d.comb += [new_d.eq(acc_d), new_c.eq(acc_c)]
            with m.Switch(lane):
                for k in range(8):
                    with m.Case(k):
                        m.d.comb += [new_d[8 * k:8 * k + 8].eq(d), new_c[k].eq(c)]
                        if rest_idle:
                            for j in range(k + 1, 8):
                                m.d.comb += [new_d[8 * j:8 * j + 8].eq(XGMII_IDLE), new_c[j].eq(1)]
            if last:
                m.d.comb += [words.w_en.eq(1), words.w_data.eq(Cat(new_d, new_c, Const(1, 1))),
                             ends.w_en.eq(1)]
                m.d[g] += [lane.eq(0), count.eq(count + 1)]
            else:
                m.d[g] += [acc_d.eq(new_d), acc_c.eq(new_c), lane.eq(lane + 1)]
                with m.If(lane == 7):
                    m.d.comb += [words.w_en.eq(1), words.w_data.eq(Cat(new_d, new_c, Const(0, 1)))]
                    m.d[g] += count.eq(count + 1)

        with m.FSM(domain=g):
            with m.State("IDLE"):
                # Waits for RX_DV with the SFD, after any number of preamble bytes.
                with m.If(in_sfd):
                    with m.If(room):
                        m.d.comb += [words.w_en.eq(1),
                                     words.w_data.eq(Cat(Const(START_WORD, 64), Const(0x01, 8),
                                                         Const(0, 1)))]
                        m.d[g] += [lane.eq(0), count.eq(1), at_limit.eq(0)]
                        m.next = "DATA"
                    with m.Else():
                        m.d[g] += dropped.eq(dropped + 1)
                        m.next = "DISCARD"
                with m.Elif(in_other):
                    # Not a preamble: nothing to deliver until RX_DV drops.
                    m.next = "DISCARD"
            with m.State("DATA"):
                # Packs the frame's bytes until RX_DV drops or the frame reaches max_frame.
                with m.If(~in_en):
                    put(XGMII_TERMINATE, 1, last=True, rest_idle=True)
                    m.next = "IDLE"
                with m.Elif(at_limit):
                    # Too long: cut it with /E/ /T/ and let MacRx count it as a bad frame.
                    put(XGMII_ERROR, 1, last=True, rest_idle=True)
                    m.next = "CUT"
                with m.Else():
                    put(byte_d, byte_c)
            with m.State("CUT"):
                # Writes nothing more of an over-long frame; waits for RX_DV to drop.
                with m.If(~in_en):
                    m.next = "IDLE"
            with m.State("DISCARD"):
                # Waits for RX_DV to drop.
                with m.If(~in_en):
                    m.next = "IDLE"

        # -- core side: whole frames out, idles in between -------------------------------------
        frames = Signal(32)
        m.d.comb += self.frames.eq(frames)
        out_d = Signal(64, init=IDLE_WORD)
        out_c = Signal(8, init=0xFF)
        m.d.comb += [self.xgmii.data.eq(out_d), self.xgmii.ctrl.eq(out_c)]
        entry_d = words.r_data[:64]
        entry_c = words.r_data[64:72]
        entry_last = words.r_data[72]
        with m.FSM():
            with m.State("IDLE"):
                # Sends idles; waits for a whole frame in the FIFO.
                m.d.sync += [out_d.eq(IDLE_WORD), out_c.eq(0xFF)]
                with m.If(ends.r_rdy):
                    m.d.comb += ends.r_en.eq(1)
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                # One more idle, so the data FIFO's pointer has surely crossed too.
                m.d.sync += [out_d.eq(IDLE_WORD), out_c.eq(0xFF)]
                m.next = "FRAME"
            with m.State("FRAME"):
                # Sends one word a cycle until the word with /T/.
                m.d.comb += words.r_en.eq(1)
                with m.If(words.r_rdy):
                    m.d.sync += [out_d.eq(entry_d), out_c.eq(entry_c)]
                    with m.If(entry_last):
                        m.d.sync += frames.eq(frames + 1)
                        m.next = "IDLE"
                with m.Else():
                    # Cannot happen with the whole frame in the FIFO; end the frame as broken.
                    m.d.sync += [out_d.eq(int.from_bytes(bytes([XGMII_ERROR, XGMII_TERMINATE]
                                                             + [XGMII_IDLE] * 6), "little")),
                                 out_c.eq(0xFF)]
                    m.next = "IDLE"
        return m


def admit_whole_frames(m, name, port, q, level, room):
    """Write the XGMII frames of ``port`` into FIFO ``q`` word by word, (data, ctrl, terminate)
    per entry, a whole frame or none: a frame that starts while ``level`` exceeds ``room`` is
    skipped to its /T/ and counted. Returns the 32-bit count of frames dropped."""
    start = Signal(name=f"{name}_start")
    m.d.comb += start.eq(port.ctrl[0] & (port.data[:8] == XGMII_START))
    term = _has_lane(m, port.data, port.ctrl, XGMII_TERMINATE)
    writing = Signal(name=f"{name}_writing")
    skipping = Signal(name=f"{name}_skipping")
    dropped = Signal(32, name=f"{name}_dropped")
    m.d.comb += q.w_data.eq(Cat(port.data, port.ctrl, term))
    with m.If(writing):
        m.d.comb += q.w_en.eq(1)
        with m.If(term):
            m.d.sync += writing.eq(0)
    with m.Elif(skipping):
        with m.If(term):
            m.d.sync += skipping.eq(0)
    with m.Elif(start):
        with m.If(level <= room):
            m.d.comb += q.w_en.eq(1)
            m.d.sync += writing.eq(1)
        with m.Else():
            m.d.sync += [skipping.eq(1), dropped.eq(dropped + 1)]
    return dropped


def _has_lane(m, d, c, char):
    """1 when any control lane of the word (d, c) holds ``char``."""
    hit = Signal(name=f"has_{char:02x}")
    m.d.comb += hit.eq(Cat(*[c[k] & (d[8 * k:8 * k + 8] == char) for k in range(8)]).any())
    return hit


class XgmiiToGmii(wiring.Component):
    """Transmit width and clock adapter: one or more 64-bit XGMII sources in the core domain to
    GMII bytes at 125 MHz, a whole frame at a time.

    Each source's frames (from its /S/ word to its /T/ word, as ``MacTx`` sends them) are written
    into the source's ``AsyncFIFO``; idle words are not. The GMII side takes whole frames from the
    sources in turn (round robin), sends the XGMII start lane and the preamble as seven 0x55 bytes
    and the SFD, the data, /E/ as TX_ER, and at least 12 idle bytes after each frame. A frame that
    starts while its FIFO cannot hold ``max_frame`` more bytes is dropped whole and counted.
    The core clock must be faster than 15.625 MHz (one word per eight GMII clocks) so a frame
    never runs dry once it has started; if one does, it is ended with TX_ER and counted.

    Parameters
    ----------
    sources : tuple of str
        Names of the XGMII inputs.
    max_frame : int
        Longest frame, bytes including FCS.
    depth : int
        FIFO depth per source in 64-bit words (a power of two holding two max frames).
    gmii_domain : str
        The 125 MHz transmit domain. The core domain is ``sync``.

    Members
    -------
    <source> : In(XgmiiSignature)   -- in ``sync``, one per name in ``sources``
    <source>_dropped : Out(32)      -- in ``sync``
    gmii : Out(GmiiSignature)       -- in ``gmii_domain``
    underruns : Out(32)             -- in ``gmii_domain``

    Latency
    -------
    Cut-through: the first preamble byte leaves a few GMII clocks (the FIFO's synchronizers) after
    the start word was written; tests/bitstreams/test_rgmii.py checks the frames byte for byte.
    """

    def __init__(self, *, sources=("xgmii",), max_frame: int = 1536, depth: int = 512,
                 gmii_domain: str = "rgmii_tx"):
        sources = tuple(sources)
        if not sources or len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct names, not {sources!r}")
        if not 64 <= max_frame <= 9600:
            raise ValueError(f"max_frame must be 64..9600, not {max_frame!r}")
        max_words = (max_frame + 7) // 8 + 2
        if depth & (depth - 1) or depth < 2 * max_words:
            raise ValueError(f"depth must be a power of two of at least {2 * max_words} words, "
                             f"not {depth!r}")
        self.sources = sources
        self.max_frame = max_frame
        self.depth = depth
        self.gmii_domain = gmii_domain
        members = {}
        for name in sources:
            members[name] = In(XgmiiSignature())
            members[f"{name}_dropped"] = Out(32)
        members["gmii"] = Out(GmiiSignature())
        members["underruns"] = Out(32)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        g = self.gmii_domain
        max_words = (self.max_frame + 7) // 8 + 2
        fifos = []
        # -- core side: each source's frames into its FIFO -------------------------------------
        for name in self.sources:
            port = getattr(self, name)
            q = m.submodules[f"{name}_fifo"] = fifo.AsyncFIFO(
                width=_ENTRY_BITS, depth=self.depth, w_domain="sync", r_domain=g)
            fifos.append(q)
            m.d.comb += getattr(self, f"{name}_dropped").eq(
                admit_whole_frames(m, name, port, q, q.w_level, self.depth - max_words))

        # -- GMII side: whole frames, round robin, a byte per clock ----------------------------
        # Three registered stages keep every 125 MHz path short: a one-word prefetch slot filled
        # from the chosen FIFO (its read enable depends on registers only), a decode of the slot's
        # eight lanes into what each lane puts on the pins, and a shift register that sends the
        # decoded lanes a byte a clock.
        n = len(self.sources)
        sel = Signal(range(max(n, 2)))
        turn = Signal(range(max(n, 2)))
        gap = Signal(range(13))
        underruns = Signal(32)
        m.d.comb += self.underruns.eq(underruns)
        r_rdy = Signal()
        r_data = Signal(_ENTRY_BITS)
        r_en = Signal()
        with m.Switch(sel):
            for k, q in enumerate(fifos):
                with m.Case(k):
                    m.d.comb += [r_rdy.eq(q.r_rdy), r_data.eq(q.r_data), q.r_en.eq(r_en)]

        # Prefetch: while ``fetching`` (from the start of a frame to its last word), the slot is
        # refilled as soon as it is empty.
        fetching = Signal()
        slot_d = Signal(64)
        slot_c = Signal(8)
        slot_last = Signal()
        slot_valid = Signal()
        slot_take = Signal()
        m.d.comb += r_en.eq(fetching & ~slot_valid)
        with m.If(slot_take):
            m.d[g] += slot_valid.eq(0)
        with m.If(r_en & r_rdy):
            m.d[g] += [slot_d.eq(r_data[:64]), slot_c.eq(r_data[64:72]), slot_last.eq(r_data[72]),
                       slot_valid.eq(1)]
            with m.If(r_data[72]):
                m.d[g] += fetching.eq(0)

        # Decoded lanes of the word being sent, lane 0 in the low bits; shifted a lane a clock.
        lane_d = Signal(64)      # the byte on TXD: data, the preamble for /S/, the code for /E/
        lane_en = Signal(8)      # TX_EN: every lane before /T/
        lane_er = Signal(8)      # TX_ER: control characters other than /S/ and /T/
        word_last = Signal()
        lane = Signal(3)

        def load():
            """Take the slot's word into the lane registers (decoding each lane)."""
            m.d.comb += slot_take.eq(1)
            ended = Const(0, 1)
            for k in range(8):
                d = slot_d[8 * k:8 * k + 8]
                c = slot_c[k]
                term = c & (d == XGMII_TERMINATE)
                ended = ended | term
                start = c & (d == XGMII_START)
                m.d[g] += [lane_d[8 * k:8 * k + 8].eq(Mux(start, _PREAMBLE, d)),
                           lane_en[k].eq(~ended), lane_er[k].eq(c & ~start & ~ended)]
            m.d[g] += [word_last.eq(slot_last), lane.eq(0)]

        out_d = Signal(8)
        out_en = Signal()
        out_er = Signal()
        m.d.comb += [self.gmii.data.eq(out_d), self.gmii.en.eq(out_en), self.gmii.er.eq(out_er)]

        with m.FSM(domain=g):
            with m.State("GAP"):
                # Sends idle bytes until the gap has passed, then picks the next source with a frame.
                m.d[g] += [out_en.eq(0), out_er.eq(0), out_d.eq(0)]
                with m.If(gap != 0):
                    m.d[g] += gap.eq(gap - 1)
                with m.Else():
                    # Sources in turn from ``turn``: the last assignment wins, so the loop runs
                    # backwards and the first ready source after ``turn`` is taken.
                    ready = Cat(*[q.r_rdy for q in fifos])
                    for k in reversed(range(n)):
                        idx = (turn + k) % n
                        with m.If(ready.bit_select(idx, 1)):
                            m.d[g] += [sel.eq(idx), turn.eq((idx + 1) % n), fetching.eq(1)]
                            m.next = "FIRST"
            with m.State("FIRST"):
                # Waits for the frame's start word in the prefetch slot.
                m.d[g] += [out_en.eq(0), out_er.eq(0), out_d.eq(0)]
                with m.If(slot_valid):
                    load()
                    m.next = "SEND"
            with m.State("SEND"):
                # Sends the decoded lanes one a clock, up to the first lane after /T/.
                with m.If(~lane_en[0]):
                    m.d[g] += [out_en.eq(0), out_er.eq(0), out_d.eq(0), gap.eq(11)]
                    m.next = "GAP"
                with m.Else():
                    m.d[g] += [out_en.eq(1), out_er.eq(lane_er[0]), out_d.eq(lane_d[:8]),
                               lane_d.eq(lane_d >> 8), lane_en.eq(lane_en >> 1),
                               lane_er.eq(lane_er >> 1), lane.eq(lane + 1)]
                    with m.If(lane == 7):
                        with m.If(word_last):
                            m.d[g] += gap.eq(11)
                            m.next = "GAP"
                        with m.Elif(slot_valid):
                            load()
                        with m.Else():
                            m.d[g] += underruns.eq(underruns + 1)
                            m.next = "UNDERRUN"
            with m.State("UNDERRUN"):
                # The source ran dry inside a frame: TX_ER once, then drop the frame's rest.
                m.d[g] += [out_en.eq(1), out_er.eq(1), out_d.eq(0)]
                m.next = "DISCARD"
            with m.State("DISCARD"):
                # Empties the prefetch slot up to the frame's last word.
                m.d[g] += [out_en.eq(0), out_er.eq(0)]
                with m.If(slot_valid):
                    m.d.comb += slot_take.eq(1)
                    with m.If(slot_last):
                        m.d[g] += gap.eq(11)
                        m.next = "GAP"
        return m


class RgmiiMac(wiring.Component):
    """The RGMII MAC front end: ``RgmiiPhy`` with ``GmiiToXgmii`` and ``XgmiiToGmii``, so the core
    sees the 64-bit XGMII of ``MacRx`` / ``MacTx`` in its own ``sync`` domain.

    The frame logic (FCS check, padding, FCS generation) stays in ``MacRx`` and ``MacTx`` in the
    core; this front end only moves bytes between clock domains and widths.

    Parameters
    ----------
    pads : RGMII I/O ports (see ``RgmiiPhy``).
    tx_sources : tuple of str
        Names of the XGMII transmit inputs, merged a frame at a time.
    max_frame, rx_depth, tx_depth : int
        See ``GmiiToXgmii`` and ``XgmiiToGmii``.

    Members
    -------
    xgmii_rx : Out(XgmiiSignature)          -- received frames, ``sync``
    <source> : In(XgmiiSignature)           -- one per transmit source, ``sync``
    <source>_dropped : Out(32)              -- ``sync``
    rx_frames : Out(32)                     -- ``sync``
    rx_dropped : Out(32)                    -- in the receive domain
    tx_underruns : Out(32)                  -- in the transmit domain

    Latency
    -------
    Receive: store and forward of each frame at 1 Gb/s plus a few core cycles; transmit: cut
    through (see the two adapters).
    """

    def __init__(self, pads, *, tx_sources=("xgmii_tx",), max_frame: int = 1536,
                 rx_depth: int = 512, tx_depth: int = 512,
                 rx_domain: str = "rgmii_rx", tx_domain: str = "rgmii_tx"):
        self.phy = RgmiiPhy(pads, rx_domain=rx_domain, tx_domain=tx_domain)
        self.rx_adapter = GmiiToXgmii(max_frame=max_frame, depth=rx_depth, gmii_domain=rx_domain)
        self.tx_adapter = XgmiiToGmii(sources=tx_sources, max_frame=max_frame, depth=tx_depth,
                                      gmii_domain=tx_domain)
        self.tx_sources = tuple(tx_sources)
        members = {"xgmii_rx": Out(XgmiiSignature())}
        for name in self.tx_sources:
            members[name] = In(XgmiiSignature())
            members[f"{name}_dropped"] = Out(32)
        members.update({"rx_frames": Out(32), "rx_dropped": Out(32), "tx_underruns": Out(32)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.phy = self.phy
        m.submodules.rx_adapter = self.rx_adapter
        m.submodules.tx_adapter = self.tx_adapter
        wiring.connect(m, self.phy.rx, self.rx_adapter.gmii)
        wiring.connect(m, self.tx_adapter.gmii, self.phy.tx)
        wiring.connect(m, self.rx_adapter.xgmii, wiring.flipped(self.xgmii_rx))
        for name in self.tx_sources:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(self.tx_adapter, name))
            m.d.comb += getattr(self, f"{name}_dropped").eq(getattr(self.tx_adapter, f"{name}_dropped"))
        m.d.comb += [self.rx_frames.eq(self.rx_adapter.frames),
                     self.rx_dropped.eq(self.rx_adapter.dropped),
                     self.tx_underruns.eq(self.tx_adapter.underruns)]
        return m
