"""cocotb bench of the rule trigger alone: random top-of-book records against random rule sets,
every order and counter checked against :class:`tickwire.sim.model.TriggerModel`, the latency
of the first order of each firing record measured."""

from __future__ import annotations

import random

import cocotb

from ..hdl.book import bbo_layout
from ..hdl.order import order_layout
from ..protocols.strategy import RuleKind
from .model import RegisterFile, TriggerModel
from .stage_bench import StageTB
from .tb import StreamSource, bench_seed, cycle_pause, rng_for

#: Cycles from a record taken to its first order valid (docstring of ``Trigger``).
LATENCY = 2
SEED = bench_seed(6101)
RULES = 4
RULE_SETS = 6
RECORDS_PER_SET = 150
_RULE_FIELDS = ("kind", "slot", "side", "threshold", "quantity", "session")


class TB(StageTB):
    def __init__(self, dut):
        regs = [f"regs__rule_{k}_{f}" for k in range(RULES) for f in _RULE_FIELDS]
        regs += [f"regs__{n}" for n in ("time_in_force", "display", "capacity", "intermarket_sweep_eligibility",
                                        "cross_type")]
        super().__init__(dut, "tb_trigger", ["i_stream__valid", "i_stream__payload", "o_stream__ready", *regs])
        self.watch("i_stream__", bbo_layout)
        self.watch("o_stream__", order_layout)
        self.registers = RegisterFile()
        self.model = TriggerModel(self.registers, rules=RULES)

    def set_registers(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            self.registers.write(name, value)
        for name, value in self.registers.items():
            stage, _, reg = name.partition(".")
            if stage == "trigger":
                getattr(self.dut, f"regs__{reg}").value = value


def random_rules(rng: random.Random) -> dict[str, int]:
    regs = {}
    for k in range(RULES):
        kind = rng.choice(list(RuleKind))
        threshold = {RuleKind.ASK_AT_OR_BELOW: 1005, RuleKind.BID_AT_OR_ABOVE: 995,
                     RuleKind.SPREAD_AT_MOST: rng.choice([0, 5, 10]), RuleKind.BID_IMBALANCE: rng.choice([128, 256, 512]),
                     RuleKind.ASK_IMBALANCE: rng.choice([256, 384])}.get(kind, rng.getrandbits(32))
        regs.update({f"trigger.rule_{k}_kind": kind, f"trigger.rule_{k}_slot": rng.randrange(3),
                     f"trigger.rule_{k}_side": rng.choice([ord("B"), ord("S"), ord("B"), ord("X")]),
                     f"trigger.rule_{k}_threshold": threshold,
                     f"trigger.rule_{k}_quantity": rng.choice([0, 50, 100, rng.getrandbits(32)]),
                     f"trigger.rule_{k}_session": rng.randrange(256)})
    regs["trigger.time_in_force"] = rng.choice(b"0356E")
    regs["trigger.display"] = rng.choice(b"YNA")
    return regs


def random_bbo(rng: random.Random, n: int) -> dict[str, int]:
    bid_orders, ask_orders = rng.choice([0, 1, 2, 0xFFFF]), rng.choice([0, 1, 3])
    return {"slot": rng.choice([0, 1, 2, rng.getrandbits(16)]), "stock_locate": rng.getrandbits(16),
            "stock": rng.getrandbits(64), "timestamp": rng.getrandbits(48), "sequence_number": rng.getrandbits(64),
            "recovered": int(rng.random() < 0.05), "trusted": int(rng.random() > 0.05),
            "bid_price": 990 + rng.randrange(10) if bid_orders else 0,
            "bid_shares": rng.choice([100, 200, 50, 0xFFFFFFFF]) if bid_orders else 0, "bid_orders": bid_orders,
            "ask_price": 1000 + rng.randrange(10) if ask_orders else 0,
            "ask_shares": rng.choice([100, 200, 50]) if ask_orders else 0, "ask_orders": ask_orders}


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"trigger random top of book (backpressure={backpressure})")
    tb.set_registers({})
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", bbo_layout, pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    sent = 0
    pairs = []
    for index in range(RULE_SETS):
        # New rules start from "not holding" in both the gateware and the model only after reset;
        # keep the edge state: the model carries it across rule sets as the gateware does.
        tb.set_registers(random_rules(rng))
        await tb.cycles(2)
        records = [random_bbo(rng, n) for n in range(RECORDS_PER_SET)]
        expected = [(sent + k, order) for k, r in enumerate(records) for order in tb.model.process(r)]
        first_out = len(tb.beats("o_stream__"))
        await source.send(records)
        sent += len(records)
        await tb.drain({"i_stream__": sent, "o_stream__": first_out + len(expected)})
        outputs = tb.beats("o_stream__")[first_out:]
        for n, ((k, want), got) in enumerate(zip(expected, outputs)):
            diff = {f: (got.fields[f], v) for f, v in want.items() if got.fields[f] != v}
            if diff:
                raise AssertionError(f"rule set {index} order {n} (record {k}): (dut, model) {diff}")
        # The first order of each record: its latency is the documented one.
        seen = set()
        for (k, _), beat in zip(expected, outputs):
            if k not in seen:
                seen.add(k)
                pairs.append((k, beat))
        tb.check_counters(tb.model.counters, "trigger")
    assert tb.model.counters["trigger.fired"] > 20, tb.model.counters
    latency = tb.latencies([b.cycle for b in tb.beats("i_stream__")], pairs)
    tb.check_latency(latency, LATENCY, backpressure, "trigger latency (record taken -> first order valid)")


@cocotb.test()
async def random_top_of_book(dut):
    """Random top-of-book records against random rule sets, output always ready."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_top_of_book_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
