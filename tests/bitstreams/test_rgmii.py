"""hdl/rgmii.py in the Amaranth simulator: RGMII pins to MacRx and MacTx to RGMII pins, against the
Python model of RGMII framing (bitstreams/rgmii_model.py)."""

import random
from types import SimpleNamespace

import pytest
from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io, wiring
from amaranth.sim import Simulator

from tickwire.bitstreams.rgmii_model import (gmii_frame, gmii_from_rgmii, idle_cycles, parse_gmii,
                                             rgmii_cycles)
from tickwire.hdl.mac import MacRx, MacTx
from tickwire.protocols.net import fcs as fcs_of
from tickwire.hdl.rgmii import GmiiToXgmii, RgmiiMac, XgmiiToGmii, START_WORD, IDLE_WORD

RX_PERIOD = 8e-9          # 125 MHz
CORE_PERIOD = 16e-9       # 62.5 MHz, the ECPIX-5 core clock's order of magnitude
TX_PERIOD = 8e-9


class Bench(Elaboratable):
    """RgmiiMac with MacRx on its receive side and two MacTx on its transmit sources."""

    def __init__(self):
        self.pads = SimpleNamespace(
            rx_clk=io.SimulationPort("i", 1), rx_ctrl=io.SimulationPort("i", 1),
            rx_data=io.SimulationPort("i", 4), tx_clk=io.SimulationPort("o", 1),
            tx_ctrl=io.SimulationPort("o", 1), tx_data=io.SimulationPort("o", 4))
        self.mac = RgmiiMac(self.pads, tx_sources=("order", "management"), rx_depth=512)
        self.mac_rx = MacRx(buffer_words=512)
        self.order_tx = MacTx()
        self.management_tx = MacTx()
        self.cd_rx = ClockDomain("rgmii_rx")
        self.cd_tx = ClockDomain("rgmii_tx")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.domains.rgmii_rx = self.cd_rx
        m.domains.rgmii_tx = self.cd_tx
        m.submodules.mac = self.mac
        m.submodules.mac_rx = self.mac_rx
        m.submodules.order_tx = self.order_tx
        m.submodules.management_tx = self.management_tx
        wiring.connect(m, self.mac.xgmii_rx, self.mac_rx.xgmii)
        wiring.connect(m, self.order_tx.xgmii, self.mac.order)
        wiring.connect(m, self.management_tx.xgmii, self.mac.management)
        return m


def _frame(rng, length):
    dst = bytes.fromhex("02deadbeef01")
    return dst + bytes(rng.randrange(256) for _ in range(length - 6))


def _simulator(bench):
    sim = Simulator(bench)
    sim.add_clock(CORE_PERIOD, domain="sync")
    sim.add_clock(RX_PERIOD, domain="rgmii_rx")
    sim.add_clock(TX_PERIOD, domain="rgmii_tx", phase=3e-9)
    return sim


def _rx_driver(bench, cycles, done):
    pads = bench.pads
    clk = bench.cd_rx.clk

    async def drive(ctx):
        for c in cycles:
            # Each half is set half a clock before the edge that samples it.
            await ctx.negedge(clk)
            ctx.set(pads.rx_ctrl.i, c.ctl_rise)
            ctx.set(pads.rx_data.i, c.data_rise)
            await ctx.posedge(clk)
            ctx.set(pads.rx_ctrl.i, c.ctl_fall)
            ctx.set(pads.rx_data.i, c.data_fall)
        done.append(True)
    return drive


def _packet_collector(stream, packets):
    async def collect(ctx):
        ctx.set(stream.ready, 1)
        current = b""
        async for _, _, valid, payload in ctx.tick().sample(stream.valid, stream.payload):
            if valid:
                current += payload.data.to_bytes(8, "little")[:payload.nbytes]
                if payload.last:
                    packets.append(current)
                    current = b""
    return collect


