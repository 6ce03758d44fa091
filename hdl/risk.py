"""Pre-trade risk gate: kill switch, quantity and notional limits, fixed latency."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols.risk import RejectReason, VERDICT_COUNTERS
from .trigger import intent_layout
from .csr import Register, registers_signature

__all__ = ["Risk", "reject_layout"]

reject_layout = data.StructLayout({"reason": 4, "intent": intent_layout})


class Risk(wiring.Component):
    """Checks every order intent; passes it or rejects it with a reason code.

    Checks in priority order (the first failing one is the reason, codes from
    :class:`tickwire.protocols.risk.RejectReason`): kill switch, zero quantity, maximum order
    quantity, maximum order notional (quantity x price in units of 1/10000).

    Members
    -------
    i_stream : In(stream.Signature(intent_layout))
    o_stream : Out(stream.Signature(intent_layout))
        Accepted intents.
    o_reject : Out(stream.Signature(reject_layout, always_ready=True))
        Rejected intents with their reason (a pulse per reject; never back-pressures).
    regs : Out(registers_signature(Risk.registers))

    Latency
    -------
    2 cycles, fixed: cycle 1 registers the product and the comparisons of the intent, cycle 2 the
    verdict (tests/hdl/test_risk.py). A kill-switch write stops every intent that reaches the
    verdict from the cycle after the write lands.
    """

    registers = (
        Register("kill", 1, "rw", "Kill switch: 1 rejects every order."),
        Register("max_order_quantity", 32, "rw", "Largest quantity of one order."),
        Register("max_order_notional", 64, "rw", "Largest quantity x price (price with 4 decimals) of one order."),
        Register("accepted", 32, "ro", "Orders passed."),
        Register("rejected_kill", 32, "ro", "Orders rejected by the kill switch."),
        Register("rejected_zero_quantity", 32, "ro", "Orders rejected for quantity 0."),
        Register("rejected_quantity", 32, "ro", "Orders rejected for quantity above the limit."),
        Register("rejected_notional", 32, "ro", "Orders rejected for notional above the limit."),
        Register("last_reject_reason", 4, "ro", "Reason code of the latest reject (0: none yet)."),
    )

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(intent_layout)),
            "o_stream": Out(stream.Signature(intent_layout)),
            "o_reject": Out(stream.Signature(reject_layout, always_ready=True)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        counters = {name: Signal(32, name=name) for name in VERDICT_COUNTERS.values()}
        last_reason = Signal(4)
        for name, sig in counters.items():
            m.d.comb += getattr(r, name).eq(sig)
        m.d.comb += r.last_reject_reason.eq(last_reason)

        # The pipeline moves when its output is free or being taken.
        advance = Signal()
        m.d.comb += [advance.eq(~o.valid | o.ready), i.ready.eq(advance)]

        # Stage 1: the intent, its notional and the quantity checks.
        s1_valid = Signal()
        s1 = Signal(intent_layout)
        s1_notional = Signal(64)
        s1_zero = Signal()
        s1_qty = Signal()
        with m.If(advance):
            m.d.sync += [s1_valid.eq(i.valid), s1.eq(i.payload),
                         s1_notional.eq(i.payload.quantity * i.payload.price),
                         s1_zero.eq(i.payload.quantity == 0),
                         s1_qty.eq(i.payload.quantity > r.max_order_quantity)]

        # Stage 2: the verdict. The kill switch is read here, so it acts on the cycle it is set.
        reason = Signal(4)
        with m.If(r.kill):
            m.d.comb += reason.eq(RejectReason.KILL)
        with m.Elif(s1_zero):
            m.d.comb += reason.eq(RejectReason.ZERO_QUANTITY)
        with m.Elif(s1_qty):
            m.d.comb += reason.eq(RejectReason.MAX_QUANTITY)
        with m.Elif(s1_notional > r.max_order_notional):
            m.d.comb += reason.eq(RejectReason.MAX_NOTIONAL)
        with m.Else():
            m.d.comb += reason.eq(RejectReason.NONE)

        m.d.sync += self.o_reject.valid.eq(0)
        with m.If(advance):
            m.d.sync += [o.valid.eq(s1_valid & (reason == RejectReason.NONE)), o.payload.eq(s1)]
            with m.If(s1_valid):
                with m.Switch(reason):
                    for code, name in VERDICT_COUNTERS.items():
                        with m.Case(code):
                            m.d.sync += counters[name].eq(counters[name] + 1)
                with m.If(reason != RejectReason.NONE):
                    m.d.sync += [last_reason.eq(reason), self.o_reject.valid.eq(1),
                                 self.o_reject.payload.reason.eq(reason),
                                 self.o_reject.payload.intent.eq(s1)]
        return m
