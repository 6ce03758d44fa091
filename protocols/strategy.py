"""Strategy trigger rule kinds, shared by the gateware, the reference model and the host config."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["RuleKind", "IMBALANCE_ONE"]

#: ``threshold`` of the imbalance rules is a ratio in units of 1/256.
IMBALANCE_ONE = 256


class RuleKind(IntEnum):
    """What a trigger rule watches in its symbol's top of book (``trigger.rule_k_kind``).

    A rule holds only on a trusted top of book that did not come from a message recovered late;
    it fires when it starts to hold (edge, not level). A buy takes the best ask (price, and at most
    its shares), a sell the best bid; a rule whose side has nothing to take does not hold.
    """

    OFF = 0
    ASK_AT_OR_BELOW = 1   #: best ask price <= threshold
    BID_AT_OR_ABOVE = 2   #: best bid price >= threshold
    SPREAD_AT_MOST = 3    #: both sides present and ask - bid <= threshold (price units)
    BID_IMBALANCE = 4     #: both sides present and bid shares * 256 >= threshold * ask shares
    ASK_IMBALANCE = 5     #: both sides present and ask shares * 256 >= threshold * bid shares
