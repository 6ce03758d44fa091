"""sim/pcap.py: round trips, an independent reader (scapy), and damaged files."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tickwire.sim.feed import build_feed
from tickwire.sim.pcap import MAGIC_MICROSECONDS, PcapError, read_pcap, write_pcap

FRAMES = [(1_700_000_000_123_456_789, bytes(range(60))),
          (1_700_000_001_000_000_001, b"\xff" * 1514),
          (34_200_000_000_000, b"\x01" * 64)]


@pytest.mark.parametrize("nanoseconds", [True, False])
def test_round_trip(tmp_path, nanoseconds):
    path = tmp_path / "t.pcap"
    assert write_pcap(path, FRAMES, nanoseconds=nanoseconds) == len(FRAMES)
    back = read_pcap(path)
    if nanoseconds:
        assert back == FRAMES
    else:
        assert back == [(t // 1000 * 1000, f) for t, f in FRAMES]


def test_empty_capture(tmp_path):
    path = tmp_path / "e.pcap"
    write_pcap(path, [])
    assert read_pcap(path) == []


@pytest.mark.parametrize("nanoseconds", [True, False])
def test_scapy_reads_what_we_write(tmp_path, nanoseconds):
    records = build_feed({"count": 40})
    path = tmp_path / "feed.pcap"
    write_pcap(path, records, nanoseconds=nanoseconds)
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [f for _, f in records]
    scale = 1 if nanoseconds else 1000
    assert [int(p.time * 1_000_000_000) // scale * scale for p in packets] == \
        [t // scale * scale for t, _ in records]
    assert isinstance(packets[0], Ether) and packets[0][UDP].dport == 26400


def test_reads_big_endian_microsecond_files(tmp_path):
    path = tmp_path / "be.pcap"
    frame = bytes(60)
    path.write_bytes(struct.pack(">IHHiIII", MAGIC_MICROSECONDS, 2, 4, 0, 0, 65535, 1)
                     + struct.pack(">IIII", 5, 7, 60, 60) + frame)
    assert read_pcap(path) == [(5_000_007_000, frame)]


def test_bad_files(tmp_path):
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"\xd4\xc3\xb2")
    with pytest.raises(PcapError, match="too short"):
        read_pcap(path)
    path.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(PcapError, match="not a pcap file"):
        read_pcap(path)
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(30))
    with pytest.raises(PcapError, match="pcapng"):
        read_pcap(path)
    path.write_bytes(struct.pack("<IHHiIII", MAGIC_MICROSECONDS, 2, 4, 0, 0, 65535, 101))
    with pytest.raises(PcapError, match="link type 101"):
        read_pcap(path)

    write_pcap(path, FRAMES[:1])
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(PcapError, match="claims 60 bytes, 59 remain"):
        read_pcap(path)
    path.write_bytes(data + b"\x00" * 5)
    with pytest.raises(PcapError, match="record 1 header truncated"):
        read_pcap(path)


def test_writer_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="timestamp"):
        write_pcap(tmp_path / "x.pcap", [(-1, b"")])
    with pytest.raises(ValueError, match="exceed snaplen"):
        write_pcap(tmp_path / "x.pcap", [(0, bytes(100))], snaplen=64)
