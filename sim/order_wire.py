"""Order intent to the wire with the TCP transport: risk -> order queue -> OUCH -> TCP engine ->
MAC, in the Amaranth simulator, measured in core cycles from the order taken by risk to the /S/
of its TCP segment on XGMII (``make bench``, tests/hdl/test_order_path.py)."""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ..hdl.mac import MacTx, XgmiiSignature
from ..hdl.order import order_layout
from ..hdl.risk import reject_layout
from ..hdl.tcp import TcpEngine
from ..hdl.top import OrderPath

__all__ = ["OrderToWire", "SESSION_REGISTERS", "measure_order_to_wire"]

#: The TCP session the measurement sends on (an established connection, as the host leaves it).
SESSION_REGISTERS = {"peer_mac": 0x020000000001, "peer_ip": 0x0A4D0001, "local_port": 40000,
                     "peer_port": 15000, "mss": 1460, "snd_nxt": 1, "peer_window": 65535, "established": 1}
CARD_REGISTERS = {"local_mac": 0x020000000002, "local_ip": 0x0A4D0002, "rcv_window": 0xFFFF}


class OrderToWire(wiring.Component):
    """OrderPath -> TcpEngine -> MacTx: an order action to the first byte of its TCP segment.

    Members
    -------
    i_stream : In(stream.Signature(order_layout))
    o_reject : Out(stream.Signature(reject_layout, always_ready=True))
    xgmii : Out(XgmiiSignature())
    """

    def __init__(self, *, slots: int = 2, sessions: int = 1):
        self.path = OrderPath(slots=slots, sessions=sessions, order_queue_depth=4)
        self.tcp = TcpEngine(sessions=sessions, buffer_words=64, descriptors=4)
        self.mac = MacTx()
        super().__init__({"i_stream": In(stream.Signature(order_layout)),
                          "o_reject": Out(stream.Signature(reject_layout, always_ready=True)),
                          "xgmii": Out(XgmiiSignature())})

    def elaborate(self, platform):
        m = Module()
        m.submodules.path, m.submodules.tcp, m.submodules.mac = self.path, self.tcp, self.mac
        connect(m, wiring.flipped(self.i_stream), self.path.i_stream)
        connect(m, self.path.o_reject, wiring.flipped(self.o_reject))
        connect(m, self.path.o_stream, self.tcp.i_data)
        connect(m, self.tcp.o_tx, self.mac.i_stream)
        connect(m, self.mac.xgmii, wiring.flipped(self.xgmii))
        return m


async def open_session(ctx, tcp_regs) -> None:
    """Load the engine's registers for an established session 0 (as the host does)."""
    for name, value in CARD_REGISTERS.items():
        ctx.set(getattr(tcp_regs, name), value)
    for name, value in SESSION_REGISTERS.items():
        ctx.set(getattr(tcp_regs, name), value)
        ctx.set(getattr(tcp_regs, f"{name}_stb"), 1)
        await ctx.tick()
        ctx.set(getattr(tcp_regs, f"{name}_stb"), 0)


def is_start(data: int, ctrl: int) -> bool:
    """An XGMII word holding /S/."""
    return any(ctrl >> k & 1 and (data >> 8 * k) & 0xFF == 0xFB for k in range(8))


#: Risk limits that let the measured order through (slot 0, session 0).
SLOT_LIMITS = {"symbol_enabled": 1, "max_order_quantity": 1000, "max_order_notional": 10**12,
               "reference_price": 100_0000, "price_collar": 10_0000, "max_long_position": 10**6,
               "max_short_position": 10**6, "max_open_orders": 1000}
SESSION_LIMITS = {"max_open_notional": 10**15, "throttle_burst": 1000, "throttle_interval": 1}


def measure_order_to_wire(order: dict[str, int] | None = None, *, idle: int = 120) -> dict[str, Any]:
    """Cycles from an order action taken by risk to the /S/ of its segment on XGMII (one order on
    an idle path with the peer's window open). ``order``: the order record (default: an Enter
    Order of 100 AAPL at 100.0000)."""
    from amaranth.sim import Simulator
    from .model import cl_ord_id, order_values
    if order is None:
        order = order_values(action=ord("O"), side=ord("B"), quantity=100, price=100_0000, slot=0, session=0,
                             user_ref_num=1, stock=int.from_bytes(b"AAPL    ", "little"),
                             time_in_force=ord("0"), display=ord("Y"), capacity=ord("A"),
                             intermarket_sweep_eligibility=ord("N"), cross_type=ord("N"),
                             cl_ord_id=cl_ord_id(int.from_bytes(b"TW01", "big"), 1))
    dut = OrderToWire()
    out: dict[str, Any] = {"taken": None, "start": None, "rejects": []}

    async def bench(ctx):
        risk = dut.path.risk.regs
        for limits, select in ((SLOT_LIMITS, "limit_slot"), (SESSION_LIMITS, "limit_session")):
            for name, value in limits.items():
                ctx.set(getattr(risk, select), 0)
                ctx.set(getattr(risk, name), value)
                ctx.set(getattr(risk, f"{name}_stb"), 1)
                await ctx.tick()
                ctx.set(getattr(risk, f"{name}_stb"), 0)
        await open_session(ctx, dut.tcp.regs)
        for _ in range(4):
            await ctx.tick()
        cycle, quiet = 0, 0
        while quiet < idle:
            ctx.set(dut.i_stream.valid, out["taken"] is None)
            ctx.set(dut.i_stream.payload, order_layout.const(order))
            await ctx.delay(1e-9)
            if out["taken"] is None and ctx.get(dut.i_stream.ready):
                out["taken"] = cycle
            if out["start"] is None and is_start(ctx.get(dut.xgmii.data), ctx.get(dut.xgmii.ctrl)):
                out["start"] = cycle
            if ctx.get(dut.o_reject.valid):
                out["rejects"].append(int(ctx.get(dut.o_reject.payload.reason)))
            await ctx.tick()
            cycle += 1
            quiet = quiet + 1 if out["taken"] is not None else 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if out["rejects"] or out["start"] is None:
        raise RuntimeError(f"the order did not reach the wire (rejects {out['rejects']})")
    return {"cycles": out["start"] - out["taken"],
            "how": "Amaranth simulator: OrderPath -> TcpEngine -> MacTx, one Enter Order (7 beats) on an "
                   "idle path, the peer's window open; from the cycle risk takes the order to the XGMII "
                   "word with /S/"}
