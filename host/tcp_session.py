"""The host's part of the card's order-session TCP (docs/tcp.md "Host: the connection"): ARP, the
handshake, RTO and window probes, teardown, and a SoupBinTCP 4.0 client over a card session.

The card owns the byte stream; the host owns the connection. Everything here talks to the card
through a :class:`TcpCardPort` (register access to the ``tcp`` window, raw frames to send, and
the frames and payload the card hands up), so the same code drives the reference model
(:class:`tickwire.sim.tcp_card_model.ModelCardPort`), the simulated card and the board.

Nothing here blocks or starts a thread: :meth:`TcpCard.service` (punted frames, payload, timers)
and :meth:`CardSoupBinSession.service` are called from the caller's loop; :meth:`TcpCard.run_until`
is that loop for callers that want to wait for something, with an ``idle`` callable that moves
frames on the network side (a TAP bridge, a test's peer) meanwhile.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from tickwire.protocols import soupbintcp
from tickwire.protocols.net import (ARP, ARP_HARDWARE_ETHERNET, ARP_REPLY, ARP_REQUEST, BROADCAST_MAC,
                                    ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_ARP, ETHERTYPE_IPV4,
                                    IP_PROTOCOL_TCP, IPV4, IPV4_HEADER_LENGTH, TCP, TCP_ACK, TCP_DEFAULT_MSS,
                                    TCP_FIN, TCP_HEADER_LENGTH, TCP_HEADER_OFFSET, TCP_OPTION_END,
                                    TCP_OPTION_MSS, TCP_OPTION_MSS_LENGTH, TCP_OPTION_NOP, TCP_PSH,
                                    TCP_RST, TCP_SYN, int_to_ip, int_to_mac, ip_to_int, ipv4_checksum,
                                    mac_to_int, tcp_checksum, tcp_frame)

from .errors import TickwireError

__all__ = ["TcpCardPort", "TcpSessionError", "TcpConnectError", "CardAddress", "TcpTimers", "Segment",
           "parse_segment", "build_segment", "TcpCard", "TcpConnection", "CardSoupBinSession"]

logger = logging.getLogger(__name__)

MASK32 = (1 << 32) - 1
#: Our MSS in the SYN: an Ethernet MTU of 1500 less the IPv4 and TCP headers.
DEFAULT_MSS = 1500 - IPV4_HEADER_LENGTH - TCP_HEADER_LENGTH
EPHEMERAL_PORTS = (49152, 65535)


class TcpSessionError(TickwireError):
    """A card TCP session was set up or used wrongly (bad address, port, session, state)."""


class TcpConnectError(TcpSessionError):
    """A connection could not be made: no ARP answer, no SYN-ACK, or refused (RST)."""


@runtime_checkable
class TcpCardPort(Protocol):
    """What the host needs of a card's TCP engine (docs/tcp.md).

    ``read``/``write`` take the qualified register name (``"tcp.snd_una"``); with ``session`` the
    port selects that session (``tcp.session``) first, in one step. Commands (``tcp.retransmit``,
    ``tcp.send_ack``, ``tcp.probe``) are writes of the session number. ``append`` puts one whole
    SoupBinTCP packet into ``i_host_data``; ``send_frame`` a raw frame into ``i_host_frame``;
    ``poll`` returns, without waiting, the frames the card punted (``o_host_frame``) and the
    in-order payload it received (``o_payload``, as ``(session, bytes)``) since the last poll.
    """

    def read(self, name: str, session: int | None = None) -> int: ...

    def write(self, name: str, value: int, session: int | None = None) -> None: ...

    def send_frame(self, frame: bytes) -> None: ...

    def append(self, session: int, packet: bytes) -> None: ...

    def poll(self) -> tuple[list[bytes], list[tuple[int, bytes]]]: ...


def _diff(a: int, b: int) -> int:
    return (a - b) & MASK32


def _seq_lt(a: int, b: int) -> bool:
    return a != b and _diff(b, a) < 1 << 31


# -- frames --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """A parsed Ethernet/IPv4/TCP frame (checksums verified)."""

    source_mac: int
    destination_mac: int
    source_ip: int
    destination_ip: int
    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    mss: int | None        # the MSS option, when present

    def describe(self) -> str:
        names = "".join(n for bit, n in ((TCP_SYN, "S"), (TCP_FIN, "F"), (TCP_RST, "R"), (TCP_PSH, "P"),
                                         (TCP_ACK, ".")) if self.flags & bit)
        return (f"{int_to_ip(self.source_ip)}:{self.source_port} > {int_to_ip(self.destination_ip)}:"
                f"{self.destination_port} [{names}] seq {self.seq} ack {self.ack} win {self.window} "
                f"len {len(self.payload)}")


def parse_segment(frame: bytes) -> Segment | None:
    """The TCP segment in ``frame``, or None when it is not a well-formed IPv4/TCP frame with right
    checksums (IP options and TCP options other than MSS are skipped over)."""
    if len(frame) < TCP_HEADER_OFFSET + TCP_HEADER_LENGTH:
        return None
    eth = ETHERNET.unpack(frame)
    if eth["ethertype"] != ETHERTYPE_IPV4:
        return None
    ip_start = ETHERNET_HEADER_LENGTH
    ip = IPV4.unpack(frame[ip_start:])
    ihl = (ip["version_ihl"] & 0x0F) * 4
    if ip["version_ihl"] >> 4 != 4 or ihl < IPV4_HEADER_LENGTH or ip["protocol"] != IP_PROTOCOL_TCP:
        return None
    total = ip["total_length"]
    if total < ihl + TCP_HEADER_LENGTH or ip_start + total > len(frame) \
            or ipv4_checksum(frame[ip_start:ip_start + ihl]) != 0 or ip["flags_fragment_offset"] & 0x3FFF:
        return None
    segment = frame[ip_start + ihl:ip_start + total]
    if tcp_checksum(ip["source_address"], ip["destination_address"], segment) != 0:
        return None
    tcp = TCP.unpack(segment)
    offset = (tcp["data_offset"] >> 4) * 4
    if offset < TCP_HEADER_LENGTH or offset > len(segment):
        return None
    return Segment(eth["source_address"], eth["destination_address"], ip["source_address"],
                   ip["destination_address"], tcp["source_port"], tcp["destination_port"],
                   tcp["sequence_number"], tcp["acknowledgment_number"], tcp["flags"], tcp["window"],
                   bytes(segment[offset:]), _mss_option(segment[TCP_HEADER_LENGTH:offset]))


def _mss_option(options: bytes) -> int | None:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == TCP_OPTION_END:
            break
        if kind == TCP_OPTION_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return None
        length = options[i + 1]
        if kind == TCP_OPTION_MSS and length == TCP_OPTION_MSS_LENGTH and i + 4 <= len(options):
            return int.from_bytes(options[i + 2:i + 4], "big")
        i += length
    return None


def build_segment(*, source_mac: int, destination_mac: int, source_ip: int, destination_ip: int,
                  source_port: int, destination_port: int, seq: int, ack: int, flags: int, window: int,
                  identification: int = 0, payload: bytes = b"", mss: int | None = None) -> bytes:
    """An Ethernet/IPv4/TCP frame the host sends through the card (SYN, FIN, RST, ACK): DF, TTL 64,
    both checksums, an MSS option only when ``mss`` is given."""
    options = b""
    if mss is not None:
        options = bytes((TCP_OPTION_MSS, TCP_OPTION_MSS_LENGTH)) + mss.to_bytes(2, "big")
    return tcp_frame(source_mac=source_mac, destination_mac=destination_mac, source_ip=source_ip,
                     destination_ip=destination_ip, source_port=source_port,
                     destination_port=destination_port, seq=seq, ack=ack, flags=flags, window=window,
                     identification=identification, payload=payload, options=options)


def _arp_frame(*, operation: int, sender_mac: int, sender_ip: int, target_mac: int, target_ip: int,
               destination_mac: int) -> bytes:
    return ETHERNET.pack(destination_address=destination_mac, source_address=sender_mac,
                         ethertype=ETHERTYPE_ARP) + ARP.pack(
        hardware_type=ARP_HARDWARE_ETHERNET, protocol_type=ETHERTYPE_IPV4, hardware_length=6,
        protocol_length=4, operation=operation, sender_hardware_address=sender_mac,
        sender_protocol_address=sender_ip, target_hardware_address=target_mac,
        target_protocol_address=target_ip)


# -- configuration ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardAddress:
    """The card's order port on the network: its MAC and IPv4 address, the subnet, the gateway."""

    local_mac: int
    local_ip: int
    prefix_length: int = 24
    gateway_ip: int | None = None
    rcv_window: int = 65535

    @classmethod
    def of(cls, local_mac: str | int | bytes, local_ip: str | int | bytes, *, prefix_length: int = 24,
           gateway_ip: str | int | None = None, rcv_window: int = 65535) -> "CardAddress":
        """From text or integers; :class:`TcpSessionError` names a bad value."""
        try:
            mac = mac_to_int(local_mac)
            ip = ip_to_int(local_ip)
            gateway = None if gateway_ip is None else ip_to_int(gateway_ip)
        except ValueError as e:
            raise TcpSessionError(f"card address: {e}") from None
        return cls(mac, ip, prefix_length, gateway, rcv_window)

    def __post_init__(self) -> None:
        if not 0 < self.local_mac < BROADCAST_MAC or self.local_mac >> 40 & 1:
            raise TcpSessionError(f"card MAC {self.local_mac:#x} must be a unicast address")
        if not 0 < self.local_ip < 1 << 32:
            raise TcpSessionError(f"card IPv4 address {self.local_ip!r} is not a host address")
        if isinstance(self.prefix_length, bool) or not isinstance(self.prefix_length, int) \
                or not 1 <= self.prefix_length <= 32:
            raise TcpSessionError(f"prefix length must be 1..32, not {self.prefix_length!r}")
        if not 0 < self.rcv_window <= 0xFFFF:
            raise TcpSessionError(f"receive window must be 1..65535 bytes, not {self.rcv_window!r}")

    def next_hop(self, ip: int) -> int:
        """The address to resolve for ``ip``: itself on the subnet, else the gateway."""
        mask = (MASK32 << (32 - self.prefix_length)) & MASK32
        if (ip & mask) == (self.local_ip & mask):
            return ip
        if self.gateway_ip is None:
            raise TcpSessionError(f"{int_to_ip(ip)} is not on {int_to_ip(self.local_ip)}/"
                                  f"{self.prefix_length} and no gateway is configured")
        return self.gateway_ip


