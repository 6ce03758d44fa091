"""The open-order table (hdl/open_orders.py) in the Amaranth simulator against
sim/open_orders_model.py: random order lifecycles (enter, accept, partial fills, cancels, modify,
replace, reject, broken trade) give exactly the model's updates, and those updates leave
sim/risk_model.RiskModel's position, open quantities, open orders and open notional equal to a
recomputation from the lifecycle; anomalies (miss, collision, quantity, unknown session, broken
trade miss) against the model; latency; the host merge and its overflow counter; clear."""

from __future__ import annotations

import gc
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.hdl.open_orders import (ANOMALY_COUNTERS, LATENCY, Anomaly,
                                      OpenOrders, anomaly_layout, feedback_layout)
from tickwire.hdl.order import order_layout
from tickwire.hdl.risk import exposure_update_layout
from tickwire.protocols.ouch import ExposureKind
from tickwire.protocols.risk import Action, ExposureUpdateKind
from tickwire.sim.open_orders_model import (Lifecycle, OpenOrdersModel, card_order, configured_risk,
                                            exchange_message, risk_exposure)

_UPDATE = [name for name, _ in exposure_update_layout]
_ANOMALY = [name for name, _ in anomaly_layout]
SLOTS = 8


message, order = exchange_message, card_order


# -- the bench -------------------------------------------------------------------------------------


