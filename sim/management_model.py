"""Reference model of the management port (protocol version 2, :mod:`tickwire.protocols.management`):
what the card answers to each frame and what it sends for each event, frame by frame.

Written from the protocol's description, not from the gateware: the tests of
``tickwire.hdl.management.ManagementPort`` compare the two, and the simulated card's bridge
(:mod:`tickwire.sim.mgmt_bridge`) answers the host with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from tickwire.protocols.layout import LayoutError
from tickwire.protocols.management import (APPLIED, BROADCAST, DUPLICATE, FRAME_LENGTH,
                                           FRAME_SEQUENCE_MODULUS, READ, WRITE, decode_request,
                                           encode_events, encode_reply)

__all__ = ["ManagementModel"]


@dataclass(frozen=True)
class _Applied:
    """The last request applied (the one-request window) and the value its reply carried."""

    requester: bytes
    sequence: int
    opcode: int
    address: int
    data: int
    value: int


class ManagementModel:
    """The card at MAC address ``mac_address`` (6 bytes), whose register bus is ``read(address)``
    and ``write(address, value)`` (word addresses reduced to ``addr_width`` bits, as the bus
    sees them).

    :meth:`receive` takes one frame without FCS and returns the reply frame (padded to 60 bytes)
    or None; :meth:`events` takes event records and returns their event frame. Counters:
    ``requests`` (answered, duplicates included), ``duplicates``, ``event_frames``; ``writes``
    lists the register writes in the order they were applied.
    """

    def __init__(self, mac_address: bytes, read: Callable[[int], int],
                 write: Callable[[int, int], None], *, addr_width: int = 12) -> None:
        if len(mac_address) != 6 or mac_address[0] & 1:
            raise ValueError(f"mac_address must be a 6-byte unicast address, not {mac_address!r}")
        self.mac_address = bytes(mac_address)
        self._read, self._write = read, write
        self._mask = (1 << addr_width) - 1
        self._last: _Applied | None = None
        #: Where event frames go: the last requester, broadcast until the first request.
        self.peer = BROADCAST
        self.frame_sequence = 0
        self.requests = self.duplicates = self.event_frames = 0
        self.writes: list[tuple[int, int]] = []

    def receive(self, frame: bytes) -> bytes | None:
        """The reply to ``frame``, or None when the frame is not a request to this card."""
        if len(frame) < FRAME_LENGTH:
            return None
        try:
            destination, requester, request = decode_request(frame)
        except LayoutError:
            return None
        if destination not in (self.mac_address, BROADCAST):
            return None
        self.requests += 1
        self.peer = requester
        last = self._last
        if last is not None and (last.requester, last.sequence, last.opcode, last.address,
                                 last.data) == (requester, request.sequence, request.opcode,
                                                request.address, request.data):
            self.duplicates += 1
            return encode_reply(request, last.value, destination=requester,
                                source=self.mac_address, status=DUPLICATE)
        bus_address = request.address & self._mask
        if request.opcode == WRITE:
            self._write(bus_address, request.data)
            self.writes.append((bus_address, request.data))
            value = request.data
        else:
            assert request.opcode == READ
            value = self._read(bus_address) & 0xFFFF_FFFF
        self._last = _Applied(requester, request.sequence, request.opcode, request.address,
                              request.data, value)
        return encode_reply(request, value, destination=requester, source=self.mac_address,
                            status=APPLIED)

    def events(self, records: Sequence[bytes]) -> bytes:
        """The event frame carrying ``records`` (32 bytes each) to the current peer."""
        frame = encode_events(self.frame_sequence, list(records), destination=self.peer,
                              source=self.mac_address)
        self.frame_sequence = (self.frame_sequence + 1) % FRAME_SEQUENCE_MODULUS
        self.event_frames += 1
        return frame
