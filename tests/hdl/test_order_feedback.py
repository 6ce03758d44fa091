"""The chain inbound parser -> open orders -> risk (hdl/order_feedback.py) in the Amaranth
simulator: real OUCH 5.0 outbound messages packed with protocols/ouch.py in SoupBinTCP Sequenced
Data packets, cut into random beats among packets that change no exposure (heartbeats, debug,
System Event, Priority Update, Cancel Pending, malformed packets), give the updates of the parser
model + open-order model, leave risk exactly where the lifecycle says, and pass the host's
updates; latency measured."""

from __future__ import annotations

import gc
import random
import warnings

from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.hdl.csr import CsrBank
from tickwire.hdl.open_orders import anomaly_layout
from tickwire.hdl.order import order_layout
from tickwire.hdl.order_feedback import LATENCY, ORDER_FEEDBACK_STAGES, OrderFeedback
from tickwire.hdl.packet import packet_layout
from tickwire.hdl.risk import exposure_update_layout
from tickwire.protocols import ouch, soupbintcp
from tickwire.protocols.risk import ExposureUpdateKind
from tickwire.sim.open_orders_model import (Lifecycle, OpenOrdersModel, card_order, configured_risk,
                                            feedback_from_record, outbound_message, risk_exposure)
from tickwire.sim.ouch_model import ParserModel, aligned_beats, random_message, raw_packet, split_beats

_UPDATE = [name for name, _ in exposure_update_layout]
_ANOMALY = [name for name, _ in anomaly_layout]
SLOTS = 8
SESSION = 2          # the card's index of the order session under test
SESSIONS = 4


def sequenced(message: bytes) -> bytes:
    return soupbintcp.frame("S", message)


def quiet_packet(rng: random.Random) -> bytes:
    """A packet that changes no exposure: control packets, messages of other types, or a
    malformed exposure message (which the parser flags and the table must never see)."""
    what = rng.randrange(6)
    if what == 0:
        return soupbintcp.frame("H")
    if what == 1:
        return soupbintcp.frame("+", b"debug text")
    if what == 2:
        return sequenced(random_message(rng, rng.choice("STPIRQ")))
    if what == 3:
        t = rng.choice("AUCDEJBM")
        return raw_packet(b"S", random_message(rng, t)[:ouch.OUTBOUND[t].length - 1])  # truncated
    if what == 4:
        return raw_packet(b"S", b"Z" + bytes(20))                                       # unknown type
    return sequenced(random_message(rng, rng.choice("STP")))


def on_session(event, session):
    what, value = event
    return what, {**value, "session": session}