def simulate(events, *, sessions=2, entries=64, executions=64, backpressure=0.0, host=(),
             seed=1, insert_queue_depth=16, host_queue_depth=4, hold_ready=None, extra=60):
    """Play ``events`` (("accept", order), ("message", feedback), ("idle", cycles), ("clear", None))
    in order: an accepted order for one cycle then 3 idle cycles, a message held until taken.
    ``host``: (cycle, update) pairs offered on ``i_host``. Returns the updates, anomalies, the
    cycle each message was taken, the cycle each update left, and the registers."""
    dut = OpenOrders(sessions=sessions, entries=entries, executions=executions,
                     insert_queue_depth=insert_queue_depth, host_queue_depth=host_queue_depth)
    rng = random.Random(seed)
    result = {"updates": [], "anomalies": [], "taken": [], "update_cycles": [], "regs": {}}
    host = sorted(host, key=lambda h: h[0])

    async def bench(ctx):
        n, wait, cycle, hosted, idle = 0, 0, 0, 0, 0
        while True:
            ctx.set(dut.i_accepted.valid, 0)
            ctx.set(dut.i_feedback.valid, 0)
            ctx.set(dut.regs.clear_stb, 0)
            current = events[n] if n < len(events) and wait == 0 else None
            if current is not None:
                what, value = current
                if what == "accept":
                    ctx.set(dut.i_accepted.valid, 1)
                    ctx.set(dut.i_accepted.payload, order_layout.const(value))
                    n, wait = n + 1, 3
                elif what == "message":
                    ctx.set(dut.i_feedback.valid, 1)
                    ctx.set(dut.i_feedback.payload, feedback_layout.const(value))
                elif what == "idle":
                    n, wait = n + 1, value
                elif what == "clear":
                    ctx.set(dut.regs.clear_stb, 1)
                    n, wait = n + 1, 2
            elif wait:
                wait -= 1
            offer = hosted < len(host) and host[hosted][0] <= cycle
            ctx.set(dut.i_host.valid, offer)
            if offer:
                ctx.set(dut.i_host.payload, exposure_update_layout.const(host[hosted][1]))
                hosted += 1
            ready = (hold_ready is None or not hold_ready(cycle)) and rng.random() >= backpressure
            ctx.set(dut.o_exposure.ready, ready)
            if current is not None and current[0] == "message" and ctx.get(dut.i_feedback.ready):
                result["taken"].append(cycle)
                n += 1
            if ready and ctx.get(dut.o_exposure.valid):
                value = ctx.get(dut.o_exposure.payload)
                result["updates"].append({k: int(getattr(value, k)) for k in _UPDATE})
                result["update_cycles"].append(cycle)
            if ctx.get(dut.o_anomaly.valid):
                value = ctx.get(dut.o_anomaly.payload)
                result["anomalies"].append({k: int(getattr(value, k)) for k in _ANOMALY})
            await ctx.tick()
            cycle += 1
            done = n >= len(events) and hosted >= len(host)
            idle = idle + 1 if done else 0
            if idle > extra:
                break
            assert cycle < 40 * len(events) + 2000, "the table stopped taking messages"
        for reg in dut.registers:
            result["regs"][reg.name] = ctx.get(getattr(dut.regs, reg.name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result


def model_run(events, *, sessions=2, entries=64, executions=64):
    model = OpenOrdersModel(sessions=sessions, entries=entries, executions=executions)
    per_event = []
    for what, value in events:
        if what == "accept":
            model.accepted(value)
            per_event.append([])
        elif what == "message":
            per_event.append(model.feedback(value))
        elif what == "clear":
            model.clear()
            per_event.append([])
        else:
            per_event.append([])
    return model, per_event


def check_against_model(events, result, **params):
    model, per_event = model_run(events, **params)
    expected = [u for updates in per_event for u in updates]
    assert result["updates"] == expected
    assert result["anomalies"] == model.anomalies
    regs = result["regs"]
    for name, value in model.counters.items():
        if name not in ("host_updates",):
            assert regs[name] == value, name
    assert regs["open_entries"] == model.open_entries
    last = model.last_anomaly
    assert regs["last_anomaly_reason"] == (last["reason"] if last else 0)
    return model, per_event


def check_risk_exact(lifecycle: Lifecycle, events, per_event, sessions: int) -> None:
    """Risk's exposure after the lifecycle equals the recomputation from the exchange's truth,
    and no update was refused or hit a bound."""
    risk = configured_risk(SLOTS, sessions)
    for (what, value), updates in zip(events, per_event):
        if what == "accept":
            accepted, reason = risk.order(value)
            assert accepted, reason
        for update in updates:
            assert risk.exposure(update)
    assert risk.counters["exposure_saturated"] == 0
    assert risk.counters["exposure_refused"] == 0
    assert risk_exposure(risk, SLOTS, sessions) == lifecycle.expected_risk()


_ACTIONS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 30)), min_size=1, max_size=60)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ACTIONS, st.sampled_from([0.0, 0.0, 0.3]))
def test_lifecycles_exact(actions, backpressure):
    """Well-formed lifecycles: the gateware's updates are the model's, no anomaly, and risk ends
    exactly where the lifecycle says."""
    lifecycle = Lifecycle(sessions=2)
    for action, param in actions:
        lifecycle.step(action, param)
    events = lifecycle.events
    result = simulate(events, backpressure=backpressure, seed=len(actions))
    model, per_event = check_against_model(events, result)
    assert model.anomalies == []
    assert result["regs"]["open_entries"] == len(lifecycle.bookings)
    check_risk_exact(lifecycle, events, per_event, sessions=2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1 << 30)), min_size=1, max_size=70))
def test_lifecycles_small_table(actions):
    """A 4-entry-per-session table with 4 kept executions, UserRefNum gaps and messages that do
    not fit (unknown orders and sessions, duplicates, quantities above the open one): the
    gateware agrees with the model on every update, anomaly and counter."""
    lifecycle = Lifecycle(sessions=2, chaos=True)
    for action, param in actions:
        lifecycle.step(action, param)
    params = {"sessions": 2, "entries": 4, "executions": 4}
    result = simulate(lifecycle.events, **params)
    check_against_model(lifecycle.events, result, **params)


