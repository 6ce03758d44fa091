"""Order book replay: raw ITCH or pcap files through the Verilated market-data path, symbol
directory and order book (:class:`tickwire.hdl.market_data.BookTop`), top-of-book records out;
and the same file through the reference book (:mod:`tickwire.sim.book_model`) to compare."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

from tickwire.host.errors import TickwireError

from .progress import Track, no_track
from .replay import Replay, build_harness, replay_file, replay_messages

__all__ = ["BOOK_DUT", "book_registers", "replay_book_file", "replay_book_messages", "book_to_jsonl",
           "model_bbos", "compare_bbos", "BookComparison", "parse_symbols", "MAX_NAMED_SYMBOLS"]

BOOK_DUT = "book_path"
#: Symbols the directory tracks by name (``symbols.track_name_0..7``).
MAX_NAMED_SYMBOLS = 8
#: The fields of a JSON line, in order: the issue's six, then what else the record says.
JSON_FIELDS = ("symbol", "timestamp", "bid_price", "bid_shares", "ask_price", "ask_shares",
               "bid_orders", "ask_orders", "trusted", "sequence_number")


class BookReplayError(TickwireError, ValueError):
    """Symbols the book cannot track as asked."""


def parse_symbols(text: str | Sequence[str]) -> list[str]:
    """``"AAPL,MSFT"`` (or a list) as checked, distinct symbols of at most 8 characters."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not s for s in names):
        raise BookReplayError(f"symbols must be a comma-separated list of names, not {text!r}")
    for s in names:
        if len(s) > 8 or not s.isascii() or not s.isprintable() or " " in s:
            raise BookReplayError(f"symbol {s!r}: ITCH stock symbols are 1 to 8 printable ASCII characters")
    if len(set(names)) != len(names):
        raise BookReplayError(f"symbol listed twice in {text!r}")
    if len(names) > MAX_NAMED_SYMBOLS:
        raise BookReplayError(f"{len(names)} symbols: the symbol directory tracks at most "
                              f"{MAX_NAMED_SYMBOLS} by name")
    return names


def book_registers(symbols: Sequence[str]) -> dict[str, int]:
    """Register writes that track ``symbols`` by name (slot k for the k-th) and filter the rest."""
    regs = {"symbols.filter_enable": 1}
    for k in range(MAX_NAMED_SYMBOLS):
        regs[f"symbols.track_name_{k}"] = (int.from_bytes(symbols[k].ljust(8).encode("ascii"), "little")
                                           if k < len(symbols) else 0)
    return regs


def replay_book_file(path: str | os.PathLike, symbols: Sequence[str], **kwargs: Any) -> Replay:
    """A :class:`~tickwire.sim.replay.Replay` of ``path`` through the book harness; iterating it
    yields top-of-book records (``tickwire.hdl.book.bbo_layout`` fields as ints)."""
    harness = kwargs.pop("harness", None) or build_harness(dut=BOOK_DUT)
    return replay_file(path, registers={**book_registers(symbols), **kwargs.pop("registers", {})},
                       harness=harness, **kwargs)


def replay_book_messages(messages: Iterable[bytes], symbols: Sequence[str], **kwargs: Any) -> Replay:
    """As :func:`replay_book_file`, from ITCH messages."""
    harness = kwargs.pop("harness", None) or build_harness(dut=BOOK_DUT)
    return replay_messages(messages, registers={**book_registers(symbols), **kwargs.pop("registers", {})},
                           harness=harness, **kwargs)


def _json_line(record: Mapping[str, int], symbols: Sequence[str]) -> dict[str, Any]:
    line: dict[str, Any] = {"symbol": symbols[record["slot"]] if record["slot"] < len(symbols) else None}
    for name in JSON_FIELDS[1:]:
        line[name] = int(record[name])
    line["trusted"] = bool(line["trusted"])
    return line


def book_to_jsonl(path: str | os.PathLike, out: TextIO, symbols: Sequence[str], *,
                  track: Track = no_track, keep: list | None = None, **kwargs: Any) -> Replay:
    """Write one JSON object a line to ``out`` per top-of-book change the gateware makes of
    ``path`` for ``symbols``: symbol, timestamp, bid_price, bid_shares, ask_price, ask_shares
    (0 where a side is empty; prices with 4 implied decimals), then bid_orders, ask_orders,
    trusted and sequence_number. Returns the finished run; ``keep`` (a list) gets every record."""
    run = replay_book_file(path, symbols, **kwargs)
    encode = json.JSONEncoder(separators=(", ", ": ")).encode
    for record in track(iter(run), None, f"book of {Path(path).name}"):
        if keep is not None:
            keep.append(record)
        out.write(encode(_json_line(record, symbols)))
        out.write("\n")
    return run


