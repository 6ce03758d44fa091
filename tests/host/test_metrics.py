"""Tests of host/metrics.py: counters and histograms from journal records, HTTP endpoint."""

import urllib.request

import pytest

from tickwire.host.journal import Record, RecordType
from tickwire.host.metrics import AgentMetrics, serve
from tickwire.host.positions import Positions

MS = 1_000_000  # nanoseconds


def _records():
    return [
        Record(0, 100 * MS, RecordType.ORDER, dict(user_ref_num=1, session=0, side="B",
                                                   symbol="AAPL", quantity=100, price=1_000_000)),
        Record(1, 103 * MS, RecordType.ACK, dict(user_ref_num=1, session=0,
                                                 order_reference_number=5, quantity=100,
                                                 price=1_000_000)),
        Record(2, 150 * MS, RecordType.FILL, dict(user_ref_num=1, session=0, match_number=1,
                                                  quantity=40, price=1_000_000,
                                                  liquidity_flag="A")),
        Record(3, 160 * MS, RecordType.FILL, dict(user_ref_num=1, session=0, match_number=2,
                                                  quantity=60, price=1_000_000,
                                                  liquidity_flag="A")),
        Record(4, 170 * MS, RecordType.REJECT, dict(user_ref_num=2, session=1, source=1,
                                                    reason=3)),
        Record(5, 180 * MS, RecordType.KILL, dict(session=0xFFFF, reason="test")),
        Record(6, 190 * MS, RecordType.ALERT, dict(severity=2, code=7, message="mismatch")),
        Record(7, 200 * MS, RecordType.CANCEL, dict(user_ref_num=9, session=1, quantity=1,
                                                    reason="U")),
    ]


def test_counters_and_latencies_from_records():
    metrics = AgentMetrics(session_names={0: "ouch1"})
    for record in _records():
        metrics.observe(record)
    v = metrics.value
    assert v("tickwire_orders_total", {"session": "ouch1"}) == 1
    assert v("tickwire_acks_total", {"session": "ouch1"}) == 1
    assert v("tickwire_fills_total", {"session": "ouch1"}) == 2
    assert v("tickwire_filled_shares_total", {"session": "ouch1", "side": "B"}) == 100
    assert v("tickwire_rejects_total", {"session": "1", "source": "risk", "reason": "3"}) == 1
    assert v("tickwire_cancels_total", {"session": "1"}) == 1
    assert v("tickwire_kills_total") == 1 and v("tickwire_killed") == 1
    assert v("tickwire_alerts_total", {"code": "7"}) == 1
    assert v("tickwire_journal_records_total", {"type": "fill"}) == 2
    # 3 ms to the ack, 50 ms to the first fill (the second fill is not a first fill).
    assert v("tickwire_order_to_ack_seconds_count", {"session": "ouch1"}) == 1
    assert v("tickwire_order_to_ack_seconds_sum", {"session": "ouch1"}) == pytest.approx(0.003)
    assert v("tickwire_order_to_ack_seconds_bucket", {"session": "ouch1", "le": "0.0025"}) == 0
    assert v("tickwire_order_to_ack_seconds_bucket", {"session": "ouch1", "le": "0.005"}) == 1
    assert v("tickwire_order_to_first_fill_seconds_count", {"session": "ouch1"}) == 1
    assert v("tickwire_order_to_first_fill_seconds_sum",
             {"session": "ouch1"}) == pytest.approx(0.05)
    metrics.observe(Record(8, 210 * MS, RecordType.UNKILL, dict(session=0xFFFF, reason="")))
    assert v("tickwire_killed") == 0


def test_each_agent_has_its_own_registry():
    a, b = AgentMetrics(), AgentMetrics()
    a.observe(_records()[0])
    assert a.value("tickwire_orders_total", {"session": "0"}) == 1
    assert b.value("tickwire_orders_total", {"session": "0"}) is None


def test_card_latency_and_position_gauges():
    metrics = AgentMetrics(clock_hz=100_000_000)
    metrics.card_latency("tick_to_trade", 50)  # 500 ns
    assert metrics.value("tickwire_card_latency_seconds_sum",
                         {"stage": "tick_to_trade"}) == pytest.approx(5e-7)
    assert metrics.value("tickwire_card_latency_seconds_bucket",
                         {"stage": "tick_to_trade", "le": "5e-07"}) == 1
    with pytest.raises(ValueError, match="negative"):
        metrics.card_latency("tick_to_trade", -1)
    positions = Positions()
    positions.order_accepted(0, 1, "AAPL", "B", 10, 1_000_000)
    positions.filled(0, 1, 10, 1_000_000)
    positions.quote("AAPL", 1_010_000, 1_010_100)
    metrics.update_positions(positions)
    labels = {"session": "0", "symbol": "AAPL"}
    assert metrics.value("tickwire_position_shares", labels) == 10
    assert metrics.value("tickwire_unrealized_pnl", labels) == pytest.approx(10.0)


def test_served_on_loopback():
    metrics = AgentMetrics()
    metrics.observe(_records()[0])
    server, thread = serve(metrics, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        assert 'tickwire_orders_total{session="0"} 1.0' in text
        assert "python_gc_objects_collected_total" not in text  # not the default registry
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="port must be"):
        serve(metrics, 70000)
