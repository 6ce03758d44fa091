"""Register access over Ethernet: request and reply frames of EtherType 0x88B5.

What a host speaks to a card whose only link is an Ethernet port (the ECPIX-5), answered in
gateware by ``tickwire.bitstreams.management.ManagementPort`` and spoken by the ``ethmgmt``
driver (``tickwire.drivers.ethmgmt``).

An Ethernet II frame to the card's MAC address (or broadcast) with EtherType 0x88B5 (IEEE 802
local experimental EtherType 1) carries this payload, big-endian::

    offset  size  field     meaning
    0       1     version   MANAGEMENT_VERSION (1); requests of another version are ignored
    1       1     opcode    READ (1) or WRITE (2); the reply has REPLY (0x80) set as well
    2       2     sequence  chosen by the host, copied into the reply so replies are matched
    4       2     address   32-bit word address on the register bus (host/registers.json)
    6       4     data      write: the value; reply: the value read (write: the value written)

The card answers every request it takes with one reply frame from its own MAC address to the
requester's, padded to the Ethernet minimum. Frames with a bad FCS never reach the port; requests
with another version, opcode or destination get no reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import F, LayoutError, Message
from .net import ETHERNET, ETHERNET_HEADER_LENGTH, MIN_FRAME_LENGTH

__all__ = ["MANAGEMENT_ETHERTYPE", "MANAGEMENT_VERSION", "READ", "WRITE", "REPLY", "OPCODES",
           "MANAGEMENT", "PAYLOAD_FIELDS", "PAYLOAD_LENGTH", "FRAME_LENGTH", "BROADCAST",
           "ADDRESS_LIMIT", "ManagementRequest", "encode_request", "decode_request",
           "encode_reply", "decode_reply"]

MANAGEMENT_ETHERTYPE = 0x88B5
MANAGEMENT_VERSION = 1
READ = 1
WRITE = 2
REPLY = 0x80
OPCODES = {READ: "read", WRITE: "write"}
BROADCAST = b"\xff" * 6

#: The payload after the Ethernet header.
MANAGEMENT = Message("Management Request", "", (
    F("version", 0, 1), F("opcode", 1, 1), F("sequence", 2, 2), F("address", 4, 2),
    F("data", 6, 4)))
#: Payload fields: name -> (offset, bytes). The gateware slices the frame by these.
PAYLOAD_FIELDS = {f.name: (f.offset, f.width) for f in MANAGEMENT.fields}
PAYLOAD_LENGTH = MANAGEMENT.length                          # 10
FRAME_LENGTH = ETHERNET_HEADER_LENGTH + PAYLOAD_LENGTH      # 24, padded to 60 on the wire
#: Word addresses the 2-byte address field reaches.
ADDRESS_LIMIT = 1 << (8 * MANAGEMENT["address"].width)


@dataclass(frozen=True)
class ManagementRequest:
    """One request (or, decoded from a reply, what it answers): ``opcode`` READ or WRITE."""

    opcode: int
    sequence: int
    address: int
    data: int = 0

    def __post_init__(self) -> None:
        if self.opcode not in OPCODES:
            raise LayoutError(f"opcode must be READ ({READ}) or WRITE ({WRITE}), not {self.opcode!r}")
        for name in ("sequence", "address", "data"):
            width = MANAGEMENT[name].width
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 8 * width:
                raise LayoutError(f"{name} must fit {width} bytes, not {value!r}")


def _mac(value: bytes, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 6:
        raise LayoutError(f"{what} must be 6 bytes, not {value!r}")
    return bytes(value)


def _frame(destination: bytes, source: bytes, opcode: int, request: ManagementRequest,
           data: int) -> bytes:
    header = ETHERNET.pack(destination_address=int.from_bytes(_mac(destination, "destination"), "big"),
                           source_address=int.from_bytes(_mac(source, "source"), "big"),
                           ethertype=MANAGEMENT_ETHERTYPE)
    return header + MANAGEMENT.pack(version=MANAGEMENT_VERSION, opcode=opcode,
                                    sequence=request.sequence, address=request.address, data=data)


def _decode(frame: bytes) -> tuple[bytes, bytes, dict]:
    if len(frame) < FRAME_LENGTH:
        raise LayoutError(f"a management frame has at least {FRAME_LENGTH} bytes, not {len(frame)}")
    header = ETHERNET.unpack(frame)
    if header["ethertype"] != MANAGEMENT_ETHERTYPE:
        raise LayoutError(f"not a management frame: EtherType 0x{header['ethertype']:04x}")
    fields = MANAGEMENT.unpack(frame[ETHERNET_HEADER_LENGTH:])
    if fields["version"] != MANAGEMENT_VERSION:
        raise LayoutError(f"management version {fields['version']}, not {MANAGEMENT_VERSION}")
    return bytes(frame[:6]), bytes(frame[6:12]), fields


def encode_request(request: ManagementRequest, *, destination: bytes, source: bytes) -> bytes:
    """A request frame without FCS (24 bytes; the sender pads it)."""
    return _frame(destination, source, request.opcode, request, request.data)


def decode_request(frame: bytes) -> tuple[bytes, bytes, ManagementRequest]:
    """(destination, source, request) of a request frame without FCS; ``LayoutError`` if it is
    none (a reply, another EtherType or version, an unknown opcode)."""
    destination, source, f = _decode(frame)
    if f["opcode"] not in OPCODES:
        raise LayoutError(f"not a management request: opcode 0x{f['opcode']:02x}")
    return destination, source, ManagementRequest(f["opcode"], f["sequence"], f["address"], f["data"])


def encode_reply(request: ManagementRequest, value: int, *, destination: bytes,
                 source: bytes) -> bytes:
    """The reply to ``request`` carrying ``value``, padded to the Ethernet minimum, without FCS."""
    frame = _frame(destination, source, request.opcode | REPLY, request, value)
    return frame.ljust(MIN_FRAME_LENGTH, b"\0")


def decode_reply(frame: bytes) -> tuple[bytes, bytes, ManagementRequest]:
    """(destination, source, reply) of a reply frame without FCS: the reply's opcode without the
    REPLY bit, its sequence, address and data; ``LayoutError`` if it is none."""
    destination, source, f = _decode(frame)
    if not f["opcode"] & REPLY or f["opcode"] & ~REPLY not in OPCODES:
        raise LayoutError(f"not a management reply: opcode 0x{f['opcode']:02x}")
    return destination, source, ManagementRequest(f["opcode"] & ~REPLY, f["sequence"],
                                                  f["address"], f["data"])
