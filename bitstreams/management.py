"""Register access over Ethernet: request and reply frames of EtherType 0x88B5, and the gateware
that answers them on the register bus.

The protocol (what a host speaks to an ECP5 card with a single Ethernet port):

* An Ethernet II frame to the card's MAC address (or broadcast) with EtherType 0x88B5 (IEEE
  802 local experimental EtherType 1) and this payload, big-endian:

  ======  =====  ===========  ============================================================
  offset  bytes  field        meaning
  ======  =====  ===========  ============================================================
  0       1      version      ``MANAGEMENT_VERSION`` (1); other versions are ignored
  1       1      opcode       1 read, 2 write; the reply has 0x80 set
  2       2      sequence     copied into the reply, so the host matches replies
  4       2      address      32-bit word address on the register bus (``host/registers.json``)
  6       4      data         write: the value; reply: the value read (write: the value written)
  ======  =====  ===========  ============================================================

* The card answers every request it takes with one reply frame from its own MAC address to the
  requester's, padded to the Ethernet minimum. Frames with a bad FCS never reach the port (its
  own ``MacRx`` drops them); requests with another version or opcode get no reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from ..hdl.csr import CsrBusSignature
from ..hdl.packet import packet_layout

__all__ = ["MANAGEMENT_ETHERTYPE", "MANAGEMENT_VERSION", "READ", "WRITE", "REPLY",
           "PAYLOAD_FIELDS", "ManagementRequest", "encode_request", "decode_reply", "ManagementPort"]

MANAGEMENT_ETHERTYPE = 0x88B5
MANAGEMENT_VERSION = 1
READ = 1
WRITE = 2
REPLY = 0x80
#: Payload fields after the EtherType: name -> (offset, bytes). The gateware slices by these too.
PAYLOAD_FIELDS = {"version": (0, 1), "opcode": (1, 1), "sequence": (2, 2), "address": (4, 2),
                  "data": (6, 4)}
PAYLOAD_LENGTH = 10
_HEADER = 14   # destination, source, EtherType


@dataclass(frozen=True)
class ManagementRequest:
    opcode: int
    sequence: int
    address: int
    data: int = 0


def _payload(opcode: int, sequence: int, address: int, data: int) -> bytes:
    values = {"version": MANAGEMENT_VERSION, "opcode": opcode, "sequence": sequence,
              "address": address, "data": data}
    out = bytearray(PAYLOAD_LENGTH)
    for name, (offset, size) in PAYLOAD_FIELDS.items():
        if not 0 <= values[name] < 1 << (8 * size):
            raise ValueError(f"{name} must fit {size} bytes, not {values[name]!r}")
        out[offset:offset + size] = values[name].to_bytes(size, "big")
    return bytes(out)


def encode_request(request: ManagementRequest, *, destination: bytes, source: bytes) -> bytes:
    """A request frame without FCS."""
    if request.opcode not in (READ, WRITE):
        raise ValueError(f"opcode must be READ ({READ}) or WRITE ({WRITE}), not {request.opcode!r}")
    return (destination + source + MANAGEMENT_ETHERTYPE.to_bytes(2, "big")
            + _payload(request.opcode, request.sequence, request.address, request.data))


def decode_reply(frame: bytes) -> tuple[bytes, bytes, ManagementRequest]:
    """(destination, source, reply) of a reply frame without FCS; ``ValueError`` if it is none."""
    if len(frame) < _HEADER + PAYLOAD_LENGTH:
        raise ValueError(f"a management reply has at least {_HEADER + PAYLOAD_LENGTH} bytes, "
                         f"not {len(frame)}")
    if int.from_bytes(frame[12:14], "big") != MANAGEMENT_ETHERTYPE:
        raise ValueError(f"not a management frame: EtherType 0x{frame[12:14].hex()}")
    p = frame[_HEADER:]
    f = {name: int.from_bytes(p[o:o + s], "big") for name, (o, s) in PAYLOAD_FIELDS.items()}
    if f["version"] != MANAGEMENT_VERSION or not f["opcode"] & REPLY:
        raise ValueError(f"not a version-{MANAGEMENT_VERSION} reply: version {f['version']}, "
                         f"opcode 0x{f['opcode']:02x}")
    return frame[:6], frame[6:12], ManagementRequest(f["opcode"] & ~REPLY, f["sequence"],
                                                     f["address"], f["data"])


def _frame_byte(words, offset):
    """Byte ``offset`` of a frame held as a list of 64-bit words."""
    return words[offset // 8][8 * (offset % 8):8 * (offset % 8) + 8]


def _be(words, offset, size):
    return Cat(*reversed([_frame_byte(words, offset + k) for k in range(size)]))


class ManagementPort(wiring.Component):
    """Answers register requests (EtherType 0x88B5, see the module) on the register bus.

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
    The reply's first word is offered 2 cycles after the request frame's last word is taken
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
        n_words = (_HEADER + PAYLOAD_LENGTH + 7) // 8     # words that hold the whole request
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
                            & ((opcode == READ) | (opcode == WRITE)) & (length >= _HEADER + PAYLOAD_LENGTH)
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
                total = _HEADER + PAYLOAD_LENGTH
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

