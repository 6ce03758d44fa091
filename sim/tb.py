"""cocotb helpers shared by the testbenches: clocks, register bus, Amaranth streams, latency probes."""

from __future__ import annotations

import logging
import os
import random
import statistics
from typing import Callable, Iterable, Mapping

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly

from ..hdl.top import CLOCK_HZ
from ..host.regmap import RegisterMap

__all__ = ["CLOCK_NS", "start_clock", "reset", "CsrMaster", "pack", "unpack", "StreamSource",
           "StreamSink", "StreamMonitor", "cycle_pause", "XgmiiStartProbe", "layout_fields",
           "packet_beats", "packet_bytes", "split_packets", "bench_seed", "rng_for", "stats",
           "skip_unless", "read_counters", "market_data_regmap", "check_packet_framing", "wait_until"]

#: Core clock period in ns: the gateware's clock unless ``TICKWIRE_CLOCK_NS`` says otherwise.
CLOCK_NS = float(os.environ.get("TICKWIRE_CLOCK_NS", str(1e9 / CLOCK_HZ)))


def market_data_regmap() -> RegisterMap:
    """The register map of :class:`~tickwire.hdl.market_data.MarketDataTop` (not the appliance's)."""
    from ..hdl.build import top_regmap
    from ..hdl.market_data import MarketDataTop
    return RegisterMap.from_dict(top_regmap(MarketDataTop))


def bench_seed(default: int) -> int:
    """A bench's random seed: ``TICKWIRE_RANDOM_SEED`` if set, else ``default``."""
    return int(os.environ.get("TICKWIRE_RANDOM_SEED", str(default)))


def rng_for(seed: int, log: logging.Logger, what: str) -> random.Random:
    """A seeded generator, its seed logged so a failure can be replayed."""
    log.info("%s: random seed %d (set TICKWIRE_RANDOM_SEED to change)", what, seed)
    return random.Random(seed)


def stats(values) -> str:
    return f"min {min(values)} median {statistics.median(values)} max {max(values)} (n={len(values)})"


def skip_unless(toplevel: str) -> bool:
    """True when the running simulation is of another top level (one bench module, two DUTs)."""
    running = os.environ.get("COCOTB_TOPLEVEL")
    return running is not None and running != toplevel


def read_counters(dut, names: Iterable[str]) -> dict[str, int]:
    """``stage.name`` -> value of the stage DUT's ``regs__name`` output port."""
    return {name: int(getattr(dut, "regs__" + name.split(".", 1)[1]).value) for name in names}


def check_packet_framing(k: int, beats, want: bytes) -> None:
    """Beat framing of one packet: full beats, ``last`` only on the final one, ``length`` on all.
    An empty packet (UDP length 8) is one ``last`` beat with ``nbytes`` 0."""
    assert beats[-1]["last"] and not any(b["last"] for b in beats[:-1]), f"packet {k}: last flags"
    assert all(b["nbytes"] == 8 for b in beats[:-1]), f"packet {k}: short beat before the last"
    assert beats[-1]["nbytes"] == ((len(want) - 1) % 8 + 1 if want else 0), \
        f"packet {k}: last beat nbytes {beats[-1]['nbytes']} for {len(want)} bytes"
    lengths = {b["length"] for b in beats}
    assert lengths == {len(want)}, f"packet {k}: length fields {lengths}, packet is {len(want)} bytes"


async def wait_until(dut, done: Callable[[], bool], progress: Callable[[], str], *,
                     timeout_cycles: int = 50_000, settle: int = 0) -> None:
    """Wait for ``done()``, then ``settle`` more cycles (for anything unexpected still in
    flight); fail with ``progress()`` after ``timeout_cycles``."""
    for _ in range(timeout_cycles):
        if done():
            for _ in range(settle):
                await RisingEdge(dut.clk)
            return
        await RisingEdge(dut.clk)
    raise AssertionError(f"timed out: {progress()}")


def start_clock(dut, period_ns: float = CLOCK_NS) -> None:
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())


