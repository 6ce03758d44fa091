"""The audit journal: an append-only, memory-mapped, segmented log of length- and CRC-framed records.

A journal is a folder of segment files ``0000000000.twj``, ``0000000001.twj``, ... each of a fixed
size (preallocated, memory-mapped ``MAP_SHARED``). A segment starts with a 64-byte header, all
integers little-endian:

======  ====  ==========================================================================
offset  type  field
======  ====  ==========================================================================
0       8s    magic ``b"TWJRNL\\r\\n"``
8       u16   version (1)
10      u16   header size (64)
12      u32   reserved (0)
16      u64   segment number
24      u64   first record index: the journal-wide index of the segment's first record
32      u64   segment size in bytes
40      u64   creation time, nanoseconds since the Unix epoch
48      u32   CRC-32 (``zlib.crc32``) of bytes 0..47
52      u32   flags: bit 0 *sealed* (the writer moved on to the next segment)
56      u64   committed end: byte offset just past the last committed record
======  ====  ==========================================================================

Records follow the header back to back::

    u32 length (of the payload) | u16 type | u16 flags (0) | u64 timestamp_ns | payload | u32 CRC

The CRC is ``zlib.crc32`` of everything before it (length .. payload). The payload of each
:class:`RecordType` is a fixed ``struct`` layout (:data:`SCHEMAS`), some followed by a UTF-8 text
of the remaining length.

Durability. :meth:`Journal.append` writes the record into the shared mapping and then stores the
new committed end in the header; when it returns the record is *written*: it is in the kernel's
page cache and survives the writer being killed (``kill -9``) at any point. It does not survive a
power loss or kernel crash until :meth:`Journal.sync` (``msync``) has returned. Opening a journal
for writing recovers it: the last segment is scanned, every whole, CRC-valid record is kept (also
ones after the committed end, whose ``append`` had not returned yet), the torn tail after them is
zeroed and the committed end set. A CRC failure *before* the committed end means that written
records are damaged, and opening fails rather than dropping them.

Readers (:class:`JournalReader`) map segments read-only and may run while the writer appends:
they read up to the committed end, check every CRC, and in follow mode poll the committed end and
the sealed flag, moving on to the next segment when one is sealed.
"""

from __future__ import annotations

import argparse
import csv
import enum
import errno
import fcntl
import logging
import mmap
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from .errors import TickwireError

__all__ = [
    "JournalError", "RecordType", "Schema", "SCHEMAS", "Record", "Journal", "JournalReader",
    "segment_paths", "export_csv", "export_parquet", "add_commands",
    "DEFAULT_SEGMENT_SIZE", "MAX_PAYLOAD",
]

logger = logging.getLogger(__name__)

MAGIC = b"TWJRNL\r\n"
VERSION = 1
HEADER = struct.Struct("<8sHHIQQQQ")      # magic .. creation time: bytes 0..47, under the CRC
HEADER_SIZE = 64
HEADER_CRC = struct.Struct("<I")
HEADER_CRC_OFFSET = 48
FLAGS = struct.Struct("<I")
FLAGS_OFFSET = 52
FLAG_SEALED = 1
COMMITTED = struct.Struct("<Q")
COMMITTED_OFFSET = 56
RECORD_HEADER = struct.Struct("<IHHQ")    # length, type, flags, timestamp_ns
RECORD_CRC = struct.Struct("<I")
RECORD_OVERHEAD = RECORD_HEADER.size + RECORD_CRC.size
#: Largest payload of one record (the text of a config change, kill or alert is cut to fit).
MAX_PAYLOAD = 65536
#: Default segment size: 64 MiB.
DEFAULT_SEGMENT_SIZE = 64 << 20
SUFFIX = ".twj"
LOCK_NAME = "LOCK"
#: Session number meaning "every session" in kill and unkill records.
ALL_SESSIONS = 0xFFFF


class JournalError(TickwireError):
    """A journal that cannot be opened, is damaged, or a record that cannot be written."""


class RecordType(enum.IntEnum):
    """Record types; the numbers are stored in the journal and never change meaning."""

    ORDER = 1          # an order accepted by risk (card or host) and sent to the exchange
    REJECT = 2         # an order rejected by risk (source 1) or by the exchange (source 2)
    ACK = 3            # the exchange accepted an order
    FILL = 4           # an execution
    CANCEL = 5         # the exchange cancelled (part of) an order
    REPLACE = 6        # the exchange replaced an order by a new one
    CONFIG_CHANGE = 7  # a register written by config apply or an operator
    KILL = 8           # kill switch set
    UNKILL = 9         # kill switch cleared
    ALERT = 10         # something an operator must look at (e.g. a reconciliation mismatch)
    BBO = 11           # best bid and offer of a symbol (the mark for unrealized P&L)


