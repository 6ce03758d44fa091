"""The agent's event-rate benchmark (tickwire.host.bench_agent)."""

import pytest

from tickwire.host import bench_agent


def test_bench_agent_counts_every_event_it_times():
    b = bench_agent.bench_agent(2000)
    assert b.events == 2000 and b.journalled == 2000
    assert b.reject_events_per_second > 0 and b.order_sent_events_per_second > 0
    assert b.reject_cpu_events_per_second > 0 and set(b.as_dict()) >= {"events", "journalled"}


def test_bench_agent_refuses_a_count_below_one_and_says_when_the_agent_falls_behind(monkeypatch):
    with pytest.raises(ValueError, match="events must be at least 1, not 0"):
        bench_agent.bench_agent(0)
    # An agent loop that takes no events: the bench gives up after its timeout and says so.
    monkeypatch.setattr(bench_agent.Agent, "run", lambda self: self._stop.wait())
    with pytest.raises(TimeoutError, match="the agent took 0 of 10 events"):
        bench_agent.bench_agent(10, timeout=0.5)


def test_bench_agent_command_prints_its_figures(capsys):
    assert bench_agent.main(["--events", "500"]) == 0
    out = capsys.readouterr().out
    assert "RISK_REJECT events/s journalled" in out and "500 of each" in out
    with pytest.raises(SystemExit):
        bench_agent.main(["--events", "0"])
