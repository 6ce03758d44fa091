"""hdl/moldudp64.py on Verilator: the cocotb bench of sim/tb_moldudp64.py, one pytest test per cocotb test."""

import pytest

from tickwire.sim.runner import run

TESTS = ("moldudp64_sequencing", "moldudp64_gap_fill", "moldudp64_backpressure", "moldudp64_densest",
         "moldudp64_latency")


@pytest.mark.parametrize("testcase", TESTS)
def test_moldudp64(testcase):
    run("moldudp64", "tickwire.sim.tb_moldudp64", testcase=testcase)
