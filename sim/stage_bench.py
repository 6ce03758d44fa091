"""cocotb scaffolding shared by the single-stage benches (tb_itch, tb_trigger, tb_risk, tb_ouch):
one cycle counter for the whole bench, stream monitors stamped with it, latency and drain checks.

Every clock edge the monitor records, for each watched stream, the beat taken on that edge
(``valid`` and ``ready`` as they were just before it) with the edge's number; the latency of a
stage is then the edge an output beat is taken on minus the edge its input was taken on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cocotb
from cocotb.triggers import RisingEdge

from .tb import read_counters, reset, start_clock, unpack

__all__ = ["Beat", "StageTB"]


@dataclass
class Beat:
    cycle: int
    word: int
    fields: dict[str, int]


@dataclass
class _Stream:
    valid: object
    ready: object | None
    payload: object
    layout: object
    beats: list[Beat] = field(default_factory=list)


class StageTB:
    """One stage on its own: clock, every input 0, reset, stream monitors and a cycle counter.

    Parameters
    ----------
    dut
        The cocotb handle of the stage's top level.
    name
        Logger name (``tb_<stage>``).
    inputs
        Names of every input port except ``clk`` and ``rst``; all are driven to 0.
    """

    def __init__(self, dut, name: str, inputs: list[str]):
        self.dut = dut
        self.log = logging.getLogger(name)
        self.log.setLevel(logging.INFO)
        start_clock(dut)
        for port in inputs:
            getattr(dut, port).value = 0
        self.cycle = 0
        self.streams: dict[str, _Stream] = {}
        self._ready_tasks: dict[str, object] = {}
        cocotb.start_soon(self._monitor())

    async def reset(self) -> None:
        await reset(self.dut)

    def watch(self, prefix: str, layout, *, always_ready: bool = False) -> None:
        """Record every beat taken on stream ``<prefix>valid/ready/payload``."""
        d = self.dut
        self.streams[prefix] = _Stream(getattr(d, prefix + "valid"),
                                       None if always_ready else getattr(d, prefix + "ready"),
                                       getattr(d, prefix + "payload"), layout)

    def beats(self, prefix: str) -> list[Beat]:
        return self.streams[prefix].beats

    def clear(self) -> None:
        for s in self.streams.values():
            s.beats.clear()

    def drive_ready(self, prefix: str, pause=None) -> None:
        """Drive the ``ready`` of output stream ``prefix``: always 1, or 0 when ``pause`` says so."""
        old = self._ready_tasks.pop(prefix, None)
        if old is not None:
            old.cancel()
        ready = getattr(self.dut, prefix + "ready")

        async def run():
            while True:
                ready.value = 0 if (pause is not None and next(pause)) else 1
                await RisingEdge(self.dut.clk)

        self._ready_tasks[prefix] = cocotb.start_soon(run())

    async def _monitor(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            for s in self.streams.values():
                if int(s.valid.value) and (s.ready is None or int(s.ready.value)):
                    word = int(s.payload.value)
                    s.beats.append(Beat(self.cycle, word, unpack(s.layout, word)))

    async def cycles(self, n: int) -> None:
        for _ in range(n):
            await RisingEdge(self.dut.clk)

    async def drain(self, expected: dict[str, int], *, timeout: int = 20000, settle: int = 30) -> None:
        """Wait until each stream in ``expected`` has taken that many beats, then ``settle`` more
        cycles, and assert none took more (nothing unexpected still in flight)."""
        for _ in range(timeout):
            if all(len(self.beats(p)) >= n for p, n in expected.items()):
                break
            await RisingEdge(self.dut.clk)
        await self.cycles(settle)
        counts = {p: len(self.beats(p)) for p in expected}
        assert counts == expected, f"beats taken {counts}, model predicts {expected}"

    def check_counters(self, model_counters: dict[str, int], stage: str) -> dict[str, int]:
        """Compare every ``<stage>.<name>`` the model predicts with port ``regs__<name>``."""
        got = read_counters(self.dut, model_counters)
        diffs = {n: (got[n], model_counters[n]) for n in got if got[n] != model_counters[n]}
        assert not diffs, f"{stage} counters (dut, model) differ: {diffs}"
        self.log.info("%s counters match the model: %s", stage, got)
        return got

    def latencies(self, accept_cycles: list[int], pairs: list[tuple[int, Beat]]) -> list[int]:
        """Output edge minus input edge, for (input index, output beat) pairs."""
        return [beat.cycle - accept_cycles[index] for index, beat in pairs]

    def check_latency(self, latency: list[int], documented: int, backpressure: bool, what: str) -> None:
        """Without backpressure every latency is the documented one; with it, none is shorter."""
        self.log.info("%s, backpressure=%s: min %d max %d cycles over %d", what, backpressure,
                      min(latency), max(latency), len(latency))
        if backpressure:
            assert min(latency) >= documented
        else:
            assert set(latency) == {documented}, f"latencies {sorted(set(latency))}, documented {documented}"
