"""cocotb benches of :mod:`tickwire.hdl.mac`: ``MacRx`` (XGMII in, packet stream out) and ``MacTx``
(packet stream in, XGMII out), each checked against the reference model.

One module for both DUTs: the tests named ``mac_rx_*`` need the ``mac_rx`` build, ``mac_tx_*`` the
``mac_tx`` build (tests/hdl/test_mac.py picks them with ``testcase=``); run on the other DUT they
are skipped. ``TICKWIRE_RANDOM_SEED`` overrides the seed.
"""

from __future__ import annotations

import logging
from collections import Counter

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.eth import XgmiiFrame, XgmiiSink, XgmiiSource
from cocotbext.eth.constants import ETH_PREAMBLE

from ..hdl.mac import XGMII_ERROR, XGMII_IDLE, XGMII_START, XGMII_TERMINATE
from ..hdl.packet import packet_layout
from .model import MAC_RX_COUNTERS, MAC_TX_COUNTERS, MAX_FRAME, MacRxModel, MacTxModel, with_fcs
from .tb import (bench_seed, check_packet_framing, read_counters, rng_for, skip_unless, stats, wait_until,
                 StreamMonitor, StreamSink, StreamSource, cycle_pause, packet_beats, packet_bytes,
                 reset, split_packets, start_clock)

logger = logging.getLogger("tb_mac")
logger.setLevel(logging.INFO)

SEED = bench_seed(11)
#: Frame buffer of the ``mac_rx`` build (tickwire.sim.runner), in 64-bit words.
MAC_RX_BUFFER_WORDS = 512
#: Cycles from the XGMII word holding /T/ to the first output word (MacRx docstring).
MAC_RX_LATENCY = 5
IDLE_WORD = int.from_bytes(bytes([XGMII_IDLE]) * 8, "little")

class XgmiiMonitor:
    """The control characters of an XGMII bus: cycle and lane of every /S/, /T/ and /E/, and the
    idle characters between each /T/ and the next /S/ (cycles counted from construction)."""

    def __init__(self, clk, data, ctrl):
        self.clk, self.data, self.ctrl = clk, data, ctrl
        self.cycle = 0
        self.starts: list[tuple[int, int]] = []
        self.terminates: list[tuple[int, int]] = []
        self.errors: list[tuple[int, int]] = []
        self.gaps: list[int] = []
        self._idles: int | None = None
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.cycle += 1
            d, c = int(self.data.value), int(self.ctrl.value)
            if not c:
                continue
            for lane in range(8):
                if not c >> lane & 1:
                    continue
                char = d >> 8 * lane & 0xFF
                if char == XGMII_START:
                    self.starts.append((self.cycle, lane))
                    if self._idles is not None:
                        self.gaps.append(self._idles)
                    self._idles = None
                elif char == XGMII_TERMINATE:
                    self.terminates.append((self.cycle, lane))
                    self._idles = 0
                elif char == XGMII_ERROR:
                    self.errors.append((self.cycle, lane))
                elif char == XGMII_IDLE and self._idles is not None:
                    self._idles += 1


# -- MacRx ----------------------------------------------------------------------------------------

