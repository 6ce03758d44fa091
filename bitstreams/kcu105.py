"""The appliance on the AMD KCU105 at 10GBASE-R over SFP+: a generated Vivado project.

``write_project(out_dir)`` writes:

* ``tickwire_core.v``: the Amaranth core (``Kcu105Core``: the appliance, the management port,
  the frame merge onto the order port), clocked by the PCS/PMA's 156.25 MHz ``coreclk_out``;
* ``kcu105_top.v``: the board top: clocks, two instances of the AMD 10G Ethernet PCS/PMA
  (``ten_gig_eth_pcs_pma``, 10GBASE-R, BASE-R, 64-bit XGMII): SFP0 with the shared logic (QPLL,
  clocking, reset) in the core, SFP1 fed by it; the core between them;
* ``kcu105.xdc``: pins and clocks; ``create_project.tcl``: project, IP creation, sources,
  synthesis, implementation, timing report, bitstream (``vivado -mode batch -source
  create_project.tcl``); ``ip_stubs.v``: black-box modules of the vendor IP and primitives, for
  linting the sources without Vivado.

SFP0 carries the feed (receive only), SFP1 the orders out and the register access of
``bitstreams.management`` in both directions. Pin locations come from the KCU105 user guide
(UG917); check them there before the first build on a board.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ..hdl.mac import MacRx, MacTx, XgmiiSignature
from ..hdl.rgmii import IDLE_WORD, admit_whole_frames
from ..hdl.top import Appliance
from .boards import Board
from .ecpix5 import check_appliance_kwargs
from .management import ManagementPort

__all__ = ["Kcu105Core", "XgmiiFrameMerge", "write_project", "PROJECT_FILES", "IP_MODULES",
           "KCU105_MAC_ADDRESS", "TOP_MODULE", "CORE_MODULE"]

TOP_MODULE = "kcu105_top"
CORE_MODULE = "tickwire_core"
#: The vendor IP instances the project creates (module name -> role).
IP_MODULES = {"pcs_pma_sfp0": "SFP0, shared logic in the core", "pcs_pma_sfp1": "SFP1, shared logic outside"}
PROJECT_FILES = ("tickwire_core.v", "kcu105_top.v", "kcu105.xdc", "create_project.tcl", "ip_stubs.v")
KCU105_MAC_ADDRESS = 0x02_74_77_69_72_02
_ENTRY = 64 + 8 + 1


class XgmiiFrameMerge(wiring.Component):
    """Two XGMII transmitters onto one XGMII port in the same clock, a whole frame at a time.

    Each source's frames are written into its FIFO from /S/ to /T/; the output takes a frame from
    the sources in turn and sends it word for word (the FIFO is written as fast as it is read, so a
    started frame never runs dry), then two idle words. A frame that starts while its FIFO lacks
    room for ``max_frame`` is dropped and counted.

    Members
    -------
    a, b : In(XgmiiSignature)
    o : Out(XgmiiSignature)
    a_dropped, b_dropped : Out(32)

    Latency
    -------
    2 cycles from a source's start word to the output's, when the output is idle.
    """

    def __init__(self, *, depth: int = 512, max_frame: int = 1536):
        if depth & (depth - 1) or depth < 2 * ((max_frame + 7) // 8 + 2):
            raise ValueError(f"depth must be a power of two holding two max frames, not {depth!r}")
        self.depth = depth
        self.max_frame = max_frame
        super().__init__({"a": In(XgmiiSignature()), "b": In(XgmiiSignature()),
                          "o": Out(XgmiiSignature()), "a_dropped": Out(32), "b_dropped": Out(32)})

    def elaborate(self, platform):
        m = Module()
        max_words = (self.max_frame + 7) // 8 + 2
        queues = []
        for name in ("a", "b"):
            port = getattr(self, name)
            q = m.submodules[f"{name}_fifo"] = fifo.SyncFIFOBuffered(width=_ENTRY, depth=self.depth)
            queues.append(q)
            m.d.comb += getattr(self, f"{name}_dropped").eq(
                admit_whole_frames(m, name, port, q, q.level, self.depth - max_words))

        out_d = Signal(64, init=IDLE_WORD)
        out_c = Signal(8, init=0xFF)
        m.d.comb += [self.o.data.eq(out_d), self.o.ctrl.eq(out_c)]
        sel = Signal()
        turn = Signal()
        gap = Signal(2)
        head = Signal(_ENTRY)
        head_rdy = Signal()
        with m.If(sel):
            m.d.comb += [head.eq(queues[1].r_data), head_rdy.eq(queues[1].r_rdy)]
        with m.Else():
            m.d.comb += [head.eq(queues[0].r_data), head_rdy.eq(queues[0].r_rdy)]
        with m.FSM():
            with m.State("IDLE"):
                # Sends idles for the gap, then picks the next source with a frame.
                m.d.sync += [out_d.eq(IDLE_WORD), out_c.eq(0xFF)]
                with m.If(gap != 0):
                    m.d.sync += gap.eq(gap - 1)
                with m.Elif(queues[0].r_rdy & (~turn | ~queues[1].r_rdy)):
                    m.d.sync += [sel.eq(0), turn.eq(1)]
                    m.next = "FRAME"
                with m.Elif(queues[1].r_rdy):
                    m.d.sync += [sel.eq(1), turn.eq(0)]
                    m.next = "FRAME"
            with m.State("FRAME"):
                # Sends the chosen frame a word a cycle up to its /T/ word.
                with m.If(head_rdy):
                    with m.If(sel):
                        m.d.comb += queues[1].r_en.eq(1)
                    with m.Else():
                        m.d.comb += queues[0].r_en.eq(1)
                    m.d.sync += [out_d.eq(head[:64]), out_c.eq(head[64:72])]
                    with m.If(head[72]):
                        m.d.sync += gap.eq(2)
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += [out_d.eq(int.from_bytes(bytes([0xFE, 0xFD] + [0x07] * 6), "little")),
                                 out_c.eq(0xFF), gap.eq(2)]
                    m.next = "IDLE"
        return m


class Kcu105Core(wiring.Component):
    """Everything inside the FPGA fabric on the KCU105, on the PCS/PMA's 156.25 MHz ``coreclk``.

    Members
    -------
    feed_rx : In(XgmiiSignature)      -- SFP0 receive
    order_rx : In(XgmiiSignature)     -- SFP1 receive (management requests)
    order_tx : Out(XgmiiSignature)    -- SFP1 transmit (orders and management replies)
    """

    def __init__(self, *, appliance_kwargs, mac_address: int = KCU105_MAC_ADDRESS):
        self.appliance_kwargs = check_appliance_kwargs(appliance_kwargs)
        self.mac_address = mac_address
        super().__init__({"feed_rx": In(XgmiiSignature()), "order_rx": In(XgmiiSignature()),
                          "order_tx": Out(XgmiiSignature())})

    def elaborate(self, platform):
        m = Module()
        appliance = m.submodules.appliance = Appliance(**self.appliance_kwargs)
        wiring.connect(m, wiring.flipped(self.feed_rx), appliance.feed_rx)
        m.d.comb += [appliance.feed_rx_b.data.eq(IDLE_WORD), appliance.feed_rx_b.ctrl.eq(0xFF),
                     appliance.i_inject.valid.eq(0)]
        management_rx = m.submodules.management_rx = MacRx(buffer_words=512)
        management_tx = m.submodules.management_tx = MacTx()
        port = m.submodules.management = ManagementPort(mac_address=self.mac_address)
        wiring.connect(m, wiring.flipped(self.order_rx), management_rx.xgmii)
        wiring.connect(m, management_rx.o_stream, port.i_stream)
        wiring.connect(m, port.o_stream, management_tx.i_stream)
        wiring.connect(m, port.csr, appliance.csr)
        merge = m.submodules.merge = XgmiiFrameMerge()
        wiring.connect(m, appliance.order_tx, merge.a)
        wiring.connect(m, management_tx.xgmii, merge.b)
        wiring.connect(m, merge.o, wiring.flipped(self.order_tx))
        return m


def _core_verilog(board: Board) -> str:
    from amaranth.back import verilog
    core = Kcu105Core(appliance_kwargs=board.appliance_kwargs)
    from amaranth.hdl._ir import PortDirection
    ports = {}
    for path, member, value in core.signature.flatten(core):
        ports["__".join(map(str, path))] = (value, PortDirection.Input if member.flow == In
                                            else PortDirection.Output)
    return verilog.convert(core, name=CORE_MODULE, emit_src=False, ports=ports)


_TEMPLATES = Path(__file__).resolve().parent / "vivado_kcu105"


def write_project(out_dir: Path, board: Board) -> list[Path]:
    """Write the Vivado project's files into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    core = out_dir / "tickwire_core.v"
    core.write_text(_core_verilog(board))
    written.append(core)
    for name in PROJECT_FILES[1:]:
        target = out_dir / name
        target.write_text((_TEMPLATES / name).read_text())
        written.append(target)
    return written
