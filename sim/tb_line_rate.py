"""Line rate: the densest legal feed (minimum-size ITCH messages, full datagrams, minimum
inter-frame gap) through the market-data path, every message counted."""

from __future__ import annotations

import logging

import cocotb
from cocotb.triggers import RisingEdge
from cocotbext.eth import XgmiiFrame, XgmiiSource

from ..protocols import itch, moldudp64
from ..protocols.net import UDP_PAYLOAD_OFFSET
from .defaults import DEFAULT_REGISTERS
from .feed import feed_frames
from .model import with_fcs
from .tb import market_data_regmap, CsrMaster, XgmiiStartProbe, reset, start_clock, wait_until

logger = logging.getLogger("tb_line_rate")
logger.setLevel(logging.INFO)

#: Standard Ethernet MTU: the largest UDP payload of an unfragmented datagram.
MAX_UDP_PAYLOAD = 1500 - (UDP_PAYLOAD_OFFSET - 14)
IDLE = int.from_bytes(b"\x07" * 8, "little")


def densest_messages(count: int) -> list[bytes]:
    """``count`` System Event messages, the shortest ITCH 5.0 type (12 bytes)."""
    shortest = min(itch.MESSAGES.values(), key=lambda m: m.length)
    return [shortest.pack(stock_locate=0, tracking_number=n & 0xFFFF, timestamp=n, event_code="Q")
            for n in range(count)]


@cocotb.test()
async def densest_feed(dut):
    """Full datagrams of 12-byte messages, back to back at the minimum gap: no frame dropped,
    every message decoded, and the figure of messages per cycle printed."""
    start_clock(dut)
    dut.feed_rx__data.value = IDLE
    dut.feed_rx__ctrl.value = 0xFF
    if hasattr(dut, "feed_rx_b__data"):
        dut.feed_rx_b__data.value = IDLE
        dut.feed_rx_b__ctrl.value = 0xFF
    dut.o_records__ready.value = 1
    source = XgmiiSource(dut.feed_rx__data, dut.feed_rx__ctrl, dut.clk, dut.rst)
    probe = XgmiiStartProbe(dut.clk, dut.feed_rx__data, dut.feed_rx__ctrl)
    csr = CsrMaster(dut, market_data_regmap())
    await reset(dut)
    for name in ("net_rx.mac_address", "net_rx.multicast_group", "net_rx.udp_port"):
        await csr.write(name, DEFAULT_REGISTERS[name])

    per_datagram = (MAX_UDP_PAYLOAD - moldudp64.HEADER_LENGTH) // (itch.MIN_LENGTH + 2)
    frames = 120
    messages = densest_messages(per_datagram * frames)
    wire = feed_frames(messages, {"max_messages": per_datagram, "max_payload": MAX_UDP_PAYLOAD})
    # Full: not one more message fits a 1514-byte frame.
    assert len(wire) == frames and all(1514 - itch.MIN_LENGTH - 2 < len(f) <= 1514 for f in wire), \
        {len(f) for f in wire}

    records = [0]
    first_record = [None]
    last_record = [0]

    async def count_records():
        cycle = 0
        while True:
            await RisingEdge(dut.clk)
            cycle += 1
            if int(dut.o_records__valid.value):
                records[0] += 1
                first_record[0] = first_record[0] or cycle
                last_record[0] = cycle

    cocotb.start_soon(count_records())
    for f in wire:
        await source.send(XgmiiFrame.from_raw_payload(with_fcs(f)))
    await wait_until(dut, lambda: records[0] >= len(messages) and source.empty() and source.idle(),
                     lambda: f"{records[0]} of {len(messages)} records", timeout_cycles=400_000, settle=200)

    counters = {n: await csr.read(n) for n in ("mac_rx.frames_ok", "mac_rx.overflow", "net_rx.frames_accepted",
                                               "moldudp64.messages", "itch.decoded")}
    logger.info("counters %s", counters)
    assert records[0] == len(messages), f"{records[0]} records for {len(messages)} messages"
    assert counters["mac_rx.overflow"] == 0 and counters["mac_rx.frames_ok"] == frames
    assert counters["moldudp64.messages"] == len(messages)
    starts = probe.starts
    gaps = {b - a for a, b in zip(starts, starts[1:])}
    wire_cycles = starts[-1] - starts[0]
    per_cycle = per_datagram * (frames - 1) / wire_cycles
    logger.info("densest feed: %d frames of %d 12-byte messages, frame starts every %s cycles; "
                "%.3f messages/cycle offered and delivered, first record %d cycles after the first start",
                frames, per_datagram, sorted(gaps), per_cycle, first_record[0] - starts[0])
    # The decoder takes one message per cycle at most; the wire offers fewer, so nothing queues up
    # beyond one frame: the output finishes within a frame time of the input.
    frame_cycles = max(gaps)
    assert last_record[0] - starts[-1] <= 2 * frame_cycles, (last_record[0], starts[-1])
    (open(_figure_path(), "w")).write(f"{per_cycle:.4f} {per_datagram} {frames} {wire_cycles}\n")


