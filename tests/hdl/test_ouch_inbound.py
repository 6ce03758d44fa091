"""The OUCH inbound parser (hdl/ouch_inbound.py) in the Amaranth simulator against the model of
sim/ouch_model.py: random streams of well-formed and malformed SoupBinTCP packets cut into
random beats, random backpressure, latency; plus the Verilator bench."""

from __future__ import annotations

import gc
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.hdl.ouch_inbound import OuchParser, exposure_layout, record_layout
from tickwire.protocols import ouch, soupbintcp
from tickwire.protocols.ouch import ExposureKind, ParseError
from tickwire.sim.runner import run
from tickwire.sim.ouch_model import (ParserModel, aligned_beats, random_message, random_packet,
                                     raw_packet, split_beats)

#: Cycles from the beat holding a packet's last byte taken to its record valid (OuchParser).
LATENCY = 1

_RECORD = [name for name, _ in record_layout]
_EXPOSURE = [name for name, _ in exposure_layout]


def simulate(beats: list[dict[str, int]], rng: random.Random | None, *, session: int = 0,
             expect: int | None = None):
    """Feed the beats; ``rng`` gives input gaps and backpressure on both outputs. Returns the
    records, exposure updates, the cycle each beat was taken and each record left, counters."""
    dut = OuchParser(session=session)
    records, exposures, taken, out_cycles = [], [], [], []
    counters: dict[str, int] = {}

    async def bench(ctx):
        n = 0
        idle = 0
        for cycle in range(20 * len(beats) + 200):
            send = n < len(beats) and not (rng and rng.random() < 0.3)
            ctx.set(dut.i_stream.valid, send)
            if send:
                ctx.set(dut.i_stream.payload, beats[n])
            ready_o = not (rng and rng.random() < 0.4)
            ready_x = not (rng and rng.random() < 0.6)
            ctx.set(dut.o_stream.ready, ready_o)
            ctx.set(dut.o_exposure.ready, ready_x)
            if send and ctx.get(dut.i_stream.ready):
                taken.append(cycle)
                n += 1
            if ready_o and ctx.get(dut.o_stream.valid):
                value = ctx.get(dut.o_stream.payload)
                records.append({k: int(getattr(value, k)) for k in _RECORD})
                out_cycles.append(cycle)
            if ready_x and ctx.get(dut.o_exposure.valid):
                value = ctx.get(dut.o_exposure.payload)
                exposures.append({k: int(getattr(value, k)) for k in _EXPOSURE})
            await ctx.tick()
            idle = idle + 1 if n == len(beats) else 0
            if idle > 30 and (expect is None or len(records) >= expect):
                break
        for reg in dut.registers:
            counters[reg.name] = ctx.get(getattr(dut.regs, reg.name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(taken) == len(beats), f"the parser took {len(taken)} of {len(beats)} beats (wedged?)"
    return records, exposures, taken, out_cycles, counters


def _diff(a, b):
    return {k: (a[k], b[k]) for k in b if a[k] != b[k]}


def check(packets: list[bytes], beats, rng, *, session: int = 0) -> ParserModel:
    model = ParserModel(session=session)
    for p in packets:
        model.packet(p)
    records, exposures, _, _, counters = simulate(beats, rng, session=session, expect=len(model.records))
    assert len(records) == len(model.records), f"{len(records)} records, model {len(model.records)}"
    for n, (got, want) in enumerate(zip(records, model.records)):
        assert got == want, f"record {n} {packets[n][:12].hex()}...: (dut, model) differ {_diff(got, want)}"
    assert exposures == model.exposures
    assert counters == model.counters, _diff(counters, model.counters)
    return model


@st.composite
def traffic(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    count = draw(st.integers(1, 40))
    malformed = draw(st.sampled_from([0.0, 0.2, 0.6]))
    packets = [random_packet(rng, malformed)[1] for _ in range(count)]
    beats = split_beats(rng, b"".join(packets), empty=draw(st.sampled_from([0.0, 0.1])))
    return packets, beats, rng


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic(), st.booleans())
def test_random_streams(case, backpressure):
    """Well-formed and malformed packets at any alignment: the records, exposure updates and
    counters are the model's, under random backpressure too."""
    packets, beats, rng = case
    check(packets, beats, rng if backpressure else None)


def test_every_message_type_decoded():
    """Each OUCH outbound type and SoupBinTCP server packet once, fields checked against the
    values the message was packed from (not only against the model)."""
    rng = random.Random(11)
    values = {"timestamp": 0x0123_4567_89AB, "user_ref_num": 0xDEADBEEF, "orig_user_ref_num": 77,
              "quantity": 5000, "price": 0x1_2345_6789, "side": "S", "symbol": "NVDA",
              "cl_ord_id": "CLIENT-0000042", "decrement_shares": 300, "execution_price": 1_000_000,
              "reason": "U", "match_number": 0xFEDCBA9876543210}
    packets = []
    for t, m in ouch.OUTBOUND.items():
        v = {k: x for k, x in values.items() if k in m and k != "message_type"}
        if t == "J":
            v["reason"] = 0x001F
        packets.append(soupbintcp.frame("S", ouch.pack_message(ouch.OUTBOUND, t, [("min_qty", 9)]
                                                               if t in ouch.WITH_APPENDAGE_OUT else [], **v)))
    packets += [soupbintcp.frame("A", soupbintcp.SERVER["A"].pack(session="SESSION01", sequence_number="42".rjust(20))),
                soupbintcp.frame("J", b"A"), soupbintcp.frame("H"), soupbintcp.frame("Z"), soupbintcp.frame("+", b"hi"),
                soupbintcp.frame("S", random_message(rng, "E"))]
    beats = split_beats(rng, b"".join(packets))
    model = check(packets, beats, None, session=5)
    recs = model.records
    assert [r["error"] for r in recs] == [0] * len(recs)
    executed = recs[list(ouch.OUTBOUND).index("E")]
    assert executed["quantity"] == 5000 and executed["price"] == 0x1_2345_6789
    assert executed["user_ref_num"] == 0xDEADBEEF and executed["match_number"] == 0xFEDCBA9876543210
    assert executed["appendage_length"] == 6 and executed["sequence_count"] == list(ouch.OUTBOUND).index("E") + 1
    accepted = recs[list(ouch.OUTBOUND).index("A")]
    assert accepted["symbol"].to_bytes(8, "little") == b"NVDA    " and accepted["side"] == ord("S")
    assert accepted["cl_ord_id"].to_bytes(14, "little") == b"CLIENT-0000042"
    aiq = recs[list(ouch.OUTBOUND).index("D")]
    assert aiq["quantity"] == 300 and aiq["price"] == 1_000_000
    assert recs[list(ouch.OUTBOUND).index("J")]["reason"] == 0x001F
    login = recs[len(ouch.OUTBOUND)]
    assert login["login_session"].to_bytes(10, "little") == b"SESSION01 " and login["session"] == 5
    assert recs[-1]["sequence_count"] == 1, "Login Accepted restarts the count"
    kinds = [e["kind"] for e in model.exposures]
    assert kinds == [ExposureKind.ACCEPTED, ExposureKind.REPLACED, ExposureKind.CANCELED, ExposureKind.EXECUTED,
                     ExposureKind.CANCELED, ExposureKind.BROKEN, ExposureKind.REJECTED, ExposureKind.MODIFIED,
                     ExposureKind.EXECUTED]
    replaced = model.exposures[1]
    assert replaced["orig_user_ref_num"] == 77 and replaced["user_ref_num"] == 0xDEADBEEF
    assert model.exposures[0]["price"] == 0xFFFFFFFF and model.counters["price_saturated"] >= 3


@pytest.mark.parametrize("what,packet,error", [
    ("length 0", b"\x00\x00", ParseError.PACKET_LENGTH),
    ("client packet type", raw_packet(b"U", b"O" + bytes(46)), ParseError.PACKET_TYPE),
    ("unknown OUCH type", raw_packet(b"S", b"Z" + bytes(20)), ParseError.MESSAGE_TYPE),
    ("no OUCH type", raw_packet(b"S", b""), ParseError.MESSAGE_TYPE),
    ("truncated Executed", raw_packet(b"S", ouch.OUTBOUND["E"].pack()[:20]), ParseError.MESSAGE_LENGTH),
    ("Canceled one byte long", raw_packet(b"S", ouch.OUTBOUND["C"].pack() + b"x"), ParseError.MESSAGE_LENGTH),
    ("appendage length too big", raw_packet(b"S", ouch.OUTBOUND["E"].pack(appendage_length=6)),
     ParseError.APPENDAGE_LENGTH),
    ("heartbeat with payload", raw_packet(b"H", b"x"), ParseError.PACKET_LENGTH),
    ("short Login Accepted", raw_packet(b"A", bytes(29)), ParseError.PACKET_LENGTH),
])
def test_malformed_counted_and_parser_recovers(what, packet, error):
    """Each malformed packet gives a record with its error and bumps its counter, and the
    well-formed packets around it decode as usual."""
    rng = random.Random(5)
    good = [soupbintcp.frame("S", random_message(rng, t)) for t in "EACJ"]
    packets = good[:2] + [packet] + good[2:]
    model = check(packets, split_beats(rng, b"".join(packets)), None)
    assert [r["error"] for r in model.records] == [0, 0, int(error), 0, 0], what
    assert model.counters[f"error_{error.name.lower()}"] == 1


def test_huge_packets_skipped():
    """Packets far longer than the capture (a 65535-byte length included) are consumed byte for
    byte and the stream goes on."""
    rng = random.Random(9)
    packets = [soupbintcp.frame("+", bytes(1000)), raw_packet(b"S", ouch.OUTBOUND["C"].pack() + bytes(2000)),
               soupbintcp.frame("S", random_message(rng, "E")), raw_packet(b"\xff", bytes(65534)),
               soupbintcp.frame("H")]
    model = check(packets, split_beats(rng, b"".join(packets), empty=0.0), None)
    assert [r["error"] for r in model.records] == [0, ParseError.MESSAGE_LENGTH, 0, ParseError.PACKET_TYPE, 0]


def test_latency_and_throughput():
    """Packets aligned to beats, outputs always ready: each record is valid the cycle after the
    beat holding its last byte is taken; the parser takes a beat every cycle except where one
    beat holds the end of one packet and the start of another."""
    rng = random.Random(21)
    packets = [random_packet(rng, 0)[1] for _ in range(60)]
    beats, ends = aligned_beats(packets)
    records, _, taken, out_cycles, _ = simulate(beats, None, expect=len(packets))
    assert len(records) == len(packets)
    latencies = [out - taken[ends[k]] for k, out in enumerate(out_cycles)]
    assert set(latencies) == {LATENCY}, f"latencies {sorted(set(latencies))}"
    assert taken == list(range(taken[0], taken[0] + len(beats))), "a bubble in an aligned stream"
    # Three heartbeats in one beat: one packet boundary a cycle, so three cycles for that beat.
    dense = soupbintcp.frame("H") * 2 + soupbintcp.frame("Z")[:2]
    tail = soupbintcp.frame("Z")[2:]
    _, _, taken, out_cycles, _ = simulate(
        [{"data": int.from_bytes(dense, "little"), "nbytes": 8, "last": 0, "length": 0},
         {"data": int.from_bytes(tail, "little"), "nbytes": 1, "last": 0, "length": 0}], None, expect=3)
    assert taken == [2, 3] and out_cycles == [1, 2, 4]


def test_session_parameter_checked():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)  # the refused half-built component
        with pytest.raises(ValueError, match="session must be"):
            OuchParser(session=256)
        gc.collect()


def test_ouch_inbound_verilator():
    """The same parser on Verilator (sim/tb_ouch_inbound.py)."""
    run("ouch_inbound", "tickwire.sim.tb_ouch_inbound")
