"""Order entry (hdl/order_entry.py) in the Amaranth simulator against
:class:`tickwire.sim.model.OrderEntryModel`: trigger and host orders merged (trigger first),
UserRefNum and ClOrdID given, host queue full -> dropped, host exposure updates, latency 1."""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from tickwire.hdl.order import OrderSource, order_layout
from tickwire.hdl.order_entry import HOST_EXPOSURE_FIELDS, HOST_ORDER_FIELDS, OrderEntry
from tickwire.sim.model import OrderEntryModel, RegisterFile, order_values

LATENCY = 1


def _view(view) -> dict:
    return {name: int(getattr(view, name).as_value().value) if hasattr(getattr(view, name), "as_value")
            else int(getattr(view, name)) for name, _ in view.shape()}


def random_order(rng, source):
    return order_values(action=ord(rng.choice("OOOUXMZ")), source=source, session=rng.randrange(5),
                        slot=rng.randrange(8), side=ord(rng.choice("BS")), quantity=rng.randrange(1000),
                        price=rng.randrange(1 << 24),
                        user_ref_num=0 if rng.random() < 0.7 else rng.randrange(1, 60))


def simulate(steps, *, backpressure=0.0, seed=1, queue_depth=4):
    """``steps``: per cycle, (trigger order or None, host order or None, exposure or None)."""
    dut = OrderEntry(sessions=4, host_queue_depth=queue_depth)
    rng = random.Random(seed)
    out, taken_trigger, exposures, result = [], [], [], {}
    regs = RegisterFile()

    async def bench(ctx):
        for name, value in regs.items():
            stage, _, reg = name.partition(".")
            if stage == "order_entry" and hasattr(dut.regs, reg) and not reg.endswith(("_submit",)):
                ctx.set(getattr(dut.regs, reg), value)
        cycle = 0
        pending = []
        for step in steps + [(None, None, None)] * 80:
            trig, host, exposure = step
            if trig is not None:
                pending.append(trig)
            ctx.set(dut.i_trigger.valid, int(bool(pending)))
            if pending:
                ctx.set(dut.i_trigger.payload, order_layout.const(pending[0]))
            ctx.set(dut.regs.host_submit_stb, int(host is not None))
            if host is not None:
                for name in HOST_ORDER_FIELDS:
                    ctx.set(getattr(dut.regs, f"host_{name}"), host[name])
            ctx.set(dut.regs.exposure_submit_stb, int(exposure is not None))
            if exposure is not None:
                for name in HOST_EXPOSURE_FIELDS:
                    ctx.set(getattr(dut.regs, f"exposure_{name}"), exposure[name])
            ctx.set(dut.o_stream.ready, int(rng.random() >= backpressure))
            ctx.set(dut.o_exposure.ready, 1)
            await ctx.delay(1e-9)
            if ctx.get(dut.i_trigger.valid) and ctx.get(dut.i_trigger.ready):
                taken_trigger.append(cycle)
                pending.pop(0)
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.ready):
                out.append((cycle, _view(ctx.get(dut.o_stream.payload))))
            if ctx.get(dut.o_exposure.valid):
                exposures.append(_view(ctx.get(dut.o_exposure.payload)))
            await ctx.tick()
            cycle += 1
        for name in ("host_submitted", "host_dropped", "orders", "exposure_submitted"):
            result[name] = ctx.get(getattr(dut.regs, name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, taken_trigger, exposures, result


def test_numbering_matches_the_model():
    rng = random.Random(2)
    steps = []
    for _ in range(300):
        trig = random_order(rng, OrderSource.TRIGGER) if rng.random() < 0.3 else None
        host = random_order(rng, OrderSource.HOST) if rng.random() < 0.15 else None
        steps.append((trig, host, None))
    out, _, _, result = simulate(steps, queue_depth=64)
    # Both sources arrive in the order the card takes them: the model numbers in output order.
    model = OrderEntryModel(RegisterFile(), sessions=4)
    # Replay with the inputs: every trigger order and host order, in the order they left.
    trig_orders = [t for t, _, _ in steps if t is not None]
    host_orders = [h for _, h, _ in steps if h is not None]
    assert len(out) == len(trig_orders) + len(host_orders) == result["orders"]
    t_iter, h_iter = iter(trig_orders), iter(host_orders)
    for _, got in out:
        given = next(t_iter) if got["source"] == OrderSource.TRIGGER else next(h_iter)
        want = model.process(given)
        assert got == want
    assert result["host_submitted"] == len(host_orders) and result["host_dropped"] == 0


def test_host_queue_full_drops_and_trigger_goes_first():
    rng = random.Random(3)
    steps = [(random_order(rng, OrderSource.TRIGGER), random_order(rng, OrderSource.HOST), None)
             for _ in range(12)]
    out, _, _, result = simulate(steps, queue_depth=4, backpressure=0.0)
    sources = [o["source"] for _, o in out]
    assert sources[:12] == [OrderSource.TRIGGER] * 12          # the trigger never waits for the host
    assert result["host_dropped"] > 0
    assert result["host_submitted"] + result["host_dropped"] == 12
    assert sources.count(OrderSource.HOST) == result["host_submitted"]


def test_latency_and_backpressure():
    rng = random.Random(4)
    steps = [(random_order(rng, OrderSource.TRIGGER), None, None) if n % 3 == 0 else (None, None, None)
             for n in range(60)]
    out, taken, _, _ = simulate(steps)
    assert [c for c, _ in out] == [t + LATENCY for t in taken]
    out, taken, _, _ = simulate(steps, backpressure=0.5, seed=9)
    assert len(out) == 20 and all(c >= t + LATENCY for (c, _), t in zip(out, taken))


def test_exposure_updates_pass_to_risk():
    updates = [{"kind": k % 5, "session": k % 4, "slot": k, "side": ord("B"), "quantity": 10 * k,
                "price": 100 + k, "user_ref_num": k} for k in range(6)]
    steps = [(None, None, u) for u in updates]
    _, _, exposures, result = simulate(steps)
    assert exposures == updates and result["exposure_submitted"] == 6
