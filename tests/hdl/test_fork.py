"""``tickwire.hdl.market_data.fork``: every beat of a stream reaches each sink once, in order,
whatever the sinks' ready patterns; the source moves on only when all have it."""

import random

from amaranth.hdl import Module
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out, Component
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from tickwire.hdl.market_data import fork


class _Fork(Component):
    source: In(stream.Signature(16))
    a: Out(stream.Signature(16))
    b: Out(stream.Signature(16))

    def elaborate(self, platform):
        m = Module()
        fork(m, self.source, (self.a, self.b))
        return m


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=30), st.integers(0, 2**32 - 1),
       st.floats(0.1, 1.0), st.floats(0.1, 1.0), st.floats(0.1, 1.0))
def test_every_beat_to_every_sink_in_order(beats, seed, p_valid, p_a, p_b):
    dut = _Fork()
    rng = random.Random(seed)
    got = {"a": [], "b": []}
    sent = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        pending = list(beats)
        offer = False
        for _ in range(400 * len(beats)):
            # A stream source keeps a beat offered until it is taken.
            offer = bool(pending) and (offer or rng.random() < p_valid)
            ctx.set(dut.source.valid, offer)
            if offer:
                ctx.set(dut.source.payload, pending[0])
            ctx.set(dut.a.ready, rng.random() < p_a)
            ctx.set(dut.b.ready, rng.random() < p_b)
            for name, sink in (("a", dut.a), ("b", dut.b)):
                if ctx.get(sink.valid) and ctx.get(sink.ready):
                    got[name].append(ctx.get(sink.payload))
            if offer and ctx.get(dut.source.ready):
                sent.append(pending.pop(0))
                offer = False
            await ctx.tick()
            if not pending and len(got["a"]) == len(got["b"]) == len(beats):
                break

    sim.add_testbench(tb)
    sim.run()
    assert sent == beats and got["a"] == beats and got["b"] == beats
