"""cocotb testbench of the whole appliance: XGMII feed in (line A, and line B for A/B
arbitration), XGMII orders out, checked byte for byte against
:class:`tickwire.sim.model.PipelineModel`, counters read over the register bus."""

from __future__ import annotations

import json
import logging
import os
import statistics
from pathlib import Path

import cocotb
from cocotb.triggers import RisingEdge
from cocotbext.eth import XgmiiFrame, XgmiiSink, XgmiiSource

from ..protocols import itch, moldudp64
from ..protocols.net import ipv4_checksum
from .defaults import DEFAULT_FEED, DEFAULT_INDEXED, DEFAULT_REGISTERS, FEED_GROUP_B
from .feed import build_feed, feed_frames, frames as udp_frames, generate_messages
from .model import COUNTER_NAMES, PipelineModel, with_fcs
from .pcap import read_pcap, write_pcap
from .tb import CLOCK_NS, CsrMaster, StreamSink, StreamSource, XgmiiStartProbe, reset, start_clock
from ..hdl.events import event_record_layout
from ..hdl.order_entry import HOST_ORDER_FIELDS
from ..protocols.events import EventFlag, EventType, unpack as unpack_event
from ..protocols.risk import RejectReason
from ..protocols import ouch as ouch_protocol, soupbintcp
from ..hdl.packet import packet_layout

logger = logging.getLogger("tb_top")