async def reset(dut, cycles: int = 4) -> None:
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def layout_fields(layout) -> list[tuple[str, int, int]]:
    """(name, bit offset, width) of each member of an Amaranth ``StructLayout``, nested flattened."""
    out = []
    for name, field in layout:
        shape = field.shape
        try:
            inner = list(shape)  # a nested layout
        except TypeError:
            inner = None
        if inner and hasattr(shape, "members"):
            for sub, off, width in layout_fields(shape):
                out.append((f"{name}.{sub}", field.offset + off, width))
        else:
            out.append((name, field.offset, field.width))
    return out


def pack(layout, values: Mapping[str, int]) -> int:
    """An integer with ``values`` placed at the layout's fields (missing fields are 0)."""
    word = 0
    fields = {n: (o, w) for n, o, w in layout_fields(layout)}
    for name, value in values.items():
        if name not in fields:
            raise KeyError(f"layout has no field {name!r}")
        off, width = fields[name]
        if not 0 <= value < 1 << width:
            raise ValueError(f"{name}={value} does not fit {width} bits")
        word |= value << off
    return word


def unpack(layout, word: int) -> dict[str, int]:
    return {n: (word >> o) & ((1 << w) - 1) for n, o, w in layout_fields(layout)}


def cycle_pause(probability: float, seed: int = 1):
    """Endless booleans: True means 'hold off this cycle' (random backpressure/starvation)."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class CsrMaster:
    """Drives the appliance's register bus by register name, from the generated map."""

    def __init__(self, dut, regmap: RegisterMap | None = None, prefix: str = "csr__"):
        self.dut = dut
        self.map = regmap or RegisterMap.load()
        self._sig = {n: getattr(dut, prefix + n) for n in ("addr", "w_stb", "w_data", "r_stb", "r_data")}
        for n in ("addr", "w_stb", "w_data", "r_stb"):
            self._sig[n].value = 0

    async def write_word(self, address: int, value: int) -> None:
        s = self._sig
        s["addr"].value = address
        s["w_data"].value = value
        s["w_stb"].value = 1
        await RisingEdge(self.dut.clk)
        s["w_stb"].value = 0

    async def read_word(self, address: int) -> int:
        s = self._sig
        s["addr"].value = address
        s["r_stb"].value = 1
        await RisingEdge(self.dut.clk)
        s["r_stb"].value = 0
        await ReadOnly()
        value = int(s["r_data"].value)
        await RisingEdge(self.dut.clk)
        return value

    async def write(self, name: str, value: int) -> None:
        """Write register ``name``; ``stage.register[index]`` writes the register's select
        (``indexed_by``) with the index first."""
        if name.endswith("]") and "[" in name:
            base, _, index = name[:-1].partition("[")
            reg = self.map[base]
            if not reg.indexed_by:
                raise KeyError(f"{base} is not an indexed register")
            select = reg.indexed_by if "." in reg.indexed_by else f"{base.partition('.')[0]}.{reg.indexed_by}"
            await self.write(select, int(index))
            name = base
        reg = self.map[name]
        if not reg.writable:
            raise PermissionError(f"{name} is read-only")
        for address, word in zip(reg.addresses, reg.to_words(value)):
            await self.write_word(address, word)

    async def read(self, name: str) -> int:
        reg = self.map[name]
        words = [await self.read_word(a) for a in reg.addresses]
        return reg.from_words(words)

    async def write_all(self, values: Mapping[str, int]) -> None:
        for name, value in values.items():
            await self.write(name, value)

    async def read_counters(self, names: Iterable[str]) -> dict[str, int]:
        return {n: await self.read(n) for n in names}


class StreamSource:
    """Drives an Amaranth ``stream`` (``<prefix>valid``, ``<prefix>ready``, ``<prefix>payload``)."""

    def __init__(self, dut, prefix: str, layout, pause=None):
        self.dut = dut
        self.layout = layout
        self.valid = getattr(dut, prefix + "valid")
        self.ready = getattr(dut, prefix + "ready")
        self.payload = getattr(dut, prefix + "payload")
        self.valid.value = 0
        self.pause = pause

    async def send(self, beats: Iterable[Mapping[str, int]]) -> None:
        for beat in beats:
            while self.pause is not None and next(self.pause):
                self.valid.value = 0
                await RisingEdge(self.dut.clk)
            self.payload.value = pack(self.layout, beat)
            self.valid.value = 1
            while True:
                await RisingEdge(self.dut.clk)
                if int(self.ready.value):
                    break
            self.valid.value = 0


