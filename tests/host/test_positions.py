"""Tests of host/positions.py: FIFO P&L, marks and open orders against a share-by-share model."""

import io
import json
from collections import deque
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from tickwire.host.journal import Journal, JournalReader, RecordType
from tickwire.host.positions import Positions, PositionsError, format_price_units, print_positions


def test_fifo_realized_pnl_by_hand():
    p = Positions()
    p.order_accepted(0, 1, "AAPL", "B", 100, 1_000_000)
    p.filled(0, 1, 100, 1_000_000)            # long 100 @ 100.0000
    p.order_accepted(0, 2, "AAPL", "B", 50, 1_100_000)
    p.filled(0, 2, 50, 1_100_000)             # long 150: lots 100 @ 100, 50 @ 110
    p.order_accepted(0, 3, "AAPL", "S", 120, 1_050_000)
    assert p.filled(0, 3, 120, 1_050_000) == 100 * 50_000 + 20 * -50_000
    book = p.book(0, "AAPL")
    assert book.position == 30
    assert list(book.lots) == [(30, 1_100_000)]
    assert book.average_cost == 1_100_000
    # Cross zero: sell 50 more closes 30 and opens a short of 20 @ 90.
    p.order_accepted(0, 4, "AAPL", "S", 50, 900_000)
    assert p.filled(0, 4, 50, 900_000) == 30 * (900_000 - 1_100_000)
    assert book.position == -20 and list(book.lots) == [(-20, 900_000)]
    assert book.realized == 100 * 50_000 - 20 * 50_000 - 30 * 200_000
    # Short marked at the ask by default, at the mid when asked.
    p.quote("AAPL", 880_000, 880_003)
    assert p.unrealized(0, "AAPL") == (900_000 - 880_003) * 20
    mid = Positions(mark="mid")
    for record in [("order_accepted", 0, 1, "X", "S", 5, 10), ("filled", 0, 1, 5, 10)]:
        getattr(mid, record[0])(*record[1:])
    mid.quote("X", 7, 10)
    assert mid.unrealized(0, "X") == (10 - 8) * 5  # mid (7 + 10) // 2 = 8


def test_open_orders_cancel_reject_replace():
    p = Positions()
    p.order_accepted(1, 10, "MSFT", "B", 300, 4_000_000)
    p.order_accepted(1, 11, "MSFT", "S", 200, 4_100_000)
    p.order_accepted(2, 10, "MSFT", "S", 100, 4_200_000)  # same user_ref_num, other session
    assert p.open_quantity("B") == 300 and p.open_quantity("S") == 300
    assert p.gross_open_notional(session=1) == 300 * 4_000_000 + 200 * 4_100_000
    p.acknowledged(1, 10, 777)
    p.filled(1, 10, 100, 4_000_000)
    p.cancelled(1, 10, 50)
    assert p.orders[(1, 10)].open_quantity == 150
    p.replaced(1, 10, 12, 120, 3_990_000, 778)
    assert (1, 10) not in p.orders
    assert p.orders[(1, 12)].open_quantity == 120 and p.orders[(1, 12)].side == "B"
    p.rejected(2, 10)
    assert p.open_quantity("S", session=2) == 0
    p.cancelled(1, 11)
    assert [o.user_ref_num for o in p.open_orders()] == [12]
    assert p.gross_open_notional() == 120 * 3_990_000
    assert p.book(1, "MSFT").position == 100


def test_events_that_do_not_fit_are_refused():
    p = Positions()
    with pytest.raises(PositionsError, match="fill for order 5 of session 0, which is not open"):
        p.filled(0, 5, 1, 1)
    p.order_accepted(0, 5, "A", "B", 10, 1)
    with pytest.raises(PositionsError, match="fill of 11 on order 5 of session 0, which has 10"):
        p.filled(0, 5, 11, 1)
    with pytest.raises(PositionsError, match="already open"):
        p.order_accepted(0, 5, "A", "B", 10, 1)
    with pytest.raises(PositionsError, match="side must be"):
        p.order_accepted(0, 6, "A", "X", 10, 1)
    with pytest.raises(PositionsError, match="quantity must be positive"):
        p.order_accepted(0, 6, "A", "B", 0, 1)
    with pytest.raises(ValueError, match="mark must be one of"):
        Positions(mark="last")


