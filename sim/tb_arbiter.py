"""cocotb bench of :mod:`tickwire.hdl.arbiter`: three packet streams in, one out, every cycle
checked against a round-robin model written from the class docstring, every packet checked whole
and in its input's order.

``TICKWIRE_RANDOM_SEED`` overrides the seed.
"""

from __future__ import annotations

import logging

import cocotb
from cocotb.triggers import RisingEdge

from ..hdl.packet import packet_layout
from .tb import (bench_seed, check_packet_framing, cycle_pause, packet_beats, packet_bytes, reset, rng_for,
                 split_packets, start_clock, unpack, wait_until, StreamSink, StreamSource)

logger = logging.getLogger("tb_arbiter")
logger.setLevel(logging.INFO)

SEED = bench_seed(23)
#: Inputs of the DUT the runner builds (``PacketArbiter(n_inputs=3)``).
N_INPUTS = 3


class RoundRobinModel:
    """The arbiter's choice, cycle by cycle (docstring of ``PacketArbiter``): stay with the input
    of an offered, unfinished packet; otherwise take the first input with a beat waiting after
    the input of the last finished packet."""

    def __init__(self, n: int):
        self.n = n
        self.locked = False
        self.grant = 0
        self.previous = n - 1

    def select(self, valids: list[int]) -> int:
        if self.locked:
            return self.grant
        order = [(self.previous + 1 + j) % self.n for j in range(self.n)]
        return next((k for k in order if valids[k]), order[0])

    def step(self, valids: list[int], ready: int, last: int) -> None:
        k = self.select(valids)
        if valids[k]:
            if ready and last:
                self.locked, self.previous = False, k
            else:
                self.locked, self.grant = True, k


def packet(rng, source: int, index: int, length: int | None = None) -> bytes:
    """A packet that names its input and its index in the first two bytes."""
    n = rng.randint(1, 100) if length is None else length
    return (bytes([source, index & 0xFF]) + rng.randbytes(max(0, n - 2)))[:n]


class ArbiterTB:
    """The arbiter with a source per input (each with its own random stalls), a sink (optional
    random backpressure) and a cycle-by-cycle check against :class:`RoundRobinModel`."""

    def __init__(self, dut, *, source_pauses=(None,) * N_INPUTS, sink_pause=None):
        self.dut = dut
        self.log = logging.getLogger("tb_arbiter.tb")
        start_clock(dut)
        dut.rst.value = 0
        self.layout = packet_layout()
        self.sources = [StreamSource(dut, f"i_stream__{k}__", self.layout, pause=source_pauses[k])
                        for k in range(N_INPUTS)]
        for k in range(N_INPUTS):
            getattr(dut, f"i_stream__{k}__payload").value = 0
        dut.o_stream__ready.value = 0
        self.sink = StreamSink(dut, "o_stream__", self.layout, pause=sink_pause)
        self.sent: list[list[bytes]] = [[] for _ in range(N_INPUTS)]
        self.model = RoundRobinModel(N_INPUTS)
        self.cycles_checked = 0
        self.bubbles = 0          # cycles between packets with a beat waiting and none offered
        self.grants: list[int] = []   # the input of each packet, in output order

    async def reset(self):
        await reset(self.dut)
        cocotb.start_soon(self._check_cycles())

    async def _check_cycles(self):
        dut = self.dut
        ins = [(getattr(dut, f"i_stream__{k}__valid"), getattr(dut, f"i_stream__{k}__ready"),
                getattr(dut, f"i_stream__{k}__payload")) for k in range(N_INPUTS)]
        in_packet = False
        while True:
            await RisingEdge(dut.clk)
            valids = [int(v.value) for v, _, _ in ins]
            readies = [int(r.value) for _, r, _ in ins]
            o_valid, o_ready = int(dut.o_stream__valid.value), int(dut.o_stream__ready.value)
            k = self.model.select(valids)
            where = f"cycle {self.cycles_checked}: inputs valid {valids}, model selects {k}"
            assert o_valid == valids[k], f"{where}, o_stream.valid {o_valid}"
            assert readies == [o_ready if j == k else 0 for j in range(N_INPUTS)], \
                f"{where}, o_stream.ready {o_ready}, inputs ready {readies}"
            last = 0
            if o_valid:
                o_payload = int(dut.o_stream__payload.value)
                assert o_payload == int(ins[k][2].value), f"{where}: payload is not input {k}'s"
                last = unpack(self.layout, o_payload)["last"]
                if o_ready:
                    if not in_packet:
                        self.grants.append(k)
                    in_packet = not last
            elif any(valids) and not self.model.locked:
                self.bubbles += 1
            self.model.step(valids, o_ready, last)
            self.cycles_checked += 1

    async def send(self, source: int, packets: list[bytes]):
        for p in packets:
            self.sent[source].append(p)
            await self.sources[source].send(packet_beats(p))

    async def settle(self):
        total = sum(len(s) for s in self.sent)
        await wait_until(self.dut, lambda: len(split_packets(self.sink.beats)) >= total and
                         not any(int(s.valid.value) for s in self.sources),
                         lambda: f"{len(split_packets(self.sink.beats))} of {total} packets",
                         timeout_cycles=200_000, settle=8)

    def check(self) -> list[list[bytes]]:
        """Every packet out whole, exactly once, in its input's order; nothing left over."""
        packets = split_packets(self.sink.beats)
        assert packets == [] or packets[-1][-1]["last"], "the last packet out is unfinished"
        by_source: list[list[bytes]] = [[] for _ in range(N_INPUTS)]
        for k, beats in enumerate(packets):
            data = packet_bytes(beats)
            check_packet_framing(k, beats, data)
            by_source[data[0]].append(data)
        for source in range(N_INPUTS):
            assert by_source[source] == self.sent[source], \
                f"input {source}: {len(by_source[source])} packets out, {len(self.sent[source])} sent, " \
                f"first difference at " \
                f"{next((i for i, (a, b) in enumerate(zip(by_source[source], self.sent[source])) if a != b), None)}"
        assert len(self.grants) == len(packets)
        self.log.info("%d packets (%s per input), %d cycles checked against the model, %d bubbles",
                      len(packets), [len(s) for s in self.sent], self.cycles_checked, self.bubbles)
        return by_source


