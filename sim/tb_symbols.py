"""cocotb bench of the symbol directory alone: Stock Directory records fill the table, tracking
by name and by locate, the filter on and off; every passed record, every counter and host
lookups checked against :class:`tickwire.sim.model.SymbolDirectoryModel`."""

from __future__ import annotations

import cocotb

from ..hdl.itch import record_layout
from ..protocols import itch
from .model import Record, RegisterFile, SymbolDirectoryModel, record_values
from .stage_bench import StageTB
from .tb import StreamSource, bench_seed, cycle_pause, rng_for

#: Cycles from a record taken to it leaving (docstring of ``SymbolDirectory``).
LATENCY = 1
SEED = bench_seed(5401)
MAX_LOCATES = 16384
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "NFLX", "ZVZZT", "QQQ"]
NAME_SLOTS = 8


def _name_value(symbol: str) -> int:
    return int.from_bytes(symbol.ljust(8).encode("ascii"), "little")


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_symbols", ["i_stream__valid", "i_stream__payload", "o_stream__ready",
                                             "regs__filter_enable", "regs__track_locate", "regs__track_locate_stb",
                                             "regs__lookup_locate"]
                         + [f"regs__track_name_{k}" for k in range(NAME_SLOTS)])
        self.watch("i_stream__", record_layout)
        self.watch("o_stream__", record_layout)
        self.registers = RegisterFile()
        self.model = SymbolDirectoryModel(self.registers, max_locates=MAX_LOCATES)

    def set(self, name: str, value: int) -> None:
        getattr(self.dut, f"regs__{name}").value = value
        self.registers.write(f"symbols.{name}", value)

    async def track_locate(self, locate: int, flag: int, slot: int = 0) -> None:
        value = slot << 17 | flag << 16 | locate
        self.dut.regs__track_locate.value = value
        self.dut.regs__track_locate_stb.value = 1
        await self.cycles(1)
        self.dut.regs__track_locate_stb.value = 0
        await self.cycles(2)
        self.model.track_locate(value)

    async def lookup(self, locate: int) -> tuple[int, int]:
        self.dut.regs__lookup_locate.value = locate
        await self.cycles(2)
        return int(self.dut.regs__lookup_stock.value), int(self.dut.regs__lookup_tracked.value)


def random_record(rng, locates: dict[int, str]) -> Record:
    """A Stock Directory message for a (new or known) locate, or another record on a known,
    unknown, zero or out-of-range locate."""
    r = rng.random()
    if r < 0.2:
        locate = rng.choice([rng.randint(1, 40), rng.randint(1, MAX_LOCATES - 1), MAX_LOCATES + rng.randint(0, 9)])
        symbol = rng.choice(SYMBOLS)
        locates.setdefault(locate, symbol)
        message = itch.pack("R", stock_locate=locate, stock=symbol, market_category="Q")
    else:
        locate = rng.choice(list(locates) * 3 + [0, rng.getrandbits(16), MAX_LOCATES + 1] if locates else [0, 5])
        type_ = rng.choice(["A", "F", "E", "X", "D", "U", "P", "H", "S"])
        message = itch.pack(type_, stock_locate=locate)
    from .model import itch_decode
    return itch_decode(message)


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"symbols random records (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", record_layout,
                          pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    locates: dict[int, str] = {}
    sent = 0
    pairs = []
    for phase in range(8):
        # Host actions between batches: filter, names, direct tracking.
        tb.set("filter_enable", int(phase % 4 != 0))
        for k in range(NAME_SLOTS):
            tb.set(f"track_name_{k}", _name_value(rng.choice(SYMBOLS)) if rng.random() < 0.3 else 0)
        for _ in range(3):
            if locates:
                await tb.track_locate(rng.choice(list(locates)), rng.randint(0, 1), rng.choice([rng.randrange(256), 256 + rng.randrange(9)]))
        await tb.track_locate(MAX_LOCATES + 3, 1)   # beyond the table: ignored
        await tb.cycles(2)
        records = [random_record(rng, locates) for _ in range(200)]
        expected = []
        for k, record in enumerate(records):
            if tb.model.process(record):
                expected.append((sent + k, tb.model.annotate(record_values(record, sent + k))))
        first_out = len(tb.beats("o_stream__"))
        await source.send(record_values(r, sent + k) for k, r in enumerate(records))
        sent += len(records)
        await tb.drain({"i_stream__": sent, "o_stream__": first_out + len(expected)})
        outputs = tb.beats("o_stream__")[first_out:]
        for (k, want), got in zip(expected, outputs):
            assert got.fields == want, f"record {k}: " + str({f: (got.fields[f], want[f]) for f in want
                                                            if got.fields[f] != want[f]})
        pairs += [(k, beat) for (k, _), beat in zip(expected, outputs)]
        tb.check_counters(tb.model.counters, "symbols")
        for locate in rng.sample(list(locates), min(5, len(locates))) + [0, MAX_LOCATES + 1]:
            stock, tracked = await tb.lookup(locate)
            name, model_tracked = tb.model.lookup(locate)
            want = int.from_bytes(name.encode("latin-1"), "little") if name else 0
            assert (stock, tracked) == (want, int(model_tracked)), (locate, stock, tracked, name, model_tracked)
    counters = tb.model.counters
    assert all(counters[n] > 0 for n in counters), counters
    latency = tb.latencies([b.cycle for b in tb.beats("i_stream__")], pairs)
    tb.check_latency(latency, LATENCY, backpressure, "symbols latency (record taken -> record valid) per record")


@cocotb.test()
async def random_records(dut):
    """Random directory and order records, host tracking actions, output always ready."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_records_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)
