"""The rule trigger (hdl/trigger.py) in the Amaranth simulator against
:class:`tickwire.sim.model.TriggerModel`: random top-of-book sequences, random rule sets, random
backpressure; every order and counter compared; latency measured. The cocotb bench
(sim/tb_trigger.py) runs the same comparison on Verilator."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from tickwire.hdl.book import bbo_layout
from tickwire.hdl.order import order_layout
from tickwire.hdl.trigger import Trigger
from tickwire.protocols.strategy import RuleKind
from tickwire.sim.model import RegisterFile, TriggerModel
from tickwire.sim.runner import run

#: Cycles from a top-of-book record taken to its first order valid (docstring of Trigger).
LATENCY = 2
RULES = 4


def random_rules(rng: random.Random) -> dict[str, int]:
    regs = {}
    for k in range(RULES):
        kind = rng.choice(list(RuleKind))
        regs.update({
            f"trigger.rule_{k}_kind": kind, f"trigger.rule_{k}_slot": rng.randrange(3),
            f"trigger.rule_{k}_side": rng.choice([ord("B"), ord("S"), ord("B"), ord("X")]),
            f"trigger.rule_{k}_threshold": {RuleKind.ASK_AT_OR_BELOW: 1005, RuleKind.BID_AT_OR_ABOVE: 995,
                                            RuleKind.SPREAD_AT_MOST: rng.choice([0, 5, 10]),
                                            RuleKind.BID_IMBALANCE: rng.choice([256, 512, 128]),
                                            RuleKind.ASK_IMBALANCE: rng.choice([256, 384])}.get(kind, 0)
            + rng.randrange(-3, 4) * (kind in (RuleKind.ASK_AT_OR_BELOW, RuleKind.BID_AT_OR_ABOVE)),
            f"trigger.rule_{k}_quantity": rng.choice([0, 50, 100, 1000]),
            f"trigger.rule_{k}_session": rng.randrange(4),
        })
    return regs


def random_bbos(rng: random.Random, count: int) -> list[dict[str, int]]:
    out = []
    for n in range(count):
        bid_orders, ask_orders = rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 3])
        out.append({
            "slot": rng.randrange(3), "stock_locate": 7, "stock": int.from_bytes(b"AAPL    ", "little"),
            "timestamp": n * 10, "sequence_number": n + 1, "recovered": int(rng.random() < 0.05),
            "trusted": int(rng.random() > 0.05),
            "bid_price": 990 + rng.randrange(10) if bid_orders else 0,
            "bid_shares": rng.choice([100, 200, 300, 50]) if bid_orders else 0, "bid_orders": bid_orders,
            "ask_price": 1000 + rng.randrange(10) if ask_orders else 0,
            "ask_shares": rng.choice([100, 200, 300, 50]) if ask_orders else 0, "ask_orders": ask_orders,
        })
    return out


def simulate(bbos, registers, *, backpressure=0.0, seed=1):
    dut = Trigger(rules=RULES)
    rng = random.Random(seed)
    orders: list[tuple[int, dict]] = []
    taken: list[int] = []
    fired: dict[str, int] = {}

    async def bench(ctx):
        for name, value in RegisterFile(registers).items():
            stage, _, reg = name.partition(".")
            if stage == "trigger" and hasattr(dut.regs, reg):
                ctx.set(getattr(dut.regs, reg), value)
        cycle, index, idle = 0, 0, 0
        while idle < 20:
            if index < len(bbos):
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, bbo_layout.const(bbos[index]))
            else:
                ctx.set(dut.i_stream.valid, 0)
                idle += 1
            ctx.set(dut.o_stream.ready, int(rng.random() >= backpressure))
            await ctx.delay(1e-9)
            if ctx.get(dut.i_stream.valid) and ctx.get(dut.i_stream.ready):
                taken.append(cycle)
                index += 1
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.ready):
                p = ctx.get(dut.o_stream.payload)
                orders.append((cycle, {name: int(getattr(p, name).as_value().value) if hasattr(getattr(p, name), "as_value")
                                       else int(getattr(p, name)) for name, _ in order_layout}))
            await ctx.tick()
            cycle += 1
        fired["trigger.fired"] = ctx.get(dut.regs.fired)
        for k in range(RULES):
            fired[f"trigger.rule_{k}_fired"] = ctx.get(getattr(dut.regs, f"rule_{k}_fired"))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return orders, taken, fired


def check(bbos, registers, **kwargs):
    orders, taken, fired = simulate(bbos, registers, **kwargs)
    model = TriggerModel(RegisterFile(registers), rules=RULES)
    expected = [(k, o) for k, b in enumerate(bbos) for o in model.process(b)]
    assert len(orders) == len(expected)
    for (_, got), (k, want) in zip(orders, expected):
        assert {f: got[f] for f in want} == want, (k, {f: (got[f], v) for f, v in want.items() if got[f] != v})
        assert got["user_ref_num"] == 0 and got["appendage_mask"] == 0
    assert fired == model.counters
    return orders, taken, expected


def test_random_rules():
    rng = random.Random(5)
    total = 0
    for _ in range(6):
        regs = random_rules(rng)
        orders, _, _ = check(random_bbos(rng, 300), regs)
        total += len(orders)
    assert total > 50


def test_random_rules_backpressure():
    rng = random.Random(9)
    check(random_bbos(rng, 300), random_rules(rng), backpressure=0.5, seed=2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_hypothesis_rules(seed):
    rng = random.Random(seed)
    check(random_bbos(rng, 60), random_rules(rng), backpressure=rng.choice([0.0, 0.3]), seed=seed)


def test_edge_not_level_and_latency():
    """A rule fires when it starts to hold, not again while it keeps holding; 2 cycles."""
    regs = {"trigger.rule_0_kind": RuleKind.ASK_AT_OR_BELOW, "trigger.rule_0_slot": 1,
            "trigger.rule_0_side": ord("B"), "trigger.rule_0_threshold": 1000, "trigger.rule_0_quantity": 60}
    base = {"slot": 1, "stock_locate": 7, "stock": 1, "timestamp": 0, "sequence_number": 0, "recovered": 0,
            "trusted": 1, "bid_price": 0, "bid_shares": 0, "bid_orders": 0, "ask_shares": 100, "ask_orders": 1}
    bbos = [{**base, "ask_price": p, "sequence_number": n} for n, p in enumerate([1001, 1000, 999, 1002, 998])]
    orders, taken, _ = check(bbos, regs)
    assert [o["sequence_number"] for _, o in orders] == [1, 4]
    assert [o["price"] for _, o in orders] == [1000, 998]
    assert orders[0][1]["quantity"] == 60
    assert orders[0][0] - taken[1] == LATENCY


def test_untrusted_book_never_fires():
    regs = {"trigger.rule_0_kind": RuleKind.BID_AT_OR_ABOVE, "trigger.rule_0_slot": 0,
            "trigger.rule_0_side": ord("S"), "trigger.rule_0_threshold": 10, "trigger.rule_0_quantity": 5}
    bbo = {"slot": 0, "stock_locate": 7, "stock": 1, "timestamp": 0, "sequence_number": 1, "recovered": 0,
           "trusted": 0, "bid_price": 20, "bid_shares": 100, "bid_orders": 1, "ask_price": 0, "ask_shares": 0,
           "ask_orders": 0}
    orders, _, _ = check([bbo], regs)
    assert orders == []


def test_rules_checked():
    with pytest.raises(ValueError, match="rules"):
        Trigger(rules=0)


def test_trigger_cocotb():
    run("trigger", "tickwire.sim.tb_trigger")
