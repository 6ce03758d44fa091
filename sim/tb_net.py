"""cocotb benches of :mod:`tickwire.hdl.net`: ``NetRx`` (frames in, UDP payloads out) and ``NetTx``
(payload records in, Ethernet/IPv4/UDP frames out), each checked against the reference model.

One module for both DUTs: the tests named ``net_rx_*`` need the ``net_rx`` build, ``net_tx_*`` the
``net_tx`` build (tests/hdl/test_net.py picks them with ``testcase=``); run on the other DUT they
are skipped. ``TICKWIRE_RANDOM_SEED`` overrides the seed.
"""

from __future__ import annotations

import logging
from collections import Counter

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from ..hdl.net import payload_record_layout
from ..hdl.ouch import ENTER_ORDER_PACKET_LENGTH
from ..hdl.packet import packet_layout
from ..protocols.net import (ETHERNET_HEADER_LENGTH, IPV4, IPV4_FLAG_DONT_FRAGMENT,
                             IPV4_FLAG_MORE_FRAGMENTS, IPV4_HEADER_LENGTH, UDP, UDP_HEADER_LENGTH,
                             UDP_PAYLOAD_OFFSET, ipv4_checksum, multicast_mac)
from .defaults import CARD_MAC, DEFAULT_FEED, FEED_GROUP, FEED_PORT
from .feed import udp_frame
from .model import NET_RX_COUNTERS, NET_TX_COUNTERS, NetRxModel, NetTxModel, RegisterFile
from .tb import (bench_seed, check_packet_framing, read_counters, rng_for, skip_unless, stats, wait_until,
                 StreamMonitor, StreamSink, StreamSource, cycle_pause, packet_beats, packet_bytes,
                 reset, split_packets, start_clock)

logger = logging.getLogger("tb_net")
logger.setLevel(logging.INFO)

SEED = bench_seed(13)
#: Largest UDP payload of a 1514-byte frame.
MAX_UDP_PAYLOAD = 1514 - UDP_PAYLOAD_OFFSET
IP = ETHERNET_HEADER_LENGTH
UDP_OFFSET = IP + IPV4_HEADER_LENGTH

# -- NetRx ----------------------------------------------------------------------------------------

class NetRxTB:
    """NetRx between a packet-stream source and sink (each with optional random stalls), an input
    monitor for latency and :class:`~tickwire.sim.model.NetRxModel`."""

    def __init__(self, dut, *, source_pause=None, sink_pause=None, registers=None):
        self.dut = dut
        self.log = logging.getLogger("tb_net.net_rx")
        start_clock(dut)
        dut.rst.value = 0
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        dut.o_stream__ready.value = 0
        for name in ("mac_address", "multicast_group", "udp_port"):
            getattr(dut, "regs__" + name).value = 0
        self.registers = RegisterFile(registers)
        self.source = StreamSource(dut, "i_stream__", packet_layout(), pause=source_pause)
        # Constructed together, so both count the same clock edges.
        self.inputs = StreamMonitor(dut, "i_stream__", packet_layout())
        self.sink = StreamSink(dut, "o_stream__", packet_layout(), pause=sink_pause)
        self.model = NetRxModel(self.registers)
        self.expected: list[bytes] = []
        self.owners: list[int] = []
        self.kinds: Counter = Counter()
        self.frames_sent = 0

    async def reset(self):
        await reset(self.dut)
        for name in ("mac_address", "multicast_group", "udp_port"):
            getattr(self.dut, "regs__" + name).value = self.registers["net_rx." + name]
        await RisingEdge(self.dut.clk)

    async def send(self, frame: bytes, kind: str = ""):
        payload = self.model.process(frame)
        if payload is not None:
            self.expected.append(payload)
            self.owners.append(self.frames_sent)
        self.kinds[kind] += 1
        self.frames_sent += 1
        await self.source.send(packet_beats(frame))

    def packets(self):
        return [p for p in split_packets(self.sink.beats) if p[-1]["last"]]

    async def drain(self, timeout_cycles: int = 50_000):
        await wait_until(self.dut, lambda: len(self.packets()) >= len(self.expected),
                         lambda: f"{len(self.packets())} of {len(self.expected)} payloads",
                         timeout_cycles=timeout_cycles, settle=50)

    def check(self):
        packets = split_packets(self.sink.beats)
        assert len(packets) == len(self.expected), \
            f"{len(packets)} payloads out, model predicts {len(self.expected)}"
        for k, (beats, want) in enumerate(zip(packets, self.expected)):
            got = packet_bytes(beats)
            assert got == want, f"payload {k} (frame {self.owners[k]}) differs:\n got  {got.hex()}\n want {want.hex()}"
            check_packet_framing(k, beats, want)
        got = read_counters(self.dut, NET_RX_COUNTERS)
        assert got == self.model.counters, f"counters differ:\n card  {got}\n model {self.model.counters}"
        self.log.info("counters %s", got)
        return got

    def latencies(self) -> list[tuple[int, bool]]:
        """For every payload word: (cycles from the frame word it waits for to the output, flush),
        where the frame word is ``6 + j`` for payload word ``j``, or ``5 + j`` when the frame has no
        word ``6 + j`` (flush: the last payload word lies wholly in the frame's last word)."""
        frames_in, current = [], []
        for beat, cycle in zip(self.inputs.beats, self.inputs.cycles):
            current.append(cycle)
            if beat["last"]:
                frames_in.append(current)
                current = []
        out, index = [], 0
        for beats, owner in zip(split_packets(self.sink.beats), self.owners):
            cycles_in = frames_in[owner]
            for j in range(len(beats)):
                o = self.sink.cycles[index + j]
                if 6 + j < len(cycles_in):
                    out.append((o - cycles_in[6 + j], False))
                else:
                    out.append((o - cycles_in[5 + j], True))
            index += len(beats)
        return out


