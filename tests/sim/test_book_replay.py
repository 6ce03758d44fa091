"""The order book on real feeds, in the native replay harness (market-data path + symbol directory +
book, tickwire.hdl.market_data.BookTop): a generated trading day (250,000 messages in the suite;
``TICKWIRE_BOOK_DAY=1000000`` for the full million-message day) and the
densest book traffic a 10G line can carry, every top-of-book record compared with the reference
book (sim/book_model.py); and ``tickwire sim book``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tickwire.protocols import itch
from tickwire.sim.book_replay import (BOOK_DUT, BookReplayError, compare_bbos, model_bbos, parse_symbols,
                                      replay_book_file, replay_book_messages)
from tickwire.sim.book_feed import write_book_day
from tickwire.sim.itchfile import generate_raw_itch, read_raw_itch
from tickwire.sim.replay import build_harness

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN"]
#: Messages of the generated day: 250,000 keeps the suite short; set TICKWIRE_BOOK_DAY=1000000
#: for the million-message day.
DAY_MESSAGES = int(os.environ.get("TICKWIRE_BOOK_DAY", "250000"))


@pytest.fixture(scope="session")
def harness():
    return build_harness(dut=BOOK_DUT)


@pytest.fixture(scope="session")
def day(tmp_path_factory):
    """``DAY_MESSAGES`` messages of 8 symbols with a realistic book (sim/book_feed.py)."""
    path = tmp_path_factory.mktemp("book") / "day.itch"
    write_book_day(path, DAY_MESSAGES, seed=11)
    return path


def test_trading_day(day, harness):
    run = replay_book_file(day, SYMBOLS, harness=harness)
    got = list(run)
    result = compare_bbos(got, model_bbos(read_raw_itch(day), SYMBOLS))
    assert result.ok, (result.differences, result.missing, result.extra)
    counters = run.counters
    assert run.lost() == {}
    # A real workout: most messages are book messages of tracked symbols, and tops change often.
    assert counters["book.messages"] > 0.4 * DAY_MESSAGES and len(got) > 0.03 * DAY_MESSAGES
    assert counters["book.outside_window"] > 0 and counters["book.depth_exhausted"] > 0
    print(f"{DAY_MESSAGES:,} messages: {counters['book.messages']} book messages, {len(got)} top-of-book records, "
          f"{counters['book.live_orders']} live orders at the end, {run.seconds:.1f} s")


def _densest_book_traffic(count: int) -> list[bytes]:
    """Stock Directory messages, then ``count`` adds and ``count`` deletes for tracked symbols
    (the delete, 19 bytes, is the shortest book message), plus replaces: full datagrams back
    to back at the minimum gap is the most book work a 10G line can bring."""
    messages = [itch.pack("R", stock_locate=k + 1, stock=s, market_category="Q") for k, s in enumerate(SYMBOLS)]
    for n in range(count):
        k = n % len(SYMBOLS)
        side = "BS"[n // len(SYMBOLS) % 2]
        price = 100_0000 + (1 if side == "S" else -1) * (100 + 100 * (n % 7))
        messages.append(itch.pack("A", stock_locate=k + 1, order_reference_number=n + 1, buy_sell_indicator=side,
                                  shares=100, stock=SYMBOLS[k], price=price))
    for n in range(0, count, 3):
        messages.append(itch.pack("U", stock_locate=n % len(SYMBOLS) + 1, original_order_reference_number=n + 1,
                                  new_order_reference_number=count + n + 1, shares=50, price=100_0000))
    for n in range(count):
        ref = count + n + 1 if n % 3 == 0 else n + 1
        messages.append(itch.pack("D", stock_locate=n % len(SYMBOLS) + 1, order_reference_number=ref))
    return messages


def test_densest_book_traffic_at_line_rate(harness):
    """Every book message taken, none lost at the minimum inter-frame gap: the book accepts one
    message every 2 cycles (Order Replace every 3), the line brings an Order Delete at most every
    21 / 8 = 2.6 cycles."""
    messages = _densest_book_traffic(20_000)
    run = replay_book_messages(messages, SYMBOLS, harness=harness, gap=12)
    got = list(run)
    assert run.lost() == {}
    result = compare_bbos(got, model_bbos(messages, SYMBOLS))
    assert result.ok, (result.differences, result.missing, result.extra)
    assert run.counters["book.messages"] == len(messages) - len(SYMBOLS)
    # The wire's own pace: every frame with its preamble and minimum gap, 8 bytes a cycle. The
    # path (book included) finishes within a few datagrams' time of the wire.
    wire_cycles = (run.frame_bytes + 20 * run.frames) / 8
    rate = run.counters["book.messages"] / run.cycles
    print(f"densest book traffic: {run.counters['book.messages']} book messages in {run.cycles} cycles "
          f"({rate:.3f} per cycle; the wire alone takes {wire_cycles:.0f} cycles), none lost")
    assert run.cycles < wire_cycles + 5000


def test_parse_symbols():
    assert parse_symbols("AAPL, MSFT") == ["AAPL", "MSFT"]
    for bad in ("", "AAPL,,MSFT", "TOOLONGSYM", "AAPL,AAPL", ",".join(f"S{k}" for k in range(9)), "A B"):
        with pytest.raises(BookReplayError):
            parse_symbols(bad)


def test_cli(tmp_path, harness):
    feed = tmp_path / "feed.itch"
    generate_raw_itch(feed, 5000, 3, seed=2)
    out = tmp_path / "bbo.jsonl"
    proc = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "sim", "book", str(feed),
                           "--symbols", "AAPL,MSFT", "-o", str(out), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "reference book: all" in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and {d["symbol"] for d in lines} <= {"AAPL", "MSFT"}
    assert list(lines[0])[:6] == ["symbol", "timestamp", "bid_price", "bid_shares", "ask_price", "ask_shares"]
    want = list(model_bbos(read_raw_itch(feed), ["AAPL", "MSFT"]))
    assert [(d["bid_price"], d["bid_shares"], d["ask_price"], d["ask_shares"]) for d in lines] == \
        [(w["bid_price"], w["bid_shares"], w["ask_price"], w["ask_shares"]) for w in want]
    # Bad input: one clear line, nothing written.
    bad = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "sim", "book", str(feed),
                          "--symbols", "TOOLONGNAME", "-o", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "1 to 8" in bad.stderr and not (tmp_path / "x.jsonl").exists()
