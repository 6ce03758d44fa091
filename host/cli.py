"""The ``tickwire`` command: register map, demo and simulation runs."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import load_register_overrides
from .errors import TickwireError
from .regmap import Register, RegisterMap

__all__ = ["main", "build_parser", "format_regmap"]

logger = logging.getLogger(__name__)

PROG = "tickwire"
#: Core clock of the pipeline contract: 156.25 MHz.
DEFAULT_CLOCK_MHZ = 156.25
FORMATS = ("table", "json", "markdown")
#: Exit status for bad input (arguments, files, register values), as argparse uses.
EXIT_BAD_INPUT = 2
#: Exit status when a command cannot run for another reason (missing module, I/O failure).
EXIT_FAILURE = 1


# -- argument types -----------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


# -- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tickwire`` and its subcommands."""
    # `-v` is accepted before and after the subcommand. The subcommands' copy defaults to SUPPRESS
    # so that it does not reset a count given before the subcommand.
    def add_verbose(parser: argparse.ArgumentParser, default: Any) -> None:
        parser.add_argument("-v", "--verbose", action="count", default=default,
                            help="log more: -v for progress, -vv for debug detail "
                                 "(default: warnings only)")
    verbose = argparse.ArgumentParser(add_help=False)
    add_verbose(verbose, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tickwire: ITCH over MoldUDP64 in, risk-checked OUCH 5.0 out, in gateware.")
    add_verbose(parser, 0)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    regs = commands.add_parser(
        "regs", parents=[verbose], help="print the register map",
        description="Print the register map: every register's address, width, access and reset.")
    regs.add_argument("--format", metavar="FORMAT", choices=FORMATS, default="table",
                      help=f"output format, one of {', '.join(FORMATS)}; the table is drawn with "
                           f"rich on a terminal, as plain text otherwise (default: %(default)s)")
    _add_map_argument(regs)
    regs.set_defaults(handler=_cmd_regs)

    demo = commands.add_parser(
        "demo", parents=[verbose], help="run the end-to-end demo in simulation",
        description="Simulate the pipeline on a generated ITCH feed and report the orders sent.")
    demo.add_argument("--out", metavar="DIR", type=Path, default=Path("build/demo"),
                      help="folder for the demo's outputs (default: %(default)s)")
    demo.add_argument("--messages", metavar="N", type=_positive_int, default=None,
                      help="number of ITCH messages in the feed (default: the demo's own)")
    demo.add_argument("--seed", metavar="N", type=_int, default=None,
                      help="random seed of the feed (default: the demo's own)")
    _add_clock_argument(demo)
    demo.set_defaults(handler=_cmd_demo)

    sim = commands.add_parser(
        "sim", parents=[verbose], help="build the simulation model or run a capture through it",
        description="Build the Verilator model of the pipeline, or run a capture through it.")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    build = sim_commands.add_parser(
        "build", parents=[verbose], help="build the simulation model",
        description="Generate the pipeline's Verilog and build the Verilator model.")
    build.set_defaults(handler=_cmd_sim_build)

    run = sim_commands.add_parser(
        "run", parents=[verbose], help="run a pcap feed through the simulated pipeline",
        description="Replay the Ethernet frames of a pcap file into the feed port of the "
                    "simulated pipeline and record what leaves the order port.")
    run.add_argument("--feed", metavar="PCAP", type=Path, required=True,
                     help="pcap file of Ethernet frames to replay into the feed port")
    run.add_argument("--out", metavar="DIR", type=Path, default=Path("build/run"),
                     help="folder for the run's outputs (default: %(default)s)")
    run.add_argument("--config", metavar="TOML", type=Path, default=None,
                     help="register settings: [stage] tables of register = value "
                          "(default: the registers' reset values)")
    _add_map_argument(run)
    _add_clock_argument(run)
    run.set_defaults(handler=_cmd_sim_run)
    return parser


def _add_map_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", metavar="FILE", type=Path, default=None,
                        help="register map JSON "
                             "(default: the packaged tickwire/host/registers.json)")


