"""Price-time priority matching engine of the exchange simulator: books, orders, events; no I/O."""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Iterable, Mapping, NamedTuple

from tickwire.protocols.ouch import MAX_QUANTITY

__all__ = ["MatchingEngine", "Order", "RejectReason", "OrderRejected", "UnknownOrder", "BookSnapshot",
           "Added", "Executed", "Reduced", "Removed", "Replaced", "IocCanceled", "Event",
           "MAX_PRICE", "BUY_SIDES", "SELL_SIDES", "CANCEL_USER", "CANCEL_IOC"]

logger = logging.getLogger(__name__)

#: Highest limit price the engine accepts (1/10000 dollar): it must fit ITCH's 4-byte price.
MAX_PRICE = 200_000_0000
BUY_SIDES = frozenset("B")
#: Sell, sell short, sell short exempt: all rest on the sell side of the book.
SELL_SIDES = frozenset("STE")
TIME_IN_FORCE_DAY = "0"
TIME_IN_FORCE_IOC = "3"
DISPLAYS = frozenset("YNA")
#: OUCH 5.0 Order Canceled reasons the engine gives.
CANCEL_USER = "U"   #: user requested (Cancel Order, Modify Order to 0)
CANCEL_IOC = "I"    #: immediate or cancel: the part that did not execute at once


class RejectReason(IntEnum):
    """OUCH 5.0 Order Rejected reason codes (specification appendix, 2-byte numbers) the exchange
    simulator sends. Kept here until protocols/ouch.py carries the table."""

    QUOTE_UNAVAILABLE = 0x0001
    DESTINATION_CLOSED = 0x0002
    INVALID_DISPLAY = 0x0003
    INVALID_MAX_FLOOR = 0x0004
    INVALID_PEG_TYPE = 0x0005
    FAT_FINGER = 0x0006
    HALTED = 0x0007
    ISO_NOT_ALLOWED = 0x0008
    INVALID_SIDE = 0x0009
    PROCESSING_ERROR = 0x000A
    CANCEL_PENDING = 0x000B
    FIRM_NOT_AUTHORIZED = 0x000C
    INVALID_MIN_QUANTITY = 0x000D
    NO_CLOSING_REFERENCE_PRICE = 0x000E
    OTHER = 0x000F
    CANCEL_NOT_ALLOWED = 0x0010
    PEGGING_NOT_ALLOWED = 0x0011
    CROSSED_MARKET = 0x0012
    INVALID_QUANTITY = 0x0013
    INVALID_CROSS_ORDER = 0x0014
    REPLACE_NOT_ALLOWED = 0x0015
    ROUTING_NOT_ALLOWED = 0x0016
    INVALID_SYMBOL = 0x0017
    TEST = 0x0018
    LATE_LOC_TOO_AGGRESSIVE = 0x0019
    RETAIL_NOT_ALLOWED = 0x001A
    INVALID_MIDPOINT_POST_ONLY_PRICE = 0x001B
    INVALID_DESTINATION = 0x001C
    INVALID_PRICE = 0x001D
    SHARES_EXCEED_THRESHOLD = 0x001E
    EXCEEDS_MAXIMUM_NOTIONAL_VALUE = 0x001F