FEED = dict(src_mac=DEFAULT_FEED["src_mac"], dst_mac=multicast_mac(FEED_GROUP),
            src_ip=DEFAULT_FEED["src_ip"], dst_ip=FEED_GROUP, src_port=DEFAULT_FEED["src_port"],
            dst_port=FEED_PORT)


def feed_frame(payload: bytes, **over) -> bytes:
    """A frame of the feed (multicast to the group and port the defaults configure)."""
    return udp_frame(payload, **{**FEED, **over})


def patch_ip(frame: bytes, *, checksum: bool = True, **fields) -> bytes:
    """``frame`` with IPv4 header ``fields`` changed and (``checksum``) the header checksum redone."""
    out = bytearray(frame)
    ip = IPV4.unpack(out[IP:IP + IPV4_HEADER_LENGTH])
    ip.update(fields)
    if checksum:
        ip["header_checksum"] = 0
        ip["header_checksum"] = ipv4_checksum(IPV4.pack(**ip))
    out[IP:IP + IPV4_HEADER_LENGTH] = IPV4.pack(**ip)
    return bytes(out)


def patch_udp(frame: bytes, **fields) -> bytes:
    out = bytearray(frame)
    udp = UDP.unpack(out[UDP_OFFSET:UDP_OFFSET + UDP_HEADER_LENGTH])
    udp.update(fields)
    out[UDP_OFFSET:UDP_OFFSET + UDP_HEADER_LENGTH] = UDP.pack(**udp)
    return bytes(out)


def ip_options_frame(payload: bytes) -> bytes:
    """A feed frame whose IPv4 header carries 4 bytes of options (IHL 6), checksum right."""
    plain = feed_frame(payload)
    ip = IPV4.unpack(plain[IP:IP + IPV4_HEADER_LENGTH])
    ip.update(version_ihl=0x46, total_length=ip["total_length"] + 4, header_checksum=0)
    options = bytes([0x94, 0x04, 0x00, 0x00])  # router alert
    header = IPV4.pack(**ip) + options
    ip["header_checksum"] = ipv4_checksum(header)
    header = IPV4.pack(**ip) + options
    return (plain[:IP] + header + plain[UDP_OFFSET:UDP_OFFSET + UDP_HEADER_LENGTH + len(payload)]).ljust(60, b"\0")


def _payload_length(rng) -> int:
    return rng.choice((rng.randint(0, 40), rng.randint(0, 200), rng.randint(0, MAX_UDP_PAYLOAD)))


