"""cocotb bench of the OUCH encoder alone: random orders of all four actions (and invalid
actions) with random appendage subsets, every SoupBinTCP packet compared byte for byte with
:func:`tickwire.protocols.ouch.pack_order` (through :mod:`tickwire.sim.ouch_model`); framing,
counters and latency checked, with and without random backpressure."""

from __future__ import annotations

import cocotb

from ..hdl.order import APPENDAGE_FIELDS, order_layout
from ..hdl.ouch import MAX_PACKET_LENGTH, OuchEncoder, ouch_packet_layout
from .ouch_model import ENCODER_ACTIONS as ACTIONS, expected_packet, present_appendages
from .stage_bench import StageTB
from .tb import StreamSource, bench_seed, check_packet_framing, cycle_pause, rng_for

#: Cycles from an order taken to the first beat of its packet (docstring of ``OuchEncoder``).
LATENCY = 1
SEED = bench_seed(5302)
ORDERS = 600
_NAMES = list(APPENDAGE_FIELDS)
_WIDTHS = {name: field.width for name, field in order_layout}


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_ouch", ["i_stream__valid", "i_stream__payload", "o_stream__ready"])
        self.watch("i_stream__", order_layout)
        self.watch("o_stream__", ouch_packet_layout())


def random_order(rng) -> dict[str, int]:
    """Any field values; the action is one of the four, one order in 20 an invalid one."""
    record = {name: rng.getrandbits(width) for name, width in _WIDTHS.items()}
    record["action"] = ord(rng.choice(ACTIONS)) if rng.random() > 0.05 else rng.choice([0, ord("A"), 0xFF])
    for name in ("side", "time_in_force", "display", "capacity", "intermarket_sweep_eligibility", "cross_type"):
        if rng.random() < 0.7:
            record[name] = ord(rng.choice("BSTE0356YNAPR"))
    record["appendage_mask"] = rng.choice([0, (1 << len(_NAMES)) - 1, rng.getrandbits(len(_NAMES))])
    return record


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"ouch random orders (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", order_layout,
                          pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    records = [random_order(rng) for _ in range(ORDERS)]
    wanted = [(k, expected_packet(r)) for k, r in enumerate(records)]
    wanted = [(k, p) for k, p in wanted if p is not None]
    beats_expected = sum((len(p) + 7) // 8 for _, p in wanted)
    await source.send(records)
    await tb.drain({"i_stream__": len(records), "o_stream__": beats_expected})

    beats = tb.beats("o_stream__")
    packets, current = [], []
    for beat in beats:
        current.append(beat)
        if beat.fields["last"]:
            packets.append(current)
            current = []
    assert not current and len(packets) == len(wanted), f"{len(packets)} packets, {len(wanted)} expected"
    taken = [b.cycle for b in tb.beats("i_stream__")]
    pairs = []
    longest = 0
    for n, ((k, want), packet) in enumerate(zip(wanted, packets)):
        fields = [b.fields for b in packet]
        data = b"".join(f["data"].to_bytes(8, "little")[:f["nbytes"]] for f in fields)
        assert data == want, f"packet {n} (order {k}) differs:\n dut   {data.hex()}\n model {want.hex()}"
        check_packet_framing(n, fields, want)
        assert {f["session"] for f in fields} == {records[k]["session"]}, f"packet {n}: session"
        pairs.append((k, packet[0]))
        longest = max(longest, len(data))
    tb.log.info("%d packets, %d beats, longest %d bytes (limit %d)", len(packets), len(beats), longest,
                MAX_PACKET_LENGTH)
    by_action = {a: sum(chr(r["action"]) == a for r in records) for a in ACTIONS}
    counters = {
        "ouch.orders_sent": len(wanted), "ouch.enter_sent": by_action["O"], "ouch.replace_sent": by_action["U"],
        "ouch.cancel_sent": by_action["X"], "ouch.modify_sent": by_action["M"],
        "ouch.appendages_sent": sum(len(present_appendages(records[k])) for k, _ in wanted
                                    if chr(records[k]["action"]) in "OU"),
        "ouch.invalid_action": len(records) - len(wanted),
    }
    assert set(counters) == {f"ouch.{r.name}" for r in OuchEncoder.registers}
    tb.check_counters(counters, "ouch")
    latency = tb.latencies(taken, pairs)
    tb.check_latency(latency, LATENCY, backpressure, "ouch latency (order taken -> first packet beat) per packet")


@cocotb.test()
async def random_orders(dut):
    """Random orders, output always ready: bytes, framing, session, counters, latency = 1."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_orders_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
