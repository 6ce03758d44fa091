"""Positions, FIFO P&L and open orders per session and symbol, kept from order events.

Prices are integers in price units of 1/10000 (4 implied decimals, as ITCH and OUCH carry them);
quantities are shares. Every amount is an exact integer: P&L and notional are in price units x
shares (divide by 10000 for currency units). Nothing is ever a float.

Each (session, symbol) pair is one *book*: fills are matched FIFO within it (a session is an
account), so the realized P&L of a book is that of FIFO lot matching: a fill that reduces the
position closes the oldest open lots first, each closing ``q`` shares of a lot bought at ``p``
realizing ``(fill_price - p) * q`` (long lot) or ``(p - fill_price) * q`` (short lot); a fill that
crosses zero closes everything and opens a new lot with the rest.

Unrealized P&L is ``mark * position - cost_basis`` where ``cost_basis`` is the sum of
``price * signed quantity`` over the open lots. The mark comes from the symbol's BBO:

* ``"side"`` (the default): what closing would fetch: a long position is marked at the bid, a
  short one at the ask; if that side is missing, the other side is used.
* ``"mid"``: ``(bid + ask) // 2`` (rounded down to a price unit), or the one side present.

Without a BBO a book has no unrealized P&L (``None``).

Orders: an order enters when risk accepts it (``order_accepted``), counts as open quantity on
its side until filled, cancelled or rejected; ``replace`` moves the open quantity to a new
``user_ref_num`` with a new quantity and price. Orders are keyed by (session, user_ref_num).
Gross open notional is the sum over open orders of ``open quantity * price``.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Iterator, Literal, Mapping

from .errors import TickwireError

__all__ = ["PositionsError", "Order", "Book", "Positions", "print_positions", "MARKS"]

MARKS = ("side", "mid")
Mark = Literal["side", "mid"]
#: Price units per currency unit: 4 implied decimals.
PRICE_SCALE = 10_000


class PositionsError(TickwireError):
    """An event that does not fit the orders known (unknown order, overfill, bad side)."""


@dataclass
class Order:
    """An order as the host knows it: open quantity left, whether the exchange acknowledged it."""

    session: int
    user_ref_num: int
    symbol: str
    side: str
    price: int
    quantity: int
    open_quantity: int
    acknowledged: bool = False
    order_reference_number: int | None = None
    filled_quantity: int = 0

    @property
    def open_notional(self) -> int:
        return self.open_quantity * self.price


@dataclass
class Book:
    """Position and P&L of one symbol in one session."""

    session: int
    symbol: str
    position: int = 0
    realized: int = 0
    #: Open lots, oldest first: (signed quantity, price); all have the sign of the position.
    lots: deque[tuple[int, int]] = field(default_factory=deque)
    bought: int = 0
    sold: int = 0

    @property
    def cost_basis(self) -> int:
        """Sum of ``price * signed quantity`` over the open lots (price units x shares)."""
        return sum(quantity * price for quantity, price in self.lots)

    @property
    def average_cost(self) -> Fraction | None:
        """Average price of the open lots (exact), or ``None`` when flat."""
        if self.position == 0:
            return None
        return Fraction(self.cost_basis, self.position)

    def fill(self, side: str, quantity: int, price: int) -> int:
        """Book a fill; returns the P&L it realized."""
        signed = quantity if side == "B" else -quantity
        if side == "B":
            self.bought += quantity
        else:
            self.sold += quantity
        realized = 0
        remaining = signed
        lots = self.lots
        while remaining and lots and (lots[0][0] > 0) != (remaining > 0):
            lot_quantity, lot_price = lots[0]
            closed = min(abs(lot_quantity), abs(remaining))
            direction = 1 if lot_quantity > 0 else -1
            realized += (price - lot_price) * closed * direction
            if closed == abs(lot_quantity):
                lots.popleft()
            else:
                lots[0] = (lot_quantity - closed * direction, lot_price)
            remaining += closed * direction
        if remaining:
            lots.append((remaining, price))
        self.position += signed
        self.realized += realized
        return realized

    def mark_price(self, bid: int | None, ask: int | None, mark: Mark = "side") -> int | None:
        if bid is None and ask is None:
            return None
        if bid is None or ask is None:
            return bid if ask is None else ask
        if mark == "mid":
            return (bid + ask) // 2
        return bid if self.position >= 0 else ask

    def unrealized(self, bid: int | None, ask: int | None, mark: Mark = "side") -> int | None:
        price = self.mark_price(bid, ask, mark)
        if price is None:
            return None
        return price * self.position - self.cost_basis


class Positions:
    """Books, open orders and BBOs, updated by events; rebuildable from the journal.

    Parameters
    ----------
    mark : "side" or "mid"
        How unrealized P&L is marked (see the module docstring).
    """

    def __init__(self, *, mark: Mark = "side") -> None:
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {MARKS}, not {mark!r}")
        self.mark = mark
        self.books: dict[tuple[int, str], Book] = {}
        self.orders: dict[tuple[int, int], Order] = {}
        self.bbo: dict[str, tuple[int | None, int | None]] = {}
        self.closed_orders = 0

    # -- events ---------------------------------------------------------------------------------

    def order_accepted(self, session: int, user_ref_num: int, symbol: str, side: str,
                       quantity: int, price: int) -> Order:
        """Risk accepted an order and it went to the exchange."""
        if side not in ("B", "S"):
            raise PositionsError(f"order {user_ref_num} of session {session}: side must be 'B' "
                                 f"or 'S', not {side!r}")
        if quantity <= 0:
            raise PositionsError(f"order {user_ref_num} of session {session}: quantity must be "
                                 f"positive, not {quantity}")
        key = (session, user_ref_num)
        if key in self.orders:
            raise PositionsError(f"order {user_ref_num} of session {session} is already open")
        order = Order(session, user_ref_num, symbol, side, price, quantity, quantity)
        self.orders[key] = order
        return order

    def acknowledged(self, session: int, user_ref_num: int,
                     order_reference_number: int | None = None) -> Order:
        """The exchange accepted the order."""
        order = self._order(session, user_ref_num, "ack")
        order.acknowledged = True
        order.order_reference_number = order_reference_number
        return order

    def filled(self, session: int, user_ref_num: int, quantity: int, price: int) -> int:
        """An execution of ``quantity`` at ``price``; returns the realized P&L it made."""
        order = self._order(session, user_ref_num, "fill")
        if not 0 < quantity <= order.open_quantity:
            raise PositionsError(f"fill of {quantity} on order {user_ref_num} of session "
                                 f"{session}, which has {order.open_quantity} open")
        order.open_quantity -= quantity
        order.filled_quantity += quantity
        book = self.book(session, order.symbol)
        realized = book.fill(order.side, quantity, price)
        self._close_if_done(order)
        return realized

    def cancelled(self, session: int, user_ref_num: int, quantity: int | None = None) -> Order:
        """``quantity`` (default: all open) of the order was cancelled."""
        order = self._order(session, user_ref_num, "cancel")
        if quantity is None:
            quantity = order.open_quantity
        if not 0 <= quantity <= order.open_quantity:
            raise PositionsError(f"cancel of {quantity} on order {user_ref_num} of session "
                                 f"{session}, which has {order.open_quantity} open")
        order.open_quantity -= quantity
        self._close_if_done(order)
        return order

    def rejected(self, session: int, user_ref_num: int) -> Order | None:
        """The order was rejected (by risk before it was accepted: nothing to do; or by the
        exchange): it is no longer open."""
        order = self.orders.pop((session, user_ref_num), None)
        if order is not None:
            order.open_quantity = 0
            self.closed_orders += 1
        return order

    def replaced(self, session: int, previous_user_ref_num: int, user_ref_num: int,
                 quantity: int, price: int, order_reference_number: int | None = None) -> Order:
        """The exchange replaced an order: the new one has ``quantity`` open at ``price``."""
        old = self._order(session, previous_user_ref_num, "replace")
        if quantity < 0:
            raise PositionsError(f"replace of order {previous_user_ref_num} of session "
                                 f"{session}: negative quantity {quantity}")
        if (session, user_ref_num) in self.orders and user_ref_num != previous_user_ref_num:
            raise PositionsError(f"replace of order {previous_user_ref_num} of session "
                                 f"{session}: order {user_ref_num} is already open")
        del self.orders[(session, previous_user_ref_num)]
        self.closed_orders += 1
        order = Order(session, user_ref_num, old.symbol, old.side, price, quantity, quantity,
                      acknowledged=True, order_reference_number=order_reference_number)
        if quantity:
            self.orders[(session, user_ref_num)] = order
        return order

    def quote(self, symbol: str, bid: int | None, ask: int | None) -> None:
        """The symbol's best bid and offer (``None`` or 0 for a missing side)."""
        self.bbo[symbol] = (bid or None, ask or None)

    # -- journal --------------------------------------------------------------------------------

    def apply_record(self, record: Any) -> None:
        """Apply one :class:`tickwire.host.journal.Record`; other record types are ignored."""
        from .journal import REJECT_SOURCE_EXCHANGE, RecordType
        t, f = record.type, record.fields
        if t == RecordType.ORDER:
            self.order_accepted(f["session"], f["user_ref_num"], f["symbol"], f["side"],
                                f["quantity"], f["price"])
        elif t == RecordType.ACK:
            self.acknowledged(f["session"], f["user_ref_num"], f["order_reference_number"])
        elif t == RecordType.FILL:
            self.filled(f["session"], f["user_ref_num"], f["quantity"], f["price"])
        elif t == RecordType.CANCEL:
            self.cancelled(f["session"], f["user_ref_num"], f["quantity"])
        elif t == RecordType.REJECT:
            if f["source"] == REJECT_SOURCE_EXCHANGE:
                self.rejected(f["session"], f["user_ref_num"])
        elif t == RecordType.REPLACE:
            self.replaced(f["session"], f["previous_user_ref_num"], f["user_ref_num"],
                          f["quantity"], f["price"], f["order_reference_number"])
        elif t == RecordType.BBO:
            self.quote(f["symbol"], f["bid"], f["ask"])

    @classmethod
    def from_records(cls, records: Iterable[Any], *, mark: Mark = "side") -> Positions:
        """Positions rebuilt by applying ``records`` (e.g. a :class:`JournalReader`) in order."""
        positions = cls(mark=mark)
        for record in records:
            positions.apply_record(record)
        return positions

    # -- queries --------------------------------------------------------------------------------

    def book(self, session: int, symbol: str) -> Book:
        key = (session, symbol)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = Book(session, symbol)
        return book

    def unrealized(self, session: int, symbol: str) -> int | None:
        bid, ask = self.bbo.get(symbol, (None, None))
        return self.book(session, symbol).unrealized(bid, ask, self.mark)

    def open_orders(self, session: int | None = None,
                    symbol: str | None = None) -> Iterator[Order]:
        for order in self.orders.values():
            if (session is None or order.session == session) and \
                    (symbol is None or order.symbol == symbol):
                yield order

    def open_quantity(self, side: str, session: int | None = None,
                      symbol: str | None = None) -> int:
        return sum(o.open_quantity for o in self.open_orders(session, symbol) if o.side == side)

    def gross_open_notional(self, session: int | None = None, symbol: str | None = None) -> int:
        return sum(o.open_notional for o in self.open_orders(session, symbol))

    def summary(self) -> list[dict[str, Any]]:
        """One row per book: the figures the CLI and the control socket show."""
        rows = []
        for (session, symbol), book in sorted(self.books.items()):
            rows.append(self._row(session, symbol, book))
        seen = set(self.books)
        for order in self.orders.values():  # orders in symbols without fills yet
            if (order.session, order.symbol) not in seen:
                seen.add((order.session, order.symbol))
                rows.append(self._row(order.session, order.symbol,
                                      Book(order.session, order.symbol)))
        return rows

    def _row(self, session: int, symbol: str, book: Book) -> dict[str, Any]:
        average = book.average_cost
        return {
            "session": session, "symbol": symbol, "position": book.position,
            "average_cost": None if average is None else str(average),
            "realized": book.realized, "unrealized": self.unrealized(session, symbol),
            "bought": book.bought, "sold": book.sold,
            "open_orders": sum(1 for _ in self.open_orders(session, symbol)),
            "open_buy_quantity": self.open_quantity("B", session, symbol),
            "open_sell_quantity": self.open_quantity("S", session, symbol),
            "gross_open_notional": self.gross_open_notional(session, symbol),
        }

    def totals(self, by: Literal["session", "symbol"]) -> dict[Any, dict[str, int]]:
        """Sums of position, realized and unrealized P&L per session or per symbol."""
        out: dict[Any, dict[str, int]] = {}
        for row in self.summary():
            total = out.setdefault(row[by], {"position": 0, "realized": 0, "unrealized": 0,
                                             "gross_open_notional": 0})
            total["position"] += row["position"]
            total["realized"] += row["realized"]
            total["unrealized"] += row["unrealized"] or 0
            total["gross_open_notional"] += row["gross_open_notional"]
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _order(self, session: int, user_ref_num: int, what: str) -> Order:
        order = self.orders.get((session, user_ref_num))
        if order is None:
            raise PositionsError(f"{what} for order {user_ref_num} of session {session}, which "
                                 f"is not open")
        return order

    def _close_if_done(self, order: Order) -> None:
        if order.open_quantity == 0:
            del self.orders[(order.session, order.user_ref_num)]
            self.closed_orders += 1