def test_rx_frames_reach_mac_rx_whole():
    rng = random.Random(9)
    good = [_frame(rng, n) for n in (60, 61, 64, 67, 100, 255, 1514)]
    cycles = idle_cycles(5)
    for i, frame in enumerate(good):
        # Preamble shortened on some frames (PHYs may eat preamble bytes): the SFD delimits.
        cycles += rgmii_cycles(gmii_frame(frame, preamble=7 if i % 2 else 3)) + idle_cycles(12)
    bad_fcs = bytearray(gmii_frame(_frame(rng, 80)))
    bad_fcs[-1] ^= 0x01
    cycles += rgmii_cycles(bytes(bad_fcs)) + idle_cycles(12)
    with_error = gmii_frame(_frame(rng, 90))
    cycles += rgmii_cycles(with_error, errors=frozenset({40})) + idle_cycles(12)
    tail = _frame(rng, 70)
    cycles += rgmii_cycles(gmii_frame(tail)) + idle_cycles(40)
    expected = good + [tail]
    # The model's own view of the same wire: every frame found, the FCS where it should be.
    model = parse_gmii(gmii_from_rgmii(cycles))
    assert [f.fcs_ok and not f.error for f in model] == [True] * 7 + [False, False, True]

    bench = Bench()
    sim = _simulator(bench)
    packets, done = [], []
    sim.add_testbench(_rx_driver(bench, cycles, done))
    sim.add_testbench(_packet_collector(bench.mac_rx.o_stream, packets), background=True)
    words = []

    async def watch_xgmii(ctx):
        async for _, _, d, c in ctx.tick().sample(bench.mac.xgmii_rx.data, bench.mac.xgmii_rx.ctrl):
            if (d, c) != (IDLE_WORD, 0xFF):
                words.append((d, c))
    sim.add_testbench(watch_xgmii, background=True)

    async def wait_for_end(ctx):
        await ctx.tick().until(bench.mac.rx_frames == 10)
        await ctx.tick().repeat(200)
        assert ctx.get(bench.mac_rx.regs.frames_ok) == len(expected)
        assert ctx.get(bench.mac_rx.regs.bad_fcs) == 2
        assert ctx.get(bench.mac.rx_dropped) == 0
    sim.add_testbench(wait_for_end)
    sim.run_until(0.2e-3)
    assert done
    assert packets == expected
    # The first frame's first XGMII word: /S/ in lane 0, preamble, SFD.
    assert words[0] == (START_WORD, 0x01)


class _RxOnly(Elaboratable):
    def __init__(self, **kwargs):
        self.dut = GmiiToXgmii(**kwargs)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.domains.rgmii_rx = ClockDomain("rgmii_rx")
        m.submodules.dut = self.dut
        return m


def _run_rx_only(frames, core_period, duration):
    """Frames (GMII bytes) into a GmiiToXgmii(max_frame=200, depth=64); the XGMII words it sends."""
    top = _RxOnly(max_frame=200, depth=64)
    dut = top.dut
    sim = Simulator(top)
    sim.add_clock(RX_PERIOD, domain="rgmii_rx")
    sim.add_clock(core_period, domain="sync")
    seen = []

    async def feed(ctx):
        for f in frames:
            for b in f:
                ctx.set(dut.gmii.en, 1)
                ctx.set(dut.gmii.data, b)
                await ctx.tick("rgmii_rx")
            ctx.set(dut.gmii.en, 0)
            await ctx.tick("rgmii_rx").repeat(12)

    async def watch(ctx):
        async for _, _, d, c in ctx.tick().sample(dut.xgmii.data, dut.xgmii.ctrl):
            seen.append((d, c))
    sim.add_testbench(feed)
    sim.add_testbench(watch, background=True)
    result = {}

    async def counters(ctx):
        await ctx.delay(duration - 1e-9)
        result["dropped"] = ctx.get(dut.dropped)
        result["frames"] = ctx.get(dut.frames)
    sim.add_testbench(counters)
    sim.run_until(duration)
    return seen, result


def _frames_in(words):
    """The frames in an XGMII word list: bytes after the start word up to /T/, /E/ flagged."""
    frames, current = [], None
    for d, c in words:
        if (d, c) == (START_WORD, 0x01):
            current = b""
            continue
        if current is None:
            continue
        for k, b in enumerate(d.to_bytes(8, "little")):
            if c >> k & 1:
                frames.append((current, b == 0xFE))
                current = None
                break
            current += bytes([b])
    return frames


def test_rx_drops_whole_frames_when_the_core_side_is_slow():
    # A 64-word FIFO holds two frames of max_frame=200. A core clock slower than the wire (1 MHz
    # here, far below the 15.625 MHz minimum) lets the FIFO fill: later frames are dropped whole,
    # counted, and every frame that does leave is intact.
    rng = random.Random(3)
    sent = [_frame(rng, 146) for _ in range(5)]
    words, counters = _run_rx_only([gmii_frame(f) for f in sent], 1e-6, 200e-6)
    out = _frames_in(words)
    assert counters["dropped"] >= 1
    assert len(out) + counters["dropped"] == len(sent) == counters["frames"] + counters["dropped"]
    wire = [f + fcs_of(f) for f in sent]
    positions = [wire.index(data) for data, error in out]
    assert positions == sorted(positions) and not any(error for _, error in out)