def rx_cases(rng) -> list[tuple[str, bytes]]:
    """Good and bad frames of every kind the filter checks, shuffled."""
    cases: list[tuple[str, bytes]] = []

    def payload(n=None):
        return rng.randbytes(_payload_length(rng) if n is None else n)

    # Good, every payload length 0..40 (every nbytes and every lane of the end) and the largest.
    for n in list(range(0, 41)) + [MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD - 1, 1400]:
        cases.append(("good", feed_frame(payload(n))))
    for _ in range(40):
        cases.append(("good", feed_frame(payload())))
        cases.append(("good_unicast", feed_frame(payload(), dst_mac=CARD_MAC)))
        # Trailing bytes after the IP datagram (Ethernet padding, or junk a switch left on).
        cases.append(("good_trailer", feed_frame(payload(rng.randint(0, 100))) + rng.randbytes(rng.randint(1, 30))))
        cases.append(("good_udp_checksum", patch_udp(feed_frame(payload()), checksum=rng.randrange(1, 0x10000))))
    for _ in range(12):
        cases.append(("drop_mac", feed_frame(payload(), dst_mac=CARD_MAC ^ (1 << rng.randrange(48)))))
        cases.append(("drop_mac", feed_frame(payload(), dst_mac=multicast_mac(FEED_GROUP ^ (1 << rng.randrange(23))))))
        frame = bytearray(feed_frame(payload()))
        frame[12:14] = rng.choice((0x86DD, 0x0806, 0x8100, 0x0801, 0x0000)).to_bytes(2, "big")
        cases.append(("drop_ethertype", bytes(frame)))
        cases.append(("drop_ip_header", ip_options_frame(payload())))
        cases.append(("drop_ip_header", patch_ip(feed_frame(payload()),
                                                 flags_fragment_offset=IPV4_FLAG_MORE_FRAGMENTS)))
        cases.append(("drop_ip_header", patch_ip(feed_frame(payload()),
                                                 flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT | rng.randint(1, 0x1FFF))))
        cases.append(("drop_ip_header", patch_ip(feed_frame(payload()), protocol=rng.choice((1, 2, 6, 47)))))
        cases.append(("drop_ip_header", patch_ip(feed_frame(payload()), version_ihl=rng.choice((0x44, 0x65, 0x4F)))))
        frame = bytearray(feed_frame(payload()))
        frame[IP + 10 + rng.randrange(2)] ^= 1 << rng.randrange(8)
        cases.append(("drop_checksum", bytes(frame)))
        cases.append(("drop_checksum", patch_ip(feed_frame(payload()), checksum=False, time_to_live=rng.randint(1, 63))))
        cases.append(("drop_ip_destination", patch_ip(feed_frame(payload()),
                                                      destination_address=FEED_GROUP ^ (1 << rng.randrange(32)))))
        cases.append(("drop_ip_destination", feed_frame(payload(), dst_mac=CARD_MAC, dst_ip="10.0.1.2")))
        cases.append(("drop_udp_port", feed_frame(payload(), dst_port=FEED_PORT ^ (1 << rng.randrange(16)))))
        # IP total length longer than the frame (UDP length kept consistent with it).
        frame = feed_frame(payload())
        grow = rng.randint(1, 40)
        ip_total = int.from_bytes(frame[IP + 2:IP + 4], "big")
        grown = ip_total + grow
        if IP + ip_total + grow <= len(frame):   # padded frame: grow past the padding
            grown = len(frame) - IP + rng.randint(1, 8)
        cases.append(("drop_length", patch_udp(patch_ip(frame, total_length=grown), length=grown - 20)))
        # UDP length inconsistent with the IP total length, both ways.
        frame = feed_frame(payload())
        udp_length = int.from_bytes(frame[UDP_OFFSET + 4:UDP_OFFSET + 6], "big")
        cases.append(("drop_length", patch_udp(frame, length=udp_length + rng.choice((-8, -1, 1, 2, 100)))))
        # IP total length below the two headers.
        frame = feed_frame(payload(rng.randint(0, 10)))
        short = rng.randint(20, 27)
        cases.append(("drop_length", patch_udp(patch_ip(frame, total_length=short), length=short - 20)))
    rng.shuffle(cases)
    return cases


