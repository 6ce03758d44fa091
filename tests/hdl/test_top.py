"""The whole appliance on Verilator (sim/tb_top.py), built once per session and reused."""

import json
import subprocess
import sys

import pytest

from tickwire.sim.runner import run


@pytest.mark.parametrize("testcase", ["default_feed", "bad_input_never_wedges", "kill_switch", "ab_lines", "host_orders", "exchange_answers"])
def test_top(testcase):
    run("top", "tickwire.sim.tb_top", testcase=testcase)


@pytest.mark.parametrize("seed", [3, 11, 20])
def test_top_random_feeds(seed):
    run("top", "tickwire.sim.tb_top", testcase="random_feeds", extra_env={"TICKWIRE_RANDOM_SEED": str(seed)})


def test_demo_cli(tmp_path):
    """``tickwire demo`` prints measured figures and writes pcaps that scapy reads back."""
    import scapy.layers.inet  # noqa: F401  (registers Ether/IP/UDP with the pcap reader)
    from scapy.utils import rdpcap
    out = tmp_path / "demo"
    # The pipeline part only: the TCP part has its own test (tests/sim/test_tcp_demo.py).
    proc = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "demo", "--out", str(out),
                           "--transport", "udp"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "tick-to-trade" in proc.stdout and "matches the reference model byte for byte: yes" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["orders_out"] > 0 and len(summary["latency_cycles"]) == summary["orders_out"]
    orders = rdpcap(str(out / "orders.pcap"))
    feed = rdpcap(str(out / "feed.pcap"))
    assert len(orders) == summary["orders_out"] and len(feed) == summary["frames_in"]
    assert bytes(orders[0]["UDP"].payload)[2:4] == b"UO"  # SoupBinTCP 'U' carrying OUCH Enter Order 'O'


def test_sim_run_pcap_with_config(tmp_path):
    """``tickwire sim run`` replays a pcap with register overrides from TOML (kill switch on)."""
    from tickwire.sim.feed import build_feed
    from tickwire.sim.pcap import write_pcap
    pcap = tmp_path / "feed.pcap"
    write_pcap(pcap, build_feed({"count": 120}))
    cfg = tmp_path / "kill.toml"
    cfg.write_text("[risk]\nkill = 1\n")
    proc = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "sim", "run", "--feed", str(pcap),
                           "--config", str(cfg), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["orders_out"] == 0 and summary["counters"]["risk.rejected_kill"] > 0
