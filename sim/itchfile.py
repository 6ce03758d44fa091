"""ITCH capture files: NASDAQ's raw format (2-byte length + message) and pcaps of MoldUDP64, both ways.

A raw ITCH file is what NASDAQ publishes for a trading day: each message preceded by its length as
a 2-byte big-endian integer, nothing else. A pcap here is a classic libpcap file of Ethernet frames
carrying MoldUDP64 downstream packets over UDP/IPv4 (:mod:`tickwire.sim.pcap`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from tickwire.host.errors import TickwireError
from tickwire.protocols import itch, moldudp64
from tickwire.protocols.net import (
    ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_IPV4, IP_PROTOCOL_UDP, IPV4, UDP, UDP_HEADER_LENGTH,
)

from . import pcap
from .progress import Track, no_track

__all__ = ["RAW_ITCH", "PCAP", "LENGTH_PREFIX", "FILE_FEED", "ItchFileError", "detect_format",
           "read_raw_itch", "count_raw_itch",
           "write_raw_itch", "pcap_messages", "raw_to_pcap", "pcap_to_raw", "convert",
           "feed_destination", "generate_raw_itch", "replacing"]

logger = logging.getLogger(__name__)

RAW_ITCH = "itch"
PCAP = "pcap"
#: Each message of a raw ITCH file is preceded by its length: 2 bytes, big-endian.
LENGTH_PREFIX = 2
_PCAP_MAGICS = {struct.pack(order + "I", magic) for order in "<>"
                for magic in (pcap.MAGIC_MICROSECONDS, pcap.MAGIC_NANOSECONDS)}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_CHUNK = 1 << 20
#: Feed parameters (over :data:`~tickwire.sim.defaults.DEFAULT_FEED`) for raw ITCH files put in
#: datagrams: each datagram filled up to ``max_payload``, as NASDAQ sends them.
FILE_FEED: dict[str, Any] = {"max_messages": None}


class ItchFileError(TickwireError, ValueError):
    """A file that is neither raw ITCH nor a pcap, or is damaged."""


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds and is removed
    when it fails, so a failed write never leaves half a file under the real name. Special files
    (``/dev/null``, a pipe) are written directly."""
    path = Path(path)
    if path.exists() and not path.is_file():
        yield path
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def detect_format(path: str | os.PathLike) -> str:
    """:data:`PCAP` or :data:`RAW_ITCH`, from the first bytes of ``path``.

    A pcap starts with its magic number (either byte order, micro- or nanosecond); raw ITCH starts
    with a length prefix followed by a message whose type byte ITCH 5.0 defines."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ItchFileError(f"{path}: empty file, neither raw ITCH nor pcap")
    if head in _PCAP_MAGICS:
        return PCAP
    if head == _PCAPNG_MAGIC:
        raise ItchFileError(f"{path}: this is a pcapng file; save it as classic pcap first "
                            f"(editcap -F pcap IN OUT)")
    if len(head) < LENGTH_PREFIX + 1:
        raise ItchFileError(f"{path}: {len(head)} bytes, too short for a raw ITCH message")
    length = int.from_bytes(head[:LENGTH_PREFIX], "big")
    if length and chr(head[LENGTH_PREFIX]) in itch.MESSAGES:
        return RAW_ITCH
    raise ItchFileError(f"{path}: neither a pcap file (bad magic {head.hex()}) nor raw ITCH "
                        f"(first message: length {length}, type byte 0x{head[LENGTH_PREFIX]:02x})")


def read_raw_itch(path: str | os.PathLike) -> Iterator[bytes]:
    """The messages of raw ITCH file ``path``, in order, as they are (no check of their types or
    lengths: the gateware sees what the file holds). Raises :class:`ItchFileError` at a length
    prefix or a message cut short by the end of the file."""
    offset = 0  # of buf[0] in the file
    index = 0
    with open(path, "rb") as f:
        buf = b""
        pos = 0
        eof = False
        while True:
            if not eof and len(buf) - pos < LENGTH_PREFIX + 0xFFFF:
                more = f.read(_CHUNK)
                eof = not more
                offset += pos
                buf = buf[pos:] + more
                pos = 0
                continue
            if pos == len(buf):
                return
            if len(buf) - pos < LENGTH_PREFIX:
                raise _truncated_prefix(path, index, offset + pos, len(buf) - pos)
            length = int.from_bytes(buf[pos:pos + LENGTH_PREFIX], "big")
            start = pos + LENGTH_PREFIX
            if start + length > len(buf):
                raise _truncated_message(path, index, offset + pos, length, len(buf) - start)
            yield buf[start:start + length]
            pos = start + length
            index += 1


def _truncated_prefix(path: Any, index: int, position: int, remain: int) -> ItchFileError:
    return ItchFileError(f"{path}: truncated length prefix of message {index} at byte {position}: "
                         f"{remain} of {LENGTH_PREFIX} bytes before the end of the file")


def _truncated_message(path: Any, index: int, position: int, length: int, remain: int) -> ItchFileError:
    return ItchFileError(f"{path}: truncated message {index} at byte {position}: its length prefix "
                         f"says {length} bytes, {remain} remain in the file")


def count_raw_itch(path: str | os.PathLike) -> int:
    """The number of messages in raw ITCH file ``path``, checking its framing as
    :func:`read_raw_itch` does (faster: the messages are not copied)."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    pos = index = 0
    while pos < size:
        if pos + LENGTH_PREFIX > size:
            raise _truncated_prefix(path, index, pos, size - pos)
        end = pos + LENGTH_PREFIX + (data[pos] << 8 | data[pos + 1])
        if end > size:
            raise _truncated_message(path, index, pos, end - pos - LENGTH_PREFIX,
                                     size - pos - LENGTH_PREFIX)
        pos = end
        index += 1
    return index


