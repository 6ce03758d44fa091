"""Random order flows for the order book: decoded records (gateware integers) aimed at its corners.

Prices cluster on a few ticks so levels share orders and windows overflow; references are
sometimes reused, unknown, or replaced into the same set, so collisions and unknown references
happen at small table sizes.
"""

from __future__ import annotations

import random
from typing import Iterator

from tickwire.protocols import itch

__all__ = ["order_flow", "book_record"]


def book_record(type_: str, *, slot: int | None, locate: int = 0, ref: int = 0, new_ref: int = 0,
                side: str = "B", shares: int = 0, price: int = 0, stock: str = "", timestamp: int = 0,
                sequence_number: int = 0, recovered: bool = False) -> dict[str, int]:
    """One record as the symbol directory hands it on (every record field, unused ones 0)."""
    values = dict.fromkeys(itch.RECORD_FIELDS, 0)
    values.update(
        message_type=ord(type_), stock_locate=locate, order_reference_number=ref,
        new_order_reference_number=new_ref, buy_sell_indicator=ord(side) if side else 0, shares=shares,
        price=price, stock=int.from_bytes(stock.ljust(8).encode("latin-1"), "little") if stock else 0,
        timestamp=timestamp, sequence_number=sequence_number, recovered=int(recovered),
        tracked=int(slot is not None), tracked_slot=slot or 0)
    return values


def order_flow(rng: random.Random, count: int, *, slots: int = 4, ticks: int = 12,
               untracked_share: float = 0.1, live_target: int = 12) -> Iterator[dict[str, int]]:
    """``count`` records: adds, executions, cancels, deletes and replaces of tracked slots, with
    untracked and non-book records mixed in; about ``live_target`` orders stay live."""
    live: list[list[int]] = []                # [ref, slot, shares left]
    next_ref = rng.randrange(1, 1 << 40)
    symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA", "QQQ", "SPY"]
    for n in range(count):
        timestamp = 34_200_000_000_000 + n * 1000
        seq = n + 1
        r = rng.random()
        if r < untracked_share:
            t = rng.choice("AEDSP")
            yield book_record(t, slot=None, locate=rng.randrange(1, 100), ref=rng.getrandbits(64),
                              shares=rng.randrange(1, 500), price=rng.randrange(1, 1 << 20),
                              timestamp=timestamp, sequence_number=seq)
            continue
        slot = rng.randrange(slots)
        locate = 10 + slot
        base = 1_000_000 + 100 * slot * ticks
        if r < 0.12:
            yield book_record(rng.choice("SPHY"), slot=slot, locate=locate, timestamp=timestamp,
                              sequence_number=seq)
            continue
        if not live or r < 0.12 + 0.76 * max(0.0, 1 - len(live) / (2 * live_target)):
            side = rng.choice("BS") if rng.random() > 0.01 else "X"
            mid = base + 100 * ticks // 2
            offset = 100 * rng.randrange(0, ticks // 2 + 1)
            price = mid - offset - 100 if side == "B" else mid + offset
            if rng.random() < 0.05 and live:
                ref = rng.choice(live)[0]                       # a reference already held
            elif rng.random() < 0.05:
                ref = rng.getrandbits(64)
            else:
                next_ref += rng.choice([1, 1, 1, 2, 7, 1 << 12, 1 << 20])
                ref = next_ref
            shares = rng.choice([100, 100, 200, 300, rng.randrange(1, 10_000)])
            live.append([ref, slot, shares])
            yield book_record(rng.choice("AAAF"), slot=slot, locate=locate, ref=ref, side=side,
                              shares=shares, price=price,
                              stock=symbols[slot % len(symbols)], timestamp=timestamp, sequence_number=seq)
            continue
        k = rng.randrange(len(live))
        ref, order_slot, left = live[k]
        corrupt = True
        if rng.random() < 0.03:
            ref = rng.getrandbits(64)                          # unknown
        elif rng.random() < 0.03:
            order_slot = (order_slot + 1) % slots              # the right reference, another symbol
        else:
            corrupt = False
        t = rng.choice("EECXXDDU")
        shares = min(left, rng.choice([1, 50, 100, 100, 200, left])) if rng.random() > 0.02 else left + 1
        if t == "U":
            next_ref += rng.choice([1, 3, 1 << 14])
            side_price = base + 100 * rng.randrange(0, ticks)
            shares = rng.choice([100, 200, rng.randrange(1, 5000)])
            if not corrupt:
                live[k] = [next_ref, order_slot, shares]
            yield book_record("U", slot=order_slot, locate=10 + order_slot, ref=ref, new_ref=next_ref,
                              shares=shares, price=side_price, timestamp=timestamp, sequence_number=seq)
        else:
            if not corrupt and shares <= left:
                live[k][2] -= shares
                if t == "D" or live[k][2] == 0:
                    live.pop(k)
            yield book_record(t, slot=order_slot, locate=10 + order_slot, ref=ref, shares=shares,
                              price=rng.randrange(1, 1 << 24) if t == "C" else 0, timestamp=timestamp,
                              sequence_number=seq, recovered=rng.random() < 0.02)
