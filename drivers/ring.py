"""The event ring in host memory (tickwire.protocols.events): the host's reader, the card's writer.

Both work on any writable buffer (an ``mmap`` of a DMA buffer stand-in, a shared-memory file, a
``bytearray``); the layout and its rules are those of :mod:`tickwire.protocols.events`.
"""

from __future__ import annotations

import logging
import struct

from tickwire.protocols import events as ev

__all__ = ["RingReader", "RingWriter", "init_ring"]

logger = logging.getLogger(__name__)

_U64 = struct.Struct("<Q")


def init_ring(buffer: memoryview | bytearray, entries: int) -> None:
    """Write a fresh ring header into ``buffer`` (indices and drop count 0, records zeroed)."""
    size = ev.ring_bytes(entries)
    if len(buffer) < size:
        raise ev.EventError(f"event ring of {entries} entries needs {size} bytes, "
                            f"the buffer has {len(buffer)}")
    view = memoryview(buffer)
    view[:size] = bytes(size)
    header = ev.pack_ring_header(entries)
    view[:len(header)] = header


class RingReader:
    """The host's side: reads records between its consumer index and the card's producer index.

    ``buffer`` must hold a ring set up by :func:`init_ring`. :meth:`poll` returns the records
    written since the last call (at most ``limit``) and then publishes the new consumer index.
    A record whose ``sequence`` is not the one expected is logged (the card dropped events).
    """

    def __init__(self, buffer: memoryview | bytearray) -> None:
        self._view = memoryview(buffer)
        header = ev.unpack_ring_header(self._view)
        self.entries = header["entries"]
        self._mask = self.entries - 1
        self.consumer = _U64.unpack_from(self._view, ev.RING_CONSUMER_OFFSET)[0]
        self.next_sequence: int | None = None

    @property
    def producer(self) -> int:
        return _U64.unpack_from(self._view, ev.RING_PRODUCER_OFFSET)[0]

    @property
    def dropped(self) -> int:
        """Events the card could not write because the ring was full."""
        return _U64.unpack_from(self._view, ev.RING_DROPPED_OFFSET)[0]

    def pending(self) -> int:
        return self.producer - self.consumer

    def poll(self, limit: int | None = None) -> list[ev.Event]:
        producer = self.producer
        available = producer - self.consumer
        if available < 0 or available > self.entries:
            raise ev.EventError(f"event ring: producer index {producer} and consumer index "
                                f"{self.consumer} are {available} apart, outside 0..{self.entries}")
        if limit is not None:
            available = min(available, limit)
        out = []
        for index in range(self.consumer, self.consumer + available):
            event = ev.unpack(self._view, ev.ring_slot_offset(index, self.entries))
            if self.next_sequence is not None and event.sequence != self.next_sequence:
                logger.warning("event ring: record %d has sequence %d, expected %d (%d events "
                               "dropped by the card so far)", index, event.sequence,
                               self.next_sequence, self.dropped)
            self.next_sequence = (event.sequence + 1) & 0xFFFF_FFFF
            out.append(event)
        if available:
            self.consumer += available
            _U64.pack_into(self._view, ev.RING_CONSUMER_OFFSET, self.consumer)
        return out

    def release(self) -> None:
        self._view.release()


class RingWriter:
    """The card's side (the simulated card and test stand-ins for the gateware event stage).

    :meth:`write` numbers events from 0 (``sequence``), stores the record, then publishes the
    producer index; when the ring is full it counts the event in ``dropped`` instead.
    """

    def __init__(self, buffer: memoryview | bytearray) -> None:
        self._view = memoryview(buffer)
        self.entries = ev.unpack_ring_header(self._view)["entries"]
        self.producer = _U64.unpack_from(self._view, ev.RING_PRODUCER_OFFSET)[0]
        self.sequence = 0

    def write(self, event: ev.Event) -> bool:
        """Write ``event``, numbered with the next ``sequence``; False if it was dropped."""
        consumer = _U64.unpack_from(self._view, ev.RING_CONSUMER_OFFSET)[0]
        numbered = ev.Event(event.type, event.cycles, self.sequence, event.flags, event.fields)
        record = ev.pack(numbered)
        self.sequence = (self.sequence + 1) & 0xFFFF_FFFF
        if self.producer - consumer >= self.entries:
            dropped = _U64.unpack_from(self._view, ev.RING_DROPPED_OFFSET)[0] + 1
            _U64.pack_into(self._view, ev.RING_DROPPED_OFFSET, dropped)
            return False
        offset = ev.ring_slot_offset(self.producer, self.entries)
        self._view[offset:offset + ev.RECORD_BYTES] = record
        self.producer += 1
        _U64.pack_into(self._view, ev.RING_PRODUCER_OFFSET, self.producer)
        return True

    def release(self) -> None:
        self._view.release()
