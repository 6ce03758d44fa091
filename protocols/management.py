"""Register access and card events over Ethernet: frames of EtherType 0x88B5, version 2.

What a host speaks to a card's management port when Ethernet is its link (the ECPIX-5 board, the
``ethmgmt`` and ``dpdk`` drivers), answered in gateware by
``tickwire.hdl.management.ManagementPort`` and by the simulated card's bridge
(``tickwire.sim.mgmt_bridge``); ``tickwire.sim.management_model`` is the reference model.

Every frame is Ethernet II, EtherType 0x88B5 (IEEE 802 local experimental EtherType 1), with this
payload, big-endian. Register request (host to card) and reply (card to host)::

    offset  size  field     meaning
    0       1     version   MANAGEMENT_VERSION (2); frames of another version are ignored
    1       1     opcode    READ (1) or WRITE (2); the reply has REPLY (0x80) set as well
    2       2     sequence  chosen by the host, copied into the reply
    4       2     address   32-bit word address on the register bus (host/registers.json)
    6       4     data      write: the value; reply: the value read (write: the value written)
    10      1     status    reply: APPLIED (0), or DUPLICATE (1): answered from the reply cache
    11      1     reserved  0

Sequence numbers and acknowledgements: the reply is the acknowledgement. The card keeps one
window: the requester's MAC address, sequence, opcode, address and data of the last request it
applied, and the reply it sent. A request equal to that one in all five is a retry (its request
or its reply was lost): the card sends the cached reply again with status DUPLICATE and does not
touch the register bus, so a write is never applied twice. The host retries a request it got no
reply to with the same sequence, and uses the next sequence (mod 2**16) for a new request; it
starts from a random sequence so that a new host process does not meet the cached request of the
previous one.

Event frame (card to host), the card's event stream::

    offset  size  field           meaning
    0       1     version         MANAGEMENT_VERSION (2)
    1       1     opcode          EVENTS (0x40)
    2       2     count           event records that follow (1..EVENTS_PER_FRAME)
    4       4     frame_sequence  event frames sent by the card since reset, from 0, mod 2**32
    8       32*n  records         event records, :mod:`tickwire.protocols.events` (little-endian)

Event frames go to the MAC address of the last requester (broadcast before the first request).
``frame_sequence`` counts frames, so the host sees a lost frame as a gap, counts the frames it
missed and logs them; the records' own ``sequence`` numbers say which events went with them.

The card pads what it sends to the Ethernet minimum (60 bytes without FCS); frames with a bad FCS
never reach the port; frames of another EtherType, version, opcode or destination, or shorter than
their layout, are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import RECORD_BYTES, Event, EventError, unpack_many
from .layout import F, LayoutError, Message
from .net import ETHERNET, ETHERNET_HEADER_LENGTH, MIN_FRAME_LENGTH

__all__ = ["MANAGEMENT_ETHERTYPE", "MANAGEMENT_VERSION", "READ", "WRITE", "REPLY", "EVENTS",
           "OPCODES", "APPLIED", "DUPLICATE", "STATUSES", "MANAGEMENT", "PAYLOAD_FIELDS",
           "PAYLOAD_LENGTH", "FRAME_LENGTH", "EVENT_HEADER", "EVENT_FIELDS",
           "EVENT_HEADER_LENGTH", "EVENTS_PER_FRAME", "BROADCAST", "ADDRESS_LIMIT",
           "SEQUENCE_MODULUS", "FRAME_SEQUENCE_MODULUS", "ManagementRequest", "ManagementReply",
           "EventFrame", "encode_request", "decode_request", "encode_reply", "decode_reply",
           "encode_events", "decode_events", "frame_kind"]

MANAGEMENT_ETHERTYPE = 0x88B5
MANAGEMENT_VERSION = 2
READ = 1
WRITE = 2
REPLY = 0x80
EVENTS = 0x40
OPCODES = {READ: "read", WRITE: "write"}
APPLIED = 0
DUPLICATE = 1
STATUSES = {APPLIED: "applied", DUPLICATE: "duplicate"}
BROADCAST = b"\xff" * 6

#: Register request and reply: the payload after the Ethernet header.
MANAGEMENT = Message("Management Request", "", (
    F("version", 0, 1), F("opcode", 1, 1), F("sequence", 2, 2), F("address", 4, 2),
    F("data", 6, 4), F("status", 10, 1), F("reserved", 11, 1)))
#: Payload fields: name -> (offset, bytes). The gateware slices the frame by these.
PAYLOAD_FIELDS = {f.name: (f.offset, f.width) for f in MANAGEMENT.fields}
PAYLOAD_LENGTH = MANAGEMENT.length                          # 12
FRAME_LENGTH = ETHERNET_HEADER_LENGTH + PAYLOAD_LENGTH      # 26, padded to 60 on the wire
#: Word addresses the 2-byte address field reaches.
ADDRESS_LIMIT = 1 << (8 * MANAGEMENT["address"].width)
SEQUENCE_MODULUS = 1 << (8 * MANAGEMENT["sequence"].width)

#: Event frame: its header after the Ethernet header; the records follow.
EVENT_HEADER = Message("Management Events", "", (
    F("version", 0, 1), F("opcode", 1, 1), F("count", 2, 2), F("frame_sequence", 4, 4)))
EVENT_FIELDS = {f.name: (f.offset, f.width) for f in EVENT_HEADER.fields}
EVENT_HEADER_LENGTH = EVENT_HEADER.length                   # 8
#: Records in one frame of at most 1500 bytes of payload.
EVENTS_PER_FRAME = (1500 - EVENT_HEADER_LENGTH) // RECORD_BYTES      # 46
FRAME_SEQUENCE_MODULUS = 1 << (8 * EVENT_HEADER["frame_sequence"].width)


def _check_fits(name: str, value: object, width: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 8 * width:
        raise LayoutError(f"{name} must fit {width} bytes, not {value!r}")


@dataclass(frozen=True)
class ManagementRequest:
    """One request: ``opcode`` READ or WRITE, ``sequence``, word ``address``, ``data`` (writes)."""

    opcode: int
    sequence: int
    address: int
    data: int = 0

    def __post_init__(self) -> None:
        if self.opcode not in OPCODES:
            raise LayoutError(f"opcode must be READ ({READ}) or WRITE ({WRITE}), not {self.opcode!r}")
        for name in ("sequence", "address", "data"):
            _check_fits(name, getattr(self, name), MANAGEMENT[name].width)


@dataclass(frozen=True)
class ManagementReply:
    """One reply: what it answers (``opcode`` without REPLY, ``sequence``, ``address``), the
    value (``data``) and ``status`` (APPLIED or DUPLICATE)."""

    opcode: int
    sequence: int
    address: int
    data: int
    status: int = APPLIED

    def __post_init__(self) -> None:
        ManagementRequest(self.opcode, self.sequence, self.address, self.data)
        if self.status not in STATUSES:
            raise LayoutError(f"status must be APPLIED (0) or DUPLICATE (1), not {self.status!r}")

    def answers(self, request: ManagementRequest) -> bool:
        return (self.opcode, self.sequence, self.address) == (request.opcode, request.sequence,
                                                              request.address)


@dataclass(frozen=True)
class EventFrame:
    """A decoded event frame: its ``frame_sequence`` and its events."""

    frame_sequence: int
    events: tuple[Event, ...]


def _mac(value: bytes, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 6:
        raise LayoutError(f"{what} must be 6 bytes, not {value!r}")
    return bytes(value)


def _header(destination: bytes, source: bytes) -> bytes:
    return ETHERNET.pack(destination_address=int.from_bytes(_mac(destination, "destination"), "big"),
                         source_address=int.from_bytes(_mac(source, "source"), "big"),
                         ethertype=MANAGEMENT_ETHERTYPE)


def _decode(frame: bytes, length: int) -> tuple[bytes, bytes, bytes]:
    """(destination, source, payload) of a version-2 management frame of at least ``length``."""
    if len(frame) < ETHERNET_HEADER_LENGTH + 2:
        raise LayoutError(f"a management frame has at least {ETHERNET_HEADER_LENGTH + 2} bytes, "
                          f"not {len(frame)}")
    header = ETHERNET.unpack(frame)
    if header["ethertype"] != MANAGEMENT_ETHERTYPE:
        raise LayoutError(f"not a management frame: EtherType 0x{header['ethertype']:04x}")
    payload = bytes(frame[ETHERNET_HEADER_LENGTH:])
    if payload[0] != MANAGEMENT_VERSION:
        raise LayoutError(f"management version {payload[0]}, not {MANAGEMENT_VERSION}")
    if len(frame) < length:
        raise LayoutError(f"this management frame has at least {length} bytes, not {len(frame)}")
    return bytes(frame[:6]), bytes(frame[6:12]), payload


def frame_kind(frame: bytes) -> str | None:
    """``"request"``, ``"reply"``, ``"events"`` for a version-2 management frame (by its opcode
    alone), else None."""
    if len(frame) < ETHERNET_HEADER_LENGTH + 2 or frame[12:14] != MANAGEMENT_ETHERTYPE.to_bytes(2, "big") \
            or frame[14] != MANAGEMENT_VERSION:
        return None
    opcode = frame[15]
    if opcode in OPCODES:
        return "request"
    if opcode & REPLY and opcode & ~REPLY in OPCODES:
        return "reply"
    return "events" if opcode == EVENTS else None


def encode_request(request: ManagementRequest, *, destination: bytes, source: bytes) -> bytes:
    """A request frame without FCS (26 bytes; the sender pads it)."""
    return _header(destination, source) + MANAGEMENT.pack(
        version=MANAGEMENT_VERSION, opcode=request.opcode, sequence=request.sequence,
        address=request.address, data=request.data)


def decode_request(frame: bytes) -> tuple[bytes, bytes, ManagementRequest]:
    """(destination, source, request) of a request frame without FCS; ``LayoutError`` if it is
    none (a reply, an event frame, another EtherType or version, an unknown opcode, too short)."""
    destination, source, payload = _decode(frame, FRAME_LENGTH)
    f = MANAGEMENT.unpack(payload)
    if f["opcode"] not in OPCODES:
        raise LayoutError(f"not a management request: opcode 0x{f['opcode']:02x}")
    return destination, source, ManagementRequest(f["opcode"], f["sequence"], f["address"], f["data"])


def encode_reply(request: ManagementRequest, value: int, *, destination: bytes, source: bytes,
                 status: int = APPLIED) -> bytes:
    """The reply to ``request`` carrying ``value``, padded to the Ethernet minimum, without FCS."""
    reply = ManagementReply(request.opcode, request.sequence, request.address, value, status)
    frame = _header(destination, source) + MANAGEMENT.pack(
        version=MANAGEMENT_VERSION, opcode=reply.opcode | REPLY, sequence=reply.sequence,
        address=reply.address, data=reply.data, status=reply.status)
    return frame.ljust(MIN_FRAME_LENGTH, b"\0")


def decode_reply(frame: bytes) -> tuple[bytes, bytes, ManagementReply]:
    """(destination, source, reply) of a reply frame without FCS; ``LayoutError`` if it is none."""
    destination, source, payload = _decode(frame, FRAME_LENGTH)
    f = MANAGEMENT.unpack(payload)
    if not f["opcode"] & REPLY or f["opcode"] & ~REPLY not in OPCODES:
        raise LayoutError(f"not a management reply: opcode 0x{f['opcode']:02x}")
    return destination, source, ManagementReply(f["opcode"] & ~REPLY, f["sequence"], f["address"],
                                                f["data"], f["status"])


def encode_events(frame_sequence: int, records: list[bytes] | tuple[bytes, ...], *,
                  destination: bytes, source: bytes) -> bytes:
    """An event frame of ``records`` (32-byte event records, 1..EVENTS_PER_FRAME), padded to the
    Ethernet minimum, without FCS."""
    _check_fits("frame_sequence", frame_sequence, EVENT_HEADER["frame_sequence"].width)
    if not 1 <= len(records) <= EVENTS_PER_FRAME:
        raise LayoutError(f"an event frame carries 1 to {EVENTS_PER_FRAME} records, not "
                          f"{len(records)}")
    for record in records:
        if len(record) != RECORD_BYTES:
            raise LayoutError(f"an event record is {RECORD_BYTES} bytes, not {len(record)}")
    frame = _header(destination, source) + EVENT_HEADER.pack(
        version=MANAGEMENT_VERSION, opcode=EVENTS, count=len(records),
        frame_sequence=frame_sequence) + b"".join(bytes(r) for r in records)
    return frame.ljust(MIN_FRAME_LENGTH, b"\0")


def decode_events(frame: bytes) -> tuple[bytes, bytes, EventFrame]:
    """(destination, source, event frame) of an event frame without FCS; ``LayoutError`` if it is
    none, is shorter than its count says, or holds a record that is not an event."""
    destination, source, payload = _decode(frame, ETHERNET_HEADER_LENGTH + EVENT_HEADER_LENGTH)
    f = EVENT_HEADER.unpack(payload)
    if f["opcode"] != EVENTS:
        raise LayoutError(f"not a management event frame: opcode 0x{f['opcode']:02x}")
    end = EVENT_HEADER_LENGTH + f["count"] * RECORD_BYTES
    if not 1 <= f["count"] <= EVENTS_PER_FRAME or len(payload) < end:
        raise LayoutError(f"event frame {f['frame_sequence']}: {f['count']} records do not fit "
                          f"its {len(payload)}-byte payload")
    try:
        events = unpack_many(payload[EVENT_HEADER_LENGTH:end])
    except EventError as e:
        raise LayoutError(f"event frame {f['frame_sequence']}: {e}") from None
    return destination, source, EventFrame(f["frame_sequence"], tuple(events))