def test_lifecycle_by_hand():
    """One order through its life, expected updates written out: enter 100 buy at 25.0000,
    accepted, 30 filled, replaced by 80 at 25.1000 (after 20 more filled on the original),
    40 cancelled, the first fill broken, 40 filled."""
    s, slot = 1, 5
    events = [
        ("accept", order("O", s, 10, slot, "B", 100, 250000)),
        ("message", message(ExposureKind.ACCEPTED, s, 10, 100, price=250000)),
        ("message", message(ExposureKind.EXECUTED, s, 10, 30, price=249900, match_number=77)),
        ("accept", order("U", s, 11, slot, "B", 80, 251000, orig_user_ref_num=10)),
        ("message", message(ExposureKind.EXECUTED, s, 10, 20, price=250000, match_number=78)),
        ("message", message(ExposureKind.REPLACED, s, 11, 80, orig_user_ref_num=10, price=251000)),
        ("message", message(ExposureKind.CANCELED, s, 11, 40)),
        ("message", message(ExposureKind.BROKEN, s, 10, match_number=77)),
        ("message", message(ExposureKind.EXECUTED, s, 11, 40, price=251000, match_number=79)),
    ]
    result = simulate(events)

    def u(kind, urn, quantity, price):
        return {"kind": int(kind), "session": s, "slot": slot, "side": ord("B"), "quantity": quantity,
                "price": price, "user_ref_num": urn}

    K = ExposureUpdateKind
    assert result["updates"] == [
        u(K.EXECUTION, 10, 30, 250000),
        u(K.EXECUTION, 10, 20, 250000),
        u(K.CANCEL, 10, 50, 250000), u(K.DONE, 10, 0, 250000),   # the original's booking off
        u(K.CANCEL, 11, 40, 251000),
        u(K.BROKEN, 10, 30, 250000),
        u(K.EXECUTION, 11, 40, 251000), u(K.DONE, 11, 0, 251000),
    ]
    assert result["anomalies"] == []
    assert result["regs"]["open_entries"] == 0
    assert result["regs"]["inserts"] == 2
    risk = configured_risk(SLOTS, 2)
    for what, value in events:
        if what == "accept":
            assert risk.order(value)[0]
    for update in result["updates"]:
        risk.exposure(update)
    exp = risk.slot_exposure[slot]
    assert (exp.position, exp.open_buy_quantity, exp.open_orders) == (20 + 40, 0, 0)
    assert risk.session_state[s].open_notional == 0


def test_anomalies_by_hand():
    """Each anomaly once, with what the host is told."""
    events = [
        ("accept", order("O", 0, 1, 2, "S", 50, 1000)),
        ("accept", order("O", 0, 1, 2, "S", 50, 1000)),                          # same UserRefNum
        ("accept", order("O", 0, 65, 2, "S", 10, 1000)),                         # 65 mod 64 = 1
        ("accept", order("O", 7, 3, 2, "B", 10, 1000)),                          # no session 7
        ("message", message(ExposureKind.EXECUTED, 0, 2, 5, match_number=1)),    # not in table
        ("message", message(ExposureKind.CANCELED, 0, 1, 60)),                   # 60 > 50 open
        ("message", message(ExposureKind.BROKEN, 0, 1, match_number=9)),         # no execution
        ("message", message(ExposureKind.REJECTED, 5, 1)),                       # no session 5
    ]
    result = simulate(events)
    A, K = Anomaly, ExposureKind
    assert [(a["reason"], a["kind"], a["session"], a["user_ref_num"], a["quantity"], a["open_quantity"])
            for a in result["anomalies"]] == [
        (A.COLLISION, K.NONE, 0, 1, 50, 50), (A.COLLISION, K.NONE, 0, 65, 10, 0),
        (A.UNKNOWN_SESSION, K.NONE, 7, 3, 10, 0), (A.MISS, K.EXECUTED, 0, 2, 5, 0),
        (A.QUANTITY, K.CANCELED, 0, 1, 60, 50), (A.BROKEN_MISS, K.BROKEN, 0, 1, 0, 0),
        (A.UNKNOWN_SESSION, K.REJECTED, 5, 1, 0, 0)]
    regs = result["regs"]
    assert {name: regs[name] for name in ANOMALY_COUNTERS.values()} == {
        "unknown_session": 2, "insert_collisions": 2, "misses": 1, "quantity_mismatches": 1,
        "broken_misses": 1}
    assert (regs["last_anomaly_reason"], regs["last_anomaly_user_ref_num"]) == (A.UNKNOWN_SESSION, 1)
    # The cancel above the open quantity took off only the 50 open shares, and ended the order.
    assert [(u["kind"], u["quantity"]) for u in result["updates"]] == [
        (ExposureUpdateKind.CANCEL, 50), (ExposureUpdateKind.DONE, 0)]
    check_against_model(events, result)


