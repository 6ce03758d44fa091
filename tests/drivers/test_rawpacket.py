"""rawpacket driver on a veth pair inside a network namespace the test creates and removes."""

import os
import shutil
import subprocess
import time

import pytest

from tickwire.drivers import DriverError, DriverUnavailable, open_driver
from tickwire.drivers.rawpacket import RawPacketDriver
from tickwire.protocols import moldudp64
from tickwire.sim.feed import udp_frame
from tickwire.sim.netns import inside

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET and network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2)"),
]

#: IEEE 802 local experimental EtherType: nothing else on the link uses it.
EXPERIMENTAL = 0x88B5


@pytest.fixture(scope="module")
def veth():
    netns = f"twraw{os.getpid()}"
    run = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: E731
    run("netns", "add", netns)
    try:
        run("-n", netns, "link", "add", "twa", "type", "veth", "peer", "name", "twb")
        for name in ("twa", "twb"):
            run("-n", netns, "link", "set", name, "up")
        yield netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.fixture
def pair(veth):
    with inside(veth):
        a = RawPacketDriver("twa", ethertype=EXPERIMENTAL, timeout=2)
        b = RawPacketDriver("twb", ethertype=EXPERIMENTAL, timeout=2)
    yield a, b
    a.close()
    b.close()


def frame(i, size=64):
    header = bytes.fromhex("02000000000b" "02000000000a") + EXPERIMENTAL.to_bytes(2, "big")
    return (header + i.to_bytes(4, "big")).ljust(size, b"\xa5")


def test_frames_cross_the_veth_pair_in_order(pair, capsys):
    a, b = pair
    sent, received = [], []
    send_seconds = drain_seconds = 0.0
    for batch in range(40):  # 40 x 500 frames (under the kernel's 1000-frame backlog)
        t0 = time.perf_counter()
        for i in range(batch * 500, (batch + 1) * 500):
            data = frame(i, 60 + i % 200)
            a.send_frame("twa", data)
            sent.append(data)
        send_seconds += time.perf_counter() - t0
        time.sleep(0.03)  # the kernel hands a part-filled block over after block_timeout_ms
        t0 = time.perf_counter()
        received += b.receive_frames()
        drain_seconds += time.perf_counter() - t0
        deadline = time.monotonic() + 5
        while len(received) < len(sent) and time.monotonic() < deadline:
            received += b.receive_frames(timeout=0.5)
        if len(received) < len(sent):
            break
    assert [f.data for f in received] == sent
    assert all(f.port == "twb" for f in received)
    now = time.time_ns()
    assert all(now - 60e9 < f.timestamp <= now for f in received)
    with capsys.disabled():
        print(f"\nrawpacket over veth: {len(sent)} frames, sent at {len(sent) / send_seconds:,.0f} "
              f"frames/s, taken from the ring at {len(sent) / drain_seconds:,.0f} frames/s")
    assert a.receive_frames() == []  # its own frames do not come back


def test_limit_takes_frames_from_inside_a_block(pair):
    a, b = pair
    for i in range(10):
        a.send_frame("twa", frame(i))
    got = b.receive_frames(timeout=2, limit=3)
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        got += b.receive_frames(timeout=0.5, limit=3 - len(got))
    assert [f.data for f in got] == [frame(i) for i in range(3)]
    rest = []
    while len(rest) < 7 and time.monotonic() < deadline:
        rest += b.receive_frames(timeout=0.5)
    assert [f.data for f in rest] == [frame(i) for i in range(3, 10)]


def test_moldudp64_retransmission_request_on_the_wire(veth):
    """What the agent sends for a gap: a MoldUDP64 request datagram, caught by a ring that takes
    every EtherType."""
    request = moldudp64.REQUEST.pack(session="TICKWIRE01", sequence_number=1234, message_count=7)
    data = udp_frame(request, src_mac="02:00:00:00:00:0a", dst_mac="02:00:00:00:00:0b",
                     src_ip="10.9.0.1", dst_ip="10.9.0.2", src_port=40001, dst_port=26401)
    with inside(veth):
        a = open_driver({"driver": "rawpacket", "interface": "twa"})
        b = open_driver({"driver": "rawpacket", "interface": "twb"})
    with a, b:
        a.send_frame("twa", data)
        deadline = time.monotonic() + 5
        seen = []
        while data not in seen and time.monotonic() < deadline:  # other traffic may pass too
            seen += [f.data for f in b.receive_frames(timeout=0.5)]
        assert data in seen


def test_errors(veth, pair):
    a, _ = pair
    with inside(veth):
        with pytest.raises(DriverUnavailable, match="no network interface 'nosuch0'"):
            open_driver({"driver": "rawpacket", "interface": "nosuch0"})
        with pytest.raises(DriverError, match="power of two"):
            RawPacketDriver("twa", block_size=5000)
    with pytest.raises(DriverError, match="14 to 65535 bytes"):
        a.send_frame("twa", b"\x00" * 10)
    with pytest.raises(DriverError, match="no port 'twb'"):
        a.send_frame("twb", frame(0))
    with pytest.raises(DriverError, match="does not offer register reads"):
        a.read(0)
    with pytest.raises(DriverError, match="does not offer card events"):
        a.events()
    with pytest.raises(DriverError, match="missing 1 required positional argument"):
        open_driver({"driver": "rawpacket"})
