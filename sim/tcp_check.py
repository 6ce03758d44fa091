"""An independent checker of the card's TCP segments and byte streams, and a scripted TCP peer
for gateware tests; both written from docs/tcp.md and :mod:`tickwire.protocols.net`, not from
the gateware.

:class:`TcpStreamChecker` takes the frames of an order port in wire order (what the card sent and
what it received), checks every frame the card sent against the contract in docs/tcp.md, and
reassembles both byte streams of every connection by sequence number. :func:`check_pcap` runs it
over a capture. :class:`ScriptedPeer` is a minimal, deterministic TCP peer: it answers the card's
segments as a real peer would (ACKs, duplicate ACKs, a chosen window) and builds the segments a
test sends to the card, including malformed ones.
"""

from __future__ import annotations

import enum
import logging
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterable

from tickwire.host.errors import TickwireError

from ..protocols import soupbintcp
from ..protocols.net import (
    ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_IPV4, IP_PROTOCOL_TCP, IPV4,
    IPV4_FLAG_DONT_FRAGMENT, IPV4_FLAG_MORE_FRAGMENTS, IPV4_FRAGMENT_OFFSET_MASK,
    IPV4_HEADER_LENGTH, IPV4_TIME_TO_LIVE, IPV4_VERSION_IHL, MIN_FRAME_LENGTH, TCP, TCP_ACK,
    TCP_FIN, TCP_HEADER_LENGTH, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG, int_to_ip, int_to_mac,
    ip_to_int, ipv4_checksum, mac_to_int, tcp_checksum,
)

__all__ = ["Direction", "TcpConnection", "CheckError", "ConnectionReport", "TcpCheckResult",
           "TcpCheckError", "TcpStreamChecker", "check_pcap", "ParsedFrame", "parse_frame",
           "build_tcp_frame", "ScriptedPeer"]

logger = logging.getLogger(__name__)

_SEQUENCE_MODULUS = 1 << 32
_BROADCAST_MAC = (1 << 48) - 1
#: TCP option kind 2 (maximum segment size), length 4.
_MSS_OPTION_KIND = 2


class TcpCheckError(TickwireError, ValueError):
    """Bad input to the checker or the peer, or a check that found errors
    (:meth:`TcpCheckResult.raise_for_errors`)."""


class Direction(enum.Enum):
    """Which way a frame went, seen from the card."""

    CARD_SENT = "card_sent"
    CARD_RECEIVED = "card_received"


