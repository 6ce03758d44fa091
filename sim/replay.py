"""Native replay: raw ITCH or pcap files through the Verilated market-data path, records out.

The harness (``sim/native/replay_main.cpp``) is a Verilator C++ executable around
:class:`tickwire.hdl.market_data.MarketDataTop`: it writes the registers it is given, drives the
frames it reads from its stdin onto XGMII itself (minimum gap by default), keeps ``o_records``
ready, writes every record's payload bits to its stdout, and reads all counters over the register
bus at the end. No Python runs per cycle: Python feeds frames from one thread and unpacks records
in another while the harness runs. It is built once per Verilog content and harness source under
``build/native/``; the record layout (``tickwire.hdl.itch.record_layout``) and the register map
are read from the gateware at build time and kept beside the executable (``harness.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

from tickwire.protocols.itch import record_to_fields
from tickwire.protocols.net import fcs

from .itchfile import (FILE_FEED, RAW_ITCH, ItchFileError, count_raw_itch, detect_format,
                       feed_destination, read_raw_itch)
from .progress import Track, no_track
from .runner import digest as _digest, source_key

__all__ = ["Harness", "Replay", "build_harness", "replay_frames", "replay_messages", "replay_file",
           "decode_file", "decode_to_jsonl", "compare_with_model", "Comparison", "DEFAULT_GAP"]

logger = logging.getLogger(__name__)

DUT = "market_data"
#: DUTs the harness can be built around: name -> (record layout of ``o_records``, a factory of
#: the component, for its register map). ``book_path`` sends top-of-book records
#: (``tickwire sim book``).
HARNESS_DUTS: dict[str, tuple[str, str]] = {
    "market_data": ("tickwire.hdl.itch:record_layout", "tickwire.hdl.market_data:MarketDataTop"),
    "book_path": ("tickwire.hdl.book:bbo_layout", "tickwire.hdl.market_data:BookTop"),
}


def _resolve(ref: str) -> Any:
    import importlib
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
#: The harness's top-level module around the DUT (:func:`_wrapper`).
WRAPPER = "replay_top"
#: XGMII characters from /T/ (included) to the next /S/: the minimum inter-frame gap.
DEFAULT_GAP = 12
_NATIVE = Path(__file__).resolve().parent / "native"
_SOURCES = (_NATIVE / "replay_main.cpp",)
#: Verilator's options: C++ model and the harness's main() built into one executable, no tracing.
_VERILATOR_FLAGS = (
    "--cc", "--exe", "--build", "-O3", "--x-assign", "0", "--x-initial", "0", "--no-timing",
    "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-lint", "-Wno-style",
    "--top-module", WRAPPER, "--prefix", "Vdut", "-o", "replay",
    "-MAKEFLAGS", "OPT_FAST=-O2 OPT_SLOW=-O1 OPT_GLOBAL=-O2", "-CFLAGS", "-std=c++17",
)
_FRAMES_MAGIC = b"TWFRAMES"
_PIPE_BYTES = 1 << 20
_RECORDS_MAGIC = b"TWRECORD"


# -- build --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordField:
    """One field of the decoded record: ``width`` bits from bit ``offset`` of the payload."""

    name: str
    offset: int
    width: int


@dataclasses.dataclass(frozen=True)
class Harness:
    """A built replay harness: the executable and what it was built from."""

    directory: Path
    record_bits: int
    record_fields: tuple[RecordField, ...]
    #: ``stage.register`` -> address record, as :meth:`tickwire.hdl.csr.CsrBank.address_map`.
    registers: Mapping[str, Mapping[str, Any]]

    @property
    def executable(self) -> Path:
        return self.directory / "replay"

    @classmethod
    def load(cls, directory: Path) -> Harness:
        doc = json.loads((directory / "harness.json").read_text())
        return cls(directory, doc["record_bits"],
                   tuple(RecordField(**f) for f in doc["record_fields"]), doc["registers"])

    def unpacker(self) -> Callable[[int], dict[str, int]]:
        """A function from a record's payload (an int) to ``{field name: value}``."""
        body = ", ".join(f"{f.name!r}: (v >> {f.offset}) & {(1 << f.width) - 1:#x}"
                         for f in self.record_fields)
        return eval(f"lambda v: {{{body}}}")  # one expression per layout: fast for 1M records

    def fields_of(self) -> Callable[[int], dict[str, Any]]:
        """A function from a record's payload (an int) to
        ``record_to_fields(unpacker()(payload))`` (:func:`tickwire.protocols.itch.record_to_fields`),
        three times faster: one expression per message type, made from the same tables
        (``RECORD_TARGETS``) and checked against it by tests/sim/test_replay.py. Payloads it would
        reject (unknown type, a value wider than its ITCH field) go to it for the error."""
        from tickwire.protocols import itch
        unpack = self.unpacker()
        targets = getattr(itch, "RECORD_TARGETS", None)
        slots = {f.name: f for f in self.record_fields}
        if targets is None or "message_type" not in slots:
            return lambda v: record_to_fields(unpack(v))
        per_type: dict[int, tuple[int, Callable[[int], dict[str, Any]]]] = {}
        for type_, layout in itch.MESSAGES.items():
            parts, spill = [f"'type': {type_!r}"], 0
            for f in layout.fields[1:]:
                slot = slots[targets[type_][f.name]]
                value = f"(v >> {slot.offset}) & {(1 << slot.width) - 1:#x}"
                if f.type == "alpha":
                    value = f"({value}).to_bytes({f.width}, 'little').decode('ascii', 'replace').rstrip(' ')"
                parts.append(f"{f.name!r}: {value}")
                # Record bits beyond the ITCH field: record_to_fields rejects a record using them.
                spill |= ((1 << slot.width) - 1 ^ (1 << 8 * f.width) - 1) << slot.offset
            per_type[ord(type_)] = (spill, eval(f"lambda v: {{{', '.join(parts)}}}"))
        type_shift, type_mask = slots["message_type"].offset, (1 << slots["message_type"].width) - 1

        def fields_of(v: int) -> dict[str, Any]:
            spill, fast = per_type.get((v >> type_shift) & type_mask, (0, None))
            if fast is None or v & spill:
                return record_to_fields(unpack(v))  # raises the error
            return fast(v)
        return fields_of


