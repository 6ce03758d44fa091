"""Reference model of the open-order table (issue 6, item 2): what each accepted order and each
exchange message does to the table and which exposure updates it sends to risk.

Written from the OUCH 5.0 message meanings and the rules in :mod:`tickwire.hdl.open_orders`'s
docstring, operation by operation (not cycle by cycle): :meth:`OpenOrdersModel.accepted` for an
order action risk accepted, :meth:`OpenOrdersModel.feedback` for an exchange message, which returns
the updates in the order the gateware sends them. :func:`feedback_from_record` turns a record of the
inbound parser (:class:`tickwire.sim.ouch_model.ParserModel`) into the message the table takes.

:class:`Lifecycle` plays random order lifecycles against a well-behaved exchange (the test
generator) and keeps the truth risk must end at: :meth:`Lifecycle.expected_risk` against
:func:`risk_exposure` of a :class:`~tickwire.sim.risk_model.RiskModel` fed the updates;
:func:`outbound_message` packs a table message as the OUCH 5.0 bytes the exchange sends.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..hdl.open_orders import ANOMALY_COUNTERS, ORDER_STATE_DEAD, Anomaly
from ..protocols import ouch
from ..protocols.ouch import ExposureKind, ParseError
from ..protocols.risk import Action, BUY_SIDES, ExposureUpdateKind
from .model import order_values
from .risk_model import RiskModel

__all__ = ["OpenOrdersModel", "OpenOrder", "Execution", "feedback_from_record", "exchange_message",
           "card_order", "Lifecycle", "risk_exposure", "configured_risk", "outbound_message"]

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


# -- lifecycles ------------------------------------------------------------------------------------


def exchange_message(kind: int, session: int, user_ref_num: int, quantity: int = 0, *,
                     orig_user_ref_num: int = 0, price: int = 0, order_state: int = ord("L"),
                     match_number: int = 0) -> dict[str, int]:
    """A message as the table takes it (the fields of ``feedback_layout``)."""
    return {"kind": int(kind), "session": session, "user_ref_num": user_ref_num,
            "orig_user_ref_num": orig_user_ref_num, "quantity": quantity, "price": price,
            "order_state": order_state, "match_number": match_number}


def card_order(action: str, session: int, user_ref_num: int, slot: int, side: str, quantity: int,
               price: int, orig_user_ref_num: int = 0) -> dict[str, int]:
    """An order action risk accepted (every field of ``order_layout``)."""
    return order_values(action=ord(action), session=session, slot=slot, side=ord(side),
                        quantity=quantity, price=price, user_ref_num=user_ref_num,
                        orig_user_ref_num=orig_user_ref_num)


@dataclass
class Booking:
    """One booking of risk as the exchange sees it: ``open`` is the quantity the exchange holds
    open, or the order's quantity while the exchange has not answered (``pending``)."""

    slot: int
    side: int
    price: int
    open: int
    pending: bool
    replace_of: tuple[int, int] | None = None