@dataclass(frozen=True)
class TcpConnection:
    """One of the card's connections: its addresses and, when known, where its streams start.

    ``snd_nxt`` is the card's first data sequence number (ISS + 1, the ``snd_nxt`` register),
    ``rcv_nxt`` the peer's (the ``rcv_nxt`` register), ``peer_window`` the window of the
    SYN-ACK. Left at None they are learned from a captured handshake, or else from the first
    segments seen.
    """

    local_port: int
    peer_ip: int
    peer_port: int
    snd_nxt: int | None = None
    rcv_nxt: int | None = None
    peer_window: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer_ip", ip_to_int(self.peer_ip))
        for name in ("local_port", "peer_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value < 1 << 16:
                raise TcpCheckError(f"{name} must be a port number 1..65535, not {value!r}")
        for name in ("snd_nxt", "rcv_nxt"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < _SEQUENCE_MODULUS:
                raise TcpCheckError(f"{name} must be a 32-bit sequence number, not {value!r}")
        if self.peer_window is not None and not 0 <= self.peer_window < 1 << 16:
            raise TcpCheckError(f"peer_window must fit 16 bits, not {self.peer_window!r}")

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.local_port, self.peer_ip, self.peer_port)

    def __str__(self) -> str:
        return f"card:{self.local_port} <-> {int_to_ip(self.peer_ip)}:{self.peer_port}"


@dataclass(frozen=True)
class CheckError:
    """One violation: the frame's index in the fed order (None for end-of-capture findings)."""

    index: int | None
    direction: Direction
    connection: TcpConnection | None
    message: str
    timestamp_ns: int | None = None

    def __str__(self) -> str:
        where = "end of capture" if self.index is None else f"frame {self.index}"
        if self.timestamp_ns is not None:
            where += f" (t={self.timestamp_ns} ns)"
        who = "card sent" if self.direction is Direction.CARD_SENT else "card received"
        conn = f" [{self.connection}]" if self.connection is not None else ""
        return f"{where}, {who}{conn}: {self.message}"


@dataclass
class ConnectionReport:
    """What the checker found on one connection (one incarnation of its addresses).

    Streams start at the first data sequence number (from the handshake or the
    :class:`TcpConnection`, else the lowest one seen) and stop at the first gap; gaps are
    ``(start, end)`` stream offsets of bytes never seen between that start and the highest byte
    seen.
    """

    connection: TcpConnection
    card_stream: bytes = b""
    peer_stream: bytes = b""
    card_gaps: list[tuple[int, int]] = field(default_factory=list)
    peer_gaps: list[tuple[int, int]] = field(default_factory=list)
    #: Segments carrying data, retransmissions included.
    card_segments: int = 0
    #: Data segments with at least one byte sent before.
    card_retransmitted_segments: int = 0
    #: Segments without data or SYN/FIN (window probes included).
    card_pure_acks: int = 0
    #: Pure ACKs whose sequence number is below SND.MAX (``probe``).
    card_window_probes: int = 0
    #: Frames the host sent through the card (ARP, SYN, FIN, RST, teardown ACKs).
    card_host_frames: int = 0
    peer_segments: int = 0
    peer_retransmitted_segments: int = 0
    peer_pure_acks: int = 0
    #: Pure ACKs repeating the previous acknowledgment number and window.
    peer_duplicate_acks: int = 0
    #: Frames the card must drop for a bad IPv4 or TCP checksum (not reassembled).
    peer_bad_checksums: int = 0
    card_fin: bool = False
    peer_fin: bool = False
    peer_reset: bool = False
    errors: list[CheckError] = field(default_factory=list)
    #: Things the peer did that are not the card's fault (bad checksums, conflicting
    #: retransmissions, acks beyond the card's data), for test diagnostics.
    notes: list[str] = field(default_factory=list)


@dataclass
class TcpCheckResult:
    """The reports of every connection in the order they appeared, and every error."""

    reports: list[ConnectionReport]
    errors: list[CheckError]
    #: Frames that belonged to no connection of the card (other hosts, ARP from the peer).
    ignored_frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def report(self, local_port: int) -> ConnectionReport:
        """The last report of the connection on the card's ``local_port``."""
        for r in reversed(self.reports):
            if r.connection.local_port == local_port:
                return r
        raise TcpCheckError(f"no connection on the card's port {local_port}; seen: "
                            f"{sorted({r.connection.local_port for r in self.reports})}")

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  {e}" for e in self.errors[:20])
            more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
            raise TcpCheckError(f"{len(self.errors)} TCP error(s):\n{lines}{more}")


# -- frames ---------------------------------------------------------------------------------------

@dataclass
class ParsedFrame:
    """An Ethernet frame taken apart with the layouts of :mod:`tickwire.protocols.net`.

    ``ip`` / ``tcp`` are the unpacked fixed headers (None when the frame has none); ``problem``
    says why parsing stopped early (a truncated or inconsistent header).
    """

    frame: bytes
    ethernet: dict
    ip: dict | None = None
    ip_header_length: int = 0
    ip_options: bytes = b""
    ip_checksum_ok: bool = False
    tcp: dict | None = None
    tcp_options: bytes = b""
    tcp_checksum_ok: bool = False
    payload: bytes = b""
    #: Bytes after the IPv4 packet (Ethernet padding).
    padding: bytes = b""
    problem: str | None = None

    @property
    def flags(self) -> int:
        return self.tcp["flags"] if self.tcp is not None else 0


def parse_frame(frame: bytes) -> ParsedFrame | None:
    """Take an Ethernet/IPv4/TCP frame (no FCS) apart; None when it is shorter than an
    Ethernet header. Checksums are verified, not trusted."""
    frame = bytes(frame)
    if len(frame) < ETHERNET_HEADER_LENGTH:
        return None
    p = ParsedFrame(frame, ETHERNET.unpack(frame))
    if p.ethernet["ethertype"] != ETHERTYPE_IPV4:
        return p
    ip_bytes = frame[ETHERNET_HEADER_LENGTH:]
    if len(ip_bytes) < IPV4_HEADER_LENGTH:
        p.problem = f"{len(ip_bytes)} bytes after the Ethernet header, too short for IPv4"
        return p
    p.ip = IPV4.unpack(ip_bytes)
    ihl = (p.ip["version_ihl"] & 0x0F) * 4
    total = p.ip["total_length"]
    if p.ip["version_ihl"] >> 4 != 4 or ihl < IPV4_HEADER_LENGTH or total < ihl or total > len(ip_bytes):
        p.problem = (f"IPv4 version/IHL {p.ip['version_ihl']:#04x} and total length {total} do not "
                     f"fit the {len(ip_bytes)} bytes after the Ethernet header")
        return p
    p.ip_header_length = ihl
    p.ip_options = ip_bytes[IPV4_HEADER_LENGTH:ihl]
    p.ip_checksum_ok = ipv4_checksum(ip_bytes[:ihl]) == 0
    p.padding = ip_bytes[total:]
    if p.ip["protocol"] != IP_PROTOCOL_TCP:
        return p
    segment = ip_bytes[ihl:total]
    if len(segment) < TCP_HEADER_LENGTH:
        p.problem = f"TCP segment of {len(segment)} bytes, shorter than a TCP header"
        return p
    p.tcp = TCP.unpack(segment)
    data_offset = (p.tcp["data_offset"] >> 4) * 4
    if not TCP_HEADER_LENGTH <= data_offset <= len(segment):
        p.problem = f"TCP data offset {data_offset} bytes does not fit the {len(segment)}-byte segment"
        return p
    p.tcp_options = segment[TCP_HEADER_LENGTH:data_offset]
    p.payload = segment[data_offset:]
    p.tcp_checksum_ok = tcp_checksum(p.ip["source_address"], p.ip["destination_address"], segment) == 0
    return p


def build_tcp_frame(*, source_mac: int, destination_mac: int, source_ip: int, destination_ip: int,
                    source_port: int, destination_port: int, sequence_number: int,
                    acknowledgment_number: int, flags: int, window: int, payload: bytes = b"",
                    identification: int = 0, options: bytes = b"", ip_options: bytes = b"",
                    bad_ip_checksum: bool = False, bad_tcp_checksum: bool = False) -> bytes:
    """An Ethernet II / IPv4 (DF, TTL 64) / TCP frame without FCS or padding, with correct
    checksums unless told to break them. Options are padded with zeros to whole words."""
    options = bytes(options) + bytes(-len(options) % 4)
    ip_options = bytes(ip_options) + bytes(-len(ip_options) % 4)
    if len(options) > 40 or len(ip_options) > 40:
        raise TcpCheckError(f"options of {len(options)} (TCP) / {len(ip_options)} (IP) bytes, "
                            f"at most 40 fit")
    tcp_header = TCP.pack(source_port=source_port, destination_port=destination_port,
                          sequence_number=sequence_number % _SEQUENCE_MODULUS,
                          acknowledgment_number=acknowledgment_number % _SEQUENCE_MODULUS,
                          data_offset=(TCP_HEADER_LENGTH + len(options)) // 4 << 4, flags=flags,
                          window=window) + options
    segment = tcp_header + bytes(payload)
    checksum = tcp_checksum(source_ip, destination_ip, segment) ^ (0xFFFF if bad_tcp_checksum else 0)
    segment = segment[:16] + checksum.to_bytes(2, "big") + segment[18:]
    ihl = IPV4_HEADER_LENGTH + len(ip_options)
    ip_header = IPV4.pack(version_ihl=0x40 | ihl // 4, total_length=ihl + len(segment),
                          identification=identification & 0xFFFF,
                          flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT,
                          time_to_live=IPV4_TIME_TO_LIVE, protocol=IP_PROTOCOL_TCP,
                          source_address=source_ip, destination_address=destination_ip) + ip_options
    checksum = ipv4_checksum(ip_header) ^ (0xFFFF if bad_ip_checksum else 0)
    ip_header = ip_header[:10] + checksum.to_bytes(2, "big") + ip_header[12:]
    return (ETHERNET.pack(destination_address=destination_mac, source_address=source_mac,
                          ethertype=ETHERTYPE_IPV4) + ip_header + segment)


def _flag_names(flags: int) -> str:
    names = [n for bit, n in ((TCP_URG, "URG"), (TCP_ACK, "ACK"), (TCP_PSH, "PSH"),
                              (TCP_RST, "RST"), (TCP_SYN, "SYN"), (TCP_FIN, "FIN")) if flags & bit]
    if flags & 0xC0:
        names.append(f"{flags & 0xC0:#04x}")
    return "|".join(names) or "none"


# -- byte streams ---------------------------------------------------------------------------------

class _Ranges:
    """Bytes known at integer positions: sorted, disjoint, non-adjacent chunks."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.chunks: list[bytearray] = []

    def add(self, start: int, data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
        """Store ``data`` at ``start``; the bytes already known are kept. Returns the number of
        new bytes and, per overlapped chunk, the first conflict ``(position, old, new)``."""
        end = start + len(data)
        i = bisect_right(self.starts, start) - 1
        if i < 0:
            i = 0
        elif self.starts[i] + len(self.chunks[i]) < start:
            i += 1
        j = i
        while j < len(self.starts) and self.starts[j] <= end:
            j += 1
        if i == j:
            self.starts.insert(i, start)
            self.chunks.insert(i, bytearray(data))
            return len(data), []
        conflicts = []
        overlap = 0
        for k in range(i, j):
            s, c = self.starts[k], self.chunks[k]
            lo, hi = max(s, start), min(s + len(c), end)
            if lo < hi:
                overlap += hi - lo
                old, new = c[lo - s:hi - s], data[lo - start:hi - start]
                if old != new:
                    d = next(n for n in range(hi - lo) if old[n] != new[n])
                    conflicts.append((lo + d, old[d], new[d]))
        first_start, last_end = self.starts[i], self.starts[j - 1] + len(self.chunks[j - 1])
        if j == i + 1 and first_start <= start:
            if end > last_end:                 # the common case: extends one chunk
                self.chunks[i] += data[last_end - start:]
        else:
            merged_start = min(first_start, start)
            merged = bytearray(max(last_end, end) - merged_start)
            merged[start - merged_start:end - merged_start] = data
            for k in range(i, j):             # bytes seen first win
                s = self.starts[k]
                merged[s - merged_start:s - merged_start + len(self.chunks[k])] = self.chunks[k]
            self.starts[i:j] = [merged_start]
            self.chunks[i:j] = [merged]
        return len(data) - overlap, conflicts

    def contiguous_end(self, origin: int) -> int:
        """End of the bytes known without a hole from ``origin`` (``origin`` if none)."""
        i = bisect_right(self.starts, origin) - 1
        if i >= 0 and self.starts[i] + len(self.chunks[i]) > origin:
            return self.starts[i] + len(self.chunks[i])
        return origin

    def stream(self, origin: int) -> bytes:
        i = bisect_right(self.starts, origin) - 1
        if i >= 0 and self.starts[i] + len(self.chunks[i]) > origin:
            return bytes(self.chunks[i][origin - self.starts[i]:])
        return b""

    def gaps(self, origin: int) -> list[tuple[int, int]]:
        holes = []
        position = origin
        for s, c in zip(self.starts, self.chunks):
            if s > position:
                holes.append((position, s))
            position = max(position, s + len(c))
        return holes

    @property
    def lowest(self) -> int | None:
        return self.starts[0] if self.starts else None


class _HalfStream:
    """One direction of a connection: sequence numbers as offsets from the stream's start."""

    def __init__(self, origin: int | None = None) -> None:
        self.origin = origin                 # sequence number of stream offset 0
        self.origin_known = origin is not None
        self.ranges = _Ranges()
        self.high = 0                        # highest end offset seen (SND.MAX)
        self.fin_offset: int | None = None

    def set_origin(self, sequence_number: int) -> None:
        """Offset 0 is ``sequence_number`` (after a SYN); only before any byte is stored."""
        self.origin = sequence_number % _SEQUENCE_MODULUS
        self.origin_known = True

    def offset(self, sequence_number: int) -> int:
        """The stream offset of a 32-bit sequence number: the one nearest the highest seen."""
        if self.origin is None:
            self.origin = sequence_number
        delta = (sequence_number - self.origin - self.high) % _SEQUENCE_MODULUS
        if delta >= 1 << 31:
            delta -= _SEQUENCE_MODULUS
        return self.high + delta

    def sequence(self, offset: int) -> int:
        return ((self.origin or 0) + offset) % _SEQUENCE_MODULUS

    @property
    def start(self) -> int:
        """Offset where the reported stream starts."""
        if self.origin_known:
            return 0
        lowest = self.ranges.lowest
        return 0 if lowest is None else min(0, lowest)

    def acceptable_ack(self) -> int:
        """Highest offset the other side may acknowledge: the in-order data, and a FIN right
        after it."""
        end = self.ranges.contiguous_end(self.start)
        return end + 1 if self.fin_offset == end else end


class _Connection:
    def __init__(self, connection: TcpConnection) -> None:
        self.connection = connection
        self.report = ConnectionReport(connection)
        self.card = _HalfStream(connection.snd_nxt)
        self.peer = _HalfStream(connection.rcv_nxt)
        self.last_identification: int | None = None
        self.last_card_ack: int | None = None
        #: The peer's highest acknowledgment (a card stream offset) and its latest window:
        #: the card may send up to their sum (docs/tcp.md: seq + len - SND.UNA <= peer_window).
        self.peer_ack_offset: int | None = None
        self.peer_window: int | None = None
        if connection.peer_window is not None and connection.snd_nxt is not None:
            self.peer_ack_offset, self.peer_window = 0, connection.peer_window
        self.last_peer_ack: tuple[int, int] | None = None
        self.syn_sequence: int | None = None
        self.closing = False
        self.frames = 0


# -- the checker ----------------------------------------------------------------------------------

class TcpStreamChecker:
    """Checks the frames of one order port against docs/tcp.md and reassembles the streams.

    Parameters
    ----------
    card_mac, card_ip, peer_mac
        The card's addresses (``local_mac`` / ``local_ip``) and the next hop it sends to.
    connections
        Connections known before the capture starts. Others are learned from the host's SYN.
    rcv_window
        When given, every segment the card builds must advertise it.
    learn_connections
        Accept new connections from a SYN the host sends; otherwise frames of connections not in
        ``connections`` are errors.

    Feed frames with :meth:`feed` in wire order, then read :meth:`result`.

    Checked on every frame the card sent: Ethernet addresses; IPv4 0x45, TOS 0, total length
    (or padding to 60 bytes), DF, TTL 64, protocol 6, header checksum, identification one more
    than the session's previous segment; TCP data offset 5, checksum, flags ACK|PSH with data and
    ACK without, urgent pointer 0, the addresses of a known connection. Per connection: a byte
    sent again equals the byte first sent at its sequence number; no byte beyond the peer's
    highest acknowledgment + its latest window; acknowledgment numbers never beyond the peer's
    in-order data (and its FIN) and never going back; a pure ACK's sequence number not beyond
    SND.MAX. Frames the host sent (``host``) are checked for addresses, lengths, checksums and
    acknowledgment numbers only.

    The peer's frames are not judged (:attr:`ConnectionReport.notes`); those with a bad checksum
    count for nothing, as on the card.
    """

    def __init__(self, *, card_mac: int | str, card_ip: int | str, peer_mac: int | str,
                 connections: Iterable[TcpConnection] = (), rcv_window: int | None = None,
                 learn_connections: bool = True) -> None:
        self.card_mac = mac_to_int(card_mac)
        self.card_ip = ip_to_int(card_ip)
        self.peer_mac = mac_to_int(peer_mac)
        if rcv_window is not None and not 0 <= rcv_window < 1 << 16:
            raise TcpCheckError(f"rcv_window must fit 16 bits, not {rcv_window!r}")
        self.rcv_window = rcv_window
        self.learn_connections = learn_connections
        self._connections: dict[tuple[int, int, int], _Connection] = {}
        self._all: list[_Connection] = []
        self._errors: list[CheckError] = []
        self._ignored = 0
        self._index = 0
        for c in connections:
            if not isinstance(c, TcpConnection):
                raise TcpCheckError(f"connections must be TcpConnection, not {c!r}")
            self._open(c)

    def _open(self, connection: TcpConnection) -> _Connection:
        state = _Connection(connection)
        self._connections[connection.key] = state
        self._all.append(state)
        return state

    def feed_all(self, records: Iterable[tuple]) -> None:
        """Feed ``(direction, frame)``, ``(direction, frame, timestamp_ns)`` or
        ``(direction, frame, timestamp_ns, host)`` records."""
        for record in records:
            if not 2 <= len(record) <= 4:
                raise TcpCheckError(f"a record is (direction, frame[, timestamp_ns[, host]]), "
                                    f"not {len(record)} items")
            direction, frame, *rest = record
            timestamp_ns = rest[0] if rest else None
            host = rest[1] if len(rest) > 1 else False
            self.feed(direction, frame, timestamp_ns=timestamp_ns, host=host)

    def feed(self, direction: Direction | str, frame: bytes, *, timestamp_ns: int | None = None,
             host: bool | None = False) -> None:
        """One frame in wire order.

        ``host`` marks a frame the card sent for the host (``i_host_frame``): ARP, SYN, FIN,
        RST, options are allowed there and it does not count as a card segment. None infers it:
        anything not TCP, any SYN/FIN/RST, and everything after a FIN or RST on its connection.
        """
        try:
            direction = Direction(direction)
        except ValueError:
            raise TcpCheckError(f"direction must be one of {[d.value for d in Direction]}, "
                                f"not {direction!r}") from None
        index = self._index
        self._index += 1
        parsed = parse_frame(frame)
        if direction is Direction.CARD_SENT:
            self._card_frame(index, timestamp_ns, parsed, bytes(frame), host)
        else:
            self._peer_frame(index, timestamp_ns, parsed)

    # -- frames the card sent -------------------------------------------------------------------

    def _error(self, index: int | None, direction: Direction, state: _Connection | None,
               timestamp_ns: int | None, message: str) -> None:
        error = CheckError(index, direction, state.connection if state else None, message,
                           timestamp_ns)
        self._errors.append(error)
        if state is not None:
            state.report.errors.append(error)
        logger.debug("%s", error)

    def _card_frame(self, index: int, timestamp_ns: int | None, p: ParsedFrame | None,
                    frame: bytes, host: bool | None) -> None:
        pending: list[str] = []
        sent = Direction.CARD_SENT
        if p is None:
            self._error(index, sent, None, timestamp_ns,
                        f"runt frame of {len(frame)} bytes: {frame.hex()}")
            return
        if host is None:
            host = (p.tcp is None or bool(p.flags & (TCP_SYN | TCP_FIN | TCP_RST))
                    or self._closing(p))
        eth = p.ethernet
        if eth["source_address"] != self.card_mac:
            pending.append(f"Ethernet source {int_to_mac(eth['source_address'])}, expected the "
                           f"card's {int_to_mac(self.card_mac)}")
        allowed = (self.peer_mac, _BROADCAST_MAC) if host else (self.peer_mac,)
        if eth["destination_address"] not in allowed:
            pending.append(f"Ethernet destination {int_to_mac(eth['destination_address'])}, "
                           f"expected the peer's {int_to_mac(self.peer_mac)}")
        if p.ip is None or p.problem is not None or p.tcp is None:
            if not host:
                what = (p.problem if p.problem is not None
                        else f"EtherType {eth['ethertype']:#06x}" if p.ip is None
                        else f"IP protocol {p.ip['protocol']}")
                pending.append(f"not an IPv4/TCP segment the card builds: {what}")
            for message in pending:
                self._error(index, sent, None, timestamp_ns, message)
            state = None
            if p.tcp is not None:
                state = self._connections.get((p.tcp["source_port"], p.ip["destination_address"],
                                               p.tcp["destination_port"]))
            if state is not None:
                state.report.card_host_frames += 1
            return
        ip, tcp = p.ip, p.tcp
        if ip["version_ihl"] != IPV4_VERSION_IHL:
            pending.append(f"IPv4 version/IHL {ip['version_ihl']:#04x}, expected 0x45 (no options)")
        if not host and ip["type_of_service"] != 0:
            pending.append(f"IPv4 type of service {ip['type_of_service']:#04x}, expected 0")
        ip_length = len(frame) - ETHERNET_HEADER_LENGTH
        if ip["total_length"] != ip_length and not (
                len(frame) == MIN_FRAME_LENGTH and ETHERNET_HEADER_LENGTH + ip["total_length"] < MIN_FRAME_LENGTH):
            pending.append(f"IPv4 total length {ip['total_length']} but the frame carries "
                           f"{ip_length} bytes after the Ethernet header (and is not padding to "
                           f"{MIN_FRAME_LENGTH})")
        if not host and ip["flags_fragment_offset"] != IPV4_FLAG_DONT_FRAGMENT:
            pending.append(f"IPv4 flags/fragment offset {ip['flags_fragment_offset']:#06x}, "
                           f"expected {IPV4_FLAG_DONT_FRAGMENT:#06x} (DF, not a fragment)")
        if not host and ip["time_to_live"] != IPV4_TIME_TO_LIVE:
            pending.append(f"IPv4 TTL {ip['time_to_live']}, expected {IPV4_TIME_TO_LIVE}")
        if not p.ip_checksum_ok:
            header = bytearray(frame[ETHERNET_HEADER_LENGTH:ETHERNET_HEADER_LENGTH + p.ip_header_length])
            header[10:12] = b"\0\0"
            pending.append(f"IPv4 header checksum {ip['header_checksum']:#06x}, expected "
                           f"{ipv4_checksum(bytes(header)):#06x}")
        if ip["source_address"] != self.card_ip:
            pending.append(f"IPv4 source {int_to_ip(ip['source_address'])}, expected the card's "
                           f"{int_to_ip(self.card_ip)}")
        if not p.tcp_checksum_ok:
            segment = bytearray(frame[ETHERNET_HEADER_LENGTH + p.ip_header_length:
                                      ETHERNET_HEADER_LENGTH + ip["total_length"]])
            segment[16:18] = b"\0\0"
            expected = tcp_checksum(ip["source_address"], ip["destination_address"], bytes(segment))
            pending.append(f"TCP checksum {tcp['checksum']:#06x}, expected {expected:#06x}")
        flags = tcp["flags"]
        if not host:
            if p.tcp_options:
                pending.append(f"TCP options present (data offset {tcp['data_offset'] >> 4} words): "
                               f"{p.tcp_options.hex()}")
            if flags not in (TCP_ACK, TCP_ACK | TCP_PSH):
                pending.append(f"TCP flags {_flag_names(flags)} ({flags:#04x}); the card sends only "
                               f"ACK or ACK|PSH")
            elif bool(p.payload) != bool(flags & TCP_PSH):
                pending.append(f"TCP flags {_flag_names(flags)} on a segment with {len(p.payload)} "
                               f"bytes: data goes with ACK|PSH, a pure ACK with ACK")
            if tcp["urgent_pointer"] != 0:
                pending.append(f"TCP urgent pointer {tcp['urgent_pointer']}, expected 0")
            if self.rcv_window is not None and tcp["window"] != self.rcv_window:
                pending.append(f"TCP window {tcp['window']}, expected rcv_window {self.rcv_window}")

        key = (tcp["source_port"], ip["destination_address"], tcp["destination_port"])
        state = self._connections.get(key)
        if host and flags & TCP_SYN and not flags & TCP_ACK:
            if state is None or (state.frames and state.syn_sequence != tcp["sequence_number"]):
                if state is not None or self.learn_connections:
                    state = self._open(TcpConnection(*key))
            if state is not None:
                if state.syn_sequence is None:
                    state.syn_sequence = tcp["sequence_number"]
                    state.card.set_origin(tcp["sequence_number"] + 1)
        if state is None:
            pending.append(f"segment of no known connection: card:{key[0]} -> "
                           f"{int_to_ip(key[1])}:{key[2]}")
            for message in pending:
                self._error(index, sent, None, timestamp_ns, message)
            return
        for message in pending:
            self._error(index, sent, state, timestamp_ns, message)
        state.frames += 1
        self._card_segment(index, timestamp_ns, state, p, host)

    def _closing(self, p: ParsedFrame) -> bool:
        state = self._connections.get((p.tcp["source_port"], p.ip["destination_address"],
                                       p.tcp["destination_port"]))
        return state is not None and state.closing

    def _card_segment(self, index: int, timestamp_ns: int | None, state: _Connection,
                      p: ParsedFrame, host: bool) -> None:
        sent = Direction.CARD_SENT
        tcp, report, card, peer = p.tcp, state.report, state.card, state.peer
        flags = tcp["flags"]

        def error(message: str) -> None:
            self._error(index, sent, state, timestamp_ns, message)

        if host:
            report.card_host_frames += 1
        else:
            identification = p.ip["identification"]
            if (state.last_identification is not None
                    and identification != (state.last_identification + 1) & 0xFFFF):
                error(f"IPv4 identification {identification}, expected "
                      f"{(state.last_identification + 1) & 0xFFFF} (one more than the session's "
                      f"previous packet)")
            state.last_identification = identification
        if flags & TCP_RST:
            state.closing = True
        if flags & TCP_ACK:
            ack = tcp["acknowledgment_number"]
            if peer.origin is None and not peer.ranges.starts:
                peer.origin = ack                    # RCV.NXT at the start of the capture
            ack_offset = peer.offset(ack)
            allowed = peer.acceptable_ack()
            if ack_offset > allowed:
                error(f"acknowledgment number {ack} acknowledges {ack_offset - allowed} byte(s) "
                      f"beyond the peer's in-order data, which ends at {peer.sequence(allowed)}")
            if not host and state.last_card_ack is not None and ack_offset < state.last_card_ack:
                error(f"acknowledgment number {ack} went backwards from "
                      f"{peer.sequence(state.last_card_ack)}")
            if not host:
                state.last_card_ack = ack_offset
        sequence_number = tcp["sequence_number"]
        if flags & TCP_SYN:
            return
        offset = card.offset(sequence_number)
        payload = p.payload
        end = offset + len(payload)
        if payload:
            report.card_segments += 1
            if card.origin_known and offset < 0:
                error(f"sequence number {sequence_number} is {-offset} byte(s) before the "
                      f"stream's start {card.sequence(0)}")
            new, conflicts = card.ranges.add(offset, payload)
            if new < len(payload):
                report.card_retransmitted_segments += 1
            for position, old, now in conflicts:
                error(f"retransmitted byte at sequence number {card.sequence(position)} (stream "
                      f"offset {position}) is {now:#04x}, first sent as {old:#04x}")
            if state.peer_window is not None and end > state.peer_ack_offset + state.peer_window:
                edge = state.peer_ack_offset + state.peer_window
                error(f"sends bytes up to sequence number {card.sequence(end)}, {end - edge} "
                      f"byte(s) beyond the peer's window (ack {card.sequence(state.peer_ack_offset)}"
                      f" + window {state.peer_window} = {card.sequence(edge)})")
        elif not flags & (TCP_FIN | TCP_SYN | TCP_RST) and not host:
            report.card_pure_acks += 1
            if offset > card.high:
                error(f"pure ACK with sequence number {sequence_number}, beyond SND.MAX "
                      f"{card.sequence(card.high)}")
            elif offset < card.high:
                report.card_window_probes += 1
        if flags & TCP_FIN:
            card.fin_offset = end
            report.card_fin = True
            state.closing = True
        card.high = max(card.high, end + (1 if flags & TCP_FIN else 0))

    # -- frames the card received ---------------------------------------------------------------

    def _peer_frame(self, index: int, timestamp_ns: int | None, p: ParsedFrame | None) -> None:
        if (p is None or p.tcp is None or p.problem is not None
                or p.ip["destination_address"] != self.card_ip):
            self._ignored += 1
            return
        key = (p.tcp["destination_port"], p.ip["source_address"], p.tcp["source_port"])
        state = self._connections.get(key)
        if state is None:
            self._ignored += 1
            return
        state.frames += 1
        report, tcp, card, peer = state.report, p.tcp, state.card, state.peer
        flags = tcp["flags"]
        where = f"frame {index}"
        if not (p.ip_checksum_ok and p.tcp_checksum_ok):
            report.peer_bad_checksums += 1
            report.notes.append(f"{where}: bad {'IPv4' if not p.ip_checksum_ok else 'TCP'} "
                                f"checksum (the card drops it)")
            return
        if p.ip["flags_fragment_offset"] & (IPV4_FLAG_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK):
            report.notes.append(f"{where}: IPv4 fragment, not reassembled")
            return
        if flags & TCP_RST:
            report.peer_reset = True
            state.closing = True
            report.notes.append(f"{where}: RST from the peer")
            return
        sequence_number = tcp["sequence_number"]
        if flags & TCP_SYN:
            if not peer.ranges.starts:
                peer.set_origin(sequence_number + 1)
        offset = peer.offset(sequence_number + (1 if flags & TCP_SYN else 0))
        payload = p.payload
        end = offset + len(payload)
        if payload:
            report.peer_segments += 1
            new, conflicts = peer.ranges.add(offset, payload)
            if new < len(payload):
                report.peer_retransmitted_segments += 1
            for position, old, now in conflicts:
                report.notes.append(f"{where}: peer resent byte at stream offset {position} as "
                                    f"{now:#04x}, first sent as {old:#04x}")
        if flags & TCP_FIN:
            peer.fin_offset = end
            report.peer_fin = True
            state.closing = True
        peer.high = max(peer.high, end + (1 if flags & TCP_FIN else 0))
        if flags & TCP_ACK:
            ack, window = tcp["acknowledgment_number"], tcp["window"]
            if flags & TCP_SYN and not card.ranges.starts:
                card.set_origin(ack)
            ack_offset = card.offset(ack)
            if ack_offset > card.high:
                report.notes.append(f"{where}: peer acknowledges {ack}, beyond the card's SND.MAX "
                                    f"{card.sequence(card.high)}")
            ack_offset = min(ack_offset, card.high)
            if state.peer_ack_offset is None or ack_offset > state.peer_ack_offset:
                state.peer_ack_offset = ack_offset
            state.peer_window = window
            if not payload and not flags & (TCP_SYN | TCP_FIN):
                report.peer_pure_acks += 1
                if state.last_peer_ack == (ack, window):
                    report.peer_duplicate_acks += 1
            state.last_peer_ack = (ack, window)

    # -- results --------------------------------------------------------------------------------

    def result(self) -> TcpCheckResult:
        """Reports and errors so far, with gaps in the card's streams as errors (the card sends
        its bytes in order, so a byte never seen below one that was is a bug or a lost capture)."""
        errors = list(self._errors)
        reports = []
        for state in self._all:
            report = state.report
            card, peer = state.card, state.peer
            report.card_stream = card.ranges.stream(card.start)
            report.peer_stream = peer.ranges.stream(peer.start)
            report.card_gaps = card.ranges.gaps(card.start)
            report.peer_gaps = peer.ranges.gaps(peer.start)
            report.errors = [e for e in state.report.errors if e.index is not None]
            for start, end in report.card_gaps:
                error = CheckError(None, Direction.CARD_SENT, state.connection,
                                   f"bytes at sequence numbers {card.sequence(start)}.."
                                   f"{card.sequence(end - 1)} (stream offsets {start}..{end - 1}) "
                                   f"were never sent, but bytes after them were")
                errors.append(error)
                report.errors.append(error)
            reports.append(report)
        return TcpCheckResult(reports, errors, self._ignored)


def check_pcap(path: str | os.PathLike, *, card_mac: int | str, card_ip: int | str,
               peer_mac: int | str, connections: Iterable[TcpConnection] = (),
               rcv_window: int | None = None) -> TcpCheckResult:
    """Check a capture of the card's order port (classic pcap, or pcapng through scapy).

    Frames from ``card_mac`` are the card's; host frames are inferred (see
    :meth:`TcpStreamChecker.feed`).
    """
    from .pcap import PcapError, read_pcap
    try:
        records = read_pcap(path)
    except PcapError as e:
        if "pcapng" not in str(e):
            raise TcpCheckError(str(e)) from None
        from scapy.utils import rdpcap
        records = [(int(packet.time * 1_000_000_000), bytes(packet)) for packet in rdpcap(str(path))]
    checker = TcpStreamChecker(card_mac=card_mac, card_ip=card_ip, peer_mac=peer_mac,
                               connections=connections, rcv_window=rcv_window)
    card_mac_bytes = mac_to_int(card_mac).to_bytes(6, "big")
    for timestamp_ns, frame in records:
        direction = Direction.CARD_SENT if frame[6:12] == card_mac_bytes else Direction.CARD_RECEIVED
        checker.feed(direction, frame, timestamp_ns=timestamp_ns, host=None)
    result = checker.result()
    logger.info("%s: %d frames, %d connection(s), %d error(s)", path, len(records),
                len(result.reports), len(result.errors))
    return result


# -- the scripted peer ----------------------------------------------------------------------------

def _after(a: int, b: int) -> bool:
    """Sequence number ``a`` is after ``b`` (RFC 9293 modular comparison)."""
    return 0 < (a - b) % _SEQUENCE_MODULUS < 1 << 31


class ScriptedPeer:
    """A minimal TCP peer of one card connection, driven by the test, for gateware unit tests.

    It answers the card's segments as a real peer does: in-order data is taken and acknowledged
    (one ACK per data segment while ``auto_ack``), out-of-order data is kept and answered with a
    duplicate ACK, old data with an ACK, bytes beyond its window are cut off, a window probe
    gets an ACK, a SYN from the host gets a SYN-ACK. It never retransmits by itself and keeps no
    timers: the test calls :meth:`retransmit`.

    Parameters
    ----------
    card_mac, card_ip, card_port, peer_mac, peer_ip, peer_port
        The connection's addresses.
    card_sequence
        The card's first data sequence number (its ``snd_nxt`` register, ISS + 1).
    peer_sequence
        The peer's first data sequence number (the card's ``rcv_nxt``, the peer's ISS + 1).
    window
        The window the peer advertises (change it with :meth:`set_window`).
    mss
        Largest payload :meth:`send` puts in one segment; sent as the SYN-ACK's MSS option.
    auto_ack
        Acknowledge every accepted in-order data segment at once.

    Frames are built with :func:`build_tcp_frame` (no padding, no FCS).
    """

    def __init__(self, *, card_mac: int | str, card_ip: int | str, card_port: int,
                 peer_mac: int | str, peer_ip: int | str, peer_port: int, card_sequence: int,
                 peer_sequence: int, window: int = 65535, mss: int = 1460,
                 auto_ack: bool = True) -> None:
        for name, value in (("card_port", card_port), ("peer_port", peer_port)):
            if not isinstance(value, int) or not 0 < value < 1 << 16:
                raise TcpCheckError(f"{name} must be a port number 1..65535, not {value!r}")
        for name, value in (("card_sequence", card_sequence), ("peer_sequence", peer_sequence)):
            if not isinstance(value, int) or not 0 <= value < _SEQUENCE_MODULUS:
                raise TcpCheckError(f"{name} must be a 32-bit sequence number, not {value!r}")
        if not 0 <= window < 1 << 16:
            raise TcpCheckError(f"window must fit 16 bits (no window scaling), not {window!r}")
        if not 1 <= mss <= 0xFFFF:
            raise TcpCheckError(f"mss must be 1..65535, not {mss!r}")
        self.card_mac, self.card_ip, self.card_port = mac_to_int(card_mac), ip_to_int(card_ip), card_port
        self.peer_mac, self.peer_ip, self.peer_port = mac_to_int(peer_mac), ip_to_int(peer_ip), peer_port
        self.window = window
        self.mss = mss
        self.auto_ack = auto_ack
        #: The connection as the checker knows it (streams start where the peer starts them).
        self.connection = TcpConnection(card_port, self.peer_ip, peer_port, snd_nxt=card_sequence,
                                        rcv_nxt=peer_sequence, peer_window=window)
        #: Next sequence number expected from the card (RCV.NXT) and the card stream so far.
        self.rcv_nxt = card_sequence
        self.received = bytearray()
        #: RCV.NXT + window of the last segment sent: data beyond it is cut off.
        self._right_edge = (card_sequence + window) % _SEQUENCE_MODULUS
        #: The peer's SND.UNA / SND.NXT and its sent, not yet acknowledged segments.
        self.snd_una = peer_sequence
        self.snd_nxt = peer_sequence
        self._unacked: list[tuple[int, bytes]] = []
        self._out_of_order: dict[int, bytes] = {}
        self._drop: set[int] = set()
        self._identification = 0
        #: The card's last advertised window.
        self.card_window: int | None = None
        self.data_segments_received = 0
        #: Indexes (in :attr:`data_segments_received` order) of the card segments dropped.
        self.dropped: list[int] = []
        self.duplicate_acks_sent = 0
        self.beyond_window_bytes = 0
        self.bad_checksums = 0
        self.ignored = 0
        self.reset_received = False
        self.fin_received = False

    # -- building frames ------------------------------------------------------------------------

    def segment(self, payload: bytes = b"", *, sequence_number: int | None = None,
                acknowledgment_number: int | None = None, flags: int | None = None,
                window: int | None = None, options: bytes = b"", ip_options: bytes = b"",
                bad_ip_checksum: bool = False, bad_tcp_checksum: bool = False) -> bytes:
        """A frame to the card. Defaults: SND.NXT, RCV.NXT, ACK|PSH with data and ACK without,
        the current window. A frame with the default acknowledgment number and window advertises
        the window: the peer takes data up to RCV.NXT + window from then on."""
        if flags is None:
            flags = TCP_ACK | TCP_PSH if payload else TCP_ACK
        if acknowledgment_number is None and window is None:
            self._right_edge = (self.rcv_nxt + self.window) % _SEQUENCE_MODULUS
        self._identification = (self._identification + 1) & 0xFFFF
        return build_tcp_frame(
            source_mac=self.peer_mac, destination_mac=self.card_mac, source_ip=self.peer_ip,
            destination_ip=self.card_ip, source_port=self.peer_port, destination_port=self.card_port,
            sequence_number=self.snd_nxt if sequence_number is None else sequence_number,
            acknowledgment_number=self.rcv_nxt if acknowledgment_number is None else acknowledgment_number,
            flags=flags, window=self.window if window is None else window, payload=payload,
            identification=self._identification, options=options, ip_options=ip_options,
            bad_ip_checksum=bad_ip_checksum, bad_tcp_checksum=bad_tcp_checksum)

    def send(self, data: bytes) -> list[bytes]:
        """Data segments of at most ``mss`` bytes, in order, from SND.NXT (which advances)."""
        frames = []
        for start in range(0, len(data), self.mss):
            chunk = bytes(data[start:start + self.mss])
            frames.append(self.segment(chunk))
            self._unacked.append((self.snd_nxt, chunk))
            self.snd_nxt = (self.snd_nxt + len(chunk)) % _SEQUENCE_MODULUS
        return frames

    def send_soup(self, packet_type: str, payload: bytes = b"") -> list[bytes]:
        """One SoupBinTCP packet (``packet_type``, ``payload``) as data segments."""
        return self.send(soupbintcp.frame(packet_type, payload))

    def retransmit(self) -> list[bytes]:
        """Every unacknowledged segment again, same bytes and sequence numbers (go-back-N)."""
        return [self.segment(chunk, sequence_number=seq) for seq, chunk in self._unacked]

    def ack(self, *, window: int | None = None) -> bytes:
        """A pure ACK of RCV.NXT."""
        return self.segment(window=window)

    def set_window(self, window: int) -> bytes:
        """Advertise ``window`` from now on (0 closes it); returns the window update ACK."""
        if not 0 <= window < 1 << 16:
            raise TcpCheckError(f"window must fit 16 bits (no window scaling), not {window!r}")
        self.window = window
        return self.ack()

    def fin(self) -> bytes:
        """FIN|ACK at SND.NXT (which takes one sequence number)."""
        frame = self.segment(flags=TCP_FIN | TCP_ACK)
        self.snd_nxt = (self.snd_nxt + 1) % _SEQUENCE_MODULUS
        return frame

    def rst(self) -> bytes:
        """RST|ACK at SND.NXT."""
        return self.segment(flags=TCP_RST | TCP_ACK)

    def drop_card_segments(self, *indexes: int) -> None:
        """Lose the card's data segments with these indexes (0 = the first data segment the peer
        is given, retransmissions counted), as a lossy link would."""
        for i in indexes:
            if not isinstance(i, int) or i < 0:
                raise TcpCheckError(f"segment indexes are ints >= 0, not {i!r}")
        self._drop.update(indexes)

    # -- taking the card's frames ---------------------------------------------------------------

    def receive(self, frame: bytes) -> list[bytes]:
        """Take one frame the card sent; returns the frames the peer answers with."""
        p = parse_frame(frame)
        if (p is None or p.tcp is None or p.problem is not None
                or p.ethernet["destination_address"] != self.peer_mac
                or p.ip["source_address"] != self.card_ip or p.ip["destination_address"] != self.peer_ip
                or p.tcp["source_port"] != self.card_port or p.tcp["destination_port"] != self.peer_port):
            self.ignored += 1
            return []
        if not (p.ip_checksum_ok and p.tcp_checksum_ok):
            self.bad_checksums += 1
            return []
        tcp = p.tcp
        flags, seq = tcp["flags"], tcp["sequence_number"]
        if flags & TCP_RST:
            self.reset_received = True
            return []
        if flags & TCP_SYN:
            self.rcv_nxt = (seq + 1) % _SEQUENCE_MODULUS
            self.received.clear()
            self._out_of_order.clear()
            mss_option = bytes((_MSS_OPTION_KIND, 4)) + self.mss.to_bytes(2, "big")
            return [self.segment(sequence_number=self.snd_nxt - 1, flags=TCP_SYN | TCP_ACK,
                                 options=mss_option)]
        if flags & TCP_ACK:
            ack = tcp["acknowledgment_number"]
            if _after(ack, self.snd_una) and not _after(ack, self.snd_nxt):
                self.snd_una = ack
                self._unacked = [(s, c) for s, c in self._unacked
                                 if _after((s + len(c)) % _SEQUENCE_MODULUS, ack)]
            self.card_window = tcp["window"]
        payload = p.payload
        if not payload and not flags & TCP_FIN:
            # A window probe (SND.UNA - 1) gets an ACK; an ordinary pure ACK gets nothing.
            return [self.ack()] if seq == (self.rcv_nxt - 1) % _SEQUENCE_MODULUS else []
        if payload:
            index = self.data_segments_received
            self.data_segments_received += 1
            if index in self._drop:
                self.dropped.append(index)
                return []
        return self._take(seq, payload, bool(flags & TCP_FIN))

    def _take(self, seq: int, payload: bytes, fin: bool) -> list[bytes]:
        # Cut off what lies beyond the window last advertised.
        room = (self._right_edge - seq) % _SEQUENCE_MODULUS
        if _after(seq, self._right_edge):
            room = 0
        if len(payload) > room:
            self.beyond_window_bytes += len(payload) - room
            payload, fin = payload[:room], False
        if _after(seq, self.rcv_nxt):
            if payload:
                self._out_of_order[seq] = payload
            self.duplicate_acks_sent += 1
            return [self.ack()]
        skip = (self.rcv_nxt - seq) % _SEQUENCE_MODULUS
        if skip < len(payload):
            self._deliver(payload[skip:])
        elif not (fin and skip == len(payload)):
            self.duplicate_acks_sent += 1      # all old: a duplicate, answered at once
            return [self.ack()]
        if fin and (seq + len(payload)) % _SEQUENCE_MODULUS == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + 1) % _SEQUENCE_MODULUS
            self.fin_received = True
            return [self.ack()]
        return [self.ack()] if self.auto_ack else []

    def _deliver(self, data: bytes) -> None:
        self.received += data
        self.rcv_nxt = (self.rcv_nxt + len(data)) % _SEQUENCE_MODULUS
        while True:       # out-of-order data that now continues the stream
            for seq, chunk in list(self._out_of_order.items()):
                skip = (self.rcv_nxt - seq) % _SEQUENCE_MODULUS
                if not _after(seq, self.rcv_nxt):
                    del self._out_of_order[seq]
                    if skip < len(chunk):
                        self.received += chunk[skip:]
                        self.rcv_nxt = (self.rcv_nxt + len(chunk) - skip) % _SEQUENCE_MODULUS
                        break
            else:
                return
