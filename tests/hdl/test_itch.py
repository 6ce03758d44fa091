"""The itch stage alone on Verilator (sim/tb_itch.py) against the reference model."""

from tickwire.sim.runner import run


def test_itch():
    run("itch", "tickwire.sim.tb_itch")
