"""The ouch stage alone on Verilator (sim/tb_ouch.py) against the reference model."""

from tickwire.sim.runner import run


def test_ouch():
    run("ouch", "tickwire.sim.tb_ouch")
