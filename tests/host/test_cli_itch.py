"""host/cli.py: ``tickwire itch gen``, ``tickwire itch convert`` and ``tickwire sim decode``."""

from __future__ import annotations

import json

from tickwire.host import cli
from tickwire.protocols import itch
from tickwire.sim import pcap
from tickwire.sim.itchfile import read_raw_itch


def _gen(path, messages=3000, symbols=5, seed=3):
    assert cli.main(["itch", "gen", "--messages", str(messages), "--symbols", str(symbols),
                     "--seed", str(seed), "-o", str(path)]) == 0
    return path


def test_gen_is_a_deterministic_trading_day(tmp_path):
    a = _gen(tmp_path / "a.itch")
    assert _gen(tmp_path / "b.itch").read_bytes() == a.read_bytes()
    assert _gen(tmp_path / "c.itch", seed=4).read_bytes() != a.read_bytes()
    messages = [itch.unpack(m) for m in read_raw_itch(a)]
    assert len(messages) == 3000
    events = [m["event_code"] for m in messages if m["message_type"] == "S"]
    assert events == ["O", "S", "Q", "M", "E", "C"]
    directory = [m for m in messages if m["message_type"] == "R"]
    assert [(m["stock"].rstrip(), m["stock_locate"]) for m in directory] == [
        ("AAPL", 1), ("MSFT", 2), ("NVDA", 3), ("AMZN", 4), ("GOOGL", 5)]
    assert {m["message_type"] for m in messages} >= set("AFECXDUP")


def test_gen_rejects_too_few_messages(tmp_path, capsys):
    out = tmp_path / "x.itch"
    assert cli.main(["itch", "gen", "--messages", "10", "--symbols", "8", "-o", str(out)]) == 2
    assert "count must be at least 14" in capsys.readouterr().err
    assert not out.exists()


def test_convert_round_trips(tmp_path):
    raw = _gen(tmp_path / "a.itch")
    assert cli.main(["itch", "convert", str(raw), str(tmp_path / "a.pcap")]) == 0
    frames = pcap.read_pcap(tmp_path / "a.pcap")
    assert frames and all(len(f) <= 1442 for _, f in frames)  # full datagrams of <= 1400 bytes
    assert cli.main(["itch", "convert", str(tmp_path / "a.pcap"), str(tmp_path / "b.itch")]) == 0
    assert (tmp_path / "b.itch").read_bytes() == raw.read_bytes()


def test_convert_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\xa1\xb2\xc3\xd5" + bytes(60))
    assert cli.main(["itch", "convert", str(bad), str(tmp_path / "out")]) == 2
    assert "bad magic a1b2c3d5" in capsys.readouterr().err
    assert cli.main(["itch", "convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sim_decode_writes_json_lines(tmp_path, capsys):
    raw = _gen(tmp_path / "a.itch", messages=2000)
    out = tmp_path / "a.jsonl"
    assert cli.main(["sim", "decode", str(raw), "-o", str(out)]) == 0
    assert "2000 messages decoded" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert len(lines) == 2000
    for line, message in zip(lines, read_raw_itch(raw)):
        obj = json.loads(line)
        assert obj["type"] == chr(message[0])
        assert list(obj) == ["type", *itch.MESSAGES[obj["type"]].field_names[1:]]
    first = json.loads(lines[0])
    assert first == {"type": "S", "stock_locate": 0, "tracking_number": first["tracking_number"],
                     "timestamp": first["timestamp"], "event_code": "O"}
    add = next(json.loads(line) for line in lines if json.loads(line)["type"] == "A")
    assert add["stock"] in ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL")  # padding stripped
    assert isinstance(add["price"], int) and add["buy_sell_indicator"] in "BS"

    # Without -o the records go to standard output, the same as with it.
    assert cli.main(["sim", "decode", str(raw)]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_sim_decode_reports_bad_input(tmp_path, capsys):
    raw = _gen(tmp_path / "a.itch", messages=100)
    raw.write_bytes(raw.read_bytes() + b"\x00")
    out = tmp_path / "a.jsonl"
    assert cli.main(["sim", "decode", str(raw), "-o", str(out)]) == 2
    assert "truncated length prefix of message 100" in capsys.readouterr().err
    assert not out.exists()