class MacRxTB:
    """MacRx with a cocotbext-eth XGMII source, a packet-stream sink (optional backpressure), an
    XGMII monitor on the input and :class:`~tickwire.sim.model.MacRxModel`."""

    def __init__(self, dut, *, pause=None):
        self.dut = dut
        self.log = logging.getLogger("tb_mac.mac_rx")
        start_clock(dut)
        dut.rst.value = 0
        dut.xgmii__data.value = 0
        dut.xgmii__ctrl.value = 0
        dut.o_stream__ready.value = 0
        self.source = XgmiiSource(dut.xgmii__data, dut.xgmii__ctrl, dut.clk, dut.rst)
        # Constructed together, so both count the same clock edges.
        self.sink = StreamSink(dut, "o_stream__", packet_layout(), pause=pause)
        self.monitor = XgmiiMonitor(dut.clk, dut.xgmii__data, dut.xgmii__ctrl)
        self.model = MacRxModel()
        self.expected: list[bytes] = []
        self.owners: list[int] = []      # index of the frame (in send order) each packet comes from
        self.frames_sent = 0
        self.extra_overflow = 0          # frames the test expects dropped for a full buffer

    async def reset(self):
        await reset(self.dut)

    async def send(self, frame_with_fcs: bytes, *, error_at: int | None = None, expect: bool = True):
        """Queue one frame (FCS included) on XGMII; ``error_at``: put an /E/ in place of that frame
        byte. ``expect=False``: the test expects a full buffer to drop it (the model is not told)."""
        if expect:
            out = self.model.process(frame_with_fcs, error=error_at is not None)
            if out is not None:
                self.expected.append(out)
                self.owners.append(self.frames_sent)
        else:
            self.extra_overflow += 1
        frame = XgmiiFrame.from_raw_payload(frame_with_fcs)
        if error_at is not None:
            frame.normalize()
            pos = len(ETH_PREAMBLE) + error_at
            frame.data[pos] = XGMII_ERROR
            frame.ctrl[pos] = 1
        self.frames_sent += 1
        await self.source.send(frame)

    def packets(self):
        return [p for p in split_packets(self.sink.beats) if p[-1]["last"]]

    async def drain(self, timeout_cycles: int = 50_000, settle: int = 300):
        """Wait until the source is idle and every expected packet is out, then ``settle`` more
        cycles for anything unexpected."""
        await wait_until(self.dut, lambda: self.source.idle() and len(self.packets()) >= len(self.expected),
                         lambda: f"{len(self.packets())} of {len(self.expected)} packets",
                         timeout_cycles=timeout_cycles, settle=settle)

    def counters(self) -> dict[str, int]:
        return read_counters(self.dut, MAC_RX_COUNTERS)

    def check(self):
        packets = split_packets(self.sink.beats)
        assert len(packets) == len(self.expected), \
            f"{len(packets)} packets out, model predicts {len(self.expected)}"
        for k, (beats, want) in enumerate(zip(packets, self.expected)):
            got = packet_bytes(beats)
            assert got == want, f"packet {k} differs:\n got  {got.hex()}\n want {want.hex()}"
            check_packet_framing(k, beats, want)
        want = dict(self.model.counters)
        want["mac_rx.overflow"] += self.extra_overflow
        got = self.counters()
        assert got == want, f"counters differ:\n card  {got}\n model {want}"
        self.log.info("counters %s", got)
        return got

    def latencies(self) -> list[int]:
        """Cycles from the XGMII word holding each delivered frame's /T/ to its first output word."""
        firsts, index = [], 0
        for beats in split_packets(self.sink.beats):
            firsts.append(self.sink.cycles[index])
            index += len(beats)
        return [first - self.monitor.terminates[owner][0] for first, owner in zip(firsts, self.owners)]


def _good(rng, lo=60, hi=1514) -> bytes:
    return with_fcs(rng.randbytes(rng.randint(lo, hi)))


def _bad(rng, kind: str) -> tuple[bytes, int | None]:
    """A bad frame of ``kind`` (FCS included) and where to put an /E/ (or None)."""
    if kind == "bad_fcs_data":
        frame = bytearray(_good(rng))
        frame[rng.randrange(len(frame) - 4)] ^= 1 << rng.randrange(8)
        return bytes(frame), None
    if kind == "bad_fcs_fcs":
        frame = bytearray(_good(rng))
        frame[-rng.randint(1, 4)] ^= 1 << rng.randrange(8)
        return bytes(frame), None
    if kind == "runt":
        return with_fcs(rng.randbytes(rng.randint(1, 59))), None
    if kind == "oversize":
        return with_fcs(rng.randbytes(rng.randint(MAX_FRAME - 3, 1600))), None
    if kind == "error":
        frame = _good(rng, 60, 1514)
        return frame, rng.randrange(1, len(frame) - 1)
    raise ValueError(kind)


BAD_KINDS = ("bad_fcs_data", "bad_fcs_fcs", "runt", "oversize", "error")


