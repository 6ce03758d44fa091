"""hdl/market_data.py on Verilator: A/B line arbitration and gap recovery (sim/tb_market_data.py)."""

import pytest

from tickwire.sim.runner import run

TESTS = ("ab_lines_in_step", "ab_lines_skewed", "gap_recovered_by_injection")


@pytest.mark.parametrize("testcase", TESTS)
def test_market_data(testcase):
    run("market_data", "tickwire.sim.tb_market_data", testcase=testcase)
