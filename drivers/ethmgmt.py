"""``ethmgmt`` driver: register words over Ethernet (EtherType 0x88B5) to a card's management port.

For a card whose only link to the host is an Ethernet port (the ECPIX-5): each ``read`` or
``write`` is one request frame (:mod:`tickwire.protocols.management`) sent to the card's MAC
address through an ``AF_PACKET`` socket (the ``rawpacket`` driver, receiving only EtherType
0x88B5), and one reply frame back, matched by sequence number, opcode and address. It has no card
events and no frame ports. Needs CAP_NET_RAW (root).
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import time

from ..protocols.layout import LayoutError
from ..protocols.management import (ADDRESS_LIMIT, MANAGEMENT_ETHERTYPE, OPCODES, READ, WRITE,
                                    ManagementRequest, decode_reply, encode_request)
from ..protocols.net import int_to_mac, mac_to_int
from .base import (DEFAULT_TIMEOUT, REGISTERS, CardTimeout, Driver, DriverError, check_word)
from .rawpacket import RawPacketDriver

__all__ = ["EthManagementDriver"]

logger = logging.getLogger(__name__)

#: TPACKET_V3 ring for replies: small blocks, handed over 1 ms after their first frame.
_BLOCK_SIZE = 1 << 14
_BLOCKS = 4
_BLOCK_TIMEOUT_MS = 1
_SIOCGIFHWADDR = 0x8927


class EthManagementDriver(Driver):
    """Registers of the card at MAC address ``card_mac`` on network interface ``interface``.

    Parameters: ``interface`` (the host's port wired to the card), ``card_mac`` (the card's MAC
    address, ``02:74:77:69:72:01`` for the ECPIX-5 build; broadcast reaches any card on the
    link), ``source_mac`` (this host's address in the requests; default the interface's own).
    Every access waits up to ``timeout`` seconds for its reply, then raises
    :class:`CardTimeout`; replies to earlier, timed-out requests are dropped and counted in
    :attr:`stale_replies`. Nothing is retried: a write may be an action (a strobe register).
    """

    name = "ethmgmt"
    capabilities = frozenset({REGISTERS})
    options = ("interface", "card_mac", "source_mac")

    def __init__(self, interface: str, card_mac: str | bytes | int, *,
                 source_mac: str | bytes | int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        try:
            self.card_mac = mac_to_int(card_mac).to_bytes(6, "big")
            source = None if source_mac is None else mac_to_int(source_mac).to_bytes(6, "big")
        except (ValueError, TypeError) as e:
            raise DriverError(f"ethmgmt driver: {e}") from None
        if self.card_mac[0] & 1 and self.card_mac != b"\xff" * 6:
            raise DriverError(f"ethmgmt driver: card_mac must be the card's unicast address, "
                              f"not multicast {int_to_mac(int.from_bytes(self.card_mac, 'big'))}")
        self.interface = interface
        self._link = RawPacketDriver(interface, ethertype=MANAGEMENT_ETHERTYPE, block_size=_BLOCK_SIZE,
                                     blocks=_BLOCKS, block_timeout_ms=_BLOCK_TIMEOUT_MS,
                                     timeout=timeout)
        try:
            self.source_mac = source if source is not None else _interface_mac(interface)
        except BaseException:
            self._link.close()
            raise
        self._sequence = 0
        self.requests = self.stale_replies = 0

    # -- registers --------------------------------------------------------------------------------

    def read(self, address: int) -> int:
        return self._access(READ, address, 0)

    def write(self, address: int, value: int) -> None:
        self._access(WRITE, address, value)

    def _access(self, opcode: int, address: int, value: int) -> int:
        self._check_open()
        check_word(address, value)
        if address >= ADDRESS_LIMIT:
            raise DriverError(f"ethmgmt driver: word address 0x{address:x} is beyond the "
                              f"management protocol's 16-bit address field")
        self._sequence = (self._sequence + 1) & 0xFFFF
        request = ManagementRequest(opcode, self._sequence, address, value)
        frame = encode_request(request, destination=self.card_mac, source=self.source_mac)
        logger.debug("ethmgmt %s: %s seq %d word 0x%04x -> %s", self.interface, OPCODES[opcode],
                     request.sequence, address, frame.hex())
        self._link.send_frame(self.interface, frame)
        self.requests += 1
        deadline = time.monotonic() + self.timeout
        while True:  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                raise CardTimeout(
                    f"ethmgmt driver: no reply from card "
                    f"{int_to_mac(int.from_bytes(self.card_mac, 'big'))} on {self.interface} to "
                    f"{OPCODES[opcode]} of word 0x{address:04x} (sequence {request.sequence}) "
                    f"within {self.timeout:g} s")
            for received in self._link.receive_frames(timeout=left):
                reply = self._match(received.data, request)
                if reply is not None:
                    return reply.data

    def _match(self, frame: bytes, request: ManagementRequest) -> ManagementRequest | None:
        """The reply to ``request`` in ``frame``, or None (another frame; a stale reply)."""
        try:
            destination, source, reply = decode_reply(frame)
        except LayoutError:
            return None     # a request (ours, looped back by a switch) or another version
        if destination != self.source_mac or (source != self.card_mac
                                              and self.card_mac != b"\xff" * 6):
            return None
        if (reply.sequence, reply.opcode, reply.address) != (request.sequence, request.opcode,
                                                             request.address):
            self.stale_replies += 1
            logger.info("ethmgmt %s: dropped stale reply seq %d (waiting for %d): %s",
                        self.interface, reply.sequence, request.sequence, frame.hex())
            return None
        logger.debug("ethmgmt %s: reply seq %d word 0x%04x = 0x%08x <- %s", self.interface,
                     reply.sequence, reply.address, reply.data, frame.hex())
        if request.opcode == WRITE and reply.data != request.data:
            raise DriverError(f"ethmgmt driver: card echoed 0x{reply.data:08x} for the write of "
                              f"0x{request.data:08x} to word 0x{request.address:04x}")
        return reply

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None:
            link.close()
        super().close()

    def __repr__(self) -> str:
        return (f"<EthManagementDriver {getattr(self, 'interface', '?')} card "
                f"{int_to_mac(int.from_bytes(self.card_mac, 'big'))}{' closed' if self.closed else ''}>")


def _interface_mac(interface: str) -> bytes:
    """The MAC address of network interface ``interface`` in this thread's network namespace
    (``SIOCGIFHWADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            info = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError as e:
            raise DriverError(f"ethmgmt driver: no MAC address for {interface!r} ({e}); give "
                              f"source_mac") from None
    return info[18:24]
