"""The book-shaped feed generator (sim/book_feed.py): consistent, uncrossed, deterministic, sized."""

import subprocess
import sys
from collections import Counter

import pytest

from tickwire.protocols import itch
from tickwire.sim.book_feed import book_day
from tickwire.sim.book_model import BookModel
from tickwire.sim.itchfile import read_raw_itch
from tickwire.sim.model import itch_decode


def test_consistent_and_uncrossed():
    messages = list(book_day(30_000, seed=3, symbols=4))
    assert len(messages) == 30_000
    types = Counter(chr(m[0]) for m in messages)
    assert set(types) >= set("SRAFECXDU")
    # Every reference the flow touches is one the book holds: no unknown references, no
    # collisions; and the book is never crossed.
    model = BookModel(slots=4, depth=64)
    for seq, m in enumerate(messages, 1):
        record = itch_decode(m)
        locate = record["stock_locate"]
        bbo = model.process(record, slot=locate - 1 if 1 <= locate <= 4 else None, sequence_number=seq)
        if bbo is not None and bbo.bid_orders and bbo.ask_orders:
            assert bbo.bid_price < bbo.ask_price, (seq, bbo)
    assert model.counters["book.unknown_references"] == model.counters["book.collisions"] == 0
    assert model.counters["book.bbo_updates"] > 3000


def test_deterministic_and_checked():
    assert list(book_day(500, seed=9)) == list(book_day(500, seed=9))
    assert list(book_day(500, seed=9)) != list(book_day(500, seed=10))
    with pytest.raises(ValueError, match="symbols"):
        list(book_day(10, symbols=9))


def test_cli_profile(tmp_path):
    out = tmp_path / "book.itch"
    proc = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "itch", "gen", "--messages", "2000",
                           "--symbols", "3", "--profile", "book", "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    messages = list(read_raw_itch(out))
    assert len(messages) == 2000 and all(itch.unpack(m) for m in messages[:50])
