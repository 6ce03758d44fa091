"""cocotb bench of the ITCH decoder alone: random messages of all 23 ITCH 5.0 types, unknown types
and wrong lengths; every record checked field for field against :class:`tickwire.sim.model.ItchModel`
and, through :func:`tickwire.protocols.itch.record_to_fields`, against the spec decode
(:func:`tickwire.protocols.itch.unpack`); every counter against the model."""

from __future__ import annotations

import cocotb

from ..hdl.itch import record_layout
from ..hdl.moldudp64 import message_layout
from ..protocols import itch
from .model import ITCH_COUNTERS, ItchModel, record_values
from .stage_bench import StageTB
from .tb import bench_seed, rng_for
from .tb import StreamSource, cycle_pause

#: Cycles from a message taken to its record valid (docstring of ``ItchDecoder``).
LATENCY = 1
SEED = bench_seed(5001)
MESSAGES = 1500

_ALPHA_CHARS = [chr(c) for c in range(0x20, 0x7F)]
_UNKNOWN_TYPES = [b for b in range(256) if chr(b) not in itch.MESSAGES]


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_itch", ["i_stream__valid", "i_stream__payload", "o_stream__ready"])
        self.layout = message_layout(itch.MAX_LENGTH)
        self.watch("i_stream__", self.layout)
        self.watch("o_stream__", record_layout)
        self.model = ItchModel()


def _field_value(rng, f):
    if f.type == "alpha":
        if rng.random() < 0.05:  # any byte: the decoder passes alpha bytes through untouched
            return rng.randbytes(f.width)
        return "".join(rng.choice(_ALPHA_CHARS) for _ in range(rng.randint(0, f.width)))
    if f.type not in ("integer", "price4", "price8", "timestamp"):
        raise AssertionError(f"ITCH field {f.name} of type {f.type} not generated")
    bits = 8 * f.width
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.2:
        return (1 << bits) - 1
    return rng.getrandbits(bits)


def random_message(rng, type_: str) -> bytes:
    """One ITCH 5.0 message of ``type_`` with random field values (alpha fields mostly printable
    ASCII with random padding, sometimes any bytes; integers often 0 or all ones)."""
    layout = itch.MESSAGES[type_]
    return itch.pack(type_, **{f.name: _field_value(rng, f) for f in layout.fields if f.name != "message_type"})


def random_stimulus(rng, count: int) -> list[bytes]:
    """Every type at its length at least three times, then a random mix: any of the 23 types,
    order types once more, unknown type bytes and known types at a wrong length (shorter, longer,
    far longer)."""
    types = list(itch.MESSAGES)
    out = [random_message(rng, t) for t in types * 3]
    while len(out) < count:
        r = rng.random()
        if r < 0.15:
            out.append(random_message(rng, rng.choice(itch.ORDER_TYPES)))
        elif r < 0.7:
            out.append(random_message(rng, rng.choice(types)))
        elif r < 0.85:
            length = rng.randint(1, itch.MAX_LENGTH) if rng.random() < 0.9 else rng.randint(51, 1500)
            out.append(bytes([rng.choice(_UNKNOWN_TYPES)]) + rng.randbytes(length - 1))
        else:
            t = rng.choice(types)
            good = random_message(rng, t)
            length = len(good)
            while length == len(good):
                length = rng.randint(1, 64) if rng.random() < 0.9 else rng.randint(65, 1500)
            out.append(good[:length] + rng.randbytes(max(0, length - len(good))))
    rng.shuffle(out)
    return out


def spec_fields(message: bytes) -> dict:
    """The spec decode of ``message`` as :func:`~tickwire.protocols.itch.record_to_fields` gives
    it: ``type`` for the type, alpha padding stripped."""
    return {("type" if name == "message_type" else name): (v.rstrip(" ") if isinstance(v, str) else v)
            for name, v in itch.unpack(message).items()}


def _input_beat(rng, message: bytes, sequence_number: int) -> dict[str, int]:
    # Bytes past the length are undefined on the stream: fill them with garbage.
    shown = message[:itch.MAX_LENGTH]
    shown += rng.randbytes(itch.MAX_LENGTH - len(shown))
    return {"sequence_number": sequence_number, "length": len(message),
            "data": int.from_bytes(shown, "little")}


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"itch random messages (backpressure={backpressure})")
    await tb.reset()
    messages = random_stimulus(rng, MESSAGES)
    sequence_numbers = [rng.getrandbits(64) for _ in messages]
    expected = []  # (input index, record fields)
    for k, (message, seq) in enumerate(zip(messages, sequence_numbers)):
        record = tb.model.process(message)
        if record is not None:
            expected.append((k, record_values(record, seq)))
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", tb.layout, pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    await source.send(_input_beat(rng, m, s) for m, s in zip(messages, sequence_numbers))
    await tb.drain({"i_stream__": len(messages), "o_stream__": len(expected)})

    inputs = tb.beats("i_stream__")
    assert [b.fields["sequence_number"] for b in inputs] == sequence_numbers
    outputs = tb.beats("o_stream__")
    for n, ((k, want), got) in enumerate(zip(expected, outputs)):
        if got.fields != want:
            diff = {f: (got.fields[f], want[f]) for f in want if got.fields[f] != want[f]}
            raise AssertionError(f"record {n} (message {k}, {messages[k].hex()}): (dut, model) {diff}")
        fields = itch.record_to_fields(got.fields)
        assert fields == spec_fields(messages[k]), \
            f"record {n} (message {k}, {messages[k].hex()}): record_to_fields {fields}"
    per_type = {t: 0 for t in itch.MESSAGES}
    for b in outputs:
        per_type[chr(b.fields["message_type"])] += 1
    tb.log.info("records per type: %s", per_type)
    assert all(per_type.values()), f"a type was never decoded: {per_type}"
    counters = tb.check_counters(tb.model.counters, "itch")
    for name in ITCH_COUNTERS:
        assert counters[name] > 0, f"{name} never counted: the stimulus did not exercise it"

    latency = tb.latencies([b.cycle for b in inputs], [(k, beat) for (k, _), beat in zip(expected, outputs)])
    tb.check_latency(latency, LATENCY, backpressure, "itch latency (message taken -> record valid) per record")


@cocotb.test()
async def random_messages(dut):
    """Random messages back to back, output always ready: records, counters, latency = 1."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_messages_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