#: Source of a REJECT record.
REJECT_SOURCE_RISK = 1
REJECT_SOURCE_EXCHANGE = 2


@dataclass(frozen=True)
class Schema:
    """The payload layout of one record type: ``struct`` fields, then an optional UTF-8 text.

    ``fields`` pairs each name with its ``struct`` code. ``s`` fields (symbols) and ``c`` fields
    (one-character codes) are ``bytes`` in :meth:`Journal.append` and ``str`` (trailing spaces
    and NULs removed) once decoded; the others are integers.
    """

    type: RecordType
    fields: tuple[tuple[str, str], ...]
    text: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields) + ((self.text,) if self.text else ())

    @property
    def payload(self) -> struct.Struct:
        return struct.Struct("<" + "".join(code for _, code in self.fields))


_SYMBOL = "8s"
SCHEMAS: Mapping[RecordType, Schema] = {s.type: s for s in (
    Schema(RecordType.ORDER, (("user_ref_num", "I"), ("session", "H"), ("side", "c"),
                              ("symbol", _SYMBOL), ("quantity", "I"), ("price", "q"))),
    Schema(RecordType.REJECT, (("user_ref_num", "I"), ("session", "H"), ("source", "B"),
                               ("reason", "H"))),
    Schema(RecordType.ACK, (("user_ref_num", "I"), ("session", "H"),
                            ("order_reference_number", "Q"), ("quantity", "I"), ("price", "q"))),
    Schema(RecordType.FILL, (("user_ref_num", "I"), ("session", "H"), ("match_number", "Q"),
                             ("quantity", "I"), ("price", "q"), ("liquidity_flag", "c"))),
    Schema(RecordType.CANCEL, (("user_ref_num", "I"), ("session", "H"), ("quantity", "I"),
                               ("reason", "c"))),
    Schema(RecordType.REPLACE, (("user_ref_num", "I"), ("session", "H"),
                                ("previous_user_ref_num", "I"), ("quantity", "I"),
                                ("price", "q"), ("order_reference_number", "Q"))),
    Schema(RecordType.CONFIG_CHANGE, (("address", "I"), ("old_value", "Q"), ("new_value", "Q")),
           text="register"),
    Schema(RecordType.KILL, (("session", "H"),), text="reason"),
    Schema(RecordType.UNKILL, (("session", "H"),), text="reason"),
    Schema(RecordType.ALERT, (("severity", "B"), ("code", "H")), text="message"),
    Schema(RecordType.BBO, (("symbol", _SYMBOL), ("bid", "q"), ("ask", "q"), ("bid_size", "I"),
                            ("ask_size", "I"))),
)}


class Record(NamedTuple):
    """One decoded record: its journal-wide index, time, type and payload fields."""

    index: int
    timestamp_ns: int
    type: RecordType
    fields: dict[str, Any]


def _type_name(record_type: RecordType) -> str:
    return record_type.name.lower()


# -- encoding --------------------------------------------------------------------------------------

class _Codec:
    """Precompiled structs of one record type (header + fixed payload in one ``struct``)."""

    __slots__ = ("schema", "code", "whole", "fixed_size", "payload", "text_codes")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.code = int(schema.type)  # a plain int: struct packs an IntEnum far more slowly
        codes = "".join(code for _, code in schema.fields)
        self.whole = struct.Struct("<IHHQ" + codes)
        self.payload = struct.Struct("<" + codes)
        self.fixed_size = self.payload.size
        self.text_codes = tuple(i for i, (_, code) in enumerate(schema.fields)
                                if code.endswith("s") or code == "c")

    def encode_values(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], bytes]:
        """Struct-ready values and the text bytes from ``{field: value}`` (str or bytes)."""
        schema = self.schema
        unknown = set(values) - set(schema.names)
        if unknown:
            raise JournalError(f"{_type_name(schema.type)} record has no field "
                               f"{', '.join(sorted(unknown))} (fields: {', '.join(schema.names)})")
        out = []
        for name, code in schema.fields:
            if name not in values:
                raise JournalError(f"{_type_name(schema.type)} record needs field {name!r}")
            value = values[name]
            if (code.endswith("s") or code == "c") and isinstance(value, str):
                value = value.encode("ascii")
            out.append(value)
        text = b""
        if schema.text:
            given = values.get(schema.text, "")
            text = given.encode("utf-8") if isinstance(given, str) else bytes(given)
            if len(text) + self.fixed_size > MAX_PAYLOAD:
                text = text[:MAX_PAYLOAD - self.fixed_size]
        return tuple(out), text

    def decode(self, buffer: Any, offset: int, length: int) -> dict[str, Any]:
        values = list(self.payload.unpack_from(buffer, offset))
        for i in self.text_codes:
            values[i] = values[i].rstrip(b" \0").decode("ascii", "replace")
        fields = dict(zip((name for name, _ in self.schema.fields), values))
        if self.schema.text:
            start = offset + self.fixed_size
            fields[self.schema.text] = bytes(buffer[start:offset + length]).decode("utf-8",
                                                                                    "replace")
        return fields