class OrderRejected(ValueError):
    """An order the engine refuses; ``reason`` is the OUCH reject code."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownOrder(KeyError):
    """No live order has this order reference number (never existed, filled or canceled)."""


@dataclass(eq=False)
class Order:
    """One order. ``quantity`` is the open (leaves) quantity; ``owner`` is the caller's tag (the
    exchange keeps the account and UserRefNum there, None for seeded liquidity)."""

    order_reference_number: int
    symbol: str
    side: str
    price: int
    quantity: int
    time_in_force: str = TIME_IN_FORCE_DAY
    display: str = "Y"
    owner: Any = None
    arrival: int = 0
    live: bool = False
    executed: int = 0

    @property
    def buy(self) -> bool:
        return self.side in BUY_SIDES

    @property
    def book_side(self) -> str:
        return "B" if self.buy else "S"


# -- events: what changed, in order; the exchange turns them into OUCH and ITCH ------------------

class Added(NamedTuple):
    """``order`` now rests on the book (with ``order.quantity`` shares)."""
    order: Order


class Executed(NamedTuple):
    """``quantity`` shares of ``resting`` (on the book) traded with ``incoming`` at ``price``."""
    resting: Order
    incoming: Order
    quantity: int
    price: int
    match_number: int


class Reduced(NamedTuple):
    """``quantity`` shares taken off ``order``, which stays on the book with its priority."""
    order: Order
    quantity: int
    reason: str


class Removed(NamedTuple):
    """``order`` left the book; ``quantity`` shares were canceled (0 for the old order of a
    replace, which lives on as the new one)."""
    order: Order
    quantity: int
    reason: str


class Replaced(NamedTuple):
    """``old`` became ``new`` in place on the book (did not cross; priority lost)."""
    old: Order
    new: Order


class IocCanceled(NamedTuple):
    """The ``quantity`` shares of an IOC order that did not execute at once (never on the book)."""
    order: Order
    quantity: int


Event = Added | Executed | Reduced | Removed | Replaced | IocCanceled


class BookSnapshot(NamedTuple):
    """A symbol's book, best level first: ``[(price, [(order_reference_number, shares), ...])]``,
    orders in time priority."""
    symbol: str
    bids: list[tuple[int, list[tuple[int, int]]]]
    asks: list[tuple[int, list[tuple[int, int]]]]

    def levels(self, side: str) -> list[tuple[int, int, int]]:
        """``[(price, shares, orders)]`` of ``side`` (``"B"`` or ``"S"``), best first."""
        rows = self.bids if side == "B" else self.asks
        return [(price, sum(q for _, q in orders), len(orders)) for price, orders in rows]


@dataclass
class _Side:
    """One side of a book: a FIFO of orders per price, prices kept sorted ascending."""
    buy: bool
    levels: dict[int, deque[Order]] = field(default_factory=dict)
    prices: list[int] = field(default_factory=list)

    def best(self) -> int | None:
        if not self.prices:
            return None
        return self.prices[-1] if self.buy else self.prices[0]

    def add(self, order: Order) -> None:
        level = self.levels.get(order.price)
        if level is None:
            level = self.levels[order.price] = deque()
            bisect.insort(self.prices, order.price)
        level.append(order)

    def remove(self, order: Order) -> None:
        level = self.levels[order.price]
        level.remove(order)
        if not level:
            self._drop(order.price)

    def _drop(self, price: int) -> None:
        del self.levels[price]
        del self.prices[bisect.bisect_left(self.prices, price)]

    def ordered_prices(self) -> list[int]:
        return self.prices[::-1] if self.buy else list(self.prices)


@dataclass
class _Book:
    symbol: str
    tick_size: int
    bid: _Side = field(default_factory=lambda: _Side(True))
    ask: _Side = field(default_factory=lambda: _Side(False))

    def side(self, book_side: str) -> _Side:
        return self.bid if book_side == "B" else self.ask


class MatchingEngine:
    """Limit order books for a fixed set of symbols, matched in price-time priority.

    Parameters
    ----------
    symbols
        Symbol -> tick size (1/10000 dollar); limit prices must be multiples of it.

    Order reference numbers and match numbers count up from 1 across all symbols. Every
    operation returns the events it caused, in order; the books change only through them.
    """

    def __init__(self, symbols: Mapping[str, int]) -> None:
        if not symbols:
            raise ValueError("the matching engine needs at least one symbol")
        for symbol, tick in symbols.items():
            if not isinstance(tick, int) or tick < 1:
                raise ValueError(f"symbol {symbol!r}: tick size must be a positive integer, not {tick!r}")
        self._books = {s: _Book(s, tick) for s, tick in symbols.items()}
        self.orders: dict[int, Order] = {}
        self._next_reference = 1
        self._next_match = 1
        self._arrival = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._books)

    # -- validation ----------------------------------------------------------------------------
    def check(self, symbol: str, side: str, price: int, quantity: int, time_in_force: str = "0",
              display: str = "Y") -> None:
        """Raise :class:`OrderRejected` when an order with these values cannot be entered."""
        book = self._books.get(symbol)
        if book is None:
            raise OrderRejected(RejectReason.INVALID_SYMBOL, f"unknown symbol {symbol!r}")
        if side not in BUY_SIDES and side not in SELL_SIDES:
            raise OrderRejected(RejectReason.INVALID_SIDE, f"side must be B, S, T or E, not {side!r}")
        self._check_quantity(quantity)
        self._check_price(book, price)
        if time_in_force not in (TIME_IN_FORCE_DAY, TIME_IN_FORCE_IOC):
            raise OrderRejected(RejectReason.OTHER, f"time in force must be '0' (day) or '3' (IOC), "
                                                    f"not {time_in_force!r}")
        if display not in DISPLAYS:
            raise OrderRejected(RejectReason.INVALID_DISPLAY, f"display must be Y, N or A, not {display!r}")

    @staticmethod
    def _check_quantity(quantity: int) -> None:
        if quantity < 1:
            raise OrderRejected(RejectReason.INVALID_QUANTITY, f"quantity must be at least 1, not {quantity}")
        if quantity > MAX_QUANTITY:
            raise OrderRejected(RejectReason.SHARES_EXCEED_THRESHOLD,
                                f"quantity {quantity} is above {MAX_QUANTITY}")

    @staticmethod
    def _check_price(book: _Book, price: int) -> None:
        if not 0 < price <= MAX_PRICE:
            raise OrderRejected(RejectReason.INVALID_PRICE, f"price {price} is outside 1..{MAX_PRICE}")
        if price % book.tick_size:
            raise OrderRejected(RejectReason.INVALID_PRICE,
                                f"price {price} is not a multiple of the tick size {book.tick_size}")

    # -- operations ----------------------------------------------------------------------------
    def enter(self, symbol: str, side: str, price: int, quantity: int, time_in_force: str = "0",
              display: str = "Y", owner: Any = None) -> tuple[Order, list[Event]]:
        """A new limit order: matched against the other side, the rest rests (day) or is
        canceled (IOC). Raises :class:`OrderRejected` for bad values."""
        self.check(symbol, side, price, quantity, time_in_force, display)
        order = self._new_order(symbol, side, price, quantity, time_in_force, display, owner)
        events: list[Event] = []
        self._match_and_rest(self._books[symbol], order, events)
        return order, events

    def cancel(self, order_reference_number: int, leave: int = 0, reason: str = CANCEL_USER) -> list[Event]:
        """Reduce the order to ``leave`` open shares (0: cancel it). Nothing happens when it has
        ``leave`` or fewer already. Raises :class:`UnknownOrder` when it is not live."""
        order = self._live(order_reference_number)
        if leave < 0:
            raise ValueError(f"shares to leave must not be negative, not {leave}")
        if leave >= order.quantity:
            return []
        decrement = order.quantity - leave
        if leave == 0:
            self._take_off(order)
            return [Removed(order, decrement, reason)]
        order.quantity = leave
        return [Reduced(order, decrement, reason)]

    def modify(self, order_reference_number: int, side: str, quantity: int) -> list[Event]:
        """OUCH Modify Order: change the side within sell / sell short / sell short exempt
        (or keep buy), reduce the open quantity, keep priority; quantity 0 cancels."""
        order = self._live(order_reference_number)
        if (side in BUY_SIDES) != order.buy or (side not in BUY_SIDES and side not in SELL_SIDES):
            raise OrderRejected(RejectReason.INVALID_SIDE,
                                f"order {order_reference_number}: side {order.side!r} cannot become {side!r}")
        if quantity > order.quantity:
            raise OrderRejected(RejectReason.INVALID_QUANTITY,
                                f"order {order_reference_number}: modify can only reduce the "
                                f"{order.quantity} open shares, not raise them to {quantity}")
        order.side = side
        return self.cancel(order_reference_number, quantity)

    def replace(self, order_reference_number: int, price: int, quantity: int, time_in_force: str = "0",
                display: str = "Y", owner: Any = None) -> tuple[Order, list[Event]]:
        """OUCH Replace Order: the order gets a new reference number, price and open quantity and
        loses its priority; a crossing price matches at once. Raises :class:`UnknownOrder` when
        the original is not live, :class:`OrderRejected` for bad new values."""
        old = self._live(order_reference_number)
        book = self._books[old.symbol]
        self.check(old.symbol, old.side, price, quantity, time_in_force, display)
        self._take_off(old)
        new = self._new_order(old.symbol, old.side, price, quantity, time_in_force, display,
                              old.owner if owner is None else owner)
        opposite = book.side("S" if new.buy else "B")
        best = opposite.best()
        crosses = best is not None and (price >= best if new.buy else price <= best)
        if not crosses and old.display == display and time_in_force == TIME_IN_FORCE_DAY:
            new.live = True
            book.side(new.book_side).add(new)
            self.orders[new.order_reference_number] = new
            return new, [Replaced(old, new)]
        events: list[Event] = [Removed(old, 0, CANCEL_USER)]
        self._match_and_rest(book, new, events)
        return new, events

    # -- views ---------------------------------------------------------------------------------
    def book(self, symbol: str) -> BookSnapshot:
        b = self._books[symbol]

        def rows(side: _Side) -> list[tuple[int, list[tuple[int, int]]]]:
            return [(p, [(o.order_reference_number, o.quantity) for o in side.levels[p]])
                    for p in side.ordered_prices()]
        return BookSnapshot(symbol, rows(b.bid), rows(b.ask))

    def best(self, symbol: str) -> tuple[int | None, int | None]:
        """Best bid and best ask price (None for an empty side)."""
        b = self._books[symbol]
        return b.bid.best(), b.ask.best()

    def tick_size(self, symbol: str) -> int:
        return self._books[symbol].tick_size

    # -- internals -----------------------------------------------------------------------------
    def _live(self, order_reference_number: int) -> Order:
        order = self.orders.get(order_reference_number)
        if order is None:
            raise UnknownOrder(order_reference_number)
        return order

    def _new_order(self, symbol: str, side: str, price: int, quantity: int, time_in_force: str,
                   display: str, owner: Any) -> Order:
        self._arrival += 1
        order = Order(self._next_reference, symbol, side, price, quantity, time_in_force, display,
                      owner, self._arrival)
        self._next_reference += 1
        return order

    def _take_off(self, order: Order) -> None:
        self._books[order.symbol].side(order.book_side).remove(order)
        del self.orders[order.order_reference_number]
        order.live = False

    def _match_and_rest(self, book: _Book, order: Order, events: list[Event]) -> None:
        opposite = book.ask if order.buy else book.bid
        while order.quantity:
            best = opposite.best()
            if best is None or (best > order.price if order.buy else best < order.price):
                break
            level = opposite.levels[best]
            while level and order.quantity:
                resting = level[0]
                fill = min(order.quantity, resting.quantity)
                resting.quantity -= fill
                order.quantity -= fill
                resting.executed += fill
                order.executed += fill
                events.append(Executed(resting, order, fill, best, self._next_match))
                self._next_match += 1
                if resting.quantity == 0:
                    level.popleft()
                    del self.orders[resting.order_reference_number]
                    resting.live = False
            if not level:
                opposite._drop(best)
        if not order.quantity:
            return
        if order.time_in_force == TIME_IN_FORCE_IOC:
            events.append(IocCanceled(order, order.quantity))
            order.quantity = 0
            return
        order.live = True
        book.side(order.book_side).add(order)
        self.orders[order.order_reference_number] = order
        events.append(Added(order))


def crossed(engine: MatchingEngine, symbols: Iterable[str] | None = None) -> list[str]:
    """Symbols whose best bid is at or above their best ask (an engine bug if any)."""
    out = []
    for s in engine.symbols if symbols is None else symbols:
        bid, ask = engine.best(s)
        if bid is not None and ask is not None and bid >= ask:
            out.append(s)
    return out
