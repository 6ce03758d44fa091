"""The risk gate (hdl/risk.py) in the Amaranth simulator against the reference model
(sim/risk_model.py), edge by edge; the indexed registers through the CSR bank; the cocotb bench
(sim/tb_risk.py) on Verilator."""

from __future__ import annotations

import copy

from dataclasses import dataclass, field

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import HealthCheck, event, given, settings, strategies as st

from tickwire.hdl.csr import CsrBank
from tickwire.hdl.risk import Risk
from tickwire.protocols.risk import Action, ExposureUpdateKind, RejectReason, VERDICT_COUNTERS
from tickwire.sim.risk_model import BookTop, RiskModel
from tickwire.sim.runner import run

LATENCY = 2
SMALL = dict(slots=4, sessions=2)
STATE_REGISTERS = ("position", "open_buy_quantity", "open_sell_quantity", "open_orders")
SESSION_STATE_REGISTERS = ("open_notional", "throttle_tokens", "last_user_ref_num")


def order(**fields) -> dict[str, int]:
    base = {"action": Action.ENTER, "session": 0, "slot": 0, "side": ord("B"), "quantity": 100,
            "price": 10_000, "user_ref_num": 1}
    return {**base, **fields}


def update(**fields) -> dict[str, int]:
    base = {"kind": ExposureUpdateKind.EXECUTION, "session": 0, "slot": 0, "side": ord("B"),
            "quantity": 0, "price": 0, "user_ref_num": 0}
    return {**base, **fields}


def open_slot(slot: int, **overrides) -> list[tuple]:
    """Register writes that let a slot trade: generous limits, a host reference price."""
    limits = {"symbol_enabled": 1, "max_order_quantity": 1000, "max_order_notional": 10**12,
              "reference_price": 10_000, "price_collar": 500, "max_long_position": 5000,
              "max_short_position": 5000, "max_open_orders": 20, **overrides}
    return [(name, value, slot, None) for name, value in limits.items()]


def open_session(session: int, **overrides) -> list[tuple]:
    limits = {"max_open_notional": 10**13, "throttle_interval": 1, "throttle_burst": 8, **overrides}
    return [(name, value, None, session) for name, value in limits.items()]


@dataclass
class Run:
    """What one simulation did, edge by edge (edge n is the n-th rising edge after reset)."""

    writes: dict[int, list[tuple]] = field(default_factory=dict)   # edge -> writes landing on it
    kill: dict[int, tuple[int, int]] = field(default_factory=dict)  # edge -> (kill, kill_session) before it
    orders: list[tuple[int, dict]] = field(default_factory=list)    # (edge taken, order)
    updates: list[tuple[int, dict]] = field(default_factory=list)   # (edge taken, update)
    accepted: list[tuple[int, dict]] = field(default_factory=list)  # (edge taken from o_stream, order)
    rejected: list[tuple[int, int, dict]] = field(default_factory=list)  # (edge, reason, order)
    counters: dict[str, int] = field(default_factory=dict)
    slot_state: dict[int, dict[str, int]] = field(default_factory=dict)
    session_state: dict[int, dict[str, int]] = field(default_factory=dict)
    readback: dict[tuple[str, int], int] = field(default_factory=dict)
    session_edges: dict[int, int] = field(default_factory=dict)  # session -> edge its state was read after


def _fields(const, names) -> dict[str, int]:
    return {n: int(getattr(const, n)) for n in names}


ORDER_FIELDS = tuple(order())
UPDATE_FIELDS = tuple(update())