@cocotb.test(skip=skip_unless("net_rx"))
async def net_rx_filter(dut):
    """Every kind of good and bad frame, no stalls: payloads and drop counters as the model says."""
    rng = rng_for(SEED, logger, "net_rx_filter")
    tb = NetRxTB(dut)
    await tb.reset()
    for kind, frame in rx_cases(rng):
        await tb.send(frame, kind)
    await tb.drain()
    counters = tb.check()
    tb.log.info("frames by kind: %s", dict(tb.kinds))
    for name in NET_RX_COUNTERS:
        assert counters[name] > 0, f"{name} never counted: the test did not exercise it"
    ends = Counter(len(p) % 8 for p in tb.expected)
    assert set(ends) == set(range(8)), f"payload lengths mod 8: {dict(ends)}"


@cocotb.test(skip=skip_unless("net_rx"))
async def net_rx_backpressure(dut):
    """The same mix with random stalls on both the input and the output stream."""
    rng = rng_for(SEED, logger, "net_rx_backpressure")
    tb = NetRxTB(dut, source_pause=cycle_pause(0.3, seed=SEED), sink_pause=cycle_pause(0.4, seed=SEED + 1))
    await tb.reset()
    for kind, frame in rx_cases(rng):
        await tb.send(frame, kind)
    await tb.drain()
    tb.check()


@cocotb.test(skip=skip_unless("net_rx"))
async def net_rx_latency(dut):
    """Frames back to back, no stalls: payload word j leaves one cycle after frame word 6 + j
    arrives; when the frame ends in word 5 + j, two cycles after that word (NetRx docstring)."""
    rng = rng_for(SEED, logger, "net_rx_latency")
    tb = NetRxTB(dut)
    await tb.reset()
    for n in list(range(0, 40)) + [rng.randint(0, MAX_UDP_PAYLOAD) for _ in range(20)]:
        await tb.send(feed_frame(rng.randbytes(n)), "good")
        if rng.random() < 0.3:
            await ClockCycles(dut.clk, rng.randint(1, 4))
    await tb.drain()
    tb.check()
    lat = tb.latencies()
    normal = [c for c, flush in lat if not flush]
    flush = [c for c, flush in lat if flush]
    tb.log.info("latency frame word 6+j -> payload word j: %s cycles", stats(normal))
    tb.log.info("latency when the frame ends in word 5+j (flush): %s cycles after word 5+j", stats(flush))
    assert set(normal) == {1} and set(flush) == {2}, f"latencies {Counter(lat)}"


# -- NetTx ----------------------------------------------------------------------------------------

class NetTxTB:
    """NetTx between a payload-record source and a packet-stream sink (optional random stalls),
    an input monitor for latency and :class:`~tickwire.sim.model.NetTxModel`."""

    REGISTERS = ("src_mac", "dst_mac", "src_ip", "dst_ip", "src_port", "dst_port")

    def __init__(self, dut, *, source_pause=None, sink_pause=None, registers=None):
        self.dut = dut
        self.log = logging.getLogger("tb_net.net_tx")
        start_clock(dut)
        dut.rst.value = 0
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        dut.o_stream__ready.value = 0
        for name in self.REGISTERS:
            getattr(dut, "regs__" + name).value = 0
        self.registers = RegisterFile(registers)
        self.layout = payload_record_layout(ENTER_ORDER_PACKET_LENGTH)
        self.source = StreamSource(dut, "i_stream__", self.layout, pause=source_pause)
        # Constructed together, so both count the same clock edges.
        self.inputs = StreamMonitor(dut, "i_stream__", self.layout)
        self.sink = StreamSink(dut, "o_stream__", packet_layout(), pause=sink_pause)
        self.model = NetTxModel(self.registers)
        self.expected: list[bytes] = []

    async def reset(self):
        await reset(self.dut)
        for name in self.REGISTERS:
            getattr(self.dut, "regs__" + name).value = self.registers["net_tx." + name]
        await ClockCycles(self.dut.clk, 2)   # the fixed part of the checksum is registered

    async def send(self, payload: bytes):
        self.expected.append(self.model.process(payload))
        await self.source.send([{"data": int.from_bytes(payload, "little"), "length": len(payload)}])

    def packets(self):
        return [p for p in split_packets(self.sink.beats) if p[-1]["last"]]

    async def drain(self, timeout_cycles: int = 50_000):
        await wait_until(self.dut, lambda: len(self.packets()) >= len(self.expected),
                         lambda: f"{len(self.packets())} of {len(self.expected)} frames",
                         timeout_cycles=timeout_cycles, settle=50)

    def check(self):
        packets = split_packets(self.sink.beats)
        assert len(packets) == len(self.expected), \
            f"{len(packets)} frames out, model predicts {len(self.expected)}"
        for k, (beats, want) in enumerate(zip(packets, self.expected)):
            got = packet_bytes(beats)
            assert got == want, f"frame {k} differs:\n got  {got.hex()}\n want {want.hex()}"
            check_packet_framing(k, beats, want)
            header = got[IP:IP + IPV4_HEADER_LENGTH]
            assert ipv4_checksum(header) == 0, f"frame {k}: IPv4 header checksum wrong"
            assert IPV4.unpack(header)["identification"] == k & 0xFFFF, f"frame {k}: identification"
        got = read_counters(self.dut, NET_TX_COUNTERS)
        assert got == self.model.counters, f"counters differ:\n card  {got}\n model {self.model.counters}"
        self.log.info("counters %s", got)
        return got


