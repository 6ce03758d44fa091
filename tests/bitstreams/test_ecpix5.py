"""bitstreams/ecpix5.py: the ECPIX-5 top elaborates on its platform into the files the open flow
reads (pins, DDR primitives, PLL, clock constraints), and refuses bad sizes and clocks."""

import pytest

from tickwire.bitstreams.boards import BOARDS, ECPIX5_APPLIANCE, ECPIX5_CORE_DIVIDER
from tickwire.bitstreams.ecpix5 import Ecpix5Top, check_appliance_kwargs, core_clock_hz

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
