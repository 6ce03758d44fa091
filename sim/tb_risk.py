"""cocotb bench of the risk gate alone (``Risk()``: 256 slots, 4 sessions): every check at its
limit (accepted) and one past it (rejected with the check's reason), each run against
:class:`tickwire.sim.risk_model.RiskModel`; the latency of every verdict; the kill switch's
timing cycle by cycle.

Registers are driven on the stage's ``regs__*`` ports (value, then a one-cycle ``_stb`` for the
per-slot and per-session ones, with ``limit_slot`` / ``limit_session`` selecting the entry), as
the CSR bank drives them.
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge, RisingEdge

from ..hdl.order import order_layout
from ..hdl.risk import Risk, exposure_update_layout, reject_layout
from ..protocols.risk import Action, ExposureUpdateKind as Kind, RejectReason as R
from .risk_model import BookTop, RiskModel
from .stage_bench import StageTB
from .tb import pack

#: Cycles from an order taken to its verdict (accept or reject) taken (docstring of ``Risk``).
LATENCY = 2
SLOT, SESSION = 5, 2
NEVER = (1 << 32) - 1  # throttle interval: no refill during a case
BOOK = BookTop(9_990, 10_010, 1)

_RISK = Risk()
_RISK._MustUse__silence = True
REGISTERS = _RISK.registers


def slot_limits(slot=SLOT, **overrides):
    values = {"symbol_enabled": 1, "symbol_restricted": 0, "max_order_quantity": 1000,
              "max_order_notional": 10**12, "reference_price": 10_000, "price_collar": 500,
              "max_long_position": 5000, "max_short_position": 5000, "max_open_orders": 20, **overrides}
    return [(name, value, slot, None) for name, value in values.items()]


def session_limits(session=SESSION, **overrides):
    values = {"max_open_notional": 10**13, "throttle_interval": NEVER, "throttle_burst": 20, **overrides}
    return [(name, value, None, session) for name, value in values.items()]


def order(**fields):
    return {"action": Action.ENTER, "session": SESSION, "slot": SLOT, "side": ord("B"), "quantity": 100,
            "price": 10_000, "user_ref_num": 1, **fields}


def update(kind, **fields):
    return {"kind": int(kind), "session": SESSION, "slot": SLOT, "side": ord("B"), "quantity": 0,
            "price": 10_000, "user_ref_num": 0, **fields}


def flag(name, ok, bad):
    return {"ok": [(name, ok, None, None)], "bad": [(name, bad, None, None)]}


def slot_limit(name, ok, bad):
    return {"ok": [(name, ok, SLOT, None)], "bad": [(name, bad, SLOT, None)]}


#: check -> case: ``ok`` / ``bad`` extra writes (the limit exactly at / one past the order),
#: ``prelude`` actions that build exposure, ``order`` (or ``order_ok`` / ``order_bad``), ``book``;
#: ``late``: the extra writes land after the prelude.
CASES = {
    R.KILL: {**flag("kill", 0, 1)},
    R.KILL_SESSION: {**flag("kill_session", 0b1011, 0b0100)},
    R.UNKNOWN_SESSION: {"ok": session_limits(3), "bad": session_limits(3),
                        "order_ok": order(session=3), "order_bad": order(session=4)},
    R.UNKNOWN_SLOT: {"ok": slot_limits(255), "bad": slot_limits(255),
                     "order_ok": order(slot=255), "order_bad": order(slot=256)},
    R.INVALID_ORDER: {"order_ok": order(side=ord("E"), action=Action.REPLACE),
                      "order_bad": order(side=ord("F"))},
    R.SYMBOL_DISABLED: slot_limit("symbol_enabled", 1, 0),
    R.SYMBOL_RESTRICTED: slot_limit("symbol_restricted", 0, 1),
    R.ZERO_QUANTITY: {"order_ok": order(quantity=1), "order_bad": order(quantity=0)},
    R.MAX_QUANTITY: {**slot_limit("max_order_quantity", 700, 699), "order": order(quantity=700)},
    R.MAX_NOTIONAL: {**slot_limit("max_order_notional", 7_000_000, 6_999_999), "order": order(quantity=700)},
    R.NO_REFERENCE_PRICE: {"ok": slot_limit("reference_price", 0, 0)["ok"], "bad": slot_limit("reference_price", 0, 0)["bad"],
                           "book_ok": BOOK, "book_bad": BookTop(9_990, 10_010, 0)},
    R.PRICE_COLLAR: {**slot_limit("price_collar", 321, 320), "order": order(price=10_321)},
    # Against the book: midpoint 10000.5, so 320.5 away.
    "PRICE_COLLAR_BOOK": {"ok": [("reference_price", 0, SLOT, None), ("price_collar", 321, SLOT, None)],
                          "bad": [("reference_price", 0, SLOT, None), ("price_collar", 320, SLOT, None)],
                          "book_ok": BookTop(9_990, 10_011, 1), "book_bad": BookTop(9_990, 10_011, 1),
                          "order": order(price=10_321), "reason": R.PRICE_COLLAR},
    # position 100, open buy 200, order 400: 700.
    R.POSITION_LONG: {**slot_limit("max_long_position", 700, 699), "order": order(quantity=400, user_ref_num=2),
                      "prelude": [("order", order(quantity=300)),
                                  ("update", update(Kind.EXECUTION, quantity=100))]},
    # position -100, open sell 200, order 400: 700.
    R.POSITION_SHORT: {**slot_limit("max_short_position", 700, 699),
                       "order": order(quantity=400, user_ref_num=2, side=ord("T")),
                       "prelude": [("order", order(quantity=300, side=ord("S"))),
                                   ("update", update(Kind.EXECUTION, quantity=100, side=ord("S")))]},
    # three open, one done: two open, the order makes three.
    R.MAX_OPEN_ORDERS: {**slot_limit("max_open_orders", 3, 2), "order": order(user_ref_num=4), "late": True,
                        "prelude": [("order", order(user_ref_num=k)) for k in (1, 2, 3)]
                        + [("update", update(Kind.DONE))]},
    # 1 000 000 open, 300 000 canceled: 700 000, the order adds 500 000.
    R.OPEN_NOTIONAL: {"ok": session_limits(max_open_notional=1_200_000),
                      "bad": session_limits(max_open_notional=1_199_999),
                      "order": order(quantity=50, user_ref_num=2),
                      "prelude": [("order", order(quantity=100)),
                                  ("update", update(Kind.CANCEL, quantity=30))]},
    R.THROTTLE: {"ok": session_limits(throttle_burst=3), "bad": session_limits(throttle_burst=2),
                 "order": order(user_ref_num=3),
                 "prelude": [("order", order(user_ref_num=1)), ("order", order(user_ref_num=2))]},
    R.USER_REF_NUM: {"ok": [("last_user_ref_num", 41, None, SESSION)],
                     "bad": [("last_user_ref_num", 41, None, SESSION)],
                     "order_ok": order(user_ref_num=42), "order_bad": order(user_ref_num=41)},
}


class TB(StageTB):
    def __init__(self, dut):
        inputs = ["i_stream__valid", "i_stream__payload", "o_stream__ready", "i_exposure__valid",
                  "i_exposure__payload", "book__bid_price", "book__ask_price", "book__trusted"]
        for r in REGISTERS:
            if r.access == "rw":
                inputs.append(f"regs__{r.name}")
                if r.strobe:
                    inputs.append(f"regs__{r.name}_stb")
        super().__init__(dut, "tb_risk", inputs)
        self.watch("i_stream__", order_layout)
        self.watch("o_stream__", order_layout)
        self.watch("o_reject__", reject_layout, always_ready=True)
        self.model = RiskModel()
        self.book = BookTop()

    def set_book(self, top: BookTop) -> None:
        self.book = top
        self.dut.book__bid_price.value = top.bid_price
        self.dut.book__ask_price.value = top.ask_price
        self.dut.book__trusted.value = top.trusted

    async def write(self, name: str, value: int, slot: int | None = None, session: int | None = None) -> None:
        """One register write as the bank makes it, and the same write to the model."""
        d = self.dut
        await FallingEdge(d.clk)
        if slot is not None:
            d.regs__limit_slot.value = slot
        if session is not None:
            d.regs__limit_session.value = session
        getattr(d, f"regs__{name}").value = value
        strobe = getattr(d, f"regs__{name}_stb", None) if name not in ("kill", "kill_session") else None
        if strobe is not None:
            strobe.value = 1
            await FallingEdge(d.clk)
            strobe.value = 0
        self.model.write(name, value, slot=slot, session=session)

    async def send(self, fields: dict) -> tuple[int, bool, int]:
        """Offer one order, wait for its verdict; (latency, accepted, reason), checked against the model."""
        d = self.dut
        want_ok, want_reason = self.model.order(fields, self.book)
        accepted, rejected = len(self.beats("o_stream__")), len(self.beats("o_reject__"))
        await FallingEdge(d.clk)
        d.i_stream__payload.value = pack(order_layout, fields)
        d.i_stream__valid.value = 1
        await FallingEdge(d.clk)
        d.i_stream__valid.value = 0
        for _ in range(10):
            await RisingEdge(d.clk)
        taken = self.beats("i_stream__")[-1].cycle
        out = self.beats("o_stream__")[accepted:] + self.beats("o_reject__")[rejected:]
        assert len(out) == 1, f"order {fields}: {len(out)} verdicts"
        ok = len(self.beats("o_stream__")) > accepted
        reason = 0 if ok else out[0].fields["reason"]
        assert (ok, reason) == (want_ok, int(want_reason)), \
            f"order {fields}: dut {(ok, R(reason).name)}, model {(want_ok, want_reason.name)}"
        return out[0].cycle - taken, ok, reason

    async def update(self, fields: dict) -> None:
        d = self.dut
        await FallingEdge(d.clk)
        d.i_exposure__payload.value = pack(exposure_update_layout, fields)
        d.i_exposure__valid.value = 1
        await FallingEdge(d.clk)
        d.i_exposure__valid.value = 0
        self.model.exposure(fields)
        await self.cycles(3)

    def check_counters(self) -> None:
        super().check_counters({f"risk.{n}": v for n, v in self.model.counters.items()}, "risk")


def _move(case: dict, slot: int) -> dict:
    """The case on its own slot: the per-slot memories (limits, exposure) keep their contents
    through a reset, so each case trades a slot no other case touched."""
    def fields(d):
        return {**d, "slot": slot} if d.get("slot") == SLOT else d

    def writes(ws):
        return [(n, v, slot if s == SLOT else s, ss) for n, v, s, ss in ws]

    out = dict(case)
    for key in ("ok", "bad"):
        out[key] = writes(case.get(key, []))
    for key in ("order", "order_ok", "order_bad"):
        if key in case:
            out[key] = fields(case[key])
    out["prelude"] = [(kind, fields(f)) for kind, f in case.get("prelude", [])]
    return out


async def run_case(dut, check, at_limit: bool):
    slot = 10 + 2 * list(CASES).index(check) + int(at_limit)
    case = _move(CASES[check], slot)
    reason = case.get("reason", check)
    tb = TB(dut)
    await tb.reset()
    tb.drive_ready("o_stream__")
    tb.set_book(case.get("book_ok" if at_limit else "book_bad", BOOK))
    extra = case["ok" if at_limit else "bad"]
    for write in slot_limits(slot) + session_limits() + ([] if case.get("late") else extra):
        await tb.write(*write)
    await tb.cycles(3)
    latencies = []
    for kind, fields in case["prelude"]:
        if kind == "order":
            latency, ok, _ = await tb.send(fields)
            assert ok, f"prelude order {fields} rejected"
            latencies.append(latency)
        else:
            await tb.update(fields)
    if case.get("late"):
        for write in extra:
            await tb.write(*write)
        await tb.cycles(3)
    fields = case.get("order") or case.get("order_ok" if at_limit else "order_bad") or order(slot=slot)
    latency, ok, got = await tb.send(fields)
    latencies.append(latency)
    name = check if isinstance(check, str) else check.name
    if at_limit:
        assert ok, f"{name}: at the limit the order must pass, got {R(got).name}"
    else:
        assert got == reason, f"{name}: one past the limit the reason must be {R(reason).name}, got {R(got).name}"
    assert set(latencies) == {LATENCY}, f"latencies {latencies}"
    tb.check_counters()
    tb.log.info("%s %s: %s, latency %d", name, "at limit" if at_limit else "past limit",
                "accepted" if ok else R(got).name, latency)


@cocotb.test()
@cocotb.parametrize(check=list(CASES), at_limit=[True, False])
async def boundary(dut, check, at_limit):
    """One check: the order exactly at the limit passes, one past it is rejected with the
    check's reason; DUT and model agree on every verdict and counter; latency 2."""
    await run_case(dut, check, at_limit)