@cocotb.test(skip=skip_unless("mac_rx"))
async def mac_rx_good_frames(dut):
    """Good frames of random lengths back to back, starting in lane 0 and lane 4: every frame out
    byte for byte without its FCS; latency from /T/ to the first output word logged."""
    rng = rng_for(SEED, logger, "mac_rx_good_frames")
    tb = MacRxTB(dut)
    await tb.reset()
    lengths = [60, 61, 1514, MAX_FRAME - 4] + [rng.randint(60, 1514) for _ in range(80)] + \
        [rng.randint(60, 140) for _ in range(40)]
    for n in lengths:
        await tb.send(with_fcs(rng.randbytes(n)))
    await tb.drain()
    tb.check()
    lanes = Counter(lane for _, lane in tb.monitor.starts)
    tb.log.info("frames by start lane: %s", dict(lanes))
    assert lanes[0] > 0 and lanes[4] > 0, f"starts by lane {dict(lanes)}: both lanes 0 and 4 needed"
    lat = tb.latencies()
    tb.log.info("latency /T/ word -> first output word, back to back: %s cycles", stats(lat))


@cocotb.test(skip=skip_unless("mac_rx"))
async def mac_rx_bad_frames(dut):
    """Bad FCS (data or FCS bits), runts, oversize frames and /E/ inside a frame are dropped and
    counted; the good frame after each comes out."""
    rng = rng_for(SEED, logger, "mac_rx_bad_frames")
    tb = MacRxTB(dut)
    await tb.reset()
    boundary = [with_fcs(rng.randbytes(59)), with_fcs(rng.randbytes(60)),       # runt / good
                with_fcs(rng.randbytes(MAX_FRAME - 4)), with_fcs(rng.randbytes(MAX_FRAME - 3)),
                with_fcs(rng.randbytes(4000))]                                     # far oversize
    for frame in boundary:
        await tb.send(frame)
        await tb.send(_good(rng))
    for _ in range(12):
        for kind in BAD_KINDS:
            for _ in range(rng.randint(1, 2)):   # sometimes two bad frames in a row
                frame, error_at = _bad(rng, kind)
                await tb.send(frame, error_at=error_at)
            await tb.send(_good(rng))
    await tb.drain()
    counters = tb.check()
    for name in ("mac_rx.bad_fcs", "mac_rx.runt", "mac_rx.oversize"):
        assert counters[name] > 0, f"{name} never counted"