def _random_registers(rng) -> dict[str, int]:
    return {"net_tx.src_mac": rng.getrandbits(48), "net_tx.dst_mac": rng.getrandbits(48),
            "net_tx.src_ip": rng.getrandbits(32), "net_tx.dst_ip": rng.getrandbits(32),
            "net_tx.src_port": rng.getrandbits(16), "net_tx.dst_port": rng.getrandbits(16)}


@cocotb.test(skip=skip_unless("net_tx"))
async def net_tx_frames(dut):
    """50-byte payloads (SoupBinTCP-framed OUCH orders) with the default registers, no stalls."""
    rng = rng_for(SEED, logger, "net_tx_frames")
    tb = NetTxTB(dut)
    await tb.reset()
    for _ in range(60):
        await tb.send(rng.randbytes(ENTER_ORDER_PACKET_LENGTH))
    await tb.drain()
    tb.check()


@cocotb.test(skip=skip_unless("net_tx"))
async def net_tx_backpressure(dut):
    """50-byte payloads with random stalls on both streams, random addresses and ports."""
    rng = rng_for(SEED, logger, "net_tx_backpressure")
    for round_ in range(3):
        registers = _random_registers(rng)
        tb = NetTxTB(dut, source_pause=cycle_pause(0.3, seed=SEED + round_),
                     sink_pause=cycle_pause(0.5, seed=SEED + 10 + round_), registers=registers)
        await tb.reset()
        for _ in range(80):
            await tb.send(rng.randbytes(ENTER_ORDER_PACKET_LENGTH))
        await tb.drain()
        tb.check()


@cocotb.test(skip=skip_unless("net_tx"))
async def net_tx_lengths(dut):
    """Payloads of every length 1..max_payload, under stalls."""
    rng = rng_for(SEED, logger, "net_tx_lengths")
    tb = NetTxTB(dut, source_pause=cycle_pause(0.2, seed=SEED), sink_pause=cycle_pause(0.3, seed=SEED + 1))
    await tb.reset()
    lengths = list(range(1, ENTER_ORDER_PACKET_LENGTH + 1))
    rng.shuffle(lengths)
    for n in lengths:
        await tb.send(rng.randbytes(n))
    await tb.drain()
    tb.check()


@cocotb.test(skip=skip_unless("net_tx"))
async def net_tx_latency(dut):
    """Cycles from a payload accepted to the first frame word offered, and from the first to
    the last frame word, no stalls."""
    rng = rng_for(SEED, logger, "net_tx_latency")
    tb = NetTxTB(dut)
    await tb.reset()
    first_word, whole = [], []
    for _ in range(10):
        await ClockCycles(dut.clk, 5)
        index = len(tb.sink.beats)
        await tb.send(rng.randbytes(ENTER_ORDER_PACKET_LENGTH))
        await tb.drain()
        first_word.append(tb.sink.cycles[index] - tb.inputs.cycles[-1])
        whole.append(tb.sink.cycles[-1] - tb.sink.cycles[index] + 1)
    tb.check()
    tb.log.info("latency payload accepted -> first frame word: %s cycles", stats(first_word))
    tb.log.info("frame words out back to back: %s cycles per frame", stats(whole))
    assert set(first_word) == {1}
    assert set(whole) == {(UDP_PAYLOAD_OFFSET + ENTER_ORDER_PACKET_LENGTH + 7) // 8}