@cocotb.test()
async def kill_switch_timing(dut):
    """Orders back to back; kill driven high after edge N: the verdict on edge N is an accept,
    every verdict from edge N + 1 on is KILL; cleared after edge M, accepts again from M + 1."""
    tb = TB(dut)
    await tb.reset()
    tb.drive_ready("o_stream__")
    tb.set_book(BOOK)
    for write in slot_limits(max_open_orders=1000, max_long_position=10**6) + session_limits(throttle_burst=1000):
        await tb.write(*write)
    await tb.cycles(3)
    d = dut
    start = tb.cycle
    changes = {}
    await FallingEdge(d.clk)
    for k in range(40):
        d.i_stream__payload.value = pack(order_layout, order(quantity=1, user_ref_num=k + 1))
        d.i_stream__valid.value = 1
        if k in (15, 25):
            d.regs__kill.value = int(k == 15)
            changes[tb.cycle] = int(k == 15)  # driven after this edge
        await FallingEdge(d.clk)
    d.i_stream__valid.value = 0
    await tb.cycles(10)
    taken = [b.cycle for b in tb.beats("i_stream__") if b.cycle > start]
    verdicts = sorted([(b.cycle, R.NONE) for b in tb.beats("o_stream__")]
                      + [(b.cycle, R(b.fields["reason"])) for b in tb.beats("o_reject__")])
    assert len(verdicts) == len(taken) == 40
    assert [v - t for (v, _), t in zip(verdicts, taken)] == [LATENCY] * 40
    (on, _), (off, _) = sorted(changes.items())
    for (_, reason), t in zip(verdicts, taken):
        verdict_edge = t + 1
        want = R.KILL if on < verdict_edge <= off else R.NONE
        assert reason == want, f"verdict on edge {verdict_edge} (kill set after {on}, cleared after {off}): {reason.name}"
    tb.log.info("kill set after edge %d, cleared after edge %d: verdicts from %d to %d rejected",
                on, off, on + 1, off)