@cocotb.test()
async def arbiter_random(dut):
    """Random packet lengths, random stalls on every input (different rates) and random
    backpressure: packets never interleaved, none lost, each input's order kept, every cycle
    as the model says."""
    rng = rng_for(SEED, logger, "arbiter_random")
    tb = ArbiterTB(dut, source_pauses=[cycle_pause(p, seed=SEED + k) for k, p in enumerate((0.1, 0.5, 0.8))],
                   sink_pause=cycle_pause(0.3, seed=SEED + 10))
    await tb.reset()
    senders = [cocotb.start_soon(tb.send(k, [packet(rng, k, i) for i in range(rng.randint(40, 80))]))
               for k in range(N_INPUTS)]
    for s in senders:
        await s
    await tb.settle()
    tb.check()
    assert tb.cycles_checked > 1000 and tb.bubbles == 0


@cocotb.test()
async def arbiter_saturated(dut):
    """Every input always has a packet waiting and the output is always ready: one beat per
    cycle with no bubble between packets, and the inputs take turns packet by packet."""
    rng = rng_for(SEED, logger, "arbiter_saturated")
    tb = ArbiterTB(dut)
    await tb.reset()
    per_input = 30
    senders = [cocotb.start_soon(tb.send(k, [packet(rng, k, i) for i in range(per_input)]))
               for k in range(N_INPUTS)]
    for s in senders:
        await s
    await tb.settle()
    tb.check()
    assert tb.bubbles == 0, f"{tb.bubbles} cycles without a beat while one was waiting"
    cycles = tb.sink.cycles
    assert cycles[-1] - cycles[0] + 1 == len(tb.sink.beats), "the output idled between packets"
    assert tb.grants == [k for _ in range(per_input) for k in range(N_INPUTS)], tb.grants[:12]


@cocotb.test()
async def arbiter_one_input(dut):
    """Only input 2 sends, back to back, single-beat and longer packets: no bubble between its
    packets either; then input 0 and input 2 alternate packets."""
    rng = rng_for(SEED, logger, "arbiter_one_input")
    tb = ArbiterTB(dut)
    await tb.reset()
    await tb.send(2, [packet(rng, 2, i, rng.choice((1, 8, 9, 64))) for i in range(40)])
    await tb.settle()
    assert tb.bubbles == 0
    assert tb.sink.cycles[-1] - tb.sink.cycles[0] + 1 == len(tb.sink.beats)
    a = cocotb.start_soon(tb.send(0, [packet(rng, 0, i) for i in range(10)]))
    b = cocotb.start_soon(tb.send(2, [packet(rng, 2, 40 + i) for i in range(10)]))
    await a
    await b
    await tb.settle()
    tb.check()
    assert tb.bubbles == 0
    assert tb.grants[40:] == [0, 2] * 10, tb.grants[40:]
