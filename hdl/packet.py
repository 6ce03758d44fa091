"""Packet stream payload shared by the 64-bit datapath stages."""

from amaranth.hdl import Cat, Const
from amaranth.lib import data

__all__ = ["packet_layout", "byte_lane", "be_value", "MAX_PACKET_LENGTH"]

#: Longest packet (bytes) a ``length`` field has to carry.
MAX_PACKET_LENGTH = 0xFFFF


def packet_layout(data_width: int = 64) -> data.StructLayout:
    """Payload of a packet stream beat.

    ``data`` holds ``data_width // 8`` bytes, the first byte of the packet in bits [7:0].
    Every beat but the last is full; ``nbytes`` (1..bytes per beat) says how many bytes of the
    last beat are valid. ``length`` is the whole packet's length in bytes, the same on every beat
    (it is known up front because the MAC stores and forwards, and headers carry it).
    """
    if data_width not in (64,):
        raise ValueError(f"data_width must be 64, not {data_width!r}")
    return data.StructLayout({
        "data": data_width,
        "nbytes": 4,
        "last": 1,
        "length": 16,
    })


def byte_lane(value, k: int):
    """Byte ``k`` of a little-endian-laned vector (byte 0 in bits [7:0])."""
    return value[8 * k:8 * k + 8]


def be_value(byte_list):
    """The big-endian integer formed by a list of byte expressions (first byte most significant)."""
    return Cat(*reversed(list(byte_list)))


def ascii_const(text: str, width: int) -> Const:
    """An alpha field as a constant: bytes in wire order, first character in bits [7:0]."""
    raw = text.encode("ascii").ljust(width, b" ")
    return Const(int.from_bytes(raw, "little"), 8 * width)