def _flatten(layout, prefix: str = "", base: int = 0) -> Iterator[RecordField]:
    from amaranth.lib import data
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.Layout):
            yield from _flatten(shape, f"{prefix}{name}.", base + field.offset)
        else:
            yield RecordField(f"{prefix}{name}", base + field.offset, field.width)


def _source_key() -> str:
    """A hash of everything the Verilog and the harness are made from (the gateware and protocol
    sources, the runner, the harness sources, the tool versions): equal keys reuse a build
    without generating the Verilog again."""
    return source_key(Path(__file__), *_SOURCES)


def build_harness(announce: Callable[[str], None] | None = None, *, dut: str = DUT) -> Harness:
    """The replay harness for the current gateware around ``dut`` (:data:`HARNESS_DUTS`), built
    unless a build of the same Verilog and harness sources exists. ``announce`` is told, in a
    sentence, when a build starts."""
    from .runner import build_root, index_build, indexed_build
    if dut not in HARNESS_DUTS:
        raise ValueError(f"no replay harness for {dut!r}; known: {', '.join(HARNESS_DUTS)}")
    native = build_root() / "native"
    key = _source_key() + ("" if dut == DUT else f"-{dut}")
    directory = indexed_build(native, key)
    if directory is not None:
        logger.debug("reusing replay harness %s", directory)
        return Harness.load(directory)
    harness = _build(native, announce or (lambda text: logger.info("%s", text)), dut)
    index_build(native, key, harness.directory)
    return harness


def _build(native: Path, announce: Callable[[str], None], dut: str = DUT) -> Harness:
    layout_ref, top_ref = HARNESS_DUTS[dut]
    record_layout = _resolve(layout_ref)
    from .runner import generate
    verilog, _ = generate(dut)
    ports = _top_ports(verilog.read_text(), dut)
    port = {name: width for _, width, name in ports}.get("o_records__payload")
    if port != record_layout.size:
        raise RuntimeError(f"o_records__payload is {port} bits in {verilog}, but record_layout "
                           f"is {record_layout.size}: the DUT does not emit {layout_ref} records")
    doc = {"dut": dut, "verilog": verilog.name, "record_bits": record_layout.size,
           "record_fields": [dataclasses.asdict(f) for f in _flatten(record_layout)],
           "registers": _address_map(_resolve(top_ref)())}
    t0 = time.monotonic()
    directory = verilate(native, dut, verilog, WRAPPER, _wrapper(ports, dut), _SOURCES, "replay", doc, announce)
    logger.info("replay harness ready in %.0f s", time.monotonic() - t0)
    return Harness.load(directory)


