"""``tickwire demo``'s TCP part: the Verilated card (transport tcp) against ``tickwire exchange``
through TAP interfaces in a namespace of its own."""

from __future__ import annotations

import pytest

from tickwire.sim.order_wire import measure_order_to_wire
from tickwire.sim.tcp_demo import format_tcp_summary, run_tcp_demo, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"TCP demo: {unavailable()}")


def test_the_card_trades_with_the_exchange_over_its_tcp_engine(capsys):
    summary = run_tcp_demo(seconds=3.0, host_orders=2)
    text = format_tcp_summary(summary)
    with capsys.disabled():
        print("\n" + text)
    # The opening book fires the AAPL rule: the card's own order and the host's two are filled.
    assert summary["trigger_fired"] >= 1 and summary["host_orders"] == 2
    assert summary["exchange_rejects"] == 0 and len(summary["fills"]) >= 3
    # The host's positions (from the exchange's answers through the card) and the card's risk
    # exposure (from the same answers, in gateware) agree.
    assert summary["positions"]["AAPL"]["position"] == summary["position"]
    assert summary["tcp"]["rx_bad_checksum"] == 0 and summary["tcp"]["tx_closed_drops"] == 0
    # Risk accepting an order -> its segment on the wire: the order path's measured latency
    # less risk's own 2 cycles (the event is stamped when risk passes the order on).
    wire = measure_order_to_wire()["cycles"] - 2
    assert summary["accept_to_wire_cycles"] and set(summary["accept_to_wire_cycles"]) == {wire}
    assert summary["tick_to_trade_cycles"]
