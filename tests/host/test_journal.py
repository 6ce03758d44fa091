"""Tests of host/journal.py: framing, segments, recovery after kill -9, follow mode, export, CLI."""

import csv
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tickwire.host import cli
from tickwire.host.journal import (
    COMMITTED, COMMITTED_OFFSET, HEADER_SIZE, MAX_PAYLOAD, RECORD_OVERHEAD, SCHEMAS, Journal, JournalError, JournalReader,
    RecordType, export_csv, export_parquet, segment_paths)

#: The smallest segment a journal accepts, plus a little: rolls every few hundred records.
SMALL_SEGMENT = HEADER_SIZE + RECORD_OVERHEAD + MAX_PAYLOAD + 4000


def _order(i):
    """The deterministic ORDER payload of record ``i`` (as append() takes it)."""
    return (i & 0xFFFFFFFF, i % 3, b"BS"[i % 2:i % 2 + 1], f"S{i % 97:<7}".encode(),
            i % 1000 + 1, i * 7 - 50_000)


def _check_order(record, i):
    user_ref_num, session, side, symbol, quantity, price = _order(i)
    assert record.type == RecordType.ORDER
    assert record.fields == {"user_ref_num": user_ref_num, "session": session,
                             "side": side.decode(), "symbol": symbol.decode().rstrip(),
                             "quantity": quantity, "price": price}


def test_records_round_trip_with_every_type(tmp_path):
    values = {
        RecordType.ORDER: dict(user_ref_num=7, session=1, side="B", symbol="AAPL",
                               quantity=100, price=1_234_500),
        RecordType.REJECT: dict(user_ref_num=8, session=1, source=1, reason=3),
        RecordType.ACK: dict(user_ref_num=7, session=1, order_reference_number=2**63 + 5,
                             quantity=100, price=1_234_500),
        RecordType.FILL: dict(user_ref_num=7, session=1, match_number=99, quantity=40,
                              price=1_234_400, liquidity_flag="A"),
        RecordType.CANCEL: dict(user_ref_num=7, session=1, quantity=10, reason="U"),
        RecordType.REPLACE: dict(user_ref_num=9, session=1, previous_user_ref_num=7,
                                 quantity=50, price=1_234_000, order_reference_number=3),
        RecordType.CONFIG_CHANGE: dict(address=0x181, old_value=0, new_value=500,
                                       register="risk.max_order_quantity"),
        RecordType.KILL: dict(session=0xFFFF, reason="operator: fat finger ✋"),
        RecordType.UNKILL: dict(session=0xFFFF, reason=""),
        RecordType.ALERT: dict(severity=2, code=17, message="exposure mismatch on AAPL"),
        RecordType.BBO: dict(symbol="MSFT", bid=4_000_000, ask=4_000_100, bid_size=300,
                             ask_size=200),
    }
    assert set(values) == set(RecordType) == set(SCHEMAS)
    with Journal(tmp_path / "j") as journal:
        for n, (t, fields) in enumerate(values.items()):
            assert journal.write(t, timestamp_ns=1_700_000_000_000_000_000 + n, **fields) == n
    records = list(JournalReader(tmp_path / "j"))
    assert [r.type for r in records] == list(values)
    for n, (record, fields) in enumerate(zip(records, values.values())):
        assert record.index == n
        assert record.timestamp_ns == 1_700_000_000_000_000_000 + n
        assert record.fields == fields


def test_timestamps_default_to_now(tmp_path):
    before = time.time_ns()
    with Journal(tmp_path) as journal:
        journal.append(RecordType.ORDER, *_order(1))
    after = time.time_ns()
    (record,) = JournalReader(tmp_path)
    assert before <= record.timestamp_ns <= after


def test_bad_records_are_refused_clearly(tmp_path):
    with Journal(tmp_path) as journal:
        with pytest.raises(JournalError, match="unknown record type 0"):
            journal.append(0)
        with pytest.raises(JournalError, match="unknown record type -1"):
            journal.append(-1)
        with pytest.raises(JournalError, match="order record"):
            journal.append(RecordType.ORDER, 1, 2)
        with pytest.raises(JournalError, match="needs field 'price'"):
            journal.write(RecordType.ORDER, user_ref_num=1, session=0, side="B", symbol="A",
                          quantity=1)
        with pytest.raises(JournalError, match="no field colour"):
            journal.write(RecordType.KILL, session=1, colour="red")
        journal.append(RecordType.ORDER, *_order(5))
        assert journal.next_index == 1  # the refused records took no index
    (record,) = JournalReader(tmp_path)
    _check_order(record, 5)


def test_segments_roll_and_indices_continue(tmp_path):
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        for i in range(2000):
            journal.append(RecordType.ORDER, *_order(i))
        append_order = journal.appender(RecordType.ORDER)
        for i in range(2000, 3000):
            assert append_order(*_order(i)) == i
        journal.append_many(RecordType.ORDER, [_order(i) for i in range(3000, 6000)])
    with pytest.raises(JournalError, match="closed"):
        append_order(*_order(6000))
    paths = segment_paths(tmp_path)
    assert len(paths) > 3
    assert all(p.stat().st_size == SMALL_SEGMENT for p in paths)
    records = list(JournalReader(tmp_path))
    assert len(records) == 6000
    for i, record in enumerate(records):
        assert record.index == i
        _check_order(record, i)
    # Reading from the middle starts in the right segment.
    assert [r.index for r in JournalReader(tmp_path).records(4321)][:2] == [4321, 4322]
    assert [r.index for r in JournalReader(tmp_path).tail(3)] == [5997, 5998, 5999]
    assert JournalReader(tmp_path).count() == 6000


