"""SoupBinTCP 4.0 server of the exchange simulator: logins, one sequenced stream per account with
replay from a requested sequence number, heartbeats both ways, logout, end of session."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from tickwire.protocols import soupbintcp

__all__ = ["SoupBinServer", "LOGIN_REQUEST_LENGTH"]

logger = logging.getLogger(__name__)

LOGIN_REQUEST_LENGTH = soupbintcp.CLIENT["L"].length


class _Connection:
    """One client TCP connection: its writer, when it last heard and sent, its heartbeat task."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.last_sent = time.monotonic()
        self.username: str | None = None
        self.heartbeat: asyncio.Task | None = None
        self.closed = False

    def send(self, packet_type: str, payload: bytes = b"") -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(soupbintcp.frame(packet_type, payload))
        self.last_sent = time.monotonic()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.heartbeat is not None:
                self.heartbeat.cancel()
            self.writer.close()


@dataclass
class _Account:
    username: str
    password: str
    stream: list[bytes] = field(default_factory=list)
    connection: _Connection | None = None


class SoupBinServer:
    """SoupBinTCP 4.0 server on a TCP socket.

    Parameters
    ----------
    accounts
        Username -> password (SoupBinTCP compares both without regard to case).
    session
        The session name Login Accepted reports (at most 10 characters).
    host, port
        Where to listen (port 0: ephemeral; :attr:`port` gives the bound one).
    on_message
        Called with ``(username, payload)`` for every Unsequenced Data packet of a logged-in
        client; it answers through :meth:`send`.
    heartbeat_interval
        Seconds without a packet to a client before a Server Heartbeat.
    client_timeout
        Seconds of silence from a client (also before its login) before it is disconnected.
    """

    def __init__(self, *, accounts: Mapping[str, str], session: str, on_message: Callable[[str, bytes], None],
                 host: str = "127.0.0.1", port: int = 0, heartbeat_interval: float = 1.0,
                 client_timeout: float = 15.0) -> None:
        if not 0 < len(session) <= 10:
            raise ValueError(f"SoupBinTCP session must be 1..10 characters, not {session!r}")
        self._accounts = {u.upper(): _Account(u, p) for u, p in accounts.items()}
        self.session = session
        self.host, self._port = host, port
        self.on_message = on_message
        self.heartbeat_interval = heartbeat_interval
        self.client_timeout = client_timeout
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self.ended = False
        self.counters = {"logins": 0, "login_rejects": 0, "timeouts": 0, "malformed": 0, "logouts": 0}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the SoupBinTCP server is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        logger.info("SoupBinTCP session %s listening on %s:%d", self.session, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for account in self._accounts.values():
            if account.connection is not None:
                account.connection.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- the sequenced streams -----------------------------------------------------------------
    def stream(self, username: str) -> list[bytes]:
        """Every sequenced message of an account so far (index = sequence number - 1)."""
        return self._accounts[username.upper()].stream

    def connected(self, username: str) -> bool:
        return self._accounts[username.upper()].connection is not None

    def send(self, username: str, message: bytes) -> None:
        """Append ``message`` to the account's sequenced stream; a logged-in client gets it now."""
        account = self._accounts[username.upper()]
        account.stream.append(message)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session %s user %s sequence %d out: %s", self.session, account.username,
                         len(account.stream), message.hex())
        if account.connection is not None:
            account.connection.send("S", message)

    def debug(self, username: str, text: str) -> None:
        """A Debug packet to the account's client (when connected)."""
        account = self._accounts[username.upper()]
        if account.connection is not None:
            account.connection.send("+", text.encode("ascii", errors="replace")[:65000])

    def end_session(self) -> None:
        """End of Session to every logged-in client, then close them; later logins are rejected."""
        self.ended = True
        for account in self._accounts.values():
            if account.connection is not None:
                account.connection.send("Z")
                account.connection.close()
                account.connection = None

    # -- connections ---------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Connection(writer)
        logger.info("SoupBinTCP connection from %s", conn.peer)
        try:
            account = await self._login(reader, conn)
            if account is not None:
                await self._session(reader, conn, account)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            logger.info("SoupBinTCP %s (%s): connection lost: %s", conn.peer, conn.username, e or type(e).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            if conn.username is not None:
                account = self._accounts[conn.username.upper()]
                if account.connection is conn:
                    account.connection = None
            conn.close()
            self._handlers.discard(task)

    async def _read(self, reader: asyncio.StreamReader, conn: _Connection) -> tuple[str, bytes] | None:
        """The next packet, or None when the client was silent for ``client_timeout``."""
        try:
            async with asyncio.timeout(self.client_timeout):
                header = await reader.readexactly(2)
                length = int.from_bytes(header, "big")
                if length == 0:
                    raise ConnectionError("SoupBinTCP packet of length 0 (no type byte)")
                body = await reader.readexactly(length)
        except TimeoutError:
            self.counters["timeouts"] += 1
            logger.warning("SoupBinTCP %s (%s): nothing received for %.1f s, disconnecting", conn.peer,
                           conn.username or "not logged in", self.client_timeout)
            return None
        return chr(body[0]), body[1:]

    async def _login(self, reader: asyncio.StreamReader, conn: _Connection) -> _Account | None:
        packet = await self._read(reader, conn)
        if packet is None:
            return None
        packet_type, payload = packet
        if packet_type != "L" or len(payload) != LOGIN_REQUEST_LENGTH:
            self.counters["malformed"] += 1
            logger.warning("SoupBinTCP %s: expected a %d-byte Login Request, got type %r with %d bytes "
                           "(%s); closing", conn.peer, LOGIN_REQUEST_LENGTH, packet_type, len(payload),
                           payload[:32].hex())
            return None
        login = soupbintcp.CLIENT["L"].unpack(payload)
        username = login["username"].strip().upper()
        password = login["password"].strip().upper()
        requested_session = login["requested_session"].strip()
        requested = login["requested_sequence_number"].strip()
        account = self._accounts.get(username)
        if account is None or account.password.upper() != password:
            return self._reject(conn, "A", f"user {username!r}: unknown user or wrong password")
        if self.ended or requested_session not in ("", self.session):
            return self._reject(conn, "S", f"user {username!r}: session {requested_session!r} not available "
                                           f"(current {self.session!r}, ended: {self.ended})")
        if requested and not requested.isdigit():
            return self._reject(conn, "S", f"user {username!r}: requested sequence number {requested!r} "
                                           f"is not a number")
        next_new = len(account.stream) + 1
        first = int(requested or 0)
        first = next_new if first == 0 or first > next_new else first
        if account.connection is not None:
            logger.warning("SoupBinTCP user %s logs in again from %s: closing the older connection from %s",
                           account.username, conn.peer, account.connection.peer)
            account.connection.close()
        # Accept, replay and register with no await between: no message is lost or sent twice.
        conn.username = account.username
        conn.send("A", soupbintcp.SERVER["A"].pack(session=self.session,
                                                  sequence_number=str(first).rjust(20)))
        for message in account.stream[first - 1:]:
            conn.send("S", message)
        account.connection = conn
        self.counters["logins"] += 1
        logger.info("SoupBinTCP %s: user %s logged in to session %s at sequence number %d (%d replayed)",
                    conn.peer, account.username, self.session, first, next_new - first)
        conn.heartbeat = asyncio.create_task(self._heartbeats(conn), name=f"soupbintcp-heartbeat-{conn.peer}")
        await conn.writer.drain()
        return account

    def _reject(self, conn: _Connection, code: str, why: str) -> None:
        self.counters["login_rejects"] += 1
        logger.warning("SoupBinTCP %s: Login Rejected %r (%s): %s", conn.peer, code,
                       soupbintcp.LOGIN_REJECT_REASONS[code], why)
        conn.send("J", soupbintcp.SERVER["J"].pack(reject_reason_code=code))
        return None

    async def _session(self, reader: asyncio.StreamReader, conn: _Connection, account: _Account) -> None:
        while not conn.closed:
            packet = await self._read(reader, conn)
            if packet is None:
                return
            packet_type, payload = packet
            if packet_type == "U":
                if not payload:
                    self._malformed(conn, "Unsequenced Data packet without a message")
                else:
                    if logger.isEnabledFor(logging.DEBUG):
                        logger.debug("session %s user %s in: %s", self.session, account.username, payload.hex())
                    self.on_message(account.username, payload)
            elif packet_type == "R" or packet_type == "+":
                pass
            elif packet_type == "O":
                self.counters["logouts"] += 1
                logger.info("SoupBinTCP %s: user %s logged out", conn.peer, account.username)
                return
            else:
                self._malformed(conn, f"unexpected SoupBinTCP packet type {packet_type!r} after login")
            if not conn.closed:
                await conn.writer.drain()

    def _malformed(self, conn: _Connection, why: str) -> None:
        self.counters["malformed"] += 1
        logger.warning("SoupBinTCP %s (%s): %s", conn.peer, conn.username, why)
        conn.send("+", why.encode("ascii", errors="replace"))

    async def _heartbeats(self, conn: _Connection) -> None:
        while not conn.closed:
            wait = conn.last_sent + self.heartbeat_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            conn.send("H")
