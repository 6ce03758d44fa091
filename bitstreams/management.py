"""Register access over Ethernet: the gateware that answers EtherType 0x88B5 requests (frame
layout in :mod:`tickwire.protocols.management`) on the register bus."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from ..hdl.csr import CsrBusSignature
from ..hdl.packet import packet_layout
from ..protocols.management import (FRAME_LENGTH, MANAGEMENT_ETHERTYPE, MANAGEMENT_VERSION,
                                    PAYLOAD_FIELDS, READ, REPLY, WRITE)
from ..protocols.net import ETHERNET_HEADER_LENGTH

__all__ = ["ManagementPort"]

_HEADER = ETHERNET_HEADER_LENGTH


def _frame_byte(words, offset):
    """Byte ``offset`` of a frame held as a list of 64-bit words."""
    return words[offset // 8][8 * (offset % 8):8 * (offset % 8) + 8]


def _be(words, offset, size):
    return Cat(*reversed([_frame_byte(words, offset + k) for k in range(size)]))


class ManagementPort(wiring.Component):
    """Answers register requests (EtherType 0x88B5, :mod:`tickwire.protocols.management`) on the
    register bus: a read strobes ``r_stb`` and returns ``r_data``; a write strobes ``w_stb``.

    Parameters
    ----------
    mac_address : int
        The card's MAC address (48 bits); requests to it or to broadcast are taken.
    addr_width : int
        Width of the register bus's word address.

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        Received frames without FCS (from a ``MacRx``).
    o_stream : Out(stream.Signature(packet_layout()))
        Reply frames without FCS (to a ``MacTx``, which pads them).
    csr : Out(CsrBusSignature(addr_width))
    requests : Out(32)
        Requests answered.

    Latency
    -------
    The reply's first word is offered 2 cycles (write) or 3 cycles (read: one more for the
    register bus's read data) after the request frame's last word is taken
    (tests/bitstreams/test_management.py).
    """

    def __init__(self, *, mac_address: int, addr_width: int = 12):
        if not 0 <= mac_address < 1 << 48 or mac_address >> 40 & 1:
            raise ValueError(f"mac_address must be a 48-bit unicast address, not {mac_address!r}")
        if not 1 <= addr_width <= 16:
            raise ValueError(f"addr_width must be 1..16, not {addr_width!r}")
        self.mac_address = mac_address
        self.addr_width = addr_width
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(packet_layout())),
            "csr": Out(CsrBusSignature(addr_width)),
            "requests": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        n_words = (FRAME_LENGTH + 7) // 8     # words that hold the whole request
        words = [Signal(64, name=f"word{k}") for k in range(n_words)]
        index = Signal(range(n_words + 1))
        length = Signal(16)
        requests = Signal(32)
        m.d.comb += self.requests.eq(requests)

        mac = self.mac_address.to_bytes(6, "big")
        dst = Cat(*[_frame_byte(words, k) for k in range(6)])
        src = Cat(*[_frame_byte(words, 6 + k) for k in range(6)])
        ethertype = _be(words, 12, 2)

        def field(name):
            offset, size = PAYLOAD_FIELDS[name]
            return _be(words, _HEADER + offset, size)
        opcode = field("opcode")
        take = Signal()
        m.d.comb += take.eq((ethertype == MANAGEMENT_ETHERTYPE) & (field("version") == MANAGEMENT_VERSION)
                            & ((opcode == READ) | (opcode == WRITE)) & (length >= FRAME_LENGTH)
                            & ((dst == int.from_bytes(mac, "little")) | (dst == (1 << 48) - 1)))
        value = Signal(32)
        reply = [Signal(64, name=f"reply{k}") for k in range(n_words)]
        out_index = Signal(range(n_words + 1))

        with m.FSM():
            with m.State("RECEIVE"):
                # Takes a frame's words, keeping the first few, until its last word.
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    p = self.i_stream.payload
                    with m.Switch(index):
                        for k in range(n_words):
                            with m.Case(k):
                                m.d.sync += words[k].eq(p.data)
                    with m.If(index != n_words):
                        m.d.sync += index.eq(index + 1)
                    m.d.sync += length.eq(p.length)
                    with m.If(p.last):
                        m.d.sync += index.eq(0)
                        m.next = "DECIDE"
            with m.State("DECIDE"):
                # Checks the request and starts the register access.
                m.d.comb += self.csr.addr.eq(field("address"))
                with m.If(take):
                    with m.If(opcode == WRITE):
                        m.d.comb += [self.csr.w_stb.eq(1), self.csr.w_data.eq(field("data"))]
                        m.d.sync += value.eq(field("data"))
                        m.next = "REPLY"
                    with m.Else():
                        m.d.comb += self.csr.r_stb.eq(1)
                        m.next = "READ"
                with m.Else():
                    m.next = "RECEIVE"
            with m.State("READ"):
                # The read data is valid the cycle after r_stb.
                m.d.sync += value.eq(self.csr.r_data)
                m.next = "REPLY"
            with m.State("REPLY"):
                # Builds the reply: swapped addresses, the opcode with REPLY set, the value.
                header = Cat(src, Const(int.from_bytes(mac, "little"), 48),
                             Const(int.from_bytes(MANAGEMENT_ETHERTYPE.to_bytes(2, "big"), "little"), 16))
                payload_bytes = [Const(MANAGEMENT_VERSION, 8), opcode | REPLY]
                payload_bytes += [_frame_byte(words, _HEADER + 2 + k) for k in range(4)]
                payload_bytes += [value.word_select(3 - k, 8) for k in range(4)]
                flat = Cat(header, *payload_bytes)
                for k in range(n_words):
                    m.d.sync += reply[k].eq(flat[64 * k:64 * k + 64] if 64 * k < len(flat) else 0)
                m.d.sync += [out_index.eq(0), requests.eq(requests + 1)]
                m.next = "SEND"
            with m.State("SEND"):
                # Offers the reply's words until the last is taken.
                total = FRAME_LENGTH
                o = self.o_stream
                m.d.comb += [o.valid.eq(1), o.payload.length.eq(total),
                             o.payload.last.eq(out_index == n_words - 1),
                             o.payload.nbytes.eq(Mux(out_index == n_words - 1, total - 8 * (n_words - 1), 8))]
                with m.Switch(out_index):
                    for k in range(n_words):
                        with m.Case(k):
                            m.d.comb += o.payload.data.eq(reply[k])
                with m.If(o.ready):
                    m.d.sync += out_index.eq(out_index + 1)
                    with m.If(out_index == n_words - 1):
                        m.next = "RECEIVE"
        return m

