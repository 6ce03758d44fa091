"""dpdk driver on a veth pair inside a network namespace the test creates and removes, through
DPDK's net_af_packet virtual device: registers and events against the management model
(sim/mgmt_bridge.py on a register file) that loses requests, replies and event frames on purpose,
a MoldUDP64 retransmission request answered by a responder on the other end, and the options.

DPDK initialises its EAL once per process: every test that opens the driver does it in a process
of its own (multiprocessing, spawn), which enters the namespace first."""

import os
import shutil
import subprocess
import threading
import time

import pytest

from tickwire.drivers import DriverError, open_driver
from tickwire.drivers.base import Driver
from tickwire.drivers.dpdk import DpdkDriver, call_in_process, dpdk_available, eal_arguments
from tickwire.drivers.rawpacket import RawPacketDriver
from tickwire.protocols import events as ev
from tickwire.protocols import moldudp64
from tickwire.protocols.management import WRITE, frame_kind
from tickwire.protocols.net import UDP_PAYLOAD_OFFSET
from tickwire.sim.feed import udp_frame
from tickwire.sim.mgmt_bridge import DEFAULT_CARD_MAC, ManagementBridge
from tickwire.sim.netns import inside

_missing = dpdk_available()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="DPDK, AF_PACKET and network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2) for veth pairs"),
    pytest.mark.skipif(_missing is not None, reason=f"{_missing} (run 'make dpdk' as root)"),
]

HOST_MAC = "02:00:00:00:00:0a"
PEER_MAC = "02:00:00:00:00:0b"


@pytest.fixture(scope="module")
def veth():
    """Host port ``twh`` (MAC HOST_MAC, DPDK's) and card port ``twc``, a veth pair in a new
    namespace."""
    netns = f"twdpdk{os.getpid()}"
    run = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: E731
    try:
        run("netns", "add", netns)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make a network namespace: {e.stderr.decode().strip()}")
    try:
        try:
            run("-n", netns, "link", "add", "twh", "address", HOST_MAC, "type", "veth", "peer",
                "name", "twc", "address", PEER_MAC)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"no veth pairs here: {e.stderr.decode().strip()}")
        for name in ("twh", "twc"):
            run("-n", netns, "link", "set", name, "up")
        yield netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


# -- a process per DPDK driver ---------------------------------------------------------------------

def in_dpdk_process(function, netns, options, *args, timeout=60):
    """``function(driver, *args)`` in a process of its own with a DPDK driver of ``options``
    opened in ``netns``; the child's traceback fails the test."""
    try:
        return call_in_process(function, *args, options=options, netns=netns, timeout=timeout)
    except DriverError as e:
        pytest.fail(str(e))


def host_options(**more):
    # A poll loop that gives its core back when idle: the machine is shared.
    return {"interface": "twh", "card_mac": DEFAULT_CARD_MAC, "timeout": 3, "idle_us": 20,
            **more}


# -- a card stand-in: the management model on a register file ---------------------------------------

class RegisterFileCard(Driver):
    """Registers in a dict and a list of events to hand out, behind the bridge."""

    def __init__(self):
        super().__init__()
        self.values, self.writes, self.pending = {}, [], []
        self.lock = threading.Lock()

    def read(self, address):
        return self.values.get(address, address ^ 0x5A5A0000)

    def write(self, address, value):
        self.writes.append((address, value))
        self.values[address] = value
        if address == 0x100:        # "submit": each write makes one event
            with self.lock:
                self.pending.append(ev.Event(ev.EventType.GAP, cycles=value, sequence=len(self.writes),
                                             fields={"sequence_number": value, "message_count": 1}))

    def events(self, timeout=0.0, limit=None):
        with self.lock:
            out, self.pending = self.pending[:limit], self.pending[limit:]
        return out


def bridge_on(netns, card, drop=None):
    with inside(netns):
        return ManagementBridge(card, "twc", drop=drop)


def _registers(driver, count):
    values = []
    for k in range(count):
        driver.write(0x10 + k, 0x1000_0000 + k)
    for k in range(count):
        values.append(driver.read(0x10 + k))
    client = driver.client
    return values, client.retries, client.duplicates, client.stale_replies