def _figure_path():
    import os
    return os.environ.get("TICKWIRE_LINE_RATE_OUT", "line_rate.txt")


@cocotb.test()
async def message_latency(dut):
    """Cycles from the MAC passing on the word that holds a message's last byte to that message's
    decoded record, for messages ending in every lane (frames spaced out, output always ready)."""
    import random
    from ..hdl.packet import packet_layout
    from .tb import StreamMonitor, stats
    start_clock(dut)
    for port in ("feed_rx", "feed_rx_b"):
        if hasattr(dut, port + "__data"):
            getattr(dut, port + "__data").value = IDLE
            getattr(dut, port + "__ctrl").value = 0xFF
    dut.o_records__ready.value = 1
    source = XgmiiSource(dut.feed_rx__data, dut.feed_rx__ctrl, dut.clk, dut.rst)
    csr = CsrMaster(dut, market_data_regmap())
    await reset(dut)
    for name in ("net_rx.mac_address", "net_rx.multicast_group", "net_rx.udp_port"):
        await csr.write(name, DEFAULT_REGISTERS[name])
    mac_out = StreamMonitor(dut.path.mac_rx, "o_stream__", packet_layout(), clk=dut.clk)
    rec_cycles: list[int] = []

    async def watch_records():
        cycle = 0  # counts the same edges as mac_out: both start before the next edge
        while True:
            await RisingEdge(dut.clk)
            cycle += 1
            if int(dut.o_records__valid.value):
                rec_cycles.append(cycle)

    cocotb.start_soon(watch_records())
    rng = random.Random(5)
    types = list(itch.MESSAGES.values())
    ends = []   # (frame index, word index of the message's last byte)
    sequence = 1
    frames = []
    for f in range(40):
        msgs = []
        for _ in range(rng.randint(1, 6)):
            m = rng.choice(types)
            msgs.append(m.pack())
        pos = UDP_PAYLOAD_OFFSET + moldudp64.HEADER_LENGTH
        for m in msgs:
            pos += 2 + len(m)
            ends.append((f, (pos - 1) // 8))
        frames += feed_frames(msgs, {"first_sequence": sequence})
        sequence += len(msgs)
    for frame in frames:
        await source.send(XgmiiFrame.from_raw_payload(with_fcs(frame)))
        await wait_until(dut, lambda: source.empty() and source.idle(), lambda: "frame sent", settle=300)
    await wait_until(dut, lambda: len(rec_cycles) >= len(ends), lambda: f"{len(rec_cycles)} of {len(ends)} records",
                     timeout_cycles=20_000, settle=50)
    assert len(rec_cycles) == len(ends)
    # The cycle each MAC output word was taken, per frame.
    words, current = [], []
    for beat, cycle in zip(mac_out.beats, mac_out.cycles):
        current.append(cycle)
        if beat["last"]:
            words.append(current)
            current = []
    latency = [rec - words[f][w] for rec, (f, w) in zip(rec_cycles, ends)]
    logger.info("message latency after the MAC: %s cycles", stats(latency))
    (open(_figure_path(), "w")).write(f"{min(latency)} {max(latency)}\n")
    assert max(latency) <= 4, f"latency after the MAC {stats(latency)}, goal at most 4 cycles"
