"""Tests of host/cli.py: the ``tickwire`` command's arguments, output and errors."""

import argparse
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from tickwire.host import cli
from tickwire.host.errors import TickwireError

MAGIC = 0x54574952


def _register(stage, name, address, width, access, reset=0, description=""):
    return {"stage": stage, "name": name, "address": address, "size": -(-width // 32),
            "width": width, "access": access, "reset": reset, "description": description}


# A small made-up map (not the generated one).
SAMPLE = {
    "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
    "constants": {"regmap_version": 2, "magic": MAGIC, "clock_hz": 156250000},
    "registers": {f"{r['stage']}.{r['name']}": r for r in (
        _register("id", "magic", 0, 32, "ro", MAGIC, "'TWIR'"),
        _register("id", "regmap_version", 1, 32, "ro", 2, "register map version"),
        _register("id", "cycles", 2, 64, "ro", 0, "free-running cycle counter"),
        _register("risk", "kill", 192, 1, "rw", 0, "kill switch | rejects every order"),
        _register("risk", "max_order_quantity", 193, 32, "rw", 100, "largest quantity accepted"),
    )},
}


@pytest.fixture
def map_file(tmp_path):
    path = tmp_path / "registers.json"
    path.write_text(json.dumps(SAMPLE))
    return path


def _fake_module(monkeypatch, name, **functions):
    """Put a stand-in for a lazily imported module in ``sys.modules``; returns the calls made."""
    calls = []
    module = types.ModuleType(name)
    for function, result in functions.items():
        def fake(*args, _function=function, _result=result, **kwargs):
            calls.append((_function, args, kwargs))
            if isinstance(_result, BaseException):
                raise _result
            return _result
        setattr(module, function, fake)
    monkeypatch.setitem(sys.modules, name, module)
    return calls


def _error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- help and parsing -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["regs"], ["demo"], ["sim"], ["sim", "build"], ["sim", "run"],
])
def test_help_on_every_command(capsys, argv):
    assert cli.main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tickwire {' '.join(argv)}".rstrip())


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_metavars_are_upper_case_and_help_says_defaults():
    for parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
                continue
            assert action.metavar and action.metavar.isupper(), (parser.prog, action.dest)
            assert action.help, (parser.prog, action.dest)
            if action.default is not None and not action.required:
                assert "%(default)s" in action.help, (parser.prog, action.dest)


def test_help_shows_defaults(capsys):
    cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--out DIR" in out and "(default: build/demo)" in out
    assert "--clock-mhz MHZ" in out and "(default: 156.25)" in out
    cli.main(["regs", "--help"])
    assert "(default: table)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["launch"], "invalid choice: 'launch'"),
    (["sim"], "required: COMMAND"),
    (["regs", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["demo", "--messages", "0"], "argument --messages: must be at least 1, not 0"),
    (["demo", "--messages", "many"], "argument --messages: 'many' is not an integer"),
    (["demo", "--seed", "x"], "argument --seed: 'x' is not an integer"),
    (["demo", "--clock-mhz", "0"], "argument --clock-mhz: must be a positive number"),
    (["demo", "--clock-mhz", "fast"], "argument --clock-mhz: 'fast' is not a number"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["sim", "run"], "the following arguments are required: --feed"),
    (["sim", "build", "extra"], "unrecognized arguments: extra"),
])
def test_usage_errors_return_2(capsys, argv, message):
    assert cli.main(argv) == 2
    err = _error(capsys)
    assert "error:" in err and message in err