def test_register_writes_and_reads(veth):
    card = RegisterFileCard()
    with bridge_on(veth, card) as bridge:
        values, retries, duplicates, _ = in_dpdk_process(_registers, veth, host_options(), 20)
    assert values == [0x1000_0000 + k for k in range(20)]
    assert card.writes == [(0x10 + k, 0x1000_0000 + k) for k in range(20)]
    # No losses here: a retry only when a reply came late (a loaded machine).
    assert duplicates <= retries and bridge.model.requests == 40 + retries


def test_lost_requests_and_replies_are_retried_and_applied_once(veth):
    """The link loses the first copy of every third request and the first reply to every third
    write: the driver sends the same sequence again; a retried write is not applied twice."""
    card = RegisterFileCard()
    seen_in, seen_out = {}, {}

    def drop(direction, frame):
        if frame_kind(frame) not in ("request", "reply"):
            return False
        key = bytes(frame[16:24])               # sequence, address, data (not opcode, status)
        seen = seen_in if direction == "in" else seen_out
        seen[key] = seen.get(key, 0) + 1
        if direction == "in":
            return seen[key] == 1 and frame[17] % 3 == 0
        return seen[key] == 1 and frame[15] & 0x7F == WRITE and frame[17] % 3 == 1

    with bridge_on(veth, card, drop) as bridge:
        values, retries, duplicates, stale = in_dpdk_process(
            _registers, veth, host_options(retry_interval=0.02), 12)
    assert values == [0x1000_0000 + k for k in range(12)]
    assert card.writes == [(0x10 + k, 0x1000_0000 + k) for k in range(12)]   # each once
    assert bridge.dropped_in >= 6 and bridge.dropped_out >= 3
    assert retries >= bridge.dropped_in + bridge.dropped_out      # more if a reply came late
    assert duplicates >= bridge.dropped_out and bridge.model.duplicates >= duplicates


def _events(driver, count, lose_one):
    for k in range(count):
        driver.write(0x100, 1000 + k)
    got, deadline = [], time.monotonic() + 10
    expected = count - (1 if lose_one else 0)
    while len(got) < expected and time.monotonic() < deadline:
        got += driver.events(timeout=0.2)
    driver.events(timeout=0.2)
    return ([(e.sequence, e["sequence_number"]) for e in got], driver.client.event_frames,
            driver.client.event_frames_lost, driver.stats())


def test_event_stream_in_order_with_nothing_lost(veth):
    card = RegisterFileCard()
    with bridge_on(veth, card) as bridge:
        got, frames, lost, stats = in_dpdk_process(_events, veth, host_options(), 200, False)
    assert len(card.writes) == 200, (len(card.writes), bridge.model.requests,
                                     bridge.model.duplicates, stats)   # each once
    assert stats["tx_index_errors"] == 0 and stats["rx_ring_dropped"] == 0, stats
    assert got == [(k + 1, 1000 + k) for k in range(200)]
    assert lost == 0 and frames == bridge.model.event_frames >= 1


def test_a_lost_event_frame_is_counted(veth):
    card = RegisterFileCard()
    dropped = []

    def drop(direction, frame):
        if frame_kind(frame) == "events" and frame[18:22] == (3).to_bytes(4, "big"):
            dropped.append(frame)
            return True
        return False
    with bridge_on(veth, card, drop):
        got, frames, lost, _ = in_dpdk_process(_events, veth, host_options(), 8, True)
    assert len(dropped) == 1 and lost == 1
    lost_sequence = ev.unpack(dropped[0][22:54]).sequence
    assert [s for s, _ in got] == [k for k in range(1, 9) if k != lost_sequence]


# -- the host's own packets: a MoldUDP64 retransmission request --------------------------------------

SESSION = "TWSESSION1"
REQUEST_PORT, FEED_PORT = 26478, 26477
HOST_IP, SERVER_IP = 0x0A000001, 0x0A000002


def _mac_int(text):
    return int(text.replace(":", ""), 16)


def _rerequest(driver, first, count):
    request = moldudp64.REQUEST.pack(session=SESSION, sequence_number=first, message_count=count)
    frame = udp_frame(request, src_mac=_mac_int(HOST_MAC), dst_mac=_mac_int(PEER_MAC),
                      src_ip=HOST_IP, dst_ip=SERVER_IP, src_port=FEED_PORT,
                      dst_port=REQUEST_PORT)
    driver.send_frame("twh", frame)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for received in driver.receive_frames(timeout=0.5):
            data = received.data
            if data[12:14] == b"\x08\x00" and data[36:38] == FEED_PORT.to_bytes(2, "big"):
                header, messages = moldudp64.unpack(data[UDP_PAYLOAD_OFFSET:])
                return header["sequence_number"], messages, received.timestamp
    return None


