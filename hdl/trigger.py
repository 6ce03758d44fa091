"""Strategy trigger: one register-configured rule turns an added order into an order intent."""

from amaranth.hdl import Module, Signal, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from .itch import record_layout
from .csr import Register, registers_signature

__all__ = ["Trigger", "intent_layout"]

#: An order the strategy wants to send. ``side`` and ``stock`` are ASCII (``stock`` in wire
#: order); ``price`` has 4 implied decimals; ``timestamp`` and ``sequence_number`` say which
#: market-data message caused it.
intent_layout = data.StructLayout({
    "side": 8,
    "quantity": 32,
    "price": 32,
    "stock": 64,
    "stock_locate": 16,
    "timestamp": 48,
    "sequence_number": 64,
})


class Trigger(wiring.Component):
    """Fires on an Add Order (A or F) for the configured stock locate that crosses the limit.

    Messages that arrive late to fill a gap (``recovered``) never fire.
    Side 'B': a sell added at or below ``price_limit`` is bought; side 'S': a buy added at or
    above ``price_limit`` is sold. The intent takes the added order's price and the smaller of
    ``quantity`` and the added shares.

    Members
    -------
    i_stream : In(stream.Signature(record_layout))
    o_stream : Out(stream.Signature(intent_layout))
    regs : Out(registers_signature(Trigger.registers))

    Latency
    -------
    1 cycle (tests/hdl/test_trigger.py).
    """

    registers = (
        Register("enable", 1, "rw", "1: the rule is armed."),
        Register("stock_locate", 16, "rw", "Stock locate the rule watches."),
        Register("side", 8, "rw", "ASCII side of the order to send: 'B' (0x42) or 'S' (0x53).", reset=ord("B")),
        Register("price_limit", 32, "rw", "Limit price, 4 implied decimals."),
        Register("quantity", 32, "rw", "Largest quantity per order."),
        Register("fired", 32, "ro", "Intents produced."),
    )

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(record_layout)),
            "o_stream": Out(stream.Signature(intent_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        rec = i.payload
        fired = Signal(32)
        m.d.comb += r.fired.eq(fired)

        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

        is_add = (rec.message_type == ord("A")) | (rec.message_type == ord("F"))
        buy_hit = (r.side == ord("B")) & (rec.buy_sell_indicator == ord("S")) & (rec.price <= r.price_limit)
        sell_hit = (r.side == ord("S")) & (rec.buy_sell_indicator == ord("B")) & (rec.price >= r.price_limit)
        # A message that filled a gap late is history, not a market to trade on.
        hit = r.enable & ~rec.recovered & is_add & (rec.stock_locate == r.stock_locate) & (buy_hit | sell_hit)
        with m.If(i.valid & i.ready & hit):
            m.d.sync += [
                o.valid.eq(1),
                o.payload.side.eq(r.side),
                o.payload.quantity.eq(Mux(rec.shares < r.quantity, rec.shares, r.quantity)),
                o.payload.price.eq(rec.price),
                o.payload.stock.eq(rec.stock),
                o.payload.stock_locate.eq(rec.stock_locate),
                o.payload.timestamp.eq(rec.timestamp),
                o.payload.sequence_number.eq(rec.sequence_number),
                fired.eq(fired + 1),
            ]
        return m
