"""cocotb bench of :mod:`tickwire.hdl.moldudp64`: MoldUDP64 payloads in, sequenced messages and
gap events out, every message (with its ``recovered`` flag), every gap event and every counter
checked against :class:`~tickwire.sim.model.MoldUdp64Model`.

``TICKWIRE_RANDOM_SEED`` overrides the seed.
"""

from __future__ import annotations

import logging
from collections import Counter

import cocotb

from ..hdl.moldudp64 import gap_layout, message_layout
from ..hdl.packet import packet_layout
from ..protocols import itch, moldudp64
from .model import MOLDUDP64_COUNTERS, Delivered, GapEvent, MoldUdp64Model
from .tb import (bench_seed, read_counters, rng_for, stats, wait_until,
                 StreamMonitor, StreamSink, StreamSource, cycle_pause, packet_beats, reset,
                 start_clock)

logger = logging.getLogger("tb_moldudp64")
logger.setLevel(logging.INFO)

SEED = bench_seed(17)
#: Largest UDP payload of a 1514-byte frame.
MAX_PAYLOAD = 1472
SESSIONS = (b"TICKWIRE01", b"TICKWIRE02", b"NASDAQ0001")
#: ITCH 5.0 type letters, so the messages look like ITCH (the stage does not read them).
TYPES = b"SRHYLVWKJhAFECXDUPQBINO"


def message(rng, length: int | None = None) -> bytes:
    """A message of ``length`` (default random 12..50) bytes: an ITCH type letter, then random bytes."""
    n = rng.randint(itch.MIN_LENGTH, itch.MAX_LENGTH) if length is None else length
    return bytes([rng.choice(TYPES)]) + rng.randbytes(n - 1)


def block_ends(payload: bytes) -> list[int]:
    """Offset of the last byte of each whole message block of a well-formed datagram."""
    ends, pos = [], moldudp64.HEADER_LENGTH
    while pos + 2 <= len(payload):
        end = pos + 2 + int.from_bytes(payload[pos:pos + 2], "big")
        if end > len(payload):
            break
        ends.append(end - 1)
        pos = end
    return ends


def header(session: bytes, sequence: int, count: int) -> bytes:
    return moldudp64.HEADER.pack(session=session, sequence_number=sequence, message_count=count)


class MoldUdp64TB:
    """MoldUdp64 between a packet-stream source and a message sink (each with optional random
    stalls), a gap-event sink, an input monitor (stalls, latency) and
    :class:`~tickwire.sim.model.MoldUdp64Model`."""

    def __init__(self, dut, *, source_pause=None, sink_pause=None):
        self.dut = dut
        self.log = logging.getLogger("tb_moldudp64.tb")
        start_clock(dut)
        dut.rst.value = 0
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        dut.o_stream__ready.value = 0
        self.layout = message_layout(itch.MAX_LENGTH)
        self.source = StreamSource(dut, "i_stream__", packet_layout(), pause=source_pause)
        # Constructed together, so both count the same clock edges.
        self.inputs = StreamMonitor(dut, "i_stream__", packet_layout())
        self.sink = StreamSink(dut, "o_stream__", self.layout, pause=sink_pause)
        self.gaps = StreamSink(dut, "o_gap__", gap_layout, always_ready=True)
        self.model = MoldUdp64Model()
        self.expected: list[Delivered] = []
        self.peaks: Counter = Counter()   # the largest value each counter showed at a check
        self.owners: list[tuple[int, int]] = []   # (datagram index, offset of the message's last byte)
        self.kinds: Counter = Counter()
        self.datagrams = 0

    async def reset(self):
        await reset(self.dut)

    async def send(self, payload: bytes, kind: str = ""):
        delivered = self.model.process_datagram(payload)
        # Map delivered messages to their datagram offsets (for latency), by sequence number.
        if delivered:
            first = moldudp64.HEADER.unpack(payload)["sequence_number"]
            ends = block_ends(payload)
            for d in delivered:
                self.owners.append((self.datagrams, ends[d.sequence_number - first]))
        self.expected += delivered
        self.kinds[kind] += 1
        self.datagrams += 1
        if payload:
            beats = packet_beats(payload)
        else:  # an empty UDP payload, as NetRx passes it on: one beat, no bytes
            beats = [{"data": 0, "nbytes": 0, "last": 1, "length": 0}]
        await self.source.send(beats)

    async def settle(self, timeout_cycles: int = 50_000, extra: int = 4):
        """Wait until every beat is in and every expected message is out, then ``extra`` cycles."""
        await wait_until(self.dut,
                         lambda: len(self.sink.beats) >= len(self.expected) and not int(self.source.valid.value),
                         lambda: f"{len(self.sink.beats)} of {len(self.expected)} messages",
                         timeout_cycles=timeout_cycles, settle=extra)

    def counters(self) -> dict[str, int]:
        return read_counters(self.dut, MOLDUDP64_COUNTERS)

    def check_counters(self, where: str = "") -> dict[str, int]:
        got = self.counters()
        assert got == self.model.counters, \
            f"counters differ {where}:\n card  {got}\n model {self.model.counters}"
        for name, value in got.items():
            self.peaks[name] = max(self.peaks[name], value)
        return got

    def gap_events(self) -> list[GapEvent]:
        return [GapEvent(b["session"].to_bytes(10, "little"), b["sequence_number"], b["message_count"])
                for b in self.gaps.beats]

    def check(self) -> dict[str, int]:
        got_messages = self.sink.beats
        assert len(got_messages) == len(self.expected), \
            f"{len(got_messages)} messages out, model predicts {len(self.expected)}"
        for k, (beat, (sequence, want, recovered)) in enumerate(zip(got_messages, self.expected)):
            data = beat["data"].to_bytes(itch.MAX_LENGTH, "little")[:beat["length"]]
            got = (beat["sequence_number"], beat["length"], data, beat["recovered"])
            assert got == (sequence, len(want), want, recovered), \
                f"message {k}:\n got  {got[0]} {got[1]} {got[2].hex()} recovered={got[3]}\n" \
                f" want {sequence} {len(want)} {want.hex()} recovered={int(recovered)}"
        assert self.gap_events() == self.model.gap_events, \
            f"gap events:\n card  {self.gap_events()}\n model {self.model.gap_events}"
        counters = self.check_counters("at the end")
        self.log.info("counters %s", counters)
        return counters