class TB:
    """The appliance with XGMII VIP on the feed ports and the order port, the register bus and
    start-of-frame probes. Feed line B idles (and the injection port is quiet) unless a test
    uses them."""

    def __init__(self, dut, registers=None):
        registers = dict(registers or {})
        indexed = {n: registers.pop(n) for n in list(registers) if n.endswith("]")}
        self.dut = dut
        start_clock(dut)
        for line in ("feed_rx", "feed_rx_b", "order_rx"):
            getattr(dut, f"{line}__data").value = int.from_bytes(b"\x07" * 8, "little")
            getattr(dut, f"{line}__ctrl").value = 0xFF
        for port in ("i_inject", "i_host_data", "i_host_frame"):
            getattr(dut, f"{port}__valid").value = 0
            getattr(dut, f"{port}__payload").value = 0
        self.source = XgmiiSource(dut.feed_rx__data, dut.feed_rx__ctrl, dut.clk, dut.rst)
        self.sink = XgmiiSink(dut.order_tx__data, dut.order_tx__ctrl, dut.clk, dut.rst)
        self.csr = CsrMaster(dut)
        self.rx_probe = XgmiiStartProbe(dut.clk, dut.feed_rx__data, dut.feed_rx__ctrl)
        self.tx_probe = XgmiiStartProbe(dut.clk, dut.order_tx__data, dut.order_tx__ctrl)
        # The host's event channel, always read (as the event ring's DMA would).
        self.events = StreamSink(dut, "o_events__", event_record_layout)
        self.registers = {**DEFAULT_REGISTERS, **registers}
        self.indexed = {**DEFAULT_INDEXED, **indexed}
        self.model = PipelineModel(self.registers, indexed=self.indexed)

    async def start(self):
        await reset(self.dut)
        magic = await self.csr.read("id.magic")
        assert magic == self.csr.map.magic, f"id.magic reads {magic:#x}"
        assert await self.csr.read("id.regmap_version") == self.csr.map.regmap_version
        # Registers hold their reset values after reset: write only the ones that differ (a write
        # to a strobe register such as order_entry.host_submit is an action, not a setting).
        await self.csr.write_all({n: v for n, v in self.registers.items() if v != self.csr.map[n].reset})
        await self.csr.write_all(self.indexed)
        # Leave the selects as the plain registers say (the indexed writes moved them).
        await self.csr.write_all({n: self.registers[n] for n in ("risk.limit_slot", "risk.limit_session")})

    async def send(self, frames_with_fcs, *, errors=()):
        """Send frames (FCS included) back to back; the model predicts their orders."""
        expected = []
        owners = []
        for index, raw in enumerate(frames_with_fcs):
            out = self.model.feed(raw, error=index in errors)
            expected += out
            owners += [index] * len(out)
            frame = XgmiiFrame.from_raw_payload(raw)
            if index in errors:
                frame.ctrl = [0] * len(frame.data)
                frame.data[len(frame.data) // 2] = 0xFE
                frame.ctrl[len(frame.data) // 2] = 1
            await self.source.send(frame)
        return expected, owners

    async def drain(self, expected_count, timeout_cycles=20000):
        received = []
        for _ in range(timeout_cycles):
            while not self.sink.empty():
                received.append(self.sink.recv_nowait())
            if len(received) >= expected_count and self.source.empty() and self.source.idle():
                # Let anything unexpected still in flight come out.
                for _ in range(400):
                    await RisingEdge(self.dut.clk)
                while not self.sink.empty():
                    received.append(self.sink.recv_nowait())
                return received
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"timed out: {len(received)} of {expected_count} order frames")

    async def check(self, expected, received):
        assert len(received) == len(expected), f"{len(received)} order frames, model predicts {len(expected)}"
        for k, (frame, want) in enumerate(zip(received, expected)):
            assert frame.check_fcs(), f"order frame {k}: bad FCS"
            got = bytes(frame.get_payload())
            assert got == want, f"order frame {k} differs:\n got  {got.hex()}\n want {want.hex()}"
        counters = await self.csr.read_counters(COUNTER_NAMES)
        model = self.model.counters
        diffs = {n: (counters[n], model[n]) for n in COUNTER_NAMES if counters[n] != model[n]}
        assert not diffs, f"counters (card, model) differ: {diffs}"
        return counters

    def latencies(self, owners, base_rx=0, base_tx=0):
        rx = self.rx_probe.starts[base_rx:]
        tx = self.tx_probe.starts[base_tx:]
        return [tx[k] - rx[owners[k]] for k in range(len(owners))]


def _with_fcs_all(frames):
    return [with_fcs(f) for f in frames]


def _feed_frames(messages: list[bytes], *, first_sequence=1, session=None, max_messages=None):
    over = {"first_sequence": first_sequence, "session": session or DEFAULT_FEED["session"],
            "max_messages": max_messages or DEFAULT_FEED["max_messages"]}
    return feed_frames(messages, over)


#: The default feed's AAPL locate (tracked in book slot 0 by name: DEFAULT_REGISTERS).
AAPL_LOCATE = DEFAULT_FEED["symbols"]["AAPL"]


def _trigger_add(order_reference_number: int, price: int = 189_9000, shares: int = 100,
                 locate: int | None = None) -> list[bytes]:
    """Messages that make the default rule 0 fire once: a Stock Directory message for AAPL (so
    the directory tracks it; repeats are harmless), a sell added at ``price`` (the best ask comes
    down to the limit or below), and its delete (the rule stops holding, ready to fire again)."""
    locate = AAPL_LOCATE if locate is None else locate
    ts = 34_200_000_000_000 + order_reference_number
    return [itch.pack("R", stock_locate=locate, timestamp=ts, stock="AAPL", market_category="Q"),
            itch.pack("A", stock_locate=locate, timestamp=ts, order_reference_number=order_reference_number,
                      buy_sell_indicator="S", shares=shares, stock="AAPL", price=price),
            itch.pack("D", stock_locate=locate, timestamp=ts + 1, order_reference_number=order_reference_number)]


@cocotb.test()
async def default_feed(dut):
    """The embedded default feed: every order frame and every counter as the model says."""
    tb = TB(dut)
    await tb.start()
    feed = build_feed()
    expected, owners = await tb.send(_with_fcs_all(f for _, f in feed))
    received = await tb.drain(len(expected))
    counters = await tb.check(expected, received)
    assert len(expected) > 0 and counters["risk.rejected_notional"] > 0 and counters["book.bbo_updates"] > 50
    lat = tb.latencies(owners)
    logger.info("tick-to-trade cycles: min %d median %d max %d", min(lat), statistics.median(lat), max(lat))


@cocotb.test()
async def bad_input_never_wedges(dut):
    """Each kind of bad input is dropped and counted, and the good frame after it still trades."""
    tb = TB(dut)
    await tb.start()
    cfg = DEFAULT_FEED
    seq = [1]
    ref = [1000]

    def good(extra=()):
        msgs = list(extra) + _trigger_add(ref[0])
        ref[0] += 1
        out = _feed_frames(msgs, first_sequence=seq[0])
        seq[0] += len(msgs)
        return out[0]

    def raw_udp(payload, **over):
        args = dict(src_mac=cfg["src_mac"], src_ip=cfg["src_ip"], src_port=cfg["src_port"],
                    dst_ip=cfg["dst_ip"], dst_port=cfg["dst_port"])
        args.update(over)
        return udp_frames([payload], **args)[0]

    frames = []
    errors = set()
    frames.append(with_fcs(good()))
    # bad FCS
    bad = bytearray(with_fcs(good()))
    bad[-1] ^= 0xFF
    frames.append(bytes(bad))
    seq[0] -= 3  # that datagram never arrived: the next good one takes its sequence numbers
    frames.append(with_fcs(good()))
    # truncated on the wire (cut short, FCS of the whole frame missing)
    frames.append(with_fcs(good())[:50])
    frames.append(with_fcs(good()))
    # /E/ inside a frame
    errors.add(len(frames))
    frames.append(with_fcs(good()))
    frames.append(with_fcs(good()))
    # IP total length longer than the frame (FCS good): dropped on length
    f = bytearray(good())
    f[16:18] = (int.from_bytes(f[16:18], "big") + 40).to_bytes(2, "big")
    f[24:26] = b"\0\0"
    f[24:26] = ipv4_checksum(bytes(f[14:34])).to_bytes(2, "big")  # a consistent header, a short frame
    frames.append(with_fcs(bytes(f)))
    frames.append(with_fcs(good()))
    # wrong UDP port
    payload = moldudp64.pack(cfg["session"], seq[0], _trigger_add(ref[0]))
    frames.append(with_fcs(raw_udp(payload, dst_port=cfg["dst_port"] + 1)))
    frames.append(with_fcs(good()))
    # unknown ITCH type and a known type with the wrong length, inside a good datagram
    frames.append(with_fcs(good([b"z" + bytes(20), itch.pack("D", order_reference_number=7) + b"\0"])))
    # ITCH block length running past the datagram
    msgs = _trigger_add(ref[0]) + _trigger_add(ref[0] + 1)
    ref[0] += 2
    payload = bytearray(moldudp64.pack(cfg["session"], seq[0], msgs))
    seq[0] += len(msgs)
    payload = payload[:-10]
    frames.append(with_fcs(raw_udp(bytes(payload))))
    frames.append(with_fcs(good()))
    # block length below the shortest ITCH message (malformed)
    payload = bytearray(moldudp64.pack(cfg["session"], seq[0], _trigger_add(ref[0])))
    payload[20:22] = (3).to_bytes(2, "big")
    frames.append(with_fcs(raw_udp(bytes(payload))))
    seq[0] += 3
    frames.append(with_fcs(good()))
    # a MoldUDP64 gap, then a duplicate (old sequence numbers), then a heartbeat past a gap
    seq[0] += 5
    frames.append(with_fcs(good()))
    old = seq[0] - 3
    frames.append(with_fcs(_feed_frames(_trigger_add(9999), first_sequence=old, max_messages=3)[0]))
    frames.append(with_fcs(raw_udp(moldudp64.pack(cfg["session"], seq[0] + 4, []))))
    seq[0] += 4
    frames.append(with_fcs(good()))
    # datagram shorter than its header
    frames.append(with_fcs(raw_udp(b"TICKWIRE01\0\0")))
    # a new session
    frames.append(with_fcs(_feed_frames(_trigger_add(ref[0]), session="TICKWIRE02", first_sequence=77,
                                        max_messages=3)[0]))
    frames.append(with_fcs(_feed_frames(_trigger_add(ref[0] + 1), session="TICKWIRE02", first_sequence=80,
                                        max_messages=3)[0]))

    expected, owners = await tb.send(frames, errors=errors)
    received = await tb.drain(len(expected))
    counters = await tb.check(expected, received)
    for name in ("mac_rx.bad_fcs", "net_rx.drop_length", "net_rx.drop_udp_port", "itch.unknown_type",
                 "itch.bad_length", "moldudp64.truncated", "moldudp64.malformed", "moldudp64.gaps",
                 "moldudp64.duplicates", "moldudp64.session_changes", "moldudp64.heartbeats"):
        assert counters[name] > 0, f"{name} never counted: the test did not exercise it"


@cocotb.test()
async def kill_switch(dut):
    """With the kill switch set nothing leaves; cleared, orders flow again."""
    tb = TB(dut)
    await tb.start()
    await tb.csr.write("risk.kill", 1)
    tb.model.registers.write("risk.kill", 1)
    msgs = [m for n in range(1, 6) for m in _trigger_add(n)]
    expected, _ = await tb.send(_with_fcs_all(_feed_frames(msgs, max_messages=2)))
    assert expected == []
    for _ in range(300):
        await RisingEdge(dut.clk)
    assert tb.sink.empty()
    await tb.csr.write("risk.kill", 0)
    tb.model.registers.write("risk.kill", 0)
    msgs = [m for n in range(6, 9) for m in _trigger_add(n)]
    more, _ = await tb.send(_with_fcs_all(_feed_frames(msgs, first_sequence=16)))
    received = await tb.drain(len(more))
    counters = await tb.check(more, received)
    assert counters["risk.rejected_kill"] == 5 and len(more) == 3


def _host_order(**fields):
    base = {"action": ord("O"), "session": 0, "slot": 0, "stock_locate": AAPL_LOCATE,
            "stock": int.from_bytes(b"AAPL    ", "little"), "side": ord("B"), "quantity": 100,
            "price": 189_9000, "time_in_force": ord("0"), "display": ord("Y"), "capacity": ord("P"),
            "intermarket_sweep_eligibility": ord("N"), "cross_type": ord("N")}
    return {name: {**base, **fields}.get(name, 0) for name in HOST_ORDER_FIELDS}


@cocotb.test()
async def host_orders(dut):
    """Orders the host submits through the order-entry registers take the same risk and OUCH path
    as the trigger's; the host learns each verdict from the event records."""
    tb = TB(dut)
    await tb.start()
    orders = [
        _host_order(),                                            # accepted
        _host_order(slot=1),                                      # MSFT's slot is not enabled
        _host_order(quantity=0),                                  # zero quantity
        _host_order(price=187_0000),                              # 2.50 below the reference
        _host_order(appendage_mask=0b101, min_qty=10, price_type=ord("L"), quantity=50),    # with appendages
        _host_order(action=ord("X"), user_ref_num=1, quantity=0),  # cancel the first
        _host_order(action=ord("O"), session=9),                  # no such session
    ]
    expected = []
    for order in orders:
        for name in HOST_ORDER_FIELDS:
            await tb.csr.write(f"order_entry.host_{name}", order[name])
        await tb.csr.write("order_entry.host_submit", 1)
        expected += tb.model.submit(order)
    received = await tb.drain(len(expected))
    counters = await tb.check(expected, received)
    assert counters["order_entry.host_submitted"] == len(orders) and len(received) == 3
    events = [unpack_event(b["data"].to_bytes(32, "little")) for b in tb.events.beats]
    got = [(e.type, e.fields.get("action", e.fields.get("reason")), e.flags) for e in events]
    want = [(EventType.ORDER_SENT, order["action"], EventFlag.HOST) if reason == 0
            else (EventType.RISK_REJECT, reason, EventFlag.HOST) for order, reason in tb.model.verdicts]
    assert got == want, (got, want)
    assert {r for _, r in tb.model.rejects} == {RejectReason.SYMBOL_DISABLED, RejectReason.ZERO_QUANTITY,
                                               RejectReason.PRICE_COLLAR, RejectReason.UNKNOWN_SESSION}
    assert [e.sequence for e in events] == list(range(len(events)))


def _inbound_beats(data: bytes):
    """The exchange's byte stream as ``i_inbound`` beats: 8 bytes a beat (the last one shorter)."""
    for k in range(0, len(data), 8):
        chunk = data[k:k + 8]
        yield {"data": int.from_bytes(chunk, "little"), "nbytes": len(chunk), "last": int(k + 8 >= len(data)),
               "length": len(data)}


@cocotb.test()
async def exchange_answers(dut):
    """The exchange's answers on i_inbound (until the TCP engine receives them): an accepted host
    order is acknowledged and filled in two parts; risk's exposure follows (position, open
    quantity, open orders) and the host sees EXCHANGE_ACK and FILL event records."""
    tb = TB(dut)
    inbound = StreamSource(dut, "i_inbound__", packet_layout())
    await tb.start()
    order = _host_order(quantity=100, price=189_9000)
    for name in HOST_ORDER_FIELDS:
        await tb.csr.write(f"order_entry.host_{name}", order[name])
    await tb.csr.write("order_entry.host_submit", 1)
    expected = tb.model.submit(order)
    received = await tb.drain(len(expected))
    await tb.check(expected, received)
    [(accepted, reason)] = tb.model.verdicts
    assert reason == 0
    urn = accepted["user_ref_num"]
    common = {"timestamp": 34_200_000_000_000, "user_ref_num": urn}
    messages = [
        ouch_protocol.pack_message(ouch_protocol.OUTBOUND, "A", **common, side="B", quantity=100, symbol="AAPL",
                                   price=189_9000, time_in_force="0", display="Y", order_reference_number=77,
                                   capacity="P", intermarket_sweep_eligibility="N", cross_type="N",
                                   order_state="L", cl_ord_id=f"TW01{urn:08X}  "),
        ouch_protocol.pack_message(ouch_protocol.OUTBOUND, "E", **common, quantity=30, price=189_9000,
                                   liquidity_flag="A", match_number=5),
        ouch_protocol.pack_message(ouch_protocol.OUTBOUND, "E", **common, quantity=70, price=189_8900,
                                   liquidity_flag="R", match_number=6),
    ]
    stream = b"".join(soupbintcp.frame("S", m) for m in messages) + soupbintcp.frame("H")
    await inbound.send(_inbound_beats(stream))
    for _ in range(200):
        await RisingEdge(dut.clk)
    await tb.csr.write("risk.limit_slot", 0)
    position = await tb.csr.read("risk.position")
    assert (position, await tb.csr.read("risk.open_buy_quantity"), await tb.csr.read("risk.open_orders")) == (100, 0, 0)
    events = [unpack_event(b["data"].to_bytes(32, "little")) for b in tb.events.beats]
    kinds = [(e.type, e.fields.get("user_ref_num"), e.fields.get("quantity")) for e in events]
    assert kinds == [(EventType.ORDER_SENT, urn, 100), (EventType.EXCHANGE_ACK, urn, 100),
                     (EventType.FILL, urn, 30), (EventType.FILL, urn, 70)], kinds
    assert events[-1]["liquidity_flag"] == ord("R") and events[-1]["price"] == 189_8900


@cocotb.test()
async def random_feeds(dut):
    """Feeds from other seeds, with other datagram sizes, against the model."""
    seed = int(os.environ.get("TICKWIRE_RANDOM_SEED", "7"))
    tb = TB(dut, {"risk.max_order_notional[0]": 100 * 191_0000, "risk.max_open_orders[0]": 1000,
                  "risk.max_long_position[0]": 100_000})
    await tb.start()
    messages = generate_messages(400, seed=seed, symbols=DEFAULT_FEED["symbols"])
    frames = _feed_frames(messages, max_messages=1 + seed % 20)
    expected, owners = await tb.send(_with_fcs_all(frames))
    received = await tb.drain(len(expected))
    await tb.check(expected, received)


@cocotb.test()
async def ab_lines(dut):
    """The default feed on both feed lines in step (line B to its own group), every datagram
    corrupted on at most one of them: the same orders as from one clean line, each once, and
    every counter as the model says (line B's included); no gap."""
    import random
    rng = random.Random(int(os.environ.get("TICKWIRE_RANDOM_SEED", "5")))
    tb = TB(dut)
    tb.source_b = XgmiiSource(dut.feed_rx_b__data, dut.feed_rx_b__ctrl, dut.clk, dut.rst)
    await tb.start()
    feed_a = [f for _, f in build_feed()]
    feed_b = [f for _, f in build_feed({"dst_ip": FEED_GROUP_B})]
    # Paced so each datagram's two copies are through the sequencer before the next pair lands.
    for source in (tb.source, tb.source_b):
        source.ifg = 2 * max(len(f) for f in feed_a)
    expected = []
    for a, b in zip(feed_a, feed_b):
        raw = {"a": bytearray(with_fcs(a)), "b": bytearray(with_fcs(b))}
        if rng.random() < 0.4:
            raw[rng.choice("ab")][-1] ^= 0xFF
        for line, source in (("a", tb.source), ("b", tb.source_b)):
            expected += tb.model.feed(bytes(raw[line]), line=line)
            await source.send(XgmiiFrame.from_raw_payload(bytes(raw[line])))
    received = await tb.drain(len(expected), timeout_cycles=200 * len(feed_a))
    counters = await tb.check(expected, received)
    assert expected == PipelineModel(tb.registers).feed_all(with_fcs(f) for f in feed_a)
    assert counters["moldudp64.gaps"] == 0 and counters["moldudp64.duplicates"] > 0
    assert counters["mac_rx.bad_fcs"] > 0 and counters["mac_rx_b.bad_fcs"] > 0


@cocotb.test()
async def demo(dut):
    """The demo run: a feed (default or a pcap), captures of both ports and a summary JSON."""
    out_dir = Path(os.environ.get("TICKWIRE_DEMO_OUT", "demo"))
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(os.environ.get("TICKWIRE_DEMO_REGISTERS", "{}"))
    tb = TB(dut, overrides)
    await tb.start()
    pcap = os.environ.get("TICKWIRE_DEMO_PCAP")
    if pcap:
        feed_frames = [f for _, f in read_pcap(Path(pcap))]
    else:
        cfg = {}
        if os.environ.get("TICKWIRE_DEMO_MESSAGES"):
            cfg["count"] = int(os.environ["TICKWIRE_DEMO_MESSAGES"])
        if os.environ.get("TICKWIRE_DEMO_SEED"):
            cfg["seed"] = int(os.environ["TICKWIRE_DEMO_SEED"])
        if os.environ.get("TICKWIRE_DEMO_MAX_MESSAGES"):
            cfg["max_messages"] = int(os.environ["TICKWIRE_DEMO_MAX_MESSAGES"])
        feed_frames = [f for _, f in build_feed(cfg)]
    expected, owners = await tb.send(_with_fcs_all(feed_frames))
    received = await tb.drain(len(expected), timeout_cycles=20000 + 50 * len(feed_frames))
    counters = await tb.check(expected, received)
    lat = tb.latencies(owners)
    write_pcap(out_dir / "feed.pcap", [(int(c * CLOCK_NS), f) for c, f in zip(tb.rx_probe.starts, feed_frames)])
    write_pcap(out_dir / "orders.pcap",
               [(int(c * CLOCK_NS), bytes(f.get_payload())) for c, f in zip(tb.tx_probe.starts, received)])
    summary = {
        "frames_in": len(feed_frames),
        "counters": counters,
        "orders_out": len(received),
        "latency_cycles": lat,
        "clock_ns": CLOCK_NS,
        "feed_cycles": tb.rx_probe.starts[-1] - tb.rx_probe.starts[0] + (len(feed_frames[-1]) + 4 + 7) // 8 + 1,
        "feed_bytes": sum(len(f) + 4 for f in feed_frames),
        "feed_pcap": str(out_dir / "feed.pcap"),
        "orders_pcap": str(out_dir / "orders.pcap"),
        "matches_model": True,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
