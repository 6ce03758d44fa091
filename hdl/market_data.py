"""Market-data path: feed lines A and B (XGMII) and the injection port in, decoded ITCH records out."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out, connect

from .arbiter import PacketArbiter
from .csr import CsrBank, CsrBusSignature
from .itch import ItchDecoder, record_layout
from .mac import MacRx, XgmiiSignature
from .moldudp64 import MAX_OPEN_GAPS, MoldUdp64, gap_layout
from .net import NetRx
from .packet import packet_layout

__all__ = ["MarketDataPath", "MarketDataTop", "BookTop", "MARKET_DATA_STAGES", "ARBITER_INPUTS", "fork"]

#: The stages of the path with registers. Line A's stages and the sequencer come first in
#: pipeline order; line B's MAC and filter follow, so the windows line A had before line B
#: existed keep their addresses.
MARKET_DATA_STAGES = ("mac_rx", "net_rx", "moldudp64", "itch", "mac_rx_b", "net_rx_b")

#: Inputs of the packet arbiter in front of the sequencer, by index.
ARBITER_INPUTS = ("feed_a", "feed_b", "inject")


def fork(m: Module, source, sinks) -> None:
    """Every beat of stream ``source`` to each of the streams ``sinks``, each taking it when it
    is ready: a sink that took the beat waits (``valid`` low) until all have, then the source
    moves on. No sink's ``valid`` depends on another sink's ``ready``; no added latency."""
    taken = [Signal(name=f"fork_taken_{k}") for k in range(len(sinks))]
    done = [t | sink.ready for t, sink in zip(taken, sinks)]
    all_done = Signal()
    m.d.comb += [all_done.eq(Cat(done).all()), source.ready.eq(all_done)]
    for t, sink, d in zip(taken, sinks, done):
        m.d.comb += [sink.valid.eq(source.valid & ~t), sink.payload.eq(source.payload)]
        with m.If(source.valid):
            m.d.sync += t.eq(Mux(all_done, 0, d))


class MarketDataPath(wiring.Component):
    """Two feed lines (MAC -> Ethernet/IPv4/UDP filter each) and the injection port, merged
    datagram by datagram -> MoldUDP64 -> ITCH decoder.

    A/B line arbitration: both lines carry the same MoldUDP64 datagrams; the sequencer delivers
    the first copy of each sequence number and drops the other as a duplicate. The injection
    port takes MoldUDP64 datagrams from the host (retransmissions); they fill open gaps
    (docs/pipeline-contract.md, "A/B lines and injection"). The stages' register ports are left
    to the owner's register bank (``stages``).

    Parameters
    ----------
    rx_buffer_words : int
        Store-and-forward buffer of each feed MAC (64-bit words).
    lines : int
        Feed lines: 2 (A and B), or 1 (line A only: no ``feed_rx_b``, no line-B MAC and filter;
        a board with one Ethernet port).
    max_open_gaps : int
        Gaps the MoldUDP64 sequencer keeps open for filling (:class:`MoldUdp64`).
    frame_tap : bool
        Also offer line A's good frames (the MAC's output) on ``o_frames``: each frame goes to
        both the filter and ``o_frames``, each taking it at its own pace (a board's management
        port shares the feed port's MAC this way).

    Members
    -------
    feed_rx : In(XgmiiSignature)
        Feed line A.
    feed_rx_b : In(XgmiiSignature)
        Feed line B (idle characters when unused); only with ``lines=2``.
    i_inject : In(stream.Signature(packet_layout()))
        MoldUDP64 datagrams from the host, each a packet (``length``: its byte count).
    o_records : Out(stream.Signature(record_layout))
        One decoded record per delivered message.
    o_gap : Out(stream.Signature(gap_layout, always_ready=True))
        Gap events: the missing range, one beat per gap.
    o_frames : Out(stream.Signature(packet_layout()))
        ``frame_tap`` only: every good frame of line A, as the filter gets it.

    Latency
    -------
    The sum of the stages' (docs/architecture.md); the arbiter adds none.
    """

    def __init__(self, *, rx_buffer_words: int = 512, lines: int = 2, max_open_gaps: int = MAX_OPEN_GAPS,
                 frame_tap: bool = False):
        if lines not in (1, 2):
            raise ValueError(f"lines must be 1 or 2, not {lines!r}")
        self.rx_buffer_words = rx_buffer_words
        self.lines = lines
        self.frame_tap = frame_tap
        self.mac_rx = MacRx(buffer_words=rx_buffer_words)
        self.net_rx = NetRx()
        self.mac_rx_b = MacRx(buffer_words=rx_buffer_words) if lines == 2 else None
        self.net_rx_b = NetRx() if lines == 2 else None
        self.arbiter = PacketArbiter(n_inputs=len(ARBITER_INPUTS))
        self.moldudp64 = MoldUdp64(max_open_gaps=max_open_gaps)
        self.itch = ItchDecoder()
        self.stages = {name: getattr(self, name) for name in MARKET_DATA_STAGES
                       if getattr(self, name) is not None}
        super().__init__({
            "feed_rx": In(XgmiiSignature()),
            **({"feed_rx_b": In(XgmiiSignature())} if lines == 2 else {}),
            "i_inject": In(stream.Signature(packet_layout())),
            "o_records": Out(stream.Signature(record_layout)),
            "o_gap": Out(stream.Signature(gap_layout, always_ready=True)),
            **({"o_frames": Out(stream.Signature(packet_layout()))} if frame_tap else {}),
        })

    def elaborate(self, platform):
        m = Module()
        for name, stage in self.stages.items():
            m.submodules[name] = stage
        m.submodules.arbiter = self.arbiter
        inputs = dict(zip(ARBITER_INPUTS, self.arbiter.i_stream))
        connect(m, wiring.flipped(self.feed_rx), self.mac_rx.xgmii)
        if self.frame_tap:
            fork(m, self.mac_rx.o_stream, (self.net_rx.i_stream, self.o_frames))
        else:
            connect(m, self.mac_rx.o_stream, self.net_rx.i_stream)
        connect(m, self.net_rx.o_stream, inputs["feed_a"])
        if self.lines == 2:
            connect(m, wiring.flipped(self.feed_rx_b), self.mac_rx_b.xgmii)
            connect(m, self.mac_rx_b.o_stream, self.net_rx_b.i_stream)
            connect(m, self.net_rx_b.o_stream, inputs["feed_b"])
        else:
            m.d.comb += inputs["feed_b"].valid.eq(0)
        connect(m, wiring.flipped(self.i_inject), inputs["inject"])
        connect(m, self.arbiter.o_stream, self.moldudp64.i_stream)
        connect(m, self.moldudp64.o_stream, self.itch.i_stream)
        connect(m, self.moldudp64.o_gap, wiring.flipped(self.o_gap))
        connect(m, self.itch.o_stream, wiring.flipped(self.o_records))
        return m


class MarketDataTop(wiring.Component):
    """The market-data path alone with its own register bus: the top level of the native replay
    harness and of the line-rate and A/B tests.

    Members
    -------
    feed_rx : In(XgmiiSignature)
    feed_rx_b : In(XgmiiSignature)
    i_inject : In(stream.Signature(packet_layout()))
    o_records : Out(stream.Signature(record_layout))
    o_gap : Out(stream.Signature(gap_layout, always_ready=True))
    csr : In(CsrBusSignature)
    """

    def __init__(self, *, rx_buffer_words: int = 512):
        from .top import Identity
        self.identity = Identity()
        self.path = MarketDataPath(rx_buffer_words=rx_buffer_words)
        self.stages = {"id": self.identity, **self.path.stages}
        self.bank = CsrBank([(name, stage.registers) for name, stage in self.stages.items()])
        # The path's ports, passed through, and the register bus.
        super().__init__({**self.path.signature.members, "csr": In(CsrBusSignature())})

    def elaborate(self, platform):
        m = Module()
        m.submodules.identity = self.identity
        m.submodules.path = self.path
        m.submodules.csr_bank = self.bank
        connect(m, wiring.flipped(self.csr), self.bank.bus)
        for name, stage in self.stages.items():
            connect(m, getattr(self.bank, name), stage.regs)
        for port in self.path.signature.members:
            connect(m, wiring.flipped(getattr(self, port)), getattr(self.path, port))
        return m


class BookTop(wiring.Component):
    """The market-data path, the symbol directory and the order book with their own register bus:
    the top level of ``tickwire sim book`` (the native replay harness with top-of-book records
    out) and of the order-book tests on a real feed.

    Parameters
    ----------
    book : dict
        Keyword arguments of :class:`tickwire.hdl.book.Book` (defaults: the appliance's).

    Members
    -------
    feed_rx, feed_rx_b, i_inject, o_gap, csr
        As :class:`MarketDataTop`.
    o_records : Out(stream.Signature(tickwire.hdl.book.bbo_layout))
        Top-of-book records.
    o_event : Out(stream.Signature(tickwire.hdl.book.book_event_layout, always_ready=True))
    """

    def __init__(self, *, rx_buffer_words: int = 512, book: dict | None = None):
        from .top import Identity
        from .symbols import SymbolDirectory
        from .book import Book, bbo_layout, book_event_layout
        self.identity = Identity()
        self.path = MarketDataPath(rx_buffer_words=rx_buffer_words)
        self.book = Book(**(book or {}))
        self.symbols = SymbolDirectory(slots=self.book.slots)
        self.stages = {"id": self.identity, **self.path.stages, "symbols": self.symbols, "book": self.book}
        self.bank = CsrBank([(name, stage.registers) for name, stage in self.stages.items()])
        feed_side = {n: v for n, v in self.path.signature.members.items() if n != "o_records"}
        super().__init__({**feed_side, "csr": In(CsrBusSignature()),
                          "o_records": Out(stream.Signature(bbo_layout)),
                          "o_event": Out(stream.Signature(book_event_layout, always_ready=True))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.identity = self.identity
        m.submodules.path = self.path
        m.submodules.symbols = self.symbols
        m.submodules.book = self.book
        m.submodules.csr_bank = self.bank
        connect(m, wiring.flipped(self.csr), self.bank.bus)
        for name, stage in self.stages.items():
            connect(m, getattr(self.bank, name), stage.regs)
        for port in self.path.signature.members:
            if port != "o_records":
                connect(m, wiring.flipped(getattr(self, port)), getattr(self.path, port))
        connect(m, self.path.o_records, self.symbols.i_stream)
        connect(m, self.symbols.o_stream, self.book.i_stream)
        connect(m, self.book.o_stream, wiring.flipped(self.o_records))
        connect(m, self.book.o_event, wiring.flipped(self.o_event))
        m.d.comb += self.book.query.slot.eq(0)
        return m
