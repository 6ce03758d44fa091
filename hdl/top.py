"""The whole appliance: feed ports A and B (XGMII) in, order port XGMII out, one register bus."""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring, fifo, stream
from amaranth.lib.wiring import In, Out, connect

from .csr import CsrBank, CsrBusSignature, Register, registers_signature
from .mac import MacRx, MacTx, XgmiiSignature
from .net import NetTx
from .market_data import MarketDataPath
from .moldudp64 import MAX_OPEN_GAPS
from .symbols import SymbolDirectory
from .book import Book, book_event_layout
from .trigger import Trigger
from .order import order_layout
from .order_entry import OrderEntry
from .risk import Risk, reject_layout, exposure_update_layout
from .ouch import OuchEncoder, MAX_PACKET_LENGTH, ouch_packet_layout
from .book import BookQuerySignature
from .packet import PacketGather
from .arbiter import PacketArbiter
from .events import EventStage, event_record_layout
from .order_feedback import OrderFeedback, ORDER_FEEDBACK_STAGES
from .packet import packet_layout
from .tcp import TcpEngine

__all__ = ["Appliance", "OrderPath", "Identity", "STAGE_ORDER", "CLOCK_HZ", "FEED_PORTS", "TRANSPORTS"]

#: Ports of the market-data path that are the appliance's own ports too.
FEED_PORTS = ("feed_rx", "feed_rx_b", "i_inject", "o_gap")

#: Core clock of the 64-bit datapath at 10 Gb/s (XGMII 64-bit at 156.25 MHz).
CLOCK_HZ = 156_250_000

#: Register windows in address order (stage name -> window index). Feed line B's MAC and filter
#: come last, so every window that existed before line B keeps its address.
STAGE_ORDER = ("id", "mac_rx", "net_rx", "moldudp64", "itch", "trigger", "risk", "ouch", "net_tx", "mac_tx",
               "mac_rx_b", "net_rx_b", "symbols", "book", "order_entry", "events", *ORDER_FEEDBACK_STAGES,
               "mac_rx_order", "tcp")

#: How orders leave the order port: ``tcp`` through the TCP engine (OUCH in SoupBinTCP in TCP, what
#: the exchange takes), ``udp`` each SoupBinTCP packet in a UDP datagram (the host relays it),
#: ``both`` either, as the ``i_order_transport`` strap says (the simulated card: one build).
TRANSPORTS = ("tcp", "udp", "both")


class Identity(wiring.Component):
    """Identity and time: magic, register-map version, free-running cycle counter.

    Members
    -------
    regs : Out(registers_signature(Identity.registers))

    Latency
    -------
    None (constants and a counter).
    """

    registers = (
        Register("magic", 32, "ro", "0x54574952, 'TWIR'."),
        Register("regmap_version", 16, "ro", "Register map version; the host refuses a different one."),
        Register("cycles", 64, "ro", "Core clock cycles since reset."),
    )

    def __init__(self):
        super().__init__({"regs": Out(registers_signature(self.registers))})

    def elaborate(self, platform):
        from .csr import MAGIC, REGMAP_VERSION
        m = Module()
        cycles = Signal(64)
        m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += [self.regs.magic.eq(MAGIC), self.regs.regmap_version.eq(REGMAP_VERSION),
                     self.regs.cycles.eq(cycles)]
        return m


