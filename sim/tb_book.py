"""cocotb bench of the order book alone (small tables, so collisions and window overflow happen):
random order flows from :func:`tickwire.sim.book_flow.order_flow`, every top-of-book record, every
event and counter checked against :class:`tickwire.sim.book_model.BookModel`; latency measured."""

from __future__ import annotations

import cocotb

from ..hdl.book import bbo_layout, book_event_layout
from ..hdl.itch import record_layout
from .book_flow import order_flow
from .book_model import BOOK_COUNTERS, BookModel
from .stage_bench import StageTB
from .tb import StreamSource, bench_seed, cycle_pause, rng_for

#: Parameters of the bench's DUT (sim/runner.py ``book``).
PARAMS = {"slots": 8, "capacity": 256, "ways": 4, "depth": 4}
#: Cycles from a book record taken to its top-of-book record valid (docstring of ``Book``).
LATENCY = 3
LATENCY_REPLACE = 4
SEED = bench_seed(7301)


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_book", ["i_stream__valid", "i_stream__payload", "o_stream__ready",
                                          "regs__clear_untrusted", "regs__clear_untrusted_stb",
                                          "regs__lookup_slot", "query__slot"])
        self.watch("i_stream__", record_layout)
        self.watch("o_stream__", bbo_layout)
        self.watch("o_event__", book_event_layout, always_ready=True)
        self.model = BookModel(**PARAMS)


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"book random flows (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", record_layout, pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    records = list(order_flow(rng, 3000, slots=PARAMS["slots"], live_target=40, ticks=10))
    expected = []
    for k, rec in enumerate(records):
        bbo = tb.model.process(rec, slot=rec["tracked_slot"] if rec["tracked"] else None,
                               sequence_number=rec["sequence_number"], recovered=bool(rec["recovered"]))
        if bbo is not None:
            values = bbo._asdict()
            values["stock"] = int.from_bytes(values["stock"].encode("latin-1"), "little") if values["stock"] else 0
            values["recovered"], values["trusted"] = int(values["recovered"]), int(values["trusted"])
            expected.append((k, values))
    await source.send(records)
    await tb.drain({"i_stream__": len(records), "o_stream__": len(expected)})
    outputs = tb.beats("o_stream__")
    assert len(outputs) == len(expected)
    for (k, want), got in zip(expected, outputs):
        diff = {f: (got.fields[f], v) for f, v in want.items() if got.fields[f] != v}
        assert not diff, f"record {k}: (dut, model) {diff}"
    events = sorted((b.fields["sequence_number"], b.fields["kind"], b.fields["slot"], b.fields["order_reference_number"])
                    for b in tb.beats("o_event__"))
    assert events == sorted((e.sequence_number, int(e.kind), e.slot, e.order_reference_number) for e in tb.model.events)
    tb.check_counters({name: tb.model.counters[name] for name in BOOK_COUNTERS}, "book")
    for name in ("book.collisions", "book.unknown_references", "book.outside_window"):
        assert tb.model.counters[name] > 0, name
    accepted = [b.cycle for b in tb.beats("i_stream__")]
    # A replace takes a cycle more, unless its original order is unknown (then nothing is added).
    unknown = {e.sequence_number for e in tb.model.events if e.kind == 2}

    def two_step(k):
        return records[k]["message_type"] == ord("U") and records[k]["sequence_number"] not in unknown
    for want, subset in ((LATENCY, [p for p in zip(expected, outputs) if not two_step(p[0][0])]),
                         (LATENCY_REPLACE, [p for p in zip(expected, outputs) if two_step(p[0][0])])):
        latency = tb.latencies(accepted, [(k, beat) for (k, _), beat in subset])
        tb.check_latency(latency, want, backpressure, f"book latency (record taken -> top of book), want {want}")


@cocotb.test()
async def random_flows(dut):
    """Random order flows, output always ready: records, events, counters; latency 3 (U: 4)."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_flows_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