class Lifecycle:
    """Random lifecycles of the card's orders against a well-behaved exchange.

    :meth:`step` turns one (action, parameter) pair into events: ``("accept", order)`` (an Enter
    or Replace risk accepted) or ``("message", message)`` (what the exchange answers). Actions:
    0 enter; 1 answer a pending Enter (accepted, accepted smaller, accepted dead, rejected) or
    Replace (replaced, replaced smaller, replaced dead, rejected; rejected when the original is
    gone); 2 and 7 execute part or all of a live order; 3 cancel part or all; 4 modify down;
    5 replace a live order; 6 break an execution; 8 (``chaos`` only) something that does not fit
    the table (unknown order or session, duplicate, quantities above the open one, dead orders).
    The truth (bookings, position) is kept for well-formed lifecycles (``chaos`` False).
    """

    def __init__(self, sessions: int, slots: int = 8, *, chaos: bool = False):
        self.sessions, self.slots, self.chaos = sessions, slots, chaos
        self.next_urn = [1] * sessions
        self.bookings: dict[tuple[int, int], Booking] = {}
        self.executions: list[tuple[int, tuple[int, int], int, int]] = []  # match, key, slot, signed
        self.position: dict[int, int] = defaultdict(int)
        self.match = 5000
        self.events: list[tuple[str, dict[str, int]]] = []

    def _urn(self, session: int, param: int) -> int:
        urn = self.next_urn[session]
        self.next_urn[session] += 1 + (param % 3 if self.chaos else 0)
        return urn

    def _message(self, *args, **kwargs) -> None:
        self.events.append(("message", exchange_message(*args, **kwargs)))

    def step(self, action: int, param: int) -> None:
        rng = random.Random(param)
        live = sorted(k for k, b in self.bookings.items() if not b.pending)
        pending = sorted(k for k, b in self.bookings.items() if b.pending)
        if action == 0 or not self.bookings:
            s = rng.randrange(self.sessions)
            urn = self._urn(s, param)
            b = Booking(rng.randrange(self.slots), ord(rng.choice("BST")), rng.randrange(1, 5000),
                        rng.randrange(1, 500), True)
            self.bookings[(s, urn)] = b
            self.events.append(("accept", card_order("O", s, urn, b.slot, chr(b.side), b.open, b.price)))
        elif action == 1 and pending:
            self._answer(pending[param % len(pending)], rng.randrange(8), rng)
        elif action in (2, 7) and live:
            key = live[param % len(live)]
            b = self.bookings[key]
            x = b.open if rng.random() < 0.3 else rng.randrange(1, b.open + 1)
            self.match += 1 + rng.randrange(3)
            signed = x if b.side in BUY_SIDES else -x
            self.position[b.slot] += signed
            self.executions.append((self.match, key, b.slot, signed))
            self._message(ExposureKind.EXECUTED, *key, x, price=rng.randrange(1, 5000),
                          match_number=self.match)
            self._take(key, x)
        elif action == 3 and live:
            key = live[param % len(live)]
            b = self.bookings[key]
            d = b.open if rng.random() < 0.5 else rng.randrange(1, b.open + 1)
            self._message(ExposureKind.CANCELED, *key, d)
            self._take(key, d)
        elif action == 4 and live:
            key = live[param % len(live)]
            b = self.bookings[key]
            b.open = rng.randrange(1, b.open + 1)
            self._message(ExposureKind.MODIFIED, *key, b.open)
        elif action == 5 and live:
            key = live[param % len(live)]
            if any(o.replace_of == key for o in self.bookings.values()):
                return
            old = self.bookings[key]
            urn = self._urn(key[0], param)
            b = Booking(old.slot, old.side, rng.randrange(1, 5000), rng.randrange(1, 500), True, key)
            self.bookings[(key[0], urn)] = b
            self.events.append(("accept", card_order("U", key[0], urn, b.slot, chr(b.side), b.open,
                                                     b.price, orig_user_ref_num=key[1])))
        elif action == 6 and self.executions:
            match, key, slot, signed = self.executions.pop(param % len(self.executions))
            self.position[slot] -= signed
            self._message(ExposureKind.BROKEN, *key, match_number=match)
        elif action == 8 and self.chaos:
            self._chaos(rng)

    def _take(self, key: tuple[int, int], quantity: int) -> None:
        b = self.bookings[key]
        b.open -= quantity
        if b.open == 0:
            del self.bookings[key]

    def _answer(self, key: tuple[int, int], r: int, rng: random.Random) -> None:
        b = self.bookings[key]
        q = rng.randrange(1, b.open + 1) if r == 2 else b.open
        if b.replace_of is None:
            if r == 0:
                self._message(ExposureKind.REJECTED, *key)
                del self.bookings[key]
            elif r == 1:
                self._message(ExposureKind.ACCEPTED, *key, b.open, price=b.price,
                              order_state=ORDER_STATE_DEAD)
                del self.bookings[key]
            else:
                self._message(ExposureKind.ACCEPTED, *key, q, price=b.price)
                b.open, b.pending = q, False
            return
        orig = b.replace_of
        if r == 0 or orig not in self.bookings:
            self._message(ExposureKind.REJECTED, *key)
            del self.bookings[key]
            return
        dead = r == 1
        self._message(ExposureKind.REPLACED, *key, q, orig_user_ref_num=orig[1], price=b.price,
                      order_state=ORDER_STATE_DEAD if dead else ord("L"))
        del self.bookings[orig]
        if dead:
            del self.bookings[key]
        else:
            b.open, b.pending = q, False

    def _chaos(self, rng: random.Random) -> None:
        s = rng.randrange(self.sessions + 1)
        urn = rng.randrange(1, max(self.next_urn) + 8)
        if rng.randrange(3) == 0:
            self.events.append(("accept", card_order(rng.choice("OUXM"), s, urn, rng.randrange(self.slots),
                                                     rng.choice("BS"), rng.randrange(1, 500),
                                                     rng.randrange(1, 5000))))
        else:
            self._message(rng.choice(list(ExposureKind)), s, urn, rng.randrange(0, 600),
                          orig_user_ref_num=rng.randrange(1, urn + 2),
                          order_state=rng.choice([ord("L"), ORDER_STATE_DEAD]),
                          match_number=self.match - rng.randrange(10))

    def expected_risk(self) -> dict[str, Any]:
        """Risk's exposure recomputed from the truth: per slot position, open buy and sell
        quantity, open orders; per session open notional (quantity x the booked price)."""
        slots = {}
        for slot in range(self.slots):
            mine = [b for b in self.bookings.values() if b.slot == slot]
            slots[slot] = (self.position[slot],
                           sum(b.open for b in mine if b.side in BUY_SIDES),
                           sum(b.open for b in mine if b.side not in BUY_SIDES), len(mine))
        notional = {s: sum(b.open * b.price for (bs, _), b in self.bookings.items() if bs == s)
                    for s in range(self.sessions)}
        return {"slots": slots, "open_notional": notional}


