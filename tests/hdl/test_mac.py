"""hdl/mac.py on Verilator: the cocotb benches of sim/tb_mac.py, one pytest test per cocotb test."""

import pytest

pytest.importorskip("cocotb")
pytest.importorskip("cocotbext.eth")

from tickwire.sim.runner import build, run  # noqa: E402

MAC_RX_TESTS = ("mac_rx_good_frames", "mac_rx_bad_frames", "mac_rx_backpressure", "mac_rx_overflow",
                "mac_rx_latency")
MAC_TX_TESTS = ("mac_tx_frames", "mac_tx_underrun", "mac_tx_latency")


@pytest.fixture(scope="module")
def mac_rx_build():
    return build("mac_rx")


@pytest.fixture(scope="module")
def mac_tx_build():
    return build("mac_tx")


@pytest.mark.parametrize("testcase", MAC_RX_TESTS)
def test_mac_rx(mac_rx_build, testcase):
    run("mac_rx", "tickwire.sim.tb_mac", testcase=testcase, test_dir=mac_rx_build / "runs" / testcase)


@pytest.mark.parametrize("testcase", MAC_TX_TESTS)
def test_mac_tx(mac_tx_build, testcase):
    run("mac_tx", "tickwire.sim.tb_mac", testcase=testcase, test_dir=mac_tx_build / "runs" / testcase)
