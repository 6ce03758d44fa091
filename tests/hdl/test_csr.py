"""CSR bank (Amaranth simulator) and the generated register map files."""

import json
import zlib

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from tickwire.hdl.build import REGMAP_JSON, REGMAP_MD, regmap
from tickwire.hdl.crc32 import CRC_INIT, CRC_RESIDUE, crc32_matrix, crc32_step
from tickwire.hdl.csr import CsrBank, Register, regmap_json, regmap_markdown, registers_signature

REGS = (
    Register("limit", 48, "rw", "a wide rw register", reset=0x1234),
    Register("load", 32, "rw", "a strobed register", strobe=True),
    Register("count", 64, "ro", "a wide counter"),
)


class _Stage(wiring.Component):
    def __init__(self):
        super().__init__({"regs": Out(registers_signature(REGS))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.regs.count.eq(self.regs.count + 0x1_0000_0001)
        return m


def test_generated_regmap_files_are_current():
    doc = regmap()
    assert json.loads(REGMAP_JSON.read_text()) == json.loads(regmap_json(doc)), \
        "host/registers.json is stale: python -m tickwire.hdl.build --regmap"
    assert REGMAP_MD.read_text() == regmap_markdown(doc), \
        "docs/registers.md is stale: python -m tickwire.hdl.build --regmap"


def test_bank_read_write_strobe_and_latch():
    bank = CsrBank([("first", ()), ("stage", REGS)])
    stage = _Stage()
    m = Module()
    m.submodules.bank = bank
    m.submodules.stage = stage
    wiring.connect(m, bank.stage, stage.regs)
    amap = bank.address_map()
    base = amap["stage.limit"]["address"]
    assert base == 64 and amap["stage.load"]["address"] == 66 and amap["stage.count"]["address"] == 67
    sim = Simulator(m)
    sim.add_clock(1e-6)
    seen = {}

    async def tb(ctx):
        bus = bank.bus

        async def write(addr, value):
            ctx.set(bus.addr, addr)
            ctx.set(bus.w_data, value)
            ctx.set(bus.w_stb, 1)
            await ctx.tick()
            ctx.set(bus.w_stb, 0)

        async def read(addr):
            ctx.set(bus.addr, addr)
            ctx.set(bus.r_stb, 1)
            await ctx.tick()
            ctx.set(bus.r_stb, 0)
            return ctx.get(bus.r_data)

        assert await read(base) == 0x1234
        await write(base, 0xDEADBEEF)
        await write(base + 1, 0xFFFFCAFE)   # bits above 48 are dropped
        assert ctx.get(stage.regs.limit) == 0xCAFE_DEADBEEF
        assert await read(base + 1) == 0xCAFE
        await write(amap["stage.load"]["address"], 7)
        seen["strobe"] = ctx.get(stage.regs.load_stb)
        await ctx.tick()
        seen["strobe_after"] = ctx.get(stage.regs.load_stb)
        lo = await read(67)
        await ctx.tick()
        await ctx.tick()
        hi = await read(68)
        # The high word was latched with the low one: both halves of the same count.
        assert hi == lo, (hi, lo)
        assert await read(200) == 0  # unmapped: beyond the last stage's window
        assert await read(base + 1) == 0xCAFE
        assert await read(base + 10) == 0  # unmapped word inside a stage's window
        assert await read(5) == 0          # a stage without registers
        assert await read(base) == 0xDEADBEEF
        for _ in range(3):                 # r_data holds the word until the next read
            await ctx.tick()
            assert ctx.get(bus.r_data) == 0xDEADBEEF

    sim.add_testbench(tb)
    sim.run()
    assert seen == {"strobe": 1, "strobe_after": 0}


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_crc_matrices_match_zlib(data):
    crc = CRC_INIT
    for k in range(0, len(data), 8):
        chunk = data[k:k + 8]
        masks = crc32_matrix(len(chunk))
        bits = int.from_bytes(chunk, "little")
        crc = sum(((bin(crc & cm).count("1") + bin(bits & dm).count("1")) & 1) << i
                  for i, (cm, dm) in enumerate(masks))
    assert crc ^ 0xFFFFFFFF == zlib.crc32(data)
    fcs = zlib.crc32(data).to_bytes(4, "little")
    assert crc32_step(CRC_INIT, data + fcs) == CRC_RESIDUE
