"""protocols/management.py (version 2): bytes at their offsets, round trips, bad input refused."""

import pytest

from tickwire.protocols import events as ev
from tickwire.protocols.layout import LayoutError
from tickwire.protocols.management import (DUPLICATE, EVENTS_PER_FRAME, FRAME_LENGTH,
                                           MANAGEMENT_ETHERTYPE, READ, WRITE, ManagementReply,
                                           ManagementRequest, decode_events, decode_reply,
                                           decode_request, encode_events, encode_reply,
                                           encode_request, frame_kind)
from tickwire.protocols.net import MIN_FRAME_LENGTH

CARD = bytes.fromhex("027477697201")
HOST = bytes.fromhex("02000000000a")


def test_request_and_reply_bytes():
    frame = encode_request(ManagementRequest(WRITE, 0x1234, 0x0ABC, 0xDEADBEEF),
                           destination=CARD, source=HOST)
    assert frame == (CARD + HOST + MANAGEMENT_ETHERTYPE.to_bytes(2, "big")
                     + bytes.fromhex("02 02 1234 0abc deadbeef 00 00"))
    assert len(frame) == FRAME_LENGTH == 26 and frame_kind(frame) == "request"
    assert decode_request(frame) == (CARD, HOST, ManagementRequest(WRITE, 0x1234, 0x0ABC, 0xDEADBEEF))
    reply = encode_reply(ManagementRequest(READ, 9, 3), 77, destination=HOST, source=CARD,
                         status=DUPLICATE)
    assert len(reply) == MIN_FRAME_LENGTH and reply[15] == 0x81 and reply[24] == DUPLICATE
    assert frame_kind(reply) == "reply"
    assert decode_reply(reply) == (HOST, CARD, ManagementReply(READ, 9, 3, 77, DUPLICATE))
    assert decode_reply(reply)[2].answers(ManagementRequest(READ, 9, 3))
    assert not decode_reply(reply)[2].answers(ManagementRequest(READ, 10, 3))


def test_event_frame_bytes():
    records = [ev.pack(ev.Event(ev.EventType.GAP, 5 + k, k, fields={"sequence_number": 9,
                                                                    "message_count": 2}))
               for k in range(3)]
    frame = encode_events(0x01020304, records, destination=HOST, source=CARD)
    assert frame[14:22] == bytes.fromhex("02 40 0003 01020304") and frame_kind(frame) == "events"
    assert frame[22:] == b"".join(records)
    _, _, decoded = decode_events(frame)
    assert decoded.frame_sequence == 0x01020304
    assert [e.sequence for e in decoded.events] == [0, 1, 2]
    one = encode_events(0, records[:1], destination=HOST, source=CARD)
    assert len(one) == MIN_FRAME_LENGTH      # 54 bytes, padded
    with pytest.raises(LayoutError, match="1 to 46 records, not 47"):
        encode_events(0, records[:1] * (EVENTS_PER_FRAME + 1), destination=HOST, source=CARD)
    with pytest.raises(LayoutError, match="3 records do not fit its 72-byte payload"):
        decode_events(frame[:-32])
    with pytest.raises(LayoutError, match="unknown type 0"):
        decode_events(frame[:22] + bytes(32) + frame[54:])


def test_bad_frames_are_refused():
    frame = encode_request(ManagementRequest(READ, 1, 2), destination=CARD, source=HOST)
    with pytest.raises(LayoutError, match="not a management reply"):
        decode_reply(frame)
    with pytest.raises(LayoutError, match="not a management request"):
        decode_request(encode_reply(ManagementRequest(READ, 1, 2), 0, destination=HOST, source=CARD))
    with pytest.raises(LayoutError, match="EtherType 0x0800"):
        decode_request(frame[:12] + b"\x08\x00" + frame[14:])
    with pytest.raises(LayoutError, match="management version 1, not 2"):
        decode_request(frame[:14] + b"\x01" + frame[15:])
    with pytest.raises(LayoutError, match="at least 26 bytes, not 25"):
        decode_request(frame[:25])
    with pytest.raises(LayoutError, match="not a management event frame"):
        decode_events(frame)
    with pytest.raises(LayoutError, match="opcode must be READ"):
        ManagementRequest(3, 0, 0)
    with pytest.raises(LayoutError, match="address must fit 2 bytes, not 65536"):
        ManagementRequest(READ, 0, 0x10000)
    with pytest.raises(LayoutError, match="status must be APPLIED"):
        ManagementReply(READ, 0, 0, 0, 2)
    assert frame_kind(frame[:15]) is None and frame_kind(b"") is None
    assert frame_kind(frame[:14] + b"\x02\x05" + frame[16:]) is None
