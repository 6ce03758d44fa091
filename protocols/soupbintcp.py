"""SoupBinTCP 4.0 packet framing: a 2-byte big-endian length (of what follows) and a type byte."""

from __future__ import annotations

from .layout import F, Message

HEADER = Message("SoupBinTCP Header", "", (F("packet_length", 0, 2), F("packet_type", 2, 1, "alpha")))
HEADER_LENGTH = HEADER.length

#: Packets sent by the server (exchange); the payload layouts follow the header.
SERVER: dict[str, Message] = {m.type: m for m in (
    Message("Debug", "+", ()),
    Message("Login Accepted", "A", (F("session", 0, 10, "alpha"), F("sequence_number", 10, 20, "alpha"))),
    Message("Login Rejected", "J", (F("reject_reason_code", 0, 1, "alpha"),)),
    Message("Sequenced Data", "S", ()),
    Message("Server Heartbeat", "H", ()),
    Message("End of Session", "Z", ()),
)}

#: Packets sent by the client.
CLIENT: dict[str, Message] = {m.type: m for m in (
    Message("Debug", "+", ()),
    Message("Login Request", "L", (
        F("username", 0, 6, "alpha"), F("password", 6, 10, "alpha"),
        F("requested_session", 16, 10, "alpha"), F("requested_sequence_number", 26, 20, "alpha"))),
    Message("Unsequenced Data", "U", ()),
    Message("Client Heartbeat", "R", ()),
    Message("Logout Request", "O", ()),
)}

LOGIN_REJECT_REASONS = {"A": "not authorized", "S": "session not available"}


def frame(packet_type: str, payload: bytes = b"") -> bytes:
    """One SoupBinTCP packet: length (type byte + payload), type, payload."""
    if len(packet_type) != 1:
        raise ValueError(f"packet type must be one character, not {packet_type!r}")
    if len(payload) + 1 > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a SoupBinTCP packet")
    return HEADER.pack(packet_length=len(payload) + 1, packet_type=packet_type) + payload


def unframe(data: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split a byte stream into ``(type, payload)`` packets; returns them and the unused tail."""
    packets = []
    pos = 0
    while len(data) - pos >= 2:
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length == 0:
            raise ValueError(f"SoupBinTCP packet at offset {pos} has length 0 (no type byte)")
        if len(data) - pos - 2 < length:
            break
        packets.append((chr(data[pos + 2]), bytes(data[pos + 3:pos + 2 + length])))
        pos += 2 + length
    return packets, bytes(data[pos:])


def login_accepted(payload: bytes) -> tuple[str, int]:
    """The session name and the sequence number of the next Sequenced Data packet of a Login
    Accepted packet's ``payload`` (a blank number means 1)."""
    fields = SERVER["A"].unpack(payload)
    return str(fields["session"]).strip(), int(str(fields["sequence_number"]).strip() or "1")
