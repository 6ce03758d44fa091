"""The exchange simulator's matching engine (sim/matching.py) against an independent reference: a
plain list of orders matched by sorting, checked after every event (hypothesis)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.sim.matching import (MAX_PRICE, Added, Executed, IocCanceled, MatchingEngine, OrderRejected,
                                   Reduced, RejectReason, Removed, Replaced, UnknownOrder, crossed)

TICK = 100
SYMBOLS = {"AAPL": TICK, "MSFT": TICK}


@dataclass
class RefOrder:
    ref: int
    symbol: str
    buy: bool
    price: int
    quantity: int
    arrival: int


class Reference:
    """Orders in a list; matching picks the best (price, arrival) among crossing ones by sorting."""

    def __init__(self) -> None:
        self.orders: list[RefOrder] = []
        self.next_ref = 1
        self.arrival = 0
        self.fills: list[tuple[int, int, int, int]] = []   # resting ref, incoming ref, shares, price

    def _new(self, symbol: str, buy: bool, price: int, quantity: int) -> RefOrder:
        self.arrival += 1
        o = RefOrder(self.next_ref, symbol, buy, price, quantity, self.arrival)
        self.next_ref += 1
        return o

    def enter(self, symbol: str, buy: bool, price: int, quantity: int, ioc: bool) -> int:
        o = self._new(symbol, buy, price, quantity)
        self._match(o, ioc)
        return o.ref

    def _match(self, o: RefOrder, ioc: bool) -> None:
        while o.quantity:
            crossing = [r for r in self.orders if r.symbol == o.symbol and r.buy != o.buy
                        and (r.price <= o.price if o.buy else r.price >= o.price)]
            if not crossing:
                break
            best = min(crossing, key=lambda r: (r.price if o.buy else -r.price, r.arrival))
            fill = min(best.quantity, o.quantity)
            best.quantity -= fill
            o.quantity -= fill
            self.fills.append((best.ref, o.ref, fill, best.price))
            if best.quantity == 0:
                self.orders.remove(best)
        if o.quantity and not ioc:
            self.orders.append(o)

    def find(self, ref: int) -> RefOrder | None:
        return next((r for r in self.orders if r.ref == ref), None)

    def cancel(self, ref: int, leave: int) -> None:
        o = self.find(ref)
        assert o is not None
        if leave == 0:
            self.orders.remove(o)
        elif leave < o.quantity:
            o.quantity = leave

    def replace(self, ref: int, price: int, quantity: int, ioc: bool) -> int:
        old = self.find(ref)
        assert old is not None
        self.orders.remove(old)
        new = self._new(old.symbol, old.buy, price, quantity)
        self._match(new, ioc)
        return new.ref

    def book(self, symbol: str) -> tuple[list, list]:
        def side(buy: bool) -> list:
            orders = sorted((r for r in self.orders if r.symbol == symbol and r.buy == buy),
                            key=lambda r: (-r.price if buy else r.price, r.arrival))
            levels: list = []
            for r in orders:
                if not levels or levels[-1][0] != r.price:
                    levels.append((r.price, []))
                levels[-1][1].append((r.ref, r.quantity))
            return levels
        return side(True), side(False)


def check_same(engine: MatchingEngine, ref: Reference) -> None:
    for symbol in SYMBOLS:
        snap = engine.book(symbol)
        assert (snap.bids, snap.asks) == ref.book(symbol), symbol
    assert crossed(engine) == []
    assert sorted(engine.orders) == sorted(r.ref for r in ref.orders)


# An action: (kind, symbol index, buy, price ticks around 100.00, quantity, ioc, pick, leave fraction)
actions = st.lists(st.tuples(
    st.sampled_from(["enter"] * 6 + ["cancel", "modify", "replace"]),
    st.integers(0, len(SYMBOLS) - 1), st.booleans(), st.integers(-8, 8), st.integers(1, 500),
    st.booleans(), st.integers(0, 10_000), st.integers(0, 4)), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_engine_matches_reference(script):
    engine = MatchingEngine(SYMBOLS)
    ref = Reference()
    entered: dict[int, int] = {}       # order reference number -> shares it entered with
    executed: dict[int, int] = {}
    canceled: dict[int, int] = {}
    replaced_away: dict[int, int] = {}  # shares an order had when it was replaced
    fills: list = []
    names = list(SYMBOLS)
    for kind, k, buy, ticks, quantity, ioc, pick, leave in script:
        symbol = names[k]
        price = 100_0000 + ticks * TICK
        tif = "3" if ioc else "0"
        live = sorted(engine.orders)
        if kind == "enter" or not live:
            order, events = engine.enter(symbol, "B" if buy else "S", price, quantity, tif)
            assert ref.enter(symbol, buy, price, quantity, ioc) == order.order_reference_number
            entered[order.order_reference_number] = quantity
        else:
            target = live[pick % len(live)]
            open_shares = engine.orders[target].quantity
            if kind == "cancel":
                keep = open_shares * leave // 4
                events = engine.cancel(target, keep)
                ref.cancel(target, keep)
            elif kind == "modify":
                keep = open_shares * leave // 4
                events = engine.modify(target, engine.orders[target].side, keep)
                ref.cancel(target, keep)
            else:
                replaced_away[target] = open_shares
                order, events = engine.replace(target, price, quantity, tif)
                assert ref.replace(target, price, quantity, ioc) == order.order_reference_number
                entered[order.order_reference_number] = quantity
        for e in events:
            if isinstance(e, Executed):
                fills.append((e.resting.order_reference_number, e.incoming.order_reference_number,
                              e.quantity, e.price))
                executed[e.resting.order_reference_number] = executed.get(e.resting.order_reference_number, 0) + e.quantity
                executed[e.incoming.order_reference_number] = executed.get(e.incoming.order_reference_number, 0) + e.quantity
                assert e.resting.buy != e.incoming.buy
                assert (e.price <= e.incoming.price) if e.incoming.buy else (e.price >= e.incoming.price)
            elif isinstance(e, (Reduced, Removed, IocCanceled)):
                n = e.order.order_reference_number
                canceled[n] = canceled.get(n, 0) + e.quantity
        assert fills == ref.fills
        check_same(engine, ref)
        # Conservation: every order's shares are open, executed, canceled or carried into its replacement.
        for n, shares in entered.items():
            open_now = engine.orders[n].quantity if n in engine.orders else 0
            assert shares == open_now + executed.get(n, 0) + canceled.get(n, 0) + replaced_away.get(n, 0), n


def test_price_time_priority():
    engine = MatchingEngine(SYMBOLS)
    first, _ = engine.enter("AAPL", "S", 100_0100, 100)
    second, _ = engine.enter("AAPL", "S", 100_0100, 100)
    better, _ = engine.enter("AAPL", "S", 100_0000, 50)
    _, events = engine.enter("AAPL", "B", 100_0100, 200)
    fills = [(e.resting.order_reference_number, e.quantity, e.price) for e in events if isinstance(e, Executed)]
    assert fills == [(better.order_reference_number, 50, 100_0000), (first.order_reference_number, 100, 100_0100),
                     (second.order_reference_number, 50, 100_0100)]
    assert engine.book("AAPL").asks == [(100_0100, [(second.order_reference_number, 50)])]
    assert [e for e in events if isinstance(e, Added)] == []   # the buy filled completely


def test_ioc_never_rests():
    engine = MatchingEngine(SYMBOLS)
    engine.enter("AAPL", "S", 100_0000, 30)
    order, events = engine.enter("AAPL", "B", 100_0000, 100, "3")
    assert [type(e) for e in events] == [Executed, IocCanceled]
    assert events[1].quantity == 70 and not order.live
    assert engine.book("AAPL").bids == [] and engine.book("AAPL").asks == []


def test_modify_keeps_priority_replace_loses_it():
    engine = MatchingEngine(SYMBOLS)
    a, _ = engine.enter("AAPL", "B", 99_0000, 100)
    b, _ = engine.enter("AAPL", "B", 99_0000, 100)
    assert engine.modify(a.order_reference_number, "B", 60) == [Reduced(a, 40, "U")]
    assert engine.book("AAPL").bids == [(99_0000, [(a.order_reference_number, 60), (b.order_reference_number, 100)])]
    new, events = engine.replace(a.order_reference_number, 99_0000, 60)
    assert events == [Replaced(a, new)] and not a.live
    assert engine.book("AAPL").bids == [(99_0000, [(b.order_reference_number, 100), (new.order_reference_number, 60)])]
    with pytest.raises(OrderRejected) as e:
        engine.modify(b.order_reference_number, "B", 101)
    assert e.value.reason == RejectReason.INVALID_QUANTITY
    with pytest.raises(OrderRejected):
        engine.modify(b.order_reference_number, "S", 10)   # a buy cannot become a sell
    with pytest.raises(UnknownOrder):
        engine.cancel(a.order_reference_number)


def test_crossing_replace_matches():
    engine = MatchingEngine(SYMBOLS)
    ask, _ = engine.enter("AAPL", "S", 101_0000, 100)
    bid, _ = engine.enter("AAPL", "B", 99_0000, 150)
    new, events = engine.replace(bid.order_reference_number, 101_0000, 150)
    assert [type(e) for e in events] == [Removed, Executed, Added]
    assert events[0].quantity == 0 and events[2].order is new and new.quantity == 50
    assert engine.book("AAPL").bids == [(101_0000, [(new.order_reference_number, 50)])]
    assert not ask.live


@pytest.mark.parametrize("values, reason", [
    (("ZZZZ", "B", 100_0000, 100), RejectReason.INVALID_SYMBOL),
    (("AAPL", "Q", 100_0000, 100), RejectReason.INVALID_SIDE),
    (("AAPL", "B", 100_0000, 0), RejectReason.INVALID_QUANTITY),
    (("AAPL", "B", 100_0000, 1_000_000), RejectReason.SHARES_EXCEED_THRESHOLD),
    (("AAPL", "B", 0, 100), RejectReason.INVALID_PRICE),
    (("AAPL", "B", 100_0050, 100), RejectReason.INVALID_PRICE),
    (("AAPL", "B", MAX_PRICE + TICK, 100), RejectReason.INVALID_PRICE),
])
def test_rejects(values, reason):
    engine = MatchingEngine(SYMBOLS)
    with pytest.raises(OrderRejected) as e:
        engine.enter(*values)
    assert e.value.reason == reason
    assert engine.orders == {}


def test_rejects_time_in_force_and_display():
    engine = MatchingEngine(SYMBOLS)
    with pytest.raises(OrderRejected) as e:
        engine.enter("AAPL", "B", 100_0000, 100, "5")
    assert e.value.reason == RejectReason.OTHER
    with pytest.raises(OrderRejected) as e:
        engine.enter("AAPL", "B", 100_0000, 100, "0", "X")
    assert e.value.reason == RejectReason.INVALID_DISPLAY


def test_matching_rate():
    """Orders per second through the engine: alternating crossing buys and sells around a mid."""
    engine = MatchingEngine({"AAPL": TICK})
    n, fills = 50_000, 0
    start = time.perf_counter()
    for i in range(n):
        side = "B" if i % 2 else "S"
        price = 100_0000 + ((i * 7) % 11 - 5) * TICK
        _, events = engine.enter("AAPL", side, price, 100 + (i % 5) * 100)
        fills += sum(isinstance(e, Executed) for e in events)
    seconds = time.perf_counter() - start
    assert crossed(engine) == [] and fills > n // 4
    print(f"matching engine: {n / seconds:,.0f} orders/s, {fills} executions")
    assert n / seconds > 10_000
