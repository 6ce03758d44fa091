"""hdl/mac.py on Verilator: the cocotb benches of sim/tb_mac.py, one pytest test per cocotb test."""

import pytest

from tickwire.sim.runner import run

MAC_RX_TESTS = ("mac_rx_good_frames", "mac_rx_bad_frames", "mac_rx_backpressure", "mac_rx_overflow",
                "mac_rx_latency")
MAC_TX_TESTS = ("mac_tx_frames", "mac_tx_underrun", "mac_tx_latency")


@pytest.mark.parametrize("dut,testcase", [("mac_rx", t) for t in MAC_RX_TESTS] + [("mac_tx", t) for t in MAC_TX_TESTS])
def test_mac(dut, testcase):
    run(dut, "tickwire.sim.tb_mac", testcase=testcase)
