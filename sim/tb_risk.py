"""cocotb bench of the risk gate alone: random intents against random limits, every accepted intent,
every reject (with its reason code) and every counter checked against
:class:`tickwire.sim.model.RiskModel`; the kill switch's timing checked cycle by cycle."""

from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge

from ..hdl.risk import reject_layout
from ..hdl.trigger import intent_layout
from ..protocols.risk import RejectReason
from .model import Intent, RegisterFile, RiskModel
from .stage_bench import StageTB
from .tb import bench_seed, rng_for
from .tb import StreamSource, cycle_pause

#: Cycles from an intent taken to its verdict (accept or reject) valid (docstring of ``Risk``).
LATENCY = 2
SEED = bench_seed(5201)
BATCHES = 10
INTENTS_PER_BATCH = 150

LIMIT_REGISTERS = ("kill", "max_order_quantity", "max_order_notional")
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_risk", ["i_stream__valid", "i_stream__payload", "o_stream__ready"]
                         + [f"regs__{n}" for n in LIMIT_REGISTERS])
        self.watch("i_stream__", intent_layout)
        self.watch("o_stream__", intent_layout)
        self.watch("o_reject__", reject_layout, always_ready=True)
        self.registers = RegisterFile()
        self.model = RiskModel(self.registers)

    def set_limits(self, values: dict[str, int]) -> None:
        """Drive the limit registers and give the model the same values."""
        for name, value in values.items():
            getattr(self.dut, f"regs__{name}").value = value
            self.registers.write(f"risk.{name}", value)

    def expect(self, index: int, fields: dict[str, int], accepted_list, rejected_list) -> RejectReason:
        """Run intent ``index`` through the model; file the beat it predicts."""
        accepted, reason = self.model.process(model_intent(fields))
        if accepted:
            accepted_list.append((index, dict(fields)))
        else:
            rejected_list.append((index, {"reason": int(reason), **{f"intent.{k}": v for k, v in fields.items()}}))
        return reason

    def compare(self, what: str, prefix: str, expected, first: int = 0) -> list:
        """Compare the beats of ``prefix`` from ``first`` on with ``expected``; (index, beat) pairs."""
        got = self.beats(prefix)[first:]
        assert len(got) == len(expected), f"{what}: {len(got)} beats, model predicts {len(expected)}"
        for n, ((k, want), beat) in enumerate(zip(expected, got)):
            if beat.fields != want:
                diff = {f: (beat.fields[f], want[f]) for f in want if beat.fields[f] != want[f]}
                raise AssertionError(f"{what} {n} (intent {k}): (dut, model) {diff}")
        return [(k, beat) for (k, _), beat in zip(expected, got)]


def model_intent(fields: dict[str, int]) -> Intent:
    return Intent(side=chr(fields["side"]), price=fields["price"], quantity=fields["quantity"],
                  symbol=fields["stock"].to_bytes(8, "little").decode("ascii"))


def random_limits(rng, index: int) -> dict[str, int]:
    quantity = rng.choice([1000, 100, 1, 0, _U32, rng.randint(1, 100_000), rng.getrandbits(32)])
    notional = rng.choice([100 * 189_9700, 0, 1, _U64, rng.getrandbits(64), rng.getrandbits(40),
                           rng.randint(1, 10**12)])
    return {"kill": 1 if index % 5 == 3 else 0, "max_order_quantity": quantity, "max_order_notional": notional}


