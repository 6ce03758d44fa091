"""bitstreams/ecpix5.py: the ECPIX-5 top elaborates on its platform into the files the open flow
reads (pins, DDR primitives, PLL, clock constraints), and refuses bad sizes and clocks."""

import os

import pytest

from tickwire.bitstreams.boards import BOARDS
from tickwire.bitstreams.ecpix5 import (ECPIX5_APPLIANCE, ECPIX5_CORE_DIVIDER, Ecpix5Loopback,
                                        Ecpix5Top, check_appliance_kwargs, core_clock_hz)

pytest.importorskip("amaranth_boards")


@pytest.fixture(scope="module")
def plan():
    board = BOARDS["ecpix5"]
    return board.make_platform().prepare(board.make_top(), name="tickwire")


def test_platform_elaborates_with_pins_primitives_and_clocks(plan):
    lpf = plan.files["tickwire.lpf"]
    lpf = lpf if isinstance(lpf, str) else lpf.decode()
    for pin in ("K23", "E11", "A11", "B11", "A12", "C9", "D8"):   # clk100, RXC, RX_CTL, RXD0, TXC, TX_CTL, TXD0
        assert f'SITE "{pin}"' in lpf
    assert "FREQUENCY" in lpf and "125000000" in lpf
    assert f"{float(core_clock_hz(ECPIX5_CORE_DIVIDER))} HZ" in lpf
    # RXC is constrained on its pin: nextpnr ignores constraints on nets that synthesis renames.
    assert 'FREQUENCY PORT "eth_rgmii_0__rx_clk__io" 125000000.0 HZ' in lpf
    il = plan.files["tickwire.il"]
    il = il if isinstance(il, str) else il.decode()
    for cell in ("EHXPLLL", "IDDRX1F", "ODDRX1F"):
        assert f"cell \\{cell}" in il or f"cell {cell}" in il, cell


def test_board_sizes_come_from_its_dict():
    assert check_appliance_kwargs(ECPIX5_APPLIANCE) == ECPIX5_APPLIANCE
    with pytest.raises(ValueError, match="Appliance does not take book_entries"):
        check_appliance_kwargs({"book_entries": 1024})


def test_core_clock_checks():
    with pytest.raises(ValueError, match="the core must run at least"):
        Ecpix5Top(appliance_kwargs={}, core_divider=60, mac_address=2)
    assert core_clock_hz(15) == 50_000_000


def test_board_entry_uses_the_configuration_in_ecpix5_py():
    board = BOARDS["ecpix5"]
    assert board.appliance_kwargs is ECPIX5_APPLIANCE
    assert board.core_hz == core_clock_hz(ECPIX5_CORE_DIVIDER)
    top = board.make_top()
    assert top.appliance_kwargs == ECPIX5_APPLIANCE and top.core_divider == ECPIX5_CORE_DIVIDER
    # Every size the board passes is one Appliance checks and takes.
    from tickwire.hdl.top import Appliance
    appliance = Appliance(**ECPIX5_APPLIANCE)
    assert appliance.book.slots == ECPIX5_APPLIANCE["book"]["slots"]
    assert appliance.book.depth == ECPIX5_APPLIANCE["book"]["depth"]


def test_loopback_elaborates_with_the_same_clocks():
    board = BOARDS["ecpix5"]
    plan = board.make_platform().prepare(Ecpix5Loopback(core_divider=30), name="loopback")
    lpf = plan.files["loopback.lpf"]
    lpf = lpf if isinstance(lpf, str) else lpf.decode()
    assert 'FREQUENCY PORT "eth_rgmii_0__rx_clk__io" 125000000.0 HZ' in lpf
    assert f"{float(core_clock_hz(30))} HZ" in lpf
    with pytest.raises(ValueError, match="core_divider must be 2..128, not 1"):
        Ecpix5Loopback(core_divider=1)


@pytest.mark.skipif(os.environ.get("TICKWIRE_PNR") != "1",
                    reason="place and route of the RGMII loopback takes a few minutes: TICKWIRE_PNR=1")
def test_loopback_meets_timing_after_place_and_route(tmp_path):
    # The RGMII MAC's 125 MHz receive and transmit domains, placed and routed with a MacRx and a
    # MacTx in the core domain: every clock meets its constraint and a bitstream is written.
    from tickwire.bitstreams.build import implement_plan, prepare
    platform, plan = prepare(BOARDS["ecpix5"], top=Ecpix5Loopback(core_divider=ECPIX5_CORE_DIVIDER))
    plan.extract(str(tmp_path))
    result = implement_plan("loopback", platform, tmp_path)
    assert {round(c.constraint_mhz) for c in result.clocks} >= {125}
    assert all(c.met for c in result.clocks), result.clocks
    assert result.bitstream is not None and result.bitstream.stat().st_size > 100_000


def test_nextpnr_clock_nets_are_named_by_domain():
    from tickwire.bitstreams.bench import clock_domain
    core = core_clock_hz(ECPIX5_CORE_DIVIDER) / 1e6
    assert clock_domain("reset_rgmii_tx.async_ff_clk", 125.0, core) == "rgmii_tx"
    assert clock_domain("reset_rgmii_rx.async_ff_clk", 125.0, core) == "rgmii_rx"
    assert clock_domain("appliance.book.clk", core, core) == "sync"
    assert clock_domain("clk100_0__io", 100.0, core) == "clk100_0__io"