def simulate(events, *, seed=1, backpressure=0.0, host=(), aligned=False, extra=80):
    """``events``: ("accept", order) one cycle then 3 idle; ("packets", [bytes...]) the packets'
    bytes as beats (random sizes, or each packet from lane 0 of a fresh beat when ``aligned``),
    offered with random gaps until all are taken. ``host``: (cycle, update) offered on
    ``i_host_exposure``."""
    dut = OrderFeedback(session=SESSION, sessions=SESSIONS, entries=64, executions=64)
    rng = random.Random(seed)
    out = {"updates": [], "update_cycles": [], "records": 0, "anomalies": [], "taken": [], "regs": {}}
    host = sorted(host, key=lambda h: h[0])

    async def bench(ctx):
        cycle, hosted, idle = 0, 0, 0
        queue: list[tuple[str, object]] = []
        for what, value in events:
            if what == "accept":
                queue.append(("accept", value))
                queue.extend([("idle", None)] * 3)
            else:
                data = b"".join(value)
                beats = aligned_beats(value)[0] if aligned else split_beats(rng, data, empty=0.0)
                queue.extend(("beat", beat) for beat in beats)
        n = 0
        while True:
            ctx.set(dut.i_accepted.valid, 0)
            ctx.set(dut.i_inbound.valid, 0)
            item = queue[n] if n < len(queue) else None
            if item is not None:
                what, value = item
                if what == "accept":
                    ctx.set(dut.i_accepted.valid, 1)
                    ctx.set(dut.i_accepted.payload, order_layout.const(value))
                    n += 1
                elif what == "idle":
                    n += 1
                elif not (not aligned and rng.random() < 0.2):
                    ctx.set(dut.i_inbound.valid, 1)
                    ctx.set(dut.i_inbound.payload, packet_layout().const(value))
                    if ctx.get(dut.i_inbound.ready):
                        out["taken"].append(cycle)
                        n += 1
            offer = hosted < len(host) and host[hosted][0] <= cycle
            ctx.set(dut.i_host_exposure.valid, offer)
            if offer:
                ctx.set(dut.i_host_exposure.payload, exposure_update_layout.const(host[hosted][1]))
                hosted += 1
            ready = rng.random() >= backpressure
            ctx.set(dut.o_exposure.ready, ready)
            if ready and ctx.get(dut.o_exposure.valid):
                value = ctx.get(dut.o_exposure.payload)
                out["updates"].append({k: int(getattr(value, k)) for k in _UPDATE})
                out["update_cycles"].append(cycle)
            out["records"] += ctx.get(dut.o_record.valid)
            if ctx.get(dut.o_anomaly.valid):
                value = ctx.get(dut.o_anomaly.payload)
                out["anomalies"].append({k: int(getattr(value, k)) for k in _ANOMALY})
            await ctx.tick()
            cycle += 1
            idle = idle + 1 if n >= len(queue) and hosted >= len(host) else 0
            if idle > extra:
                break
            assert cycle < 20 * len(queue) + 2000, "the chain stopped taking bytes"
        for name, stage in dut.stages.items():
            for reg in stage.registers:
                out["regs"][f"{name}.{reg.name}"] = ctx.get(getattr(stage.regs, reg.name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def expected(events):
    """The parser model's records -> feedback -> the open-order model's updates."""
    parser = ParserModel(session=SESSION)
    table = OpenOrdersModel(sessions=SESSIONS, entries=64, executions=64)
    per_event = []
    for what, value in events:
        if what == "accept":
            table.accepted(value)
            per_event.append([])
            continue
        updates = []
        for packet in value:
            message = feedback_from_record(parser.packet(packet))
            if message is not None:
                updates += table.feedback(message)
        per_event.append(updates)
    return parser, table, per_event


def lifecycle_events(lifecycle: Lifecycle, rng: random.Random, quiet: float = 0.3):
    """The lifecycle on session ``SESSION`` with each message packed as OUCH bytes, quiet
    packets in between; also returns the table messages the packets must decode to."""
    events, messages = [], []
    for event in lifecycle.events:
        what, value = on_session(event, SESSION)
        if what == "accept":
            events.append((what, value))
            continue
        packets = [quiet_packet(rng) for _ in range(rng.random() < quiet)]
        packets.append(sequenced(outbound_message(value, rng)))
        messages.append(value)
        events.append(("packets", packets))
    return events, messages


def check(events, result, messages=None):
    parser, table, per_event = expected(events)
    assert result["updates"] == [u for updates in per_event for u in updates]
    assert result["anomalies"] == table.anomalies
    assert result["records"] == len(parser.records)
    for name, value in parser.counters.items():
        assert result["regs"][f"ouch_inbound.{name}"] == value, name
    for name, value in table.counters.items():
        if name != "host_updates":
            assert result["regs"][f"open_orders.{name}"] == value, name
    if messages is not None:   # the bytes said what the lifecycle meant
        decoded = [feedback_from_record(r) for r in parser.records]
        decoded = [d for d in decoded if d is not None]
        keys = ("kind", "session", "user_ref_num", "quantity", "match_number")
        assert [{k: d[k] for k in keys} for d in decoded] == [{k: m[k] for k in keys} for m in messages]
    return per_event


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 30)), min_size=1, max_size=40),
       st.integers(0, 1 << 16), st.sampled_from([0.0, 0.3]))
def test_lifecycles_through_the_parser(actions, seed, backpressure):
    """Random lifecycles as OUCH bytes: the chain's updates are the models', and risk fed them
    ends exactly at the lifecycle's exposure."""
    lifecycle = Lifecycle(sessions=1, slots=SLOTS)
    for action, param in actions:
        lifecycle.step(action, param)
    events, messages = lifecycle_events(lifecycle, random.Random(seed))
    result = simulate(events, seed=seed, backpressure=backpressure)
    per_event = check(events, result, messages)
    assert result["anomalies"] == []
    risk = configured_risk(SLOTS, SESSIONS)
    for (what, value), updates in zip(events, per_event):
        if what == "accept":
            assert risk.order(value)[0]
        for update in updates:
            assert risk.exposure(update)
    assert risk.counters["exposure_saturated"] == 0
    got = risk_exposure(risk, SLOTS, SESSIONS)
    want = lifecycle.expected_risk()
    assert got["slots"] == want["slots"]
    assert got["open_notional"][SESSION] == want["open_notional"][0]