def model_bbos(messages: Iterable[bytes], symbols: Sequence[str], *, first_sequence: int = 1,
               book: Mapping[str, int] | None = None) -> Iterator[dict[str, int]]:
    """What the reference symbol directory and book make of ``messages`` (delivered in order from
    ``first_sequence``): top-of-book records as the gateware's integers."""
    from .book_model import BookModel
    from .model import SymbolDirectoryModel, itch_decode, RegisterFile
    registers = RegisterFile(book_registers(symbols))
    model = BookModel(**(book or {}))
    directory = SymbolDirectoryModel(registers, slots=model.slots)
    for sequence, message in enumerate(messages, first_sequence):
        record = itch_decode(message)
        if record is None or not directory.process(record):
            continue
        bbo = model.process(record, slot=directory.slot(record["stock_locate"]), sequence_number=sequence)
        if bbo is not None:
            values = bbo._asdict()
            values["stock"] = int.from_bytes(values["stock"].encode("latin-1"), "little") if values["stock"] else 0
            values["recovered"], values["trusted"] = int(values["recovered"]), int(values["trusted"])
            yield values


@dataclasses.dataclass
class BookComparison:
    compared: int = 0
    equal: int = 0
    missing: int = 0
    extra: int = 0
    differences: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.compared == self.equal and not self.missing and not self.extra


def compare_bbos(got: Iterable[Mapping[str, int]], want: Iterable[Mapping[str, int]], *,
                 keep: int = 10) -> BookComparison:
    """Every field of every top-of-book record, in order."""
    from itertools import zip_longest
    result = BookComparison()
    missing = object()
    for index, (g, w) in enumerate(zip_longest(got, want, fillvalue=missing)):
        if w is missing:
            result.extra += 1
        elif g is missing:
            result.missing += 1
        else:
            result.compared += 1
            if dict(g) == dict(w):
                result.equal += 1
            elif len(result.differences) < keep:
                result.differences.append((index, {k: (g.get(k), w.get(k)) for k in w if g.get(k) != w.get(k)}))
    return result


def add_commands(commands: Any, parents: list) -> None:
    """``tickwire sim book``: registered by :mod:`tickwire.host.cli`."""
    book = commands.add_parser(
        "book", parents=parents, help="order book of an ITCH capture, built by the gateware",
        description="Run FILE (raw ITCH or a pcap of MoldUDP64) through the market-data path, the "
                    "symbol directory and the order book in the native replay harness, tracking "
                    "SYMBOLS, and write one JSON object per change of a symbol's best bid or offer.")
    book.add_argument("file", metavar="FILE", type=Path, help="raw ITCH file or pcap")
    book.add_argument("--symbols", metavar="SYM,SYM", required=True,
                      help=f"symbols to track, comma-separated (at most {MAX_NAMED_SYMBOLS})")
    book.add_argument("-o", "--output", metavar="OUT", type=Path, default=None,
                      help="JSON lines file to write (default: standard output)")
    book.add_argument("--check", action="store_true",
                      help="also run the reference book over FILE and fail unless every record is equal")
    book.set_defaults(handler=_cmd_sim_book)


def _cmd_sim_book(args: Any) -> int:
    import logging
    import sys
    from .itchfile import detect_format, pcap_messages, read_raw_itch, replacing
    from .progress import track
    logger = logging.getLogger("tickwire.sim.book")
    symbols = parse_symbols(args.symbols)
    if not args.file.is_file():
        raise BookReplayError(f"{args.file} not found")
    harness = build_harness(announce=lambda text: print(f"tickwire: {text}", file=sys.stderr), dut=BOOK_DUT)
    got: list[dict[str, int]] | None = [] if args.check else None
    if args.output is None:
        run = book_to_jsonl(args.file, sys.stdout, symbols, harness=harness, keep=got)
    else:
        with replacing(args.output) as tmp, open(tmp, "w") as out:
            run = book_to_jsonl(args.file, out, symbols, track=track, harness=harness, keep=got)
    counters = {k: v for k, v in run.counters.items() if k.startswith("book.") and not k.startswith("book.lookup")}
    print(f"{args.file}: {run.records} top-of-book changes for {', '.join(symbols)} in {run.seconds:.1f} s; "
          + ", ".join(f"{k.partition('.')[2]} {v}" for k, v in counters.items()), file=sys.stderr)
    if args.check:
        messages = read_raw_itch(args.file) if detect_format(args.file) == "itch" else pcap_messages(args.file)
        result = compare_bbos(got or [], model_bbos(messages, symbols))
        logger.info("reference book: %d compared, %d equal", result.compared, result.equal)
        if not result.ok:
            raise BookReplayError(f"the gateware's book differs from the reference: {result.differences[:3]} "
                                  f"(missing {result.missing}, extra {result.extra})")
        print(f"reference book: all {result.compared} records equal", file=sys.stderr)
    return 0