@cocotb.test(skip=skip_unless("mac_rx"))
async def mac_rx_backpressure(dut):
    """Good and bad frames with random backpressure on o_stream; each burst fits the frame buffer
    (so nothing overflows) and ends with a good frame."""
    rng = rng_for(SEED, logger, "mac_rx_backpressure")
    tb = MacRxTB(dut, pause=cycle_pause(0.5, seed=SEED))
    await tb.reset()
    # Random frames up to ``budget`` words, then a good frame (at most 190 words) to close the
    # burst: once that one is out the buffer is empty.
    budget = MAC_RX_BUFFER_WORDS - 200
    for _ in range(25):
        words = 0
        while True:
            if rng.random() < 0.25:
                frame, error_at = _bad(rng, rng.choice(BAD_KINDS))
            else:
                frame, error_at = _good(rng), None
            cost = min((len(frame) + 7) // 8, (MAX_FRAME + 7) // 8 + 1)
            if words + cost > budget:
                break
            words += cost
            await tb.send(frame, error_at=error_at)
        await tb.send(_good(rng))
        await tb.drain(settle=0)
    await ClockCycles(dut.clk, 300)
    tb.check()


@cocotb.test(skip=skip_unless("mac_rx"))
async def mac_rx_overflow(dut):
    """With o_stream stalled, frames beyond the buffer are dropped and counted as overflow; once
    released, the frames that fitted come out, and later frames flow normally."""
    rng = rng_for(SEED, logger, "mac_rx_overflow")
    hold = [True]

    def gate():
        while True:
            yield hold[0]

    tb = MacRxTB(dut, pause=gate())
    await tb.reset()
    frame_words = (1000 + 4 + 7) // 8
    fit = MAC_RX_BUFFER_WORDS // frame_words
    # Leave at least a frame of margin either side of the boundary.
    assert MAC_RX_BUFFER_WORDS - fit * frame_words < frame_words - 8
    for k in range(2 * fit):
        await tb.send(with_fcs(rng.randbytes(1000)), expect=k < fit)
    await tb.source.wait()
    await ClockCycles(dut.clk, 50)
    assert not tb.sink.beats
    tb.log.info("stalled: %s", tb.counters())
    hold[0] = False
    await tb.drain()
    for _ in range(5):
        await tb.send(_good(rng))
    await tb.drain()
    counters = tb.check()
    assert counters["mac_rx.overflow"] == fit


@cocotb.test(skip=skip_unless("mac_rx"))
async def mac_rx_latency(dut):
    """Latency of isolated frames, every /T/ lane, starts in lane 0 and lane 4."""
    rng = rng_for(SEED, logger, "mac_rx_latency")
    tb = MacRxTB(dut)
    await tb.reset()
    by_case: dict[tuple[int, int], set[int]] = {}
    for offset in (False, True):
        tb.source.force_offset_start = offset
        for n in list(range(60, 76)) + [rng.randint(60, 1514) for _ in range(8)]:
            await tb.send(with_fcs(rng.randbytes(n)))
            await tb.drain(settle=20)
            start_lane = tb.monitor.starts[-1][1]
            term_lane = tb.monitor.terminates[-1][1]
            by_case.setdefault((start_lane, term_lane), set()).add(tb.latencies()[-1])
    tb.check()
    for (start_lane, term_lane), values in sorted(by_case.items()):
        tb.log.info("start lane %d, /T/ lane %d: latency %s cycles", start_lane, term_lane, sorted(values))
    everything = sorted(set().union(*by_case.values()))
    tb.log.info("latency /T/ word -> first output word, isolated frames: %s cycles", everything)
    assert {s for s, _ in by_case} == {0, 4}
    # The MacRx docstring: 5 cycles, 4 when a lane-4 frame's /T/ is in lanes 0..3.
    for (start_lane, term_lane), values in by_case.items():
        want = MAC_RX_LATENCY - 1 if start_lane == 4 and term_lane < 4 else MAC_RX_LATENCY
        assert values == {want}, f"start lane {start_lane}, /T/ lane {term_lane}: latency {values}"


# -- MacTx ----------------------------------------------------------------------------------------

class MacTxTB:
    """MacTx with a packet-stream source, a cocotbext-eth XGMII sink, an XGMII monitor (lanes,
    gaps) and :class:`~tickwire.sim.model.MacTxModel`."""

    def __init__(self, dut):
        self.dut = dut
        self.log = logging.getLogger("tb_mac.mac_tx")
        start_clock(dut)
        dut.rst.value = 0
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        self.source = StreamSource(dut, "i_stream__", packet_layout())
        self.sink = XgmiiSink(dut.xgmii__data, dut.xgmii__ctrl, dut.clk, dut.rst)
        # Constructed together, so both count the same clock edges.
        self.inputs = StreamMonitor(dut, "i_stream__", packet_layout())
        self.monitor = XgmiiMonitor(dut.clk, dut.xgmii__data, dut.xgmii__ctrl)
        self.model = MacTxModel()
        self.expected: list[bytes | None] = []   # None: a frame cut by an underrun
        self.underruns = 0

    async def reset(self):
        await reset(self.dut)

    async def send(self, frame: bytes):
        self.expected.append(self.model.process(frame))
        await self.source.send(packet_beats(frame))

    async def send_underrun(self, frame: bytes, at: int, gap: int):
        """Send ``frame`` with ``valid`` low for ``gap`` cycles before beat ``at``; the words after
        the gap still come (the MAC has to discard them)."""
        beats = packet_beats(frame)
        assert 0 < at < len(beats)
        self.expected.append(None)
        self.underruns += 1
        await self.source.send(beats[:at])
        await ClockCycles(self.dut.clk, gap)
        await self.source.send(beats[at:])

    async def drain(self, timeout_cycles: int = 50_000):
        for _ in range(timeout_cycles):
            if self.sink.count() >= len(self.expected):
                await ClockCycles(self.dut.clk, 100)
                return
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"timed out: {self.sink.count()} of {len(self.expected)} frames")

    def counters(self) -> dict[str, int]:
        return {name: int(getattr(self.dut, "regs__" + name.split(".", 1)[1]).value)
                for name in MAC_TX_COUNTERS + ("mac_tx.underruns",)}

    def check(self):
        frames = []
        while not self.sink.empty():
            frames.append(self.sink.recv_nowait())
        assert len(frames) == len(self.expected), \
            f"{len(frames)} frames on XGMII, expected {len(self.expected)}"
        for k, (frame, want) in enumerate(zip(frames, self.expected)):
            assert frame.start_lane == 0, f"frame {k} starts in lane {frame.start_lane}"
            assert bytes(frame.get_preamble()) == ETH_PREAMBLE, f"frame {k}: preamble {frame.get_preamble().hex()}"
            if want is None:
                assert frame.ctrl is not None and frame.ctrl[-1] and frame.data[-1] == XGMII_ERROR, \
                    f"frame {k} (underrun) does not end with /E/: {frame}"
                continue
            assert frame.ctrl is None, f"frame {k}: control characters inside: {frame}"
            got = bytes(frame.get_payload())
            assert got == want, f"frame {k} differs:\n got  {got.hex()}\n want {want.hex()}"
            assert frame.check_fcs(), f"frame {k}: bad FCS"
        gaps = self.monitor.gaps
        if gaps:
            self.log.info("idle characters between frames: %s", stats(gaps))
            assert min(gaps) >= 12, f"inter-frame gap of {min(gaps)} idle characters"
        assert len(self.monitor.starts) == len(self.expected)
        want = dict(self.model.counters)
        want["mac_tx.underruns"] = self.underruns
        got = self.counters()
        assert got == want, f"counters differ:\n card  {got}\n model {want}"
        self.log.info("counters %s", got)
        return got