def test_reopening_appends_after_the_last_record(tmp_path):
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        for i in range(1500):
            journal.append(RecordType.ORDER, *_order(i))
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        assert journal.next_index == 1500
        journal.append(RecordType.ORDER, *_order(1500))
    records = list(JournalReader(tmp_path))
    assert len(records) == 1501
    _check_order(records[-1], 1500)


def test_a_second_writer_is_refused(tmp_path):
    with Journal(tmp_path):
        with pytest.raises(JournalError, match="open for writing by another process"):
            Journal(tmp_path)
    Journal(tmp_path).close()  # closing released the lock


def _last_segment(path):
    return segment_paths(path)[-1]


def test_torn_tail_is_cut_and_uncommitted_whole_records_are_kept(tmp_path):
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        for i in range(10):
            journal.append(RecordType.ORDER, *_order(i))
        end = journal._end
        record_size = (end - HEADER_SIZE) // 10
        # An eleventh record, whole and CRC-valid, but the writer "died" before the committed
        # end was stored: it must be kept.
        journal.append(RecordType.ORDER, *_order(10))
        journal._end = end
        COMMITTED.pack_into(journal._mm, COMMITTED_OFFSET, end)
    segment = _last_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    # A twelfth record torn halfway: its first 20 bytes only.
    torn_at = end + record_size
    data[torn_at:torn_at + 20] = bytes(range(1, 21))
    segment.write_bytes(bytes(data))
    assert len(list(JournalReader(tmp_path))) == 10  # readers trust the committed end only
    with Journal(tmp_path) as journal:
        assert journal.next_index == 11
        journal.append(RecordType.ORDER, *_order(11))
    records = list(JournalReader(tmp_path))
    assert len(records) == 12
    for i, record in enumerate(records):
        _check_order(record, i)


def test_damage_before_the_committed_end_is_not_truncated(tmp_path):
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        for i in range(10):
            journal.append(RecordType.ORDER, *_order(i))
    segment = _last_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[HEADER_SIZE + 47 * 3 + 20] ^= 0xFF  # a payload byte of record 3
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged record at byte .* before the committed end"):
        Journal(tmp_path)
    with pytest.raises(JournalError, match="damaged record"):
        list(JournalReader(tmp_path))
    assert segment.read_bytes() == bytes(data)  # left as it was


def test_not_a_journal_is_refused(tmp_path):
    (tmp_path / "0000000000.twj").write_bytes(b"hello" * 100)
    with pytest.raises(JournalError, match="not a tickwire journal segment"):
        Journal(tmp_path)
    with pytest.raises(JournalError, match="not found"):
        JournalReader(tmp_path / "missing")


# -- kill -9 ------------------------------------------------------------------------------------

WRITER = r"""
import os, sys
from tickwire.host.journal import Journal, RecordType
sys.path.insert(0, sys.argv[3])
from test_journal import _order
directory, segment_size = sys.argv[1], int(sys.argv[2])
journal = Journal(directory, segment_size=segment_size)
i = journal.next_index
append_order = journal.appender(RecordType.ORDER)
os.write(1, f"start {i}\n".encode())
while True:
    if i % 50 == 7:  # a batch: reported when append_many returns
        rows = [_order(k) for k in range(i, i + 20)]
        journal.append_many(RecordType.ORDER, rows)
        i += 20
    elif i % 13 == 0:  # a record with a text, of varying length
        journal.write(RecordType.ALERT, severity=1, code=i & 0xFFFF, message="x" * (i % 300))
        i += 1
    elif i % 2:
        journal.append(RecordType.ORDER, *_order(i))
        i += 1
    else:
        append_order(*_order(i))
        i += 1
    os.write(1, f"{i}\n".encode())
"""


def _check_record(record, i):
    if record.type == RecordType.ALERT:
        assert i % 13 == 0
        assert record.fields == {"severity": 1, "code": i & 0xFFFF, "message": "x" * (i % 300)}
    else:
        _check_order(record, i)


def test_kill_9_at_random_points_loses_nothing_reported(tmp_path):
    rng = random.Random(8)
    directory = tmp_path / "journal"
    reported = 0
    for round_ in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(SMALL_SEGMENT),
             str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            start = writer.stdout.readline().decode()
            assert start == f"start {reported}\n", writer.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            writer.send_signal(signal.SIGKILL)
            out, _ = writer.communicate(timeout=10)
        assert writer.returncode == -signal.SIGKILL
        lines = out.decode().split()
        if lines:
            reported = max(reported, int(lines[-1]))
        # Recover: every record reported as written is there, whole and in order.
        with Journal(directory, segment_size=SMALL_SEGMENT) as journal:
            assert journal.next_index >= reported
            recovered = journal.next_index
        records = list(JournalReader(directory))
        assert len(records) == recovered
        i = 0
        while i < len(records):
            record = records[i]
            assert record.index == i
            _check_record(record, i)
            i += 1
        # The writer resumes at the recovered end; what it had not reported may be kept.
        reported = recovered
    assert reported > 1000, "the writer never got going: the test proves nothing"
    assert len(segment_paths(directory)) > 2


