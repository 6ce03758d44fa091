"""hdl/arbiter.py on Verilator: the cocotb bench of sim/tb_arbiter.py, one pytest test per cocotb test."""

import pytest

from tickwire.sim.runner import run

TESTS = ("arbiter_random", "arbiter_saturated", "arbiter_one_input")


@pytest.mark.parametrize("testcase", TESTS)
def test_arbiter(testcase):
    run("arbiter", "tickwire.sim.tb_arbiter", testcase=testcase)