def risk_exposure(risk: RiskModel, slots: int, sessions: int) -> dict[str, Any]:
    """The same figures as :meth:`Lifecycle.expected_risk`, read from a risk model."""
    return {"slots": {slot: (e.position, e.open_buy_quantity, e.open_sell_quantity, e.open_orders)
                      for slot, e in enumerate(risk.slot_exposure[:slots])},
            "open_notional": {s: risk.session_state[s].open_notional for s in range(sessions)}}


def configured_risk(slots: int, sessions: int) -> RiskModel:
    """A risk model whose limits are far above any lifecycle's orders (every order accepted)."""
    risk = RiskModel(slots=slots, sessions=sessions)
    for slot in range(slots):
        for name, value in (("symbol_enabled", 1), ("max_order_quantity", 10**6),
                            ("max_order_notional", 10**12), ("reference_price", 2500),
                            ("price_collar", 10**6), ("max_long_position", 10**7),
                            ("max_short_position", 10**7), ("max_open_orders", 1000)):
            risk.write(name, value, slot=slot)
    for session in range(sessions):
        risk.write("max_open_notional", 10**14, session=session)
        risk.write("throttle_burst", 0xFFFF, session=session)
    return risk


def outbound_message(message: Mapping[str, int], rng: random.Random) -> bytes:
    """The OUCH 5.0 outbound message (bytes) the exchange sends for a table message; fields the
    table does not read are random. Canceled is Order Canceled or AIQ Canceled at random."""
    kind = ExposureKind(message["kind"])
    types = {ExposureKind.ACCEPTED: "A", ExposureKind.REPLACED: "U", ExposureKind.EXECUTED: "E",
             ExposureKind.REJECTED: "J", ExposureKind.BROKEN: "B", ExposureKind.MODIFIED: "M",
             ExposureKind.CANCELED: rng.choice("CD")}
    if kind not in types:
        raise ValueError(f"no OUCH message for exposure kind {kind!r}")
    t = types[kind]
    m = ouch.OUTBOUND[t]
    given = {"user_ref_num": message["user_ref_num"], "orig_user_ref_num": message["orig_user_ref_num"],
             "quantity": message["quantity"], "decrement_shares": message["quantity"],
             "price": message["price"], "execution_price": message["price"],
             "order_state": bytes([message["order_state"]]), "match_number": message["match_number"]}
    values: dict[str, Any] = {}
    for f in m.fields:
        if f.name in ("message_type", "appendage_length"):
            continue
        if f.name in given:
            values[f.name] = given[f.name]
        elif f.name == "side":
            values[f.name] = rng.choice("BS")
        elif f.type == "alpha":
            values[f.name] = bytes(rng.choice(b"ABCLNY ") for _ in range(f.width))
        else:
            values[f.name] = rng.randrange(1 << min(8 * f.width, 40))
    return ouch.pack_message(ouch.OUTBOUND, t, **values)
