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


#: TCP header without options (RFC 9293). Data offset (in 32-bit words) is the high nibble of the
#: byte at offset 12; the flags are the byte at offset 13 (CWR ECE URG ACK PSH RST SYN FIN).
TCP = Message("TCP Header", "", (
    F("source_port", 0, 2), F("destination_port", 2, 2), F("sequence_number", 4, 4),
    F("acknowledgment_number", 8, 4), F("data_offset", 12, 1), F("flags", 13, 1),
    F("window", 14, 2), F("checksum", 16, 2), F("urgent_pointer", 18, 2)))

TCP_HEADER_LENGTH = TCP.length                  # 20
IP_PROTOCOL_TCP = 6
#: Offset of the TCP header / payload in an Ethernet/IPv4/TCP frame without IP or TCP options.
TCP_HEADER_OFFSET = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH                   # 34
TCP_PAYLOAD_OFFSET = TCP_HEADER_OFFSET + TCP_HEADER_LENGTH                         # 54
#: Data offset byte of a header without options (5 words).
TCP_DATA_OFFSET_NO_OPTIONS = 5 << 4
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def tcp_checksum(source_ip: int, destination_ip: int, segment: bytes) -> int:
    """The TCP checksum of ``segment`` (header with a zero checksum field, then payload) between
    the two IPv4 addresses (pseudo-header: addresses, zero, protocol 6, TCP length). Over a
    segment that already carries a correct checksum it is 0."""
    pseudo = (source_ip.to_bytes(4, "big") + destination_ip.to_bytes(4, "big")
              + bytes((0, IP_PROTOCOL_TCP)) + len(segment).to_bytes(2, "big"))
    return ipv4_checksum(pseudo + bytes(segment))

#: ARP for IPv4 over Ethernet (RFC 826), the packet after the Ethernet header (28 bytes).
ARP = Message("ARP Packet", "", (
    F("hardware_type", 0, 2), F("protocol_type", 2, 2), F("hardware_length", 4, 1),
    F("protocol_length", 5, 1), F("operation", 6, 2), F("sender_hardware_address", 8, 6),
    F("sender_protocol_address", 14, 4), F("target_hardware_address", 18, 6),
    F("target_protocol_address", 24, 4)))
ARP_HARDWARE_ETHERNET = 1
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST_MAC = 0xFFFFFFFFFFFF

#: TCP option kinds (RFC 9293): end of list, no-operation, maximum segment size (4 bytes long).
TCP_OPTION_END, TCP_OPTION_NOP, TCP_OPTION_MSS = 0, 1, 2
TCP_OPTION_MSS_LENGTH = 4
#: The MSS a receiver assumes when the SYN carries no MSS option (RFC 9293 3.7.1).
TCP_DEFAULT_MSS = 536


def tcp_frame(*, source_mac: int, destination_mac: int, source_ip: int, destination_ip: int,
              source_port: int, destination_port: int, seq: int, ack: int, flags: int, window: int,
              identification: int = 0, payload: bytes = b"", options: bytes = b"") -> bytes:
    """An Ethernet II / IPv4 / TCP frame (no FCS): IPv4 without options, DF, TTL 64, both
    checksums; ``options`` (a multiple of 4 bytes) follow the TCP header."""
    if len(options) % 4:
        raise ValueError(f"TCP options must be a multiple of 4 bytes, not {len(options)}")
    tcp_length = TCP_HEADER_LENGTH + len(options) + len(payload)
    ip = bytearray(IPV4.pack(
        version_ihl=IPV4_VERSION_IHL, total_length=IPV4_HEADER_LENGTH + tcp_length,
        identification=identification & 0xFFFF, flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT,
        time_to_live=IPV4_TIME_TO_LIVE, protocol=IP_PROTOCOL_TCP, source_address=source_ip,
        destination_address=destination_ip))
    at = IPV4["header_checksum"].offset
    ip[at:at + 2] = ipv4_checksum(bytes(ip)).to_bytes(2, "big")
    segment = bytearray(TCP.pack(
        source_port=source_port, destination_port=destination_port, sequence_number=seq & 0xFFFFFFFF,
        acknowledgment_number=ack & 0xFFFFFFFF, data_offset=(5 + len(options) // 4) << 4, flags=flags,
        window=window) + bytes(options) + bytes(payload))
    at = TCP["checksum"].offset
    segment[at:at + 2] = tcp_checksum(source_ip, destination_ip, bytes(segment)).to_bytes(2, "big")
    return ETHERNET.pack(destination_address=destination_mac, source_address=source_mac,
                         ethertype=ETHERTYPE_IPV4) + bytes(ip) + bytes(segment)