class OrderPath(wiring.Component):
    """Risk -> order queue -> OUCH encoder: from an order action to the SoupBinTCP packet.

    Parameters
    ----------
    slots, sessions : int
        Risk's tracked-symbol slots and order sessions.
    order_queue_depth : int
        Accepted orders waiting for the encoder (a burst never stalls what feeds risk).

    Members
    -------
    i_stream : In(stream.Signature(order_layout))
    i_exposure : In(stream.Signature(exposure_update_layout))
    book : Out(BookQuerySignature())
    o_stream : Out(stream.Signature(ouch_packet_layout()))
    o_reject : Out(stream.Signature(reject_layout, always_ready=True))
    o_accepted : Out(stream.Signature(order_layout, always_ready=True))

    Latency
    -------
    4 cycles from an order taken by risk to the first beat of its packet (risk 2, queue 1, OUCH
    1), accepts back to back (tests/hdl/test_order_path.py).
    """

    def __init__(self, *, slots: int = 256, sessions: int = 4, order_queue_depth: int = 16):
        if order_queue_depth < 2:
            raise ValueError(f"order_queue_depth must be at least 2, not {order_queue_depth!r}")
        self.order_queue_depth = order_queue_depth
        self.risk = Risk(slots=slots, sessions=sessions)
        self.ouch = OuchEncoder()
        self.stages = {"risk": self.risk, "ouch": self.ouch}
        super().__init__({
            "i_stream": In(stream.Signature(order_layout)),
            "i_exposure": In(stream.Signature(exposure_update_layout)),
            "book": Out(BookQuerySignature()),
            "o_stream": Out(stream.Signature(ouch_packet_layout())),
            "o_reject": Out(stream.Signature(reject_layout, always_ready=True)),
            "o_accepted": Out(stream.Signature(order_layout, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.risk = self.risk
        m.submodules.ouch = self.ouch
        connect(m, wiring.flipped(self.i_stream), self.risk.i_stream)
        connect(m, wiring.flipped(self.i_exposure), self.risk.i_exposure)
        connect(m, self.risk.book, wiring.flipped(self.book))
        connect(m, self.risk.o_reject, wiring.flipped(self.o_reject))
        # First-word-fall-through queue: an accepted order reaches the encoder the next cycle.
        queue = m.submodules.order_queue = fifo.SyncFIFO(width=order_layout.size, depth=self.order_queue_depth)
        take = self.risk.o_stream.valid & queue.w_rdy
        m.d.comb += [queue.w_en.eq(self.risk.o_stream.valid), queue.w_data.eq(self.risk.o_stream.payload),
                     self.risk.o_stream.ready.eq(queue.w_rdy),
                     self.o_accepted.valid.eq(take), self.o_accepted.payload.eq(self.risk.o_stream.payload),
                     self.ouch.i_stream.valid.eq(queue.r_rdy), self.ouch.i_stream.payload.eq(queue.r_data),
                     queue.r_en.eq(self.ouch.i_stream.ready)]
        connect(m, self.ouch.o_stream, wiring.flipped(self.o_stream))
        return m


class Appliance(wiring.Component):
    """Feed ports A and B -> MAC -> UDP filter (each) -> MoldUDP64 -> ITCH -> symbol directory ->
    order book -> trigger -> order entry (with the host's orders) -> risk -> OUCH -> UDP -> MAC.

    The host's injection port (retransmitted MoldUDP64 datagrams) joins the two feed lines in
    front of the MoldUDP64 sequencer; gap events leave on ``o_gap``
    (docs/pipeline-contract.md, "A/B lines and injection").

    Parameters
    ----------
    order_queue_depth : int
        Accepted orders waiting for the order port.
    rx_buffer_words : int
        Feed MAC store-and-forward buffer (64-bit words).
    book : dict
        Keyword arguments of :class:`tickwire.hdl.book.Book` (slots, capacity, ways, depth).
    sessions : int
        Order sessions (risk limits, UserRefNum counters).
    rules : int
        Trigger rules.
    transport : str
        ``"tcp"``: orders leave through the TCP engine (:class:`tickwire.hdl.tcp.TcpEngine`,
        docs/tcp.md), and the exchange's segments on ``order_rx`` come back through it into the
        order feedback; ``"udp"``: each OUCH packet leaves in a UDP datagram and the host passes the
        exchange's bytes in on ``i_inbound``. The engine and its registers exist in both (unless
        ``tcp_engine`` is False). ``"both"``: either, chosen by the ``i_order_transport`` strap
        (1: TCP), which must not change while orders are in flight (the simulated card sets it
        before reset, so one build serves both).
    tcp : dict
        Keyword arguments of the TCP engine (buffer_words, descriptors, rx_fifo_words).
    tcp_engine : bool
        ``False`` (``transport="udp"`` only): no TCP engine and no order-port receive MAC, so no
        ``order_rx``, host data/frame, payload or punt ports; their register windows (the last
        two) are left out. For a board whose orders go out as UDP and whose device is small.
    max_open_gaps : int
        Gaps the MoldUDP64 sequencer keeps open for a later copy or a retransmission to fill.
    port_frames : bool
        Also send the host's own frames (``i_port_frames``) out of the order port, whole frames
        merged with the orders by a packet arbiter in front of the MAC (a board whose one
        Ethernet port carries the management replies too: one transmit MAC, not two).
    feed_frame_tap : bool
        Offer every good frame of feed line A on ``o_feed_frames`` too (a board's management port
        reading requests from the same port without a receive MAC of its own).
    feed_lines : int
        2: feed lines A and B; 1: line A only (no ``feed_rx_b``, no line-B MAC and filter; their
        register windows stay reserved, reading 0, so no other window moves).

    Members
    -------
    feed_rx : In(XgmiiSignature)
        Feed line A.
    feed_rx_b : In(XgmiiSignature)
        Feed line B (idle characters when unused).
    i_inject : In(stream.Signature(packet_layout()))
        MoldUDP64 datagrams from the host.
    o_gap : Out(stream.Signature(gap_layout, always_ready=True))
        Gap events for the host.
    o_book_event : Out(stream.Signature(book_event_layout, always_ready=True))
        The book's events (collisions, unknown references, window) for the host.
    o_reject : Out(stream.Signature(reject_layout, always_ready=True))
        Order actions risk refused, with the reason, for the host.
    o_accepted : Out(stream.Signature(order_layout, always_ready=True))
        A copy of every order action risk accepted, for the host (drop copy).
    i_order_transport : In(1)
        ``both`` only: 1 sends orders through the TCP engine, 0 as UDP datagrams.
    i_inbound : In(stream.Signature(packet_layout()))
        ``udp`` and ``both`` (with the strap at 0): the exchange's SoupBinTCP byte stream of order
        session 0, passed on by the host: parsed, matched to the card's open orders, and its
        executions and cancels update risk's exposure (with ``tcp`` the engine's in-order payload
        of session 0 does this).
    order_rx : In(XgmiiSignature)
        The order port's receive side (the exchange's segments, ARP): MAC, then the TCP engine.
    i_host_data, i_host_frame : In(stream.Signature(...))
        The host's SoupBinTCP packets (with their session) and raw frames for the TCP engine.
    o_payload, o_host_frame : Out(stream.Signature(...))
        The TCP engine's in-order received payload (every session) and the frames it passes to
        the host.
    o_events : Out(stream.Signature(event_record_layout))
        The same four sources (accepted, rejected, book events, gaps) as 32-byte event records
        (:mod:`tickwire.protocols.events`), for the host's event ring.
    order_tx : Out(XgmiiSignature)
    csr : In(CsrBusSignature)

    Latency
    -------
    Tick-to-trade (first feed word of the frame in, start of the order frame out) is measured by
    tests/hdl/test_top.py and printed by ``tickwire demo``.
    """

    def __init__(self, *, order_queue_depth: int = 16, rx_buffer_words: int = 512, book: dict | None = None,
                 sessions: int = 4, rules: int = 4, transport: str = "udp", tcp: dict | None = None,
                 tcp_engine: bool = True, feed_lines: int = 2, max_open_gaps: int = MAX_OPEN_GAPS,
                 port_frames: bool = False, feed_frame_tap: bool = False):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        if transport != "udp" and not tcp_engine:
            raise ValueError(f"transport {transport!r} needs the TCP engine (tcp_engine=True)")
        if tcp is not None and not tcp_engine:
            raise ValueError("tcp options given without the TCP engine (tcp_engine=False)")
        self.transport = transport
        if order_queue_depth < 2:
            raise ValueError(f"order_queue_depth must be at least 2, not {order_queue_depth!r}")
        self.order_queue_depth = order_queue_depth
        self.rx_buffer_words = rx_buffer_words
        self.identity = Identity()
        self.market_data = MarketDataPath(rx_buffer_words=rx_buffer_words, lines=feed_lines,
                                          max_open_gaps=max_open_gaps, frame_tap=feed_frame_tap)
        self.port_arbiter = PacketArbiter(n_inputs=2) if port_frames else None
        self.book = Book(**(book or {}))
        self.symbols = SymbolDirectory(slots=self.book.slots)
        self.trigger = Trigger(rules=rules)
        self.order_entry = OrderEntry(sessions=sessions)
        self.order_path = OrderPath(slots=self.book.slots, sessions=sessions, order_queue_depth=order_queue_depth)
        self.risk, self.ouch = self.order_path.risk, self.order_path.ouch
        self.gather = PacketGather(max_payload=MAX_PACKET_LENGTH) if transport != "tcp" else None
        self.net_tx = NetTx(max_payload=MAX_PACKET_LENGTH)
        self.mac_tx = MacTx()
        self.events = EventStage()
        self.order_feedback = OrderFeedback(session=0, sessions=sessions)
        self.mac_rx_order = MacRx(buffer_words=512) if tcp_engine else None
        self.tcp = TcpEngine(sessions=sessions, **(tcp or {})) if tcp_engine else None
        stages = {"mac_rx_order": self.mac_rx_order, "tcp": self.tcp, "events": self.events, **self.order_feedback.stages, "id": self.identity, **self.market_data.stages, "symbols": self.symbols, "book": self.book,
                  "trigger": self.trigger, "order_entry": self.order_entry,
                  "risk": self.risk, "ouch": self.ouch, "net_tx": self.net_tx, "mac_tx": self.mac_tx}
        self.stages = {name: stages[name] for name in STAGE_ORDER if stages.get(name) is not None}
        # A stage this build leaves out keeps its window (reading 0) unless no window follows it.
        windows = list(STAGE_ORDER)
        while windows[-1] not in self.stages:
            windows.pop()
        self.bank = CsrBank([(name, self.stages[name].registers if name in self.stages else ())
                             for name in windows])
        # The market-data path's feed-side ports pass through; its records stay inside.
        feed_side = {n: v for n, v in self.market_data.signature.members.items() if n in FEED_PORTS}
        super().__init__({
            **feed_side,
            "o_book_event": Out(stream.Signature(book_event_layout, always_ready=True)),
            "o_reject": Out(stream.Signature(reject_layout, always_ready=True)),
            "o_accepted": Out(stream.Signature(order_layout, always_ready=True)),
            **({"i_inbound": In(stream.Signature(packet_layout()))} if transport != "tcp" else {}),
            **({"i_order_transport": In(1)} if transport == "both" else {}),
            "o_events": Out(stream.Signature(event_record_layout)),
            "order_tx": Out(XgmiiSignature()),
            **({"i_port_frames": In(stream.Signature(packet_layout()))} if port_frames else {}),
            **({"o_feed_frames": Out(stream.Signature(packet_layout()))} if feed_frame_tap else {}),
            **({"order_rx": In(XgmiiSignature()),
                "i_host_data": In(stream.Signature(ouch_packet_layout())),
                "i_host_frame": In(stream.Signature(packet_layout())),
                "o_payload": Out(stream.Signature(ouch_packet_layout())),
                "o_host_frame": Out(stream.Signature(packet_layout()))} if tcp_engine else {}),
            "csr": In(CsrBusSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.market_data = self.market_data
        m.submodules.order_path = self.order_path
        m.submodules.order_feedback = self.order_feedback
        for name, stage in self.stages.items():
            if not any(name in path.stages for path in (self.market_data, self.order_path, self.order_feedback)):
                m.submodules[name] = stage
        m.submodules.csr_bank = self.bank
        connect(m, wiring.flipped(self.csr), self.bank.bus)
        for name, stage in self.stages.items():
            connect(m, getattr(self.bank, name), stage.regs)

        for port in FEED_PORTS:
            if port in self.market_data.signature.members:
                connect(m, wiring.flipped(getattr(self, port)), getattr(self.market_data, port))
        connect(m, self.market_data.o_records, self.symbols.i_stream)
        connect(m, self.symbols.o_stream, self.book.i_stream)
        connect(m, self.book.o_stream, self.trigger.i_stream)
        # The host-facing pulses go out as they are and, as event records, through the event stage.
        for source, port, sink in ((self.book.o_event, self.o_book_event, self.events.i_book),
                                   (self.order_path.o_reject, self.o_reject, self.events.i_reject),
                                   (self.order_path.o_accepted, self.o_accepted, self.events.i_accepted),
                                   (self.order_path.o_accepted, None, self.order_feedback.i_accepted),
                                   (self.order_feedback.o_record, None, self.events.i_exchange),
                                   (self.market_data.o_gap, None, self.events.i_gap)):
            m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload)]
            if port is not None:
                m.d.comb += [port.valid.eq(source.valid), port.payload.eq(source.payload)]
        connect(m, self.events.o_stream, wiring.flipped(self.o_events))
        connect(m, self.trigger.o_stream, self.order_entry.i_trigger)
        connect(m, self.order_entry.o_stream, self.order_path.i_stream)
        # Exposure: the host's updates and the exchange's answers (through the open-order table).
        connect(m, self.order_entry.o_exposure, self.order_feedback.i_host_exposure)
        connect(m, self.order_feedback.o_exposure, self.order_path.i_exposure)
        connect(m, self.order_path.book, self.book.query)

        # The order port's receive side and the TCP engine's host ports.
        tcp = self.tcp
        if tcp is not None:
            connect(m, wiring.flipped(self.order_rx), self.mac_rx_order.xgmii)
            connect(m, self.mac_rx_order.o_stream, tcp.i_rx)
            connect(m, wiring.flipped(self.i_host_data), tcp.i_host_data)
            connect(m, wiring.flipped(self.i_host_frame), tcp.i_host_frame)
            connect(m, tcp.o_host_frame, wiring.flipped(self.o_host_frame))
        # Which way orders leave: fixed by ``transport``, or the ``i_order_transport`` strap.
        if self.transport == "both":
            use_tcp = Signal()
            m.d.comb += use_tcp.eq(self.i_order_transport)
        else:
            use_tcp = Const(int(self.transport == "tcp"), 1)
        feedback = self.order_feedback.i_inbound
        orders = self.order_path.o_stream
        mac_in = self.mac_tx.i_stream
        if self.port_arbiter is not None:
            # The order port's frames first, then the host's, packet by packet.
            m.submodules.port_arbiter = self.port_arbiter
            connect(m, wiring.flipped(self.i_port_frames), self.port_arbiter.i_stream[1])
            connect(m, self.port_arbiter.o_stream, mac_in)
            mac_in = self.port_arbiter.i_stream[0]
        if "o_feed_frames" in self.signature.members:
            connect(m, self.market_data.o_frames, wiring.flipped(self.o_feed_frames))
        if tcp is not None:
            # TCP: session 0's payload goes to the order feedback as well as to the host (both
            # take it); UDP: the host gets all of it, the order feedback the host's i_inbound.
            is_fed = use_tcp & (tcp.o_payload.payload.session == 0)  # OrderFeedback(session=0)
            m.d.comb += [self.o_payload.valid.eq(tcp.o_payload.valid & (feedback.ready | ~is_fed)),
                         self.o_payload.payload.eq(tcp.o_payload.payload),
                         tcp.o_payload.ready.eq(self.o_payload.ready & (feedback.ready | ~is_fed))]
            m.d.comb += [tcp.i_data.valid.eq(orders.valid & use_tcp), tcp.i_data.payload.eq(orders.payload)]
            with m.If(use_tcp):
                m.d.comb += [feedback.valid.eq(tcp.o_payload.valid & is_fed & self.o_payload.ready),
                             orders.ready.eq(tcp.i_data.ready)]
                for name, _ in feedback.payload.shape():
                    m.d.comb += getattr(feedback.payload, name).eq(getattr(tcp.o_payload.payload, name))
            # The engine's frames wait while the order port is the UDP path's.
            m.d.comb += [mac_in.valid.eq(Mux(use_tcp, tcp.o_tx.valid, self.net_tx.o_stream.valid)),
                         mac_in.payload.eq(Mux(use_tcp, tcp.o_tx.payload, self.net_tx.o_stream.payload)),
                         tcp.o_tx.ready.eq(use_tcp & mac_in.ready),
                         self.net_tx.o_stream.ready.eq(~use_tcp & mac_in.ready)]
        else:
            connect(m, self.net_tx.o_stream, mac_in)
        if self.gather is not None:
            with m.If(~use_tcp):
                m.d.comb += [feedback.valid.eq(self.i_inbound.valid), feedback.payload.eq(self.i_inbound.payload),
                             self.i_inbound.ready.eq(feedback.ready), orders.ready.eq(self.gather.i_stream.ready)]
            m.submodules.gather = self.gather
            m.d.comb += self.gather.i_stream.valid.eq(orders.valid & ~use_tcp)
            for name, _ in self.gather.i_stream.payload.shape():
                m.d.comb += getattr(self.gather.i_stream.payload, name).eq(getattr(orders.payload, name))
            connect(m, self.gather.o_stream, self.net_tx.i_stream)
        connect(m, self.mac_tx.xgmii, wiring.flipped(self.order_tx))
        return m