def scenario(rng, steps: int) -> list[tuple[str, bytes]]:
    """Datagrams of one feed with every event the contract names: message runs of random sizes,
    heartbeats (in sequence and past a gap), end of session, gaps, whole and partial resends,
    retransmissions that fill gaps (in order, starting inside a gap, running past a gap's end),
    session changes, truncated datagrams, block lengths below 12, fewer/more blocks than the
    count, trailing bytes, payloads shorter than the header."""
    session = SESSIONS[0]
    sequence = 1
    history: list[bytes] = []
    missing: list[list[int]] = []   # [next, end) of the ranges skipped on purpose, not yet resent
    out: list[tuple[str, bytes]] = []

    def run(first: int, count: int | None = None, sizes=None) -> bytes:
        msgs, size = [], moldudp64.HEADER_LENGTH
        limit = rng.randint(1, 60) if count is None else count
        while len(msgs) < limit:
            m = message(rng, None if sizes is None else rng.choice(sizes))
            if size + 2 + len(m) > MAX_PAYLOAD:
                break
            msgs.append(m)
            size += 2 + len(m)
        return moldudp64.pack(session, first, msgs)

    def count_of(payload: bytes) -> int:
        return moldudp64.HEADER.unpack(payload)["message_count"]

    kinds = {"data": 30, "gap": 6, "heartbeat": 4, "heartbeat_gap": 3, "end_of_session": 2,
             "duplicate": 5, "overlap": 5, "session_change": 2, "truncated": 5, "block_short": 4,
             "count_high": 3, "count_low": 3, "trailer": 3, "short_payload": 4,
             "fill": 7, "fill_inside": 2, "fill_past": 2}
    names = list(kinds)
    for _ in range(steps):
        kind = rng.choices(names, weights=[kinds[n] for n in names])[0]
        if kind.startswith("fill"):
            if not missing:
                continue
            gap = rng.choice(missing[-6:])
            left = gap[1] - gap[0]
            if kind == "fill":                      # the next missing messages, in order
                p = run(gap[0], count=rng.randint(1, left))
                gap[0] += count_of(p)
            elif kind == "fill_inside" and left >= 2:  # starts past the next missing one
                start = gap[0] + rng.randint(1, left - 1)
                p = run(start, count=rng.randint(1, gap[1] - start))
            else:                                   # the rest of the gap and beyond
                p = run(gap[0], count=left + rng.randint(1, 5))
                gap[0] = gap[1]
            if gap[0] >= gap[1]:
                missing.remove(gap)
        elif kind in ("data", "gap", "trailer"):
            if kind == "gap":
                skip = rng.randint(1, 20)
                missing.append([sequence, sequence + skip])
                sequence += skip
            p = run(sequence)
            sequence += count_of(p)
            history.append(p)
            if kind == "trailer":
                p += rng.randbytes(rng.randint(1, 20))
        elif kind == "heartbeat":
            p = header(session, sequence, moldudp64.HEARTBEAT_COUNT)
        elif kind == "heartbeat_gap":
            skip = rng.randint(1, 9)
            missing.append([sequence, sequence + skip])
            sequence += skip
            p = header(session, sequence, moldudp64.HEARTBEAT_COUNT)
        elif kind == "end_of_session":
            p = header(session, sequence, moldudp64.END_OF_SESSION_COUNT)
        elif kind == "duplicate":
            if not history:
                continue
            p = rng.choice(history[-6:])
        elif kind == "overlap":
            start = max(1, sequence - rng.randint(1, 5))
            p = run(start)
            sequence = max(sequence, start + count_of(p))
        elif kind == "session_change":
            session = rng.choice([s for s in SESSIONS if s != session])
            sequence = rng.choice((1, rng.randint(1, 1000), (1 << 40) + rng.randint(0, 1 << 20)))
            history.clear()
            missing.clear()
            p = run(sequence)
            sequence += count_of(p)
            history.append(p)
        elif kind == "truncated":
            p = run(sequence)
            sequence += count_of(p)
            cut = rng.randint(moldudp64.HEADER_LENGTH, len(p) - 1)
            p = p[:cut]
        elif kind == "block_short":
            p = bytearray(run(sequence, count=rng.randint(1, 30)))
            sequence += count_of(bytes(p))
            starts = [moldudp64.HEADER_LENGTH] + [e + 1 for e in block_ends(bytes(p))][:-1]
            at = rng.choice(starts)
            p[at:at + 2] = rng.randint(0, itch.MIN_LENGTH - 1).to_bytes(2, "big")
            p = bytes(p)
        elif kind == "count_high":
            p = bytearray(run(sequence))
            sequence += count_of(bytes(p))
            p[18:20] = (count_of(bytes(p)) + rng.randint(1, 3)).to_bytes(2, "big")
            if rng.random() < 0.5:
                p += b"\x00"  # one byte of a length field
            p = bytes(p)
        elif kind == "count_low":
            p = bytearray(run(sequence, count=rng.randint(2, 30)))
            n = count_of(bytes(p))
            low = rng.randint(1, max(1, n - 1))
            p[18:20] = low.to_bytes(2, "big")
            sequence += low
            p = bytes(p)
        elif kind == "short_payload":
            n = rng.randint(0, moldudp64.HEADER_LENGTH - 1)
            p = header(session, sequence, rng.randint(0, 3))[:n]
        else:
            raise AssertionError(kind)
        out.append((kind, p))
    return out


