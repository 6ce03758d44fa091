"""hdl/net.py on Verilator: the cocotb benches of sim/tb_net.py, one pytest test per cocotb test."""

import pytest

from tickwire.sim.runner import run

NET_RX_TESTS = ("net_rx_filter", "net_rx_backpressure", "net_rx_latency")
NET_TX_TESTS = ("net_tx_frames", "net_tx_backpressure", "net_tx_lengths", "net_tx_latency")


@pytest.mark.parametrize("dut,testcase", [("net_rx", t) for t in NET_RX_TESTS] + [("net_tx", t) for t in NET_TX_TESTS])
def test_net(dut, testcase):
    run(dut, "tickwire.sim.tb_net", testcase=testcase)