def test_rx_cuts_overlong_frames_with_an_error():
    rng = random.Random(4)
    sent = [_frame(rng, 100), _frame(rng, 400), _frame(rng, 70)]
    words, counters = _run_rx_only([gmii_frame(f) for f in sent], CORE_PERIOD, 20e-6)
    out = _frames_in(words)
    assert counters == {"dropped": 0, "frames": 3}
    assert out[0] == (sent[0] + fcs_of(sent[0]), False)
    # The 400-byte frame ends after max_frame bytes' worth of words, with /E/.
    data, error = out[1]
    assert error and len(data) <= 200 + 8
    assert out[2] == (sent[2] + fcs_of(sent[2]), False)


@pytest.mark.parametrize("lengths", [(60,), (14, 61, 200), (1514, 64)])
def test_tx_frames_on_the_pins(lengths):
    rng = random.Random(sum(lengths))
    order = [_frame(rng, n) if n >= 6 else bytes(n) for n in lengths]
    management = [_frame(rng, 42)]
    bench = Bench()
    sim = _simulator(bench)
    wire = []

    def sender(tx, frames):
        async def send(ctx):
            s = tx.i_stream
            for frame in frames:
                chunks = [frame[i:i + 8] for i in range(0, len(frame), 8)]
                for k, chunk in enumerate(chunks):
                    ctx.set(s.valid, 1)
                    ctx.set(s.payload, {"data": int.from_bytes(chunk, "little"), "nbytes": len(chunk),
                                        "last": k == len(chunks) - 1, "length": len(frame)})
                    await ctx.tick().until(s.ready)
                ctx.set(s.valid, 0)
        return send

    clk = bench.cd_tx.clk
    pads = bench.pads

    async def sample(ctx):
        while True:
            await ctx.posedge(clk)
            await ctx.delay(1e-9)
            ctl_rise, lo = ctx.get(pads.tx_ctrl.o), ctx.get(pads.tx_data.o)
            clk_rise = ctx.get(pads.tx_clk.o)
            await ctx.negedge(clk)
            await ctx.delay(1e-9)
            ctl_fall, hi = ctx.get(pads.tx_ctrl.o), ctx.get(pads.tx_data.o)
            clk_fall = ctx.get(pads.tx_clk.o)
            assert (clk_rise, clk_fall) == (1, 0), "TXC must follow the transmit clock"
            wire.append((lo | hi << 4, ctl_rise, ctl_rise ^ ctl_fall))

    sim.add_testbench(sender(bench.order_tx, order))
    sim.add_testbench(sender(bench.management_tx, management))
    sim.add_testbench(sample, background=True)
    total = sum(max(len(f), 60) + 24 for f in order + management)
    sim.run_until((total + 200) * TX_PERIOD)
    frames = parse_gmii(wire)
    padded = sorted(f.ljust(60, b"\0") for f in order + management)
    assert sorted(f.payload for f in frames) == padded
    for f in frames:
        assert f.preamble == 7 and f.fcs_ok and not f.error
    # Inter-frame gap of at least 12 idle clocks between frames.
    ens = [en for _, en, _ in wire]
    first = ens.index(1)
    idle_runs, count = [], 0
    for en in ens[first:]:
        if en:
            if count:
                idle_runs.append(count)
            count = 0
        else:
            count += 1
    assert len(idle_runs) == len(frames) - 1
    assert min(idle_runs) >= 12


def test_adapters_refuse_bad_parameters():
    with pytest.raises(ValueError, match="depth must be a power of two"):
        GmiiToXgmii(max_frame=1536, depth=256)
    with pytest.raises(ValueError, match="max_frame must be 64..9600, not 10"):
        XgmiiToGmii(max_frame=10)
    with pytest.raises(ValueError, match="sources must be distinct"):
        XgmiiToGmii(sources=("a", "a"))
    with pytest.raises(ValueError, match="pads must have 'tx_clk'"):
        RgmiiMac(SimpleNamespace(rx_clk=1, rx_ctrl=1, rx_data=1, tx_ctrl=1, tx_data=1))


class _TxOnly(Elaboratable):
    def __init__(self, **kwargs):
        self.dut = XgmiiToGmii(**kwargs)
        self.cd_sync = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.cd_sync
        m.domains.rgmii_tx = ClockDomain("rgmii_tx")
        m.submodules.dut = self.dut
        return m


