"""Order entry: trigger orders and host-submitted orders merged, UserRefNum and ClOrdID given."""

from amaranth.hdl import Module, Signal, Mux, Cat, Const
from amaranth.lib import wiring, stream, fifo
from amaranth.lib.wiring import In, Out

from .order import order_layout, OrderSource, APPENDAGE_FIELDS
from .risk import exposure_update_layout
from .csr import Register, registers_signature

__all__ = ["OrderEntry", "HOST_ORDER_FIELDS", "HOST_EXPOSURE_FIELDS"]

#: Fields of a host order the host stages in ``host_<field>`` registers before ``host_submit``.
HOST_ORDER_FIELDS = {
    "action": 8, "session": 8, "slot": 16, "stock_locate": 16, "stock": 64, "side": 8, "quantity": 32,
    "price": 32, "user_ref_num": 32, "orig_user_ref_num": 32, "time_in_force": 8, "display": 8,
    "capacity": 8, "intermarket_sweep_eligibility": 8, "cross_type": 8,
    "appendage_mask": len(APPENDAGE_FIELDS), **APPENDAGE_FIELDS,
}


#: Fields of an exposure update (``tickwire.hdl.risk.exposure_update_layout``) the host stages in
#: ``exposure_<field>`` registers before ``exposure_submit``: executions and cancels it learned of
#: (until the inbound OUCH path reports them from the card itself).
HOST_EXPOSURE_FIELDS = {"kind": 3, "session": 8, "slot": 16, "side": 8, "quantity": 32, "price": 32,
                        "user_ref_num": 32}


def _hex_ascii(nibble):
    """ASCII upper-case hex digit of a 4-bit value, 8 bits wide."""
    return Mux(nibble < 10, nibble + ord("0"), nibble + (ord("A") - 10)).as_unsigned() | Const(0, 8)