_CODECS: dict[int, _Codec] = {int(t): _Codec(s) for t, s in SCHEMAS.items()}
# Indexed by type number: indexing a tuple with an IntEnum is fast, hashing one is not.
_CODEC_TABLE: tuple[_Codec | None, ...] = tuple(_CODECS.get(i) for i in range(max(_CODECS) + 1))
_time_ns = time.time_ns
_crc32 = zlib.crc32
_crc_pack_into = RECORD_CRC.pack_into
_committed_pack_into = COMMITTED.pack_into
_RECORD_HEADER_SIZE = RECORD_HEADER.size
_CRC_SIZE = RECORD_CRC.size


# -- segment files ---------------------------------------------------------------------------------

def segment_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """The segment files of the journal in ``directory``, in segment order."""
    folder = Path(directory)
    if not folder.is_dir():
        raise JournalError(f"journal {folder} not found (no such folder)")
    paths = sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())
    for expected, path in enumerate(paths):
        if int(path.stem) != expected:
            raise JournalError(f"journal {folder}: segment {expected} is missing "
                               f"(found {path.name})")
    return paths


def _segment_name(number: int) -> str:
    return f"{number:010d}{SUFFIX}"


@dataclass
class _Header:
    segment_number: int
    first_record_index: int
    segment_size: int
    created_ns: int
    flags: int
    committed_end: int


def _read_header(buffer: Any, source: Path) -> _Header:
    if len(buffer) < HEADER_SIZE:
        raise JournalError(f"journal segment {source} is {len(buffer)} bytes, shorter than its "
                           f"{HEADER_SIZE}-byte header")
    magic, version, header_size, _, number, first, size, created = HEADER.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise JournalError(f"journal segment {source}: magic {magic!r} is not {MAGIC!r}; "
                           f"not a tickwire journal segment")
    (crc,) = HEADER_CRC.unpack_from(buffer, HEADER_CRC_OFFSET)
    if crc != zlib.crc32(buffer[:HEADER_CRC_OFFSET]):
        raise JournalError(f"journal segment {source}: header CRC mismatch; the header is damaged")
    if version != VERSION or header_size != HEADER_SIZE:
        raise JournalError(f"journal segment {source}: version {version} with a {header_size}-byte "
                           f"header is not supported (this host reads version {VERSION})")
    if size != len(buffer):
        raise JournalError(f"journal segment {source}: header says {size} bytes, file has "
                           f"{len(buffer)}")
    (flags,) = FLAGS.unpack_from(buffer, FLAGS_OFFSET)
    (committed,) = COMMITTED.unpack_from(buffer, COMMITTED_OFFSET)
    if not HEADER_SIZE <= committed <= size:
        raise JournalError(f"journal segment {source}: committed end {committed} is outside the "
                           f"segment ({HEADER_SIZE}..{size})")
    return _Header(number, first, size, created, flags, committed)