def _xgmii_words(body: bytes, *, error_at: int | None = None):
    """A frame as XGMII (data, ctrl) words: the start word, ``body`` (with /E/ at byte
    ``error_at``), /T/ in the lane after the last byte, idles after it."""
    lanes = [(b, 0) for b in body] + [(0xFD, 1)]
    if error_at is not None:
        lanes[error_at] = (0xFE, 1)
    lanes += [(0x07, 1)] * (-len(lanes) % 8)
    words = [(START_WORD, 0x01)]
    for i in range(0, len(lanes), 8):
        chunk = lanes[i:i + 8]
        words.append((int.from_bytes(bytes(b for b, _ in chunk), "little"),
                      sum(c << k for k, (_, c) in enumerate(chunk))))
    return words


def _gmii_sampler(dut, wire):
    async def sample(ctx):
        async for _, _, d, en, er in ctx.tick("rgmii_tx").sample(dut.gmii.data, dut.gmii.en,
                                                                  dut.gmii.er):
            wire.append((d, en, er))
    return sample


@pytest.mark.parametrize("length", range(57, 65))
def test_tx_lanes_on_gmii(length):
    # /T/ in each of the eight lanes and an /E/ inside the frame: the GMII bytes are the preamble,
    # the SFD, the frame with TX_ER on the /E/ byte only, and TX_EN drops exactly at /T/.
    rng = random.Random(length)
    body = bytes(rng.randrange(256) for _ in range(length))
    error_at = length // 2
    top = _TxOnly(sources=("a",), max_frame=200, depth=64)
    dut = top.dut
    sim = Simulator(top)
    sim.add_clock(CORE_PERIOD, domain="sync")
    sim.add_clock(TX_PERIOD, domain="rgmii_tx")
    wire = []

    async def send(ctx):
        for d, c in _xgmii_words(body, error_at=error_at) + [(IDLE_WORD, 0xFF)] * 4:
            ctx.set(dut.a.data, d)
            ctx.set(dut.a.ctrl, c)
            await ctx.tick()
    sim.add_testbench(send)
    sim.add_testbench(_gmii_sampler(dut, wire), background=True)
    sim.run_until(3e-6)
    enabled = [(d, er) for d, en, er in wire if en]
    assert bytes(d for d, _ in enabled) == bytes([0x55] * 7 + [0xD5]) + body[:error_at] + \
        bytes([0xFE]) + body[error_at + 1:]
    assert [i for i, (_, er) in enumerate(enabled) if er] == [8 + error_at]
    # One frame: TX_EN high in one run.
    ens = "".join(str(en) for _, en, _ in wire).strip("0")
    assert set(ens) == {"1"}


def test_tx_underrun_ends_the_frame_with_an_error_and_recovers():
    # The core clock runs at 2 MHz for the first two frames (a word every 62.5 GMII clocks, far
    # below the 15.625 MHz the wire needs): each is cut with TX_ER, counted, and the rest of it
    # is drained. Then at 62.5 MHz the next frames leave whole.
    rng = random.Random(5)
    frames = [bytes(rng.randrange(256) for _ in range(n)) for n in (100, 70, 64, 90)]
    top = _TxOnly(sources=("a",), max_frame=200, depth=64)
    dut = top.dut
    sim = Simulator(top)
    sim.add_clock(TX_PERIOD, domain="rgmii_tx")
    period = {"now": 500e-9}

    async def core_clock(ctx):
        while True:
            ctx.set(top.cd_sync.clk, 1)
            await ctx.delay(period["now"] / 2)
            ctx.set(top.cd_sync.clk, 0)
            await ctx.delay(period["now"] / 2)
    wire = []

    async def send(ctx):
        for k, f in enumerate(frames):
            if k == 2:
                period["now"] = CORE_PERIOD
            for d, c in _xgmii_words(f) + [(IDLE_WORD, 0xFF)] * 3:
                ctx.set(dut.a.data, d)
                ctx.set(dut.a.ctrl, c)
                await ctx.tick()
            await ctx.tick().repeat(60 if k < 2 else 30)
    sim.add_process(core_clock)
    sim.add_testbench(send)
    sim.add_testbench(_gmii_sampler(dut, wire), background=True)
    result = {}

    async def check(ctx):
        await ctx.delay(120e-6)
        result["underruns"] = ctx.get(dut.underruns)
        result["dropped"] = ctx.get(dut.a_dropped)
    sim.add_testbench(check)
    sim.run_until(121e-6)
    found = parse_gmii(wire)
    assert result == {"underruns": 2, "dropped": 0}
    assert [f.error for f in found] == [True, True, False, False]
    assert [f.data for f in found[2:]] == frames[2:]