def _tx_lengths(rng, count: int) -> list[int]:
    fixed = list(range(1, 20)) + [52, 53, 58, 59, 60, 61, 62, 63, 64, 65, 67, 68, 1513, 1514]
    return fixed + [rng.randint(1, 59) if rng.random() < 0.4 else rng.randint(60, 1514)
                    for _ in range(count)]


@cocotb.test(skip=skip_unless("mac_tx"))
async def mac_tx_frames(dut):
    """Frames of random lengths 1..1514 (short ones padded to 60), back to back or with gaps:
    start in lane 0, preamble, payload as the model pads it, good FCS, >= 12 idles between."""
    rng = rng_for(SEED, logger, "mac_tx_frames")
    tb = MacTxTB(dut)
    await tb.reset()
    for n in _tx_lengths(rng, 120):
        await tb.send(rng.randbytes(n))
        if rng.random() < 0.4:
            await ClockCycles(dut.clk, rng.randint(1, 5))
    await tb.drain()
    tb.check()


@cocotb.test(skip=skip_unless("mac_tx"))
async def mac_tx_underrun(dut):
    """``valid`` dropped inside a frame: the frame ends with /E/, ``underruns`` counts it, the
    rest of that frame is discarded and the next frame goes out intact."""
    rng = rng_for(SEED, logger, "mac_tx_underrun")
    tb = MacTxTB(dut)
    await tb.reset()
    for k in range(30):
        n = rng.choice((rng.randint(9, 59), rng.randint(60, 1514)))
        beats = (n + 7) // 8
        await tb.send_underrun(rng.randbytes(n), at=rng.randint(1, beats - 1), gap=rng.randint(1, 3))
        for _ in range(rng.randint(1, 2)):
            await tb.send(rng.randbytes(rng.randint(1, 1514)))
    await tb.drain()
    counters = tb.check()
    assert counters["mac_tx.underruns"] == 30


@cocotb.test(skip=skip_unless("mac_tx"))
async def mac_tx_latency(dut):
    """Cycles from the first word offered (MAC idle) to the start word on XGMII."""
    rng = rng_for(SEED, logger, "mac_tx_latency")
    tb = MacTxTB(dut)
    await tb.reset()
    lat = []
    for n in [1, 8, 59, 60, 64, 100, 1514] + [rng.randint(1, 1514) for _ in range(10)]:
        await ClockCycles(dut.clk, 10)
        first = len(tb.inputs.beats)
        await tb.send(rng.randbytes(n))
        await tb.drain()
        assert tb.inputs.stalls == 0   # the MAC was idle: the first word went in as offered
        lat.append(tb.monitor.starts[-1][0] - tb.inputs.cycles[first])
    tb.check()
    tb.log.info("latency first word offered -> start word: %s cycles", stats(lat))
    assert set(lat) == {1}, f"latencies {lat}"
