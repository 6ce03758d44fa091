"""MoldUDP64 1.0 downstream packets and retransmission requests."""

from __future__ import annotations

from .layout import F, Message

HEADER = Message("MoldUDP64 Header", "", (
    F("session", 0, 10, "alpha"), F("sequence_number", 10, 8), F("message_count", 18, 2)))
HEADER_LENGTH = HEADER.length
#: A request for retransmission has the same layout as the downstream header.
REQUEST = Message("MoldUDP64 Request", "", HEADER.fields)
#: Each message block is a 2-byte big-endian length followed by the message.
BLOCK_LENGTH_WIDTH = 2
#: Message count of a heartbeat and of the end-of-session packet.
HEARTBEAT_COUNT = 0
END_OF_SESSION_COUNT = 0xFFFF


def pack(session: str | bytes, sequence_number: int, messages: list[bytes]) -> bytes:
    """One downstream packet carrying ``messages``; the first has ``sequence_number``."""
    if len(messages) >= END_OF_SESSION_COUNT:
        raise ValueError(f"{len(messages)} messages do not fit one MoldUDP64 packet")
    out = bytearray(HEADER.pack(session=session, sequence_number=sequence_number,
                                message_count=len(messages)))
    for m in messages:
        if len(m) > 0xFFFF:
            raise ValueError(f"message of {len(m)} bytes does not fit a MoldUDP64 block")
        out += len(m).to_bytes(2, "big") + m
    return bytes(out)


def unpack(data: bytes) -> tuple[dict, list[bytes]]:
    """Header fields and message list of one downstream packet; raises on a malformed packet."""
    header = HEADER.unpack(data)
    count = header["message_count"]
    messages: list[bytes] = []
    if count in (HEARTBEAT_COUNT, END_OF_SESSION_COUNT):
        return header, messages
    pos = HEADER_LENGTH
    for i in range(count):
        if pos + 2 > len(data):
            raise ValueError(f"message block {i} length runs past the packet")
        n = int.from_bytes(data[pos:pos + 2], "big")
        if pos + 2 + n > len(data):
            raise ValueError(f"message block {i} ({n} bytes) runs past the packet")
        messages.append(bytes(data[pos + 2:pos + 2 + n]))
        pos += 2 + n
    return header, messages
