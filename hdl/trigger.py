"""Strategy trigger: register-configured rules on the order book's top of book make order actions."""

from amaranth.hdl import Module, Signal, Mux, Const
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from ..protocols.strategy import RuleKind
from .book import bbo_layout
from .order import order_layout, OrderSource
from .csr import Register, registers_signature

__all__ = ["Trigger", "rule_registers"]


def rule_registers(k: int) -> tuple[Register, ...]:
    """The registers of rule ``k``."""
    return (
        Register(f"rule_{k}_kind", 8, "rw", f"Rule {k}: what it watches (tickwire.protocols.strategy.RuleKind; 0: off)."),
        Register(f"rule_{k}_slot", 16, "rw", f"Rule {k}: book slot of its symbol."),
        Register(f"rule_{k}_side", 8, "rw", f"Rule {k}: ASCII side of the order it sends: 'B' buys the best "
                 "ask, 'S' sells to the best bid.", reset=ord("B")),
        Register(f"rule_{k}_threshold", 32, "rw", f"Rule {k}: price limit, largest spread (price units), or "
                 "imbalance ratio (1/256 units), by kind."),
        Register(f"rule_{k}_quantity", 32, "rw", f"Rule {k}: largest quantity of one order."),
        Register(f"rule_{k}_session", 8, "rw", f"Rule {k}: order session its orders go to."),
        Register(f"rule_{k}_fired", 32, "ro", f"Rule {k}: orders made."),
    )