def simulate(params: dict, *, config: list[tuple], cycles: list[dict], book: dict[int, BookTop] | None = None,
             ready: list[int] | None = None, settle: int = 6) -> Run:
    """Run ``Risk(**params)``: the ``config`` writes, then one dict per cycle with any of
    ``order`` (offered until taken), ``update``, ``kill``, ``kill_session``, ``write``.
    ``ready`` is the o_stream ready per cycle (default always 1)."""
    dut = Risk(**params)
    regs = dut.regs
    book = book or {}
    result = Run()
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def tb(ctx):
        edge = 0
        pending = []
        kill = kill_session = 0
        schedule = [{"write": w} for w in config] + list(cycles) + [{} for _ in range(settle)]
        index = 0
        cycle = 0
        while index < len(schedule) or pending:
            step = schedule[index] if index < len(schedule) else {}
            index += 1
            if "order" in step:
                pending.append(step["order"])
            kill = step.get("kill", kill)
            kill_session = step.get("kill_session", kill_session)
            ctx.set(regs.kill, kill)
            ctx.set(regs.kill_session, kill_session)
            stb = None
            if "write" in step:
                name, value, slot, session = step["write"]
                if slot is not None:
                    ctx.set(regs.limit_slot, slot)
                if session is not None:
                    ctx.set(regs.limit_session, session)
                ctx.set(getattr(regs, name), value)
                if name not in ("kill", "kill_session"):
                    stb = getattr(regs, f"{name}_stb")
                    ctx.set(stb, 1)
            ctx.set(dut.i_stream.valid, bool(pending))
            if pending:
                ctx.set(dut.i_stream.payload, pending[0])
            ctx.set(dut.i_exposure.valid, "update" in step)
            if "update" in step:
                ctx.set(dut.i_exposure.payload, step["update"])
            o_ready = ready[cycle] if ready is not None and cycle < len(ready) else 1
            ctx.set(dut.o_stream.ready, o_ready)
            (_, _, i_valid, i_ready, i_payload, e_valid, e_payload, o_valid, o_payload, r_valid,
             r_payload, slot) = await ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.i_stream.payload, dut.i_exposure.valid,
                dut.i_exposure.payload, dut.o_stream.valid, dut.o_stream.payload, dut.o_reject.valid,
                dut.o_reject.payload, dut.book.slot)
            edge += 1
            cycle += 1
            result.kill[edge] = (kill, kill_session)
            if stb is not None:
                ctx.set(stb, 0)
                result.writes.setdefault(edge, []).append(step["write"])
            if i_valid and i_ready:
                result.orders.append((edge, _fields(i_payload, ORDER_FIELDS)))
                pending.pop(0)
            if e_valid:
                result.updates.append((edge, _fields(e_payload, UPDATE_FIELDS)))
            if o_valid and o_ready:
                result.accepted.append((edge, _fields(o_payload, ORDER_FIELDS)))
            if r_valid:
                result.rejected.append((edge, int(r_payload.reason), _fields(r_payload.order, ORDER_FIELDS)))
            top = book.get(slot, BookTop())
            ctx.set(dut.book.bid_price, top.bid_price)
            ctx.set(dut.book.ask_price, top.ask_price)
            ctx.set(dut.book.trusted, top.trusted)
        ctx.set(dut.o_stream.ready, 1)
        await ctx.tick().repeat(4)
        result.counters = {r.name: ctx.get(getattr(regs, r.name)) for r in dut.registers
                           if r.name in VERDICT_COUNTERS.values() or r.name.startswith("exposure_")}
        result.counters["last_reject_reason"] = ctx.get(regs.last_reject_reason)
        for s in range(dut.slots):
            ctx.set(regs.limit_slot, s)
            await ctx.tick().repeat(2)
            row = {n: ctx.get(getattr(regs, n)) for n in STATE_REGISTERS}
            row["position"] -= (row["position"] >> dut.quantity_width) << (dut.quantity_width + 1)
            result.slot_state[s] = row
            result.readback[("max_order_quantity", s)] = ctx.get(regs.max_order_quantity_readback)
        tail = 4 + 2 * dut.slots
        for s in range(dut.sessions):
            ctx.set(regs.limit_session, s)
            await ctx.tick()
            tail += 1
            result.session_edges[s] = edge + tail
            result.session_state[s] = {n: ctx.get(getattr(regs, n if n != "last_user_ref_num"
                                                          else "last_user_ref_num_readback"))
                                       for n in SESSION_STATE_REGISTERS}

    sim.add_testbench(tb)
    sim.run()
    return result


