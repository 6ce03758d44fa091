"""The appliance on the LambdaConcept ECPIX-5 (ECP5-85F, one RGMII 1 GbE port), open flow."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out
from amaranth.lib.cdc import ResetSynchronizer

from ..hdl.mac import MacRx, MacTx, XgmiiSignature
from ..hdl.rgmii import IDLE_WORD, RGMII_CLOCK_HZ, XGMII_WORD_RATE_HZ, RgmiiMac

__all__ = ["Ecpix5Top", "Ecpix5Core", "Ecpix5Loopback", "add_clocks", "PLL_VCO_HZ", "core_clock_hz",
           "check_appliance_kwargs", "ECPIX5_APPLIANCE", "ECPIX5_CORE_DIVIDER", "ECPIX5_MAC_ADDRESS"]

#: The ECPIX-5's whole configuration of the appliance, in one place: the ``Appliance`` keyword
#: arguments (a board may pass a smaller configuration than the defaults, which the KCU105 keeps).
#: The ECP5-85F has 83,640 LUT4: with the defaults' tables it synthesized to 64 % of them and did
#: not route in 45 minutes. So the book tracks 8 symbols (the symbol directory's minimum), 1,024
#: live orders in 2 ways, 2 price levels per side; 1 order session, 2 trigger rules, a 4-order
#: queue, and the smallest feed buffer ``MacRx`` takes (512 words: two maximum frames). The one
#: port carries one feed line (no line B) and the orders as UDP datagrams the host relays (no
#: TCP engine); with one line and no retransmission injection one open gap is kept (4 gaps of
#: 64-bit sequence ranges were a fifth of the logic); the management port reads the feed MAC's
#: frames and sends through the order MAC (no MAC pair of its own): the full build with the
#: defaults did not route (docs/boards.md).
#: docs/boards.md lists it; docs/benchmarks.md has what it measured.
ECPIX5_APPLIANCE: dict[str, Any] = {
    "book": {"slots": 8, "capacity": 1024, "ways": 2, "depth": 2},
    "sessions": 1,
    "rules": 2,
    "order_queue_depth": 4,
    "rx_buffer_words": 512,
    "feed_lines": 1,
    "tcp_engine": False,
    "max_open_gaps": 1,
    "feed_frame_tap": True,
    "port_frames": True,
}
#: CLKOS divider of the 750 MHz VCO for the core clock (``sync``): 38 -> 19.74 MHz, the slowest
#: divider above the 19.53 MHz (1.25 x 15.625 MHz) the core needs to keep up with 1 GbE. With
#: divider 36 (20.83 MHz) nextpnr placed this configuration's core at an estimated 22.7 MHz, too
#: close to trust after routing; the post-route Fmax of the core is in docs/benchmarks.md.
ECPIX5_CORE_DIVIDER = 38
#: Locally administered: 02, "twir", 01.
ECPIX5_MAC_ADDRESS = 0x02_74_77_69_72_01

#: EHXPLLL: 100 MHz in, /4 to a 25 MHz phase detector, x5 feedback on CLKOP (125 MHz, /6 from a
#: 750 MHz VCO); the core clock is the VCO divided by ``core_divider`` on CLKOS.
PLL_INPUT_HZ = 100_000_000
PLL_VCO_HZ = 750_000_000
_CLKI_DIV = 4
_CLKFB_DIV = 5
_CLKOP_DIV = PLL_VCO_HZ // RGMII_CLOCK_HZ


def core_clock_hz(core_divider: int) -> int:
    """The core clock for a CLKOS divider (750 MHz / divider)."""
    return PLL_VCO_HZ // core_divider


def check_appliance_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` if ``Appliance`` takes every one of them, else a ``ValueError`` naming the rest."""
    from ..hdl.top import Appliance
    params = inspect.signature(Appliance.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"Appliance does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(p for p in params if p != 'self')}")
    return dict(kwargs)


