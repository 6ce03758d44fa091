"""sim/itchfile.py: raw ITCH files, MoldUDP64 pcaps, and conversion between them."""

from __future__ import annotations

import pytest

from tickwire.sim import pcap
from tickwire.sim.feed import generate_messages, iter_feed_frames, udp_frame
from tickwire.sim.itchfile import (
    PCAP, RAW_ITCH, ItchFileError, convert, count_raw_itch, detect_format, feed_destination,
    pcap_messages, raw_to_pcap, read_raw_itch, write_raw_itch,
)

MESSAGES = generate_messages(1500, seed=12)


def test_raw_itch_round_trip(tmp_path):
    path = tmp_path / "a.itch"
    assert write_raw_itch(path, MESSAGES) == len(MESSAGES)
    data = path.read_bytes()
    assert data[:2] == len(MESSAGES[0]).to_bytes(2, "big") and data[2:2 + len(MESSAGES[0])] == MESSAGES[0]
    assert list(read_raw_itch(path)) == MESSAGES
    assert count_raw_itch(path) == len(MESSAGES)
    assert detect_format(path) == RAW_ITCH


def test_raw_itch_reader_crosses_its_chunks(tmp_path, monkeypatch):
    from tickwire.sim import itchfile
    monkeypatch.setattr(itchfile, "_CHUNK", 7)
    path = tmp_path / "a.itch"
    write_raw_itch(path, MESSAGES[:200])
    assert list(read_raw_itch(path)) == MESSAGES[:200]


@pytest.mark.parametrize("cut, error", [
    (lambda d: d + b"\x00", "truncated length prefix of message 1500 at byte"),
    (lambda d: d[:-1], "truncated message 1499 at byte .*: its length prefix says"),
    (lambda d: d + b"\x00\x30AB", "truncated message 1500 .* says 48 bytes, 2 remain"),
])
def test_truncated_raw_itch(tmp_path, cut, error):
    path = tmp_path / "a.itch"
    write_raw_itch(path, MESSAGES)
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(ItchFileError, match=error):
        count_raw_itch(path)
    with pytest.raises(ItchFileError, match=error):
        list(read_raw_itch(path))


def test_pcap_round_trip_and_detection(tmp_path):
    raw, cap, back = tmp_path / "a.itch", tmp_path / "a.pcap", tmp_path / "b.itch"
    write_raw_itch(raw, MESSAGES)
    assert convert(raw, cap) == (RAW_ITCH, PCAP, len(MESSAGES))
    assert detect_format(cap) == PCAP
    assert convert(cap, back) == (PCAP, RAW_ITCH, len(MESSAGES))
    assert back.read_bytes() == raw.read_bytes()
    with pytest.raises(ItchFileError, match="same file"):
        convert(raw, raw)


def test_pcap_messages_drop_duplicates_and_other_traffic(tmp_path):
    frames = list(iter_feed_frames(MESSAGES, {"max_messages": 10}))
    other = udp_frame(b"x" * 40, src_mac=1, dst_mac=2, src_ip="10.0.0.9", dst_ip="10.0.0.8",
                      src_port=1, dst_port=2)
    # A/B copies of every datagram, a stray datagram, and a repeat of the first three.
    records = [r for pair in zip(frames, frames) for r in pair] + [(0, other)] + frames[:3]
    pcap.write_pcap(tmp_path / "ab.pcap", records)
    assert list(pcap_messages(tmp_path / "ab.pcap")) == MESSAGES
    assert feed_destination(f for _, f in records)[2] == 26400


def test_pcap_with_no_feed(tmp_path):
    other = udp_frame(b"x", src_mac=1, dst_mac=2, src_ip="10.0.0.9", dst_ip="10.0.0.8",
                      src_port=1, dst_port=2)
    pcap.write_pcap(tmp_path / "x.pcap", [(0, other)])
    with pytest.raises(ItchFileError, match="no MoldUDP64 packet"):
        list(pcap_messages(tmp_path / "x.pcap"))


def test_raw_to_pcap_options(tmp_path):
    raw = tmp_path / "a.itch"
    write_raw_itch(raw, MESSAGES)
    raw_to_pcap(raw, tmp_path / "a.pcap", feed={"max_messages": 5, "dst_port": 9999})
    records = pcap.read_pcap(tmp_path / "a.pcap")
    assert len(records) == len(MESSAGES) // 5
    assert feed_destination(f for _, f in records)[2] == 9999
