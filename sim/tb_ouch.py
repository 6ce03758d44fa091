"""cocotb bench of the OUCH encoder alone: random intents and register settings, every 50-byte
SoupBinTCP packet compared byte for byte with :class:`tickwire.sim.model.OuchModel`, the
UserRefNum counter reloaded through ``next_user_ref_num`` between and during bursts."""

from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge

from ..hdl.net import payload_record_layout
from ..hdl.ouch import ENTER_ORDER_PACKET_LENGTH
from ..hdl.trigger import intent_layout
from ..protocols import ouch, soupbintcp
from .model import Intent, OuchModel, RegisterFile
from .stage_bench import StageTB
from .tb import bench_seed, rng_for
from .tb import StreamSource, cycle_pause

#: Cycles from an intent taken to its packet valid (docstring of ``OuchEncoder``).
LATENCY = 1
SEED = bench_seed(5301)
BATCHES = 8
INTENTS_PER_BATCH = 120

ASCII_REGISTERS = ("time_in_force", "display", "capacity", "intermarket_sweep_eligibility", "cross_type")
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
_U32 = 0xFFFFFFFF
_CL_ORD_ID = soupbintcp.HEADER_LENGTH + ouch.ENTER_ORDER["cl_ord_id"].offset
_USER_REF_NUM = soupbintcp.HEADER_LENGTH + ouch.ENTER_ORDER["user_ref_num"].offset


class TB(StageTB):
    def __init__(self, dut):
        super().__init__(dut, "tb_ouch", ["i_stream__valid", "i_stream__payload", "o_stream__ready",
                                          "regs__next_user_ref_num", "regs__next_user_ref_num_stb",
                                          "regs__cl_ord_id_prefix"]
                         + [f"regs__{n}" for n in ASCII_REGISTERS])
        self.layout = payload_record_layout(ENTER_ORDER_PACKET_LENGTH)
        self.watch("i_stream__", intent_layout)
        self.watch("o_stream__", self.layout)
        self.registers = RegisterFile()
        self.model = OuchModel(self.registers)
        self.reloads: list[tuple[int, int]] = []  # (edge that samples the strobe, value)

    def set_registers(self, values: dict[str, int]) -> None:
        """Drive the plain rw registers (not next_user_ref_num) and give the model the same."""
        for name, value in values.items():
            getattr(self.dut, f"regs__{name}").value = value
            self.registers.write(f"ouch.{name}", value)

    async def write_next_user_ref_num(self, value: int) -> int:
        """A host write of next_user_ref_num: the value and a one-cycle strobe, driven between
        edges. Returns the edge that samples the strobe (the model applies it there)."""
        await FallingEdge(self.dut.clk)
        self.dut.regs__next_user_ref_num.value = value
        self.dut.regs__next_user_ref_num_stb.value = 1
        edge = self.cycle + 1
        await FallingEdge(self.dut.clk)
        self.dut.regs__next_user_ref_num_stb.value = 0
        self.reloads.append((edge, value))
        return edge

    def check_user_ref_num(self) -> None:
        got = int(self.dut.regs__user_ref_num.value)
        want = self.registers["ouch.next_user_ref_num"]
        assert got == want, f"user_ref_num reads {got:#x}, model's next UserRefNum is {want:#x}"

    def check_packets(self, expected: list[tuple[int, bytes]], first: int = 0) -> list:
        got = self.beats("o_stream__")[first:]
        assert len(got) == len(expected), f"{len(got)} packets, model predicts {len(expected)}"
        for n, ((k, want), beat) in enumerate(zip(expected, got)):
            data = beat.fields["data"].to_bytes(ENTER_ORDER_PACKET_LENGTH, "little")
            assert beat.fields["length"] == len(want) == ENTER_ORDER_PACKET_LENGTH, \
                f"packet {n}: length {beat.fields['length']}, model {len(want)}"
            assert data == want, f"packet {n} (intent {k}) differs:\n dut   {data.hex()}\n model {want.hex()}"
            # The ClOrdID spelled out: prefix, UserRefNum in 8 upper-case hex digits, 2 spaces.
            ref = int.from_bytes(data[_USER_REF_NUM:_USER_REF_NUM + 4], "big")
            prefix = self.registers["ouch.cl_ord_id_prefix"].to_bytes(4, "big")
            assert data[_CL_ORD_ID:_CL_ORD_ID + 14] == prefix + f"{ref:08X}".encode() + b"  ", \
                f"packet {n}: ClOrdID {data[_CL_ORD_ID:_CL_ORD_ID + 14]!r}"
        return [(k, beat) for (k, _), beat in zip(expected, got)]


def model_intent(fields: dict[str, int]) -> Intent:
    return Intent(side=chr(fields["side"]), price=fields["price"], quantity=fields["quantity"],
                  symbol=fields["stock"].to_bytes(8, "little").decode("ascii"))


def random_intent(rng, sequence_number: int | None = None) -> dict[str, int]:
    symbol = rng.choice(["AAPL", "MSFT", "NVDA", "".join(rng.choice(_PRINTABLE) for _ in range(8))])
    return {
        "side": ord(rng.choice("BSTE")),
        "quantity": rng.choice([1, 100, _U32, rng.getrandbits(32), rng.randint(1, 10_000)]),
        "price": rng.choice([0, _U32, 189_9700, rng.getrandbits(32)]),
        "stock": int.from_bytes(symbol.ljust(8).encode("ascii"), "little"),
        "stock_locate": rng.getrandbits(16),
        "timestamp": rng.getrandbits(48),
        "sequence_number": rng.getrandbits(64) if sequence_number is None else sequence_number,
    }