@dataclass(frozen=True)
class TcpTimers:
    """Timer settings (seconds). RFC 6298: the first RTO is ``initial_rto``, never below
    ``min_rto`` (RFC 6298 says 1 s; Linux uses 0.2 s) nor above ``max_rto``; it doubles on each
    expiry. ``clock_granularity`` is the G of RFC 6298."""

    initial_rto: float = 1.0
    min_rto: float = 1.0
    max_rto: float = 60.0
    clock_granularity: float = 0.001
    syn_retries: int = 5
    fin_retries: int = 5
    arp_interval: float = 0.5
    arp_retries: int = 5
    time_wait: float = 1.0
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("initial_rto", "min_rto", "max_rto", "clock_granularity", "arp_interval", "drain_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise TcpSessionError(f"timer {name} must be a positive number of seconds, not {value!r}")
        if not self.min_rto <= self.max_rto:
            raise TcpSessionError(f"min_rto {self.min_rto} is above max_rto {self.max_rto}")
        for name in ("syn_retries", "fin_retries", "arp_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TcpSessionError(f"{name} must be a non-negative integer, not {value!r}")


# -- the card ------------------------------------------------------------------------------------------

class TcpCard:
    """The host side of one card's TCP engine: loads the card-wide registers, answers ARP for the
    card's address, resolves next hops, and hands each punted segment and each payload chunk to
    the :class:`TcpConnection` it belongs to."""

    def __init__(self, port: TcpCardPort, address: CardAddress, *, sessions: int = 4,
                 timers: TcpTimers = TcpTimers(), clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if not isinstance(port, TcpCardPort):
            raise TcpSessionError(f"{port!r} is not a TcpCardPort (read, write, send_frame, append, poll)")
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
            raise TcpSessionError(f"sessions must be a positive integer, not {sessions!r}")
        self.port = port
        self.address = address
        self.sessions = sessions
        self.timers = timers
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.arp_cache: dict[int, int] = {}
        self._arp_pending: dict[int, tuple[float, int]] = {}   # ip -> (last request, requests)
        self._connections: list[TcpConnection] = []
        self._next_port = self.rng.randrange(*EPHEMERAL_PORTS)
        self._identification = self.rng.randrange(0x10000)
        self.counters = {"arp_replies": 0, "arp_requests": 0, "unclaimed": 0}
        port.write("tcp.local_mac", address.local_mac)
        port.write("tcp.local_ip", address.local_ip)
        port.write("tcp.rcv_window", address.rcv_window)
        logger.info("card TCP: %s %s/%d, window %d", int_to_mac(address.local_mac),
                    int_to_ip(address.local_ip), address.prefix_length, address.rcv_window)

    # -- frames out -----------------------------------------------------------------------------------

    def identification(self) -> int:
        """The IPv4 identification of the next frame the host builds."""
        self._identification = (self._identification + 1) & 0xFFFF
        return self._identification

    def send(self, frame: bytes) -> None:
        self.port.send_frame(frame)

    def ephemeral_port(self) -> int:
        used = {c.local_port for c in self._connections}
        for _ in range(EPHEMERAL_PORTS[1] - EPHEMERAL_PORTS[0] + 1):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_PORTS[1] else EPHEMERAL_PORTS[0]
            if port not in used:
                return port
        raise TcpSessionError("no free local port")

    # -- ARP ----------------------------------------------------------------------------------------------

    def resolve(self, ip: int) -> int | None:
        """The MAC of next hop ``ip`` when known; otherwise asks (ARP request, repeated every
        ``arp_interval``) and returns None. :class:`TcpConnectError` when ``arp_retries`` requests
        went unanswered."""
        mac = self.arp_cache.get(ip)
        if mac is not None:
            return mac
        now = self.clock()
        last, count = self._arp_pending.get(ip, (None, 0))
        if last is None or now - last >= self.timers.arp_interval:
            if count > self.timers.arp_retries:
                del self._arp_pending[ip]
                raise TcpConnectError(f"no ARP answer from {int_to_ip(ip)} after {count} requests")
            self.send(_arp_frame(operation=ARP_REQUEST, sender_mac=self.address.local_mac,
                                 sender_ip=self.address.local_ip, target_mac=0, target_ip=ip,
                                 destination_mac=BROADCAST_MAC))
            self.counters["arp_requests"] += 1
            self._arp_pending[ip] = (now, count + 1)
            logger.debug("ARP: who has %s? (request %d)", int_to_ip(ip), count + 1)
        return None

    def _arp(self, frame: bytes) -> None:
        if len(frame) < ETHERNET_HEADER_LENGTH + ARP.length:
            logger.warning("card TCP: short ARP frame (%d bytes): %s", len(frame), frame.hex())
            return
        arp = ARP.unpack(frame[ETHERNET_HEADER_LENGTH:])
        if arp["hardware_type"] != ARP_HARDWARE_ETHERNET or arp["protocol_type"] != ETHERTYPE_IPV4:
            return
        sender_ip, sender_mac = arp["sender_protocol_address"], arp["sender_hardware_address"]
        if sender_ip in self._arp_pending or sender_ip in self.arp_cache:
            if self.arp_cache.get(sender_ip) != sender_mac:
                logger.info("ARP: %s is at %s", int_to_ip(sender_ip), int_to_mac(sender_mac))
            self.arp_cache[sender_ip] = sender_mac
            self._arp_pending.pop(sender_ip, None)
        if arp["operation"] == ARP_REQUEST and arp["target_protocol_address"] == self.address.local_ip:
            self.arp_cache.setdefault(sender_ip, sender_mac)
            self.send(_arp_frame(operation=ARP_REPLY, sender_mac=self.address.local_mac,
                                 sender_ip=self.address.local_ip, target_mac=sender_mac, target_ip=sender_ip,
                                 destination_mac=sender_mac))
            self.counters["arp_replies"] += 1
            logger.debug("ARP: told %s that %s is at %s", int_to_ip(sender_ip),
                         int_to_ip(self.address.local_ip), int_to_mac(self.address.local_mac))

    # -- connections ----------------------------------------------------------------------------------

    def connection(self, session: int, peer_ip: str | int, peer_port: int, *,
                   local_port: int | None = None, mss: int = DEFAULT_MSS) -> "TcpConnection":
        """A new (closed) connection on card session ``session``; :meth:`TcpConnection.open` opens it."""
        if isinstance(session, bool) or not isinstance(session, int) or not 0 <= session < self.sessions:
            raise TcpSessionError(f"card session must be 0..{self.sessions - 1}, not {session!r}")
        for c in self._connections:
            if c.session == session and not c.closed:
                raise TcpSessionError(f"card session {session} is in use by {c}")
        try:
            ip = ip_to_int(peer_ip)
        except ValueError as e:
            raise TcpSessionError(f"peer address: {e}") from None
        for name, value in (("peer port", peer_port), ("local port", local_port)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value <= 0xFFFF):
                raise TcpSessionError(f"{name} must be 1..65535, not {value!r}")
        if isinstance(mss, bool) or not isinstance(mss, int) or not 64 <= mss <= DEFAULT_MSS:
            raise TcpSessionError(f"MSS must be 64..{DEFAULT_MSS}, not {mss!r}")
        self.address.next_hop(ip)
        self._connections = [c for c in self._connections if not c.finished]
        connection = TcpConnection(self, session, ip, peer_port,
                                   local_port if local_port is not None else self.ephemeral_port(), mss)
        self._connections.append(connection)
        return connection

    # -- the loop -------------------------------------------------------------------------------------

    def service(self) -> None:
        """Take what the card handed up (punted frames, payload), then run every timer."""
        frames, payload = self.port.poll()
        for session, data in payload:
            owner = self._owner_of_session(session)
            if owner is None:
                logger.warning("card TCP: %d payload bytes on session %d, which has no connection",
                               len(data), session)
                self.counters["unclaimed"] += 1
            else:
                owner._payload(data)
        for frame in frames:
            self._frame(frame)
        for c in list(self._connections):
            c.service()
        self._connections = [c for c in self._connections if not c.finished]

    def run_until(self, condition: Callable[[], bool], timeout: float,
                  idle: Callable[[float], None] | None = None, *, poll_interval: float = 0.001) -> bool:
        """Service until ``condition()`` holds (True) or ``timeout`` seconds passed (False);
        ``idle(seconds)`` runs between rounds (it moves frames, and may wait up to ``seconds``)."""
        deadline = self.clock() + timeout
        while True:
            self.service()
            if condition():
                return True
            if self.clock() >= deadline:
                return False
            if idle is not None:
                idle(poll_interval)
            else:
                time.sleep(poll_interval)

    def _owner_of_session(self, session: int) -> "TcpConnection | None":
        for c in self._connections:
            if c.session == session and c.card_established:
                return c
        return None

    def _frame(self, frame: bytes) -> None:
        if len(frame) >= ETHERNET_HEADER_LENGTH and ETHERNET.unpack(frame)["ethertype"] == ETHERTYPE_ARP:
            self._arp(frame)
            return
        segment = parse_segment(frame)
        if segment is not None and segment.destination_ip == self.address.local_ip:
            for c in self._connections:
                if (c.peer_ip, c.peer_port, c.local_port) == (segment.source_ip, segment.source_port,
                                                              segment.destination_port) and not c.finished:
                    c._segment(segment)
                    return
            if not segment.flags & TCP_RST:
                self._reset_unknown(segment)
        self.counters["unclaimed"] += 1
        logger.debug("card TCP: punted frame for no connection: %s", frame[:64].hex())

    def _reset_unknown(self, segment: Segment) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection gets a RST."""
        if segment.flags & TCP_ACK:
            seq, ack, flags = segment.ack, 0, TCP_RST
        else:
            seq = 0
            ack = (segment.seq + len(segment.payload) + (1 if segment.flags & TCP_SYN else 0)
                   + (1 if segment.flags & TCP_FIN else 0)) & MASK32
            flags = TCP_RST | TCP_ACK
        self.send(build_segment(source_mac=self.address.local_mac, destination_mac=segment.source_mac,
                                source_ip=self.address.local_ip, destination_ip=segment.source_ip,
                                source_port=segment.destination_port, destination_port=segment.source_port,
                                seq=seq, ack=ack, flags=flags, window=0, identification=self.identification()))


class TcpConnection:
    """One TCP connection on one card session (docs/tcp.md "Host: the connection").

    States: ``CLOSED`` (not opened), ``ARP`` (resolving the next hop), ``SYN_SENT``,
    ``ESTABLISHED`` (the card sends and receives), ``CLOSE_WAIT`` (the peer sent FIN; the card
    still sends), ``DRAINING`` (closing: waiting for the card's bytes to be acknowledged),
    ``FIN_WAIT_1``, ``FIN_WAIT_2``, ``CLOSING``, ``LAST_ACK``, ``TIME_WAIT`` (the host handles
    the segments), then ``CLOSED`` again, or ``RESET`` (reset by the peer, or aborted).

    ``on_payload(bytes)`` gets the received stream in order; ``on_state(state)`` every change.
    """

    OPEN_STATES = ("ESTABLISHED", "CLOSE_WAIT", "DRAINING")

    def __init__(self, card: TcpCard, session: int, peer_ip: int, peer_port: int, local_port: int,
                 mss: int) -> None:
        self.card = card
        self.port = card.port
        self.session = session
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.local_port = local_port
        self.mss = mss
        self.state = "CLOSED"
        self.opened = False
        self.on_payload: Callable[[bytes], None] = lambda data: None
        self.on_state: Callable[[str], None] = lambda state: None
        self.peer_mac = 0
        self.peer_mss = 0
        self.iss = card.rng.randrange(1 << 32)
        self.irs = 0
        #: The host's own view while it handles the segments (handshake and teardown).
        self.snd_nxt = 0
        self.rcv_nxt = 0
        self.fin_seq = 0
        self.error = ""
        # timers
        t = card.timers
        self.rto = t.initial_rto
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._timer_start: float | None = None
        self._retries = 0
        self._timing: tuple[int, float] | None = None   # (sequence number, when) of the RTT sample
        self._last_una: int | None = None
        self._punted_ack: int | None = None
        self._persist_start: float | None = None
        self._persist_interval = self.rto
        self._drain_start = 0.0
        self._time_wait_start = 0.0
        self._peer_fin = False
        self.last_send_time = card.clock()
        self._last_snd_max: int | None = None
        self.counters = {"retransmits": 0, "probes": 0, "acks_for_punted": 0, "rtt_samples": 0,
                         "syn_sent": 0, "fin_sent": 0}

    def __repr__(self) -> str:
        return (f"<TcpConnection session {self.session} :{self.local_port} -> {int_to_ip(self.peer_ip)}:"
                f"{self.peer_port} {self.state}>")

    # -- public ---------------------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.state == "ESTABLISHED"

    @property
    def card_established(self) -> bool:
        """The card's ``established`` is set for this connection."""
        return self.state in self.OPEN_STATES

    @property
    def closed(self) -> bool:
        """Done: closed, reset, or in TIME_WAIT (the card session may be used again)."""
        return self.opened and self.state in ("CLOSED", "RESET", "TIME_WAIT")

    @property
    def finished(self) -> bool:
        """Nothing left to handle (TIME_WAIT is over)."""
        return self.opened and self.state in ("CLOSED", "RESET")

    def open(self) -> None:
        """Start the connection: resolve the next hop, then send the SYN."""
        if self.opened:
            raise TcpSessionError(f"{self} was opened already; make a new connection")
        self.opened = True
        self.port.write("tcp.established", 0, session=self.session)
        self._set_state("ARP")
        self._try_syn()

    def append(self, packet: bytes) -> None:
        """One whole SoupBinTCP packet into the card session's stream (``i_host_data``)."""
        if not isinstance(packet, (bytes, bytearray)) or not 3 <= len(packet) <= self.peer_mss:
            raise TcpSessionError(f"session {self.session}: a packet is 3..{self.peer_mss} bytes (the "
                                  f"peer's MSS), not {len(packet) if isinstance(packet, (bytes, bytearray)) else packet!r}")
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT"):
            raise TcpSessionError(f"session {self.session}: cannot send in state {self.state}")
        self.port.append(self.session, bytes(packet))
        self.last_send_time = self.card.clock()

    def close(self) -> None:
        """Orderly close: wait until the card's bytes are acknowledged, then FIN."""
        if self.state in ("ESTABLISHED", "CLOSE_WAIT"):
            self._drain_start = self.card.clock()
            self._set_state("DRAINING")
            self._drain(self._drain_start)
        elif self.state in ("ARP", "SYN_SENT"):
            self._set_state("CLOSED")

    def abort(self, why: str = "aborted") -> None:
        """Reset the connection now (RST to the peer when it knows us)."""
        if self.state in ("CLOSED", "RESET"):
            return
        if self.state not in ("ARP",):
            seq = self._current_snd()
            self.card.send(self._frame(seq, 0, TCP_RST))
        self.port.write("tcp.established", 0, session=self.session)
        self.error = why
        self._set_state("RESET")

    # -- frames ---------------------------------------------------------------------------------------

    def _frame(self, seq: int, ack: int, flags: int, *, mss: int | None = None) -> bytes:
        return build_segment(source_mac=self.card.address.local_mac, destination_mac=self.peer_mac,
                             source_ip=self.card.address.local_ip, destination_ip=self.peer_ip,
                             source_port=self.local_port, destination_port=self.peer_port, seq=seq, ack=ack,
                             flags=flags, window=self.card.address.rcv_window,
                             identification=self.card.identification(), mss=mss)

    def _current_snd(self) -> int:
        if self.state == "SYN_SENT":
            return (self.iss + 1) & MASK32
        if self.card_established:
            return self.port.read("tcp.snd_max", session=self.session)
        return self.snd_nxt

    def _set_state(self, state: str) -> None:
        if state != self.state:
            logger.info("session %d :%d -> %s:%d: %s -> %s", self.session, self.local_port,
                        int_to_ip(self.peer_ip), self.peer_port, self.state, state)
            self.state = state
            self.on_state(state)

    def _try_syn(self) -> None:
        try:
            mac = self.card.resolve(self.card.address.next_hop(self.peer_ip))
        except TcpConnectError as e:
            self.error = str(e)
            self._set_state("RESET")
            return
        if mac is None:
            return
        self.peer_mac = mac
        self._send_syn()
        self._set_state("SYN_SENT")

    def _send_syn(self) -> None:
        self.card.send(self._frame(self.iss, 0, TCP_SYN, mss=self.mss))
        self.counters["syn_sent"] += 1
        self._timer_start = self.card.clock()
        logger.debug("session %d: SYN seq %d mss %d", self.session, self.iss, self.mss)

    def _payload(self, data: bytes) -> None:
        self.on_payload(data)

    def _segment(self, s: Segment) -> None:
        """A segment the card punted for this connection."""
        logger.debug("session %d: punted %s (state %s)", self.session, s.describe(), self.state)
        if self.state == "SYN_SENT":
            self._syn_sent(s)
        elif self.card_established:
            self._open_segment(s)
        elif self.state in ("FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT"):
            self._closing_segment(s)

    def _syn_sent(self, s: Segment) -> None:
        ack_ok = s.flags & TCP_ACK and s.ack == (self.iss + 1) & MASK32
        if s.flags & TCP_RST:
            if ack_ok:
                self.error = "connection refused (RST)"
                self._set_state("RESET")
            return
        if not (s.flags & TCP_SYN and ack_ok):
            return
        self.irs = s.seq
        self.peer_mss = s.mss if s.mss is not None else TCP_DEFAULT_MSS
        self.peer_mac = s.source_mac
        w = self.port.write
        n = self.session
        w("tcp.peer_mac", self.peer_mac, session=n)
        w("tcp.peer_ip", self.peer_ip, session=n)
        w("tcp.local_port", self.local_port, session=n)
        w("tcp.peer_port", self.peer_port, session=n)
        w("tcp.mss", self.peer_mss, session=n)
        w("tcp.snd_nxt", (self.iss + 1) & MASK32, session=n)
        w("tcp.rcv_nxt", (s.seq + 1) & MASK32, session=n)
        w("tcp.peer_window", s.window, session=n)
        w("tcp.established", 1, session=n)
        w("tcp.send_ack", n)
        self._timer_start = None
        self._retries = 0
        self._last_una = (self.iss + 1) & MASK32
        self._last_snd_max = self._last_una
        logger.info("session %d: established with %s:%d (peer MSS %d, window %d, iss %d, irs %d)", n,
                    int_to_ip(self.peer_ip), self.peer_port, self.peer_mss, s.window, self.iss, self.irs)
        self._set_state("ESTABLISHED")

    def _open_segment(self, s: Segment) -> None:
        n = self.session
        if s.flags & TCP_RST:
            rcv_nxt = self.port.read("tcp.rcv_nxt", session=n)
            if _diff(s.seq, rcv_nxt) < self.card.address.rcv_window:
                self.port.write("tcp.established", 0, session=n)
                self.error = "reset by the peer"
                logger.warning("session %d: reset by the peer (%s)", n, s.describe())
                self._set_state("RESET")
            return
        if s.flags & TCP_ACK and not s.flags & TCP_SYN:
            self._note_punted_ack(s.ack)
        rcv_nxt = self.port.read("tcp.rcv_nxt", session=n)
        if s.flags & TCP_FIN and not s.flags & TCP_SYN and s.seq == rcv_nxt and not self._peer_fin:
            if s.payload:
                self.on_payload(s.payload)
            self.rcv_nxt = (s.seq + len(s.payload) + 1) & MASK32
            self.port.write("tcp.rcv_nxt", self.rcv_nxt, session=n)
            self.port.write("tcp.send_ack", n)
            self._peer_fin = True
            logger.info("session %d: the peer closed its side (FIN seq %d)", n, s.seq)
            if self.state == "ESTABLISHED":
                self._set_state("CLOSE_WAIT")
            return
        # out of order, duplicate, window probe, a repeated SYN-ACK or FIN: say where we are
        self.port.write("tcp.send_ack", n)
        self.counters["acks_for_punted"] += 1

    def _closing_segment(self, s: Segment) -> None:
        if s.flags & TCP_RST:
            if _diff(s.seq, self.rcv_nxt) < self.card.address.rcv_window:
                self.error = "reset by the peer while closing"
                self._set_state("RESET")
            return
        if s.flags & TCP_ACK and s.ack == (self.fin_seq + 1) & MASK32 and self.state in ("FIN_WAIT_1", "CLOSING",
                                                                                            "LAST_ACK"):
            self._timer_start = None
            if self.state == "FIN_WAIT_1":
                self._set_state("FIN_WAIT_2")
            elif self.state == "CLOSING":
                self._enter_time_wait()
            else:
                self._set_state("CLOSED")
                return
        acceptable = s.seq == self.rcv_nxt
        if acceptable and s.payload and not self._peer_fin:
            self.on_payload(s.payload)
            self.rcv_nxt = (self.rcv_nxt + len(s.payload)) & MASK32
        if acceptable and s.flags & TCP_FIN and not self._peer_fin:
            self.rcv_nxt = (self.rcv_nxt + 1) & MASK32
            self._peer_fin = True
            if self.state == "FIN_WAIT_2":
                self._enter_time_wait()
            elif self.state == "FIN_WAIT_1":
                self._set_state("CLOSING")
        if s.payload or s.flags & TCP_FIN or not acceptable:
            self.card.send(self._frame(self.snd_nxt, self.rcv_nxt, TCP_ACK))

    def _enter_time_wait(self) -> None:
        self._time_wait_start = self.card.clock()
        self._set_state("TIME_WAIT")

    # -- timers ---------------------------------------------------------------------------------------

    def service(self) -> None:
        now = self.card.clock()
        t = self.card.timers
        if self.state == "ARP":
            self._try_syn()
        elif self.state == "SYN_SENT":
            if self._timer_start is not None and now - self._timer_start >= self.rto:
                if self._retries >= t.syn_retries:
                    self.error = f"no SYN-ACK after {self._retries + 1} SYNs"
                    self._set_state("RESET")
                    return
                self._retries += 1
                self._backoff()
                self._send_syn()
        elif self.card_established:
            self._established_timers(now)
            if self.state == "DRAINING":
                self._drain(now)
        elif self.state in ("FIN_WAIT_1", "CLOSING", "LAST_ACK"):
            if self._timer_start is not None and now - self._timer_start >= self.rto:
                if self._retries >= t.fin_retries:
                    self.abort(f"FIN not acknowledged after {self._retries + 1} tries")
                    return
                self._retries += 1
                self._backoff()
                self._send_fin()
        elif self.state == "TIME_WAIT" and now - self._time_wait_start >= t.time_wait:
            self._set_state("CLOSED")

    def _backoff(self) -> None:
        self.rto = min(self.rto * 2, self.card.timers.max_rto)

    def _sample(self, r: float) -> None:
        """RFC 6298 (2.2, 2.3): update SRTT, RTTVAR and the RTO from one measurement."""
        t = self.card.timers
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + max(t.clock_granularity, 4 * self.rttvar), t.min_rto), t.max_rto)
        self.counters["rtt_samples"] += 1

    def _card_view(self) -> tuple[int, int, int]:
        """SND.UNA, SND.MAX and the bytes queued, with what an ACK in a punted segment (a FIN,
        an out-of-order segment) acknowledged counted as acknowledged: the card takes ACKs only
        from the segments it handles."""
        n = self.session
        una = self.port.read("tcp.snd_una", session=n)
        snd_max = self.port.read("tcp.snd_max", session=n)
        queued = self.port.read("tcp.queued", session=n)
        ack = self._punted_ack
        if ack is not None:
            if 0 < _diff(ack, una) <= _diff(snd_max, una):
                queued = max(0, queued - _diff(ack, una))
                una = ack
            else:
                self._punted_ack = None
        return una, snd_max, queued

    def _note_punted_ack(self, ack: int) -> None:
        if self._punted_ack is None or _seq_lt(self._punted_ack, ack):
            self._punted_ack = ack

    def _established_timers(self, now: float) -> None:
        n = self.session
        una, snd_max, queued = self._card_view()
        if snd_max != self._last_snd_max:
            self._last_snd_max = snd_max
            self.last_send_time = now
        if una != self._last_una:
            self._last_una = una
            self._retries = 0
            if self._timing is not None and not _seq_lt(una, self._timing[0]):
                self._sample(now - self._timing[1])
                self._timing = None
            self._timer_start = now if una != snd_max else None       # RFC 6298 5.2 / 5.3
            self._persist_start = None
        in_flight = una != snd_max
        if in_flight:
            if self._timer_start is None:
                self._timer_start = now                                # RFC 6298 5.1
            if self._timing is None:
                self._timing = (snd_max, now)
            if now - self._timer_start >= self.rto:                    # RFC 6298 5.4 - 5.6
                self.port.write("tcp.retransmit", n)
                self.counters["retransmits"] += 1
                self._retries += 1
                self._timing = None                                    # Karn: no sample across it
                logger.info("session %d: RTO %.3f s expired at SND.UNA %d (%d bytes queued): "
                            "retransmit", n, self.rto, una, queued)
                self._backoff()
                self._timer_start = now
        elif queued:
            # everything sent is acknowledged, yet bytes wait: the window is too small; probe it
            if self._persist_start is None:
                self._persist_start = now
                self._persist_interval = max(self.rto, self.card.timers.min_rto)
            elif now - self._persist_start >= self._persist_interval:
                self.port.write("tcp.probe", n)
                self.counters["probes"] += 1
                logger.info("session %d: window %d holds back %d bytes: probe", n,
                            self.port.read("tcp.peer_window", session=n), queued)
                self._persist_start = now
                self._persist_interval = min(self._persist_interval * 2, self.card.timers.max_rto)
        else:
            self._timer_start = None
            self._persist_start = None

    def _drain(self, now: float) -> None:
        _, _, queued = self._card_view()
        if queued and now - self._drain_start < self.card.timers.drain_timeout:
            return
        if queued:
            logger.warning("session %d: closing with %d bytes unacknowledged after %.1f s", self.session,
                           queued, self.card.timers.drain_timeout)
        n = self.session
        self.port.write("tcp.established", 0, session=n)
        self.fin_seq = self.port.read("tcp.snd_max", session=n)
        self.rcv_nxt = self.port.read("tcp.rcv_nxt", session=n)
        self.snd_nxt = (self.fin_seq + 1) & MASK32
        self._retries = 0
        self._send_fin()
        self._set_state("LAST_ACK" if self._peer_fin else "FIN_WAIT_1")

    def _send_fin(self) -> None:
        self.card.send(self._frame(self.fin_seq, self.rcv_nxt, TCP_FIN | TCP_ACK))
        self.counters["fin_sent"] += 1
        self._timer_start = self.card.clock()
        logger.debug("session %d: FIN seq %d ack %d", self.session, self.fin_seq, self.rcv_nxt)


# -- SoupBinTCP over a card session ------------------------------------------------------------------

Deliver = Callable[[str, Any, Any], None]


class CardSoupBinSession:
    """A SoupBinTCP 4.0 client on a card session: the behaviour of
    :class:`tickwire.host.order_session.OrderSession` (login with session and next sequence
    number, heartbeats both ways, logout, reconnect resuming the sequence number) over the card's
    TCP engine instead of a kernel socket.

    ``config`` has the fields of :class:`tickwire.host.appconfig.Session` (``name``, ``number``: the
    card session, ``host``, ``port``, ``username``, ``password``, ``session``, ``local_port``).
    ``deliver(kind, self, value)`` gets ``"bytes"``, ``"sequenced"`` ``(sequence_number,
    payload)`` and ``"state"`` like the kernel-socket client. Orders from the gateware enter the
    same stream through ``i_data``; the host's packets (login, heartbeats, logout, :meth:`send`)
    through ``i_host_data``.
    """

    BACKOFF = (0.2, 2.0)

    def __init__(self, card: TcpCard, config: Any, deliver: Deliver, *, first_sequence: int = 1,
                 heartbeat_interval: float = 1.0, server_timeout: float = 15.0,
                 connect_timeout: float = 5.0, logout_timeout: float = 2.0, reconnect: bool = True) -> None:
        for name in ("name", "number", "host", "port", "username", "password"):
            if not hasattr(config, name):
                raise TcpSessionError(f"session config {config!r} has no {name!r}")
        if isinstance(first_sequence, bool) or not isinstance(first_sequence, int) or first_sequence < 1:
            raise TcpSessionError(f"first sequence number must be a positive integer, not {first_sequence!r}")
        for name, value in (("heartbeat_interval", heartbeat_interval), ("server_timeout", server_timeout),
                            ("connect_timeout", connect_timeout), ("logout_timeout", logout_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise TcpSessionError(f"{name} must be a positive number of seconds, not {value!r}")
        if len(str(config.username)) > 6 or len(str(config.password)) > 10 \
                or len(str(getattr(config, "session", "") or "")) > 10:
            raise TcpSessionError(f"session {config.name}: username (<= 6), password (<= 10) or session "
                                  f"(<= 10 characters) too long for SoupBinTCP")
        self.card = card
        self.config = config
        self.name: str = config.name
        self.number: int = config.number
        self._deliver = deliver
        self.next_sequence = first_sequence
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.connect_timeout = connect_timeout
        self.logout_timeout = logout_timeout
        self.reconnect = reconnect
        self.connection: TcpConnection | None = None
        self.state = "down"
        self.logins = 0
        self.ended = False
        self.stopped = False
        self.soup_session = ""
        self._logged_in = False
        self._buffer = b""
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._attempt_start = 0.0
        self._retry_at: float | None = None
        self._pause = self.BACKOFF[0]
        self._logout_at: float | None = None
        self._first_local_port: int | None = getattr(config, "local_port", None)

    # -- public ---------------------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._logged_in

    def start(self) -> None:
        """Connect and log in (progress happens in :meth:`service`)."""
        self.stopped = False
        self._connect()

    def send(self, packet: bytes) -> None:
        """One whole SoupBinTCP packet from the host (e.g. Unsequenced Data with an OUCH message)."""
        if not self._logged_in or self.connection is None:
            raise TcpSessionError(f"order session {self.name} is not logged in ({self.state})")
        self.connection.append(packet)
        self._last_sent = self.card.clock()
        logger.debug("session %s: sent %s", self.name, bytes(packet).hex())

    def logout(self) -> None:
        """Logout Request, then close when the server closes (or after ``logout_timeout``)."""
        self.stopped = True
        c = self.connection
        if c is not None and self._logged_in and c.state in ("ESTABLISHED", "CLOSE_WAIT"):
            c.append(soupbintcp.frame("O"))
            self._logout_at = self.card.clock()
            self._set_state("logging out")
        elif c is not None and c.card_established:
            c.close()
        elif c is not None:
            c.abort("stopped")

    @property
    def done(self) -> bool:
        """Stopped or ended, and the connection is closed."""
        return (self.stopped or self.ended) and (self.connection is None or self.connection.closed)

    # -- the loop -------------------------------------------------------------------------------------

    def service(self) -> None:
        now = self.card.clock()
        c = self.connection
        if c is None:
            if self._retry_at is not None and now >= self._retry_at and not self.stopped and not self.ended:
                self._retry_at = None
                self._connect()
            return
        if c.state in ("ARP", "SYN_SENT") and now - self._attempt_start > self.connect_timeout:
            c.abort(f"not connected within {self.connect_timeout:g} s")
        if c.closed:
            self._down(c.error or f"connection {c.state.lower()}")
            return
        if c.state == "CLOSE_WAIT":
            if not self.ended and not self.stopped:
                logger.warning("session %s: the server closed the connection", self.name)
            c.close()
            return
        if self._logout_at is not None and now - self._logout_at > self.logout_timeout \
                and c.state == "ESTABLISHED":
            c.close()
        if not self._logged_in or c.state != "ESTABLISHED":
            return
        last_sent = max(self._last_sent, c.last_send_time)
        if now - last_sent >= self.heartbeat_interval:
            c.append(soupbintcp.frame("R"))
            self._last_sent = now
        if now - self._last_heard > self.server_timeout:
            logger.warning("session %s: nothing from the server for %.1f s", self.name, self.server_timeout)
            c.abort(f"nothing from the server for {self.server_timeout:g} s")
            self._down(c.error)

    # -- internals ------------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._deliver("state", self, state)

    def _connect(self) -> None:
        c = self.config
        local_port = self._first_local_port
        self._first_local_port = None          # a reconnect takes a fresh port (no TIME_WAIT clash)
        self.connection = conn = self.card.connection(self.number, c.host, c.port, local_port=local_port)
        conn.on_payload = self._on_payload
        conn.on_state = self._on_connection_state
        self._buffer = b""
        self._attempt_start = self.card.clock()
        self._logout_at = None
        self._set_state("connecting")
        conn.open()

    def _on_connection_state(self, state: str) -> None:
        if state == "ESTABLISHED":
            self._login()

    def _login(self) -> None:
        c = self.config
        assert self.connection is not None
        requested = str(self.next_sequence).rjust(20)
        login = soupbintcp.frame("L", soupbintcp.CLIENT["L"].pack(
            username=c.username, password=str(c.password).ljust(10)[:10],
            requested_session=str(getattr(c, "session", "") or "").ljust(10),
            requested_sequence_number=requested))
        self.connection.append(login)
        now = self.card.clock()
        self._last_sent = self._last_heard = now
        logger.info("session %s: login to %s:%d as %s, sequence %d (card session %d)", self.name, c.host,
                    c.port, c.username, self.next_sequence, self.number)
        self._set_state("logging in")

    def _down(self, why: str) -> None:
        was = self._logged_in
        self._logged_in = False
        self.connection = None
        if self.ended:
            self._set_state("ended")
        elif self.stopped:
            self._set_state("stopped")
        else:
            self._set_state(f"down: {why}")
            if self.reconnect:
                self._retry_at = self.card.clock() + self._pause
                self._pause = self.BACKOFF[0] if was else min(self._pause * 2, self.BACKOFF[1])

    def _on_payload(self, data: bytes) -> None:
        self._last_heard = self.card.clock()
        was_logged_in = self._logged_in
        if was_logged_in:
            self._deliver("bytes", self, data)
        self._buffer += data
        try:
            packets, self._buffer = soupbintcp.unframe(self._buffer)
        except ValueError as e:
            logger.warning("session %s: %s; dropping the connection", self.name, e)
            if self.connection is not None:
                self.connection.abort(str(e))
            return
        for packet_type, payload in packets:
            if self._packet(packet_type, payload):
                break
        if self._logged_in and not was_logged_in:
            self._deliver("bytes", self, data)

    def _packet(self, packet_type: str, payload: bytes) -> bool:
        """Handle one server packet; True when the connection is to end."""
        if packet_type == "S":
            sequence = self.next_sequence
            self.next_sequence += 1
            self._deliver("sequenced", self, (sequence, payload))
        elif packet_type == "H":
            pass
        elif packet_type == "A":
            self.soup_session, self.next_sequence = soupbintcp.login_accepted(payload)
            self.logins += 1
            self._logged_in = True
            self._pause = self.BACKOFF[0]
            self._set_state("up")
            logger.info("session %s: logged in to session %r, next sequence %d", self.name,
                        self.soup_session, self.next_sequence)
        elif packet_type == "J":
            code = payload[:1].decode("ascii", "replace")
            reason = soupbintcp.LOGIN_REJECT_REASONS.get(code, code)
            logger.warning("session %s: login rejected: %s", self.name, reason)
            self.stopped = True
            if self.connection is not None:
                self.connection.close()
            self._set_state(f"rejected: {reason}")
            return True
        elif packet_type == "Z":
            self.ended = True
            if self.connection is not None:
                self.connection.close()
            self._set_state("ended")
            return True
        elif packet_type == "+":
            logger.warning("session %s: server debug packet: %s", self.name, payload.decode("ascii", "replace"))
        else:
            logger.warning("session %s: unknown packet type %r (%s)", self.name, packet_type, payload.hex())
        return False