class OrderEntry(wiring.Component):
    """Merges the trigger's orders and the host's into one stream for risk, numbering them.

    Host orders: the host writes the ``host_*`` registers (one order's fields) and then
    ``host_submit``; the order joins a queue (``host_queue_depth``) and is counted in
    ``host_submitted``, or, with the queue full, dropped and counted in ``host_dropped``.
    Trigger orders go first when both wait. An Enter ('O') or Replace ('U') whose
    ``user_ref_num`` is 0 gets its session's next UserRefNum; one that brings its own moves the
    session's counter past it. Every order gets the ClOrdID: the 4 characters of
    ``cl_ord_id_prefix``, its UserRefNum in 8 upper-case hex digits, two spaces. The host sets a
    session's next UserRefNum by writing ``user_ref_num_session`` and then ``next_user_ref_num``;
    ``session_user_ref_num`` shows the selected session's.

    Parameters
    ----------
    sessions : int
        Order sessions (each its own UserRefNum counter).
    host_queue_depth : int
        Host orders that can wait.

    Members
    -------
    i_trigger : In(stream.Signature(order_layout))
    o_stream : Out(stream.Signature(order_layout))
    o_exposure : Out(stream.Signature(tickwire.hdl.risk.exposure_update_layout))
        Host exposure updates: one per ``exposure_submit`` write (risk always takes them).
    regs : Out(registers_signature(OrderEntry(...).registers))

    Latency
    -------
    1 cycle from an order taken to it valid on ``o_stream`` (tests/hdl/test_order_entry.py).
    """

    def __init__(self, *, sessions: int = 4, host_queue_depth: int = 8):
        if not 1 <= sessions <= 64:
            raise ValueError(f"sessions must be 1..64, not {sessions!r}")
        if host_queue_depth < 1:
            raise ValueError(f"host_queue_depth must be at least 1, not {host_queue_depth!r}")
        self.sessions, self.host_queue_depth = sessions, host_queue_depth
        self.registers = (
            *(Register(f"host_{name}", width, "rw", f"Host order being staged: {name}.")
              for name, width in HOST_ORDER_FIELDS.items()),
            Register("host_submit", 1, "rw", "Write 1: the staged host order joins the queue.", strobe=True),
            Register("host_queue_level", 8, "ro", "Host orders waiting."),
            Register("host_submitted", 32, "ro", "Host orders queued."),
            Register("host_dropped", 32, "ro", "Host orders dropped: the queue was full."),
            Register("cl_ord_id_prefix", 32, "rw", "Four ASCII characters that start every ClOrdID "
                     "(first in bits 31:24).", reset=int.from_bytes(b"TW01", "big")),
            Register("user_ref_num_session", 8, "rw", "Session next_user_ref_num reads and writes."),
            Register("next_user_ref_num", 32, "rw", "Writing it sets the selected session's next UserRefNum.",
                     reset=1, strobe=True),
            Register("session_user_ref_num", 32, "ro", "Next UserRefNum of the selected session."),
            Register("orders", 32, "ro", "Orders passed to risk."),
            *(Register(f"exposure_{name}", width, "rw", f"Exposure update being staged: {name}.")
              for name, width in HOST_EXPOSURE_FIELDS.items()),
            Register("exposure_submit", 1, "rw", "Write 1: the staged exposure update goes to risk.", strobe=True),
            Register("exposure_submitted", 32, "ro", "Exposure updates sent to risk."),
        )
        super().__init__({
            "i_trigger": In(stream.Signature(order_layout)),
            "o_stream": Out(stream.Signature(order_layout)),
            "o_exposure": Out(stream.Signature(exposure_update_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        r, o = self.regs, self.o_stream
        n = self.sessions
        sbits = max(1, (n - 1).bit_length())

        queue = m.submodules.host_queue = fifo.SyncFIFOBuffered(width=order_layout.size, depth=self.host_queue_depth)
        staged = Signal(order_layout)
        for name in HOST_ORDER_FIELDS:
            m.d.comb += getattr(staged, name).eq(getattr(r, f"host_{name}"))
        m.d.comb += [staged.source.eq(OrderSource.HOST), queue.w_data.eq(staged),
                     queue.w_en.eq(r.host_submit_stb), r.host_queue_level.eq(queue.level)]
        submitted, dropped, orders = Signal(32), Signal(32), Signal(32)
        m.d.comb += [r.host_submitted.eq(submitted), r.host_dropped.eq(dropped), r.orders.eq(orders)]
        with m.If(r.host_submit_stb):
            with m.If(queue.w_rdy):
                m.d.sync += submitted.eq(submitted + 1)
            with m.Else():
                m.d.sync += dropped.eq(dropped + 1)

        counters = [Signal(32, name=f"next_user_ref_num_{k}", init=1) for k in range(n)]
        for k in range(n):
            with m.If(r.user_ref_num_session == k):
                m.d.comb += r.session_user_ref_num.eq(counters[k])

        # Pick: the trigger first.
        take_trigger = Signal()
        take_host = Signal()
        advance = Signal()
        m.d.comb += advance.eq(~o.valid | o.ready)
        m.d.comb += [take_trigger.eq(advance & self.i_trigger.valid),
                     take_host.eq(advance & ~self.i_trigger.valid & queue.r_rdy),
                     self.i_trigger.ready.eq(advance), queue.r_en.eq(take_host)]
        order = Signal(order_layout)
        m.d.comb += order.eq(Mux(self.i_trigger.valid, self.i_trigger.payload.as_value(), queue.r_data))
        session = order.session[:sbits]
        current = Signal(32)
        for k in range(n):
            with m.If(session == k):
                m.d.comb += current.eq(counters[k])
        numbered = (order.action == ord("O")) | (order.action == ord("U"))
        assign = Signal()
        m.d.comb += assign.eq(numbered & (order.user_ref_num == 0) & (order.session < n))
        number = Signal(32)
        m.d.comb += number.eq(Mux(assign, current, order.user_ref_num))
        prefix = r.cl_ord_id_prefix
        cl_ord_id = Cat(prefix[24:32], prefix[16:24], prefix[8:16], prefix[0:8],
                        *(_hex_ascii(number[4 * (7 - k):4 * (8 - k)]) for k in range(8)),
                        Const(ord(" "), 8), Const(ord(" "), 8))

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(take_trigger | take_host):
            m.d.sync += [o.valid.eq(1), o.payload.eq(order), o.payload.user_ref_num.eq(number),
                         o.payload.cl_ord_id.eq(cl_ord_id), orders.eq(orders + 1)]
            with m.If(numbered & (order.session < n) & (number >= current)):
                for k in range(n):
                    with m.If(session == k):
                        m.d.sync += counters[k].eq(number + 1)
        # Host exposure updates: the staged fields, one beat per submit.
        submitted_exposure = Signal(32)
        m.d.comb += r.exposure_submitted.eq(submitted_exposure)
        with m.If(self.o_exposure.valid & self.o_exposure.ready):
            m.d.sync += self.o_exposure.valid.eq(0)
        with m.If(r.exposure_submit_stb):
            m.d.sync += [self.o_exposure.valid.eq(1), submitted_exposure.eq(submitted_exposure + 1)]
            for name in HOST_EXPOSURE_FIELDS:
                m.d.sync += getattr(self.o_exposure.payload, name).eq(getattr(r, f"exposure_{name}"))
        # A host write of the selected session's counter wins over an order in the same cycle.
        with m.If(r.next_user_ref_num_stb & (r.user_ref_num_session < n)):
            for k in range(n):
                with m.If(r.user_ref_num_session == k):
                    m.d.sync += counters[k].eq(r.next_user_ref_num)
        return m