def _add_clock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clock-mhz", metavar="MHZ", type=_positive_float,
                        default=DEFAULT_CLOCK_MHZ,
                        help="core clock frequency in MHz (default: %(default)s)")


# -- commands -----------------------------------------------------------------------------------

def _cmd_regs(args: argparse.Namespace) -> int:
    regmap = RegisterMap.load(args.map)
    if args.format == "table" and sys.stdout.isatty():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            Console(file=sys.stdout).print(_rich_table(regmap))
            return 0
    # Plain text when rich is missing or the output is a file or a pipe, where rich would squeeze
    # the table into 80 columns.
    sys.stdout.write(format_regmap(regmap, args.format))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo = _lazy("tickwire.sim.demo", "run_demo")
    return run_demo(out_dir=args.out, messages=args.messages, seed=args.seed,
                    clock_mhz=args.clock_mhz)


def _cmd_sim_build(args: argparse.Namespace) -> int:
    build_top = _lazy("tickwire.sim.runner", "build_top")
    print(build_top())
    return 0


def _cmd_sim_run(args: argparse.Namespace) -> int:
    if not args.feed.is_file():
        raise TickwireError(f"feed {args.feed} not found")
    registers = None
    if args.config is not None:
        registers = load_register_overrides(args.config, RegisterMap.load(args.map))
    run_pcap = _lazy("tickwire.sim.demo", "run_pcap")
    return run_pcap(pcap=args.feed, out_dir=args.out, registers=registers,
                    clock_mhz=args.clock_mhz)


class _Unavailable(Exception):
    """A command's implementation cannot be imported."""


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported when the command runs (the simulation pulls in cocotb etc.)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise _Unavailable(f"{module} is not available in this installation") from None
        raise _Unavailable(f"{module} needs {e.name!r}, which is not installed; install the "
                           f"development dependencies: pip install -e '.[dev]'") from None
    except AttributeError:
        raise _Unavailable(f"{module} has no {name}()") from None


# -- register map output ------------------------------------------------------------------------

_COLUMNS = ("register", "address", "width", "access", "reset", "description")


def _row(r: Register) -> tuple[str, ...]:
    return (r.qualified_name, f"0x{r.address:04x}", str(r.width), r.access, f"0x{r.reset:x}",
            r.description)


def _title(regmap: RegisterMap) -> str:
    return (f"tickwire register map {regmap.source} (regmap_version {regmap.regmap_version}, "
            f"word addresses, 32-bit words)")


def format_regmap(regmap: RegisterMap, fmt: str) -> str:
    """The register map as plain text (``table``), ``json`` or ``markdown``."""
    if fmt == "json":
        return json.dumps(regmap.to_dict(), indent=2) + "\n"
    if fmt == "markdown":
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")
        lines = [f"| {' | '.join(c.capitalize() for c in _COLUMNS)} |",
                 "|" + "---|" * len(_COLUMNS)]
        for r in regmap:
            row = _row(r)
            lines.append(f"| `{row[0]}` | {' | '.join(cell(c) for c in row[1:])} |")
        return "\n".join(lines) + "\n"
    if fmt == "table":
        header = tuple(c.upper() for c in _COLUMNS)
        rows = [_row(r) for r in regmap]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(_COLUMNS) - 1)]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]

        lines = [_title(regmap), "", line(header)]
        for registers in regmap.by_stage().values():
            lines.append("")
            lines += [line(_row(r)) for r in registers]
        return "\n".join(text.rstrip() for text in lines) + "\n"
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def _rich_table(regmap: RegisterMap) -> Any:
    from rich.table import Table
    table = Table(title=_title(regmap), title_justify="left")
    for column in _COLUMNS:
        table.add_column(column.capitalize(), justify="right" if column == "width" else "left",
                         no_wrap=column != "description")
    for registers in regmap.by_stage().values():
        for r in registers:
            table.add_row(*_row(r))
        table.add_section()
    return table


# -- entry point --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tickwire`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tickwire").setLevel(level)  # also when the root logger was set up already
    try:
        return args.handler(args)
    except (TickwireError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:  # a failed simulation build or run (SimulationFailed, Verilator)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except _Unavailable as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