def _scan(buffer: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(offset, length, type, timestamp_ns)`` of the whole, CRC-valid records from ``start``,
    stopping before ``end`` or at the first record that is not whole and valid."""
    crc32 = zlib.crc32
    unpack_header = RECORD_HEADER.unpack_from
    unpack_crc = RECORD_CRC.unpack_from
    offset = start
    while offset + RECORD_OVERHEAD <= end:
        length, record_type, flags, timestamp = unpack_header(buffer, offset)
        stop = offset + RECORD_HEADER.size + length
        if (record_type == 0 or length > MAX_PAYLOAD or stop + RECORD_CRC.size > end):
            return
        if unpack_crc(buffer, stop)[0] != crc32(buffer[offset:stop]):
            return
        yield offset, length, record_type, timestamp
        offset = stop + RECORD_CRC.size


def _decode(buffer: Any, index: int, offset: int, length: int, record_type: int,
            timestamp: int) -> Record:
    codec = _CODECS.get(record_type)
    if codec is None:  # a type from a newer host: keep the raw payload
        payload = bytes(buffer[offset + RECORD_HEADER.size:offset + RECORD_HEADER.size + length])
        return Record(index, timestamp, record_type, {"payload": payload.hex()})  # type: ignore
    return Record(index, timestamp, codec.schema.type,
                  codec.decode(buffer, offset + RECORD_HEADER.size, length))


# -- writer ----------------------------------------------------------------------------------------

class Journal:
    """The single writer of the journal in ``directory`` (created if missing).

    Opening recovers the journal after a crash (see the module docstring) and takes an exclusive
    ``flock`` on ``directory/LOCK`` so that a second writer fails at once. Not thread-safe: one
    thread appends. Use as a context manager or call :meth:`close`.

    Parameters
    ----------
    directory : path
        The journal's folder.
    segment_size : int
        Size of each new segment file in bytes (existing segments keep theirs).
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        min_size = HEADER_SIZE + RECORD_OVERHEAD + MAX_PAYLOAD
        if not isinstance(segment_size, int) or segment_size < min_size:
            raise ValueError(f"segment_size must be an integer of at least {min_size} bytes, "
                             f"not {segment_size!r}")
        self.directory = Path(directory)
        self.segment_size = segment_size
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._lock_fd = -1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"journal {self.directory} cannot be created: {e}") from None
        self._lock()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening and recovery -----------------------------------------------------------------------

    def _lock(self) -> None:
        path = self.directory / LOCK_NAME
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            self._lock_fd = -1
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"journal {self.directory} is open for writing by another "
                                   f"process") from None
            raise

    def _open(self) -> None:
        for stale in self.directory.glob(f"*{SUFFIX}.tmp"):  # a segment roll cut short
            stale.unlink()
        paths = segment_paths(self.directory)
        if not paths:
            self._create_segment(0, 0)
            return
        # Segments before the last are whole; one may lack its sealed flag if the writer died
        # between creating the next segment and sealing it.
        previous_end_index = None
        for path in paths[-2:]:
            with open(path, "r+b") as f:
                mm = mmap.mmap(f.fileno(), 0)
            header = _read_header(mm, path)
            if previous_end_index is not None and header.first_record_index != previous_end_index:
                mm.close()
                raise JournalError(f"journal segment {path}: first record index "
                                   f"{header.first_record_index}, but the previous segment ends "
                                   f"at {previous_end_index}")
            count, end = self._recover(mm, header, path)
            previous_end_index = header.first_record_index + count
            if path is paths[-1]:
                self._attach(mm, path, header.segment_number, previous_end_index, end)
                if header.flags & FLAG_SEALED:  # sealed but the next segment was never created
                    self._roll()
            else:
                if not header.flags & FLAG_SEALED:
                    FLAGS.pack_into(mm, FLAGS_OFFSET, header.flags | FLAG_SEALED)
                mm.close()
        logger.info("journal %s open: %d records, appending to segment %s", self.directory,
                    self._next_index, self._path.name)

    def _recover(self, mm: mmap.mmap, header: _Header, path: Path) -> tuple[int, int]:
        """Keep the whole records of a segment, zero its torn tail; ``(records, end offset)``."""
        count = 0
        end = HEADER_SIZE
        for offset, length, _, _ in _scan(mm, HEADER_SIZE, len(mm)):
            count += 1
            end = offset + length + RECORD_OVERHEAD
        if end < header.committed_end:
            raise JournalError(
                f"journal segment {path}: a damaged record at byte {end}, before the committed "
                f"end {header.committed_end}; records reported as written would be lost, so the "
                f"journal is left as it is (copy it aside and inspect it)")
        # A torn record is at most one record long: zero whatever it left behind.
        tail_end = min(len(mm), end + RECORD_OVERHEAD + MAX_PAYLOAD)
        if mm[end:tail_end].count(0) != tail_end - end:
            logger.warning("journal segment %s: torn record after byte %d zeroed", path, end)
            mm[end:tail_end] = bytes(tail_end - end)
        if end != header.committed_end:
            logger.info("journal segment %s: committed end %d -> %d (records whose append had "
                        "not returned)", path, header.committed_end, end)
            COMMITTED.pack_into(mm, COMMITTED_OFFSET, end)
        return count, end

    def _create_segment(self, number: int, first_index: int) -> None:
        path = self.directory / _segment_name(number)
        tmp = path.with_name(path.name + ".tmp")
        header = bytearray(HEADER_SIZE)
        HEADER.pack_into(header, 0, MAGIC, VERSION, HEADER_SIZE, 0, number, first_index,
                         self.segment_size, time.time_ns())
        HEADER_CRC.pack_into(header, HEADER_CRC_OFFSET, zlib.crc32(header[:HEADER_CRC_OFFSET]))
        COMMITTED.pack_into(header, COMMITTED_OFFSET, HEADER_SIZE)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, self.segment_size)
            os.pwrite(fd, header, 0)
            os.rename(tmp, path)  # the segment appears whole or not at all
            mm = mmap.mmap(fd, self.segment_size)
        finally:
            os.close(fd)
        self._attach(mm, path, number, first_index, HEADER_SIZE)

    def _attach(self, mm: mmap.mmap, path: Path, number: int, next_index: int, end: int) -> None:
        self._mm = mm
        self._view = memoryview(mm)
        self._path = path
        self._segment_number = number
        self._next_index = next_index
        self._end = end
        self._limit = len(mm)

    def _roll(self) -> None:
        """Start the next segment, then seal the current one."""
        old_mm, old_view = self._mm, self._view
        if old_mm is None or old_view is None:
            raise JournalError(f"journal {self.directory} is closed")
        self._create_segment(self._segment_number + 1, self._next_index)
        (flags,) = FLAGS.unpack_from(old_mm, FLAGS_OFFSET)
        FLAGS.pack_into(old_mm, FLAGS_OFFSET, flags | FLAG_SEALED)
        old_view.release()
        old_mm.close()
        logger.debug("journal %s: segment %s started at record %d", self.directory,
                     self._path.name, self._next_index)

    # -- appending ----------------------------------------------------------------------------------

    @property
    def next_index(self) -> int:
        """The index the next record will get (= number of records in the journal)."""
        return self._next_index

    def append(self, record_type: RecordType | int, *values: Any, text: bytes = b"",
               timestamp_ns: int | None = None) -> int:
        """Append a record of ``record_type`` from its payload values in schema order
        (``bytes`` for symbol and code fields) and, for types with one, its UTF-8 ``text``.

        ``timestamp_ns`` defaults to ``time.time_ns()``. Returns the record's index; when this
        returns the record is written (survives ``kill -9``; :meth:`sync` for power loss).
        """
        # The hot path: about 1.5 us a record; every attribute lookup here counts.
        try:
            codec = _CODEC_TABLE[record_type]
        except (IndexError, TypeError):
            codec = None
        if codec is None or record_type < 0:
            raise JournalError(f"unknown record type {record_type!r}")
        if timestamp_ns is None:
            timestamp_ns = _time_ns()
        length = codec.fixed_size + len(text)
        size = _RECORD_HEADER_SIZE + length
        offset = self._end
        end = offset + size + _CRC_SIZE
        if end > self._limit:
            if length > MAX_PAYLOAD:
                raise JournalError(f"record payload of {length} bytes is longer than "
                                   f"{MAX_PAYLOAD}")
            self._roll()
            offset = self._end
            end = offset + size + _CRC_SIZE
        mm = self._mm
        if mm is None:
            raise JournalError(f"journal {self.directory} is closed")
        try:
            codec.whole.pack_into(mm, offset, length, codec.code, 0, timestamp_ns, *values)
        except struct.error as e:
            raise JournalError(f"{_type_name(codec.schema.type)} record: {e} (values: "
                               f"{values!r})") from None
        if text:
            mm[offset + codec.whole.size:offset + size] = text
        _crc_pack_into(mm, offset + size, _crc32(self._view[offset:offset + size]))
        self._end = end
        _committed_pack_into(mm, COMMITTED_OFFSET, end)
        index = self._next_index
        self._next_index = index + 1
        return index

    def appender(self, record_type: RecordType | int) -> Callable[..., int]:
        """A function appending records of ``record_type``: ``f(*values, timestamp_ns=None)``
        (plus ``text=b""`` for types with a text) -> index, like :meth:`append` but about a
        third faster, as the type's layout is looked up once. It stays valid across segments
        and fails once the journal is closed."""
        codec = _CODECS.get(int(record_type))
        if codec is None:
            raise JournalError(f"unknown record type {record_type!r}")
        if codec.schema.text:
            return lambda *values, text=b"", timestamp_ns=None: self.append(
                record_type, *values, text=text, timestamp_ns=timestamp_ns)
        pack_into = codec.whole.pack_into
        code = codec.code
        length = codec.fixed_size
        size = _RECORD_HEADER_SIZE + length
        step = size + _CRC_SIZE
        time_ns, crc32, crc_pack_into = _time_ns, _crc32, _crc_pack_into
        committed_pack_into = _committed_pack_into
        journal = self

        def append(*values: Any, timestamp_ns: int | None = None) -> int:
            if timestamp_ns is None:
                timestamp_ns = time_ns()
            offset = journal._end
            end = offset + step
            if end > journal._limit:
                journal._roll()
                offset = journal._end
                end = offset + step
            mm = journal._mm
            if mm is None:
                raise JournalError(f"journal {journal.directory} is closed")
            try:
                pack_into(mm, offset, length, code, 0, timestamp_ns, *values)
            except struct.error as e:
                raise JournalError(f"{_type_name(codec.schema.type)} record: {e} (values: "
                                   f"{values!r})") from None
            crc_pack_into(mm, offset + size, crc32(journal._view[offset:offset + size]))
            journal._end = end
            committed_pack_into(mm, COMMITTED_OFFSET, end)
            index = journal._next_index
            journal._next_index = index + 1
            return index

        return append

    def append_many(self, record_type: RecordType | int,
                    rows: Iterable[Sequence[Any]]) -> int:
        """Append one record of ``record_type`` (a type without text) per row of payload values,
        each stamped with ``time.time_ns()`` as it is written; the committed end is stored once at
        the end (and at segment changes). Returns the index of the first record. When this
        returns every record is written; if it raises, the rows before the bad one are.
        """
        codec = _CODECS.get(int(record_type))
        if codec is None:
            raise JournalError(f"unknown record type {record_type!r}")
        if codec.schema.text:
            raise JournalError(f"{_type_name(codec.schema.type)} records have a text: use append")
        first = self._next_index
        pack_into = codec.whole.pack_into
        code = codec.code
        length = codec.fixed_size
        size = _RECORD_HEADER_SIZE + length
        step = size + _CRC_SIZE
        crc32 = _crc32
        crc_pack_into = _crc_pack_into
        time_ns = _time_ns
        mm, view, offset, limit = self._mm, self._view, self._end, self._limit
        if mm is None or view is None:
            raise JournalError(f"journal {self.directory} is closed")
        count = 0
        try:
            for values in rows:
                if offset + step > limit:
                    self._end = offset
                    self._next_index = first + count
                    _committed_pack_into(mm, COMMITTED_OFFSET, offset)
                    self._roll()
                    mm, view, offset = self._mm, self._view, self._end
                    assert mm is not None and view is not None
                pack_into(mm, offset, length, code, 0, time_ns(), *values)
                crc_pack_into(mm, offset + size, crc32(view[offset:offset + size]))
                offset += step
                count += 1
        except struct.error as e:
            raise JournalError(f"{_type_name(codec.schema.type)} record {first + count}: {e}"
                               ) from None
        finally:
            self._end = offset
            self._next_index = first + count
            _committed_pack_into(mm, COMMITTED_OFFSET, offset)
        return first

    def write(self, record_type: RecordType | int, *, timestamp_ns: int | None = None,
              **fields: Any) -> int:
        """Append a record from named fields (``str`` or ``bytes`` for symbols, codes and text);
        slower than :meth:`append`, clearer to call."""
        codec = _CODECS.get(int(record_type))
        if codec is None:
            raise JournalError(f"unknown record type {record_type!r}")
        values, text = codec.encode_values(fields)
        return self.append(record_type, *values, text=text, timestamp_ns=timestamp_ns)

    def sync(self) -> None:
        """``msync`` the current segment: every written record is on the storage device."""
        if self._mm is not None:
            self._mm.flush()

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else f"{self._next_index} records"
        return f"<Journal {self.directory}: {state}>"