# -- follow mode ---------------------------------------------------------------------------------

def test_a_reader_follows_the_writer_across_segments(tmp_path):
    total = 4000
    with Journal(tmp_path, segment_size=SMALL_SEGMENT) as journal:
        journal.append(RecordType.ORDER, *_order(0))
        seen = []
        done = threading.Event()

        def read():
            deadline = time.monotonic() + 30
            for record in JournalReader(tmp_path).follow(
                    poll_interval=0.001, stop=lambda: time.monotonic() > deadline):
                seen.append(record)
                if len(seen) == total:
                    break
            done.set()

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(1, total):
            journal.append(RecordType.ORDER, *_order(i))
            if i % 500 == 0:
                time.sleep(0.01)  # let the reader catch up now and then
        assert done.wait(30)
        reader.join()
    assert len(seen) == total
    for i, record in enumerate(seen):
        assert record.index == i
        _check_order(record, i)


def test_follow_stops_when_asked(tmp_path):
    with Journal(tmp_path) as journal:
        journal.append(RecordType.ORDER, *_order(0))
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    assert [r.index for r in JournalReader(tmp_path).follow(poll_interval=0.001,
                                                            stop=stop)] == [0]


# -- export and CLI ------------------------------------------------------------------------------

def _sample(directory):
    with Journal(directory) as journal:
        journal.write(RecordType.ORDER, user_ref_num=1, session=0, side="B", symbol="AAPL",
                      quantity=100, price=1_000_000)
        journal.write(RecordType.ACK, user_ref_num=1, session=0, order_reference_number=5,
                      quantity=100, price=1_000_000)
        journal.write(RecordType.FILL, user_ref_num=1, session=0, match_number=9, quantity=60,
                      price=990_000, liquidity_flag="R")
        journal.write(RecordType.ALERT, severity=1, code=2, message="hello, world")
        journal.write(RecordType.BBO, symbol="AAPL", bid=1_010_000, ask=1_010_100, bid_size=1,
                      ask_size=1)


def test_csv_export(tmp_path):
    _sample(tmp_path / "j")
    with open(tmp_path / "out.csv", "w", newline="") as out:
        assert export_csv(JournalReader(tmp_path / "j"), out) == 5
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["type"] for r in rows] == ["order", "ack", "fill", "alert", "bbo"]
    assert rows[2]["price"] == "990000" and rows[2]["liquidity_flag"] == "R"
    assert rows[3]["message"] == "hello, world" and rows[3]["price"] == ""
    with open(tmp_path / "fills.csv", "w", newline="") as out:
        assert export_csv(JournalReader(tmp_path / "j"), out, [RecordType.FILL]) == 1


def test_parquet_export(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _sample(tmp_path / "j")
    assert export_parquet(JournalReader(tmp_path / "j"), tmp_path / "out.parquet",
                          batch_rows=2) == 5
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["type"] == ["order", "ack", "fill", "alert", "bbo"]
    assert table["quantity"] == [100, 100, 60, None, None]
    assert table["index"] == [0, 1, 2, 3, 4]
    assert table["order_reference_number"][1] == 5


def test_cli_tail_export_replay(tmp_path, capsys):
    _sample(tmp_path / "j")
    assert cli.main(["journal", "tail", str(tmp_path / "j"), "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "alert" in lines[0] and "bbo" in lines[1]
    assert "symbol=AAPL bid=1010000" in lines[1]

    assert cli.main(["journal", "export", str(tmp_path / "j"), str(tmp_path / "x.csv")]) == 0
    assert "5 records" in capsys.readouterr().err
    assert cli.main(["journal", "export", str(tmp_path / "j"), str(tmp_path / "x.txt")]) == 2
    assert "--format" in capsys.readouterr().err

    assert cli.main(["journal", "replay", str(tmp_path / "j"), "--json"]) == 0
    import json
    state = json.loads(capsys.readouterr().out)
    (row,) = state["positions"]
    assert row["position"] == 60
    assert row["open_buy_quantity"] == 40
    # Long 60 bought at 99.0000, marked at the bid 101.0000.
    assert row["unrealized"] == (1_010_000 - 990_000) * 60
    assert state["records"] == {"order": 1, "ack": 1, "fill": 1, "alert": 1, "bbo": 1}

    assert cli.main(["journal", "tail", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_reports_rates():
    from tickwire.host.bench_journal import bench_journal
    result = bench_journal(2000, repeats=1)
    assert result.records == 2000 and result.record_bytes == 47
    for name, value in result.as_dict().items():
        if name.endswith("records_per_second") and name != "goal_records_per_second":
            assert value > 0, name
