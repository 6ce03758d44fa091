"""cocotb bench of the trigger alone: random decoded records against random rules, every intent
and the ``fired`` counter checked against :class:`tickwire.sim.model.TriggerModel`."""

from __future__ import annotations

import cocotb

from ..hdl.itch import record_layout
from ..hdl.trigger import intent_layout
from ..protocols import itch
from .model import Record, RegisterFile, TriggerModel, record_values
from .stage_bench import StageTB
from .tb import bench_seed, rng_for
from .tb import StreamSource, cycle_pause

#: Cycles from a record taken to its intent valid (docstring of ``Trigger``).
LATENCY = 1
SEED = bench_seed(5101)
RULES = 12
RECORDS_PER_RULE = 150

RULE_REGISTERS = ("enable", "stock_locate", "side", "price_limit", "quantity")
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_trigger", ["i_stream__valid", "i_stream__payload", "o_stream__ready"]
                         + [f"regs__{n}" for n in RULE_REGISTERS])
        self.watch("i_stream__", record_layout)
        self.watch("o_stream__", intent_layout)
        self.registers = RegisterFile()
        self.model = TriggerModel(self.registers)

    def set_rule(self, values: dict[str, int]) -> None:
        """Drive the rule registers and give the model the same values."""
        for name, value in values.items():
            getattr(self.dut, f"regs__{name}").value = value
            self.registers.write(f"trigger.{name}", value)


def random_rule(rng, index: int) -> dict[str, int]:
    """Mostly armed rules on side B or S; some disarmed, some with a side that is neither."""
    side = rng.choice([ord("B"), ord("S")] * 4 + [0, ord("X"), ord("b")])
    limit = rng.choice([rng.randint(1, 1_000_0000), rng.getrandbits(32), 0, 0xFFFFFFFF, 1])
    return {
        "enable": 0 if index % 6 == 5 else 1,
        "stock_locate": rng.choice([1, 2, 7, rng.getrandbits(16)]),
        "side": side,
        "price_limit": limit,
        "quantity": rng.choice([100, 1, 0, rng.randint(1, 10_000), rng.getrandbits(32)]),
    }


def _alpha(rng, width: int) -> str:
    return "".join(rng.choice(_PRINTABLE) for _ in range(width))


def random_record(rng, rule: dict[str, int]) -> Record:
    """A record aimed at ``rule``: mostly Add Orders (A, F) on its stock locate on both sides, prices
    at, just inside and just outside the limit, shares around the rule's quantity; also every
    other ITCH type, unknown type letters, other locates and other side characters. Fields the
    trigger does not read are random."""
    limit, quantity = rule["price_limit"], rule["quantity"]
    message_type = rng.choice(["A", "F"] * 12 + list(itch.MESSAGES) + ["a", "f", "Z"])
    locate = rule["stock_locate"] if rng.random() < 0.75 else rng.getrandbits(16)
    price = rng.choice([limit, limit, limit - 1, limit + 1, limit - rng.randint(0, 5000),
                        limit + rng.randint(0, 5000), rng.getrandbits(32), 0, 0xFFFFFFFF])
    shares = rng.choice([quantity, quantity - 1, quantity + 1, 0, rng.randint(1, 1000), rng.getrandbits(32),
                         rng.getrandbits(64)])
    record = {name: (_alpha(rng, width // 8) if name in itch.ALPHA_RECORD_FIELDS else rng.getrandbits(width))
              for name, width in itch.RECORD_FIELDS.items() if name not in itch.SIDEBAND_FIELDS}
    record.update(
        message_type=message_type, stock_locate=locate,
        buy_sell_indicator=rng.choice(["B", "S"] * 4 + [" ", "b", "s", "X"]),
        shares=min(max(shares, 0), (1 << 64) - 1), price=min(max(price, 0), 0xFFFFFFFF),
        printable=rng.choice("YN "))
    return Record(**record)  # type: ignore[typeddict-item]


def intent_fields(intent, record: Record, sequence_number: int) -> dict[str, int]:
    """The model's intent as ``intent_layout`` fields; stock locate, timestamp and sequence number
    say which record caused it (``intent_layout``'s description)."""
    return {"side": ord(intent["side"]), "quantity": intent["quantity"], "price": intent["price"],
            "stock": int.from_bytes(intent["symbol"].encode("ascii"), "little"),
            "stock_locate": record["stock_locate"], "timestamp": record["timestamp"],
            "sequence_number": sequence_number}


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"trigger random records (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", record_layout,
                          pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    sent = 0
    accept_pairs = []
    counts = {"A/F same locate": 0, "fired": 0, "limit equal fired": 0}
    for index in range(RULES):
        rule = random_rule(rng, index)
        tb.set_rule(rule)
        tb.log.info("rule %d: %s", index, {k: (chr(v) if k == "side" and 32 <= v < 127 else v)
                                            for k, v in rule.items()})
        await tb.cycles(2)
        records = [random_record(rng, rule) for _ in range(RECORDS_PER_RULE)]
        seqs = [rng.getrandbits(64) for _ in records]
        late = [rng.random() < 0.1 for _ in records]
        expected = []
        for k, (record, seq) in enumerate(zip(records, seqs)):
            intent = tb.model.process(record, late[k])
            if record["message_type"] in "AF" and record["stock_locate"] == rule["stock_locate"]:
                counts["A/F same locate"] += 1
            if intent is not None:
                counts["fired"] += 1
                counts["limit equal fired"] += record["price"] == rule["price_limit"]
                expected.append((sent + k, intent_fields(intent, record, seq)))
        first_out = len(tb.beats("o_stream__"))
        await source.send(record_values(r, s, x) for r, s, x in zip(records, seqs, late))
        sent += len(records)
        await tb.drain({"i_stream__": sent, "o_stream__": first_out + len(expected)})
        outputs = tb.beats("o_stream__")[first_out:]
        for n, ((k, want), got) in enumerate(zip(expected, outputs)):
            if got.fields != want:
                diff = {f: (got.fields[f], want[f]) for f in want if got.fields[f] != want[f]}
                raise AssertionError(f"rule {index} intent {n} (record {k}): (dut, model) {diff}")
        accept_pairs += [(k, beat) for (k, _), beat in zip(expected, outputs)]
        tb.check_counters(tb.model.counters, "trigger")

    tb.log.info("stimulus: %s", counts)
    assert counts["fired"] > 0 and counts["limit equal fired"] > 0
    inputs = tb.beats("i_stream__")
    latency = tb.latencies([b.cycle for b in inputs], accept_pairs)
    tb.check_latency(latency, LATENCY, backpressure, "trigger latency (record taken -> intent valid) per intent")


@cocotb.test()
async def random_records(dut):
    """Random records against a dozen rules, output always ready: intents, fired, latency = 1."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_records_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
