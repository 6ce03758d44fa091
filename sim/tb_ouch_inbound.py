"""cocotb bench of the OUCH inbound parser alone: random SoupBinTCP streams from the exchange
(every OUCH 5.0 outbound message with random appendages, the non-data packets, malformed packets
of every kind) cut into beats of random size, records, exposure updates and counters compared
with :class:`tickwire.sim.ouch_model.ParserModel`; and the latency."""

from __future__ import annotations

import cocotb

from ..hdl.ouch_inbound import exposure_layout, record_layout
from ..hdl.packet import packet_layout
from .ouch_model import ParserModel, aligned_beats, random_packet, split_beats
from .stage_bench import StageTB
from .tb import StreamSource, bench_seed, cycle_pause, rng_for

#: Cycles from the beat holding a packet's last byte taken to its record valid (OuchParser).
LATENCY = 1
SEED = bench_seed(5310)


# -- cocotb bench ---------------------------------------------------------------------------


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_ouch_inbound", ["i_stream__valid", "i_stream__payload",
                                                  "o_stream__ready", "o_exposure__ready"])
        self.watch("i_stream__", packet_layout())
        self.watch("o_stream__", record_layout)
        self.watch("o_exposure__", exposure_layout)


def _diff(a: dict[str, int], b: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {k: (a[k], b[k]) for k in b if a.get(k) != b[k]}


async def run_test_stream(dut, *, backpressure: bool, packets: int = 800):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"ouch inbound stream (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.4, seed=SEED + 1) if backpressure else None)
    tb.drive_ready("o_exposure__", cycle_pause(0.6, seed=SEED + 2) if backpressure else None)
    source = StreamSource(dut, "i_stream__", packet_layout(),
                          pause=cycle_pause(0.3, seed=SEED + 3) if backpressure else None)
    traffic = [random_packet(rng) for _ in range(packets)]
    model = ParserModel()
    for _, packet in traffic:
        model.packet(packet)
    beats = split_beats(rng, b"".join(p for _, p in traffic))
    await source.send(beats)
    await tb.drain({"i_stream__": len(beats), "o_stream__": len(model.records),
                    "o_exposure__": len(model.exposures)})
    for n, (want, beat) in enumerate(zip(model.records, tb.beats("o_stream__"))):
        assert beat.fields == want, f"record {n} ({traffic[n][0]}): (dut, model) differ {_diff(beat.fields, want)}"
    for n, (want, beat) in enumerate(zip(model.exposures, tb.beats("o_exposure__"))):
        assert beat.fields == want, f"exposure {n}: (dut, model) differ {_diff(beat.fields, want)}"
    tb.check_counters({f"ouch_inbound.{k}": v for k, v in model.counters.items()}, "ouch_inbound")
    tb.log.info("%d packets in %d beats: %d records, %d exposure updates, %d malformed", len(traffic), len(beats),
                len(model.records), len(model.exposures), sum(r["error"] != 0 for r in model.records))


@cocotb.test()
async def random_stream(dut):
    """Random well-formed and malformed packets cut into random beats, outputs always ready:
    every record, exposure update and counter as the model says."""
    await run_test_stream(dut, backpressure=False)


@cocotb.test()
async def random_stream_backpressure(dut):
    """The same with random input gaps and random backpressure on both outputs."""
    await run_test_stream(dut, backpressure=True)


@cocotb.test()
async def latency(dut):
    """Packets aligned to beats, outputs always ready: each record is valid the cycle after the
    beat holding its packet's last byte is taken."""
    tb = TB(dut)
    rng = rng_for(SEED + 7, tb.log, "ouch inbound latency")
    await tb.reset()
    tb.drive_ready("o_stream__")
    tb.drive_ready("o_exposure__")
    packets = [random_packet(rng, malformed=0)[1] for _ in range(200)]
    beats, ends = aligned_beats(packets)
    await StreamSource(dut, "i_stream__", packet_layout()).send(beats)
    await tb.drain({"i_stream__": len(beats), "o_stream__": len(packets)})
    taken = [b.cycle for b in tb.beats("i_stream__")]
    pairs = list(enumerate(tb.beats("o_stream__")))
    latency = [beat.cycle - taken[ends[k]] for k, beat in pairs]
    tb.check_latency(latency, LATENCY, False, "ouch inbound latency (last beat taken -> record) per packet")
