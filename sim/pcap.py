"""Classic libpcap files of Ethernet frames (no FCS), with microsecond or nanosecond timestamps."""

from __future__ import annotations

import logging
import os
import struct
from typing import Iterable

logger = logging.getLogger(__name__)

#: Magic numbers of the classic format, as written in the file's own byte order.
MAGIC_MICROSECONDS = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 65535

_GLOBAL_HEADER = "IHHiIII"  # magic, major, minor, thiszone, sigfigs, snaplen, network
_RECORD_HEADER = "IIII"     # ts_sec, ts_usec|ts_nsec, incl_len, orig_len
GLOBAL_HEADER_LENGTH = struct.calcsize("<" + _GLOBAL_HEADER)  # 24
RECORD_HEADER_LENGTH = struct.calcsize("<" + _RECORD_HEADER)  # 16


class PcapError(ValueError):
    """The file is not a classic pcap file of Ethernet frames, or is damaged."""


def write_pcap(path: str | os.PathLike, frames: Iterable[tuple[int, bytes]], *,
               nanoseconds: bool = True, snaplen: int = DEFAULT_SNAPLEN) -> int:
    """Write ``(timestamp_ns, frame)`` pairs to ``path``; returns the number of frames written.

    Parameters
    ----------
    frames
        Timestamps are nanoseconds (since the Unix epoch, or since midnight: pcap does not care);
        frames are whole Ethernet frames without FCS.
    nanoseconds
        Write the nanosecond variant (magic ``0xa1b23c4d``); otherwise microseconds, and the
        timestamps are truncated to whole microseconds.
    snaplen
        Frames longer than this are an error (this writer never truncates).
    """
    if not 0 < snaplen <= 0xFFFFFFFF:
        raise ValueError(f"snaplen must be in 1..2**32-1, not {snaplen!r}")
    magic = MAGIC_NANOSECONDS if nanoseconds else MAGIC_MICROSECONDS
    scale = 1_000_000_000 if nanoseconds else 1_000_000
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<" + _GLOBAL_HEADER, magic, *VERSION, 0, 0, snaplen, LINKTYPE_ETHERNET))
        for timestamp_ns, frame in frames:
            if not isinstance(timestamp_ns, int) or timestamp_ns < 0:
                raise ValueError(f"frame {count}: timestamp must be a non-negative int of ns, "
                                 f"not {timestamp_ns!r}")
            if len(frame) > snaplen:
                raise ValueError(f"frame {count}: {len(frame)} bytes exceed snaplen {snaplen}")
            seconds, fraction_ns = divmod(timestamp_ns, 1_000_000_000)
            fraction = fraction_ns if nanoseconds else fraction_ns // 1000
            if seconds > 0xFFFFFFFF:
                raise ValueError(f"frame {count}: timestamp {timestamp_ns} ns does not fit pcap's "
                                 f"32-bit seconds")
            assert fraction < scale
            f.write(struct.pack("<" + _RECORD_HEADER, seconds, fraction, len(frame), len(frame)))
            f.write(frame)
            count += 1
    logger.debug("wrote %d frames to %s", count, path)
    return count


def read_pcap(path: str | os.PathLike) -> list[tuple[int, bytes]]:
    """All ``(timestamp_ns, frame)`` records of a classic pcap file of Ethernet frames.

    Either byte order and both the microsecond and the nanosecond variants are read. Raises
    :class:`PcapError` for pcapng, another link type, or a truncated file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < GLOBAL_HEADER_LENGTH:
        raise PcapError(f"{path}: {len(data)} bytes, too short for the {GLOBAL_HEADER_LENGTH}-byte "
                        f"pcap header")
    for order in "<>":
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (MAGIC_MICROSECONDS, MAGIC_NANOSECONDS):
            break
    else:
        if data[:4] == b"\x0a\x0d\x0d\x0a":
            raise PcapError(f"{path}: this is a pcapng file; only classic pcap is read")
        raise PcapError(f"{path}: not a pcap file (magic {data[:4].hex()})")
    _, major, minor, _, _, snaplen, network = struct.unpack_from(order + _GLOBAL_HEADER, data)
    if major != 2:
        raise PcapError(f"{path}: pcap version {major}.{minor}, expected 2.x")
    if network & 0x0FFFFFFF != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {network}, only Ethernet ({LINKTYPE_ETHERNET}) is read")
    to_ns = 1 if magic == MAGIC_NANOSECONDS else 1000
    records: list[tuple[int, bytes]] = []
    pos = GLOBAL_HEADER_LENGTH
    while pos < len(data):
        if pos + RECORD_HEADER_LENGTH > len(data):
            raise PcapError(f"{path}: record {len(records)} header truncated at byte {pos}")
        seconds, fraction, incl_len, orig_len = struct.unpack_from(order + _RECORD_HEADER, data, pos)
        pos += RECORD_HEADER_LENGTH
        if fraction * to_ns >= 1_000_000_000:
            raise PcapError(f"{path}: record {len(records)} has sub-second field {fraction} out of range")
        if pos + incl_len > len(data):
            raise PcapError(f"{path}: record {len(records)} claims {incl_len} bytes, "
                            f"{len(data) - pos} remain")
        if incl_len < orig_len:
            logger.warning("%s: record %d captured %d of %d bytes", path, len(records), incl_len, orig_len)
        records.append((seconds * 1_000_000_000 + fraction * to_ns, data[pos:pos + incl_len]))
        pos += incl_len
    logger.debug("read %d frames from %s (snaplen %d)", len(records), path, snaplen)
    return records
