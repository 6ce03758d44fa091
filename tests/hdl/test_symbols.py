"""The symbol directory alone on Verilator (sim/tb_symbols.py) against the reference model."""

import pytest

from tickwire.sim.runner import run


@pytest.mark.parametrize("testcase", ["random_records", "random_records_backpressure"])
def test_symbols(testcase):
    run("symbols", "tickwire.sim.tb_symbols", testcase=testcase)