def verilate(native: Path, name: str, verilog: Path, wrapper_module: str, wrapper_text: str,
             sources: tuple[Path, ...], executable: str, doc: Mapping[str, Any],
             announce: Callable[[str], None]) -> Path:
    """Build a native harness once: ``verilog`` (the DUT), the generated top level
    ``wrapper_module`` (``wrapper_text``) and the C++ ``sources`` into ``executable`` in
    ``native/<name>-<verilog hash>-<harness hash>/``, with ``doc`` beside it as ``harness.json``.
    Returns that folder; an existing build of the same inputs is reused, and a build another
    process is making is waited for. (Other harnesses than the replay, e.g.
    :mod:`tickwire.sim.card`, build through this.)"""
    from .runner import build_lock, verilator_env, verilator_root
    flags = list(_VERILATOR_FLAGS)
    flags[flags.index("--top-module") + 1] = wrapper_module
    flags[flags.index("-o") + 1] = executable
    verilog_digest = _digest(verilog.read_bytes())
    harness_digest = _digest(*(s.read_bytes() for s in sources), wrapper_text.encode(),
                             " ".join(flags).encode())
    directory = native / f"{name}-{verilog_digest}-{harness_digest}"
    if (directory / ".built").exists():
        return directory
    with build_lock(directory.name):
        if (directory / ".built").exists():   # built by another process while this one waited
            return directory
        native.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=native))
        wrapper = work / f"{wrapper_module}.v"
        wrapper.write_text(wrapper_text)
        env = {**os.environ, **verilator_env()}
        command = [str(verilator_root() / "bin" / "verilator"), *flags,
                   "-j", str(os.cpu_count() or 2), str(verilog), str(wrapper),
                   *(str(s) for s in sources)]
        announce(f"building the {name} harness in {directory} "
                 f"(a few minutes, once per change of the gateware)")
        t0 = time.monotonic()
        with open(work / "build.log", "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            done = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = (work / "build.log").read_text().splitlines()[-30:]
            raise RuntimeError(f"building the {name} harness failed (exit {done.returncode}); "
                               f"log: {work / 'build.log'}\n" + "\n".join(tail))
        (work / "obj_dir" / executable).replace(work / executable)
        shutil.rmtree(work / "obj_dir")
        (work / "harness.json").write_text(json.dumps(doc, indent=1) + "\n")
        (work / ".built").write_text(f"{verilog_digest} {harness_digest}\n")
        work.chmod(0o755)
        try:
            work.rename(directory)
        except OSError:  # built by someone else meanwhile
            if not (directory / ".built").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)
        logger.info("%s harness built in %.0f s", name, time.monotonic() - t0)
        return directory


def _address_map(top) -> dict[str, dict]:
    # Built only to read its register tables: never elaborated (generate() elaborates its own).
    for obj in (top, top.bank, *vars(top).values(), *vars(top.path).values()):
        if hasattr(obj, "_MustUse__used"):
            obj._MustUse__silence = True
    return top.bank.address_map()


