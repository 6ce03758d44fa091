"""cocotb bench of :mod:`tickwire.hdl.market_data` (``MarketDataTop``): A/B line arbitration and
gap recovery through the injection port.

Both feed lines carry the same MoldUDP64 datagrams (line B to its own group), one datagram per
time slot, slots far enough apart that each slot's copies are through the sequencer before the
next slot's arrive: the order the sequencer takes datagrams in is the order they were sent, and
:class:`~tickwire.sim.model.MarketDataModel` is fed in that order after the run. Every record
(sequence number, type), every gap event and every counter is compared with it; each test also
states its own property (exactly once, in order, no gap, ...).

``TICKWIRE_RANDOM_SEED`` overrides the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cocotb
from cocotb.triggers import RisingEdge
from cocotbext.eth import XgmiiFrame, XgmiiSource

from ..hdl.itch import record_layout
from ..hdl.moldudp64 import gap_layout
from ..hdl.packet import packet_layout
from ..protocols import itch, moldudp64
from .defaults import DEFAULT_FEED, DEFAULT_REGISTERS, FEED_GROUP_B
from .feed import frames as udp_frames
from .model import MARKET_DATA_COUNTER_NAMES, GapEvent, MarketDataModel, with_fcs
from .tb import (market_data_regmap, CsrMaster, StreamSink, StreamSource, bench_seed, cycle_pause, packet_beats, reset,
                 rng_for, start_clock, wait_until)

logger = logging.getLogger("tb_market_data")
logger.setLevel(logging.INFO)

SEED = bench_seed(31)
IDLE = int.from_bytes(b"\x07" * 8, "little")
#: Cycles per time slot. A slot's frames (at most 6 Add Orders a datagram, under 45 cycles on
#: the wire) are through both MACs, the arbiter and the sequencer about 85 cycles after they
#: start (one copy) or 125 (two copies in step).
SLOT = 400
#: Where in its slot each source sends (cycles): line A at the start, line B at the start or a
#: quarter slot later (skewed), an injection in the middle: 100 cycles or more apart.
INJECT_AT = SLOT // 2
SKEW_B = SLOT + SLOT // 4
MESSAGES_PER_DATAGRAM = 6
SESSION = DEFAULT_FEED["session"].encode()
NET_RX_REGISTERS = ("mac_address", "multicast_group", "udp_port")


def add_order(sequence: int) -> bytes:
    """An Add Order whose order reference number is its MoldUDP64 sequence number."""
    return itch.pack("A", stock_locate=1, tracking_number=sequence & 0xFFFF, timestamp=34_200_000_000_000 + sequence,
                     order_reference_number=sequence, buy_sell_indicator="B", shares=100, stock="AAPL",
                     price=150_0000 + sequence)


@dataclass
class Feed:
    """One feed: its datagrams (payloads), their first sequence numbers and their frames on each
    line (no FCS), and every message by sequence number (the retransmission server's store)."""

    payloads: list[bytes]
    firsts: list[int]
    frames: dict[str, list[bytes]]
    messages: dict[int, bytes]

    @classmethod
    def build(cls, rng, datagrams: int) -> "Feed":
        payloads, firsts, messages = [], [], {}
        sequence = 1
        for _ in range(datagrams):
            batch = [add_order(sequence + i) for i in range(rng.randint(1, MESSAGES_PER_DATAGRAM))]
            messages.update({sequence + i: m for i, m in enumerate(batch)})
            payloads.append(moldudp64.pack(SESSION, sequence, batch))
            firsts.append(sequence)
            sequence += len(batch)
        cfg = DEFAULT_FEED
        common = dict(src_mac=cfg["src_mac"], src_ip=cfg["src_ip"], src_port=cfg["src_port"],
                      dst_port=DEFAULT_REGISTERS["net_rx.udp_port"])
        lines = {"a": udp_frames(payloads, dst_ip=DEFAULT_REGISTERS["net_rx.multicast_group"], **common),
                 "b": udp_frames(payloads, dst_ip=FEED_GROUP_B, **common)}
        return cls(payloads, firsts, lines, messages)

    @property
    def total(self) -> int:
        return len(self.messages)

    def retransmission(self, first: int, count: int, per_datagram: int = 3) -> list[bytes]:
        """What a MoldUDP64 retransmission server answers for (first, count): the messages again,
        ``per_datagram`` to a datagram."""
        out = []
        for start in range(first, first + count, per_datagram):
            n = min(per_datagram, first + count - start)
            out.append(moldudp64.pack(SESSION, start, [self.messages[s] for s in range(start, start + n)]))
        return out


class MarketDataTB:
    """MarketDataTop with an XGMII source per feed line, a packet source on the injection port,
    sinks on the records and the gap events, the register bus and a cycle counter."""

    def __init__(self, dut):
        self.dut = dut
        self.log = logging.getLogger("tb_market_data.tb")
        start_clock(dut)
        for line in ("feed_rx", "feed_rx_b"):
            getattr(dut, f"{line}__data").value = IDLE
            getattr(dut, f"{line}__ctrl").value = 0xFF
        dut.i_inject__payload.value = 0
        self.sources = {"a": XgmiiSource(dut.feed_rx__data, dut.feed_rx__ctrl, dut.clk, dut.rst),
                        "b": XgmiiSource(dut.feed_rx_b__data, dut.feed_rx_b__ctrl, dut.clk, dut.rst)}
        for source in self.sources.values():
            source.log.setLevel(logging.WARNING)
        self.inject = StreamSource(dut, "i_inject__", packet_layout(), pause=cycle_pause(0.3, seed=SEED))
        self.records = StreamSink(dut, "o_records__", record_layout)
        self.gaps = StreamSink(dut, "o_gap__", gap_layout, always_ready=True)
        self.csr = CsrMaster(dut, market_data_regmap())
        self.model = MarketDataModel(DEFAULT_REGISTERS)
        self.cycle = 0
        #: What the sequencer is sent, in time order: (cycle, index, kind, line, bytes, bad FCS).
        self.events: list[tuple[int, int, str, str, bytes, bool]] = []
        self.busy = 0

    async def _count(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def start(self):
        cocotb.start_soon(self._count())
        await reset(self.dut)
        for stage in ("net_rx", "net_rx_b"):
            for name in NET_RX_REGISTERS:
                await self.csr.write(f"{stage}.{name}", DEFAULT_REGISTERS[f"{stage}.{name}"])
        self.base = self.cycle + 8

    async def wait_cycle(self, cycle: int):
        while self.cycle < cycle:
            await RisingEdge(self.dut.clk)

    def _event(self, kind: str, line: str, data: bytes, bad: bool = False):
        self.events.append((self.cycle, len(self.events), kind, line, data, bad))

    async def play_line(self, line: str, schedule: list[tuple[int, bytes, bool]]):
        """Send ``(slot cycle, frame, bad FCS)`` frames on feed ``line``, each at its cycle."""
        self.busy += 1
        for cycle, frame, bad in schedule:
            await self.wait_cycle(self.base + cycle)
            raw = bytearray(with_fcs(frame))
            if bad:
                raw[-1] ^= 0xFF
            self._event("frame", line, bytes(raw), bad)
            await self.sources[line].send(XgmiiFrame.from_raw_payload(bytes(raw)))
        self.busy -= 1

    async def inject_datagrams(self, payloads: list[bytes]):
        """The host's injection port: each payload a packet, back to back."""
        for p in payloads:
            self._event("inject", "", p)
            await self.inject.send(packet_beats(p))

    async def settle(self, total: int, slots: int):
        """Wait for ``total`` records and every source done, at most ``slots`` slots and a few."""
        await wait_until(self.dut, lambda: len(self.records.beats) >= total and not self.busy and
                         all(s.empty() and s.idle() for s in self.sources.values()),
                         lambda: f"{len(self.records.beats)} of {total} records",
                         timeout_cycles=(slots + 10) * SLOT, settle=2 * SLOT)

    def run_model(self) -> list[tuple[int, str]]:
        """The model fed every event in time order: the (sequence number, type) of each record."""
        out = []
        for _, _, kind, line, data, _ in sorted(self.events):
            delivered = self.model.inject(data) if kind == "inject" else self.model.receive(data, line=line)
            out += [(d.sequence_number, chr(d.message[0])) for d, record in delivered if record is not None]
        return out

    async def check(self) -> tuple[list[int], dict[str, int]]:
        """Records, gap events and counters as the model predicts; returns the sequence numbers
        out, in order, and the counters."""
        want = self.run_model()
        got = [(b["sequence_number"], chr(b["message_type"])) for b in self.records.beats]
        assert got == want, "records differ from the model:\n" + "\n".join(
            f" {k}: got {g} want {w}" for k, (g, w) in enumerate(zip(got, want)) if g != w)[:2000] + \
            f"\n ({len(got)} out, {len(want)} predicted)"
        gaps = [GapEvent(b["session"].to_bytes(10, "little"), b["sequence_number"], b["message_count"])
                for b in self.gaps.beats]
        assert gaps == self.model.gap_events, f"gap events:\n card  {gaps}\n model {self.model.gap_events}"
        counters = await self.csr.read_counters(MARKET_DATA_COUNTER_NAMES)
        model = self.model.counters
        diffs = {n: (counters[n], model[n]) for n in MARKET_DATA_COUNTER_NAMES if counters[n] != model[n]}
        assert not diffs, f"counters (card, model) differ: {diffs}"
        self.log.info("%d records, %d gap events; counters %s", len(got), len(gaps),
                      {n: v for n, v in counters.items() if v})
        return [s for s, _ in got], counters


def drop_plan(rng, datagrams: int, p_drop: float, *, both=()) -> dict[int, dict[str, str | None]]:
    """For each datagram and line: None (sent), "lost" (never arrives) or "bad_fcs" (arrives
    corrupted). A datagram is dropped on at most one line, except those in ``both``; the first
    arrives on both (the first datagram the sequencer sees sets where the feed starts)."""
    plan = {}
    for k in range(datagrams):
        fate = {"a": None, "b": None}
        if k == 0:
            pass
        elif k in both:
            fate = {"a": rng.choice(("lost", "bad_fcs")), "b": rng.choice(("lost", "bad_fcs"))}
        elif rng.random() < p_drop:
            fate[rng.choice("ab")] = rng.choice(("lost", "bad_fcs"))
        plan[k] = fate
    return plan


def schedules(feed: Feed, plan, skew_b: int) -> dict[str, list[tuple[int, bytes, bool]]]:
    out: dict[str, list[tuple[int, bytes, bool]]] = {"a": [], "b": []}
    for k, fate in plan.items():
        for line, offset in (("a", 0), ("b", skew_b)):
            if fate[line] != "lost":
                out[line].append((k * SLOT + offset, feed.frames[line][k], fate[line] == "bad_fcs"))
    return out


async def play(tb: MarketDataTB, feed: Feed, plan, skew_b: int = 0):
    lines = schedules(feed, plan, skew_b)
    return [cocotb.start_soon(tb.play_line(line, lines[line])) for line in ("a", "b")]


@cocotb.test()
async def ab_lines_in_step(dut):
    """The same feed on both lines, in step, each datagram lost or corrupted on at most one line:
    every message exactly once and in order, no gap, the second copies counted as duplicates."""
    rng = rng_for(SEED, logger, "ab_lines_in_step")
    tb = MarketDataTB(dut)
    await tb.start()
    feed = Feed.build(rng, 100)
    plan = drop_plan(rng, len(feed.payloads), 0.4)
    await play(tb, feed, plan)
    await tb.settle(feed.total, len(feed.payloads))
    sequences, counters = await tb.check()
    assert sequences == list(range(1, feed.total + 1))
    twice = [k for k, fate in plan.items() if fate == {"a": None, "b": None}]
    assert counters["moldudp64.gaps"] == 0 and not tb.gaps.beats
    assert counters["moldudp64.late_datagrams"] == len(twice)
    assert counters["moldudp64.duplicates"] == sum(len(moldudp64.unpack(feed.payloads[k])[1]) for k in twice)
    assert counters["mac_rx.bad_fcs"] > 0 and counters["mac_rx_b.bad_fcs"] > 0
    assert counters["net_rx.frames_accepted"] < len(feed.payloads) > counters["net_rx_b.frames_accepted"]


@cocotb.test()
async def ab_lines_skewed(dut):
    """Line B a slot and a quarter behind line A, drops on either line (never both): a datagram
    lost on A is reported as a gap when A's next one overtakes it, then B's copy fills the gap
    (delivered late, once); at the end every message was delivered exactly once, no gap is left
    open, and the host had nothing to do."""
    rng = rng_for(SEED, logger, "ab_lines_skewed")
    tb = MarketDataTB(dut)
    await tb.start()
    feed = Feed.build(rng, 100)
    plan = drop_plan(rng, len(feed.payloads), 0.4)
    await play(tb, feed, plan, skew_b=SKEW_B)
    await tb.settle(feed.total, len(feed.payloads))
    sequences, counters = await tb.check()
    assert sorted(sequences) == list(range(1, feed.total + 1)), "not every message exactly once"
    assert sequences != sorted(sequences), "no message was filled in late: the test missed its point"
    assert counters["moldudp64.gaps"] > 0 and counters["moldudp64.recovered"] > 0
    assert counters["moldudp64.open_gaps"] == 0 and counters["moldudp64.gaps_abandoned"] == 0


@cocotb.test()
async def gap_recovered_by_injection(dut):
    """Datagrams lost on both lines (one alone, two in a row, one near the end): each loss is
    one gap event naming the missing range; the host answers it, two slots later, by injecting
    the retransmission (three messages a datagram) while the live feed goes on; the missing
    messages are delivered once each, in order among themselves, and the gaps close."""
    rng = rng_for(SEED, logger, "gap_recovered_by_injection")
    tb = MarketDataTB(dut)
    await tb.start()
    feed = Feed.build(rng, 60)
    lost = {10, 25, 26, 55}
    plan = drop_plan(rng, len(feed.payloads), 0.3, both=lost)
    injected: list[GapEvent] = []

    async def host():
        """Answers each gap event with the retransmission, at the middle of the slot two slots on."""
        seen = 0
        while True:
            while len(tb.gaps.beats) == seen:
                await RisingEdge(dut.clk)
            beat = tb.gaps.beats[seen]
            seen += 1
            event = GapEvent(beat["session"].to_bytes(10, "little"), beat["sequence_number"], beat["message_count"])
            slot = (tb.cycle - tb.base) // SLOT
            await tb.wait_cycle(tb.base + (slot + 2) * SLOT + INJECT_AT)
            injected.append(event)
            tb.busy += 1
            await tb.inject_datagrams(feed.retransmission(event.sequence_number, event.message_count))
            tb.busy -= 1

    cocotb.start_soon(host())
    await play(tb, feed, plan)
    await tb.settle(feed.total, len(feed.payloads))
    sequences, counters = await tb.check()
    assert sorted(sequences) == list(range(1, feed.total + 1)), "not every message exactly once"

    def span(first_k, last_k):
        first = feed.firsts[first_k]
        end = feed.firsts[last_k + 1] if last_k + 1 < len(feed.firsts) else feed.total + 1
        return GapEvent(SESSION, first, end - first)

    assert injected == [span(10, 10), span(25, 26), span(55, 55)], injected
    assert counters["moldudp64.recovered"] == sum(e.message_count for e in injected)
    assert counters["moldudp64.open_gaps"] == 0
    for event in injected:  # the filled range comes out in order, after later live messages
        missing = list(range(event.sequence_number, event.sequence_number + event.message_count))
        at = sequences.index(missing[0])
        assert sequences[at:at + len(missing)] == missing
        assert max(sequences[:at]) > missing[-1]
