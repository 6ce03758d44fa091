"""Reference model of the pre-trade risk gate (issue 6), clock edge by clock edge.

Written from the issue and :mod:`tickwire.protocols.risk`, not from the gateware: the same checks
in the same order with unbounded integers, then the documented bounds (saturation) applied.
Drive it as the gateware is clocked: on each edge, :meth:`RiskModel.order` for the order whose
verdict is registered on that edge, :meth:`RiskModel.exposure` for the update applied on it,
then :meth:`RiskModel.tick` (the token buckets' refill).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Mapping

from ..protocols.risk import (Action, BUY_SIDES, CHECK_ORDER, ExposureUpdateKind, RejectReason,
                              SELL_SIDES, VERDICT_COUNTERS)

__all__ = ["SlotLimits", "SlotExposure", "SessionState", "BookTop", "RiskModel"]

logger = logging.getLogger(__name__)


@dataclass
class SlotLimits:
    symbol_enabled: int = 0
    symbol_restricted: int = 0
    max_order_quantity: int = 0
    max_order_notional: int = 0
    reference_price: int = 0
    price_collar: int = 0
    max_long_position: int = 0
    max_short_position: int = 0
    max_open_orders: int = 0


@dataclass
class SlotExposure:
    position: int = 0
    open_buy_quantity: int = 0
    open_sell_quantity: int = 0
    open_orders: int = 0


@dataclass
class SessionState:
    max_open_notional: int = 0
    throttle_burst: int = 0
    throttle_interval: int = 0
    last_user_ref_num: int = 0
    open_notional: int = 0
    throttle_tokens: int = 0
    timer: int = 0


@dataclass(frozen=True)
class BookTop:
    """What the book answers for a slot (0: that side is empty)."""

    bid_price: int = 0
    ask_price: int = 0
    trusted: int = 0


SLOT_LIMIT_NAMES = tuple(f.name for f in fields(SlotLimits))
SESSION_LIMIT_NAMES = ("max_open_notional", "throttle_burst", "throttle_interval", "last_user_ref_num")


@dataclass
class RiskModel:
    """The risk gate's decisions, exposure and counters (parameters as :class:`~tickwire.hdl.risk.Risk`)."""

    slots: int = 256
    sessions: int = 4
    quantity_width: int = 32
    price_width: int = 32
    open_orders_width: int = 16
    token_width: int = 16
    counter_width: int = 32
    kill: int = 0
    kill_session: int = 0
    slot_limits: list[SlotLimits] = field(init=False)
    slot_exposure: list[SlotExposure] = field(init=False)
    session_state: list[SessionState] = field(init=False)
    counters: dict[str, int] = field(init=False)
    last_reject_reason: int = 0

    def __post_init__(self) -> None:
        self.slot_limits = [SlotLimits() for _ in range(self.slots)]
        self.slot_exposure = [SlotExposure() for _ in range(self.slots)]
        self.session_state = [SessionState() for _ in range(self.sessions)]
        self.counters = {name: 0 for name in (*VERDICT_COUNTERS.values(), "exposure_updates",
                                              "exposure_saturated", "exposure_refused")}

    # -- configuration -----------------------------------------------------------------------------

    def write(self, name: str, value: int, *, slot: int | None = None, session: int | None = None) -> None:
        """A register write as it lands: ``slot`` / ``session`` is the selected index (writes to
        an index out of range are dropped, as the gateware drops them)."""
        if name in ("kill", "kill_session"):
            setattr(self, name, value)
        elif name in SLOT_LIMIT_NAMES:
            if slot is None:
                raise ValueError(f"{name} is per slot: give slot=")
            if slot < self.slots:
                setattr(self.slot_limits[slot], name, value)
        elif name in SESSION_LIMIT_NAMES:
            if session is None:
                raise ValueError(f"{name} is per session: give session=")
            if session < self.sessions:
                state = self.session_state[session]
                setattr(state, name, value)
                if name == "throttle_burst":
                    state.throttle_tokens, state.timer = value, 0
        else:
            raise KeyError(f"no writable risk register {name!r}")

    # -- orders ------------------------------------------------------------------------------------

    def check(self, order: Mapping[str, int], book: BookTop = BookTop()) -> RejectReason:
        """The reason the order is refused (the first failing check), or ``NONE``; no state changes."""
        quantity = order["quantity"] & ((1 << self.quantity_width) - 1)
        price = order["price"] & ((1 << self.price_width) - 1)
        session, slot, side, action = order["session"], order["slot"], order["side"], order["action"]
        enter = action in (Action.ENTER, Action.REPLACE)
        take_off = action in (Action.CANCEL, Action.MODIFY)
        buy, sell = side in BUY_SIDES, side in SELL_SIDES
        failing: set[RejectReason] = set()
        if self.kill:
            failing.add(RejectReason.KILL)
        if session >= self.sessions:
            failing.add(RejectReason.UNKNOWN_SESSION)
        elif self.kill_session >> session & 1:
            failing.add(RejectReason.KILL_SESSION)
        if not (enter or take_off) or (enter and not (buy or sell)):
            failing.add(RejectReason.INVALID_ORDER)
        if slot >= self.slots:
            failing.add(RejectReason.UNKNOWN_SLOT)
        if enter and slot < self.slots and session < self.sessions:
            lim = self.slot_limits[slot]
            exp = self.slot_exposure[slot]
            st = self.session_state[session]
            notional = quantity * price
            if not lim.symbol_enabled:
                failing.add(RejectReason.SYMBOL_DISABLED)
            if lim.symbol_restricted:
                failing.add(RejectReason.SYMBOL_RESTRICTED)
            if quantity == 0:
                failing.add(RejectReason.ZERO_QUANTITY)
            if quantity > lim.max_order_quantity:
                failing.add(RejectReason.MAX_QUANTITY)
            if notional > lim.max_order_notional:
                failing.add(RejectReason.MAX_NOTIONAL)
            if lim.reference_price:
                reference = 2 * lim.reference_price
            elif book.trusted and book.bid_price and book.ask_price:
                reference = book.bid_price + book.ask_price   # twice the midpoint
            else:
                reference = None
                failing.add(RejectReason.NO_REFERENCE_PRICE)
            if reference is not None and abs(2 * price - reference) > 2 * lim.price_collar:
                failing.add(RejectReason.PRICE_COLLAR)
            if buy and exp.position + exp.open_buy_quantity + quantity > lim.max_long_position:
                failing.add(RejectReason.POSITION_LONG)
            if sell and -exp.position + exp.open_sell_quantity + quantity > lim.max_short_position:
                failing.add(RejectReason.POSITION_SHORT)
            if exp.open_orders >= lim.max_open_orders:
                failing.add(RejectReason.MAX_OPEN_ORDERS)
            if st.open_notional + notional > st.max_open_notional:
                failing.add(RejectReason.OPEN_NOTIONAL)
            if st.throttle_tokens == 0:
                failing.add(RejectReason.THROTTLE)
            if order["user_ref_num"] <= st.last_user_ref_num:
                failing.add(RejectReason.USER_REF_NUM)
        for reason in CHECK_ORDER:
            if reason in failing:
                return reason
        return RejectReason.NONE

    def order(self, order: Mapping[str, int], book: BookTop = BookTop()) -> tuple[bool, RejectReason]:
        """The verdict on ``order``: counters, and the exposure an accepted Enter/Replace books."""
        reason = self.check(order, book)
        self._count(VERDICT_COUNTERS[reason])
        if reason is not RejectReason.NONE:
            self.last_reject_reason = int(reason)
            logger.debug("risk model: rejected %s: %s", order, reason.name)
            return False, reason
        if order["action"] in (Action.ENTER, Action.REPLACE):
            quantity = order["quantity"] & ((1 << self.quantity_width) - 1)
            price = order["price"] & ((1 << self.price_width) - 1)
            exp = self.slot_exposure[order["slot"]]
            st = self.session_state[order["session"]]
            if order["side"] in BUY_SIDES:
                exp.open_buy_quantity += quantity
            else:
                exp.open_sell_quantity += quantity
            exp.open_orders += 1
            st.open_notional += quantity * price
            st.throttle_tokens -= 1
            st.last_user_ref_num = order["user_ref_num"]
        return True, RejectReason.NONE

    # -- exposure updates --------------------------------------------------------------------------

    def exposure(self, update: Mapping[str, int]) -> bool:
        """Apply an exposure update; False if refused (unknown slot, session, side or kind)."""
        slot, session, side, kind = update["slot"], update["session"], update["side"], update["kind"]
        buy, sell = side in BUY_SIDES, side in SELL_SIDES
        if slot >= self.slots or session >= self.sessions or not (buy or sell) \
                or kind not in set(ExposureUpdateKind):
            self._count("exposure_refused")
            return False
        kind = ExposureUpdateKind(kind)
        quantity = update["quantity"] & ((1 << self.quantity_width) - 1)
        price = update["price"] & ((1 << self.price_width) - 1)
        exp = self.slot_exposure[slot]
        st = self.session_state[session]
        same = "open_buy_quantity" if buy else "open_sell_quantity"
        sign = 1 if buy else -1
        exact = {"position": exp.position, same: getattr(exp, same), "open_orders": exp.open_orders,
                 "open_notional": st.open_notional}
        if kind is ExposureUpdateKind.EXECUTION:
            exact["position"] += sign * quantity
        if kind is ExposureUpdateKind.BROKEN:
            exact["position"] -= sign * quantity
        if kind in (ExposureUpdateKind.EXECUTION, ExposureUpdateKind.CANCEL, ExposureUpdateKind.REJECT):
            exact[same] -= quantity
            exact["open_notional"] -= quantity * price
        if kind in (ExposureUpdateKind.REJECT, ExposureUpdateKind.DONE):
            exact["open_orders"] -= 1
        qw = self.quantity_width
        bounds = {"position": (-(1 << qw), (1 << qw) - 1), same: (0, (1 << (qw + 1)) - 1),
                  "open_orders": (0, (1 << self.open_orders_width) - 1),
                  "open_notional": (0, (1 << (qw + self.price_width)) - 1)}
        clamped = False
        for name, value in exact.items():
            low, high = bounds[name]
            bounded = min(max(value, low), high)
            clamped |= bounded != value
            setattr(st if name == "open_notional" else exp, name, bounded)
        self._count("exposure_updates")
        if clamped:
            self._count("exposure_saturated")
        return True

    def tick(self) -> None:
        """One clock edge of the token buckets: a token every ``throttle_interval`` cycles."""
        for st in self.session_state:
            refill = st.timer + 1 >= st.throttle_interval
            st.timer = 0 if refill else st.timer + 1
            st.throttle_tokens = min(st.throttle_tokens + refill, st.throttle_burst)

    def _count(self, name: str) -> None:
        self.counters[name] = min(self.counters[name] + 1, (1 << self.counter_width) - 1)
