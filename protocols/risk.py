"""Pre-trade risk reject reason codes, shared by the gateware, the reference model and the host."""

from __future__ import annotations

from enum import IntEnum


class RejectReason(IntEnum):
    """Why the risk stage refused an order intent (``risk.last_reject_reason``).

    The checks run in this order and the first that fails gives the reason; ``NONE`` is the
    register's value before any reject.
    """

    NONE = 0
    KILL = 1           #: ``risk.kill`` is set
    ZERO_QUANTITY = 2  #: the intent's quantity is 0
    MAX_QUANTITY = 3   #: quantity > ``risk.max_order_quantity``
    MAX_NOTIONAL = 4   #: quantity * price > ``risk.max_order_notional`` (price units of 1/10000)


#: The ``risk.*`` counter register each verdict bumps.
VERDICT_COUNTERS: dict[RejectReason, str] = {
    RejectReason.NONE: "accepted",
    RejectReason.KILL: "rejected_kill",
    RejectReason.ZERO_QUANTITY: "rejected_zero_quantity",
    RejectReason.MAX_QUANTITY: "rejected_quantity",
    RejectReason.MAX_NOTIONAL: "rejected_notional",
}