def add_clocks(m: Module, platform, core_divider: int):
    """The ECPIX-5's clock domains in ``m``: ``rgmii_tx`` (PLL CLKOP, 125 MHz), ``sync`` (PLL CLKOS,
    750 MHz / ``core_divider``), and the resets of these and ``rgmii_rx`` (held while the PLL is
    unlocked or the reset button is pressed). Returns (PLL lock, the reset button's pin)."""
    core_hz = core_clock_hz(core_divider)
    clk100 = m.submodules.clk100 = io.Buffer("i", platform.request("clk100", 0, dir="-"))
    reset_button = platform.request("rst", 0)
    clkop = Signal()
    clkos = Signal()
    lock = Signal()
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=str(PLL_INPUT_HZ // 1_000_000),
        a_FREQUENCY_PIN_CLKOP=str(RGMII_CLOCK_HZ // 1_000_000),
        a_FREQUENCY_PIN_CLKOS=f"{core_hz / 1e6:.4f}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=_CLKOP_DIV, p_CLKOP_CPHASE=_CLKOP_DIV - 1,
        p_CLKOP_FPHASE=0,
        p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=core_divider,
        p_CLKOS_CPHASE=core_divider - 1, p_CLKOS_FPHASE=0,
        p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=_CLKFB_DIV, p_CLKI_DIV=_CLKI_DIV,
        i_CLKI=clk100.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
        i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
        o_CLKOP=clkop, o_CLKOS=clkos, o_LOCK=lock)
    platform.add_clock_constraint(clkop, RGMII_CLOCK_HZ)
    platform.add_clock_constraint(clkos, core_hz)
    m.domains.sync = ClockDomain("sync")
    m.domains.rgmii_tx = ClockDomain("rgmii_tx")
    m.d.comb += [ClockSignal("sync").eq(clkos), ClockSignal("rgmii_tx").eq(clkop)]
    not_ready = ~lock | reset_button.i
    for domain in ("sync", "rgmii_tx", "rgmii_rx"):
        m.submodules[f"reset_{domain}"] = ResetSynchronizer(not_ready, domain=domain)
    return lock, reset_button


def add_ethernet(m, platform, lock, tx_sources: tuple[str, str]) -> RgmiiMac:
    """The board's RGMII port and its MAC (``tx_sources`` name the two transmit inputs); the PHY
    leaves reset once the clocks run (``lock``), MDIO stays idle (the PHY's strapping applies)."""
    eth = platform.request("eth_rgmii", 0, dir={
        "rx_clk": "-", "rx_ctrl": "-", "rx_data": "-", "tx_clk": "-", "tx_ctrl": "-",
        "tx_data": "-"})
    mac = m.submodules.rgmii = RgmiiMac(eth, tx_sources=tx_sources)
    m.d.comb += [eth.rst.o.eq(~lock), eth.mdc.o.eq(0), eth.mdio.oe.eq(0)]
    return mac


def _check_core_divider(core_divider: int) -> None:
    if not 2 <= core_divider <= 128:
        raise ValueError(f"core_divider must be 2..128, not {core_divider!r}")
    if core_clock_hz(core_divider) * 4 < XGMII_WORD_RATE_HZ * 5:
        raise ValueError(f"core_divider {core_divider} gives {core_clock_hz(core_divider)} Hz; "
                         f"the core must run at least 1.25 x {XGMII_WORD_RATE_HZ} Hz")


class Ecpix5Core(wiring.Component):
    """The board's core-domain design on its one Ethernet port: the appliance and the management
    port sharing the appliance's MACs. Every good frame the feed MAC receives goes to the feed
    path and to the management port (``feed_frame_tap``), each taking it at its own pace; the
    management port's replies and event frames leave through the order port's MAC, merged with
    the orders packet by packet (``port_frames``). Feed line B (when the configuration has it) is
    held idle and the host injection port is unused.

    Parameters
    ----------
    appliance_kwargs : mapping
        ``Appliance`` keyword arguments; ``feed_frame_tap`` and ``port_frames`` must be set.
    mac_address : int
        The card's MAC address for the management port.

    Members
    -------
    rx : In(XgmiiSignature)
        The port's receive side (core domain).
    tx : Out(XgmiiSignature)
        The port's transmit side: orders, management replies and event frames.
    """

    def __init__(self, *, appliance_kwargs: Mapping[str, Any], mac_address: int):
        from ..hdl.top import Appliance
        from .management import ManagementPort
        kwargs = check_appliance_kwargs(appliance_kwargs)
        if not (kwargs.get("feed_frame_tap") and kwargs.get("port_frames")):
            raise ValueError("the ECPIX-5 core shares the appliance's MACs with the management "
                             "port: its configuration needs feed_frame_tap=True and port_frames=True")
        self.appliance = Appliance(**kwargs)
        self.management = ManagementPort(mac_address=mac_address)
        super().__init__({"rx": In(XgmiiSignature()), "tx": Out(XgmiiSignature())})

    def elaborate(self, platform):
        m = Module()
        appliance = m.submodules.appliance = self.appliance
        port = m.submodules.management = self.management
        wiring.connect(m, wiring.flipped(self.rx), appliance.feed_rx)
        if "feed_rx_b" in appliance.signature.members:
            m.d.comb += [appliance.feed_rx_b.data.eq(IDLE_WORD), appliance.feed_rx_b.ctrl.eq(0xFF)]
        m.d.comb += appliance.i_inject.valid.eq(0)
        wiring.connect(m, appliance.order_tx, wiring.flipped(self.tx))
        wiring.connect(m, appliance.o_feed_frames, port.i_stream)
        wiring.connect(m, port.o_stream, appliance.i_port_frames)
        wiring.connect(m, port.csr, appliance.csr)
        wiring.connect(m, appliance.o_events, port.i_events)     # event records as event frames
        return m


class Ecpix5Top(Elaboratable):
    """Clocks, the RGMII MAC, the management port and the appliance on the ECPIX-5.

    Clocks: ``rgmii_tx`` 125 MHz (PLL CLKOP) drives the transmit pins and TXC; ``rgmii_rx`` is the
    PHY's RXC (125 MHz); ``sync``, the appliance's core clock, is PLL CLKOS at
    750 MHz / ``core_divider``. Async FIFOs in ``RgmiiMac`` cross between them. The one Ethernet
    port carries the feed in, the orders out, and the register access of ``ManagementPort``
    (:class:`Ecpix5Core`).

    Parameters
    ----------
    appliance_kwargs : mapping
        Size arguments for ``Appliance`` (``ECPIX5_APPLIANCE`` for the board).
    core_divider : int
        CLKOS divider of the 750 MHz VCO (15: 50 MHz).
    mac_address : int
        The card's MAC address for the management port.
    """

    def __init__(self, *, appliance_kwargs: Mapping[str, Any], core_divider: int,
                 mac_address: int):
        _check_core_divider(core_divider)
        self.appliance_kwargs = check_appliance_kwargs(appliance_kwargs)
        self.core_divider = core_divider
        self.core_hz = core_clock_hz(core_divider)
        self.mac_address = mac_address

    def elaborate(self, platform):
        m = Module()
        lock, reset_button = add_clocks(m, platform, self.core_divider)

        # -- Ethernet: one port for the feed, the orders and register access -------------------
        core = m.submodules.core = Ecpix5Core(appliance_kwargs=self.appliance_kwargs,
                                              mac_address=self.mac_address)
        mac = add_ethernet(m, platform, lock, ("order",))
        wiring.connect(m, mac.xgmii_rx, core.rx)
        wiring.connect(m, core.tx, mac.order)

        # -- LEDs: green when the PLL is locked, blue toggles on every received frame -----------
        led = platform.request("rgb_led", 0)
        m.d.comb += [led.g.o.eq(lock), led.b.o.eq(mac.rx_frames[0]), led.r.o.eq(reset_button.i)]
        return m


class Ecpix5Loopback(Elaboratable):
    """The ECPIX-5's clocks and RGMII MAC with every good received frame sent back (``MacRx`` into
    ``MacTx``): a bring-up image for the Ethernet port, and the small design on which the RGMII
    timing is checked by place and route without the appliance.

    Parameters
    ----------
    core_divider : int
        CLKOS divider of the 750 MHz VCO, as for ``Ecpix5Top``.
    """

    def __init__(self, *, core_divider: int):
        _check_core_divider(core_divider)
        self.core_divider = core_divider

    def elaborate(self, platform):
        m = Module()
        lock, reset_button = add_clocks(m, platform, self.core_divider)
        mac = add_ethernet(m, platform, lock, ("echo", "unused"))
        rx = m.submodules.mac_rx = MacRx(buffer_words=512)
        tx = m.submodules.mac_tx = MacTx()
        wiring.connect(m, mac.xgmii_rx, rx.xgmii)
        wiring.connect(m, rx.o_stream, tx.i_stream)
        wiring.connect(m, tx.xgmii, mac.echo)
        m.d.comb += [mac.unused.data.eq(IDLE_WORD), mac.unused.ctrl.eq(0xFF)]
        led = platform.request("rgb_led", 0)
        m.d.comb += [led.g.o.eq(lock), led.b.o.eq(mac.rx_frames[0]), led.r.o.eq(reset_button.i)]
        return m