class Trigger(wiring.Component):
    """Evaluates every rule on each top-of-book record of its slot; a rule that starts to hold
    makes one order action (Enter Order, :data:`~tickwire.hdl.order.order_layout`).

    Rule kinds and their conditions are :class:`tickwire.protocols.strategy.RuleKind`. A rule
    holds only on a trusted record that was not recovered late, and only when the side it takes
    from has orders; it fires on the record where it starts to hold. Rules that fire on the same
    record send their orders in rule order, one a cycle. The order takes the best opposite price
    and the smaller of the rule's quantity and the shares there; its OUCH attributes come from the
    ``time_in_force`` ... ``cross_type`` registers; UserRefNum and ClOrdID are given downstream.

    Parameters
    ----------
    rules : int
        Rules live at once.

    Members
    -------
    i_stream : In(stream.Signature(bbo_layout))
    o_stream : Out(stream.Signature(order_layout))
    regs : Out(registers_signature(Trigger(...).registers))

    Latency
    -------
    2 cycles from a top-of-book record taken to the first order valid (cycle 1 registers the
    record, cycle 2 the verdict of every rule); the next record is taken once the orders of this
    one are out (tests/hdl/test_trigger.py).
    """

    def __init__(self, *, rules: int = 4):
        if not 1 <= rules <= 8:
            raise ValueError(f"rules must be 1..8, not {rules!r}")
        self.rules = rules
        self.registers = (
            Register("time_in_force", 8, "rw", "ASCII Time In Force of trigger orders.", reset=ord("0")),
            Register("display", 8, "rw", "ASCII Display of trigger orders.", reset=ord("Y")),
            Register("capacity", 8, "rw", "ASCII Capacity of trigger orders.", reset=ord("A")),
            Register("intermarket_sweep_eligibility", 8, "rw", "ASCII Intermarket Sweep Eligibility.", reset=ord("N")),
            Register("cross_type", 8, "rw", "ASCII Cross Type of trigger orders.", reset=ord("N")),
            *(reg for k in range(rules) for reg in rule_registers(k)),
            Register("fired", 32, "ro", "Orders made by all rules."),
        )
        super().__init__({
            "i_stream": In(stream.Signature(bbo_layout)),
            "o_stream": Out(stream.Signature(order_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        n = self.rules

        # Cycle 1: the record, registered.
        s1 = Signal()
        b = Signal(bbo_layout)
        # Cycle 2: the verdicts; orders go out from here, one a cycle.
        s2 = Signal()
        b2 = Signal(bbo_layout)
        pending = Signal(n)
        was = Signal(n)             # the rule held on the last record of its slot

        busy = Signal()
        m.d.comb += busy.eq(s2 & (pending != 0))
        m.d.comb += i.ready.eq(~s1 & ~busy)
        with m.If(i.valid & i.ready):
            m.d.sync += [s1.eq(1), b.eq(i.payload)]
        with m.Elif(s1):
            m.d.sync += s1.eq(0)

        holds = Signal(n)
        mine = Signal(n)
        usable = b.trusted & ~b.recovered
        bid_there, ask_there = b.bid_orders != 0, b.ask_orders != 0
        for k in range(n):
            kind = getattr(r, f"rule_{k}_kind")
            threshold = getattr(r, f"rule_{k}_threshold")
            side = getattr(r, f"rule_{k}_side")
            takes = Mux(side == ord("B"), ask_there, Mux(side == ord("S"), bid_there, 0))
            both = bid_there & ask_there
            cond = Signal(name=f"condition_{k}")
            with m.Switch(kind):
                with m.Case(RuleKind.ASK_AT_OR_BELOW):
                    m.d.comb += cond.eq(ask_there & (b.ask_price <= threshold))
                with m.Case(RuleKind.BID_AT_OR_ABOVE):
                    m.d.comb += cond.eq(bid_there & (b.bid_price >= threshold))
                with m.Case(RuleKind.SPREAD_AT_MOST):
                    m.d.comb += cond.eq(both & (b.ask_price - b.bid_price <= threshold))
                with m.Case(RuleKind.BID_IMBALANCE):
                    m.d.comb += cond.eq(both & ((b.bid_shares << 8) >= threshold * b.ask_shares))
                with m.Case(RuleKind.ASK_IMBALANCE):
                    m.d.comb += cond.eq(both & ((b.ask_shares << 8) >= threshold * b.bid_shares))
            m.d.comb += [mine[k].eq(s1 & (kind != RuleKind.OFF) & (getattr(r, f"rule_{k}_slot") == b.slot)),
                         holds[k].eq(usable & takes & cond)]
        with m.If(s1):
            m.d.sync += [s2.eq(1), b2.eq(b),
                         pending.eq(mine & holds & ~was),
                         was.eq((was & ~mine) | (mine & holds))]
        with m.Elif(s2 & (pending == 0)):
            m.d.sync += s2.eq(0)

        # Orders out: the lowest pending rule first.
        first = Signal(range(max(2, n)))
        for k in reversed(range(n)):
            with m.If(pending[k]):
                m.d.comb += first.eq(k)
        fired = Signal(32)
        counts = [Signal(32, name=f"rule_{k}_fired") for k in range(n)]
        m.d.comb += r.fired.eq(fired)
        for k in range(n):
            m.d.comb += getattr(r, f"rule_{k}_fired").eq(counts[k])

        def field(k, name):
            return getattr(r, f"rule_{k}_{name}")

        side = Signal(8)
        quantity = Signal(32)
        session = Signal(8)
        for k in range(n):
            with m.If(first == k):
                m.d.comb += [side.eq(field(k, "side")), quantity.eq(field(k, "quantity")),
                             session.eq(field(k, "session"))]
        buy = side == ord("B")
        there = Mux(buy, b2.ask_shares, b2.bid_shares)
        ord_ = o.payload
        m.d.comb += [
            o.valid.eq(s2 & (pending != 0)),
            ord_.action.eq(ord("O")), ord_.source.eq(OrderSource.TRIGGER), ord_.session.eq(session),
            ord_.slot.eq(b2.slot), ord_.stock_locate.eq(b2.stock_locate), ord_.stock.eq(b2.stock),
            ord_.side.eq(side), ord_.price.eq(Mux(buy, b2.ask_price, b2.bid_price)),
            ord_.quantity.eq(Mux(quantity < there, quantity, there)),
            ord_.time_in_force.eq(r.time_in_force), ord_.display.eq(r.display), ord_.capacity.eq(r.capacity),
            ord_.intermarket_sweep_eligibility.eq(r.intermarket_sweep_eligibility),
            ord_.cross_type.eq(r.cross_type),
            ord_.timestamp.eq(b2.timestamp), ord_.sequence_number.eq(b2.sequence_number),
        ]
        with m.If(o.valid & o.ready):
            m.d.sync += [pending.eq(pending & ~(Const(1, n) << first)), fired.eq(fired + 1)]
            for k in range(n):
                with m.If(first == k):
                    m.d.sync += counts[k].eq(counts[k] + 1)
        return m
