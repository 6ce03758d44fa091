"""The event ring's reader (host) and writer (card): wrap, full ring, lost events."""

import logging
import struct

import pytest

from tickwire.drivers.ring import RingReader, RingWriter, init_ring
from tickwire.protocols import events as ev
from tickwire.protocols.events import Event, EventType


def gap(n):
    return Event(EventType.GAP, cycles=1000 + n, fields={"sequence_number": n,
                                                        "message_count": 1})


@pytest.fixture
def ring():
    buffer = bytearray(ev.ring_bytes(4))
    init_ring(buffer, 4)
    return buffer, RingReader(buffer), RingWriter(buffer)


def test_records_wrap_around_the_ring(ring):
    _, reader, writer = ring
    got = []
    for n in range(23):
        assert writer.write(gap(n))
        if n % 3 == 2:
            got += reader.poll()
    got += reader.poll()
    assert [e["sequence_number"] for e in got] == list(range(23))
    assert [e.sequence for e in got] == list(range(23))
    assert reader.consumer == writer.producer == 23  # free-running, beyond entries
    assert reader.poll() == []


def test_a_full_ring_drops_and_counts(ring, caplog):
    buffer, reader, writer = ring
    results = [writer.write(gap(n)) for n in range(6)]
    assert results == [True] * 4 + [False] * 2
    assert reader.dropped == 2
    assert [e["sequence_number"] for e in reader.poll(limit=3)] == [0, 1, 2]
    assert reader.pending() == 1
    assert [e["sequence_number"] for e in reader.poll()] == [3]
    writer.write(gap(6))
    with caplog.at_level(logging.WARNING):
        (event,) = reader.poll()
    assert event.sequence == 6 and "expected 4" in caplog.text  # the host sees the loss


def test_consumer_index_is_published_for_the_card(ring):
    buffer, reader, writer = ring
    for n in range(4):
        writer.write(gap(n))
    reader.poll(limit=2)
    assert struct.unpack_from("<Q", buffer, ev.RING_CONSUMER_OFFSET)[0] == 2
    assert writer.write(gap(4)) and writer.write(gap(5))
    assert not writer.write(gap(6))


def test_corrupt_indices_are_reported(ring):
    buffer, reader, _ = ring
    struct.pack_into("<Q", buffer, ev.RING_PRODUCER_OFFSET, 99)
    with pytest.raises(ev.EventError, match="outside 0..4"):
        reader.poll()


def test_init_ring_checks_the_buffer():
    with pytest.raises(ev.EventError, match="needs 384 bytes"):
        init_ring(bytearray(100), 4)
    with pytest.raises(ev.EventError, match="magic"):
        RingReader(bytearray(384))