def format_price_units(value: int | None) -> str:
    """An integer in price units as a decimal with 4 places (``1234500`` -> ``"123.4500"``)."""
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), PRICE_SCALE)
    return f"{sign}{whole}.{fraction:04d}"


def print_positions(positions: Positions, counts: Mapping[str, int] | None = None, *,
                    as_json: bool = False, file: Any = None) -> None:
    """Print the positions (rich table on a terminal, plain text otherwise, or JSON)."""
    out = file or sys.stdout
    rows = positions.summary()
    if as_json:
        json.dump({"records": dict(counts or {}), "positions": rows,
                   "open_orders": len(positions.orders)}, out, indent=2)
        out.write("\n")
        return
    if counts:
        out.write("records: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n")
    columns = ("session", "symbol", "position", "average_cost", "realized", "unrealized",
               "open_buy_quantity", "open_sell_quantity", "gross_open_notional")
    money = {"realized", "unrealized", "gross_open_notional"}

    def cell(name: str, value: Any) -> str:
        if name in money:
            return format_price_units(value)
        if name == "average_cost" and value is not None:
            return format_price_units(round(Fraction(value)))
        return "-" if value is None else str(value)

    table = [[cell(c, row[c]) for c in columns] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        Console = None
    if Console is not None and getattr(out, "isatty", lambda: False)():
        rich_table = Table(title="positions (prices and P&L in currency units)")
        for c in columns:
            rich_table.add_column(c, justify="left" if c in ("symbol",) else "right")
        for row in table:
            rich_table.add_row(*row)
        Console(file=out).print(rich_table)
        return
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    out.write("  ".join(c.rjust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in table:
        out.write("  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip() + "\n")