@pytest.mark.parametrize("argv, level", [
    ([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG),
])
def test_verbose_sets_logging(map_file, capsys, argv, level):
    assert cli.main([*argv, "regs", "--map", str(map_file)]) == 0
    assert logging.getLogger("tickwire").level == level
    assert cli.main(["regs", *argv, "--map", str(map_file)]) == 0
    assert logging.getLogger("tickwire").level == level


# -- regs -----------------------------------------------------------------------------------------

def test_regs_table(map_file, capsys):
    assert cli.main(["regs", "--map", str(map_file)]) == 0
    out = capsys.readouterr().out
    assert "regmap_version 2" in out
    line = next(line for line in out.splitlines() if "risk.max_order_quantity" in line)
    assert line.split()[:5] == ["risk.max_order_quantity", "0x00c1", "32", "rw", "0x64"]
    assert line.endswith("largest quantity accepted")


def test_regs_json_is_the_map(map_file, capsys):
    assert cli.main(["regs", "--format", "json", "--map", str(map_file)]) == 0
    assert json.loads(capsys.readouterr().out) == SAMPLE


def test_regs_markdown(map_file, capsys):
    assert cli.main(["regs", "--format", "markdown", "--map", str(map_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Register | Address | Width | Access | Reset | Description |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert "| `risk.kill` | 0x00c0 | 1 | rw | 0x0 | kill switch \\| rejects every order |" in lines
    assert len(lines) == 2 + len(SAMPLE["registers"])


def test_regs_rich_table_on_a_terminal(map_file, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["regs", "--map", str(map_file)]) == 0
    out = capsys.readouterr().out
    assert "risk.max_order_quantity" in out and "largest quantity accepted" in out


def test_regs_missing_map(tmp_path, capsys):
    assert cli.main(["regs", "--map", str(tmp_path / "nothing.json")]) == 2
    err = _error(capsys)
    assert err.startswith("tickwire: error: register map ")
    assert "nothing.json not found" in err


def test_regs_malformed_map(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("{\n")
    assert cli.main(["regs", "--map", str(path)]) == 2
    err = _error(capsys)
    assert err.startswith("tickwire: error: register map ") and "broken.json" in err


# -- demo -----------------------------------------------------------------------------------------

def test_demo_forwards_defaults(monkeypatch):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_demo=0)
    assert cli.main(["demo"]) == 0
    assert calls == [("run_demo", (), {"out_dir": Path("build/demo"), "messages": None,
                                       "seed": None, "clock_mhz": 156.25})]


def test_demo_forwards_arguments_and_status(monkeypatch, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_demo=3)
    argv = ["demo", "--out", str(tmp_path), "--messages", "1000", "--seed", "42",
            "--clock-mhz", "250"]
    assert cli.main(argv) == 3
    assert calls == [("run_demo", (), {"out_dir": tmp_path, "messages": 1000, "seed": 42,
                                       "clock_mhz": 250.0})]


def test_demo_input_error_is_reported_without_traceback(monkeypatch, capsys):
    _fake_module(monkeypatch, "tickwire.sim.demo", run_demo=TickwireError("feed is empty"))
    assert cli.main(["demo"]) == 2
    assert _error(capsys) == "tickwire: error: feed is empty\n"


def test_demo_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tickwire.sim.demo", None)  # import fails
    assert cli.main(["demo"]) == 1
    assert _error(capsys).startswith("tickwire: error: tickwire.sim.demo is not available")


# -- sim ------------------------------------------------------------------------------------------

def test_sim_build_prints_build_folder(monkeypatch, capsys, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.runner", build_top=tmp_path / "sim_build")
    assert cli.main(["sim", "build"]) == 0
    assert calls == [("build_top", (), {})]
    assert capsys.readouterr().out == f"{tmp_path / 'sim_build'}\n"


@pytest.fixture
def feed(tmp_path):
    path = tmp_path / "feed.pcap"
    path.write_bytes(b"")
    return path


def test_sim_run_forwards_arguments(monkeypatch, feed, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_pcap=0)
    assert cli.main(["sim", "run", "--feed", str(feed)]) == 0
    assert cli.main(["sim", "run", "--feed", str(feed), "--out", str(tmp_path / "out"),
                     "--clock-mhz", "200"]) == 0
    assert calls == [
        ("run_pcap", (), {"pcap": feed, "out_dir": Path("build/run"), "registers": None,
                          "clock_mhz": 156.25}),
        ("run_pcap", (), {"pcap": feed, "out_dir": tmp_path / "out", "registers": None,
                          "clock_mhz": 200.0}),
    ]


def test_sim_run_config_is_checked_against_the_map(monkeypatch, feed, map_file, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_pcap=0)
    config = tmp_path / "settings.toml"
    config.write_text("[risk]\nmax_order_quantity = 500\nkill = 1\n")
    assert cli.main(["sim", "run", "--feed", str(feed), "--config", str(config),
                     "--map", str(map_file)]) == 0
    assert calls[0][2]["registers"] == {"risk.max_order_quantity": 500, "risk.kill": 1}


def test_sim_run_bad_config(monkeypatch, capsys, feed, map_file, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_pcap=0)
    config = tmp_path / "settings.toml"
    config.write_text("[id]\ncycles = 5\n")
    assert cli.main(["sim", "run", "--feed", str(feed), "--config", str(config),
                     "--map", str(map_file)]) == 2
    err = _error(capsys)
    assert err.startswith("tickwire: error: config ")
    assert "settings.toml: [id] cycles: register id.cycles is read-only" in err
    assert calls == []


def test_sim_run_missing_feed(monkeypatch, capsys, tmp_path):
    calls = _fake_module(monkeypatch, "tickwire.sim.demo", run_pcap=0)
    assert cli.main(["sim", "run", "--feed", str(tmp_path / "nothing.pcap")]) == 2
    assert _error(capsys) == f"tickwire: error: feed {tmp_path / 'nothing.pcap'} not found\n"
    assert calls == []


def test_default_clock_is_the_gateware_clock():
    from tickwire.hdl.top import CLOCK_HZ
    assert cli.DEFAULT_CLOCK_MHZ == CLOCK_HZ / 1e6
