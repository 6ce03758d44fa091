"""bitstreams/management.py in the Amaranth simulator: ManagementPort on a register bank answers
the frames of protocols/management.py, under random backpressure, and ignores what is not its."""

import random

import pytest

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from tickwire.bitstreams.management import ManagementPort
from tickwire.hdl.csr import MAGIC, REGMAP_VERSION, CsrBank, Register, WINDOW_WORDS
from tickwire.hdl.top import Identity
from tickwire.protocols.management import (BROADCAST, READ, WRITE, ManagementRequest,
                                           decode_reply, encode_request)
from tickwire.protocols.net import MIN_FRAME_LENGTH

CARD = 0x02_74_77_69_72_01
CARD_MAC = CARD.to_bytes(6, "big")
HOST_MAC = bytes.fromhex("02000000000a")
SCRATCH = Register("value", 32, "rw", "A word the test writes and reads back.")
#: Word addresses: Identity's window first, the scratch register in the second.
MAGIC_ADDRESS = 0
VERSION_ADDRESS = 1
SCRATCH_ADDRESS = WINDOW_WORDS


class Bench(Elaboratable):
    def __init__(self):
        self.port = ManagementPort(mac_address=CARD)
        self.identity = Identity()
        self.bank = CsrBank([("id", Identity.registers), ("scratch", (SCRATCH,))])

    def elaborate(self, platform):
        m = Module()
        m.submodules.port = self.port
        m.submodules.identity = self.identity
        m.submodules.bank = self.bank
        wiring.connect(m, self.port.csr, self.bank.bus)
        wiring.connect(m, self.bank.id, self.identity.regs)
        return m


def beats(frame):
    """A frame as packet-stream beats: (data, nbytes, last, length)."""
    out = []
    for offset in range(0, len(frame), 8):
        chunk = frame[offset:offset + 8]
        out.append((int.from_bytes(chunk, "little"), len(chunk), offset + 8 >= len(frame), len(frame)))
    return out


def run(frames, *, seed=1, ready_probability=1.0, cycles=4000):
    """Feed ``frames`` (each padded to 60 bytes, as a MacRx delivers them) with a random gap
    between them; returns the reply frames, the cycle each request's last beat was taken and the
    cycle each reply's first beat was offered, and the ``requests`` counter."""
    bench = Bench()
    port = bench.port
    rng = random.Random(seed)
    replies, last_taken, first_offered, counter = [], [], [], []

    async def source(ctx):
        for frame in frames:
            for data, nbytes, last, length in beats(frame.ljust(MIN_FRAME_LENGTH, b"\0")):
                ctx.set(port.i_stream.valid, 1)
                ctx.set(port.i_stream.payload, {"data": data, "nbytes": nbytes, "last": last,
                                                "length": length})
                await ctx.tick().until(port.i_stream.ready)
                if last:
                    last_taken.append(ctx.get(bench.identity.regs.cycles))
            ctx.set(port.i_stream.valid, 0)
            await ctx.tick().repeat(rng.randrange(1, 20))

    async def sink(ctx):
        frame = bytearray()
        for _ in range(cycles):
            ready = rng.random() < ready_probability
            ctx.set(port.o_stream.ready, ready)
            await ctx.delay(1e-10)
            if ctx.get(port.o_stream.valid):
                if not frame and (not first_offered or len(first_offered) == len(replies)):
                    first_offered.append(ctx.get(bench.identity.regs.cycles))
                if ready:
                    p = ctx.get(port.o_stream.payload)
                    frame += p.data.to_bytes(8, "little")[:p.nbytes]
                    if p.last:
                        assert p.length == len(frame)
                        replies.append(bytes(frame))
                        frame = bytearray()
            await ctx.tick()
        counter.append(ctx.get(port.requests))
        assert not frame, "a reply was left half sent"

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return replies, last_taken, first_offered, counter[0]


def request(opcode, sequence, address, data=0, destination=CARD_MAC):
    return encode_request(ManagementRequest(opcode, sequence, address, data),
                          destination=destination, source=HOST_MAC)