def replay(params: dict, run_: Run, book: dict[int, BookTop] | None = None) -> tuple[RiskModel, list, list]:
    """Drive the model with what the simulation did, edge by edge; returns the model and the
    accepted / rejected lists it predicts (with the edge each output is taken on)."""
    model = RiskModel(**params)
    book = book or {}
    orders = {e: o for e, o in run_.orders}
    updates = {e: u for e, u in run_.updates}
    last = max([0, *run_.kill, *orders, *updates, *run_.writes]) + 2
    accepted, rejected = [], []
    for edge in range(1, last + 1):
        model.kill, model.kill_session = run_.kill.get(edge, (0, 0))
        taken = orders.get(edge - 1)
        if taken is not None:
            ok, reason = model.order(taken, book.get(taken["slot"], BookTop()))
            if ok:
                accepted.append((edge + 1, taken))
            else:
                rejected.append((edge + 1, int(reason), taken))
        if edge - 1 in updates:
            model.exposure(updates[edge - 1])
        model.tick()
        for name, value, slot, session in run_.writes.get(edge, ()):
            model.write(name, value, slot=slot, session=session)
    return model, accepted, rejected


def compare(params, run_: Run, book=None) -> RiskModel:
    model, accepted, rejected = replay(params, run_, book)
    assert [(e, r, o) for e, r, o in run_.rejected] == rejected, "rejects differ from the model"
    assert run_.accepted == accepted, "accepted orders differ from the model"
    want = dict(model.counters, last_reject_reason=model.last_reject_reason)
    assert run_.counters == want
    for s, row in run_.slot_state.items():
        exp = model.slot_exposure[s]
        assert row == {"position": exp.position, "open_buy_quantity": exp.open_buy_quantity,
                       "open_sell_quantity": exp.open_sell_quantity, "open_orders": exp.open_orders}, f"slot {s}"
    last = max([0, *run_.kill, *(e for e, _ in run_.orders), *(e for e, _ in run_.updates), *run_.writes]) + 2
    for s, got in run_.session_state.items():
        # The token bucket kept refilling until the state was read: tick a copy of the
        # session as far (nothing else changes a bucket after the last order).
        st_ = copy.copy(model.session_state[s])
        for _ in range(run_.session_edges[s] - last):
            refill = st_.timer + 1 >= st_.throttle_interval
            st_.timer = 0 if refill else st_.timer + 1
            st_.throttle_tokens = min(st_.throttle_tokens + refill, st_.throttle_burst)
        assert got == {"open_notional": st_.open_notional, "throttle_tokens": st_.throttle_tokens,
                       "last_user_ref_num": st_.last_user_ref_num}, f"session {s}"
    return model


# -- directed tests ---------------------------------------------------------------------------------

