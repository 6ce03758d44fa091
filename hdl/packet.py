"""Packet stream payload shared by the 64-bit datapath stages."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["packet_layout", "byte_lane", "be_value", "MAX_PACKET_LENGTH", "PacketGather"]

#: Longest packet (bytes) a ``length`` field has to carry.
MAX_PACKET_LENGTH = 0xFFFF


def packet_layout(data_width: int = 64) -> data.StructLayout:
    """Payload of a packet stream beat.

    ``data`` holds ``data_width // 8`` bytes, the first byte of the packet in bits [7:0].
    Every beat but the last is full; ``nbytes`` (1..bytes per beat) says how many bytes of the
    last beat are valid. ``length`` is the whole packet's length in bytes, the same on every beat
    (it is known up front because the MAC stores and forwards, and headers carry it).
    """
    if data_width not in (64,):
        raise ValueError(f"data_width must be 64, not {data_width!r}")
    return data.StructLayout({
        "data": data_width,
        "nbytes": 4,
        "last": 1,
        "length": 16,
    })


def byte_lane(value, k: int):
    """Byte ``k`` of a little-endian-laned vector (byte 0 in bits [7:0])."""
    return value[8 * k:8 * k + 8]


def be_value(byte_list):
    """The big-endian integer formed by a list of byte expressions (first byte most significant)."""
    return Cat(*reversed(list(byte_list)))


def ascii_const(text: str, width: int) -> Const:
    """An alpha field as a constant: bytes in wire order, first character in bits [7:0]."""
    raw = text.encode("ascii").ljust(width, b" ")
    return Const(int.from_bytes(raw, "little"), 8 * width)


class PacketGather(wiring.Component):
    """Collects a packet stream into one payload record (``data`` + ``length``), for stages that
    take a whole short payload at once (``tickwire.hdl.net.NetTx``).

    Parameters
    ----------
    max_payload : int
        Largest packet in bytes; longer packets are cut there (``length`` says so).

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
    o_stream : Out(stream.Signature(data.StructLayout({"data": 8 * max_payload, "length": 16})))

    Latency
    -------
    The record is valid the cycle after the packet's last beat is taken (tests/hdl/test_packet_gather.py).
    """

    def __init__(self, *, max_payload: int):
        if not 1 <= max_payload <= 1472:
            raise ValueError(f"max_payload must be 1..1472, not {max_payload!r}")
        self.max_payload = max_payload
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(data.StructLayout({"data": 8 * max_payload, "length": 16}))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        beats = (self.max_payload + 7) // 8
        buffer = Signal(64 * beats)
        index = Signal(range(beats + 1))
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready):
            with m.Switch(index):
                for k in range(beats):
                    with m.Case(k):
                        m.d.sync += buffer.word_select(k, 64).eq(i.payload.data)
            m.d.sync += index.eq(Mux(index == beats, index, index + 1))
            with m.If(i.payload.last):
                m.d.sync += [index.eq(0), o.valid.eq(1),
                             o.payload.length.eq(Mux(i.payload.length > self.max_payload, self.max_payload,
                                                     i.payload.length))]
        # The bytes of the beat taken with ``last`` land in ``buffer`` on the same edge as valid.
        m.d.comb += o.payload.data.eq(buffer[:8 * self.max_payload])
        return m
