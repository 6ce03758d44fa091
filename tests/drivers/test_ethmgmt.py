"""ethmgmt driver on a veth pair inside a network namespace the test creates and removes: against
the Amaranth simulation of hdl/management.py's ManagementPort on a register bank, and against a
Python responder that misbehaves on purpose (late and stray replies, lost replies, silence, event
frames with a gap)."""

import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from tickwire.bitstreams.management import ManagementPort
from tickwire.drivers import CardTimeout, DriverError
from tickwire.drivers.ethmgmt import EthManagementDriver
from tickwire.drivers.rawpacket import RawPacketDriver
from tickwire.hdl.csr import MAGIC, REGMAP_VERSION, WINDOW_WORDS, CsrBank, Register
from tickwire.hdl.top import Identity
from tickwire.host.regmap import Registers, RegisterMap, check_identity
from tickwire.protocols.layout import LayoutError
from tickwire.protocols import events as ev
from tickwire.protocols.management import (DUPLICATE, MANAGEMENT_ETHERTYPE, READ, WRITE,
                                           ManagementRequest, decode_request, encode_events,
                                           encode_reply)
from tickwire.protocols.net import MIN_FRAME_LENGTH
from tickwire.sim.netns import inside

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET and network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2)"),
]

CARD = 0x02_74_77_69_72_01
CARD_MAC = CARD.to_bytes(6, "big")
HOST_MAC = "02:00:00:00:00:0a"
SCRATCH_ADDRESS = WINDOW_WORDS


@pytest.fixture(scope="module")
def veth():
    """Host port ``twh`` (MAC HOST_MAC) and card port ``twc``, a veth pair in a new namespace."""
    netns = f"twmgmt{os.getpid()}"
    run = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: E731
    run("netns", "add", netns)
    try:
        run("-n", netns, "link", "add", "twh", "address", HOST_MAC, "type", "veth", "peer", "name", "twc")
        for name in ("twh", "twc"):
            run("-n", netns, "link", "set", name, "up")
        yield netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


class Card(Elaboratable):
    """ManagementPort on a register bank: Identity's window, then one scratch register."""

    def __init__(self):
        self.port = ManagementPort(mac_address=CARD)
        self.identity = Identity()
        self.bank = CsrBank([("id", Identity.registers),
                             ("scratch", (Register("value", 32, "rw", "Scratch word."),))])

    def elaborate(self, platform):
        m = Module()
        m.submodules.port, m.submodules.identity, m.submodules.bank = self.port, self.identity, self.bank
        wiring.connect(m, self.port.csr, self.bank.bus)
        wiring.connect(m, self.bank.id, self.identity.regs)
        return m


@contextmanager
def simulated_card(netns, *, max_cycles=2_000_000):
    """The simulated card on ``twc``: a thread moves frames between the socket and the
    simulation (padded to the Ethernet minimum, as its MacRx and MacTx would)."""
    with inside(netns):
        link = RawPacketDriver("twc", ethertype=MANAGEMENT_ETHERTYPE, block_timeout_ms=1, timeout=2)
    card = Card()
    port = card.port
    stop = threading.Event()
    errors = []

    async def bridge(ctx):
        pending, reply = [], bytearray()
        ctx.set(port.o_stream.ready, 1)
        for _ in range(max_cycles):       # bounded; the test ends it with ``stop``
            if stop.is_set():
                return
            if not pending:
                for frame in link.receive_frames(timeout=0, limit=1):
                    data = frame.data.ljust(MIN_FRAME_LENGTH, b"\0")
                    pending = [data[k:k + 8] for k in range(0, len(data), 8)]
                    length = len(data)
            if pending:
                chunk = pending[0]
                ctx.set(port.i_stream.valid, 1)
                ctx.set(port.i_stream.payload, {"data": int.from_bytes(chunk, "little"),
                                                "nbytes": len(chunk), "last": len(pending) == 1,
                                                "length": length})
            else:
                ctx.set(port.i_stream.valid, 0)
            _, _, taken, valid, p = await ctx.tick().sample(port.i_stream.ready, port.o_stream.valid,
                                                            port.o_stream.payload)
            if pending and taken:
                pending.pop(0)
            if valid:
                reply += p.data.to_bytes(8, "little")[:p.nbytes]
                if p.last:
                    link.send_frame("twc", bytes(reply).ljust(MIN_FRAME_LENGTH, b"\0"))
                    reply = bytearray()
        errors.append("the simulated card ran out of cycles")

    sim = Simulator(card)
    sim.add_clock(1e-8)
    sim.add_testbench(bridge)

    def run():
        try:
            sim.run()
        except BaseException as e:  # reported by the test
            errors.append(e)
    thread = threading.Thread(target=run, name="simulated-card")
    thread.start()
    try:
        yield card
    finally:
        stop.set()
        thread.join(30)
        link.close()
    assert not thread.is_alive() and not errors, errors


def open_host(netns, **options):
    with inside(netns):
        return EthManagementDriver("twh", options.pop("card_mac", CARD_MAC), **options)


def test_reads_and_writes_the_simulated_card(veth):
    with simulated_card(veth), open_host(veth, timeout=5) as host:
        assert host.source_mac == bytes.fromhex(HOST_MAC.replace(":", ""))
        assert host.read(0) == MAGIC
        assert host.read(1) == REGMAP_VERSION
        values = [0xDEADBEEF, 0, 0xFFFFFFFF, 0x12345678]
        for value in values:
            host.write(SCRATCH_ADDRESS, value)
            assert host.read(SCRATCH_ADDRESS) == value
        # cycles (64-bit): the low word latches the high word; the count moves on between reads.
        first = host.read(2) | host.read(3) << 32
        second = host.read(2) | host.read(3) << 32
        assert 0 < first < second
        assert host.requests == 2 + 2 * len(values) + 4 and host.stale_replies == 0
        assert host.client.retries == 0


