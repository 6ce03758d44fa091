"""Event stage: what the card tells the host, as 32-byte event records (protocols/events.py)."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.wiring import In, Out

from ..protocols.events import EventType, EventFlag, RECORD_BYTES
from .book import book_event_layout
from .moldudp64 import gap_layout
from .order import order_layout, OrderSource
from .risk import reject_layout
from .ouch_inbound import record_layout as exchange_record_layout
from .csr import Register, registers_signature

__all__ = ["EventStage", "event_record_layout", "SOURCES"]

#: One event record: the 32 bytes of :mod:`tickwire.protocols.events`, byte 0 in bits [7:0].
event_record_layout = data.StructLayout({"data": 8 * RECORD_BYTES})

#: The event sources, in priority order when several have an event waiting.
SOURCES = ("reject", "accepted", "exchange", "book", "gap")


class EventStage(wiring.Component):
    """Turns the pipeline's host-facing pulses into event records, one a cycle.

    Sources: orders risk accepted (``ORDER_SENT``; flag ``HOST`` for host orders), orders risk
    refused (``RISK_REJECT``, ``aux`` the reason), the book's events (``BOOK_UNTRUSTED``, ``aux``
    the book's event kind: 1 collision, 2 unknown reference, 4 depth exhausted untrust the symbol;
    3, a level outside the window, is reported with the same type and does not), the exchange's
    answers the inbound OUCH parser decoded (Order Accepted -> ``EXCHANGE_ACK``, Order Executed ->
    ``FILL`` with the liquidity flag in ``aux``, Order Canceled -> ``CANCEL`` with the reason;
    other messages and malformed packets make no event), and feed gaps (``GAP``). Each source waits in a small FIFO; when one is full its new events are dropped and
    counted in ``dropped``. Records carry a sequence number counted from 0 and the cycle the
    event entered the stage.

    Parameters
    ----------
    depth : int
        Events each source can hold while the output is busy.

    Members
    -------
    i_accepted : In(stream.Signature(order_layout, always_ready=True))
    i_reject : In(stream.Signature(reject_layout, always_ready=True))
    i_book : In(stream.Signature(book_event_layout, always_ready=True))
    i_gap : In(stream.Signature(gap_layout, always_ready=True))
    i_exchange : In(stream.Signature(tickwire.hdl.ouch_inbound.record_layout, always_ready=True))
    o_stream : Out(stream.Signature(event_record_layout))
    regs : Out(registers_signature(EventStage.registers))

    Latency
    -------
    2 cycles from an event in to its record valid when the output is free (FIFO, then the
    record register) (tests/hdl/test_events.py).
    """

    registers = (
        Register("events", 32, "ro", "Event records sent."),
        Register("dropped", 32, "ro", "Events lost: their source's queue was full."),
    )

    def __init__(self, *, depth: int = 16):
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth!r}")
        self.depth = depth
        super().__init__({
            "i_accepted": In(stream.Signature(order_layout, always_ready=True)),
            "i_reject": In(stream.Signature(reject_layout, always_ready=True)),
            "i_book": In(stream.Signature(book_event_layout, always_ready=True)),
            "i_gap": In(stream.Signature(gap_layout, always_ready=True)),
            "i_exchange": In(stream.Signature(exchange_record_layout, always_ready=True)),
            "o_stream": Out(stream.Signature(event_record_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        o, r = self.o_stream, self.regs
        cycles = Signal(64)
        m.d.sync += cycles.eq(cycles + 1)
        sequence = Signal(32)
        sent, dropped = Signal(32), Signal(32)
        m.d.comb += [r.events.eq(sent), r.dropped.eq(dropped)]

        # Each source's event, already packed as (type, flags, aux, payload), with its cycle.
        entry = data.StructLayout({"type": 8, "flags": 8, "aux": 16, "cycles": 64, "payload": 128})

        def packed(kind, flags, aux, *fields):
            e = Signal(entry)
            payload = Cat(*fields)
            m.d.comb += [e.type.eq(kind), e.flags.eq(flags), e.aux.eq(aux), e.cycles.eq(cycles),
                         e.payload.eq(Cat(payload, Const(0, 128 - len(payload))) if len(payload) < 128 else payload)]
            return e

        a = self.i_accepted.payload
        j = self.i_reject.payload
        b = self.i_book.payload
        g = self.i_gap.payload
        x = self.i_exchange.payload
        data_packet = self.i_exchange.valid & (x.packet_type == ord("S")) & (x.error == 0)
        ack, fill, cancel = (data_packet & (x.message_type == ord(c)) for c in "AEC")
        exchange = Signal(entry)
        with m.If(ack):
            m.d.comb += exchange.eq(packed(EventType.EXCHANGE_ACK, 0, 0, x.user_ref_num[:32], x.quantity[:32],
                                           x.order_reference_number[:64]))
        with m.Elif(fill):
            m.d.comb += exchange.eq(packed(EventType.FILL, 0, x.liquidity_flag[:8], x.user_ref_num[:32],
                                           x.quantity[:32], x.price[:32], x.session[:8], Const(0, 24)))
        with m.Else():
            m.d.comb += exchange.eq(packed(EventType.CANCEL, 0, x.reason[:8], x.user_ref_num[:32], x.quantity[:32],
                                           x.session[:8], Const(0, 56)))
        sources = {
            "exchange": (ack | fill | cancel, exchange),
            "reject": (self.i_reject.valid, packed(
                EventType.RISK_REJECT, Mux(j.order.source == OrderSource.HOST, EventFlag.HOST, 0), j.reason,
                j.order.quantity[:32], j.order.price[:32], j.order.stock_locate[:16], j.order.side[:8],
                j.order.session[:8], j.order.slot[:16], Const(0, 16))),
            "accepted": (self.i_accepted.valid, packed(
                EventType.ORDER_SENT, Mux(a.source == OrderSource.HOST, EventFlag.HOST, 0), a.action,
                a.user_ref_num[:32], a.quantity[:32], a.price[:32], a.stock_locate[:16], a.side[:8],
                a.session[:8])),
            "book": (self.i_book.valid, packed(
                EventType.BOOK_UNTRUSTED, 0, b.kind, b.slot[:16], b.stock_locate[:16], Const(0, 96))),
            "gap": (self.i_gap.valid, packed(
                EventType.GAP, 0, 0, g.sequence_number[:64], g.message_count[:32], Const(0, 32))),
        }

        queues = []
        for name in SOURCES:
            valid, e = sources[name]
            q = m.submodules[f"queue_{name}"] = fifo.SyncFIFO(width=entry.size, depth=self.depth)
            m.d.comb += [q.w_en.eq(valid), q.w_data.eq(e)]
            queues.append((q, valid))
        lost = Signal(range(len(SOURCES) + 1))
        m.d.comb += lost.eq(sum((valid & ~q.w_rdy) for q, valid in queues))
        m.d.sync += dropped.eq(dropped + lost)

        # Output: the first source with an event waiting, into the record register.
        advance = ~o.valid | o.ready
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        chosen = Signal(entry)
        any_ready = Signal()
        for q, _ in reversed(queues):
            with m.If(q.r_rdy):
                m.d.comb += [chosen.eq(q.r_data), any_ready.eq(1)]
        taken = Signal(len(queues))
        for k, (q, _) in enumerate(queues):
            earlier = [queues[i][0].r_rdy for i in range(k)]
            m.d.comb += taken[k].eq(advance & q.r_rdy & ~Cat(*earlier).any() if earlier else advance & q.r_rdy)
            m.d.comb += q.r_en.eq(taken[k])
        with m.If(advance & any_ready):
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(Cat(chosen.type, chosen.flags, chosen.aux, sequence, chosen.cycles, chosen.payload)),
                sequence.eq(sequence + 1), sent.eq(sent + 1),
            ]
        return m
