"""Ethernet II, IPv4 and UDP header layouts and constants (IEEE 802.3, RFC 791, RFC 768, RFC 1112)."""

from __future__ import annotations

import zlib

from .layout import F, Message

#: Ethernet II header: destination, source, EtherType. No 802.1Q tag.
ETHERNET = Message("Ethernet II Header", "", (
    F("destination_address", 0, 6), F("source_address", 6, 6), F("ethertype", 12, 2)))

#: IPv4 header without options. Version and IHL share the first byte, flags and fragment offset
#: the 16 bits at offset 6.
IPV4 = Message("IPv4 Header", "", (
    F("version_ihl", 0, 1), F("type_of_service", 1, 1), F("total_length", 2, 2),
    F("identification", 4, 2), F("flags_fragment_offset", 6, 2), F("time_to_live", 8, 1),
    F("protocol", 9, 1), F("header_checksum", 10, 2), F("source_address", 12, 4),
    F("destination_address", 16, 4)))

UDP = Message("UDP Header", "", (
    F("source_port", 0, 2), F("destination_port", 2, 2), F("length", 4, 2), F("checksum", 6, 2)))

ETHERNET_HEADER_LENGTH = ETHERNET.length        # 14
IPV4_HEADER_LENGTH = IPV4.length                # 20
UDP_HEADER_LENGTH = UDP.length                  # 8
#: Offset of the UDP payload in an Ethernet/IPv4/UDP frame without IP options.
UDP_PAYLOAD_OFFSET = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH  # 42

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD

IPV4_VERSION_IHL = 0x45          # version 4, 5 words of header (no options)
IP_PROTOCOL_UDP = 17
#: TTL of the datagrams tickwire sends.
IPV4_TIME_TO_LIVE = 64
IPV4_FLAG_DONT_FRAGMENT = 0x4000
IPV4_FLAG_MORE_FRAGMENTS = 0x2000
IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF

FCS_LENGTH = 4
#: Shortest Ethernet frame without / with its FCS; shorter frames are padded with zeros.
MIN_FRAME_LENGTH = 60
MIN_FRAME_LENGTH_WITH_FCS = MIN_FRAME_LENGTH + FCS_LENGTH
#: IPv4 multicast groups map to 01:00:5e plus the low 23 bits of the group address.
MULTICAST_MAC_PREFIX = 0x01005E000000
MULTICAST_MAC_GROUP_MASK = 0x7FFFFF


def fcs(frame: bytes) -> bytes:
    """The frame check sequence appended after ``frame`` on the wire: CRC-32 (IEEE 802.3) of the
    frame from destination address to the end of the padding, least significant byte first."""
    return zlib.crc32(frame).to_bytes(FCS_LENGTH, "little")


def ipv4_checksum(header: bytes) -> int:
    """Ones' complement of the ones' complement sum of the 16-bit words of ``header``.

    With the checksum field zeroed this is the value to store; over a header that already
    carries a correct checksum it is 0.
    """
    if len(header) % 2:
        header = bytes(header) + b"\x00"
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def multicast_mac(group_ip: int) -> int:
    """The Ethernet address (48-bit integer) that carries IPv4 multicast group ``group_ip``."""
    if not 0xE0000000 <= group_ip <= 0xEFFFFFFF:
        raise ValueError(f"{int_to_ip(group_ip)} is not an IPv4 multicast group (224.0.0.0/4)")
    return MULTICAST_MAC_PREFIX | (group_ip & MULTICAST_MAC_GROUP_MASK)


def mac_to_int(mac: str | bytes | int) -> int:
    """``"02:00:00:00:00:01"`` (``:`` or ``-`` separated), 6 raw bytes or an int -> 48-bit int."""
    if isinstance(mac, int):
        value = mac
    elif isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}: {bytes(mac).hex()}")
        value = int.from_bytes(mac, "big")
    else:
        parts = mac.replace("-", ":").split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError(f"MAC address must look like 02:00:00:00:00:01, not {mac!r}")
        try:
            value = int("".join(parts), 16)
        except ValueError:
            raise ValueError(f"MAC address must look like 02:00:00:00:00:01, not {mac!r}") from None
    if not 0 <= value < 1 << 48:
        raise ValueError(f"MAC address {value:#x} does not fit 48 bits")
    return value


def int_to_mac(value: int) -> str:
    """48-bit int -> ``"02:00:00:00:00:01"``."""
    return ":".join(f"{b:02x}" for b in mac_to_int(value).to_bytes(6, "big"))


def ip_to_int(ip: str | bytes | int) -> int:
    """Dotted quad ``"10.0.0.2"``, 4 raw bytes or an int -> 32-bit int."""
    if isinstance(ip, int):
        value = ip
    elif isinstance(ip, (bytes, bytearray)):
        if len(ip) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, not {len(ip)}: {bytes(ip).hex()}")
        value = int.from_bytes(ip, "big")
    else:
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(f"IPv4 address must look like 10.0.0.2, not {ip!r}")
        value = int.from_bytes(bytes(int(p) for p in parts), "big")
    if not 0 <= value < 1 << 32:
        raise ValueError(f"IPv4 address {value:#x} does not fit 32 bits")
    return value


def int_to_ip(value: int) -> str:
    """32-bit int -> ``"10.0.0.2"``."""
    return ".".join(str(b) for b in ip_to_int(value).to_bytes(4, "big"))
