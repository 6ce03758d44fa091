"""Reference model of the open-order table (issue 6, item 2): what each accepted order and each
exchange message does to the table and which exposure updates it sends to risk.

Written from the OUCH 5.0 message meanings and the rules in :mod:`tickwire.hdl.open_orders`'s
docstring, operation by operation (not cycle by cycle): :meth:`OpenOrdersModel.accepted` for an
order action risk accepted, :meth:`OpenOrdersModel.feedback` for an exchange message, which returns
the updates in the order the gateware sends them. :func:`feedback_from_record` turns a record of the
inbound parser (:class:`tickwire.sim.ouch_model.ParserModel`) into the message the table takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

from ..hdl.open_orders import ANOMALY_COUNTERS, ORDER_STATE_DEAD, Anomaly
from ..protocols import ouch
from ..protocols.ouch import ExposureKind, ParseError
from ..protocols.risk import Action, ExposureUpdateKind

__all__ = ["OpenOrdersModel", "OpenOrder", "Execution", "feedback_from_record"]

logger = logging.getLogger(__name__)

_U32 = (1 << 32) - 1


@dataclass
class OpenOrder:
    """One booking of risk: an accepted Enter or Replace and what risk still holds open for it."""

    user_ref_num: int
    slot: int
    side: int
    price: int
    open_quantity: int


@dataclass
class Execution:
    """An execution kept for a Broken Trade: the quantity risk was told of."""

    match_number: int
    session: int
    user_ref_num: int
    slot: int
    side: int
    price: int
    quantity: int


def feedback_from_record(record: Mapping[str, int]) -> dict[str, int] | None:
    """The message :class:`~tickwire.hdl.open_orders.OpenOrders` takes for a parser record, or
    None for a record that changes no exposure (not Sequenced Data, malformed, other types)."""
    if record["error"] != ParseError.NONE or record["packet_type"] != ord("S"):
        return None
    t = chr(record["message_type"]) if record["message_type"] else ""
    if t not in ouch.EXPOSURE_KINDS:
        return None
    return {"kind": int(ouch.EXPOSURE_KINDS[t]), "session": record["session"],
            "user_ref_num": record["user_ref_num"], "orig_user_ref_num": record["orig_user_ref_num"],
            "quantity": record["quantity"], "price": min(record["price"], _U32),
            "order_state": record["order_state"], "match_number": record["match_number"]}


@dataclass
class OpenOrdersModel:
    """The table and its counters (parameters as :class:`~tickwire.hdl.open_orders.OpenOrders`)."""

    sessions: int = 4
    entries: int = 256
    executions: int = 256
    table: dict[int, OpenOrder] = field(default_factory=dict)
    kept: dict[int, Execution] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    anomalies: list[dict[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = ("inserts", "inserts_dropped", "messages", "updates", "host_updates", "host_dropped",
                 *ANOMALY_COUNTERS.values(), "execution_overwrites")
        self.counters = {name: 0 for name in names}

    # -- helpers ---------------------------------------------------------------------------------

    def address(self, session: int, user_ref_num: int) -> int:
        """The entry of an order: direct index by session and the low UserRefNum bits."""
        return session * self.entries + user_ref_num % self.entries

    @property
    def open_entries(self) -> int:
        return len(self.table)

    @property
    def last_anomaly(self) -> dict[str, int] | None:
        return self.anomalies[-1] if self.anomalies else None

    def _anomaly(self, reason: Anomaly, kind: int, session: int, user_ref_num: int, quantity: int,
                 open_quantity: int = 0) -> None:
        self.counters[ANOMALY_COUNTERS[reason]] += 1
        self.anomalies.append({"reason": int(reason), "kind": kind, "session": session,
                               "user_ref_num": user_ref_num, "quantity": quantity,
                               "open_quantity": open_quantity})
        logger.debug("open orders model: %s session %d user_ref_num %d", reason.name, session,
                     user_ref_num)

    @staticmethod
    def _update(kind: ExposureUpdateKind, session: int, user_ref_num: int, order: OpenOrder | Execution,
                quantity: int) -> dict[str, int]:
        return {"kind": int(kind), "session": session, "slot": order.slot, "side": order.side,
                "quantity": quantity, "price": order.price, "user_ref_num": user_ref_num}

    # -- inputs ----------------------------------------------------------------------------------

    def accepted(self, order: Mapping[str, int]) -> None:
        """An order action risk accepted: Enter and Replace book an entry."""
        if order["action"] not in (Action.ENTER, Action.REPLACE):
            return
        session, urn = order["session"], order["user_ref_num"]
        if session >= self.sessions:
            self._anomaly(Anomaly.UNKNOWN_SESSION, ExposureKind.NONE, session, urn, order["quantity"])
            return
        address = self.address(session, urn)
        held = self.table.get(address)
        if held is not None:
            self._anomaly(Anomaly.COLLISION, ExposureKind.NONE, session, urn, order["quantity"],
                          held.open_quantity if held.user_ref_num == urn else 0)
            return
        self.table[address] = OpenOrder(urn, order["slot"], order["side"], order["price"], order["quantity"])
        self.counters["inserts"] += 1

    def feedback(self, message: Mapping[str, int]) -> list[dict[str, int]]:
        """An exchange message: the exposure updates it makes, in the order they are sent."""
        self.counters["messages"] += 1
        kind = message["kind"]
        session, urn, quantity = message["session"], message["user_ref_num"], message["quantity"]
        dead = message["order_state"] == ORDER_STATE_DEAD
        if kind in (ExposureKind.ACCEPTED, ExposureKind.MODIFIED):
            return self._cap(kind, session, urn, quantity, dead)
        if kind == ExposureKind.REPLACED:
            return (self._remove(kind, session, message["orig_user_ref_num"], quantity)
                    + self._cap(kind, session, urn, quantity, dead))
        if kind == ExposureKind.CANCELED:
            return self._decrement(kind, session, urn, quantity, ExposureUpdateKind.CANCEL)
        if kind == ExposureKind.EXECUTED:
            return self._decrement(kind, session, urn, quantity, ExposureUpdateKind.EXECUTION,
                                   match_number=message["match_number"])
        if kind == ExposureKind.REJECTED:
            order = self._find(kind, session, urn, quantity)
            if order is None:
                return []
            del self.table[self.address(session, urn)]
            return self._sent([self._update(ExposureUpdateKind.REJECT, session, urn, order,
                                            order.open_quantity)])
        if kind == ExposureKind.BROKEN:
            return self._break(kind, session, urn, quantity, message["match_number"])
        return []

    def host(self, update: Mapping[str, int]) -> dict[str, int]:
        """A host update passes to risk as it is."""
        self.counters["host_updates"] += 1
        return dict(update)

    def clear(self) -> None:
        self.table.clear()
        self.kept.clear()

    # -- operations ------------------------------------------------------------------------------

    def _sent(self, updates: list[dict[str, int]]) -> list[dict[str, int]]:
        self.counters["updates"] += len(updates)
        return updates

    def _find(self, kind: int, session: int, urn: int, quantity: int) -> OpenOrder | None:
        if session >= self.sessions:
            self._anomaly(Anomaly.UNKNOWN_SESSION, kind, session, urn, quantity)
            return None
        order = self.table.get(self.address(session, urn))
        if order is None or order.user_ref_num != urn:
            self._anomaly(Anomaly.MISS, kind, session, urn, quantity)
            return None
        return order

    def _finish(self, session: int, urn: int, order: OpenOrder, first: dict[str, int] | None,
                new_open: int) -> list[dict[str, int]]:
        updates = [first] if first is not None else []
        order.open_quantity = new_open
        if new_open == 0:
            del self.table[self.address(session, urn)]
            updates.append(self._update(ExposureUpdateKind.DONE, session, urn, order, 0))
        return self._sent(updates)

    def _cap(self, kind, session, urn, quantity, dead) -> list[dict[str, int]]:
        """Accepted, Modified, the new order of Replaced: open := min(open, quantity) (0 if dead)."""
        order = self._find(kind, session, urn, quantity)
        if order is None:
            return []
        if quantity > order.open_quantity:
            self._anomaly(Anomaly.QUANTITY, kind, session, urn, quantity, order.open_quantity)
        new_open = 0 if dead else min(quantity, order.open_quantity)
        taken = order.open_quantity - new_open
        first = self._update(ExposureUpdateKind.CANCEL, session, urn, order, taken) if taken else None
        return self._finish(session, urn, order, first, new_open)

    def _remove(self, kind, session, urn, quantity) -> list[dict[str, int]]:
        """The original order of Replaced: its booking is taken off whole."""
        order = self._find(kind, session, urn, quantity)
        if order is None:
            return []
        first = self._update(ExposureUpdateKind.CANCEL, session, urn, order, order.open_quantity)
        return self._finish(session, urn, order, first, 0)

    def _decrement(self, kind, session, urn, quantity, update_kind, match_number=None):
        """Canceled (CANCEL) and Executed (EXECUTION): min(quantity, open) comes off."""
        order = self._find(kind, session, urn, quantity)
        if order is None:
            return []
        if quantity > order.open_quantity:
            self._anomaly(Anomaly.QUANTITY, kind, session, urn, quantity, order.open_quantity)
        taken = min(quantity, order.open_quantity)
        if match_number is not None:
            index = match_number % self.executions
            if index in self.kept:
                self.counters["execution_overwrites"] += 1
            self.kept[index] = Execution(match_number, session, urn, order.slot, order.side,
                                         order.price, taken)
        first = self._update(update_kind, session, urn, order, taken) if taken else None
        return self._finish(session, urn, order, first, order.open_quantity - taken)

    def _break(self, kind, session, urn, quantity, match_number) -> list[dict[str, int]]:
        if session >= self.sessions:
            self._anomaly(Anomaly.UNKNOWN_SESSION, kind, session, urn, quantity)
            return []
        index = match_number % self.executions
        execution = self.kept.get(index)
        if execution is None or (execution.match_number, execution.session, execution.user_ref_num) \
                != (match_number, session, urn):
            self._anomaly(Anomaly.BROKEN_MISS, kind, session, urn, quantity)
            return []
        del self.kept[index]
        return self._sent([self._update(ExposureUpdateKind.BROKEN, session, urn, execution,
                                        execution.quantity)])
