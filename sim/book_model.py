"""Reference order book, written from ITCH 5.0 and docs/pipeline-contract.md (section "book").

Nothing here is derived from the RTL: the order store is modelled as the contract describes it
(a set-associative table whose set index is the XOR fold of the order reference number), the
price levels as the contract's window of the best ``depth`` levels per side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping, NamedTuple

__all__ = ["BookModel", "Bbo", "BookEvent", "EventKind", "BOOK_COUNTERS", "set_index",
           "BOOK_MESSAGE_TYPES"]

logger = logging.getLogger(__name__)

#: ITCH 5.0 messages that change the book.
BOOK_MESSAGE_TYPES = frozenset("AFECXDU")

BOOK_COUNTERS = ("book.messages", "book.bbo_updates", "book.collisions", "book.unknown_references",
                 "book.outside_window", "book.depth_exhausted", "book.live_orders")


class EventKind(IntEnum):
    """Why the book reports to the host (``o_event.kind``)."""

    COLLISION = 1          #: an add found its set full or its reference already there: dropped
    UNKNOWN_REFERENCE = 2  #: E/C/X/D/U of a reference the book does not hold (or more shares than it has)
    OUTSIDE_WINDOW = 3     #: an order's level lies beyond the tracked levels of its side
    DEPTH_EXHAUSTED = 4    #: a side's tracked levels ran out while orders beyond the window remain


#: The events that make a symbol's book untrusted until the host clears it.
UNTRUSTING = frozenset({EventKind.COLLISION, EventKind.UNKNOWN_REFERENCE, EventKind.DEPTH_EXHAUSTED})

_COUNTER_OF = {EventKind.COLLISION: "book.collisions", EventKind.UNKNOWN_REFERENCE: "book.unknown_references",
               EventKind.OUTSIDE_WINDOW: "book.outside_window", EventKind.DEPTH_EXHAUSTED: "book.depth_exhausted"}


class Bbo(NamedTuple):
    """Top of one symbol's book after a message (0 for every field of an empty side)."""

    slot: int
    stock_locate: int
    stock: str
    timestamp: int
    sequence_number: int
    recovered: bool
    trusted: bool
    bid_price: int
    bid_shares: int
    bid_orders: int
    ask_price: int
    ask_shares: int
    ask_orders: int


class BookEvent(NamedTuple):
    kind: EventKind
    slot: int
    order_reference_number: int
    sequence_number: int


def set_index(order_reference_number: int, sets: int) -> int:
    """The order store set of a reference: the XOR of its 64 bits taken log2(sets) at a time."""
    bits = sets.bit_length() - 1
    if bits == 0:
        return 0
    index, value = 0, order_reference_number
    while value:
        index ^= value & (sets - 1)
        value >>= bits
    return index


@dataclass
class _Order:
    slot: int
    side: str
    price: int
    shares: int


@dataclass
class _Level:
    price: int
    shares: int
    orders: int


@dataclass
class _Side:
    """The tracked levels of one side, best first, and what lies beyond them."""

    buy: bool
    levels: list[_Level] = field(default_factory=list)
    untracked: int = 0        # orders beyond the window
    boundary: int = 0         # their best price (valid while untracked > 0)

    def better(self, a: int, b: int) -> bool:
        return a > b if self.buy else a < b

    def beyond(self, price: int) -> bool:
        """Whether an order at ``price`` belongs to the untracked part (at or beyond the boundary)."""
        return self.untracked > 0 and not self.better(price, self.boundary)


@dataclass
class _SlotBook:
    bid: _Side = field(default_factory=lambda: _Side(True))
    ask: _Side = field(default_factory=lambda: _Side(False))
    stock: str = ""
    trusted: bool = True

    def side(self, side: str) -> _Side:
        return self.bid if side == "B" else self.ask

    def top(self) -> tuple:
        def best(s: _Side) -> tuple[int, int, int]:
            return (s.levels[0].price, s.levels[0].shares, s.levels[0].orders) if s.levels else (0, 0, 0)
        return (self.trusted, *best(self.bid), *best(self.ask))


def _char(value: Any) -> str:
    if isinstance(value, str):
        return value[:1]
    return chr(int(value) & 0xFF) if int(value) else ""


def _stock(value: Any) -> str:
    if isinstance(value, str):
        return value
    return int(value).to_bytes(8, "little").decode("latin-1")


