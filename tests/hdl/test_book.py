"""The order book (hdl/book.py) in the Amaranth simulator against the reference book
(sim/book_model.py): every top-of-book record, every event and counter, on random and
hypothesis-generated order flows, small tables (collisions, window overflow) and the defaults."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings, strategies as st

from tickwire.hdl.book import Book, EVENT_KINDS
from tickwire.hdl.itch import record_layout
from tickwire.sim.book_flow import book_record, order_flow
from tickwire.sim.book_model import BookModel, BOOK_COUNTERS, EventKind

#: Cycles from a book record taken to its top-of-book record valid (docstring of Book).
LATENCY = 3
LATENCY_REPLACE = 4


def run_book(records, *, params, backpressure: float = 0.0, seed: int = 1, clears=()):
    """Drive ``records`` into a Book; returns (bbo records, events, counters, taken/out cycles)."""
    dut = Book(**params)
    rng = random.Random(seed)
    out: list[tuple[int, dict]] = []
    events: list[dict] = []
    taken: list[int] = []
    counters: dict[str, int] = {}
    clears = dict(clears)      # record index -> slot cleared before it

    async def bench(ctx):
        cycle = 0
        pending = list(records)
        index = 0
        done = False
        idle = 0
        while not done:
            ctx.set(dut.regs.clear_untrusted_stb, 0)
            if index in clears:
                # The host writes between messages: once the earlier ones are through the book.
                ctx.set(dut.i_stream.valid, 0)
                for _ in range(6):
                    await ctx.delay(1e-9)   # sample before the edge that takes the beat
                    if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.ready):
                        out.append((cycle, _view_dict(ctx.get(dut.o_stream.payload))))
                    await ctx.tick()
                    cycle += 1
                ctx.set(dut.regs.clear_untrusted, clears.pop(index))
                ctx.set(dut.regs.clear_untrusted_stb, 1)
            if index < len(pending):
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, record_layout.const(pending[index]))
            else:
                ctx.set(dut.i_stream.valid, 0)
            ctx.set(dut.o_stream.ready, int(rng.random() >= backpressure))
            await ctx.delay(1e-9)
            if ctx.get(dut.i_stream.valid) and ctx.get(dut.i_stream.ready):
                taken.append(cycle)
                index += 1
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.ready):
                out.append((cycle, _view_dict(ctx.get(dut.o_stream.payload))))
            if ctx.get(dut.o_event.valid):
                events.append(_view_dict(ctx.get(dut.o_event.payload)))
            await ctx.tick()
            cycle += 1
            if index >= len(pending):
                idle += 1
                done = idle > 12
        for name in BOOK_COUNTERS:
            counters[name] = ctx.get(getattr(dut.regs, name.split(".")[1]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, events, counters, taken


def _view_dict(view) -> dict:
    layout = view.shape()
    return {name: int(getattr(view, name).as_value().value) if hasattr(getattr(view, name), "as_value")
            else int(getattr(view, name)) for name, _ in layout}


def model_run(records, *, params, clears=()):
    clears = dict(clears)
    model = BookModel(**params)
    expected = []
    for k, rec in enumerate(records):
        if k in clears:
            model.clear_untrusted(clears[k])
        slot = rec["tracked_slot"] if rec["tracked"] else None
        bbo = model.process(rec, slot=slot, sequence_number=rec["sequence_number"],
                            recovered=bool(rec["recovered"]))
        if bbo is not None:
            expected.append((k, bbo))
    return model, expected


def _bbo_values(bbo) -> dict:
    d = bbo._asdict()
    d["stock"] = int.from_bytes(d["stock"].encode("latin-1"), "little") if d["stock"] else 0
    d["recovered"], d["trusted"] = int(d["recovered"]), int(d["trusted"])
    return d


def check(records, *, params, backpressure=0.0, seed=1, clears=()):
    out, events, counters, taken = run_book(records, params=params, backpressure=backpressure, seed=seed,
                                            clears=clears)
    model, expected = model_run(records, params=params, clears=clears)
    assert len(out) == len(expected), (len(out), len(expected))
    for (cycle, got), (k, want) in zip(out, expected):
        assert got == _bbo_values(want), f"record {k}: " + str(
            {f: (got[f], v) for f, v in _bbo_values(want).items() if got[f] != v})
    assert counters == model.counters
    got_events = sorted((e["sequence_number"], e["kind"], e["slot"], e["order_reference_number"]) for e in events)
    want_events = sorted((e.sequence_number, int(e.kind), e.slot, e.order_reference_number) for e in model.events)
    assert got_events == want_events
    return out, expected, taken, model


SMALL = {"slots": 4, "capacity": 16, "ways": 2, "depth": 3}
MEDIUM = {"slots": 8, "capacity": 256, "ways": 4, "depth": 4}


def test_event_kinds_match_model():
    assert EVENT_KINDS == {k.name.lower(): int(k) for k in EventKind}


@pytest.mark.parametrize("params, flow", [(SMALL, {"live_target": 8, "ticks": 16}),
                                          (MEDIUM, {"live_target": 24, "ticks": 8})], ids=["small", "medium"])
def test_random_flow(params, flow):
    records = list(order_flow(random.Random(7), 1500, slots=params["slots"], **flow))
    _, expected, _, model = check(records, params=params)
    counters = model.counters
    # The flow reaches every corner the book reports.
    for name in ("book.collisions", "book.unknown_references", "book.outside_window", "book.depth_exhausted"):
        assert counters[name] > 0, (name, counters)
    assert expected


def test_random_flow_backpressure():
    records = list(order_flow(random.Random(11), 800, slots=4))
    check(records, params=MEDIUM, backpressure=0.6, seed=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 250), ticks=st.integers(2, 16),
       live_target=st.integers(1, 30),
       params=st.sampled_from([SMALL, MEDIUM, {"slots": 2, "capacity": 8, "ways": 1, "depth": 1}]))
def test_hypothesis_flows(seed, count, ticks, live_target, params):
    records = list(order_flow(random.Random(seed), count, slots=params["slots"], ticks=ticks,
                              live_target=live_target))
    check(records, params=params)


def test_clear_untrusted():
    # An execution of an unknown order untrusts slot 1; the host clears it; the next change is trusted.
    recs = [book_record("A", slot=1, locate=11, ref=5, side="B", shares=100, price=1000, sequence_number=1),
            book_record("E", slot=1, locate=11, ref=6, shares=10, sequence_number=2),
            book_record("A", slot=1, locate=11, ref=7, side="S", shares=100, price=1100, sequence_number=3),
            book_record("A", slot=1, locate=11, ref=8, side="S", shares=50, price=1090, sequence_number=4)]
    out, expected, _, _ = check(recs, params=SMALL, clears={3: 1})
    assert [b["trusted"] for _, b in out] == [1, 0, 0, 1]


def test_next_level_after_best_empties():
    # Three bid levels; deleting the best shows the next at once, with its shares and orders.
    recs = [book_record("A", slot=0, locate=10, ref=r, side="B", shares=s, price=p, sequence_number=r)
            for r, s, p in ((1, 100, 1000), (2, 200, 990), (3, 300, 980), (4, 10, 990))]
    recs.append(book_record("D", slot=0, locate=10, ref=1, sequence_number=5))
    out, _, _, _ = check(recs, params=SMALL)
    last = out[-1][1]
    assert (last["bid_price"], last["bid_shares"], last["bid_orders"]) == (990, 210, 2)


def test_latency_fixed():
    """Cycles from a book record taken to its top-of-book record valid: 3 (U: 4), every time."""
    recs = []
    for n in range(40):
        # Each add is a new best price of its side, each replace betters it again: every message
        # changes the top.
        side = "BS"[n % 2]
        step = 10 if side == "B" else -10
        price = (1000 if side == "B" else 100_000) + step * n
        recs.append(book_record("A", slot=n % 4, locate=10 + n % 4, ref=1000 + n, side=side,
                                shares=100, price=price, sequence_number=2 * n + 1))
        recs.append(book_record("U", slot=n % 4, locate=10 + n % 4, ref=1000 + n, new_ref=5000 + n,
                                shares=50, price=price + step // 2, sequence_number=2 * n + 2))
    out, expected, taken, _ = check(recs, params=MEDIUM)
    assert len(out) == len(expected) == len(recs)
    for (cycle, _), (k, _) in zip(out, expected):
        want = LATENCY_REPLACE if recs[k]["message_type"] == ord("U") else LATENCY
        assert cycle - taken[k] == want, (k, cycle - taken[k])
    # Sustained rate: a book record every 2 cycles, a replace every 3.
    gaps = {taken[k + 1] - taken[k] for k in range(len(taken) - 1)}
    assert gaps == {2, 3}, gaps


def test_parameters_checked():
    with pytest.raises(ValueError, match="capacity"):
        Book(capacity=100, ways=3)
    with pytest.raises(ValueError, match="slots"):
        Book(slots=3)
    with pytest.raises(ValueError, match="depth"):
        Book(depth=0)


@pytest.mark.parametrize("testcase", ["random_flows", "random_flows_backpressure"])
def test_book_cocotb(testcase):
    from tickwire.sim.runner import run
    run("book", "tickwire.sim.tb_book", testcase=testcase)
