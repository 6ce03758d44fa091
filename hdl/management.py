"""Management port: register requests and the event stream over Ethernet (EtherType 0x88B5,
version 2, :mod:`tickwire.protocols.management`), on the register bus."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..protocols.events import RECORD_BYTES
from ..protocols.management import (APPLIED, DUPLICATE, EVENT_HEADER_LENGTH, EVENTS, FRAME_LENGTH,
                                    MANAGEMENT_ETHERTYPE, MANAGEMENT_VERSION, PAYLOAD_FIELDS, READ,
                                    REPLY, WRITE)
from ..protocols.net import ETHERNET_HEADER_LENGTH
from .csr import CsrBusSignature
from .events import event_record_layout
from .packet import packet_layout

__all__ = ["ManagementPort"]

_HEADER = ETHERNET_HEADER_LENGTH
#: Bytes of an event frame with one record (54: the MAC pads it to 60).
EVENT_FRAME_LENGTH = _HEADER + EVENT_HEADER_LENGTH + RECORD_BYTES


def _frame_byte(words, offset):
    """Byte ``offset`` of a frame held as a list of 64-bit words (byte 0 in bits [7:0])."""
    return words[offset // 8][8 * (offset % 8):8 * (offset % 8) + 8]


def _be(words, offset, size):
    """The big-endian field of ``size`` bytes at ``offset``."""
    return Cat(*reversed([_frame_byte(words, offset + k) for k in range(size)]))


def _be_bytes(value, size):
    """``value`` as ``size`` bytes in wire order (most significant first), byte 0 lowest."""
    return [value.word_select(size - 1 - k, 8) for k in range(size)]


class ManagementPort(wiring.Component):
    """Answers register requests (EtherType 0x88B5, version 2) on the register bus and sends the
    card's event records as event frames.

    A read strobes ``csr.r_stb`` and replies with ``csr.r_data``; a write strobes ``csr.w_stb``
    and echoes the value. The port keeps the last request it applied (requester MAC, sequence,
    opcode, address, data) and the value it replied; the same request again is answered from
    that cache with status DUPLICATE, without a bus access, so a retried write is applied once.
    Each event record becomes one event frame (one record, ``frame_sequence`` counting from 0) to
    the MAC address of the last requester (broadcast before the first request). Between frames,
    a waiting event goes before the next request.

    Parameters
    ----------
    mac_address : int
        The card's MAC address (48 bits); requests to it or to broadcast are taken.
    addr_width : int
        Width of the register bus's word address (the request's 16-bit address is cut to it).

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        Received frames without FCS (from a ``MacRx``).
    o_stream : Out(stream.Signature(packet_layout()))
        Reply and event frames without FCS (to a ``MacTx``, which pads them).
    i_events : In(stream.Signature(event_record_layout))
        Event records (from the appliance's ``o_events``); left unconnected, no event is sent.
    csr : Out(CsrBusSignature(addr_width))
    requests : Out(32)
        Requests answered, duplicates included.
    duplicates : Out(32)
        Requests answered from the cache.
    event_frames : Out(32)
        Event frames sent.

    Latency
    -------
    The reply's first word is offered 2 cycles (write, duplicate) or 3 cycles (read: one more
    for the register bus's read data) after the request frame's last word is taken; an event
    frame's first word 2 cycles after its record is taken (tests/hdl/test_management.py,
    ``test_latency``).
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
            "i_events": In(stream.Signature(event_record_layout)),
            "csr": Out(CsrBusSignature(addr_width)),
            "requests": Out(32),
            "duplicates": Out(32),
            "event_frames": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        n_words = (FRAME_LENGTH + 7) // 8               # words that hold the whole request: 4
        out_words = (EVENT_FRAME_LENGTH + 7) // 8       # the longest frame sent: 7
        words = [Signal(64, name=f"word{k}") for k in range(n_words)]
        index = Signal(range(n_words + 1))
        length = Signal(16)
        requests, duplicates, event_frames = Signal(32), Signal(32), Signal(32)
        m.d.comb += [self.requests.eq(requests), self.duplicates.eq(duplicates),
                     self.event_frames.eq(event_frames)]

        mac = Const(int.from_bytes(self.mac_address.to_bytes(6, "big"), "little"), 48)
        broadcast = Const((1 << 48) - 1, 48)
        ethertype_wire = Const(int.from_bytes(MANAGEMENT_ETHERTYPE.to_bytes(2, "big"), "little"), 16)
        dst = Cat(*[_frame_byte(words, k) for k in range(6)])
        src = Cat(*[_frame_byte(words, 6 + k) for k in range(6)])

        def field(name):
            offset, size = PAYLOAD_FIELDS[name]
            return _be(words, _HEADER + offset, size)
        opcode, sequence, address, data = (field(n) for n in ("opcode", "sequence", "address", "data"))

        take = Signal()
        m.d.comb += take.eq((_be(words, 12, 2) == MANAGEMENT_ETHERTYPE)
                            & (field("version") == MANAGEMENT_VERSION)
                            & ((opcode == READ) | (opcode == WRITE)) & (length >= FRAME_LENGTH)
                            & ((dst == mac) | (dst == broadcast)))

        # The one-request window: the last request applied and the value of its reply.
        cached = Signal()
        cached_src, cached_sequence = Signal(48), Signal(16)
        cached_opcode, cached_address, cached_data = Signal(8), Signal(16), Signal(32)
        cached_value = Signal(32)
        duplicate = Signal()
        m.d.comb += duplicate.eq(cached & (cached_src == src) & (cached_sequence == sequence)
                                 & (cached_opcode == opcode) & (cached_address == address)
                                 & (cached_data == data))

        peer = Signal(48, init=(1 << 48) - 1)       # where event frames go
        frame_sequence = Signal(32)
        value = Signal(32)
        status = Signal(8)
        record = Signal(8 * RECORD_BYTES)
        out = [Signal(64, name=f"out{k}") for k in range(out_words)]
        out_last = Signal(range(out_words))         # index of the frame's last word
        out_length = Signal(16)
        out_index = Signal(range(out_words))

        def load(frame_bytes, total):
            flat = Cat(*frame_bytes)
            assert len(flat) == 8 * total
            stmts = [out[k].eq(flat[64 * k:64 * k + 64] if 64 * k < len(flat) else 0)
                     for k in range(out_words)]
            return stmts + [out_index.eq(0), out_last.eq((total + 7) // 8 - 1),
                            out_length.eq(total)]

        event_waiting = Signal()
        m.d.comb += event_waiting.eq((index == 0) & self.i_events.valid)

        with m.FSM():
            with m.State("RECEIVE"):
                # Waits for a frame's words (keeping the first few) or, between frames, a record.
                m.d.comb += [self.i_stream.ready.eq(~event_waiting),
                             self.i_events.ready.eq(event_waiting)]
                with m.If(event_waiting):
                    m.d.sync += record.eq(self.i_events.payload.data)
                    m.next = "EVENT"
                with m.Elif(self.i_stream.valid):
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
                # Checks the request: a retry of the cached one, a write, a read, or not ours.
                m.d.comb += self.csr.addr.eq(address)
                with m.If(take):
                    m.d.sync += peer.eq(src)
                    with m.If(duplicate):
                        m.d.sync += [value.eq(cached_value), status.eq(DUPLICATE),
                                     duplicates.eq(duplicates + 1)]
                        m.next = "REPLY"
                    with m.Else():
                        m.d.sync += [status.eq(APPLIED), cached.eq(1), cached_src.eq(src),
                                     cached_sequence.eq(sequence), cached_opcode.eq(opcode),
                                     cached_address.eq(address), cached_data.eq(data)]
                        with m.If(opcode == WRITE):
                            m.d.comb += [self.csr.w_stb.eq(1), self.csr.w_data.eq(data)]
                            m.d.sync += value.eq(data)
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
                # Builds the reply: swapped addresses, the opcode with REPLY set, value, status.
                reply = [src, mac, ethertype_wire, Const(MANAGEMENT_VERSION, 8), opcode | REPLY,
                         *_be_bytes(sequence, 2), *_be_bytes(address, 2), *_be_bytes(value, 4),
                         status, Const(0, 8)]
                m.d.sync += load(reply, FRAME_LENGTH)
                m.d.sync += [requests.eq(requests + 1), cached_value.eq(value)]
                m.next = "SEND"
            with m.State("EVENT"):
                # Builds an event frame of the record taken.
                frame = [peer, mac, ethertype_wire, Const(MANAGEMENT_VERSION, 8),
                         Const(EVENTS, 8), Const(0, 8), Const(1, 8), *_be_bytes(frame_sequence, 4),
                         record]
                m.d.sync += load(frame, EVENT_FRAME_LENGTH)
                m.d.sync += [frame_sequence.eq(frame_sequence + 1),
                             event_frames.eq(event_frames + 1)]
                m.next = "SEND"
            with m.State("SEND"):
                # Offers the frame's words until the last is taken.
                o = self.o_stream
                at_last = out_index == out_last
                m.d.comb += [o.valid.eq(1), o.payload.length.eq(out_length),
                             o.payload.last.eq(at_last),
                             o.payload.nbytes.eq(Mux(at_last, out_length - 8 * out_last, 8))]
                with m.Switch(out_index):
                    for k in range(out_words):
                        with m.Case(k):
                            m.d.comb += o.payload.data.eq(out[k])
                with m.If(o.ready):
                    m.d.sync += out_index.eq(out_index + 1)
                    with m.If(at_last):
                        m.next = "RECEIVE"
        return m