def _outbound(t: str, **values) -> bytes:
    """An OUCH 5.0 outbound message with the given fields and every other one blank or 0."""
    m = ouch.OUTBOUND[t]
    full = {f.name: (b"" if f.type == "alpha" else 0) for f in m.fields
            if f.name not in ("message_type", "appendage_length")}
    full.update(values)
    return ouch.pack_message(ouch.OUTBOUND, t, **full)


def test_order_life_in_ouch_bytes():
    """Enter 100 buy at 10.0000; Order Accepted; 40 executed; AIQ Canceled 10; Order Modified
    to 30 (from 50); 30 executed; the first execution broken. The updates are written out."""
    slot = 6
    events = [
        ("accept", card_order("O", SESSION, 21, slot, "B", 100, 100_000)),
        ("packets", [soupbintcp.frame("H"),
                     sequenced(_outbound("A", user_ref_num=21, side="B", quantity=100, symbol="ACME",
                                         price=100_000, order_state="L", order_reference_number=9))]),
        ("packets", [sequenced(_outbound("E", user_ref_num=21, quantity=40, price=99_900,
                                         liquidity_flag="A", match_number=1234)),
                     sequenced(_outbound("S", event_code="S"))]),
        ("packets", [sequenced(_outbound("D", user_ref_num=21, decrement_shares=10, reason="U",
                                         execution_price=99_800))]),
        ("packets", [sequenced(_outbound("M", user_ref_num=21, side="B", quantity=30)),
                     sequenced(_outbound("T", user_ref_num=21, price=100_100))]),
        ("packets", [sequenced(_outbound("E", user_ref_num=21, quantity=30, price=100_000,
                                         match_number=1240))]),
        ("packets", [sequenced(_outbound("B", user_ref_num=21, match_number=1234, reason="E"))]),
    ]
    host = [(5, {"kind": ExposureUpdateKind.CANCEL, "session": 0, "slot": 1, "side": ord("S"),
                 "quantity": 7, "price": 5, "user_ref_num": 99})]
    result = simulate(events, host=host)

    def u(kind, quantity):
        return {"kind": int(kind), "session": SESSION, "slot": slot, "side": ord("B"),
                "quantity": quantity, "price": 100_000, "user_ref_num": 21}

    K = ExposureUpdateKind
    assert result["updates"] == [
        {**host[0][1], "kind": int(K.CANCEL)},
        u(K.EXECUTION, 40), u(K.CANCEL, 10), u(K.CANCEL, 20), u(K.EXECUTION, 30), u(K.DONE, 0),
        u(K.BROKEN, 40)]
    assert result["anomalies"] == []
    regs = result["regs"]
    assert regs["open_orders.open_entries"] == 0
    assert regs["open_orders.messages"] == 6       # A, E, D, M, E, B (not H, S, T)
    assert regs["open_orders.host_updates"] == 1
    assert regs["ouch_inbound.order_priority_update"] == 1
    check(events, {**result, "updates": result["updates"][1:]})   # the table's, against the models


def test_unknown_order_reported():
    """An execution for an order the card never sent changes nothing and is reported."""
    events = [("packets", [sequenced(_outbound("E", user_ref_num=77, quantity=5, price=1, match_number=3))])]
    result = simulate(events)
    assert result["updates"] == []
    assert [(a["reason"], a["user_ref_num"], a["session"]) for a in result["anomalies"]] == [(3, 77, SESSION)]
    assert result["regs"]["open_orders.misses"] == 1


def test_latency():
    """The beat holding an Order Executed's last byte taken in cycle t: the EXECUTION is valid
    in cycle t + LATENCY."""
    packet = sequenced(_outbound("E", user_ref_num=5, quantity=10, price=1, match_number=8))
    events = [("accept", card_order("O", SESSION, 5, 0, "S", 10, 300)), ("packets", [packet])]
    result = simulate(events, aligned=True)
    assert [u["kind"] for u in result["updates"]] == [ExposureUpdateKind.EXECUTION, ExposureUpdateKind.DONE]
    last_beat = result["taken"][-1]
    assert result["update_cycles"][0] - last_beat == LATENCY == 3


def test_register_windows_fit_a_bank():
    """The stages' registers each fit one window of a register bank (as the lead's top adds
    them, ``ouch_inbound`` and ``open_orders``), every register mapped once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)  # built only for their register tables
        feedback = OrderFeedback()
        bank = CsrBank([(name, stage.registers) for name, stage in feedback.stages.items()])
        names = set(bank.address_map())
        stages = {name: stage.registers for name, stage in feedback.stages.items()}
        del feedback, bank
        gc.collect()
    assert tuple(stages) == ORDER_FEEDBACK_STAGES
    assert names == {f"{stage}.{r.name}" for stage, registers in stages.items() for r in registers}
