"""hdl/management.py's ManagementPort in the Amaranth simulator against the reference model
(sim/management_model.py): requests, retries of lost replies (duplicates), lost requests,
malformed frames and event records, under random backpressure; the register bus is a Python
register file that logs every write the port applies."""

import random

import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings, strategies as st

from tickwire.bitstreams.management import ManagementPort as BoardManagementPort
from tickwire.hdl.management import ManagementPort
from tickwire.protocols import events as ev
from tickwire.protocols.management import (APPLIED, BROADCAST, DUPLICATE, FRAME_LENGTH, READ,
                                           WRITE, ManagementReply, ManagementRequest,
                                           decode_events, decode_reply, encode_request)
from tickwire.protocols.net import MIN_FRAME_LENGTH
from tickwire.sim.management_model import ManagementModel

CARD = 0x02_74_77_69_72_01
CARD_MAC = CARD.to_bytes(6, "big")
HOSTS = (bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b"))
ADDR_WIDTH = 6


def initial(address):
    """What an unwritten register reads: a pattern of its address."""
    return (address * 0x01010101 ^ 0xA5A5A5A5) & 0xFFFF_FFFF


class RegisterFile:
    def __init__(self):
        self.values = {}
        self.writes = []

    def read(self, address):
        return self.values.get(address, initial(address))

    def write(self, address, value):
        self.values[address] = value
        self.writes.append((address, value))


def event_record(k):
    return ev.pack(ev.Event(ev.EventType.GAP, cycles=1000 + k, sequence=k,
                            fields={"sequence_number": 7 * k + 1, "message_count": k % 5 + 1}))


def request(opcode, sequence, address, data=0, *, source=HOSTS[0], destination=CARD_MAC):
    return encode_request(ManagementRequest(opcode, sequence, address, data),
                          destination=destination, source=source)


def run(items, *, seed=1, ready_probability=1.0, max_cycles=20_000):
    """Feed ``items`` (``("frame", bytes)`` or ``("event", record)``) one after the other, each
    once the port has taken the one before; returns the frames sent (padded to 60 bytes, as the
    MacTx would), the bus writes, the counters, and per item the cycle it was taken and the
    cycle the next frame's first word was offered."""
    port = ManagementPort(mac_address=CARD, addr_width=ADDR_WIDTH)
    rng = random.Random(seed)
    bus = RegisterFile()
    sent, taken_at, offered_at, result = [], [], [], {}
    done = []

    async def source(ctx):
        cycle = 0
        for kind, payload in items:
            if kind == "event":
                ctx.set(port.i_events.valid, 1)
                ctx.set(port.i_events.payload, {"data": int.from_bytes(payload, "little")})
                while True:
                    _, _, ready = await ctx.tick().sample(port.i_events.ready)
                    cycle += 1
                    if ready:
                        break
                ctx.set(port.i_events.valid, 0)
            else:
                data = payload
                for offset in range(0, len(data), 8):
                    chunk = data[offset:offset + 8]
                    ctx.set(port.i_stream.valid, 1)
                    ctx.set(port.i_stream.payload, {
                        "data": int.from_bytes(chunk, "little"), "nbytes": len(chunk),
                        "last": offset + 8 >= len(data), "length": len(data)})
                    while True:
                        _, _, ready = await ctx.tick().sample(port.i_stream.ready)
                        cycle += 1
                        if ready:
                            break
                ctx.set(port.i_stream.valid, 0)
            taken_at.append(cycle)
            gap = rng.randrange(0, 12)
            if gap:
                await ctx.tick().repeat(gap)
                cycle += gap
        done.append(cycle)

    async def sink(ctx):
        frame = bytearray()
        for cycle in range(1, max_cycles):
            ready = rng.random() < ready_probability
            ctx.set(port.o_stream.ready, ready)
            _, _, valid, p = await ctx.tick().sample(port.o_stream.valid, port.o_stream.payload)
            if valid and not frame and len(offered_at) == len(sent):
                offered_at.append(cycle)
            if valid and ready:
                frame += p.data.to_bytes(8, "little")[:p.nbytes]
                if p.last:
                    assert p.length == len(frame)
                    sent.append(bytes(frame).ljust(MIN_FRAME_LENGTH, b"\0"))
                    frame = bytearray()
            if done and cycle > done[0] + 40 and not valid:
                break
        assert done, "the port did not take every item"
        assert not frame, "a frame was left half sent"
        for name in ("requests", "duplicates", "event_frames"):
            result[name] = ctx.get(getattr(port, name))

    async def register_bus(ctx):
        csr = port.csr
        while True:
            _, _, r_stb, w_stb, addr, w_data = await ctx.tick().sample(
                csr.r_stb, csr.w_stb, csr.addr, csr.w_data)
            if w_stb:
                bus.write(addr, w_data)
            if r_stb:
                ctx.set(csr.r_data, bus.read(addr))

    sim = Simulator(port)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(register_bus, background=True)
    sim.run()
    return sent, bus.writes, result, taken_at, offered_at


def model_of(items):
    bank = RegisterFile()
    model = ManagementModel(CARD_MAC, bank.read, bank.write, addr_width=ADDR_WIDTH)
    out = []
    for kind, payload in items:
        if kind == "event":
            out.append(model.events([payload]))
        else:
            reply = model.receive(payload)
            if reply is not None:
                out.append(reply)
    return out, bank.writes, model


def check_against_model(items, **options):
    sent, writes, counters, _, _ = run(items, **options)
    expected, expected_writes, model = model_of(items)
    assert sent == expected
    assert writes == expected_writes == model.writes
    assert counters == {"requests": model.requests, "duplicates": model.duplicates,
                        "event_frames": model.event_frames}
    return sent, model


def test_reads_writes_and_retries_under_backpressure():
    frames = [request(READ, 1, 3)]
    frames += [request(WRITE, 0xFFFF, 5, 0xDEADBEEF)] * 3         # two replies lost: retried
    frames += [request(READ, 0, 5, source=HOSTS[1], destination=BROADCAST),
               request(WRITE, 1, 6, 0x1234)]
    frames += [request(WRITE, 1, 6, 0x1234)]                          # again: a duplicate
    frames += [request(WRITE, 2, 6, 0x1234)]                          # a new sequence: applied
    items = [("frame", f.ljust(MIN_FRAME_LENGTH, b"\0")) for f in frames]
    sent, model = check_against_model(items, ready_probability=0.4)
    replies = [decode_reply(f) for f in sent]
    assert [r[2] for r in replies] == [
        ManagementReply(READ, 1, 3, initial(3), APPLIED),
        ManagementReply(WRITE, 0xFFFF, 5, 0xDEADBEEF, APPLIED),
        ManagementReply(WRITE, 0xFFFF, 5, 0xDEADBEEF, DUPLICATE),
        ManagementReply(WRITE, 0xFFFF, 5, 0xDEADBEEF, DUPLICATE),
        ManagementReply(READ, 0, 5, 0xDEADBEEF, APPLIED),
        ManagementReply(WRITE, 1, 6, 0x1234, APPLIED),
        ManagementReply(WRITE, 1, 6, 0x1234, DUPLICATE),
        ManagementReply(WRITE, 2, 6, 0x1234, APPLIED)]
    assert [r[0] for r in replies] == [HOSTS[0]] * 4 + [HOSTS[1]] + [HOSTS[0]] * 3
    assert all(r[1] == CARD_MAC for r in replies)
    assert model.writes == [(5, 0xDEADBEEF), (6, 0x1234), (6, 0x1234)]


def test_event_frames_follow_the_last_requester():
    items = [("event", event_record(0)), ("frame", request(READ, 9, 1)),
             ("event", event_record(1)), ("event", event_record(2)),
             ("frame", request(READ, 10, 1, source=HOSTS[1])), ("event", event_record(3))]
    sent, _ = check_against_model(items, ready_probability=0.7)
    frames = [decode_events(f) for f in sent if f[15] == 0x40]
    assert [d for d, _, _ in frames] == [BROADCAST, HOSTS[0], HOSTS[0], HOSTS[1]]
    assert [f.frame_sequence for _, _, f in frames] == [0, 1, 2, 3]
    assert [f.events[0].sequence for _, _, f in frames] == [0, 1, 2, 3]
    assert frames[3][2].events[0]["sequence_number"] == 22


def test_ignores_frames_that_are_not_its_requests():
    good = request(READ, 7, 2)
    other_card = request(READ, 1, 2, destination=bytes.fromhex("027477697202"))
    version_1 = bytearray(good)
    version_1[14] = 1
    a_reply = bytearray(good)
    a_reply[15] = 0x81
    events_opcode = bytearray(good)
    events_opcode[15] = 0x40
    ipv4 = bytearray(good)
    ipv4[12:14] = b"\x08\x00"
    items = [("frame", bytes(f)) for f in (other_card, version_1, a_reply, events_opcode, ipv4,
                                           good[:FRAME_LENGTH - 1], good[:14], good)]
    sent, model = check_against_model(items)
    assert model.requests == 1
    assert [decode_reply(f)[2] for f in sent] == [ManagementReply(READ, 7, 2, initial(2))]


def test_latency():
    """The docstring's Latency: clock edges from the one that takes the request's last word (or
    the event record) to the one that could take the reply's first word."""
    items = [("frame", request(WRITE, 1, 4, 77)), ("frame", request(WRITE, 1, 4, 77)),
             ("frame", request(READ, 2, 4)), ("event", event_record(0))]
    sent, _, _, taken_at, offered_at = run(items)
    assert len(sent) == 4
    assert [o - t for t, o in zip(taken_at, offered_at)] == [3, 3, 4, 2]


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_board_module_reexports_the_port():
    assert BoardManagementPort is ManagementPort
    with pytest.raises(ValueError, match="48-bit unicast address, not 1099511627776"):
        ManagementPort(mac_address=1 << 40)
    with pytest.raises(ValueError, match="addr_width must be 1..16, not 17"):
        ManagementPort(mac_address=CARD, addr_width=17)


# -- hypothesis: random traffic from two hosts with losses, retries and malformed frames --------

@st.composite
def traffic(draw):
    """Items as a lossy link delivers them: each request reaches the card 0..3 times (lost
    requests, retries of lost replies), new requests take the host's next sequence, and events
    and malformed frames come in between."""
    items = []
    sequences = {h: draw(st.integers(0, 0xFFFF)) for h in HOSTS}
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["request", "request", "request", "event", "malformed"]))
        if kind == "request":
            host = draw(st.sampled_from(HOSTS))
            sequences[host] = (sequences[host] + 1) & 0xFFFF
            opcode = draw(st.sampled_from([READ, WRITE]))
            frame = request(opcode, sequences[host], draw(st.integers(0, 0xFFFF)),
                            draw(st.integers(0, 0xFFFF_FFFF)) if opcode == WRITE else 0,
                            source=host,
                            destination=draw(st.sampled_from([CARD_MAC, CARD_MAC, BROADCAST])))
            if draw(st.booleans()):
                frame = frame.ljust(MIN_FRAME_LENGTH, b"\0")
            items += [("frame", frame)] * draw(st.integers(0, 3))
        elif kind == "event":
            items.append(("event", event_record(draw(st.integers(0, 1000)))))
        else:
            base = bytearray(request(READ, 0, 1))
            mutation = draw(st.sampled_from(["truncate", "byte", "garbage"]))
            if mutation == "truncate":
                frame = bytes(base[:draw(st.integers(1, FRAME_LENGTH - 1))])
            elif mutation == "byte":
                at = draw(st.integers(0, FRAME_LENGTH - 1))
                base[at] ^= draw(st.integers(1, 255))
                frame = bytes(base)
            else:
                frame = draw(st.binary(min_size=1, max_size=80))
            items.append(("frame", frame))
    return items


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=traffic(), seed=st.integers(0, 1 << 16), ready=st.sampled_from([1.0, 0.5, 0.2]))
def test_random_traffic_matches_the_model(items, seed, ready):
    sent, model = check_against_model(items, seed=seed, ready_probability=ready)
    # A retried write is applied once: consecutive copies of one request write once.
    copies = [p for k, p in items if k == "frame"]
    retried_writes = sum(1 for a, b in zip(copies, copies[1:]) if a == b and len(a) >= 16
                         and a[15] == WRITE and a[14] == 2 and a[12:14] == b"\x88\xb5")
    assert model.duplicates >= retried_writes