def _lane_coverage(datagrams) -> Counter:
    return Counter(end % 8 for _, p in datagrams for end in block_ends(p))


@cocotb.test()
async def moldudp64_sequencing(dut):
    """A scenario with every event, one datagram at a time, no stalls: after each datagram every
    counter equals the model's; every message as the model delivers it."""
    rng = rng_for(SEED, logger, "moldudp64_sequencing")
    tb = MoldUdp64TB(dut)
    await tb.reset()
    tb.check_counters("after reset")
    datagrams = [("short_payload", b""), ("heartbeat", header(SESSIONS[0], 5, 0))] + scenario(rng, 260)
    for index, (kind, payload) in enumerate(datagrams):
        await tb.send(payload, kind)
        await tb.settle()
        tb.check_counters(f"after datagram {index} ({kind}, {len(payload)} bytes)")
    counters = tb.check()
    tb.log.info("datagrams by kind: %s", dict(tb.kinds))
    lanes = _lane_coverage(datagrams)
    tb.log.info("message blocks by lane of their last byte: %s", dict(sorted(lanes.items())))
    assert set(lanes) == set(range(8))
    tb.log.info("gap events: %d, messages recovered: %d", len(tb.model.gap_events), counters["moldudp64.recovered"])
    for name in MOLDUDP64_COUNTERS:
        assert tb.peaks[name] > 0, f"{name} never counted: the test did not exercise it"
    assert tb.peaks["moldudp64.open_gaps"] == tb.model.max_open_gaps
    assert any(d.recovered for d in tb.expected) and any(not d.recovered for d in tb.expected)


