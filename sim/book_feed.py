"""A synthetic trading day shaped like a real order book, as raw ITCH 5.0 messages.

Each symbol's mid price walks a tick at a time; resting orders join a few ticks behind it (bids
below, asks above), so the book stays uncrossed; executions take the oldest order at the best
price (price-time priority, as the exchange would match); cancels, deletes and replaces hit any
live order; the live orders per symbol hover around a target, so a day of any length keeps a
book of realistic depth and the top of book changes all the time. Deterministic for a seed.
Used for the order book's long tests and benchmarks (tests/sim/test_book_replay.py).
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Iterator

from tickwire.protocols import itch

from .itchfile import write_raw_itch

__all__ = ["book_day", "write_book_day", "BOOK_SYMBOLS"]

#: Symbols and their opening mid prices (4 implied decimals).
BOOK_SYMBOLS = {"AAPL": 189_5000, "MSFT": 415_2000, "NVDA": 131_4000, "AMZN": 186_9000,
                "META": 563_1000, "TSLA": 341_0000, "QQQ": 505_5000, "SPY": 597_3000}
TICK = 100
MARKET_OPEN_NS = 34_200_000_000_000


def book_day(messages: int, *, seed: int = 1, symbols: int = 8, live_per_symbol: int = 400) -> Iterator[bytes]:
    """``messages`` ITCH messages: system events, a Stock Directory message per symbol, then the
    order flow."""
    if not 1 <= symbols <= len(BOOK_SYMBOLS):
        raise ValueError(f"symbols must be 1..{len(BOOK_SYMBOLS)}, not {symbols!r}")
    rng = random.Random(seed)
    names = list(BOOK_SYMBOLS)[:symbols]
    mid = {s: BOOK_SYMBOLS[s] for s in names}
    locate = {s: k + 1 for k, s in enumerate(names)}
    # Per symbol and side: price -> FIFO of order references; and every live order.
    levels: dict[tuple[str, str], dict[int, deque]] = {(s, side): {} for s in names for side in "BS"}
    live: dict[int, list] = {}        # ref -> [stock, side, price, shares]
    # Per symbol, its live references in a list with each one's index (O(1) random pick/removal).
    refs: dict[str, list[int]] = {s: [] for s in names}
    where: dict[int, int] = {}

    def track(stock: str, ref: int) -> None:
        where[ref] = len(refs[stock])
        refs[stock].append(ref)

    def untrack(stock: str, ref: int) -> None:
        lst, k = refs[stock], where.pop(ref)
        last = lst.pop()
        if last != ref:
            lst[k] = last
            where[last] = k
    next_ref, match = 1, 1
    ts = MARKET_OPEN_NS
    count = 0

    def emit(message: bytes) -> bool:
        nonlocal count
        count += 1
        return count <= messages

    def header(stock: str) -> dict:
        return {"stock_locate": locate[stock], "tracking_number": 0, "timestamp": ts}

    def remove(ref: int, shares: int) -> None:
        stock, side, price, left = live[ref]
        if shares >= left:
            del live[ref]
            untrack(stock, ref)
            queue = levels[(stock, side)][price]
            queue.remove(ref)
            if not queue:
                del levels[(stock, side)][price]
        else:
            live[ref][3] = left - shares

    def best(stock: str, side: str) -> int | None:
        book = levels[(stock, side)]
        if not book:
            return None
        return max(book) if side == "B" else min(book)

    if not emit(itch.pack("S", stock_locate=0, tracking_number=0, timestamp=ts, event_code="O")):
        return
    yield itch.pack("S", stock_locate=0, tracking_number=0, timestamp=ts, event_code="O")
    for s in names:
        message = itch.pack("R", **header(s), stock=s, market_category="Q", round_lot_size=100)
        if not emit(message):
            return
        yield message
    while True:
        ts += rng.randrange(200, 20_000)
        stock = rng.choice(names)
        n_live = len(refs[stock])
        r = rng.random()
        if rng.random() < 0.02:                       # the mid walks
            step = rng.choice((-TICK, TICK))
            mid[stock] = max(10 * TICK, mid[stock] + step)
            # Orders the move would cross trade away first.
            side = "S" if step > 0 else "B"
            while (p := best(stock, side)) is not None and ((side == "S" and p < mid[stock]) or
                                                            (side == "B" and p >= mid[stock])):
                ref = levels[(stock, side)][p][0]
                shares = live[ref][3]
                remove(ref, shares)
                message = itch.pack("E", **header(stock), order_reference_number=ref, executed_shares=shares,
                                    match_number=match)
                match += 1
                if not emit(message):
                    return
                yield message
            continue
        add_share = 0.55 if n_live < live_per_symbol else 0.35
        if r < add_share or n_live == 0:
            side = rng.choice("BS")
            behind = min(int(rng.expovariate(1 / 3)), 30)
            price = mid[stock] - TICK * (1 + behind) if side == "B" else mid[stock] + TICK * behind
            shares = rng.choice((100, 100, 100, 200, 300, 500, rng.randrange(1, 100)))
            ref = next_ref
            next_ref += rng.randrange(1, 4)
            live[ref] = [stock, side, price, shares]
            levels[(stock, side)].setdefault(price, deque()).append(ref)
            track(stock, ref)
            fields = dict(order_reference_number=ref, buy_sell_indicator=side, shares=shares, stock=stock,
                          price=price)
            if rng.random() < 0.25:
                message = itch.pack("F", **header(stock), **fields, attribution="NITE")
            else:
                message = itch.pack("A", **header(stock), **fields)
            if not emit(message):
                return
            yield message
            continue
        if r < add_share + 0.15:                      # an execution at the touch
            side = rng.choice("BS")
            p = best(stock, side)
            if p is None:
                continue
            ref = levels[(stock, side)][p][0]
            shares = live[ref][3] if rng.random() < 0.6 else rng.randrange(1, live[ref][3] + 1)
            remove(ref, shares)
            if rng.random() < 0.2:
                message = itch.pack("C", **header(stock), order_reference_number=ref, executed_shares=shares,
                                    match_number=match, printable="Y", execution_price=p)
            else:
                message = itch.pack("E", **header(stock), order_reference_number=ref, executed_shares=shares,
                                    match_number=match)
            match += 1
            if not emit(message):
                return
            yield message
            continue
        # A cancel, delete or replace of any live order of the symbol.
        if not refs[stock]:
            continue
        ref = rng.choice(refs[stock])
        _, side, price, left = live[ref]
        kind = rng.random()
        if kind < 0.3 and left > 1:
            cancelled = rng.randrange(1, left)
            remove(ref, cancelled)
            message = itch.pack("X", **header(stock), order_reference_number=ref, cancelled_shares=cancelled)
        elif kind < 0.8:
            remove(ref, left)
            message = itch.pack("D", **header(stock), order_reference_number=ref)
        else:
            remove(ref, left)
            behind = min(int(rng.expovariate(1 / 3)), 30)
            new_price = mid[stock] - TICK * (1 + behind) if side == "B" else mid[stock] + TICK * behind
            new_shares = rng.choice((100, 200, 300, rng.randrange(1, 1000)))
            new_ref = next_ref
            next_ref += rng.randrange(1, 4)
            live[new_ref] = [stock, side, new_price, new_shares]
            levels[(stock, side)].setdefault(new_price, deque()).append(new_ref)
            track(stock, new_ref)
            message = itch.pack("U", **header(stock), original_order_reference_number=ref,
                                new_order_reference_number=new_ref, shares=new_shares, price=new_price)
        if not emit(message):
            return
        yield message


def write_book_day(path: str | Path, messages: int, **kwargs) -> int:
    """:func:`book_day` into raw ITCH file ``path``; returns the number of messages."""
    return write_raw_itch(path, book_day(messages, **kwargs))