def test_latency():
    """A message taken in cycle t: first update valid in cycle t + LATENCY, the rest back to
    back; Order Replaced's updates leave on consecutive cycles."""
    events = [("accept", order("O", 0, 1, 3, "B", 100, 5000)), ("idle", 5),
              ("message", message(ExposureKind.EXECUTED, 0, 1, 100, match_number=3)), ("idle", 8),
              ("accept", order("O", 0, 2, 3, "B", 100, 5000)),
              ("accept", order("U", 0, 3, 3, "B", 60, 5100, orig_user_ref_num=2)), ("idle", 5),
              ("message", message(ExposureKind.REPLACED, 0, 3, 50, orig_user_ref_num=2))]
    result = simulate(events)
    cycles = result["update_cycles"]
    assert [u["kind"] for u in result["updates"]] == [
        ExposureUpdateKind.EXECUTION, ExposureUpdateKind.DONE,
        ExposureUpdateKind.CANCEL, ExposureUpdateKind.DONE, ExposureUpdateKind.CANCEL]
    executed, replaced = result["taken"]
    assert cycles[0] - executed == LATENCY == 2
    assert cycles[1] == cycles[0] + 1
    # Order Replaced: its first operation issued two edges before it is taken.
    assert cycles[2:] == [replaced - 2 + LATENCY, replaced - 1 + LATENCY, replaced + LATENCY]


def test_accepted_order_found_by_every_later_message():
    """Accepted orders go first: an order arriving on edge A is found by a message offered from
    the next cycle on (taken on edge A + 2 at the earliest), but not by one taken on edge A."""
    for same_cycle, found in ((False, True), (True, False)):
        updates = _accept_then_cancel(same_cycle)
        assert bool(updates) is found, same_cycle


def _accept_then_cancel(same_cycle: bool) -> list:
    dut = OpenOrders(sessions=2, entries=64, executions=64)
    updates = []

    async def bench(ctx):
        ctx.set(dut.o_exposure.ready, 1)
        ctx.set(dut.i_accepted.valid, 1)
        ctx.set(dut.i_accepted.payload, order_layout.const(order("O", 0, 1, 3, "B", 100, 5000)))
        if not same_cycle:
            await ctx.tick()                              # edge A: the order arrives
            ctx.set(dut.i_accepted.valid, 0)
        ctx.set(dut.i_feedback.valid, 1)
        ctx.set(dut.i_feedback.payload, feedback_layout.const(message(ExposureKind.CANCELED, 0, 1, 100)))
        for _ in range(20):
            taken = ctx.get(dut.i_feedback.ready)
            await ctx.tick()
            ctx.set(dut.i_accepted.valid, 0)
            if taken:
                ctx.set(dut.i_feedback.valid, 0)
                break
        for _ in range(10):
            if ctx.get(dut.o_exposure.valid):
                updates.append(ctx.get(dut.o_exposure.payload))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return updates


def _host_update(i: int) -> dict[str, int]:
    return {"kind": int(ExposureUpdateKind.EXECUTION), "session": 1, "slot": 2, "side": ord("S"),
            "quantity": i + 1, "price": 100 + i, "user_ref_num": 0x8000_0000 + i}


def test_host_merge_loses_nothing():
    """Host updates offered every few cycles while table updates flow: every one of both comes
    out exactly once, each in its own order."""
    lifecycle = Lifecycle(sessions=2)
    rng = random.Random(7)
    for _ in range(50):
        lifecycle.step(rng.choice([0, 0, 1, 1, 2, 3, 5, 6, 7]), rng.randrange(1 << 30))
    host = [(3 * i + rng.randrange(3), _host_update(i)) for i in range(40)]
    result = simulate(lifecycle.events, host=host, backpressure=0.2, seed=3)
    from_host = [u for u in result["updates"] if u["user_ref_num"] >= 0x8000_0000]
    from_table = [u for u in result["updates"] if u["user_ref_num"] < 0x8000_0000]
    assert from_host == [h for _, h in host]
    _, per_event = model_run(lifecycle.events)
    assert from_table == [u for updates in per_event for u in updates]
    assert result["regs"]["host_updates"] == 40
    assert result["regs"]["host_dropped"] == 0


