"""Risk -> order queue -> OUCH (hdl/top.py OrderPath) in the Amaranth simulator: the packets of
accepted orders are the reference packets (sim/ouch_model.expected_packet), rejects carry their
reason, and the latency from an order taken by risk to the first OUCH byte is measured."""

from __future__ import annotations

from amaranth.sim import Simulator

from tickwire.hdl.order import order_layout
from tickwire.hdl.top import OrderPath
from tickwire.protocols.risk import RejectReason
from tickwire.sim.model import cl_ord_id, order_values
from tickwire.sim.order_wire import SESSION_LIMITS, SLOT_LIMITS, measure_order_to_wire
from tickwire.sim.ouch_model import expected_packet

#: Cycles from an order taken by risk to the first beat of its OUCH packet (OrderPath docstring).
LATENCY = 4
#: Cycles from an order taken by risk to the /S/ of its TCP segment on XGMII (docs/architecture.md):
#: risk 2, queue 1, OUCH 1, the rest of the 7-beat packet 6 (stored whole: the TCP checksum covers
#: it), TCP engine 4, MAC 1.
WIRE_LATENCY = 15


def order(n, **fields):
    base = dict(action=ord("O"), side=ord("B"), quantity=100, price=100_0000, slot=0, session=0, user_ref_num=n,
                stock=int.from_bytes(b"AAPL    ", "little"), time_in_force=ord("0"), display=ord("Y"),
                capacity=ord("A"), intermarket_sweep_eligibility=ord("N"), cross_type=ord("N"),
                cl_ord_id=cl_ord_id(int.from_bytes(b"TW01", "big"), n))
    return order_values(**{**base, **fields})


def run(orders, gap=0):
    dut = OrderPath(slots=2, sessions=1, order_queue_depth=4)
    regs = dut.risk.regs
    taken, first_beats, packets, rejects = [], [], [], []

    async def bench(ctx):
        async def write(name, value, **select):
            for sel, index in select.items():
                ctx.set(getattr(regs, sel), index)
            ctx.set(getattr(regs, name), value)
            ctx.set(getattr(regs, f"{name}_stb"), 1)
            await ctx.tick()
            ctx.set(getattr(regs, f"{name}_stb"), 0)
        for name, value in SLOT_LIMITS.items():
            await write(name, value, limit_slot=0)
        for name, value in SESSION_LIMITS.items():
            await write(name, value, limit_session=0)
        for _ in range(4):
            await ctx.tick()
        ctx.set(dut.o_stream.ready, 1)
        cycle, index, current, idle = 0, 0, b"", 0
        while idle < 120:
            ctx.set(dut.i_stream.valid, index < len(orders))
            if index < len(orders):
                ctx.set(dut.i_stream.payload, order_layout.const(orders[index]))
            await ctx.delay(1e-9)
            if ctx.get(dut.i_stream.valid) and ctx.get(dut.i_stream.ready):
                taken.append(cycle)
                index += 1
            if ctx.get(dut.o_stream.valid):
                beat = ctx.get(dut.o_stream.payload)
                if not current:
                    first_beats.append(cycle)
                current += int(beat.data).to_bytes(8, "little")[:int(beat.nbytes)]
                if beat.last:
                    packets.append(current)
                    current = b""
            if ctx.get(dut.o_reject.valid):
                rejects.append(int(ctx.get(dut.o_reject.payload.reason)))
            await ctx.tick()
            cycle += 1
            idle = idle + 1 if index >= len(orders) else 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return taken, first_beats, packets, rejects


def test_packets_and_latency():
    orders = [order(n) for n in range(1, 6)] + [order(6, quantity=0), order(7, slot=1)] + \
             [order(8, appendage_mask=1, min_qty=5)]
    taken, first_beats, packets, rejects = run(orders)
    accepted = [o for o in orders if o["quantity"] and o["slot"] == 0]
    assert packets == [expected_packet(o) for o in accepted]
    assert rejects == [RejectReason.ZERO_QUANTITY, RejectReason.SYMBOL_DISABLED]
    # The first order meets an empty path: its first OUCH byte comes LATENCY cycles after risk took it.
    assert first_beats[0] - taken[0] == LATENCY


def test_latency_of_every_order_when_spaced():
    orders = [order(n) for n in range(1, 5)]
    taken, first_beats, packets, _ = run(orders)
    # Back to back the encoder (7 beats a packet) is the limit; the first is measured alone above.
    assert len(packets) == 4 and all(b - t >= LATENCY for t, b in zip(taken, first_beats))


def test_order_intent_to_the_first_byte_of_its_tcp_segment():
    """Risk takes the order -> OUCH -> TCP engine -> MAC: /S/ of the segment on XGMII
    (sim/order_wire.py, also run by ``make bench``)."""
    assert measure_order_to_wire(order(1))["cycles"] == WIRE_LATENCY