def random_intent(rng, limits: dict[str, int]) -> dict[str, int]:
    """Quantities 0, at, just above and well under the limit and random; prices that put the
    notional at, just above and well under the limit and random."""
    qmax, nmax = limits["max_order_quantity"], limits["max_order_notional"]
    quantity = rng.choice([0, qmax, qmax + 1, qmax - 1, 1, rng.randint(1, max(1, qmax)),
                           rng.randint(1, max(1, qmax)), rng.getrandbits(32)])
    quantity = min(max(quantity, 0), _U32)
    if quantity and rng.random() < 0.6:
        at = nmax // quantity
        price = rng.choice([at, at, at + 1, at - 1, rng.randint(0, max(0, at))])
    else:
        price = rng.choice([rng.getrandbits(32), rng.randint(1, 500_0000), 0, _U32])
    return {
        "side": rng.choice([ord("B"), ord("S")]),
        "quantity": quantity,
        "price": min(max(price, 0), _U32),
        "stock": int.from_bytes("".join(rng.choice(_PRINTABLE) for _ in range(8)).encode("ascii"), "little"),
        "stock_locate": rng.getrandbits(16),
        "timestamp": rng.getrandbits(48),
        "sequence_number": rng.getrandbits(64),
    }


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"risk random intents (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", intent_layout,
                          pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    sent = 0
    pairs = []
    reasons = dict.fromkeys(RejectReason, 0)
    for index in range(BATCHES):
        limits = random_limits(rng, index)
        tb.set_limits(limits)
        tb.log.info("limits %d: %s", index, limits)
        await tb.cycles(2)
        intents = [random_intent(rng, limits) for _ in range(INTENTS_PER_BATCH)]
        accepted, rejected = [], []
        for k, fields in enumerate(intents):
            reasons[tb.expect(sent + k, fields, accepted, rejected)] += 1
        first_accept, first_reject = len(tb.beats("o_stream__")), len(tb.beats("o_reject__"))
        await source.send(intents)
        sent += len(intents)
        await tb.drain({"i_stream__": sent, "o_stream__": first_accept + len(accepted),
                        "o_reject__": first_reject + len(rejected)})
        pairs += tb.compare(f"batch {index} accepted intent", "o_stream__", accepted, first_accept)
        pairs += tb.compare(f"batch {index} reject", "o_reject__", rejected, first_reject)
        tb.check_counters(tb.model.counters, "risk")

    tb.log.info("verdicts: %s", {r.name: n for r, n in reasons.items()})
    assert all(reasons.values()), f"a verdict never happened: {reasons}"
    inputs = tb.beats("i_stream__")
    latency = tb.latencies([b.cycle for b in inputs], pairs)
    tb.check_latency(latency, LATENCY, backpressure, "risk latency (intent taken -> accept or reject valid) per verdict")


@cocotb.test()
async def random_intents(dut):
    """Random intents against ten sets of limits, output always ready: verdicts, reasons,
    counters, latency = 2."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_intents_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)


@cocotb.test()
async def kill_switch_timing(dut):
    """Intents back to back; the kill register is set between two edges and cleared later. Every
    intent whose verdict falls on the edge after the change or later is rejected with reason
    KILL (and accepted again once cleared); the one before is not."""
    tb = TB(dut)
    rng = rng_for(SEED + 7, tb.log, "risk kill switch timing")
    await tb.reset()
    limits = {"kill": 0, "max_order_quantity": _U32, "max_order_notional": _U64}
    tb.set_limits(limits)
    tb.drive_ready("o_stream__")
    intents = [random_intent(rng, limits) | {"quantity": rng.randint(1, _U32), "sequence_number": k}
               for k in range(80)]
    source = StreamSource(dut, "i_stream__", intent_layout)
    changes = []  # (edge after which the value is driven, value)

    async def toggle():
        for wait, value in ((25, 1), (17, 0), (9, 1), (1, 0), (6, 1), (11, 0)):
            for _ in range(wait):
                await FallingEdge(dut.clk)
            dut.regs__kill.value = value
            changes.append((tb.cycle, value))

    start = tb.cycle
    toggler = cocotb.start_soon(toggle())
    await source.send(intents)
    await toggler
    await tb.drain({"i_stream__": len(intents)}, settle=10)
    tb.log.info("kill register driven after edges (edge, value): %s (intents start after edge %d)",
                changes, start)

    def kill_at(edge: int) -> int:
        """The kill value the verdict registered on ``edge`` sees: the latest change before it."""
        value = 0
        for after, v in changes:
            if after < edge:
                value = v
        return value

    accepted, rejected = [], []
    inputs = tb.beats("i_stream__")
    # An intent taken on edge E has its verdict registered on edge E + LATENCY - 1 (the output is
    # valid from just after it and taken on edge E + LATENCY).
    verdict_edges = [b.cycle + LATENCY - 1 for b in inputs]
    for k, fields in enumerate(intents):
        tb.registers.write("risk.kill", kill_at(verdict_edges[k]))
        tb.expect(k, fields, accepted, rejected)
    tb.compare("accepted intent", "o_stream__", accepted)
    tb.compare("reject", "o_reject__", rejected)
    assert all(r["reason"] == RejectReason.KILL for _, r in rejected)
    tb.check_counters(tb.model.counters, "risk")
    # The boundary explicitly: for each change, the verdict on the next edge sees the new value
    # and the verdict on that edge itself the old one.
    rejected_index = {k for k, _ in rejected}
    for after, value in changes:
        for k, edge in enumerate(verdict_edges):
            if edge == after + 1:
                assert (k in rejected_index) == bool(value), \
                    f"intent {k}, verdict on edge {edge} right after kill:={value}: " \
                    f"{'rejected' if k in rejected_index else 'accepted'}"
            if edge == after and k > 0:
                assert (k in rejected_index) != bool(value), \
                    f"intent {k}, verdict on edge {edge} (the edge kill:={value} was driven after) " \
                    f"already saw it"
    tb.log.info("kill switch: %d intents, %d rejected KILL, boundaries as documented",
                len(intents), len(rejected))
