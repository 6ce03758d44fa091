"""The OUCH encoder (hdl/ouch.py): bytes out against protocols/ouch.py for random orders of every
action with random appendage subsets, under random backpressure, in the Amaranth simulator;
plus the Verilator bench sim/tb_ouch.py."""

from __future__ import annotations

import random

from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.hdl.order import APPENDAGE_FIELDS, order_layout
from tickwire.hdl.ouch import MAX_PACKET_LENGTH, OuchEncoder
from tickwire.protocols import ouch, soupbintcp
from tickwire.sim.ouch_model import ENCODER_ACTIONS as ACTIONS, expected_packet, present_appendages
from tickwire.sim.runner import run

#: Cycles from an order taken to the first beat of its packet valid (OuchEncoder docstring).
LATENCY = 1
_NAMES = list(APPENDAGE_FIELDS)


def _field_widths() -> dict[str, int]:
    return {name: field.width for name, field in order_layout}


@st.composite
def orders(draw, invalid: bool = True) -> dict[str, int]:
    """Any order record; the action is one of the four, now and then any other byte."""
    widths = _field_widths()
    record = {name: draw(st.integers(0, (1 << w) - 1)) for name, w in widths.items()}
    actions = st.sampled_from([ord(a) for a in ACTIONS])
    if invalid:
        actions = st.one_of(actions, actions, actions, st.integers(0, 255))
    record["action"] = draw(actions)
    return record


def simulate(records: list[dict[str, int]], rng: random.Random | None):
    """Drive the records through the encoder; ``rng`` gives random input gaps and output
    backpressure. Returns the packets (bytes, beats), the cycle each order was taken, the cycle
    each packet's first beat left, and the counters."""
    dut = OuchEncoder()
    taken: list[int] = []
    firsts: list[int] = []
    packets: list[tuple[bytes, list]] = []
    counters: dict[str, int] = {}
    expected_packets = sum(expected_packet(r) is not None for r in records)

    async def bench(ctx):
        current: list = []
        n = 0
        for cycle in range(40 * (len(records) + 2)):
            send = n < len(records) and not (rng and rng.random() < 0.3)
            ctx.set(dut.i_stream.valid, send)
            if send:
                ctx.set(dut.i_stream.payload, records[n])
            ready = not (rng and rng.random() < 0.4)
            ctx.set(dut.o_stream.ready, ready)
            if send and ctx.get(dut.i_stream.ready):
                taken.append(cycle)
                n += 1
            if ready and ctx.get(dut.o_stream.valid):
                beat = ctx.get(dut.o_stream.payload)
                beat = {name: int(getattr(beat, name)) for name in ("data", "nbytes", "last", "length", "session")}
                if not current:
                    firsts.append(cycle)
                current.append(beat)
                if beat["last"]:
                    data = b"".join(b["data"].to_bytes(8, "little")[:b["nbytes"]] for b in current)
                    packets.append((data, current))
                    current = []
            await ctx.tick()
            if n == len(records) and len(packets) == expected_packets and not ctx.get(dut.o_stream.valid):
                break
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(dut.o_stream.ready, 1)
        assert not current, "a packet without its last beat"
        for _ in range(5):
            assert not ctx.get(dut.o_stream.valid), "a packet the model does not predict"
            await ctx.tick()
        for reg in dut.registers:
            counters[reg.name] = ctx.get(getattr(dut.regs, reg.name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return packets, taken, firsts, counters


def check(records: list[dict[str, int]], rng: random.Random | None) -> list[int]:
    packets, taken, firsts, counters = simulate(records, rng)
    kept = [(k, r) for k, r in enumerate(records) if expected_packet(r) is not None]
    assert len(taken) == len(records), f"{len(taken)} of {len(records)} orders taken"
    assert len(packets) == len(kept), f"{len(packets)} packets, {len(kept)} expected"
    latencies = []
    for n, ((k, record), (data, beats)) in enumerate(zip(kept, packets)):
        want = expected_packet(record)
        assert data == want, (f"order {k} ({chr(record['action'])}, appendages {present_appendages(record)}):\n"
                              f" dut   {data.hex()}\n model {want.hex()}")
        assert all(b["length"] == len(want) and b["session"] == record["session"] for b in beats)
        assert all(b["nbytes"] == 8 for b in beats[:-1]) and not any(b["last"] for b in beats[:-1])
        assert beats[-1]["nbytes"] == (len(want) - 1) % 8 + 1
        # The Appendage Length agrees with the TagValue elements that follow.
        message = want[soupbintcp.HEADER_LENGTH:]
        if chr(record["action"]) in ouch.WITH_APPENDAGE_IN:
            tail = message[ouch.INBOUND[chr(record["action"])].length:]
            assert [n for n, _ in ouch.unpack_appendages(tail)] == present_appendages(record)
        latencies.append(firsts[n] - taken[k])
    by_action = {a: sum(chr(r["action"]) == a for r in records) for a in ACTIONS}
    assert counters == {
        "orders_sent": len(kept), "enter_sent": by_action["O"], "replace_sent": by_action["U"],
        "cancel_sent": by_action["X"], "modify_sent": by_action["M"],
        "appendages_sent": sum(len(present_appendages(r)) for _, r in kept if chr(r["action"]) in "OU"),
        "invalid_action": len(records) - len(kept),
    }
    if rng is None:
        assert set(latencies) <= {LATENCY}, f"latencies {sorted(set(latencies))}, documented {LATENCY}"
    else:
        assert not latencies or min(latencies) >= LATENCY
    return latencies


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(orders(), min_size=1, max_size=24), st.booleans(), st.randoms(use_true_random=False))
def test_random_orders(records, backpressure, rng):
    """Random orders of all four actions (and invalid ones) with random appendage subsets: the
    bytes are protocols/ouch.py's, framing and counters are right, latency is 1 without
    backpressure and never less with it."""
    check(records, rng if backpressure else None)


def test_every_appendage_alone_and_all():
    """Each appendage alone on Enter and Replace, all of them (the longest packet), none."""
    rng = random.Random(7)
    records = []
    for action in "OU":
        for mask in [0, (1 << len(_NAMES)) - 1] + [1 << k for k in range(len(_NAMES))]:
            r = {name: rng.getrandbits(w) for name, w in _field_widths().items()}
            r.update(action=ord(action), appendage_mask=mask, peg_offset=(-3) & 0xFFFFFFFF)
            records.append(r)
    longest = max(len(expected_packet(r)) for r in records)
    assert longest == MAX_PACKET_LENGTH
    latencies = check(records, None)
    assert latencies == [LATENCY] * len(records)


def test_back_to_back_throughput():
    """Always-ready output: packets leave back to back, one beat per cycle, no idle cycle."""
    rng = random.Random(3)
    records = []
    for k in range(40):
        r = {name: rng.getrandbits(w) for name, w in _field_widths().items()}
        r["action"] = ord(ACTIONS[k % 4])
        records.append(r)
    packets, taken, firsts, _ = simulate(records, None)
    beats = [len(b) for _, b in packets]
    # Order k+1 is taken on the cycle order k's last beat leaves.
    for k in range(len(records) - 1):
        assert taken[k + 1] == firsts[k] + beats[k] - 1
    assert firsts[-1] - firsts[0] == sum(beats[:-1])


def test_ouch_verilator():
    """The same encoder on Verilator against protocols/ouch.py (sim/tb_ouch.py)."""
    run("ouch", "tickwire.sim.tb_ouch")
