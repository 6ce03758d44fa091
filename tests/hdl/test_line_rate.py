"""The market-data path at line rate (sim/tb_line_rate.py): densest legal feed, zero loss."""

from tickwire.sim.runner import run


def test_densest_feed_zero_loss(tmp_path):
    out = tmp_path / "line_rate.txt"
    run("market_data", "tickwire.sim.tb_line_rate", testcase="densest_feed",
        extra_env={"TICKWIRE_LINE_RATE_OUT": str(out)})
    per_cycle = float(out.read_text().split()[0])
    assert 0.5 < per_cycle < 1.0  # 103 messages per 1538 wire bytes: 0.536 per cycle


def test_message_latency_after_mac(tmp_path):
    out = tmp_path / "latency.txt"
    run("market_data", "tickwire.sim.tb_line_rate", testcase="message_latency",
        extra_env={"TICKWIRE_LINE_RATE_OUT": str(out)})
    low, high = map(int, out.read_text().split())
    assert 1 <= low <= high <= 4