def test_moldudp64_retransmission_request_answered(veth):
    with inside(veth):
        server = RawPacketDriver("twc", block_timeout_ms=1, timeout=2)
    stop = threading.Event()
    requests = []

    def serve():
        while not stop.is_set():
            for received in server.receive_frames(timeout=0.05):
                data = received.data
                if data[12:14] != b"\x08\x00" or data[36:38] != REQUEST_PORT.to_bytes(2, "big"):
                    continue
                request = moldudp64.REQUEST.unpack(data[UDP_PAYLOAD_OFFSET:])
                requests.append(request)
                first, count = request["sequence_number"], request["message_count"]
                messages = [f"message {n}".encode() for n in range(first, first + count)]
                server.send_frame("twc", udp_frame(
                    moldudp64.pack(SESSION, first, messages), src_mac=_mac_int(PEER_MAC),
                    dst_mac=_mac_int(HOST_MAC), src_ip=SERVER_IP, dst_ip=HOST_IP,
                    src_port=REQUEST_PORT, dst_port=FEED_PORT))
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        before = time.time_ns()
        answer = in_dpdk_process(_rerequest, veth, {"interface": "twh", "idle_us": 20}, 41, 3)
    finally:
        stop.set()
        thread.join(10)
        server.close()
    assert [(r["session"], r["sequence_number"], r["message_count"]) for r in requests] == \
        [(SESSION, 41, 3)]
    assert answer is not None, "no answer to the retransmission request"
    first, messages, stamp = answer
    assert first == 41 and messages == [b"message 41", b"message 42", b"message 43"]
    assert before < stamp < time.time_ns()


# -- options, errors, one EAL per process ---------------------------------------------------------

def _second_driver(driver):
    try:
        DpdkDriver("twc")
    except DriverError as e:
        return str(e)
    return None


def test_one_eal_per_process(veth):
    message = in_dpdk_process(_second_driver, veth, {"interface": "twh", "idle_us": 20})
    assert message is not None and "EAL is initialised once per process" in message


def _read_without_card(driver):
    try:
        driver.read(0)
    except DriverError as e:
        return str(e), driver.capabilities, driver.send_ports
    return None


def test_frames_only_without_card_mac(veth):
    message, capabilities, ports = in_dpdk_process(_read_without_card, veth,
                                                   {"interface": "twh", "lcores": [0]})
    assert "no card_mac configured" in message and ports == ("twh",)


def test_options_are_checked_before_dpdk_starts():
    with pytest.raises(DriverError, match="give one of 'interface'"):
        open_driver({"driver": "dpdk", "interface": "twh", "pci": "0000:01:00.0"})
    with pytest.raises(DriverError, match="lcores must be"):
        open_driver({"driver": "dpdk", "interface": "twh", "lcores": [0, 1, 2]})
    with pytest.raises(DriverError, match="MAC address must look like"):
        open_driver({"driver": "dpdk", "interface": "twh", "card_mac": "card"})
    with pytest.raises(DriverError, match="unknown option 'iface'"):
        open_driver({"driver": "dpdk", "iface": "twh"})
    with pytest.raises(DriverError, match="ring slots must be a power of two"):
        open_driver({"driver": "dpdk", "interface": "twh", "rx_slots": 1000})


def test_eal_arguments():
    args = eal_arguments(port="net_af_packet0", vdev="net_af_packet0,iface=twh", pci=None,
                         lcores=[2, 3], huge=False, memory_mb=128)
    assert args[:5] == ["tickwire", "-l", "2,3", "--main-lcore", "2"]
    assert {"--no-huge", "--no-shconf", "--no-pci", "--vdev=net_af_packet0,iface=twh"} <= set(args)
    assert f"--file-prefix=tickwire{os.getpid()}" in args
    args = eal_arguments(port="0000:01:00.0", vdev=None, pci="0000:01:00.0", lcores=[0],
                         huge=True, memory_mb=512, extra=["--socket-mem=512"])
    assert "--in-memory" in args and "--no-huge" not in args and "--no-pci" not in args
    assert args[args.index("-a") + 1] == "0000:01:00.0" and args[-1] == "--socket-mem=512"
