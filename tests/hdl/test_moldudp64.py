"""hdl/moldudp64.py on Verilator: the cocotb bench of sim/tb_moldudp64.py, one pytest test per cocotb test."""

import pytest

pytest.importorskip("cocotb")

from tickwire.sim.runner import build, run  # noqa: E402

TESTS = ("moldudp64_sequencing", "moldudp64_backpressure", "moldudp64_densest", "moldudp64_latency")


@pytest.fixture(scope="module")
def moldudp64_build():
    return build("moldudp64")


@pytest.mark.parametrize("testcase", TESTS)
def test_moldudp64(moldudp64_build, testcase):
    run("moldudp64", "tickwire.sim.tb_moldudp64", testcase=testcase,
        test_dir=moldudp64_build / "runs" / testcase)
