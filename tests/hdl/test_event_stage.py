"""The event stage (hdl/events.py) in the Amaranth simulator: every record decodes with
tickwire.protocols.events into the event that went in (checked field by field against values
the bench chose), per source in order, sequence numbers 0, 1, 2, ..., drops counted."""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from tickwire.hdl.book import book_event_layout
from tickwire.hdl.events import EventStage
from tickwire.hdl.moldudp64 import gap_layout
from tickwire.hdl.ouch_inbound import record_layout as exchange_layout
from tickwire.hdl.order import OrderSource, order_layout
from tickwire.hdl.risk import reject_layout
from tickwire.protocols.events import EventFlag, EventType, unpack

LATENCY = 2


def _order(rng, host):
    return {name: 0 for name, _ in order_layout} | {
        "action": ord(rng.choice("OUXM")), "source": OrderSource.HOST if host else OrderSource.TRIGGER,
        "session": rng.randrange(4), "slot": rng.randrange(256), "stock_locate": rng.randrange(1 << 16),
        "side": ord(rng.choice("BS")), "quantity": rng.randrange(1 << 20), "price": rng.randrange(1 << 31),
        "user_ref_num": rng.getrandbits(32)}


def run(events, *, backpressure=0.0, depth=16, seed=1):
    """``events``: per cycle, a dict source -> payload dict. Returns records with their cycles,
    the dropped counter and the input cycles."""
    dut = EventStage(depth=depth)
    rng = random.Random(seed)
    records = []
    result = {}
    ports = {"accepted": (dut.i_accepted, order_layout), "reject": (dut.i_reject, reject_layout),
             "book": (dut.i_book, book_event_layout), "gap": (dut.i_gap, gap_layout),
             "exchange": (dut.i_exchange, exchange_layout)}

    async def bench(ctx):
        cycle = 0
        for step in events + [{}] * 200:
            for name, (port, layout) in ports.items():
                if name in step:
                    ctx.set(port.valid, 1)
                    ctx.set(port.payload, layout.const(step[name]))
                else:
                    ctx.set(port.valid, 0)
            ctx.set(dut.o_stream.ready, int(rng.random() >= backpressure))
            await ctx.delay(1e-9)
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.ready):
                records.append((cycle, ctx.get(dut.o_stream.payload.data)))
            await ctx.tick()
            cycle += 1
        result["dropped"] = ctx.get(dut.regs.dropped)
        result["events"] = ctx.get(dut.regs.events)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return records, result


def expected_fields(name, p):
    if name == "accepted":
        return EventType.ORDER_SENT, EventFlag.HOST if p["source"] else EventFlag.NONE, {
            "action": p["action"], "user_ref_num": p["user_ref_num"], "quantity": p["quantity"],
            "price": p["price"], "stock_locate": p["stock_locate"], "side": p["side"], "session": p["session"]}
    if name == "reject":
        o = p["order"]
        return EventType.RISK_REJECT, EventFlag.HOST if o["source"] else EventFlag.NONE, {
            "reason": p["reason"], "quantity": o["quantity"], "price": o["price"], "stock_locate": o["stock_locate"],
            "side": o["side"], "session": o["session"], "slot": o["slot"]}
    if name == "book":
        return EventType.BOOK_UNTRUSTED, EventFlag.NONE, {"reason": p["kind"], "slot": p["slot"],
                                                          "stock_locate": p["stock_locate"]}
    if name == "exchange":
        t = chr(p["message_type"])
        if t == "A":
            return EventType.EXCHANGE_ACK, EventFlag.NONE, {"user_ref_num": p["user_ref_num"], "quantity": p["quantity"],
                                                            "order_reference_number": p["order_reference_number"]}
        if t == "E":
            return EventType.FILL, EventFlag.NONE, {"liquidity_flag": p["liquidity_flag"], "user_ref_num": p["user_ref_num"],
                                                    "quantity": p["quantity"], "price": p["price"], "session": p["session"]}
        return EventType.CANCEL, EventFlag.NONE, {"reason": p["reason"], "user_ref_num": p["user_ref_num"],
                                                  "quantity": p["quantity"], "session": p["session"]}
    return EventType.GAP, EventFlag.NONE, {"sequence_number": p["sequence_number"],
                                           "message_count": p["message_count"]}