# -- against a model ------------------------------------------------------------------------------

class Model:
    """Every share is its own FIFO entry: slow, obviously right."""

    def __init__(self):
        self.shares = {}     # (session, symbol) -> deque of (+1 or -1, price)
        self.realized = {}
        self.orders = {}     # (session, urn) -> [symbol, side, open, price]
        self.bbo = {}

    def fill(self, key, quantity, price):
        symbol, side = self.orders[key][0], self.orders[key][1]
        book = (key[0], symbol)
        shares = self.shares.setdefault(book, deque())
        self.realized.setdefault(book, 0)
        sign = 1 if side == "B" else -1
        for _ in range(quantity):
            if shares and shares[0][0] != sign:
                held_sign, held_price = shares.popleft()
                self.realized[book] += (price - held_price) * held_sign
            else:
                shares.append((sign, price))
        self.orders[key][2] -= quantity
        if self.orders[key][2] == 0:
            del self.orders[key]

    def position(self, book):
        return sum(s for s, _ in self.shares.get(book, ()))

    def unrealized(self, book, mark):
        shares = self.shares.get(book, ())
        bid, ask = self.bbo.get(book[1], (None, None))
        if bid is None and ask is None:
            return None
        position = self.position(book)
        if bid is None or ask is None:
            price = ask if bid is None else bid
        elif mark == "mid":
            price = (bid + ask) // 2
        else:
            price = bid if position >= 0 else ask
        return sum((price - p) * s for s, p in shares)


SESSIONS = (0, 1)
SYMBOLS = ("AAA", "BBB")


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from(("side", "mid")))
def test_positions_match_the_model(data, mark):
    p = Positions(mark=mark)
    m = Model()
    next_urn = 1
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        action = data.draw(st.sampled_from(
            ("order", "order", "fill", "fill", "fill", "cancel", "reject", "replace", "quote")))
        open_keys = sorted(m.orders)
        if action == "order" or not open_keys and action != "quote":
            session = data.draw(st.sampled_from(SESSIONS))
            symbol = data.draw(st.sampled_from(SYMBOLS))
            side = data.draw(st.sampled_from("BS"))
            quantity = data.draw(st.integers(1, 30))
            price = data.draw(st.integers(1, 2_000_000))
            p.order_accepted(session, next_urn, symbol, side, quantity, price)
            m.orders[(session, next_urn)] = [symbol, side, quantity, price]
            next_urn += 1
        elif action == "quote":
            symbol = data.draw(st.sampled_from(SYMBOLS))
            bid = data.draw(st.none() | st.integers(1, 2_000_000))
            ask = data.draw(st.none() | st.integers(1, 2_000_000))
            p.quote(symbol, bid, ask)
            m.bbo[symbol] = (bid, ask)
        else:
            key = data.draw(st.sampled_from(open_keys))
            open_quantity = m.orders[key][2]
            if action == "fill":
                quantity = data.draw(st.integers(1, open_quantity))
                price = data.draw(st.integers(1, 2_000_000))
                p.filled(key[0], key[1], quantity, price)
                m.fill(key, quantity, price)
            elif action == "cancel":
                quantity = data.draw(st.integers(0, open_quantity))
                p.cancelled(key[0], key[1], quantity)
                m.orders[key][2] -= quantity
                if m.orders[key][2] == 0:
                    del m.orders[key]
            elif action == "reject":
                p.rejected(*key)
                del m.orders[key]
            else:
                quantity = data.draw(st.integers(0, 30))
                price = data.draw(st.integers(1, 2_000_000))
                symbol, side = m.orders.pop(key)[:2]
                p.replaced(key[0], key[1], next_urn, quantity, price)
                if quantity:
                    m.orders[(key[0], next_urn)] = [symbol, side, quantity, price]
                next_urn += 1
        _check(p, m, mark)