def _top_ports(verilog: str, module: str) -> list[tuple[str, int, str]]:
    """``(direction, width, name)`` of each port of ``module`` in ``verilog``."""
    import re
    start = re.search(rf"^module {re.escape(module)}\s*\(", verilog, re.M)
    if not start:
        raise RuntimeError(f"no module {module} in the generated Verilog")
    body = verilog[start.end():verilog.index("endmodule", start.end())]
    return [(d, int(msb) + 1 if msb else 1, name) for d, msb, name in
            re.findall(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+)\s*;", body, re.M)]


#: Inputs of the DUT the harness drives (each through one register); every other input is tied
#: off: ``<line>__data``/``<line>__ctrl`` pairs (other feed lines) to XGMII idle, the rest to 0.
_DRIVEN = ("rst", "feed_rx__data", "feed_rx__ctrl", "csr__addr", "csr__w_stb", "csr__w_data",
           "csr__r_stb", "o_records__ready")
#: Outputs the harness reads; the others are left open.
_READ = ("o_records__valid", "o_records__payload", "csr__r_data")
_XGMII_IDLE = 0x07


def _wrapper(ports: list[tuple[str, int, str]], dut: str = DUT) -> str:
    """The harness's top level around the DUT: the inputs the harness drives registered once, the
    others tied off, the outputs it does not read left open.

    Without the registers Verilator evaluates all the logic the inputs reach (through ``rst``,
    nearly all of it) on both clock edges; with them that logic runs once per cycle, after the
    rising edge. What the harness drives arrives one cycle later, which it allows for."""
    names = {name: (d, w) for d, w, name in ports}
    missing = [n for n in ("clk", *_DRIVEN, *_READ) if n not in names]
    if missing:
        raise RuntimeError(f"{dut} has no port {', '.join(missing)}: the replay harness needs "
                           f"{', '.join(_DRIVEN + _READ)}")

    def decl(width: int) -> str:
        return f"[{width - 1}:0] " if width > 1 else ""

    def tie_off(name: str, width: int) -> str:
        line, _, kind = name.rpartition("__")
        if kind == "ctrl" and names.get(f"{line}__data", ("", 0))[0] == "input":
            return f"{width}'h{(1 << width) - 1:x}"
        if kind == "data" and names.get(f"{line}__ctrl", ("", 0))[0] == "input":
            return f"{width}'h{int.from_bytes(bytes([_XGMII_IDLE] * (width // 8)), 'little'):x}"
        return f"{width}'h0"

    own = ("clk", *_DRIVEN, *_READ)
    lines = [f"// Generated by tickwire.sim.replay: {dut} as the replay harness drives it.",
             f"module {WRAPPER}(" + ", ".join(own) + ");", "  input clk;"]
    lines += [f"  input {decl(names[n][1])}{n};" for n in _DRIVEN]
    lines += [f"  output {decl(names[n][1])}{n};" for n in _READ]
    lines += [f"  reg {decl(names[n][1])}{n}_q = 0;" for n in _DRIVEN]
    lines.append("  always @(posedge clk) begin")
    lines += [f"    {n}_q <= {n};" for n in _DRIVEN]
    lines.append("  end")
    connections = []
    for d, w, name in ports:
        if name == "clk" or name in _READ:
            connections.append(f".{name}({name})")
        elif name in _DRIVEN:
            connections.append(f".{name}({name}_q)")
        elif d == "input":
            connections.append(f".{name}({tie_off(name, w)})")
        else:
            connections.append(f".{name}()")
    lines.append(f"  {dut} dut(\n    " + ",\n    ".join(connections) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


# -- running ------------------------------------------------------------------------------------

def _register_program(harness: Harness, registers: Mapping[str, int] | None) -> str:
    """Register writes (the feed line's filter, ``net_rx.*``, from
    :data:`~tickwire.sim.defaults.DEFAULT_REGISTERS`, then ``registers``) and the reads of every
    ``ro`` register, as the harness's command file. Everything else keeps its reset value."""
    from .defaults import DEFAULT_REGISTERS
    amap = harness.registers
    values = {name: v for name, v in DEFAULT_REGISTERS.items()
              if name.startswith("net_rx.") and name in amap}
    for name, value in (registers or {}).items():
        if name not in amap:
            raise ValueError(f"unknown register {name!r}; the market-data path's are "
                             f"{', '.join(n for n, r in amap.items() if r['access'] == 'rw')}")
        if amap[name]["access"] != "rw":
            raise ValueError(f"register {name} is read-only")
        values[name] = value
    lines = []
    for name, value in values.items():
        r = amap[name]
        if not isinstance(value, int) or not 0 <= value < 1 << r["width"]:
            raise ValueError(f"register {name}: {value!r} does not fit {r['width']} bits")
        for w in range(r["size"]):
            lines.append(f"w {r['address'] + w} {(value >> 32 * w) & 0xFFFFFFFF}")
    for r in amap.values():
        if r["access"] == "ro":
            lines += [f"r {r['address'] + w}" for w in range(r["size"])]
    return "\n".join(lines) + "\n"


class Replay:
    """One run of the harness over a stream of Ethernet frames (no FCS: it is appended).

    Iterating starts the harness and yields each decoded record as ``{record field: int}`` while
    it runs; :meth:`raw` yields the payloads as ints instead. A run is iterated once. Afterwards
    the attributes below are set.

    Attributes
    ----------
    counters : dict
        Every ``ro`` register of the path after the run, by ``stage.register``.
    records, frames, frame_bytes, cycles : int
        Records out, frames and frame bytes (FCS included) in, clock cycles from reset until the
        path had drained.
    messages : int or None
        Messages in the input, when it was given as messages (raw ITCH), else None.
    harness_seconds, harness_cpu_seconds, seconds : float
        Wall and CPU time of the harness process, and wall time of the whole run.
    """

    def __init__(self, frames: Iterable[bytes], *, registers: Mapping[str, int] | None = None,
                 gap: int = DEFAULT_GAP, harness: Harness | None = None,
                 expected_messages: int | None = None,
                 _message_count: Callable[[], int] | None = None) -> None:
        if not isinstance(gap, int) or gap < 1:
            raise ValueError(f"gap must be at least 1 (the /T/ character), not {gap!r}")
        self.harness = harness or build_harness()
        self._program = _register_program(self.harness, registers)  # checked before any run
        self._frames = frames
        self.gap = gap
        #: Messages the input holds when known beforehand (raw ITCH files), for progress bars.
        self.expected_messages = expected_messages
        self._message_count = _message_count
        self._started = False
        self.counters: dict[str, int] = {}
        self.records = self.frames = self.frame_bytes = self.cycles = 0
        self.messages: int | None = None
        self.harness_seconds = self.harness_cpu_seconds = self.seconds = 0.0

    def __iter__(self) -> Iterator[dict[str, int]]:
        return map(self.harness.unpacker(), self.raw())

    def run(self) -> list[dict[str, int]]:
        """All records as a list (for small runs)."""
        return list(self)

    def raw(self) -> Iterator[int]:
        """Run the harness; yields each record's payload as an int."""
        if self._started:
            raise RuntimeError("a Replay runs once; make a new one")
        self._started = True
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tickwire-replay-") as tmp:
            work = Path(tmp)
            (work / "registers.txt").write_text(self._program)
            command = [str(self.harness.executable), "--frames", "-", "--records", "-",
                       "--registers", str(work / "registers.txt"),
                       "--summary", str(work / "summary.txt"), "--gap", str(self.gap)]
            logger.info("replaying through %s", self.harness.directory.name)
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            for stream in (proc.stdin, proc.stdout):
                _grow_pipe(stream)
            writer_error: list[BaseException] = []
            writer = threading.Thread(target=self._write_frames, args=(proc, writer_error),
                                      name="replay-frames", daemon=True)
            writer.start()
            try:
                yield from self._read_records(proc)
                stderr = proc.stderr.read().decode(errors="replace")
                proc.wait()
                writer.join()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdout, proc.stderr):
                    stream.close()
            if writer_error:
                raise writer_error[0]
            if proc.returncode != 0:
                raise RuntimeError(f"the replay harness failed (exit {proc.returncode}): "
                                   f"{stderr.strip()}")
            self._read_summary(work / "summary.txt")
        self.seconds = time.monotonic() - t0
        if self._message_count is not None:
            self.messages = self._message_count()
        lost = self.lost()
        if lost:
            logger.warning("frames dropped before the decoder: %s",
                           ", ".join(f"{n} {v}" for n, v in lost.items()))
        if self.messages is not None and self.counters.get("moldudp64.messages") != self.messages:
            logger.warning("%s of %d messages reached the decoder",
                           self.counters.get("moldudp64.messages"), self.messages)

    def _write_frames(self, proc: subprocess.Popen, error: list[BaseException]) -> None:
        """The frames stream into the harness's stdin (a thread: the harness runs meanwhile)."""
        stdin = proc.stdin
        try:
            out = bytearray(_FRAMES_MAGIC)
            for frame in self._frames:
                out += (len(frame) + 4).to_bytes(4, "little")
                out += frame
                out += fcs(frame)
                if len(out) >= 1 << 16:
                    stdin.write(out)
                    out.clear()
            stdin.write(out)
        except BrokenPipeError:
            pass  # the harness stopped early; its exit status says why
        except BaseException as e:  # a bad input file: stop the run and report it
            error.append(e)
            proc.kill()
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    def _read_records(self, proc: subprocess.Popen) -> Iterator[int]:
        stdout = proc.stdout
        head = stdout.read(len(_RECORDS_MAGIC) + 4)
        if len(head) < len(_RECORDS_MAGIC) + 4:
            return  # the harness failed before it started; the caller reports its error
        if head[:len(_RECORDS_MAGIC)] != _RECORDS_MAGIC:
            raise RuntimeError(f"{self.harness.executable} did not write a records stream")
        size = int.from_bytes(head[len(_RECORDS_MAGIC):], "little")
        if size * 8 < self.harness.record_bits:
            raise RuntimeError(f"the harness writes {size}-byte records, the record layout has "
                               f"{self.harness.record_bits} bits")
        from_bytes = int.from_bytes
        while block := stdout.read(size * 4096):
            for i in range(0, len(block) - size + 1, size):
                yield from_bytes(block[i:i + size], "little")

    def _read_summary(self, path: Path) -> None:
        summary: dict[str, Any] = {}
        reads: dict[int, int] = {}
        for line in path.read_text().splitlines():
            key, *values = line.split()
            if key == "r":
                reads[int(values[0])] = int(values[1])
            else:
                summary[key] = float(values[0]) if "." in values[0] else int(values[0])
        self.counters = {name: sum(reads[r["address"] + w] << 32 * w for w in range(r["size"]))
                         for name, r in self.harness.registers.items() if r["access"] == "ro"}
        self.records, self.frames = summary["records"], summary["frames"]
        self.frame_bytes, self.cycles = summary["bytes"], summary["cycles"]
        self.harness_seconds, self.harness_cpu_seconds = summary["seconds"], summary["cpu_seconds"]

    def lost(self) -> dict[str, int]:
        """The drop counters of the feed MACs and UDP filters that are not zero."""
        return {name: value for name, value in self.counters.items()
                if value and name.partition(".")[0].startswith(("mac_rx", "net_rx"))
                and not name.endswith((".frames_ok", ".frames_accepted"))}


def _grow_pipe(stream: Any) -> None:
    """Give a pipe a 1 MiB buffer (Linux), so the harness rarely waits on the Python side."""
    try:
        import fcntl
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (ImportError, OSError):
        pass


def replay_frames(frames: Iterable[bytes], **kwargs: Any) -> Replay:
    """A :class:`Replay` of Ethernet ``frames`` (no FCS). Options: ``registers`` (``stage.register``
    values written after reset over the net_rx defaults of
    :data:`tickwire.sim.defaults.DEFAULT_REGISTERS`), ``gap`` (XGMII characters from each /T/,
    included, to the next /S/: 12 is the standard's minimum), ``harness``."""
    return Replay(frames, **kwargs)


def replay_messages(messages: Iterable[bytes], *, feed: Mapping[str, Any] | None = None,
                    registers: Mapping[str, int] | None = None, **kwargs: Any) -> Replay:
    """A :class:`Replay` of ITCH ``messages`` packed into MoldUDP64 datagrams and UDP frames by
    :func:`tickwire.sim.feed.iter_feed_frames`: the feed parameters of
    :data:`~tickwire.sim.defaults.DEFAULT_FEED` overridden by ``feed`` (by default
    :data:`~tickwire.sim.itchfile.FILE_FEED`: full datagrams); the filter registers follow the
    feed's group and port unless ``registers`` sets them."""
    from .defaults import DEFAULT_FEED
    from .feed import iter_feed_frames
    cfg = {**DEFAULT_FEED, **(FILE_FEED if feed is None else feed)}
    count = 0

    def counted() -> Iterator[bytes]:
        nonlocal count
        for message in messages:
            count += 1
            yield message

    registers = {"net_rx.multicast_group": cfg["dst_ip"], "net_rx.udp_port": cfg["dst_port"],
                 **(registers or {})}
    frames = (frame for _, frame in iter_feed_frames(counted(), cfg))
    return Replay(frames, registers=registers, _message_count=lambda: count, **kwargs)


def replay_file(path: str | os.PathLike, *, registers: Mapping[str, int] | None = None,
                **kwargs: Any) -> Replay:
    """A :class:`Replay` of raw ITCH or pcap file ``path`` (detected from its header).

    Raw ITCH is checked for framing first (a truncated file fails before anything runs), then
    packed into datagrams as :func:`replay_messages` does. A pcap's frames go in as they are, with
    the filter registers set to the feed the capture is of (the destination MAC, IP and port most
    of its MoldUDP64 packets go to) unless ``registers`` sets them."""
    if detect_format(path) == RAW_ITCH:
        expected = count_raw_itch(path)
        return replay_messages(read_raw_itch(path), registers=registers,
                               expected_messages=expected, **kwargs)
    from . import pcap
    try:
        frames = [frame for _, frame in pcap.read_pcap(path)]
    except pcap.PcapError as e:
        raise ItchFileError(str(e)) from None
    return Replay(frames, registers={**_capture_registers(path, frames), **(registers or {})},
                  **kwargs)


def _capture_registers(path: Any, frames: list[bytes]) -> dict[str, int]:
    from tickwire.protocols.net import multicast_mac
    destination = feed_destination(frames)
    if destination is None:
        logger.warning("%s: no MoldUDP64 packet over UDP/IPv4 in %d frames", path, len(frames))
        return {}
    mac, ip, port = destination
    registers = {"net_rx.multicast_group": ip, "net_rx.udp_port": port}
    if mac != multicast_mac(ip):
        registers["net_rx.mac_address"] = mac
    logger.info("%s: the feed goes to %s", path, {k: hex(v) for k, v in registers.items()})
    return registers


def decode_file(path: str | os.PathLike, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The messages the gateware decodes from raw ITCH or pcap file ``path``, one JSON-ready
    object each (:func:`tickwire.protocols.itch.record_to_fields`: ``type``, then the spec's
    fields). Options as :func:`replay_file`."""
    run = replay_file(path, **kwargs)
    return map(run.harness.fields_of(), run.raw())


def decode_to_jsonl(path: str | os.PathLike, out: TextIO, *, track: Track = no_track,
                    **kwargs: Any) -> Replay:
    """Write the messages the gateware decodes from ``path`` to ``out``, one JSON object a line
    (:func:`decode_file`); returns the finished :class:`Replay` (counters, timings)."""
    run = replay_file(path, **kwargs)
    encode = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode
    write = out.write
    for fields in map(run.harness.fields_of(), track(run.raw(), run.expected_messages,
                                                     f"decoding {Path(path).name}")):
        write(encode(fields))
        write("\n")
    return run


@dataclasses.dataclass
class Comparison:
    """Records of the gateware against the reference decoder, field for field."""

    #: Records compared (both sides had one), and those equal in every field.
    compared: int = 0
    equal: int = 0
    #: Records only the gateware, or only the reference, produced.
    extra: int = 0
    missing: int = 0
    #: The first few differences: (record index, {field: (gateware, reference)}).
    differences: list[tuple[int, dict[str, tuple[Any, Any]]]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.compared == self.equal and not self.extra and not self.missing


def compare_with_model(records: Iterable[Mapping[str, int]], messages: Iterable[bytes], *,
                       first_sequence: int = 1, keep: int = 10) -> Comparison:
    """Compare decoded ``records`` with what the reference decoder
    (:func:`tickwire.sim.model.itch_decode`) makes of ``messages``, delivered in order with
    consecutive MoldUDP64 sequence numbers from ``first_sequence`` (as :func:`replay_messages`
    and raw ITCH files send them). Every field of the record layout is compared, the sequence
    number included."""
    from itertools import zip_longest
    from .model import itch_decode, record_values

    def expected() -> Iterator[dict[str, int]]:
        for sequence, message in enumerate(messages, first_sequence):
            record = itch_decode(message)
            if record is not None:
                yield record_values(record, sequence)

    result = Comparison()
    missing = object()
    for index, (got, want) in enumerate(zip_longest(records, expected(), fillvalue=missing)):
        if want is missing:
            result.extra += 1
            continue
        if got is missing:
            result.missing += 1
            continue
        result.compared += 1
        if got == want:
            result.equal += 1
        elif len(result.differences) < keep:
            result.differences.append((index, {k: (got.get(k), want.get(k))
                                               for k in {*got, *want} if got.get(k) != want.get(k)}))
    return result