def test_parameters_are_checked():
    for bad in (dict(slots=0), dict(sessions=65), dict(quantity_width=33), dict(slots="4"),
                dict(omit_checks=(RejectReason.NONE,))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Risk(**bad)


def test_register_window():
    """Every register fits the stage's 64-word window (the bank refuses otherwise)."""
    risk = Risk()
    bank = CsrBank([("risk", risk.registers)])
    amap = bank.address_map()
    risk._MustUse__silence = bank._MustUse__silence = True  # only the map is wanted
    assert amap["risk.max_order_quantity"]["indexed_by"] == "risk.limit_slot"
    assert amap["risk.throttle_burst"]["indexed_by"] == "risk.limit_session"
    assert "indexed_by" not in amap["risk.kill"]


def test_latency_and_every_reason():
    """Back-to-back orders, each failing a different check (and one per accept): every verdict
    is taken 2 edges after its order, accepts and rejects alike, with the model's reason."""
    config = open_slot(0) + open_slot(1, symbol_enabled=0) + open_slot(2, symbol_restricted=1) \
        + open_slot(3, reference_price=0) + open_session(0) + open_session(1, max_open_notional=0)
    book = {3: BookTop(9_990, 10_010, 1)}
    orders = [
        order(user_ref_num=1),                                  # accepted
        order(session=5, user_ref_num=2),                       # UNKNOWN_SESSION
        order(action=ord("Z"), user_ref_num=3),                 # INVALID_ORDER
        order(side=ord("Q"), user_ref_num=3),                   # INVALID_ORDER
        order(slot=9, user_ref_num=3),                          # UNKNOWN_SLOT
        order(slot=1, user_ref_num=3),                          # SYMBOL_DISABLED
        order(slot=2, user_ref_num=3),                          # SYMBOL_RESTRICTED
        order(quantity=0, user_ref_num=3),                      # ZERO_QUANTITY
        order(quantity=1001, user_ref_num=3),                   # MAX_QUANTITY
        order(slot=3, price=10_510, user_ref_num=3),            # PRICE_COLLAR (book mid 10000)
        order(slot=3, price=10_500, user_ref_num=3),            # accepted at the collar
        order(price=9_499, user_ref_num=4),                     # PRICE_COLLAR (host reference)
        order(quantity=1000, user_ref_num=4, side=ord("S")),    # accepted
        order(user_ref_num=4),                                  # USER_REF_NUM
        order(session=1, user_ref_num=9),                       # OPEN_NOTIONAL
        order(action=Action.CANCEL, user_ref_num=1),            # accepted (takes nothing)
    ]
    run_ = simulate(SMALL, config=config, cycles=[{"order": o} for o in orders], book=book)
    compare(SMALL, run_, book)
    taken = {id_: e for id_, (e, _) in enumerate(run_.orders)}
    outs = sorted([(e, o) for e, o in run_.accepted] + [(e, o) for e, _, o in run_.rejected],
                  key=lambda x: x[0])
    assert len(outs) == len(orders)
    latencies = {outs[k][0] - taken[k] for k in range(len(orders))}
    assert latencies == {LATENCY}, f"latencies {latencies}"
    reasons = [r for _, r, _ in run_.rejected]
    assert reasons == [RejectReason.UNKNOWN_SESSION, RejectReason.INVALID_ORDER, RejectReason.INVALID_ORDER,
                       RejectReason.UNKNOWN_SLOT, RejectReason.SYMBOL_DISABLED, RejectReason.SYMBOL_RESTRICTED,
                       RejectReason.ZERO_QUANTITY, RejectReason.MAX_QUANTITY, RejectReason.PRICE_COLLAR,
                       RejectReason.PRICE_COLLAR, RejectReason.USER_REF_NUM, RejectReason.OPEN_NOTIONAL]
    assert len(run_.accepted) == 4


def test_kill_switch_acts_the_cycle_after_it_is_set():
    """Orders every cycle; kill set in the cycle before edge V rejects the verdict on V."""
    config = open_slot(0, max_open_orders=100) + open_session(0)
    cycles = [{"order": order(quantity=1, user_ref_num=k + 1), **({"kill": 1} if 10 <= k < 14 else {"kill": 0}),
               **({"kill_session": 1} if 20 <= k < 22 else {"kill_session": 0})} for k in range(30)]
    run_ = simulate(SMALL, config=config, cycles=cycles)
    compare(SMALL, run_)
    killed = [r for _, r, _ in run_.rejected]
    assert killed == [RejectReason.KILL] * 4 + [RejectReason.KILL_SESSION] * 2


def test_backpressure_keeps_the_verdicts():
    """Random output backpressure: the same accepted orders and rejects as without it."""
    config = open_slot(0, max_open_orders=6, max_long_position=450) + open_session(0)
    cycles = [{"order": order(quantity=100, user_ref_num=k // 2 + 1)} for k in range(12)]
    free = simulate(SMALL, config=config, cycles=cycles)
    import random
    rng = random.Random(7)
    held = simulate(SMALL, config=config, cycles=cycles, ready=[rng.random() < 0.4 for _ in range(200)])
    assert [o for _, o in held.accepted] == [o for _, o in free.accepted]
    assert [(r, o) for _, r, o in held.rejected] == [(r, o) for _, r, o in free.rejected]
    assert held.counters == free.counters


def test_exposure_updates_and_saturation():
    """Fills move the position, cancels and rejects take open quantity off, done closes orders;
    an update taking off more than is open stops at 0 and counts as saturated."""
    config = open_slot(0) + open_slot(1) + open_session(0) + open_session(1)
    cycles = [
        {"order": order(quantity=300, user_ref_num=1)},
        {"order": order(quantity=200, side=ord("S"), user_ref_num=2, slot=1, session=1)},
        {"update": update(quantity=100, price=10_000)},
        {"update": update(kind=ExposureUpdateKind.CANCEL, quantity=50, price=10_000)},
        {"update": update(kind=ExposureUpdateKind.EXECUTION, slot=1, session=1, side=ord("S"),
                          quantity=200, price=10_000)},
        {"update": update(kind=ExposureUpdateKind.DONE, slot=1, session=1, side=ord("S"))},
        {"update": update(kind=ExposureUpdateKind.REJECT, quantity=1000, price=10_000)},  # saturates
        {"update": update(slot=7)},                                                        # refused
        {"update": update(kind=ExposureUpdateKind.BROKEN, quantity=40)},
        {"order": order(quantity=10, user_ref_num=3),                                      # same edge
         "update": update(kind=ExposureUpdateKind.EXECUTION, quantity=5, price=10_000)},
    ]
    run_ = simulate(SMALL, config=config, cycles=cycles)
    model = compare(SMALL, run_)
    assert run_.slot_state[0] == {"position": 65, "open_buy_quantity": 5, "open_sell_quantity": 0,
                                  "open_orders": 1}
    assert run_.slot_state[1]["position"] == -200
    assert run_.counters["exposure_saturated"] == 1 and run_.counters["exposure_refused"] == 1
    assert model.counters["exposure_updates"] == 7


def test_indexed_registers_through_the_bank():
    """Write a per-slot limit for two slots through the CSR bus; each reads back its own value."""
    dut = Risk(**SMALL)
    bank = CsrBank([("risk", dut.registers)])
    m = Module()
    m.submodules.bank, m.submodules.risk = bank, dut
    wiring.connect(m, bank.risk, dut.regs)
    amap = bank.address_map()
    sim = Simulator(m)
    sim.add_clock(1e-8)
    seen = {}

    async def tb(ctx):
        async def write(name, value):
            ctx.set(bank.bus.addr, amap[f"risk.{name}"]["address"])
            ctx.set(bank.bus.w_data, value)
            ctx.set(bank.bus.w_stb, 1)
            await ctx.tick()
            ctx.set(bank.bus.w_stb, 0)

        async def read(name):
            ctx.set(bank.bus.addr, amap[f"risk.{name}"]["address"])
            ctx.set(bank.bus.r_stb, 1)
            await ctx.tick()
            ctx.set(bank.bus.r_stb, 0)
            return ctx.get(bank.bus.r_data)

        for slot, value in ((1, 111), (2, 222), (5, 555)):
            await write("limit_slot", slot)
            await write("max_order_quantity", value)
        await write("limit_session", 1)
        await write("throttle_interval", 77)
        await ctx.tick().repeat(3)
        for slot in (1, 2, 3, 5):
            await write("limit_slot", slot)
            await ctx.tick().repeat(2)
            seen[slot] = await read("max_order_quantity")
        seen["session 1"] = await read("throttle_interval")
        await write("limit_session", 0)
        await ctx.tick().repeat(2)
        seen["session 0"] = await read("throttle_interval")

    sim.add_testbench(tb)
    sim.run()
    # Slot 5 does not exist (slots=4): the write is dropped and it reads 0.
    assert seen == {1: 111, 2: 222, 3: 0, 5: 0, "session 1": 77, "session 0": 0}


# -- the model against the gateware on random sequences ---------------------------------------------

PARAMS = dict(slots=3, sessions=2)
SIDES = [ord("B"), ord("S"), ord("T"), ord("E")]


def _often(common, *rare):
    """A strategy that mostly draws ``common`` (so that most orders get far into the checks)."""
    return st.sampled_from([common] * 6 + list(rare))


@st.composite
def scenarios(draw):
    config = []
    for slot in range(PARAMS["slots"]):
        config += open_slot(slot, **{
            "symbol_enabled": draw(_often(1, 0)),
            "symbol_restricted": draw(_often(0, 1)),
            "max_order_quantity": draw(_often(1000, 50, 100, 0)),
            "max_order_notional": draw(st.sampled_from([10**12, 10**12, 1_000_000, 500_000])),
            "reference_price": draw(st.sampled_from([0, 10_000, 10_000])),
            "price_collar": draw(st.sampled_from([0, 10, 100, 100])),
            "max_long_position": draw(_often(1000, 0, 100, 300)),
            "max_short_position": draw(_often(1000, 0, 100, 300)),
            "max_open_orders": draw(_often(100, 0, 1, 3)),
        })
    for session in range(PARAMS["sessions"]):
        config += open_session(session, max_open_notional=draw(_often(10**13, 3_000_000, 0)),
                               throttle_burst=draw(st.sampled_from([0, 2, 3, 20, 20])),
                               throttle_interval=draw(st.sampled_from([1, 3, 10, 30])))
    book = {slot: BookTop(draw(_often(9_990, 0, 9_900)), draw(_often(10_010, 0, 10_100)), draw(_often(1, 0)))
            for slot in range(PARAMS["slots"])}
    cycles = []
    urn = 0
    kill = kill_session = 0
    for _ in range(draw(st.integers(5, 40))):
        step = {}
        if draw(st.integers(0, 3)):
            urn += draw(st.sampled_from([1] * 12 + [0, -1, 5]))
            step["order"] = order(
                action=draw(_often(Action.ENTER, Action.REPLACE, Action.CANCEL, Action.MODIFY, ord("Q"))),
                session=draw(_often(0, 1, 1, 1, 2)), slot=draw(_often(0, 1, 1, 2, 2, 3)),
                side=draw(_often(ord("B"), *SIDES, ord("X"))),
                quantity=draw(st.sampled_from([1, 50, 51, 100, 100, 101, 200, 0, 999, 1000, 1001])),
                price=draw(st.sampled_from([9_899, 9_900, 9_990, 10_000, 10_000, 10_010, 10_100, 10_101, 5000])),
                user_ref_num=max(0, urn))
        if draw(st.integers(0, 3)) == 0:
            step["update"] = update(kind=draw(st.integers(0, 6)), session=draw(_often(0, 1, 1, 2)),
                                    slot=draw(_often(0, 1, 2, 5)), side=draw(_often(ord("B"), *SIDES, 0)),
                                    quantity=draw(st.sampled_from([0, 1, 50, 100, 400])),
                                    price=draw(st.sampled_from([10_000, 9_990])))
        if draw(st.integers(0, 20)) == 0:
            kill = 1 - kill
        if draw(st.integers(0, 20)) == 0:
            kill_session = draw(st.integers(0, 3)) if not kill_session else 0
        step["kill"], step["kill_session"] = kill, kill_session
        cycles.append(step)
    return config, book, cycles


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_model_agrees_with_gateware(scenario):
    config, book, cycles = scenario
    run_ = simulate(PARAMS, config=config, cycles=cycles, book=book)
    compare(PARAMS, run_, book)
    for _, reason, _ in run_.rejected:
        event(f"reject {RejectReason(reason).name}")
    event(f"accepted {min(len(run_.accepted), 3)}+")


def test_risk_cocotb():
    """Every check at its limit and one past it, the kill switch's timing, on Verilator."""
    run("risk", "tickwire.sim.tb_risk")