def test_register_map_identity_over_the_driver(veth):
    """What Card does on connect: the exported map's identity check, through this transport."""
    regmap = RegisterMap.load()
    with simulated_card(veth), open_host(veth, timeout=5) as host:
        check_identity(Registers(regmap, host))


class Responder:
    """A Python stand-in for the card on ``twc`` that answers with ``answer(request)`` -> list of
    (request, value) or (request, value, status) replies to send (empty: stay silent)."""

    def __init__(self, netns, answer):
        with inside(netns):
            self.link = RawPacketDriver("twc", ethertype=MANAGEMENT_ETHERTYPE, block_timeout_ms=1, timeout=2)
        self.answer = answer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="responder")

    def run(self):
        while not self.stop.is_set():
            for frame in self.link.receive_frames(timeout=0.05):
                try:
                    _, source, request = decode_request(frame.data)
                except LayoutError:
                    continue
                self.host = source
                for reply, value, *status in self.answer(request):
                    self.link.send_frame("twc", encode_reply(reply, value, destination=source,
                                                             source=CARD_MAC, status=status[0] if status else 0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        self.link.close()


def test_stale_and_foreign_replies_are_skipped(veth):
    def answer(request):
        # A reply to an older sequence number, one to another address, then the right one.
        old = ManagementRequest(request.opcode, (request.sequence - 1) & 0xFFFF, request.address)
        other = ManagementRequest(request.opcode, request.sequence, request.address ^ 1)
        return [(old, 1), (other, 2), (request, 0xC0FFEE00 + request.address)]
    with Responder(veth, answer), open_host(veth, timeout=2) as host:
        assert host.read(0x10) == 0xC0FFEE10
        assert host.stale_replies == 2


def test_timeout_and_errors(veth):
    def silent_on_reads(request):
        return [] if request.opcode == READ else [(request, request.data ^ 1)]
    with Responder(veth, silent_on_reads), open_host(veth, timeout=0.3) as host:
        start = time.monotonic()
        with pytest.raises(CardTimeout, match=r"ethmgmt twh: no reply from card 02:74:77:69:72:01 "
                                              r"to read of word 0x0005 \(sequence \d+, \d+ copies"):
            host.read(5)
        assert 0.3 <= time.monotonic() - start < 2
        assert host.client.retries >= 3
        with pytest.raises(DriverError, match="card echoed 0x00000006 for the write of 0x00000007"):
            host.write(5, 7)
        with pytest.raises(DriverError, match="beyond the management protocol's 16-bit address"):
            host.read(0x10000)
        with pytest.raises(DriverError, match="is not a 32-bit word"):
            host.write(1, 1 << 32)
        with pytest.raises(DriverError, match="does not offer sending frames"):
            host.send_frame("twh", bytes(60))
    with pytest.raises(DriverError, match="card_mac must be the card's unicast address"):
        open_host(veth, card_mac="01:00:5e:00:00:01")
    with pytest.raises(DriverError, match="retry_interval must be 0 < seconds <= 60, not 0"):
        open_host(veth, retry_interval=0)
    with pytest.raises(DriverError, match="MAC address must look like"):
        open_host(veth, card_mac="card")
    with pytest.raises(DriverError, match="no network interface 'nosuch0'"), inside(veth):
        EthManagementDriver("nosuch0", CARD_MAC)


def test_lost_replies_are_retried_with_the_same_sequence(veth):
    """The responder loses the first reply to every request (the card applied it): the driver
    sends the same request again and takes the card's cached answer."""
    seen = []
    store = {}

    def answer(request):
        seen.append(request)
        if seen.count(request) == 1:
            if request.opcode == WRITE:
                store[request.address] = request.data
            return []          # applied, reply lost
        return [(request, store.get(request.address, 0) if request.opcode == READ
                 else request.data, DUPLICATE)]
    with Responder(veth, answer), open_host(veth, timeout=2, retry_interval=0.02) as host:
        host.write(9, 0xABCD)
        assert host.read(9) == 0xABCD
        assert host.client.retries == 2 and host.client.duplicates == 2
    sequences = [r.sequence for r in seen]
    assert sequences[0] == sequences[1] and sequences[2] == sequences[3] == (sequences[0] + 1) % 65536


def test_event_frames_in_order_and_a_lost_one_counted(veth):
    records = [ev.pack(ev.Event(ev.EventType.GAP, 100 + k, k,
                                fields={"sequence_number": k, "message_count": 1}))
               for k in range(10)]

    with Responder(veth, lambda request: [(request, 1)]) as responder, \
            open_host(veth, timeout=2) as host:
        host.read(0)                                     # the card learns where events go
        frames = [(0, records[0:3]), (1, records[3:4]), (3, records[6:10])]   # frame 2 is lost
        for sequence, chunk in frames:
            responder.link.send_frame("twc", encode_events(sequence, chunk, destination=responder.host,
                                                           source=CARD_MAC))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 8 and time.monotonic() < deadline:
            got += host.events(timeout=0.5)
        assert [e.sequence for e in got] == [0, 1, 2, 3, 6, 7, 8, 9]
        assert got[4] == ev.unpack(records[6])
        assert host.client.event_frames == 3 and host.client.event_frames_lost == 1