class BookModel:
    """Every live order of the tracked symbols, price levels per side, best bid and offer.

    Parameters
    ----------
    slots
        Tracked symbols (slot numbers 0..slots-1, given with each record).
    capacity
        Live orders the order store holds (``ways`` per set).
    ways
        Entries per set of the order store.
    depth
        Price levels tracked per side (the window).
    """

    def __init__(self, *, slots: int = 256, capacity: int = 65536, ways: int = 4, depth: int = 8) -> None:
        if capacity % ways or (capacity // ways) & (capacity // ways - 1):
            raise ValueError(f"capacity / ways must be a power of two, not {capacity!r} / {ways!r}")
        self.slots, self.capacity, self.ways, self.depth = slots, capacity, ways, depth
        self.sets = capacity // ways
        self.store: list[dict[int, _Order]] = [dict() for _ in range(self.sets)]
        self.books = [_SlotBook() for _ in range(slots)]
        self.counters: dict[str, int] = dict.fromkeys(BOOK_COUNTERS, 0)
        self.events: list[BookEvent] = []

    # -- host ---------------------------------------------------------------------------------
    def clear_untrusted(self, slot: int) -> None:
        """The host wrote ``book.clear_untrusted``: the slot's book is trusted again."""
        if 0 <= slot < self.slots:
            self.books[slot].trusted = True

    def query(self, slot: int) -> tuple[int, int, bool]:
        """What the book's query port answers for ``slot``: best bid price, best ask price, trusted."""
        book = self.books[slot]
        bid = book.bid.levels[0].price if book.bid.levels else 0
        ask = book.ask.levels[0].price if book.ask.levels else 0
        return bid, ask, book.trusted

    # -- messages -----------------------------------------------------------------------------
    def process(self, record: Mapping[str, Any], *, slot: int | None, sequence_number: int = 0,
                recovered: bool = False) -> Bbo | None:
        """Apply one decoded record; ``slot`` is its tracked slot (None: the symbol is not tracked).

        Returns the new top of book when it changed (prices, shares, orders or trust), else None.
        """
        type_ = _char(record["message_type"])
        if slot is None or type_ not in BOOK_MESSAGE_TYPES or not 0 <= slot < self.slots:
            return None
        self.counters["book.messages"] += 1
        book = self.books[slot]
        before = book.top()
        self._sequence = sequence_number
        ref = int(record["order_reference_number"])
        if type_ in "AF":
            book.stock = _stock(record["stock"])
            self._add(book, slot, ref, _char(record["buy_sell_indicator"]), int(record["price"]),
                      int(record["shares"]))
        elif type_ in "ECX":
            self._reduce(book, slot, ref, int(record["shares"]))
        elif type_ == "D":
            self._reduce(book, slot, ref, None)
        else:  # U
            order = self._find(slot, ref)
            if order is None:
                self._event(book, EventKind.UNKNOWN_REFERENCE, slot, ref)
            else:
                self._remove_order(book, ref, order, order.shares)
                self._add(book, slot, int(record["new_order_reference_number"]), order.side,
                          int(record["price"]), int(record["shares"]))
        after = book.top()
        if after == before:
            return None
        self.counters["book.bbo_updates"] += 1
        trusted, bp, bs, bo, ap, as_, ao = after
        return Bbo(slot, int(record["stock_locate"]), book.stock, int(record["timestamp"]), sequence_number,
                   bool(recovered), trusted, bp, bs, bo, ap, as_, ao)

    def _event(self, book: _SlotBook, kind: EventKind, slot: int, ref: int) -> None:
        self.counters[_COUNTER_OF[kind]] += 1
        self.events.append(BookEvent(kind, slot, ref, self._sequence))
        if kind in UNTRUSTING:
            book.trusted = False
        logger.debug("book event %s slot %d reference %d", kind.name, slot, ref)

    def _find(self, slot: int, ref: int) -> _Order | None:
        order = self.store[set_index(ref, self.sets)].get(ref)
        return order if order is not None and order.slot == slot else None

    def _add(self, book: _SlotBook, slot: int, ref: int, side: str, price: int, shares: int) -> None:
        entries = self.store[set_index(ref, self.sets)]
        if ref in entries or len(entries) >= self.ways or side not in "BS":
            self._event(book, EventKind.COLLISION, slot, ref)
            return
        entries[ref] = _Order(slot, side, price, shares)
        self.counters["book.live_orders"] += 1
        self._level_add(book, book.side(side), slot, ref, price, shares)

    def _reduce(self, book: _SlotBook, slot: int, ref: int, shares: int | None) -> None:
        order = self._find(slot, ref)
        if order is None or (shares is not None and shares > order.shares):
            self._event(book, EventKind.UNKNOWN_REFERENCE, slot, ref)
            return
        self._remove_order(book, ref, order, order.shares if shares is None else shares)

    def _remove_order(self, book: _SlotBook, ref: int, order: _Order, shares: int) -> None:
        order.shares -= shares
        leaves = order.shares == 0
        if leaves:
            del self.store[set_index(ref, self.sets)][ref]
            self.counters["book.live_orders"] -= 1
        side = book.side(order.side)
        if side.beyond(order.price):
            if leaves:
                side.untracked -= 1
        else:
            i = next(i for i, lv in enumerate(side.levels) if lv.price == order.price)
            level = side.levels[i]
            level.shares -= shares
            level.orders -= int(leaves)
            if level.orders == 0:
                del side.levels[i]
                if not side.levels and side.untracked:
                    self._event(book, EventKind.DEPTH_EXHAUSTED, order.slot, ref)

    def _level_add(self, book: _SlotBook, side: _Side, slot: int, ref: int, price: int, shares: int) -> None:
        if side.beyond(price):
            side.untracked += 1
            self._event(book, EventKind.OUTSIDE_WINDOW, slot, ref)
            return
        for level in side.levels:
            if level.price == price:
                level.shares += shares
                level.orders += 1
                return
        position = sum(1 for lv in side.levels if side.better(lv.price, price))
        if position == self.depth:          # worse than every tracked level of a full window
            side.untracked += 1
            side.boundary = price
            self._event(book, EventKind.OUTSIDE_WINDOW, slot, ref)
            return
        side.levels.insert(position, _Level(price, shares, 1))
        if len(side.levels) > self.depth:   # the worst tracked level leaves the window
            evicted = side.levels.pop()
            side.untracked += evicted.orders
            side.boundary = evicted.price
            self._event(book, EventKind.OUTSIDE_WINDOW, slot, ref)
        if side.untracked == 0:
            side.boundary = 0

    def level_view(self, slot: int) -> dict[str, list[tuple[int, int, int]]]:
        """The tracked levels of a slot, best first: ``{"bid": [(price, shares, orders)], "ask": ...}``."""
        book = self.books[slot]
        return {name: [(lv.price, lv.shares, lv.orders) for lv in s.levels]
                for name, s in (("bid", book.bid), ("ask", book.ask))}