def _check(p, m, mark):
    for session in SESSIONS:
        for symbol in SYMBOLS:
            book = (session, symbol)
            assert p.book(session, symbol).position == m.position(book)
            assert p.book(session, symbol).realized == m.realized.get(book, 0)
            assert p.unrealized(session, symbol) == m.unrealized(book, mark)
            shares = m.shares.get(book, ())
            if shares:
                assert p.book(session, symbol).average_cost == Fraction(
                    sum(s * price for s, price in shares), m.position(book))
            for side in "BS":
                assert p.open_quantity(side, session, symbol) == sum(
                    o[2] for k, o in m.orders.items()
                    if k[0] == session and o[0] == symbol and o[1] == side)
            assert p.gross_open_notional(session, symbol) == sum(
                o[2] * o[3] for k, o in m.orders.items() if k[0] == session and o[0] == symbol)
    assert set(p.orders) == set(m.orders)


# -- rebuilt from the journal ----------------------------------------------------------------------

def test_rebuilt_from_the_journal_equals_live(tmp_path):
    live = Positions()
    with Journal(tmp_path) as journal:
        def order(session, urn, symbol, side, quantity, price):
            live.order_accepted(session, urn, symbol, side, quantity, price)
            journal.write(RecordType.ORDER, user_ref_num=urn, session=session, side=side,
                          symbol=symbol, quantity=quantity, price=price)

        def fill(session, urn, quantity, price):
            live.filled(session, urn, quantity, price)
            journal.write(RecordType.FILL, user_ref_num=urn, session=session, match_number=urn,
                          quantity=quantity, price=price, liquidity_flag="A")

        order(0, 1, "AAPL", "B", 100, 1_500_000)
        journal.write(RecordType.REJECT, user_ref_num=2, session=0, source=1, reason=3)
        journal.write(RecordType.ACK, user_ref_num=1, session=0, order_reference_number=44,
                      quantity=100, price=1_500_000)
        live.acknowledged(0, 1, 44)
        fill(0, 1, 70, 1_499_900)
        order(1, 1, "AAPL", "S", 50, 1_510_000)
        fill(1, 1, 50, 1_510_000)
        journal.write(RecordType.CANCEL, user_ref_num=1, session=0, quantity=10, reason="U")
        live.cancelled(0, 1, 10)
        journal.write(RecordType.REPLACE, user_ref_num=3, session=0, previous_user_ref_num=1,
                      quantity=25, price=1_495_000, order_reference_number=45)
        live.replaced(0, 1, 3, 25, 1_495_000, 45)
        journal.write(RecordType.BBO, symbol="AAPL", bid=1_505_000, ask=1_505_100, bid_size=1,
                      ask_size=1)
        live.quote("AAPL", 1_505_000, 1_505_100)
        journal.write(RecordType.KILL, session=0, reason="test")
    rebuilt = Positions.from_records(JournalReader(tmp_path))
    assert rebuilt.summary() == live.summary()
    assert rebuilt.summary()[0]["unrealized"] == (1_505_000 - 1_499_900) * 70
    assert rebuilt.totals("symbol")["AAPL"]["position"] == 20


def test_price_units_format_and_print():
    assert format_price_units(1_234_500) == "123.4500"
    assert format_price_units(-5) == "-0.0005"
    p = Positions()
    p.order_accepted(0, 1, "AAPL", "B", 10, 1_000_000)
    p.filled(0, 1, 10, 1_000_000)
    out = io.StringIO()
    print_positions(p, {"order": 1}, file=out)
    text = out.getvalue()
    assert "records: order 1" in text and "AAPL" in text and "100.0000" in text
    out = io.StringIO()
    print_positions(p, as_json=True, file=out)
    assert json.loads(out.getvalue())["positions"][0]["average_cost"] == "1000000"
