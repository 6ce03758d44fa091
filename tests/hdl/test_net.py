"""hdl/net.py on Verilator: the cocotb benches of sim/tb_net.py, one pytest test per cocotb test."""

import pytest

pytest.importorskip("cocotb")

from tickwire.sim.runner import build, run  # noqa: E402

NET_RX_TESTS = ("net_rx_filter", "net_rx_backpressure", "net_rx_latency")
NET_TX_TESTS = ("net_tx_frames", "net_tx_backpressure", "net_tx_lengths", "net_tx_latency")


@pytest.fixture(scope="module")
def net_rx_build():
    return build("net_rx")


@pytest.fixture(scope="module")
def net_tx_build():
    return build("net_tx")


@pytest.mark.parametrize("testcase", NET_RX_TESTS)
def test_net_rx(net_rx_build, testcase):
    run("net_rx", "tickwire.sim.tb_net", testcase=testcase, test_dir=net_rx_build / "runs" / testcase)


@pytest.mark.parametrize("testcase", NET_TX_TESTS)
def test_net_tx(net_tx_build, testcase):
    run("net_tx", "tickwire.sim.tb_net", testcase=testcase, test_dir=net_tx_build / "runs" / testcase)