class StreamSink:
    """Collects beats of an Amaranth ``stream``, optionally with random backpressure; records the
    cycle each beat was taken (cycles counted from construction)."""

    def __init__(self, dut, prefix: str, layout, pause=None, always_ready: bool = False):
        self.dut = dut
        self.layout = layout
        self.valid = getattr(dut, prefix + "valid")
        self.ready = None if always_ready else getattr(dut, prefix + "ready")
        self.payload = getattr(dut, prefix + "payload")
        self.pause = pause
        self.beats: list[dict[str, int]] = []
        self.cycles: list[int] = []
        self.cycle = 0
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            ready = not (self.pause is not None and next(self.pause))
            if self.ready is not None:
                self.ready.value = int(ready)
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            if int(self.valid.value) and (ready or self.ready is None):
                self.beats.append(unpack(self.layout, int(self.payload.value)))
                self.cycles.append(self.cycle)


class XgmiiStartProbe:
    """Records the clock cycle of every /S/ (start) seen on an XGMII bus, lane 0 or 4."""

    def __init__(self, clk, data, ctrl):
        self.clk, self.data, self.ctrl = clk, data, ctrl
        self.cycle = 0
        self.starts: list[int] = []
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.cycle += 1
            c = int(self.ctrl.value)
            d = int(self.data.value)
            if (c & 1 and d & 0xFF == 0xFB) or (c & 0x10 and (d >> 32) & 0xFF == 0xFB):
                self.starts.append(self.cycle)


def packet_beats(data: bytes, length: int | None = None) -> list[dict[str, int]]:
    """The beats of a :func:`tickwire.hdl.packet.packet_layout` stream carrying ``data``: 8 bytes
    a beat, first byte in bits [7:0], ``nbytes`` and ``last`` on the final beat, ``length``
    (default ``len(data)``) on every beat."""
    if not data:
        raise ValueError("a packet needs at least one byte")
    length = len(data) if length is None else length
    beats = []
    for offset in range(0, len(data), 8):
        chunk = data[offset:offset + 8]
        beats.append({"data": int.from_bytes(chunk, "little"), "nbytes": len(chunk),
                      "last": int(offset + 8 >= len(data)), "length": length})
    return beats


def split_packets(beats: Iterable[Mapping[str, int]]) -> list[list[Mapping[str, int]]]:
    """Packet-stream beats grouped into packets (each ends with a ``last`` beat); a trailing
    unfinished packet is returned too."""
    packets: list[list[Mapping[str, int]]] = [[]]
    for beat in beats:
        packets[-1].append(beat)
        if beat["last"]:
            packets.append([])
    return packets if packets[-1] else packets[:-1]


def packet_bytes(beats: Iterable[Mapping[str, int]]) -> bytes:
    """The bytes a packet's beats carry: ``nbytes`` of each beat, lane 0 first."""
    return b"".join(b["data"].to_bytes(8, "little")[:b["nbytes"]] for b in beats)


class StreamMonitor:
    """Records the beats of an Amaranth ``stream`` that are transferred (``valid`` and ``ready``
    high at a clock edge) without driving anything; cycles counted from construction, as
    :class:`StreamSink` counts them."""

    def __init__(self, dut, prefix: str, layout, clk=None):
        self.dut = dut
        self.clk = clk if clk is not None else dut.clk
        self.layout = layout
        self.valid = getattr(dut, prefix + "valid")
        self.ready = getattr(dut, prefix + "ready")
        self.payload = getattr(dut, prefix + "payload")
        self.beats: list[dict[str, int]] = []
        self.cycles: list[int] = []
        self.stalls = 0  # cycles with valid high and ready low
        self.cycle = 0
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.cycle += 1
            if int(self.valid.value):
                if int(self.ready.value):
                    self.beats.append(unpack(self.layout, int(self.payload.value)))
                    self.cycles.append(self.cycle)
                else:
                    self.stalls += 1