def random_registers(rng) -> dict[str, int]:
    values = {name: ord(rng.choice(_PRINTABLE)) for name in ASCII_REGISTERS}
    values["cl_ord_id_prefix"] = int.from_bytes("".join(rng.choice(_PRINTABLE) for _ in range(4)).encode(), "big")
    return values


async def run_test_random(dut, *, backpressure: bool):
    tb = TB(dut)
    rng = rng_for(SEED + backpressure, tb.log, f"ouch random intents (backpressure={backpressure})")
    await tb.reset()
    tb.drive_ready("o_stream__", cycle_pause(0.5, seed=SEED + 1) if backpressure else None)
    source = StreamSource(dut, "i_stream__", intent_layout,
                          pause=cycle_pause(0.3, seed=SEED + 2) if backpressure else None)
    sent = 0
    pairs = []
    for index in range(BATCHES):
        if index == 0:
            # The registers' documented reset values; the counter starts at 1 without a write.
            tb.set_registers({n: tb.registers[f"ouch.{n}"] for n in ASCII_REGISTERS + ("cl_ord_id_prefix",)})
        else:
            tb.set_registers(random_registers(rng))
            start = rng.choice([0, 1, _U32 - 20, rng.getrandbits(32), 0x0009FFF0, 0xABCDEF00])
            await tb.write_next_user_ref_num(start)
            tb.registers.write("ouch.next_user_ref_num", start)
        await tb.cycles(2)
        tb.check_user_ref_num()
        tb.log.info("batch %d: UserRefNum from %#x, registers %s", index, tb.registers["ouch.next_user_ref_num"],
                    {n: tb.registers[f"ouch.{n}"] for n in ASCII_REGISTERS + ("cl_ord_id_prefix",)})
        intents = [random_intent(rng) for _ in range(INTENTS_PER_BATCH)]
        expected = [(sent + k, tb.model.process(model_intent(f))) for k, f in enumerate(intents)]
        first = len(tb.beats("o_stream__"))
        await source.send(intents)
        sent += len(intents)
        await tb.drain({"i_stream__": sent, "o_stream__": first + len(expected)})
        pairs += tb.check_packets(expected, first)
        tb.check_counters(tb.model.counters, "ouch")
        tb.check_user_ref_num()

    latency = tb.latencies([b.cycle for b in tb.beats("i_stream__")], pairs)
    tb.check_latency(latency, LATENCY, backpressure, "ouch latency (intent taken -> packet valid) per packet")


@cocotb.test()
async def random_intents(dut):
    """Random intents, registers and UserRefNum starts (wrap-around too), output always ready:
    packets byte for byte, orders_sent, user_ref_num, latency = 1."""
    await run_test_random(dut, backpressure=False)


@cocotb.test()
async def random_intents_backpressure(dut):
    """The same under random starvation of the input and backpressure on the output."""
    await run_test_random(dut, backpressure=True)


@cocotb.test()
async def reload_mid_stream(dut):
    """next_user_ref_num written while intents stream back to back (and twice in a row): every
    intent taken before the write's edge numbers on from the old value, every one after from
    the written value; nothing is lost or numbered twice."""
    tb = TB(dut)
    rng = rng_for(SEED + 9, tb.log, "ouch reload mid-stream")
    await tb.reset()
    tb.set_registers({n: tb.registers[f"ouch.{n}"] for n in ASCII_REGISTERS + ("cl_ord_id_prefix",)})
    tb.drive_ready("o_stream__")
    intents = [random_intent(rng, sequence_number=k) for k in range(80)]
    source = StreamSource(dut, "i_stream__", intent_layout)

    async def host():
        for wait, value in ((15, 0x1000), (10, 0xFFFFFFFE), (4, 0x20), (0, 0x7FFF_FFF0), (20, 5)):
            await tb.cycles(wait)
            await tb.write_next_user_ref_num(value)

    writer = cocotb.start_soon(host())
    await source.send(intents)
    await writer
    await tb.drain({"i_stream__": len(intents), "o_stream__": len(intents)}, settle=10)
    tb.log.info("reloads (strobe edge, value): %s", [(e, hex(v)) for e, v in tb.reloads])

    taken = tb.beats("i_stream__")
    assert [b.fields["sequence_number"] for b in taken] == list(range(len(intents)))
    pending = list(tb.reloads)
    expected = []
    for k, beat in enumerate(taken):
        while pending and pending[0][0] <= beat.cycle:
            tb.registers.write("ouch.next_user_ref_num", pending.pop(0)[1])
        expected.append((k, tb.model.process(model_intent(intents[k]))))
    assert not pending, f"reloads after the last intent: {pending}"
    pairs = tb.check_packets(expected)
    tb.check_counters(tb.model.counters, "ouch")
    tb.check_user_ref_num()
    refs = [int.from_bytes(b.fields["data"].to_bytes(ENTER_ORDER_PACKET_LENGTH, "little")
                           [_USER_REF_NUM:_USER_REF_NUM + 4], "big") for _, b in pairs]
    tb.log.info("UserRefNums carried: %s", " ".join(f"{r:X}" for r in refs))
    # Every write was followed by at least one intent before the next, and the counter wrapped.
    for _, value in tb.reloads:
        assert value in refs, f"no order carried the written UserRefNum {value:#x}"
    assert refs.index(0) == refs.index(0xFFFFFFFF) + 1, "UserRefNum did not wrap from 0xFFFFFFFF to 0"
