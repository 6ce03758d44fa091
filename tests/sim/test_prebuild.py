"""Build locks and the background prebuild (tickwire.sim.prebuild, tickwire.sim.runner.build_lock)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tickwire.sim import prebuild, replay
from tickwire.sim.runner import build_lock

_HOLDER = """
import sys, time
from tickwire.sim.runner import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    if len(sys.argv) > 3:
        import pathlib; pathlib.Path(sys.argv[3]).mkdir(parents=True); (pathlib.Path(sys.argv[3]) / ".built").write_text("x")
    print("released", time.time(), flush=True)
"""


def _hold(tmp_path: Path, monkeypatch, key: str, seconds: float, make: Path | None = None):
    monkeypatch.setenv("TICKWIRE_BUILD_DIR", str(tmp_path / "build"))
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, key, str(seconds),
                                *([str(make)] if make else [])], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_waits_for_the_lock(tmp_path, monkeypatch):
    holder = _hold(tmp_path, monkeypatch, "top-abc", 1.0)
    with build_lock("top-abc"):
        got = time.time()
    released = float(holder.stdout.readline().split()[1])
    holder.wait(timeout=10)
    assert got >= released
    # Another key is not held up by it.
    holder = _hold(tmp_path, monkeypatch, "top-abc", 2.0)
    start = time.monotonic()
    with build_lock("book-abc"):
        assert time.monotonic() - start < 1.0
    holder.wait(timeout=10)


def test_verilate_reuses_what_another_process_built_while_it_waited(tmp_path, monkeypatch):
    # The other process holds the lock and finishes the build; this one must not build again.
    native = tmp_path / "build" / "native"
    verilog = tmp_path / "dut.v"
    verilog.write_text("module dut; endmodule\n")
    source = tmp_path / "main.cpp"
    source.write_text("int main() { return 0; }\n")
    flags = list(replay._VERILATOR_FLAGS)
    flags[flags.index("--top-module") + 1] = "wrapper"
    flags[flags.index("-o") + 1] = "exe"
    name = (f"demo-{replay._digest(verilog.read_bytes())}-"
            f"{replay._digest(source.read_bytes(), b'wrapper text', ' '.join(flags).encode())}")
    holder = _hold(tmp_path, monkeypatch, name, 1.0, make=native / name)

    def no_build(*args, **kwargs):
        raise AssertionError("verilate built although the other process had built it")
    monkeypatch.setattr(replay.subprocess, "run", no_build)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("dir", replay.verilate(
        native, "demo", verilog, "wrapper", "wrapper text", (source,), "exe", {}, print)))
    thread.start()
    thread.join(timeout=20)
    holder.wait(timeout=10)
    assert result["dir"] == native / name and (native / name / ".built").exists()


def test_prebuild_builds_in_order_and_reports_failures(monkeypatch, caplog):
    done = []

    def broken():
        done.append("book")
        raise RuntimeError("no Verilator")
    monkeypatch.setattr(prebuild, "TARGETS", {"card": lambda: done.append("card"),
                                              "top": lambda: done.append("top"), "book": broken})
    assert prebuild.main(["top", "card"]) == 0 and done == ["top", "card"]
    done.clear()
    assert prebuild.main([]) == 1 and done == ["card", "top", "book"]
    assert "prebuild of book failed" in caplog.text and "no Verilator" in caplog.text
    with pytest.raises(SystemExit):
        prebuild.main(["bitstream"])


def test_build_reuses_the_build_of_the_same_sources_without_elaborating(tmp_path, monkeypatch):
    from tickwire.sim import runner
    monkeypatch.setenv("TICKWIRE_BUILD_DIR", str(tmp_path))
    made = tmp_path / "sim" / "mac_tx-0123456789abcdef"
    made.mkdir(parents=True)
    (made / ".built").write_text("0123456789abcdef\n")
    runner.index_build(tmp_path / "sim", f"mac_tx-{runner.source_key()}", made)

    class Elaborated(Exception):
        pass

    def generate(name):
        raise Elaborated(name)
    monkeypatch.setattr(runner, "generate", generate)
    assert runner.build("mac_tx") == made
    # Another source key (a changed gateware file): elaborated again.
    monkeypatch.setattr(runner, "source_key", lambda *extra: "changed")
    with pytest.raises(Elaborated):
        runner.build("mac_tx")
    # An index pointing at an unfinished build is not trusted.
    monkeypatch.undo()
    monkeypatch.setenv("TICKWIRE_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(runner, "generate", generate)
    (made / ".built").unlink()
    with pytest.raises(Elaborated):
        runner.build("mac_tx")


def test_source_key_follows_every_gateware_file(tmp_path):
    from tickwire.sim import runner
    extra = tmp_path / "harness.cpp"
    extra.write_text("int main() {}\n")
    key = runner.source_key(extra)
    assert runner.source_key(extra) == key and runner.source_key() != key
    extra.write_text("int main() { return 1; }\n")
    assert runner.source_key(extra) != key
