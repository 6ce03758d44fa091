"""``sim`` driver: a simulated card served by ``tickwire sim serve`` over a local socket.

The socket protocol is :mod:`tickwire.sim.card`'s. The event ring lives in a shared-memory file
this driver creates (``/dev/shm`` when there is one) and hands to the card, as the host hands a
DMA buffer to a real card; the server writes the card's events into it.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import struct
import tempfile
import threading
import time
from typing import Any

from tickwire.protocols import events as ev
from tickwire.sim.card import MAX_MESSAGE, OUT_PORTS, PORTS, PROTOCOL_VERSION, Op

from .base import (EVENTS, FRAMES, REGISTERS, CardTimeout, Driver, DriverError, Frame,
                   check_word, DEFAULT_TIMEOUT)
from .ring import RingReader, init_ring

__all__ = ["SimDriver", "DEFAULT_RING_ENTRIES"]

logger = logging.getLogger(__name__)

DEFAULT_RING_ENTRIES = 4096


class SimDriver(Driver):
    """Connects to a simulated card at Unix socket ``socket`` or 127.0.0.1 TCP ``port``.

    Besides the driver interface: :meth:`run` (advance the clock a number of cycles) and
    :meth:`settle` (run until the card has had nothing to do for a while), for tests.
    """

    name = "sim"
    capabilities = frozenset({REGISTERS, EVENTS, FRAMES})
    options = ("socket", "port", "host", "ring_entries")

    def __init__(self, socket: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 *, ring_entries: int = DEFAULT_RING_ENTRIES,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        if (socket is None) == (port is None):
            from tickwire.sim.card import default_socket_path
            if socket is None and port is None:
                socket = default_socket_path()
            else:
                raise DriverError("sim driver: give 'socket' (a Unix socket path) or 'port' "
                                  "(TCP on 'host'), not both")
        try:
            ev.check_entries(ring_entries)
        except ev.EventError as e:
            raise DriverError(f"sim driver: {e}") from None
        self.where = socket if socket is not None else f"{host}:{port}"
        self._lock = threading.Lock()
        self._sock = self._connect(socket, host, port)
        self._ring_file: str | None = None
        self._ring_map: mmap.mmap | None = None
        self._ring: RingReader | None = None
        try:
            info = self._request(Op.HELLO, struct.pack("<H", PROTOCOL_VERSION))
            self.info: dict[str, Any] = json.loads(info)
            self.send_ports = tuple(self.info.get("send_ports", ()))
            self._attach_ring(ring_entries)
        except BaseException:
            self.close()
            raise
        logger.info("sim card at %s: %s, cycle %d", self.where, self.info.get("harness"),
                    self.info.get("cycles", 0))

    def _connect(self, path: str | None, host: str, port: int | None) -> socket.socket:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = path
        else:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise DriverError(f"sim driver: port must be 1..65535, not {port!r}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = (host, port)
        try:
            sock.settimeout(self.timeout)
            sock.connect(target)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout) as e:
            sock.close()
            raise CardTimeout(f"no simulated card answers at {self.where} "
                              f"({getattr(e, 'strerror', None) or e}): start one with "
                              f"'tickwire sim serve'") from None
        except OSError as e:
            sock.close()
            raise CardTimeout(f"cannot reach the simulated card at {self.where}: {e}") from None

    # -- protocol ---------------------------------------------------------------------------------

    def _request(self, op: int, body: bytes = b"", wait: float = 0.0) -> bytes:
        self._check_open()
        message = bytes([op]) + body
        with self._lock:
            self._sock.settimeout(self.timeout + wait)
            try:
                self._sock.sendall(len(message).to_bytes(4, "little") + message)
                head = self._recv(4)
                length = int.from_bytes(head, "little")
                if not 1 <= length <= MAX_MESSAGE:
                    raise DriverError(f"sim card at {self.where} sent a {length}-byte reply")
                reply = self._recv(length)
            except socket.timeout:
                self._broken()
                raise CardTimeout(f"the simulated card at {self.where} did not answer in "
                                  f"{self.timeout + wait:g} s") from None
            except OSError as e:
                self._broken()
                raise CardTimeout(f"lost the simulated card at {self.where}: {e}") from None
        if reply[0] != 0:
            raise DriverError(f"sim card at {self.where}: {reply[1:].decode(errors='replace')}")
        return reply[1:]

    def _recv(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("the card closed the connection")
            data += chunk
        return bytes(data)

    def _broken(self) -> None:
        # A reply may still be in flight: the stream cannot be trusted any more.
        self._sock.close()
        self.closed = True

    # -- registers ------------------------------------------------------------------------------

    def read(self, address: int) -> int:
        check_word(address)
        return struct.unpack("<I", self._request(Op.READ, struct.pack("<I", address)))[0]

    def write(self, address: int, value: int) -> None:
        check_word(address, value)
        self._request(Op.WRITE, struct.pack("<II", address, value))

    # -- events -----------------------------------------------------------------------------------

    def _attach_ring(self, entries: int) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="tickwire-events-", suffix=".ring", dir=directory)
        try:
            os.ftruncate(fd, ev.ring_bytes(entries))
            self._ring_map = mmap.mmap(fd, ev.ring_bytes(entries))
        finally:
            os.close(fd)
        self._ring_file = path
        init_ring(self._ring_map, entries)
        self._ring = RingReader(self._ring_map)
        self._request(Op.RING, struct.pack("<I", entries) + path.encode())

    @property
    def ring(self) -> RingReader:
        if self._ring is None:
            raise DriverError("sim driver: no event ring")
        return self._ring

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[ev.Event]:
        self._check_wait(timeout, limit)
        self._check_open()
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            out = self.ring.poll(limit)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.01)

    # -- frames -----------------------------------------------------------------------------------

    def send_frame(self, port: str, frame: bytes) -> None:
        self._check_port(port)
        if not isinstance(frame, (bytes, bytearray, memoryview)) or not len(frame):
            raise DriverError(f"sim driver: a frame must be non-empty bytes, not {frame!r:.60}")
        self._request(Op.SEND, bytes([PORTS.index(port)]) + bytes(frame))

    def receive_frames(self, timeout: float = 0.0, limit: int | None = None) -> list[Frame]:
        self._check_wait(timeout, limit)
        body = self._request(Op.RECV, struct.pack("<II", int(timeout * 1000), limit or 4096),
                             wait=timeout)
        frames, at = [], 0
        while at < len(body):
            port, cycle, length = struct.unpack_from("<BQI", body, at)
            at += 13
            frames.append(Frame(OUT_PORTS[port], body[at:at + length], cycle))
            at += length
        return frames

    # -- the clock --------------------------------------------------------------------------------

    def run(self, cycles: int) -> int:
        """Run the card's clock ``cycles`` cycles; returns the cycle count after."""
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
            raise DriverError(f"cycles must be a non-negative integer, not {cycles!r}")
        reply = self._request(Op.RUN, struct.pack("<Q", cycles), wait=cycles / 1e5)
        return struct.unpack("<Q", reply)[0]

    def settle(self, max_cycles: int = 1_000_000) -> int:
        """Run until the card has had nothing to do for a while (every frame sent in has been
        processed, every order out); returns the cycle count. :class:`CardTimeout` if it is still
        busy after ``max_cycles``."""
        reply = self._request(Op.SETTLE, struct.pack("<Q", max_cycles), wait=max_cycles / 1e5)
        cycle, settled = struct.unpack("<QB", reply)
        if not settled:
            raise CardTimeout(f"the simulated card is still busy after {max_cycles} cycles")
        return cycle

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._ring is not None:
            self._ring.release()
            self._ring = None
        if self._ring_map is not None:
            self._ring_map.close()
            self._ring_map = None
        if self._ring_file is not None:
            try:
                os.unlink(self._ring_file)
            except FileNotFoundError:
                pass
            self._ring_file = None
        if not self.closed:
            self._sock.close()
        super().close()

    def __repr__(self) -> str:
        return f"<SimDriver {self.where}{' closed' if self.closed else ''}>"