def write_raw_itch(path: str | os.PathLike, messages: Iterable[bytes]) -> int:
    """Write ``messages`` as a raw ITCH file; returns how many were written."""
    count = 0
    with replacing(path) as tmp, open(tmp, "wb") as f:
        out = bytearray()
        for message in messages:
            if len(message) > 0xFFFF:
                raise ValueError(f"message {count}: {len(message)} bytes do not fit the 2-byte "
                                 f"length prefix")
            out += len(message).to_bytes(LENGTH_PREFIX, "big")
            out += message
            count += 1
            if len(out) >= _CHUNK:
                f.write(out)
                out.clear()
        f.write(out)
    return count


def _udp_payload(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """``(destination MAC, destination IP, destination port, payload)`` of an Ethernet II / IPv4
    / UDP frame (no FCS), or None for anything else (other EtherTypes, fragments, short frames)."""
    if len(frame) < ETHERNET_HEADER_LENGTH + IPV4.length:
        return None
    eth = ETHERNET.unpack(frame)
    if eth["ethertype"] != ETHERTYPE_IPV4:
        return None
    ip = IPV4.unpack(frame[ETHERNET_HEADER_LENGTH:])
    header_length = (ip["version_ihl"] & 0x0F) * 4
    if ip["version_ihl"] >> 4 != 4 or ip["protocol"] != IP_PROTOCOL_UDP or header_length < 20:
        return None
    if ip["flags_fragment_offset"] & 0x3FFF:  # MF or a fragment offset
        return None
    udp_start = ETHERNET_HEADER_LENGTH + header_length
    end = min(len(frame), ETHERNET_HEADER_LENGTH + ip["total_length"])
    if udp_start + UDP_HEADER_LENGTH > end:
        return None
    udp = UDP.unpack(frame[udp_start:])
    payload_end = min(end, udp_start + udp["length"])
    return (eth["destination_address"], ip["destination_address"], udp["destination_port"],
            frame[udp_start + UDP_HEADER_LENGTH:payload_end])


def feed_destination(frames: Iterable[bytes]) -> tuple[int, int, int] | None:
    """``(destination MAC, IP, UDP port)`` most of the MoldUDP64 packets in ``frames`` go to, or
    None when no frame carries one: the feed a capture is of."""
    seen: Counter[tuple[int, int, int]] = Counter()
    for frame in frames:
        udp = _udp_payload(frame)
        if udp is not None and len(udp[3]) >= moldudp64.HEADER_LENGTH:
            seen[udp[:3]] += 1
    return seen.most_common(1)[0][0] if seen else None


def pcap_messages(path: str | os.PathLike) -> Iterator[bytes]:
    """The ITCH messages of a pcap of MoldUDP64 packets, in sequence order, each once.

    Frames that are not UDP/IPv4 or not to the capture's feed (:func:`feed_destination`) are
    skipped, as are heartbeats, end-of-session packets and messages whose sequence number was
    seen already (retransmissions, the B copy of an A/B pair); gaps are logged."""
    try:
        records = pcap.read_pcap(path)
    except pcap.PcapError as e:
        raise ItchFileError(str(e)) from None
    destination = feed_destination(frame for _, frame in records)
    if destination is None:
        raise ItchFileError(f"{path}: no MoldUDP64 packet over UDP/IPv4 in {len(records)} frames")
    session, expected = None, None
    skipped = duplicates = 0
    for number, (_, frame) in enumerate(records):
        udp = _udp_payload(frame)
        if udp is None or udp[:3] != destination:
            skipped += 1
            continue
        try:
            header, messages = moldudp64.unpack(udp[3])
        except ValueError as e:
            raise ItchFileError(f"{path}: frame {number}: malformed MoldUDP64 packet: {e}") from None
        if header["session"] != session:
            if session is not None:
                logger.info("%s: frame %d: session %r -> %r", path, number, session, header["session"])
            session, expected = header["session"], header["sequence_number"]
        for i, message in enumerate(messages):
            sequence = header["sequence_number"] + i
            if sequence < expected:
                duplicates += 1
                continue
            if sequence > expected:
                logger.warning("%s: frame %d: messages %d..%d missing", path, number, expected,
                               sequence - 1)
            expected = sequence + 1
            yield message
    if skipped or duplicates:
        logger.info("%s: %d frames not of the feed skipped, %d duplicate messages dropped",
                    path, skipped, duplicates)


def raw_to_pcap(source: str | os.PathLike, destination: str | os.PathLike,
                feed: Mapping[str, Any] | None = None, track: Track = no_track) -> int:
    """Raw ITCH file ``source`` as a pcap of MoldUDP64 datagrams (the feed parameters of
    :data:`~tickwire.sim.defaults.DEFAULT_FEED`, overridden by ``feed``, by default
    :data:`FILE_FEED`); returns the number of messages."""
    from .feed import iter_feed_frames
    total = count_raw_itch(source)
    messages = track(read_raw_itch(source), total, f"{Path(source).name} -> pcap")
    with replacing(destination) as tmp:
        pcap.write_pcap(tmp, iter_feed_frames(messages, FILE_FEED if feed is None else feed))
    return total


def pcap_to_raw(source: str | os.PathLike, destination: str | os.PathLike,
                track: Track = no_track) -> int:
    """The messages of MoldUDP64 pcap ``source`` (:func:`pcap_messages`) as a raw ITCH file;
    returns the number of messages."""
    return write_raw_itch(destination, track(pcap_messages(source), None,
                                             f"{Path(source).name} -> raw ITCH"))


def convert(source: str | os.PathLike, destination: str | os.PathLike,
            track: Track = no_track) -> tuple[str, str, int]:
    """Raw ITCH to pcap or pcap to raw ITCH, the direction from ``source``'s header; returns
    ``(from format, to format, messages)``."""
    if Path(destination).exists() and Path(source).resolve() == Path(destination).resolve():
        raise ItchFileError(f"{source}: input and output are the same file")
    if detect_format(source) == RAW_ITCH:
        return RAW_ITCH, PCAP, raw_to_pcap(source, destination, track=track)
    return PCAP, RAW_ITCH, pcap_to_raw(source, destination, track=track)


def generate_raw_itch(path: str | os.PathLike, messages: int, symbols: int, seed: int = 1,
                      track: Track = no_track) -> int:
    """A synthetic trading day as raw ITCH file ``path``: :func:`tickwire.sim.feed.iter_messages`
    over ``symbols`` symbols (:func:`tickwire.sim.feed.symbol_table`) with the day's system
    events; deterministic for a seed. Returns the number of messages."""
    from .feed import iter_messages, symbol_table
    table = symbol_table(symbols)
    generated = iter_messages(messages, seed, table, session_events=True)
    first = next(generated)  # checks the arguments before the file is created
    return write_raw_itch(path, track(itertools.chain([first], generated), messages,
                                      f"generating {Path(path).name}"))
