"""``ethmgmt`` driver: register words and card events over Ethernet (EtherType 0x88B5, version 2)
to a card's management port, through an ``AF_PACKET`` socket.

For a card whose only link to the host is an Ethernet port (the ECPIX-5, or the simulated card's
bridge :mod:`tickwire.sim.mgmt_bridge`). :class:`ManagementClient` is the protocol
(:mod:`tickwire.protocols.management`) over any link that sends and receives whole frames; this
driver runs it over the ``rawpacket`` driver (receiving only EtherType 0x88B5), the ``dpdk``
driver over DPDK. Needs CAP_NET_RAW (root).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import random
import socket
import struct
import time
from typing import Callable

from ..protocols.events import Event
from ..protocols.layout import LayoutError
from ..protocols.management import (ADDRESS_LIMIT, BROADCAST, DUPLICATE, FRAME_SEQUENCE_MODULUS,
                                    MANAGEMENT_ETHERTYPE, OPCODES, READ, SEQUENCE_MODULUS, WRITE,
                                    ManagementRequest, decode_events, decode_reply,
                                    encode_request, frame_kind)
from ..protocols.net import int_to_mac, mac_to_int
from .base import (DEFAULT_TIMEOUT, EVENTS, REGISTERS, CardTimeout, Driver, DriverError,
                   check_word)
from .rawpacket import RawPacketDriver

__all__ = ["EthManagementDriver", "ManagementClient", "DEFAULT_RETRY_INTERVAL", "parse_mac",
           "interface_mac"]

logger = logging.getLogger(__name__)

#: TPACKET_V3 ring for replies and events: small blocks, handed over 1 ms after their first frame.
_BLOCK_SIZE = 1 << 16
_BLOCKS = 16
_BLOCK_TIMEOUT_MS = 1
_SIOCGIFHWADDR = 0x8927
#: Seconds to wait for a reply before sending the request again (same sequence).
DEFAULT_RETRY_INTERVAL = 0.05
#: Event records kept for :meth:`ManagementClient.events` before the oldest are dropped.
_EVENT_BACKLOG = 1 << 20


class ManagementClient:
    """The host side of the management protocol over a frame link.

    ``send(frame)`` sends one Ethernet frame; ``receive(timeout)`` returns the frames received
    (bytes), waiting up to ``timeout`` seconds for the first. Requests go to ``card_mac`` from
    ``source_mac``; sequences start at a random number. A request without a reply within
    ``retry_interval`` seconds is sent again with the same sequence (the card answers a copy from
    its cache and does not apply it twice) until ``timeout`` seconds have passed, then
    :class:`CardTimeout`. Event frames that come meanwhile are kept for :meth:`events`; a gap in
    their ``frame_sequence`` is counted in :attr:`event_frames_lost` and logged.

    Counters: ``requests``, ``retries`` (copies sent again), ``duplicates`` (replies the card
    answered from its cache), ``stale_replies`` (replies to earlier requests), ``event_frames``,
    ``event_frames_lost``.
    """

    def __init__(self, send: Callable[[bytes], None], receive: Callable[[float], list[bytes]], *,
                 card_mac: bytes, source_mac: bytes, label: str, timeout: float = DEFAULT_TIMEOUT,
                 retry_interval: float = DEFAULT_RETRY_INTERVAL) -> None:
        if isinstance(retry_interval, bool) or not isinstance(retry_interval, (int, float)) \
                or not 0 < retry_interval <= 60:
            raise DriverError(f"{label}: retry_interval must be 0 < seconds <= 60, not "
                              f"{retry_interval!r}")
        self._send, self._receive = send, receive
        self.card_mac, self.source_mac, self.label = card_mac, source_mac, label
        self.timeout, self.retry_interval = timeout, float(retry_interval)
        self._sequence = random.randrange(SEQUENCE_MODULUS)
        self._events: collections.deque[Event] = collections.deque(maxlen=_EVENT_BACKLOG)
        self._next_frame: int | None = None
        self.requests = self.retries = self.duplicates = self.stale_replies = 0
        self.event_frames = self.event_frames_lost = 0

    # -- registers --------------------------------------------------------------------------------

    def access(self, opcode: int, address: int, value: int) -> int:
        """The value of a READ, or the value a WRITE wrote, once the card has answered."""
        check_word(address, value)
        if address >= ADDRESS_LIMIT:
            raise DriverError(f"{self.label}: word address 0x{address:x} is beyond the "
                              f"management protocol's 16-bit address field")
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULUS
        request = ManagementRequest(opcode, self._sequence, address, value)
        frame = encode_request(request, destination=self.card_mac, source=self.source_mac)
        logger.debug("%s: %s seq %d word 0x%04x -> %s", self.label, OPCODES[opcode],
                     request.sequence, address, frame.hex())
        self.requests += 1
        start = time.monotonic()
        deadline = start + self.timeout
        copies = 0
        while True:  # bounded by the deadline
            now = time.monotonic()
            if now >= deadline:
                raise CardTimeout(
                    f"{self.label}: no reply from card {int_to_mac(int.from_bytes(self.card_mac, 'big'))} "
                    f"to {OPCODES[opcode]} of word 0x{address:04x} (sequence {request.sequence}, "
                    f"{copies} copies sent) within {self.timeout:g} s")
            self._send(frame)
            if copies:
                self.retries += 1
                logger.info("%s: no reply to seq %d after %.3f s: sent it again (copy %d)",
                            self.label, request.sequence, now - start, copies + 1)
            copies += 1
            retry_at = min(deadline, time.monotonic() + self.retry_interval)
            while True:
                left = retry_at - time.monotonic()
                if left <= 0:
                    break
                answer = None
                for received in self._receive(left):   # every frame: events may follow the reply
                    reply = self._take(received, request if answer is None else None)
                    if reply is not None:
                        answer = reply
                if answer is not None:
                    return answer

    def _take(self, frame: bytes, request: ManagementRequest | None) -> int | None:
        """Handle one received frame: the value if it is the reply to ``request``."""
        kind = frame_kind(frame)
        if kind is None or kind == "request":
            return None     # another protocol or version; a request (ours, looped back)
        destination, source = bytes(frame[:6]), bytes(frame[6:12])
        if destination not in (self.source_mac, BROADCAST) or (
                source != self.card_mac and self.card_mac != BROADCAST):
            return None
        try:
            if kind == "events":
                self._take_events(decode_events(frame)[2])
                return None
            _, _, reply = decode_reply(frame)
        except LayoutError as e:
            logger.warning("%s: dropped a malformed %s frame (%s): %s", self.label, kind, e,
                           bytes(frame).hex())
            return None
        if request is None or not reply.answers(request):
            self.stale_replies += 1
            logger.info("%s: dropped stale reply seq %d%s: %s", self.label, reply.sequence,
                        "" if request is None else f" (waiting for {request.sequence})",
                        bytes(frame).hex())
            return None
        if reply.status == DUPLICATE:
            self.duplicates += 1
        logger.debug("%s: reply seq %d word 0x%04x = 0x%08x (%s)", self.label, reply.sequence,
                     reply.address, reply.data, "duplicate" if reply.status else "applied")
        if request.opcode == WRITE and reply.data != request.data:
            raise DriverError(f"{self.label}: card echoed 0x{reply.data:08x} for the write of "
                              f"0x{request.data:08x} to word 0x{request.address:04x}")
        return reply.data

    def _take_events(self, frame) -> None:
        expected = self._next_frame
        if expected is not None and frame.frame_sequence != expected:
            lost = (frame.frame_sequence - expected) % FRAME_SEQUENCE_MODULUS
            if lost > FRAME_SEQUENCE_MODULUS // 2:
                logger.info("%s: event frame %d again or out of order (expected %d): dropped",
                            self.label, frame.frame_sequence, expected)
                return
            self.event_frames_lost += lost
            logger.warning("%s: lost %d event frame(s) %d..%d (%d lost so far)", self.label, lost,
                           expected, frame.frame_sequence - 1, self.event_frames_lost)
        self._next_frame = (frame.frame_sequence + 1) % FRAME_SEQUENCE_MODULUS
        self.event_frames += 1
        self._events.extend(frame.events)

    # -- events -----------------------------------------------------------------------------------

    def events(self, timeout: float, limit: int | None) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            for received in self._receive(0):
                self._take(received, None)
            if self._events or time.monotonic() >= deadline:
                break
            for received in self._receive(max(0.0, deadline - time.monotonic())):
                self._take(received, None)
            if self._events or time.monotonic() >= deadline:
                break
        count = len(self._events) if limit is None else min(limit, len(self._events))
        return [self._events.popleft() for _ in range(count)]


def parse_mac(value: str | bytes | int, what: str, label: str) -> bytes:
    try:
        return mac_to_int(value).to_bytes(6, "big")
    except (ValueError, TypeError) as e:
        raise DriverError(f"{label}: {what}: {e}") from None


def interface_mac(interface: str, label: str) -> bytes:
    """The MAC address of network interface ``interface`` in this thread's network namespace
    (``SIOCGIFHWADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            info = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError as e:
            raise DriverError(f"{label}: no MAC address for {interface!r} ({e}); give "
                              f"source_mac") from None
    return info[18:24]


class EthManagementDriver(Driver):
    """Registers and events of the card at MAC address ``card_mac`` on network interface
    ``interface``.

    Parameters: ``interface`` (the host's port wired to the card), ``card_mac`` (the card's MAC
    address, ``02:74:77:69:72:01`` for the ECPIX-5 build; broadcast reaches any card on the
    link), ``source_mac`` (this host's address in the requests; default the interface's own),
    ``retry_interval`` (seconds before a request is sent again). Every access waits up to
    ``timeout`` seconds for its reply, retrying, then raises :class:`CardTimeout`.
    """

    name = "ethmgmt"
    capabilities = frozenset({REGISTERS, EVENTS})
    options = ("interface", "card_mac", "source_mac", "retry_interval")

    def __init__(self, interface: str, card_mac: str | bytes | int, *,
                 source_mac: str | bytes | int | None = None,
                 retry_interval: float = DEFAULT_RETRY_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self.card_mac = parse_mac(card_mac, "card_mac", "ethmgmt driver")
        source = None if source_mac is None else parse_mac(source_mac, "source_mac", "ethmgmt driver")
        if self.card_mac[0] & 1 and self.card_mac != BROADCAST:
            raise DriverError(f"ethmgmt driver: card_mac must be the card's unicast address, "
                              f"not multicast {int_to_mac(int.from_bytes(self.card_mac, 'big'))}")
        self.interface = interface
        self._link = RawPacketDriver(interface, ethertype=MANAGEMENT_ETHERTYPE, block_size=_BLOCK_SIZE,
                                     blocks=_BLOCKS, block_timeout_ms=_BLOCK_TIMEOUT_MS,
                                     timeout=timeout)
        try:
            self.source_mac = source if source is not None else interface_mac(interface, "ethmgmt driver")
            self.client = ManagementClient(
                lambda frame: self._link.send_frame(interface, frame),
                lambda wait: [f.data for f in self._link.receive_frames(timeout=wait)],
                card_mac=self.card_mac, source_mac=self.source_mac,
                label=f"ethmgmt {interface}", timeout=timeout, retry_interval=retry_interval)
        except BaseException:
            self._link.close()
            raise

    @property
    def requests(self) -> int:
        return self.client.requests

    @property
    def stale_replies(self) -> int:
        return self.client.stale_replies

    # -- registers --------------------------------------------------------------------------------

    def read(self, address: int) -> int:
        self._check_open()
        return self.client.access(READ, address, 0)

    def write(self, address: int, value: int) -> None:
        self._check_open()
        self.client.access(WRITE, address, value)

    # -- events -----------------------------------------------------------------------------------

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[Event]:
        self._check_wait(timeout, limit)
        self._check_open()
        return self.client.events(timeout, limit)

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None:
            link.close()
        super().close()

    def __repr__(self) -> str:
        return (f"<EthManagementDriver {getattr(self, 'interface', '?')} card "
                f"{int_to_mac(int.from_bytes(self.card_mac, 'big'))}{' closed' if self.closed else ''}>")
