"""Card event records and the event ring in host memory: the one definition of both layouts.

The card's event stage writes one fixed-size record per event (an order sent, a risk reject, an
exchange ack, a fill, a cancel, a feed gap, a book that cannot be trusted, a latency timestamp)
into a ring in host memory; the host reads records between its consumer index and the card's
producer index. Everything is little-endian (the byte order of the host's memory and of PCIe).

Record (:data:`RECORD_BYTES` = 32 bytes)::

    offset  size  field
    0       1     type       EventType
    1       1     flags      EventFlag bits
    2       2     aux        per type: reject reason, liquidity flag, cancel reason, ...
    4       4     sequence   event number, counted by the card from 0, wraps at 2**32
    8       8     cycles     core clock cycle of the event (``id.cycles``)
    16      16    payload    per type, :data:`PAYLOADS`

Ring (``entries`` a power of two, at least 2)::

    offset  size  field       written by
    0       4     magic       host   b"TWEV" as a little-endian u32 (RING_MAGIC)
    4       2     version     host   RING_VERSION
    6       2     record_bytes host  RECORD_BYTES
    8       4     entries     host   number of record slots
    12      4     reserved
    16      8     dropped     card   events lost because the ring was full
    64      8     producer    card   records written since the ring was set up
    128     8     consumer    host   records read since the ring was set up
    256     entries * 32      card   records; record i lives in slot i & (entries - 1)

Both indices count up for ever (64-bit) and are reduced modulo ``entries`` only to find a slot,
so ``producer - consumer`` is the number of unread records and the ring is full when that equals
``entries``; a full ring makes the card drop the event and count it in ``dropped``. The card
writes a record, then the producer index; the host reads the producer index, then the records,
then writes the consumer index. The indices sit in cache lines of their own.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, Mapping

__all__ = [
    "EventType", "EventFlag", "Event", "EventError", "RECORD_BYTES", "PAYLOADS", "AUX",
    "pack", "unpack", "unpack_many", "event_table",
    "RING_MAGIC", "RING_VERSION", "RING_HEADER_BYTES", "RING_MAGIC_OFFSET", "RING_DROPPED_OFFSET",
    "RING_PRODUCER_OFFSET", "RING_CONSUMER_OFFSET", "ring_bytes", "ring_slot_offset",
    "pack_ring_header", "unpack_ring_header", "check_entries",
]


class EventError(ValueError):
    """A record or ring that does not follow this layout, or a value that does not fit it."""


class EventType(IntEnum):
    """What happened (record byte 0)."""

    ORDER_SENT = 1      #: an order action left the order port; ``aux``: OUCH type ('O', 'U', ...)
    RISK_REJECT = 2     #: risk refused an order; ``aux`` is the RejectReason
    EXCHANGE_ACK = 3    #: the exchange accepted an order (OUCH Order Accepted)
    FILL = 4            #: an order was executed (OUCH Order Executed); ``aux``: liquidity flag
    CANCEL = 5          #: an order was canceled (OUCH Order Canceled); ``aux``: reason (ASCII)
    GAP = 6             #: the feed's MoldUDP64 sequencer found missing messages
    BOOK_UNTRUSTED = 7  #: the book cannot vouch for a symbol any more; ``aux``: reason code
    LATENCY = 8         #: tick-to-trade timestamps of an order (feed frame in, order frame out)


class EventFlag(IntFlag):
    """Record byte 1."""

    NONE = 0
    HOST = 0x01       #: the order came from the host (order queue), not from the trigger
    RECOVERED = 0x02  #: caused by a message that filled a gap (delivered late)
    LINE_B = 0x04     #: seen on feed line B


RECORD_BYTES = 32
_HEADER = struct.Struct("<BBHIQ")
_HEADER_FIELDS = ("type", "flags", "aux", "sequence", "cycles")

#: Per type: the payload's struct format (little-endian, 16 bytes) and field names; ``_`` fields
#: are padding, written as zero. Prices have 4 implied decimals; sides are ASCII ('B', 'S').
PAYLOADS: Mapping[EventType, tuple[str, tuple[str, ...]]] = {
    EventType.ORDER_SENT: ("<IIIHBB", ("user_ref_num", "quantity", "price", "stock_locate",
                                       "side", "session")),
    EventType.RISK_REJECT: ("<IIHBBHH", ("quantity", "price", "stock_locate", "side", "session",
                                         "slot", "_")),
    EventType.EXCHANGE_ACK: ("<IIQ", ("user_ref_num", "quantity", "order_reference_number")),
    EventType.FILL: ("<IIIB3x", ("user_ref_num", "quantity", "price", "session")),
    EventType.CANCEL: ("<IIB7x", ("user_ref_num", "quantity", "session")),
    EventType.GAP: ("<QI4x", ("sequence_number", "message_count")),
    EventType.BOOK_UNTRUSTED: ("<HHIQ", ("slot", "stock_locate", "_", "_")),
    EventType.LATENCY: ("<QI4x", ("ingress_cycles", "user_ref_num")),
}

#: What ``aux`` holds, per type (absent: zero).
AUX: Mapping[EventType, str] = {
    EventType.ORDER_SENT: "action",
    EventType.RISK_REJECT: "reason",
    EventType.FILL: "liquidity_flag",
    EventType.CANCEL: "reason",
    EventType.BOOK_UNTRUSTED: "reason",
}

_PAYLOAD_STRUCTS = {t: struct.Struct(fmt) for t, (fmt, _) in PAYLOADS.items()}
for _t, _s in _PAYLOAD_STRUCTS.items():
    if _s.size != RECORD_BYTES - _HEADER.size:
        raise AssertionError(f"payload of {_t.name} is {_s.size} bytes, not 16")


@dataclass(frozen=True)
class Event:
    """One decoded record: the header fields and the type's payload fields by name."""

    type: EventType
    cycles: int
    sequence: int = 0
    flags: EventFlag = EventFlag.NONE
    fields: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``type`` by name, flags as a list of names."""
        return {"type": self.type.name.lower(), "cycles": self.cycles, "sequence": self.sequence,
                "flags": [f.name.lower() for f in EventFlag if f and f in self.flags],
                **dict(self.fields)}


def _names(t: EventType) -> tuple[str, ...]:
    names = tuple(n for n in PAYLOADS[t][1] if n != "_")
    return (AUX[t], *names) if t in AUX else names


def pack(event: Event) -> bytes:
    """The 32-byte record of ``event``; every field of its type must be given, and fit."""
    try:
        t = EventType(event.type)
    except ValueError:
        raise EventError(f"unknown event type {event.type!r}") from None
    expected = set(_names(t))
    given = set(event.fields)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise EventError(f"{t.name} event: fields {sorted(expected)} expected"
                         + (f"; missing {missing}" if missing else "")
                         + (f"; unknown {extra}" if extra else ""))
    aux = event.fields[AUX[t]] if t in AUX else 0
    fmt, names = PAYLOADS[t]
    values = [0 if n == "_" else event.fields[n] for n in names]
    try:
        return (_HEADER.pack(t, int(event.flags), aux, event.sequence, event.cycles)
                + _PAYLOAD_STRUCTS[t].pack(*values))
    except struct.error as e:
        raise EventError(f"{t.name} event {dict(event.fields)}, sequence {event.sequence}, "
                         f"cycles {event.cycles}: a value does not fit its field ({e})") from None


def unpack(record: bytes | memoryview, offset: int = 0) -> Event:
    """The event in the 32 bytes of ``record`` from ``offset``."""
    if len(record) - offset < RECORD_BYTES:
        raise EventError(f"event record: {len(record) - offset} bytes, need {RECORD_BYTES}")
    code, flags, aux, sequence, cycles = _HEADER.unpack_from(record, offset)
    try:
        t = EventType(code)
    except ValueError:
        raise EventError(f"event record {sequence}: unknown type {code} "
                         f"(bytes {bytes(record[offset:offset + RECORD_BYTES]).hex()})") from None
    values = _PAYLOAD_STRUCTS[t].unpack_from(record, offset + _HEADER.size)
    fields = {n: v for n, v in zip(PAYLOADS[t][1], values) if n != "_"}
    if t in AUX:
        fields = {AUX[t]: aux, **fields}
    return Event(t, cycles, sequence, EventFlag(flags & sum(EventFlag)), fields)


def unpack_many(data: bytes | memoryview) -> list[Event]:
    """Every record of ``data`` (a multiple of 32 bytes)."""
    if len(data) % RECORD_BYTES:
        raise EventError(f"{len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records")
    return [unpack(data, i) for i in range(0, len(data), RECORD_BYTES)]


def event_table() -> dict[str, Any]:
    """The record layout as byte offsets, for the gateware generator, docs and other languages."""
    header = [{"name": n, "offset": o, "width": w} for n, o, w in
              zip(_HEADER_FIELDS, (0, 1, 2, 4, 8), (1, 1, 2, 4, 8))]
    types = {}
    for t, (fmt, names) in PAYLOADS.items():
        offset, fields, names_left = _HEADER.size, [], iter(names)
        for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt):
            width = struct.calcsize(f"<{count}{code}")
            if code != "x":
                name = next(names_left)
                if name != "_":
                    fields.append({"name": name, "offset": offset, "width": width})
            offset += width
        types[t.name.lower()] = {"code": int(t), "aux": AUX.get(t), "fields": fields}
    return {"record_bytes": RECORD_BYTES, "byte_order": "little", "header": header,
            "types": types, "flags": {f.name.lower(): int(f) for f in EventFlag if f}}


# -- the ring --------------------------------------------------------------------------------------

RING_MAGIC = int.from_bytes(b"TWEV", "little")
RING_VERSION = 1
RING_MAGIC_OFFSET = 0
RING_DROPPED_OFFSET = 16
RING_PRODUCER_OFFSET = 64
RING_CONSUMER_OFFSET = 128
RING_HEADER_BYTES = 256
_RING_HEADER = struct.Struct("<IHHI4xQ")


def check_entries(entries: Any) -> int:
    """``entries`` if it is a power of two of at least 2, else :class:`EventError`."""
    if isinstance(entries, bool) or not isinstance(entries, int) or entries < 2 \
            or entries & (entries - 1):
        raise EventError(f"ring entries must be a power of two of at least 2, not {entries!r}")
    return entries


def ring_bytes(entries: int) -> int:
    """Size of a ring of ``entries`` records, header included."""
    return RING_HEADER_BYTES + check_entries(entries) * RECORD_BYTES


def ring_slot_offset(index: int, entries: int) -> int:
    """Byte offset of the record with free-running index ``index``."""
    return RING_HEADER_BYTES + (index & (entries - 1)) * RECORD_BYTES


def pack_ring_header(entries: int) -> bytes:
    """The first 24 bytes of a fresh ring (the host writes them, indices and counts at 0)."""
    return _RING_HEADER.pack(RING_MAGIC, RING_VERSION, RECORD_BYTES, check_entries(entries), 0)


def unpack_ring_header(data: bytes | memoryview) -> dict[str, int]:
    """``entries`` and ``dropped`` of a ring, after checking its magic, version and record size."""
    if len(data) < RING_HEADER_BYTES:
        raise EventError(f"event ring: {len(data)} bytes, the header alone is {RING_HEADER_BYTES}")
    magic, version, record_bytes, entries, dropped = _RING_HEADER.unpack_from(data, 0)
    if magic != RING_MAGIC:
        raise EventError(f"event ring: magic 0x{magic:08x}, not 0x{RING_MAGIC:08x} ('TWEV')")
    if version != RING_VERSION:
        raise EventError(f"event ring: version {version}, this host reads {RING_VERSION}")
    if record_bytes != RECORD_BYTES:
        raise EventError(f"event ring: {record_bytes}-byte records, not {RECORD_BYTES}")
    check_entries(entries)
    if len(data) < ring_bytes(entries):
        raise EventError(f"event ring: {entries} entries need {ring_bytes(entries)} bytes, "
                         f"the buffer has {len(data)}")
    return {"entries": entries, "dropped": dropped}
