"""The ``tickwire`` command: register map, demo and simulation runs."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
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
    demo.add_argument("--transport", metavar="MODE", choices=("auto", "tcp", "udp"), default="auto",
                      help="tcp: after the measured pipeline run, the Verilated card trades with the "
                           "exchange simulator over its TCP engine through TAP interfaces (needs root "
                           "and /dev/net/tun); udp: the pipeline run only; auto: tcp where it can run "
                           "(default: %(default)s)")
    demo.add_argument("--seconds", metavar="S", type=float, default=6.0,
                      help="trading time of the TCP part (default: %(default)s)")
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

    decode = sim_commands.add_parser(
        "decode", parents=[verbose], help="decode an ITCH capture with the gateware",
        description="Run FILE (raw ITCH or a pcap of MoldUDP64, told apart by its header) through "
                    "the market-data gateware in the native replay harness and write one JSON "
                    "object per decoded message.")
    decode.add_argument("file", metavar="FILE", type=Path, help="raw ITCH file or pcap")
    decode.add_argument("-o", "--output", metavar="OUT", type=Path, default=None,
                        help="JSON lines file to write (default: standard output)")
    decode.add_argument("--gap", metavar="N", type=_positive_int, default=12,
                        help="XGMII characters from each frame's /T/ to the next start "
                             "(default: %(default)s, the minimum inter-frame gap)")
    decode.set_defaults(handler=_cmd_sim_decode)
    importlib.import_module("tickwire.sim.card").add_commands(sim_commands, [verbose])  # serve
    importlib.import_module("tickwire.sim.book_replay").add_commands(sim_commands, [verbose])  # book

    itch = commands.add_parser(
        "itch", parents=[verbose], help="make and convert ITCH capture files",
        description="Generate synthetic ITCH 5.0 feeds and convert between raw ITCH and pcap.")
    itch_commands = itch.add_subparsers(dest="itch_command", metavar="COMMAND", required=True)
    gen = itch_commands.add_parser(
        "gen", parents=[verbose], help="write a synthetic raw ITCH file",
        description="Write a synthetic trading day as a raw ITCH file (each message after its "
                    "2-byte big-endian length): system events, stock directory, orders that are "
                    "added, executed, cancelled, replaced and deleted consistently, trades.")
    gen.add_argument("--messages", metavar="N", type=_positive_int, required=True,
                     help="number of messages")
    gen.add_argument("--symbols", metavar="K", type=_positive_int, default=3,
                     help="number of symbols (default: %(default)s)")
    gen.add_argument("--seed", metavar="S", type=_int, default=1,
                     help="random seed: equal seeds give equal files (default: %(default)s)")
    gen.add_argument("-o", "--output", metavar="FILE", type=Path, required=True,
                     help="raw ITCH file to write")
    gen.add_argument("--profile", metavar="PROFILE", choices=("day", "book"), default="day",
                     help="day: every message type, prices loosely around a mid; book: an uncrossed "
                          "order book with price-time executions at the touch, for order-book work "
                          "(at most 8 symbols) (default: %(default)s)")
    gen.set_defaults(handler=_cmd_itch_gen)
    convert = itch_commands.add_parser(
        "convert", parents=[verbose], help="raw ITCH to MoldUDP64 pcap, or back",
        description="Convert raw ITCH into a pcap of MoldUDP64 datagrams over UDP, or the "
                    "messages of such a pcap into raw ITCH; the direction follows IN's header.")
    convert.add_argument("input", metavar="IN", type=Path, help="raw ITCH file or pcap")
    convert.add_argument("output", metavar="OUT", type=Path, help="file to write")
    convert.set_defaults(handler=_cmd_itch_convert)
    importlib.import_module("tickwire.sim.exchange").add_commands(commands, [verbose])  # exchange
    for module in ("journal", "appconfig", "boards", "cli_agent"):  # commands that live beside their host modules
        importlib.import_module(f"{__package__}.{module}").add_commands(commands, [verbose])
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
    rc = run_demo(out_dir=args.out, messages=args.messages, seed=args.seed,
                  clock_mhz=args.clock_mhz)
    if args.transport == "udp":
        return rc
    tcp_demo = importlib.import_module("tickwire.sim.tcp_demo")
    why = tcp_demo.unavailable()
    if why:
        if args.transport == "tcp":
            raise TickwireError(f"the TCP demo cannot run here: {why}")
        print(f"\n(the TCP part is skipped: {why}; run as root with /dev/net/tun for the card's "
              f"TCP engine against the exchange simulator)")
        return rc
    if not 0 < args.seconds <= 600:
        raise TickwireError(f"--seconds must be in (0, 600], not {args.seconds}")
    print()
    summary = tcp_demo.run_tcp_demo(seconds=args.seconds,
                                    say=lambda text: print(f"tickwire: {text}", file=sys.stderr, flush=True))
    print(tcp_demo.format_tcp_summary(summary))
    return rc if summary["answers"] and summary["accepted"] else 1


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


def _input_file(path: Path) -> Path:
    if not path.is_file():
        raise TickwireError(f"{path} not found")
    return path


def _cmd_sim_decode(args: argparse.Namespace) -> int:
    decode_to_jsonl = _lazy("tickwire.sim.replay", "decode_to_jsonl")
    track = _lazy("tickwire.sim.progress", "track")
    replacing = _lazy("tickwire.sim.itchfile", "replacing")
    _input_file(args.file)
    harness = _lazy("tickwire.sim.replay", "build_harness")(
        announce=lambda text: print(f"{PROG}: {text}", file=sys.stderr))
    if args.output is None:
        try:
            run = decode_to_jsonl(args.file, sys.stdout, gap=args.gap, harness=harness)
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    else:
        with replacing(args.output) as tmp, open(tmp, "w") as out:
            run = decode_to_jsonl(args.file, out, track=track, gap=args.gap, harness=harness)
    summary = (f"{args.file}: {run.records} messages decoded in {run.seconds:.1f} s "
               f"({run.records / max(run.seconds, 1e-9) * 60:,.0f} messages/min), "
               f"{run.frames} frames, {run.cycles} cycles")
    if args.output is not None:  # standard output carries the records
        print(summary, file=sys.stderr)
    else:
        logger.info("%s", summary)
    return 0


def _cmd_itch_gen(args: argparse.Namespace) -> int:
    if args.profile == "book":
        if args.symbols > 8:
            raise TickwireError(f"--profile book has 8 symbols at most, not {args.symbols}")
        book_day = _lazy("tickwire.sim.book_feed", "book_day")
        write_raw_itch = _lazy("tickwire.sim.itchfile", "write_raw_itch")
        track = _lazy("tickwire.sim.progress", "track")
        count = write_raw_itch(args.output, track(book_day(args.messages, seed=args.seed, symbols=args.symbols),
                                                  args.messages, f"generating {args.output.name}"))
        logger.info("wrote %d messages to %s", count, args.output)
        return 0
    generate_raw_itch = _lazy("tickwire.sim.itchfile", "generate_raw_itch")
    count = generate_raw_itch(args.output, args.messages, args.symbols, args.seed,
                              track=_lazy("tickwire.sim.progress", "track"))
    logger.info("wrote %d messages to %s", count, args.output)
    return 0


def _cmd_itch_convert(args: argparse.Namespace) -> int:
    convert = _lazy("tickwire.sim.itchfile", "convert")
    source, target, count = convert(_input_file(args.input), args.output,
                                    track=_lazy("tickwire.sim.progress", "track"))
    logger.info("%s (%s) -> %s (%s): %d messages", args.input, source, args.output, target, count)
    return 0


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