def random_events(rng, cycles, rate):
    out = []
    for _ in range(cycles):
        step = {}
        if rng.random() < rate:
            step["accepted"] = _order(rng, rng.random() < 0.5)
        if rng.random() < rate:
            step["reject"] = {"reason": rng.randrange(1, 20), "order": _order(rng, rng.random() < 0.5)}
        if rng.random() < rate:
            step["book"] = {"kind": rng.randrange(1, 5), "slot": rng.randrange(256), "stock_locate": rng.randrange(1 << 16),
                            "order_reference_number": rng.getrandbits(64), "sequence_number": rng.getrandbits(64)}
        if rng.random() < rate:
            step["gap"] = {"session": 0, "sequence_number": rng.getrandbits(64), "message_count": rng.randrange(1 << 32)}
        if rng.random() < rate:
            # Sequenced data the event stage reports, and some it must not (other types, errors, other packets).
            kind = rng.choice("AECAECJSx")
            step["exchange"] = {name: 0 for name, _ in exchange_layout} | {
                "packet_type": ord("S") if kind != "x" else ord("H"), "message_type": ord(kind if kind != "x" else "A"),
                "error": int(rng.random() < 0.1), "session": rng.randrange(4), "user_ref_num": rng.getrandbits(32),
                "quantity": rng.randrange(1 << 20), "price": rng.randrange(1 << 31),
                "order_reference_number": rng.getrandbits(64), "liquidity_flag": ord(rng.choice("AR")),
                "reason": ord(rng.choice("UIT"))}
        out.append(step)
    return out


def check(events, records, result):
    def reported(name, p):
        return name != "exchange" or (p["packet_type"] == ord("S") and not p["error"] and chr(p["message_type"]) in "AEC")
    sent = {name: [(c, p) for c, step in enumerate(events) for n, p in step.items() if n == name and reported(n, p)]
            for name in ("accepted", "reject", "book", "gap", "exchange")}
    decoded = [(cycle, unpack(data.to_bytes(32, "little"))) for cycle, data in records]
    assert [e.sequence for _, e in decoded] == list(range(len(decoded)))
    by_type = {EventType.ORDER_SENT: "accepted", EventType.RISK_REJECT: "reject",
               EventType.BOOK_UNTRUSTED: "book", EventType.GAP: "gap", EventType.EXCHANGE_ACK: "exchange",
               EventType.FILL: "exchange", EventType.CANCEL: "exchange"}
    got = {name: [] for name in sent}
    for cycle, e in decoded:
        got[by_type[e.type]].append((cycle, e))
    for name in sent:
        # Every event that was not dropped arrives, in order; the record says the cycle it came
        # in (counted from reset), which names the event it reports.
        by_cycle = dict(sent[name])
        cycles = [e.cycles for _, e in got[name]]
        assert cycles == sorted(set(cycles)), name
        if not result["dropped"]:
            assert cycles == [c for c, _ in sent[name]], name
        for out_cycle, e in got[name]:
            t, flags, fields = expected_fields(name, by_cycle[e.cycles])
            assert (e.type, e.flags, dict(e.fields)) == (t, flags, fields)
            assert out_cycle >= e.cycles + LATENCY
    assert result["events"] == len(decoded)
    assert result["dropped"] == sum(len(v) for v in sent.values()) - len(decoded)


def test_random_events():
    rng = random.Random(3)
    events = random_events(rng, 300, 0.15)
    records, result = run(events)
    check(events, records, result)
    assert result["dropped"] == 0


def test_backpressure_and_drops():
    rng = random.Random(4)
    events = random_events(rng, 200, 0.6)
    records, result = run(events, backpressure=0.7, depth=4)
    check(events, records, result)
    assert result["dropped"] > 0


def test_latency():
    rng = random.Random(5)
    events = [{}] * 3 + [{"gap": {"session": 0, "sequence_number": 5, "message_count": 2}}] + [{}] * 3
    records, _ = run(events, seed=rng.randrange(100))
    assert [c for c, _ in records] == [3 + LATENCY]
