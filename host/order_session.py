"""The agent's order session to the exchange: a SoupBinTCP 4.0 client over TCP (until the card has
its own TCP engine), with login, heartbeats, logout and reconnect resuming the sequence number.

One :class:`OrderSession` per ``[[sessions]]`` entry of the config runs a thread that connects,
logs in (requesting the next sequence number it has not yet delivered), reads the server's
packets and sends a Client Heartbeat whenever it has sent nothing for ``heartbeat_interval``
seconds. A connection that brings nothing (not even a Server Heartbeat) for ``server_timeout``
seconds is dropped and made again, after a pause that doubles from 0.2 s up to 2 s. What arrives
goes to ``deliver(kind, session, value)`` from the session's thread:

* ``"bytes"``: every byte run read from the socket, as read (for the card's inbound port);
* ``"sequenced"``: ``(sequence_number, payload)`` of each Sequenced Data packet (an OUCH 5.0
  outbound message), numbered from the Login Accepted's sequence number;
* ``"state"``: a text when the session logs in, is rejected, drops, or ends.

:class:`SequenceFile` keeps the next sequence number to request across restarts: an 8-byte
little-endian counter in a shared file mapping, updated by the agent after it journalled each
message, so it survives ``kill -9``.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tickwire.protocols import soupbintcp

from .errors import TickwireError

__all__ = ["OrderSession", "SequenceFile", "OrderSessionError"]

logger = logging.getLogger(__name__)

Deliver = Callable[[str, Any, Any], None]


class OrderSessionError(TickwireError):
    """An order session cannot send (not logged in) or was set up wrongly."""


class SequenceFile:
    """The next expected sequence number of a session, in ``path`` (8 bytes, mapped shared)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    @property
    def next(self) -> int:
        """The sequence number of the next message not yet taken (1 for a new session)."""
        return max(1, struct.unpack_from("<Q", self._map, 0)[0])

    @next.setter
    def next(self, value: int) -> None:
        struct.pack_into("<Q", self._map, 0, value)

    def close(self) -> None:
        self._map.close()


class OrderSession:
    """A SoupBinTCP client of one configured session (:class:`tickwire.host.appconfig.Session`).

    ``first_sequence`` is the sequence number to request at the first login (the agent passes
    its :class:`SequenceFile`'s value); later logins request the one after the last delivered.
    """

    BACKOFF = (0.2, 2.0)

    def __init__(self, config: Any, deliver: Deliver, *, first_sequence: int = 1,
                 heartbeat_interval: float = 1.0, server_timeout: float = 15.0,
                 connect_timeout: float = 2.0) -> None:
        self.config = config
        self.name: str = config.name
        self.number: int = config.number
        self._deliver = deliver
        self.next_sequence = first_sequence
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._logged_in = threading.Event()
        self._last_sent = 0.0
        self.state = "down"
        self.logins = 0
        self.ended = False
        self.soup_session = ""
        self._thread = threading.Thread(target=self._run, name=f"session-{self.name}",
                                        daemon=True)

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def logged_in(self) -> bool:
        return self._logged_in.is_set()

    def wait_logged_in(self, timeout: float) -> bool:
        return self._logged_in.wait(timeout)

    def send(self, packet: bytes) -> None:
        """Send one whole SoupBinTCP packet (e.g. an Unsequenced Data packet carrying an OUCH
        message); :class:`OrderSessionError` when the session is not logged in."""
        with self._send_lock:
            sock = self._sock
            if sock is None or not self._logged_in.is_set():
                raise OrderSessionError(f"order session {self.name} is not logged in "
                                        f"({self.state})")
            try:
                sock.sendall(packet)
            except OSError as e:
                raise OrderSessionError(f"order session {self.name}: send failed: {e}") from None
            self._last_sent = time.monotonic()
        logger.debug("session %s: sent %s", self.name, packet.hex())

    def stop(self, timeout: float = 3.0) -> None:
        """Log out (Logout Request) and stop the thread."""
        self._stop.set()
        with self._send_lock:
            if self._sock is not None and self._logged_in.is_set():
                try:
                    self._sock.sendall(soupbintcp.frame("O"))
                except OSError:
                    pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread -----------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._deliver("state", self, state)

    def _run(self) -> None:
        pause = self.BACKOFF[0]
        while not self._stop.is_set() and not self.ended:
            try:
                self._connect_and_serve()
                pause = self.BACKOFF[0]
            except (OSError, OrderSessionError, ValueError) as e:
                if self._stop.is_set():
                    break
                logger.warning("session %s: %s", self.name, e)
                self._set_state(f"down: {e}")
            finally:
                self._logged_in.clear()
                with self._send_lock:
                    if self._sock is not None:
                        self._sock.close()
                        self._sock = None
            if self._stop.wait(pause):
                break
            pause = min(pause * 2, self.BACKOFF[1])
        if self.ended:
            self._set_state("ended")
        else:
            self._set_state("stopped")

    def _connect_and_serve(self) -> None:
        c = self.config
        sock = socket.create_connection((c.host, c.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._send_lock:
            self._sock = sock
        requested = str(self.next_sequence).rjust(20)
        login = soupbintcp.frame("L", soupbintcp.CLIENT["L"].pack(
            username=c.username, password=c.password.ljust(10)[:10],
            requested_session=c.session.ljust(10), requested_sequence_number=requested))
        sock.sendall(login)
        self._last_sent = time.monotonic()
        logger.info("session %s: login to %s:%d as %s, sequence %d", self.name, c.host, c.port,
                    c.username, self.next_sequence)
        buffer = b""
        last_heard = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self._logged_in.is_set() and now - self._last_sent >= self.heartbeat_interval:
                with self._send_lock:
                    sock.sendall(soupbintcp.frame("R"))
                    self._last_sent = now
            if now - last_heard > self.server_timeout:
                raise OrderSessionError(f"nothing from the server for {self.server_timeout:g} s")
            ready, _, _ = select.select([sock], [], [], min(0.1, self.heartbeat_interval))
            if not ready:
                continue
            data = sock.recv(65536)
            if not data:
                raise OrderSessionError("the server closed the connection")
            last_heard = time.monotonic()
            if self._logged_in.is_set():
                self._deliver("bytes", self, data)
            buffer += data
            packets, buffer = soupbintcp.unframe(buffer)
            for packet_type, payload in packets:
                if self._packet(packet_type, payload, data if not self._logged_in.is_set()
                                else None):
                    return

    def _packet(self, packet_type: str, payload: bytes, login_bytes: bytes | None) -> bool:
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
            self._logged_in.set()
            self._set_state("up")
            logger.info("session %s: logged in to session %r, next sequence %d", self.name,
                        self.soup_session, self.next_sequence)
            if login_bytes is not None:
                self._deliver("bytes", self, login_bytes)
        elif packet_type == "J":
            code = payload[:1].decode("ascii", "replace")
            reason = soupbintcp.LOGIN_REJECT_REASONS.get(code, code)
            raise OrderSessionError(f"login rejected: {reason}")
        elif packet_type == "Z":
            self.ended = True
            self._set_state("ended")
            return True
        elif packet_type == "+":
            logger.warning("session %s: server debug packet: %s", self.name,
                           payload.decode("ascii", "replace"))
        else:
            logger.warning("session %s: unknown packet type %r (%s)", self.name, packet_type,
                           payload.hex())
        return False