# -- reader ----------------------------------------------------------------------------------------

class JournalReader:
    """Reads the journal in ``directory`` without changing it; safe while a writer appends.

    Records are read up to each segment's committed end, and every CRC is checked: a record that
    fails inside the committed region raises :class:`JournalError`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        segment_paths(self.directory)  # fails clearly if the folder is missing

    def records(self, start: int = 0) -> Iterator[Record]:
        """The committed records from index ``start``, to the current end."""
        return self._read(start, follow=False)

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def follow(self, start: int = 0, *, poll_interval: float = 0.01,
               stop: Callable[[], bool] | None = None) -> Iterator[Record]:
        """Committed records from ``start``, then new ones as they are written, polling every
        ``poll_interval`` seconds, until ``stop()`` returns true (checked while idle)."""
        return self._read(start, follow=True, poll_interval=poll_interval, stop=stop)

    def tail(self, count: int) -> list[Record]:
        """The last ``count`` committed records."""
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        end = self.count()
        return list(self.records(max(0, end - count)))

    def count(self) -> int:
        """Number of committed records (scans only the last segment)."""
        paths = segment_paths(self.directory)
        if not paths:
            return 0
        with _Mapped(paths[-1]) as mm:
            header = _read_header(mm, paths[-1])
            return header.first_record_index + sum(
                1 for _ in _scan(mm, HEADER_SIZE, header.committed_end))

    def _read(self, start: int, *, follow: bool, poll_interval: float = 0.01,
              stop: Callable[[], bool] | None = None) -> Iterator[Record]:
        number = self._segment_of(start, follow, poll_interval, stop)
        if number is None:
            return
        expected_first = None
        while True:
            path = self.directory / _segment_name(number)
            with _Mapped(path) as mm:
                header = _read_header(mm, path)
                if expected_first is not None and header.first_record_index != expected_first:
                    raise JournalError(f"journal segment {path}: first record index "
                                       f"{header.first_record_index}, expected {expected_first}")
                index = header.first_record_index
                offset = HEADER_SIZE
                while True:
                    committed, flags = _committed(mm)
                    for offset_, length, record_type, timestamp in _scan(mm, offset, committed):
                        if index >= start:
                            yield _decode(mm, index, offset_, length, record_type, timestamp)
                        index += 1
                        offset = offset_ + RECORD_OVERHEAD + length
                    if offset < committed:
                        raise JournalError(f"journal segment {path}: damaged record at byte "
                                           f"{offset}, before the committed end {committed}")
                    if flags & FLAG_SEALED:
                        break
                    if not follow or (stop is not None and stop()):
                        return
                    time.sleep(poll_interval)
            expected_first = index
            number += 1
            while not (self.directory / _segment_name(number)).exists():
                if not follow or (stop is not None and stop()):
                    return
                time.sleep(poll_interval)

    def _segment_of(self, start: int, follow: bool, poll_interval: float,
                    stop: Callable[[], bool] | None) -> int | None:
        """The segment holding record ``start`` (the last one that begins at or before it)."""
        while True:
            paths = segment_paths(self.directory)
            if paths:
                break
            if not follow or (stop is not None and stop()):
                return None
            time.sleep(poll_interval)
        number = 0
        for path in paths:
            with _Mapped(path) as mm:
                if _read_header(mm, path).first_record_index > start:
                    break
            number = int(path.stem)
        return number


class _Mapped:
    """A segment file mapped read-only for the duration of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> mmap.mmap:
        try:
            with open(self.path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise JournalError(f"journal segment {self.path} cannot be read: {e}") from None
        return self.mm

    def __exit__(self, *exc: Any) -> None:
        self.mm.close()


def _committed(mm: mmap.mmap) -> tuple[int, int]:
    (flags,) = FLAGS.unpack_from(mm, FLAGS_OFFSET)   # flags first: sealed implies final end
    (committed,) = COMMITTED.unpack_from(mm, COMMITTED_OFFSET)
    return committed, flags


# -- export ----------------------------------------------------------------------------------------

def _columns(types: Iterable[RecordType]) -> list[str]:
    columns = ["index", "timestamp_ns", "type"]
    for t in types:
        for name in SCHEMAS[t].names:
            if name not in columns:
                columns.append(name)
    return columns


def _selected(records: Iterable[Record], types: Sequence[RecordType] | None) -> Iterator[Record]:
    wanted = set(types) if types else None
    for record in records:
        if wanted is None or record.type in wanted:
            yield record


def export_csv(records: Iterable[Record], out: Any,
               types: Sequence[RecordType] | None = None) -> int:
    """Write ``records`` (those of ``types``, default all) as CSV to the text file ``out``: one
    column per field of any exported type, empty where a record has no such field. Returns the
    number of rows."""
    columns = _columns(types or list(RecordType))
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    rows = 0
    for record in _selected(records, types):
        writer.writerow({"index": record.index, "timestamp_ns": record.timestamp_ns,
                         "type": _type_name(record.type), **record.fields})
        rows += 1
    return rows


def export_parquet(records: Iterable[Record], path: str | os.PathLike[str],
                   types: Sequence[RecordType] | None = None, batch_rows: int = 65536) -> int:
    """Write ``records`` to a Parquet file with the columns of :func:`export_csv` (nullable,
    typed: integers as int64/uint64, codes and texts as strings). Returns the number of rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise JournalError("Parquet export needs pyarrow: pip install pyarrow") from None
    chosen = list(types or list(RecordType))
    columns = _columns(chosen)
    kinds: dict[str, Any] = {"index": pa.uint64(), "timestamp_ns": pa.uint64(),
                             "type": pa.string()}
    for t in chosen:
        schema = SCHEMAS[t]
        for name, code in schema.fields:
            if code.endswith("s") or code == "c":
                kinds.setdefault(name, pa.string())
            elif code in "qihb":
                kinds.setdefault(name, pa.int64())
            else:
                kinds.setdefault(name, pa.uint64())
        if schema.text:
            kinds.setdefault(schema.text, pa.string())
    arrow_schema = pa.schema([(name, kinds[name]) for name in columns])
    rows = 0
    with pq.ParquetWriter(os.fspath(path), arrow_schema) as writer:
        batch: dict[str, list[Any]] = {name: [] for name in columns}

        def flush() -> None:
            writer.write_table(pa.table(batch, schema=arrow_schema))
            for values in batch.values():
                values.clear()

        for record in _selected(records, types):
            row = {"index": record.index, "timestamp_ns": record.timestamp_ns,
                   "type": _type_name(record.type), **record.fields}
            for name in columns:
                batch[name].append(row.get(name))
            rows += 1
            if rows % batch_rows == 0:
                flush()
        if rows == 0 or rows % batch_rows:
            flush()
    return rows


# -- command line ----------------------------------------------------------------------------------

def _record_types(text: str) -> list[RecordType]:
    types = []
    for name in text.split(","):
        try:
            types.append(RecordType[name.strip().upper()])
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a record type ({', '.join(_type_name(t) for t in RecordType)})"
            ) from None
    return types


def format_record(record: Record) -> str:
    """One line: index, UTC time with nanoseconds, type, fields."""
    seconds, nanoseconds = divmod(record.timestamp_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanoseconds:09d}Z"
    name = _type_name(record.type) if isinstance(record.type, RecordType) else str(record.type)
    fields = " ".join(f"{key}={value}" for key, value in record.fields.items())
    return f"{record.index:>10} {stamp} {name:<13} {fields}"


def add_commands(commands: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``journal tail|export|replay`` to the ``tickwire`` subcommands."""
    journal = commands.add_parser("journal", parents=list(parents), help="read the audit journal",
                                  description="Read, export and replay the audit journal.")
    sub = journal.add_subparsers(dest="journal_command", metavar="COMMAND", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("directory", metavar="DIR", type=Path, help="the journal's folder")

    tail = sub.add_parser("tail", parents=list(parents), help="print the last records",
                          description="Print the last records, and with --follow new ones as "
                                      "they are written (Ctrl-C stops).")
    common(tail)
    tail.add_argument("-n", "--lines", metavar="N", type=int, default=20,
                      help="number of records to print first (default: %(default)s)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="keep printing records as they are written (default: stop at the end)")
    tail.set_defaults(handler=_cmd_tail)

    export = sub.add_parser("export", parents=list(parents), help="export to CSV or Parquet",
                            description="Export the records to CSV or Parquet, one column per "
                                        "field; the format follows OUT's suffix unless --format.")
    common(export)
    export.add_argument("output", metavar="OUT", type=Path, help="file to write (.csv, .parquet)")
    export.add_argument("--format", metavar="FORMAT", choices=("csv", "parquet"), default=None,
                        help="csv or parquet (default: from OUT's suffix)")
    export.add_argument("--types", metavar="TYPES", type=_record_types, default=None,
                        help="comma-separated record types to export (default: all)")
    export.set_defaults(handler=_cmd_export)

    replay = sub.add_parser("replay", parents=list(parents), help="rebuild positions from it",
                            description="Replay the journal: count the records and rebuild "
                                        "positions, P&L and open orders from them.")
    common(replay)
    replay.add_argument("--print", dest="print_records", action="store_true",
                        help="also print every record (default: summary only)")
    replay.add_argument("--json", action="store_true",
                        help="print the rebuilt state as JSON (default: tables)")
    replay.set_defaults(handler=_cmd_replay)


def _cmd_tail(args: argparse.Namespace) -> int:
    reader = JournalReader(args.directory)
    start = max(0, reader.count() - max(0, args.lines))
    records = reader.follow(start) if args.follow else reader.records(start)
    try:
        for record in records:
            print(format_record(record), flush=args.follow)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    fmt = args.format or {".csv": "csv", ".parquet": "parquet"}.get(args.output.suffix)
    if fmt is None:
        raise JournalError(f"cannot tell the format of {args.output} from its suffix; "
                           f"use --format csv or --format parquet")
    reader = JournalReader(args.directory)
    if fmt == "csv":
        with open(args.output, "w", newline="") as out:
            rows = export_csv(reader.records(), out, args.types)
    else:
        rows = export_parquet(reader.records(), args.output, args.types)
    print(f"{args.output}: {rows} records", file=sys.stderr)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .positions import Positions, print_positions
    positions = Positions()
    counts: dict[str, int] = {}
    for record in JournalReader(args.directory).records():
        if args.print_records:
            print(format_record(record))
        counts[_type_name(record.type)] = counts.get(_type_name(record.type), 0) + 1
        positions.apply_record(record)
    print_positions(positions, counts, as_json=args.json)
    return 0