def test_host_queue_overflow_counted():
    """With risk not ready, host updates beyond the queue are counted as dropped; the rest come
    out once ready returns."""
    host = [(i, _host_update(i)) for i in range(10)]
    result = simulate([("idle", 30)], host=host, host_queue_depth=4, hold_ready=lambda c: c < 25)
    assert result["regs"]["host_dropped"] == 6
    assert result["updates"] == [h for _, h in host[:4]]
    assert result["regs"]["host_updates"] == 4


def test_insert_queue_overflow_counted():
    """Accepted orders that find the insert queue full (the table stalled by risk not ready)
    are counted; every other one is inserted."""
    events = [("accept", order("O", 0, 1, 0, "B", 10, 100)), ("idle", 4),
              ("message", message(ExposureKind.CANCELED, 0, 1, 4))]
    dut = OpenOrders(sessions=2, entries=64, executions=64, insert_queue_depth=4)
    regs = {}

    async def bench(ctx):
        ctx.set(dut.o_exposure.ready, 1)
        ctx.set(dut.i_accepted.valid, 1)
        ctx.set(dut.i_accepted.payload, order_layout.const(events[0][1]))
        await ctx.tick()
        ctx.set(dut.i_accepted.valid, 0)
        await ctx.tick().repeat(3)
        ctx.set(dut.o_exposure.ready, 0)                  # risk stalls: the CANCEL stays in the way
        ctx.set(dut.i_feedback.valid, 1)
        ctx.set(dut.i_feedback.payload, feedback_layout.const(events[2][1]))
        await ctx.tick()
        ctx.set(dut.i_feedback.valid, 0)
        for urn in range(2, 12):                          # 10 accepted orders, one a cycle
            ctx.set(dut.i_accepted.valid, 1)
            ctx.set(dut.i_accepted.payload, order_layout.const(order("O", 0, urn, 0, "B", 10, 100)))
            await ctx.tick()
        ctx.set(dut.i_accepted.valid, 0)
        ctx.set(dut.o_exposure.ready, 1)
        await ctx.tick().repeat(30)
        for reg in dut.registers:
            regs[reg.name] = ctx.get(getattr(dut.regs, reg.name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert regs["inserts_dropped"] > 0
    assert regs["inserts"] + regs["inserts_dropped"] == 11
    assert regs["open_entries"] == regs["inserts"]


def test_clear():
    """Writing clear empties the table and the kept executions: later messages miss."""
    events = [("accept", order("O", 0, 1, 0, "B", 10, 100)), ("accept", order("O", 1, 9, 0, "S", 10, 100)),
              ("message", message(ExposureKind.EXECUTED, 1, 9, 4, match_number=12)),
              ("clear", None), ("idle", 140),
              ("message", message(ExposureKind.CANCELED, 0, 1, 10)),
              ("message", message(ExposureKind.BROKEN, 1, 9, match_number=12))]
    result = simulate(events)
    assert [a["reason"] for a in result["anomalies"]] == [Anomaly.MISS, Anomaly.BROKEN_MISS]
    assert result["regs"]["open_entries"] == 0
    assert result["regs"]["clearing"] == 0
    check_against_model(events, result)


def test_cancel_and_modify_actions_book_nothing():
    events = [("accept", order("X", 0, 1, 0, "B", 10, 100)), ("accept", order("M", 0, 2, 0, "B", 10, 100)),
              ("message", message(ExposureKind.CANCELED, 0, 1, 10))]
    result = simulate(events)
    assert result["regs"]["inserts"] == 0
    assert [a["reason"] for a in result["anomalies"]] == [Anomaly.MISS]


def test_parameters_checked():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)  # the refused half-built components
        for kwargs in ({"sessions": 0}, {"sessions": 65}, {"entries": 3}, {"executions": 0},
                       {"insert_queue_depth": 0}, {"entries": True}):
            with pytest.raises(ValueError, match=next(iter(kwargs))):
                OpenOrders(**kwargs)
        gc.collect()


def test_action_codes_are_the_risk_ones():
    assert (Action.ENTER, Action.REPLACE) == (ord("O"), ord("U"))