@cocotb.test()
async def moldudp64_gap_fill(dut):
    """The gap rules step by step, with the numbers written out: a gap is reported and kept
    open, filled in order (a retransmission starting inside the gap fills nothing), closed;
    more open gaps than the table holds abandon the oldest; a new session abandons the rest."""
    rng = rng_for(SEED, logger, "moldudp64_gap_fill")
    tb = MoldUdp64TB(dut)
    await tb.reset()
    s0, s1 = SESSIONS[0], SESSIONS[1]

    def msgs(n):
        return [message(rng) for _ in range(n)]

    async def step(payload, **want):
        await tb.send(payload)
        await tb.settle()
        got = tb.check_counters()
        for name, value in want.items():
            assert got[f"moldudp64.{name}"] == value, f"moldudp64.{name} = {got[f'moldudp64.{name}']}, want {value}"

    await step(moldudp64.pack(s0, 1, msgs(10)), messages=10, expected_sequence=11)
    await step(moldudp64.pack(s0, 21, msgs(10)), messages=20, gaps=1, last_gap_first=11,
               last_gap_count=10, open_gaps=1, expected_sequence=31)
    await step(moldudp64.pack(s0, 11, msgs(5)), messages=25, recovered=5, open_gaps=1)
    await step(moldudp64.pack(s0, 17, msgs(4)), messages=25, duplicates=4, late_datagrams=1, open_gaps=1)
    await step(moldudp64.pack(s0, 16, msgs(10)), messages=30, recovered=10, duplicates=9, open_gaps=0)
    # Five one-message gaps (31, 33, 35, 37, 39): the table holds four, 31 is abandoned.
    for k in range(5):
        await step(moldudp64.pack(s0, 32 + 2 * k, msgs(1)), gaps=2 + k)
    await step(moldudp64.pack(s0, 31, msgs(1)), gaps_abandoned=1, open_gaps=4, duplicates=10)
    await step(moldudp64.pack(s0, 35, msgs(1)), recovered=11, open_gaps=3)
    # A heartbeat past the live edge opens a gap too.
    await step(header(s0, 45, moldudp64.HEARTBEAT_COUNT), gaps=7, last_gap_first=41, last_gap_count=4,
               open_gaps=4, expected_sequence=45)
    await step(moldudp64.pack(s1, 1, msgs(3)), session_changes=1, gaps_abandoned=5, open_gaps=0)
    await step(moldudp64.pack(s0, 33, msgs(1)), session_changes=2, messages=40)
    tb.check()
    assert [(e.session, e.sequence_number, e.message_count) for e in tb.gap_events()] == [
        (s0, 11, 10), (s0, 31, 1), (s0, 33, 1), (s0, 35, 1), (s0, 37, 1), (s0, 39, 1), (s0, 41, 4)]
    assert [d.sequence_number for d in tb.expected if d.recovered] == list(range(11, 21)) + [35]


@cocotb.test()
async def moldudp64_backpressure(dut):
    """Another scenario sent back to back with random stalls on the input and the output."""
    rng = rng_for(SEED, logger, "moldudp64_backpressure")
    rng.random()  # a different draw from moldudp64_sequencing
    tb = MoldUdp64TB(dut, source_pause=cycle_pause(0.2, seed=SEED), sink_pause=cycle_pause(0.5, seed=SEED + 1))
    await tb.reset()
    for kind, payload in scenario(rng, 300):
        await tb.send(payload, kind)
    await tb.settle()
    tb.check()


@cocotb.test()
async def moldudp64_densest(dut):
    """12-byte messages back to back in full datagrams, no input gaps and no backpressure: every
    message comes out and i_stream.ready never drops."""
    rng = rng_for(SEED, logger, "moldudp64_densest")
    tb = MoldUdp64TB(dut)
    await tb.reset()
    per_datagram = (MAX_PAYLOAD - moldudp64.HEADER_LENGTH) // (2 + itch.MIN_LENGTH)
    sequence = 1
    for _ in range(8):
        msgs = [message(rng, itch.MIN_LENGTH) for _ in range(per_datagram)]
        await tb.send(moldudp64.pack(SESSIONS[0], sequence, msgs), "data")
        sequence += len(msgs)
    await tb.settle()
    tb.check()
    assert len(tb.sink.beats) == 8 * per_datagram
    assert tb.inputs.stalls == 0, f"i_stream.ready low for {tb.inputs.stalls} cycles with valid high"
    cycles = tb.sink.cycles[-1] - tb.inputs.cycles[0] + 1
    tb.log.info("%d messages of 12 bytes in %d cycles (%d input words): %.3f messages per cycle",
                len(tb.sink.beats), cycles, len(tb.inputs.beats), len(tb.sink.beats) / cycles)


@cocotb.test()
async def moldudp64_latency(dut):
    """No stalls: each message leaves one cycle after the word holding its last byte arrives."""
    rng = rng_for(SEED, logger, "moldudp64_latency")
    tb = MoldUdp64TB(dut)
    await tb.reset()
    sequence = 1
    for _ in range(20):
        msgs = [message(rng) for _ in range(rng.randint(1, 25))]
        await tb.send(moldudp64.pack(SESSIONS[0], sequence, msgs), "data")
        sequence += len(msgs)
    await tb.settle()
    tb.check()
    words, current = [], []
    for beat, cycle in zip(tb.inputs.beats, tb.inputs.cycles):
        current.append(cycle)
        if beat["last"]:
            words.append(current)
            current = []
    lat = [out - words[datagram][end // 8] for out, (datagram, end) in zip(tb.sink.cycles, tb.owners)]
    tb.log.info("latency word with a message's last byte -> message out: %s cycles", stats(lat))
    assert set(lat) == {1}, Counter(lat)
