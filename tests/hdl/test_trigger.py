"""The trigger stage alone on Verilator (sim/tb_trigger.py) against the reference model."""

from tickwire.sim.runner import run


def test_trigger():
    run("trigger", "tickwire.sim.tb_trigger")
