"""Event records and the event ring header: one layout, packed and unpacked the same way."""

import struct

import pytest

from tickwire.protocols import events as ev
from tickwire.protocols.events import Event, EventFlag, EventType


def sample(t, seed=1):
    """An event of type ``t`` whose every field has a distinct value that fills its width."""
    table = ev.event_table()["types"][t.name.lower()]
    fields = {}
    for i, f in enumerate(table["fields"]):
        fields[f["name"]] = (seed * 0x9E3779B97F4A7C15 + i * 0x0101010101) % (1 << 8 * f["width"])
    if table["aux"]:
        fields[table["aux"]] = (seed * 7919 + 3) & 0xFFFF
    return Event(t, cycles=(1 << 64) - 1 - seed, sequence=(1 << 32) - seed,
                 flags=EventFlag.HOST | EventFlag.RECOVERED, fields=fields)


@pytest.mark.parametrize("t", list(EventType))
def test_every_type_round_trips(t):
    for seed in (1, 2, 3):
        event = sample(t, seed)
        record = ev.pack(event)
        assert len(record) == ev.RECORD_BYTES == 32
        assert ev.unpack(record) == event


@pytest.mark.parametrize("t", list(EventType))
def test_the_table_gives_each_fields_bytes(t):
    """event_table() is what the gateware is written against: each field's value sits at its
    offset and width, little-endian, and the header at its own."""
    event = sample(t)
    record = ev.pack(event)
    table = ev.event_table()
    header = {h["name"]: h for h in table["header"]}
    for name, value in (("type", int(t)), ("flags", int(event.flags)), ("sequence", event.sequence),
                        ("cycles", event.cycles)):
        h = header[name]
        assert int.from_bytes(record[h["offset"]:h["offset"] + h["width"]], "little") == value
    entry = table["types"][t.name.lower()]
    assert entry["code"] == int(t)
    for f in entry["fields"]:
        got = int.from_bytes(record[f["offset"]:f["offset"] + f["width"]], "little")
        assert got == event[f["name"]], f["name"]
        assert f["offset"] + f["width"] <= 32
    if entry["aux"]:
        assert int.from_bytes(record[2:4], "little") == event[entry["aux"]]


def test_padding_is_zero():
    event = Event(EventType.GAP, 5, fields={"sequence_number": 2 ** 64 - 1,
                                            "message_count": 2 ** 32 - 1})
    assert ev.pack(event)[2:4] == b"\0\0" and ev.pack(event)[28:] == b"\0" * 4


def test_bad_events():
    with pytest.raises(ev.EventError, match="missing \\['message_count'\\]"):
        ev.pack(Event(EventType.GAP, 1, fields={"sequence_number": 1}))
    with pytest.raises(ev.EventError, match="unknown \\['slot'\\]"):
        ev.pack(Event(EventType.GAP, 1, fields={"sequence_number": 1, "message_count": 1,
                                                "slot": 2}))
    with pytest.raises(ev.EventError, match="does not fit"):
        ev.pack(Event(EventType.GAP, 1, fields={"sequence_number": 1,
                                                "message_count": 1 << 32}))
    with pytest.raises(ev.EventError, match="unknown event type 99"):
        ev.pack(Event(99, 1))
    record = bytearray(ev.pack(sample(EventType.FILL)))
    record[0] = 0xEE
    with pytest.raises(ev.EventError, match="unknown type 238"):
        ev.unpack(bytes(record))
    with pytest.raises(ev.EventError, match="31 bytes, need 32"):
        ev.unpack(bytes(31))
    with pytest.raises(ev.EventError, match="whole number"):
        ev.unpack_many(bytes(40))


def test_unpack_many_and_to_dict():
    events = [sample(t) for t in EventType]
    data = b"".join(map(ev.pack, events))
    assert ev.unpack_many(data) == events
    d = ev.unpack(ev.pack(Event(EventType.RISK_REJECT, 9, 4, EventFlag.HOST, {
        "reason": 1, "quantity": 5, "price": 6, "stock_locate": 7, "side": 66, "session": 1,
        "slot": 3}))).to_dict()
    assert d == {"type": "risk_reject", "cycles": 9, "sequence": 4, "flags": ["host"],
                 "reason": 1, "quantity": 5, "price": 6, "stock_locate": 7, "side": 66,
                 "session": 1, "slot": 3}


def test_ring_header():
    assert ev.ring_bytes(8) == 256 + 8 * 32
    assert ev.ring_slot_offset(0, 8) == 256 and ev.ring_slot_offset(9, 8) == 256 + 32
    buffer = bytearray(ev.ring_bytes(8))
    header = ev.pack_ring_header(8)
    buffer[:len(header)] = header
    struct.pack_into("<Q", buffer, ev.RING_DROPPED_OFFSET, 3)
    assert ev.unpack_ring_header(buffer) == {"entries": 8, "dropped": 3}
    assert buffer[:4] == b"TWEV"
    for bad in (0, 1, 3, 12, True, 8.0):
        with pytest.raises(ev.EventError, match="power of two"):
            ev.check_entries(bad)
    with pytest.raises(ev.EventError, match="magic"):
        ev.unpack_ring_header(bytes(ev.ring_bytes(8)))
    with pytest.raises(ev.EventError, match="need 512 bytes"):
        ev.unpack_ring_header(buffer[:300])
    wrong = bytearray(buffer)
    wrong[4] = 9
    with pytest.raises(ev.EventError, match="version 9"):
        ev.unpack_ring_header(wrong)
