"""The risk stage alone on Verilator (sim/tb_risk.py) against the reference model."""

from tickwire.sim.runner import run


def test_risk():
    run("risk", "tickwire.sim.tb_risk")