def test_reads_and_writes_under_backpressure():
    rng = random.Random(5)
    values = [rng.randrange(1 << 32) for _ in range(6)]
    frames = [request(READ, 1, MAGIC_ADDRESS), request(READ, 2, VERSION_ADDRESS)]
    expected = [(READ, 1, MAGIC_ADDRESS, MAGIC), (READ, 2, VERSION_ADDRESS, REGMAP_VERSION)]
    for k, value in enumerate(values):
        sequence = 0xFFF0 + 2 * k
        frames += [request(WRITE, sequence, SCRATCH_ADDRESS, value),
                   request(READ, sequence + 1, SCRATCH_ADDRESS, destination=BROADCAST)]
        expected += [(WRITE, sequence, SCRATCH_ADDRESS, value), (READ, sequence + 1, SCRATCH_ADDRESS, value)]
    replies, _, _, count = run(frames, ready_probability=0.5)
    assert len(replies) == len(expected) == count
    for frame, (opcode, sequence, address, value) in zip(replies, expected):
        assert len(frame) == 24
        destination, source, reply = decode_reply(frame)
        assert (destination, source) == (HOST_MAC, CARD_MAC)
        assert reply == ManagementRequest(opcode, sequence, address, value)


def test_ignores_frames_that_are_not_its_requests():
    good = request(READ, 7, MAGIC_ADDRESS)
    other_card = request(READ, 1, MAGIC_ADDRESS, destination=bytes.fromhex("027477697202"))
    bad_version = bytearray(request(READ, 2, MAGIC_ADDRESS))
    bad_version[14] = 2
    bad_opcode = bytearray(request(READ, 3, MAGIC_ADDRESS))
    bad_opcode[15] = 0x81       # a reply, not a request
    ipv4 = bytearray(request(READ, 4, MAGIC_ADDRESS))
    ipv4[12:14] = b"\x08\x00"
    replies, _, _, count = run([other_card, bytes(bad_version), bytes(bad_opcode), bytes(ipv4), good])
    assert count == 1
    assert [decode_reply(f)[2] for f in replies] == [ManagementRequest(READ, 7, MAGIC_ADDRESS, MAGIC)]


def test_reply_latency_is_two_cycles():
    """The docstring's Latency: the reply's first word is offered 2 cycles after the request's
    last word is taken (reads and writes alike)."""
    frames = [request(READ, 1, MAGIC_ADDRESS), request(WRITE, 2, SCRATCH_ADDRESS, 5)]
    replies, last_taken, first_offered, _ = run(frames)
    assert len(replies) == 2
    latencies = [offered - taken for taken, offered in zip(last_taken, first_offered)]
    # READ waits one cycle more for the bank's read data.
    assert latencies == [3, 2]


def test_frame_layout_round_trip_and_errors():
    """protocols/management.py, which the port slices by: bytes at their offsets, bad values refused."""
    from tickwire.protocols.layout import LayoutError
    from tickwire.protocols.management import (MANAGEMENT_ETHERTYPE, decode_request, encode_reply)
    frame = request(WRITE, 0x1234, 0x0ABC, 0xDEADBEEF)
    assert frame == (CARD_MAC + HOST_MAC + MANAGEMENT_ETHERTYPE.to_bytes(2, "big")
                     + bytes.fromhex("01 02 1234 0abc deadbeef"))
    assert decode_request(frame) == (CARD_MAC, HOST_MAC, ManagementRequest(WRITE, 0x1234, 0x0ABC, 0xDEADBEEF))
    reply = encode_reply(ManagementRequest(READ, 9, 3), 77, destination=HOST_MAC, source=CARD_MAC)
    assert len(reply) == MIN_FRAME_LENGTH and reply[15] == 0x81
    assert decode_reply(reply) == (HOST_MAC, CARD_MAC, ManagementRequest(READ, 9, 3, 77))
    with pytest.raises(LayoutError, match="not a management reply"):
        decode_reply(frame)
    with pytest.raises(LayoutError, match="not a management request"):
        decode_request(reply)
    with pytest.raises(LayoutError, match="opcode must be READ"):
        ManagementRequest(3, 0, 0)
    with pytest.raises(LayoutError, match="address must fit 2 bytes, not 65536"):
        ManagementRequest(READ, 0, 0x10000)
    with pytest.raises(LayoutError, match="EtherType 0x0800"):
        decode_reply(frame[:12] + b"\x08\x00" + frame[14:])
    with pytest.raises(LayoutError, match="management version 2"):
        decode_request(frame[:14] + b"\x02" + frame[15:])
    with pytest.raises(LayoutError, match="at least 24 bytes, not 20"):
        decode_request(frame[:20])
