"""Pre-trade risk reject reason codes and exposure update kinds, shared by the gateware, the
reference model and the host."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["RejectReason", "CHECK_ORDER", "VERDICT_COUNTERS", "ExposureUpdateKind", "Action",
           "BUY_SIDES", "SELL_SIDES", "REASON_BITS"]


class RejectReason(IntEnum):
    """Why the risk stage refused an order action (``risk.last_reject_reason``, reject stream).

    The checks run in the order of :data:`CHECK_ORDER` and the first that fails gives the reason;
    ``NONE`` means accepted (and is the register's value before any reject). The codes are
    stable: new checks get new numbers, whatever their place in the order.
    """

    NONE = 0
    KILL = 1                #: ``risk.kill`` is set
    ZERO_QUANTITY = 2       #: Enter/Replace with quantity 0
    MAX_QUANTITY = 3        #: quantity > the slot's ``max_order_quantity``
    MAX_NOTIONAL = 4        #: quantity * price > the slot's ``max_order_notional`` (price 1/10000)
    KILL_SESSION = 5        #: the session's bit of ``risk.kill_session`` is set
    UNKNOWN_SESSION = 6     #: session >= the stage's ``sessions``
    UNKNOWN_SLOT = 7        #: slot >= the stage's ``slots``
    INVALID_ORDER = 8       #: action not O/U/X/M, or side not B/S/T/E
    SYMBOL_DISABLED = 9     #: the slot's ``symbol_enabled`` is 0
    SYMBOL_RESTRICTED = 10  #: the slot's ``symbol_restricted`` is 1 (restricted list)
    NO_REFERENCE_PRICE = 11  #: no host reference price and no trusted two-sided book
    PRICE_COLLAR = 12       #: |price - reference| > the slot's ``price_collar``
    POSITION_LONG = 13      #: buy: position + open buy quantity + quantity > ``max_long_position``
    POSITION_SHORT = 14     #: sell: -position + open sell quantity + quantity > ``max_short_position``
    MAX_OPEN_ORDERS = 15    #: the slot already has ``max_open_orders`` open orders
    OPEN_NOTIONAL = 16      #: session open notional + this notional > ``max_open_notional``
    THROTTLE = 17           #: the session's token bucket is empty
    USER_REF_NUM = 18       #: user_ref_num <= the session's last accepted one


#: Width of a reason code in the reject stream and ``risk.last_reject_reason``.
REASON_BITS = 5

#: The checks in the order they run. Cancel and Modify actions stop after UNKNOWN_SLOT (they only
#: take risk off); Enter and Replace run them all.
CHECK_ORDER: tuple[RejectReason, ...] = (
    RejectReason.KILL, RejectReason.UNKNOWN_SESSION, RejectReason.KILL_SESSION,
    RejectReason.INVALID_ORDER, RejectReason.UNKNOWN_SLOT,
    RejectReason.SYMBOL_DISABLED, RejectReason.SYMBOL_RESTRICTED, RejectReason.ZERO_QUANTITY,
    RejectReason.MAX_QUANTITY, RejectReason.MAX_NOTIONAL, RejectReason.NO_REFERENCE_PRICE,
    RejectReason.PRICE_COLLAR, RejectReason.POSITION_LONG, RejectReason.POSITION_SHORT,
    RejectReason.MAX_OPEN_ORDERS, RejectReason.OPEN_NOTIONAL, RejectReason.THROTTLE,
    RejectReason.USER_REF_NUM,
)

#: The ``risk.*`` counter register each verdict bumps.
VERDICT_COUNTERS: dict[RejectReason, str] = {
    RejectReason.NONE: "accepted",
    RejectReason.KILL: "rejected_kill",
    RejectReason.ZERO_QUANTITY: "rejected_zero_quantity",
    RejectReason.MAX_QUANTITY: "rejected_quantity",
    RejectReason.MAX_NOTIONAL: "rejected_notional",
    RejectReason.KILL_SESSION: "rejected_kill_session",
    RejectReason.UNKNOWN_SESSION: "rejected_unknown_session",
    RejectReason.UNKNOWN_SLOT: "rejected_unknown_slot",
    RejectReason.INVALID_ORDER: "rejected_invalid_order",
    RejectReason.SYMBOL_DISABLED: "rejected_symbol_disabled",
    RejectReason.SYMBOL_RESTRICTED: "rejected_symbol_restricted",
    RejectReason.NO_REFERENCE_PRICE: "rejected_no_reference_price",
    RejectReason.PRICE_COLLAR: "rejected_price_collar",
    RejectReason.POSITION_LONG: "rejected_position_long",
    RejectReason.POSITION_SHORT: "rejected_position_short",
    RejectReason.MAX_OPEN_ORDERS: "rejected_open_orders",
    RejectReason.OPEN_NOTIONAL: "rejected_open_notional",
    RejectReason.THROTTLE: "rejected_throttle",
    RejectReason.USER_REF_NUM: "rejected_user_ref_num",
}


class Action:
    """``order_layout.action``: the OUCH 5.0 message type of the order action (ASCII)."""

    ENTER = ord("O")
    REPLACE = ord("U")
    CANCEL = ord("X")
    MODIFY = ord("M")


#: ``order_layout.side`` values (ASCII) that buy, and those that sell (sell, sell short, sell
#: short exempt).
BUY_SIDES = (ord("B"),)
SELL_SIDES = (ord("S"), ord("T"), ord("E"))


class ExposureUpdateKind(IntEnum):
    """What an exposure update (``risk.i_exposure``) does to a slot's and a session's exposure.

    ``quantity`` is shares; ``price`` is the price the open order was entered at (the open
    notional it carries is quantity * that price), not the execution price.
    """

    EXECUTION = 0  #: position += quantity (buy) / -= (sell); open same-side quantity and notional -=
    CANCEL = 1     #: open same-side quantity and session open notional -= (shares taken off)
    REJECT = 2     #: the exchange refused the order: as CANCEL, and open orders -= 1
    DONE = 3       #: the order left the book (filled or canceled out): open orders -= 1
    BROKEN = 4     #: an execution was broken: position -= quantity (buy) / += (sell)
