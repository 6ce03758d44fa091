"""Packet arbiter: several packet streams merged into one, a whole packet at a time."""

from amaranth.hdl import Module, Signal, Cat, Mux
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from .packet import packet_layout

__all__ = ["PacketArbiter"]


class PacketArbiter(wiring.Component):
    """Merges ``n_inputs`` packet streams into one, switching inputs only between packets.

    Among the inputs with a beat waiting, the next packet comes from the first one after the
    input that sent the last packet (round robin, packet by packet). Once an input's beat is
    offered on the output the arbiter stays with that input until its ``last`` beat is taken, so
    packets are never interleaved and an offered beat never changes. The choice is
    combinational: the cycle after one packet's last beat the next packet's first beat is on the
    output, whichever input it comes from (no bubble between packets).

    In the market-data path the inputs are feed line A, feed line B and the host's injection
    port (retransmitted MoldUDP64 datagrams); see docs/pipeline-contract.md, "A/B lines and
    injection".

    Parameters
    ----------
    n_inputs : int
        Number of input streams (at least 1).

    Members
    -------
    i_stream : In(stream.Signature(packet_layout())).array(n_inputs)
        One packet stream per input; ``i_stream[k]`` has priority right after input ``k - 1``.
    o_stream : Out(stream.Signature(packet_layout()))
        The packets of all inputs, each whole.

    Latency
    -------
    0 cycles: a granted input's beat is on the output in the cycle it is offered
    (tests/hdl/test_arbiter.py).
    """

    def __init__(self, *, n_inputs: int):
        if not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(f"n_inputs must be a positive integer, not {n_inputs!r}")
        self.n_inputs = n_inputs
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())).array(n_inputs),
            "o_stream": Out(stream.Signature(packet_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n_inputs
        inputs, o = self.i_stream, self.o_stream

        locked = Signal()                           # an offered packet is not finished yet
        grant = Signal(range(n))                    # the input it comes from
        previous = Signal(range(n), init=n - 1)     # the input of the last finished packet
        choice = Signal(range(n))                   # round-robin pick among waiting inputs
        select = Signal(range(n))

        valids = Cat(s.valid for s in inputs)
        with m.Switch(previous):
            for last in range(n):
                with m.Case(last):
                    order = [(last + 1 + j) % n for j in range(n)]
                    # Later assignments win: the highest-priority waiting input is assigned last.
                    m.d.comb += choice.eq(order[0])
                    for k in reversed(order):
                        with m.If(valids[k]):
                            m.d.comb += choice.eq(k)
        m.d.comb += select.eq(Mux(locked, grant, choice))

        with m.Switch(select):
            for k in range(n):
                with m.Case(k):
                    m.d.comb += [o.valid.eq(inputs[k].valid), o.payload.eq(inputs[k].payload),
                                 inputs[k].ready.eq(o.ready)]

        with m.If(o.valid):
            with m.If(o.ready & o.payload.last):
                m.d.sync += [locked.eq(0), previous.eq(select)]
            with m.Else():
                m.d.sync += [locked.eq(1), grant.eq(select)]
        return m
