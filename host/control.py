"""The agent's control socket: JSON lines over a Unix domain socket (or 127.0.0.1 TCP).

A request is one line ``{"command": NAME, "args": {...}}``; the answer is one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``. A connection may carry any
number of requests, answered in order. Commands (see :class:`tickwire.host.agent.Agent`):
``ping``, ``status``, ``positions``, ``orders``, ``limits``, ``kill`` / ``unkill``
(``session``, ``reason``), ``order`` (``symbol``, ``side``, ``quantity``, ``price``,
``session``).

The address is a path (Unix socket) or ``HOST:PORT`` / ``PORT`` (TCP; the host must be a
loopback address). :func:`request` is the client side used by the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import socketserver
import stat
import threading
from typing import Any, Callable

from .errors import TickwireError

__all__ = ["ControlServer", "AgentNotRunning", "ControlError", "request", "parse_address",
           "MAX_LINE"]

logger = logging.getLogger(__name__)

#: Longest request line accepted.
MAX_LINE = 1 << 20
#: Seconds a request may wait for the agent's loop.
ANSWER_TIMEOUT = 30.0

Submit = Callable[[str, dict[str, Any], Callable[[dict[str, Any]], None]], None]


class ControlError(TickwireError):
    """The agent answered a control request with an error, or the socket misbehaved."""


class AgentNotRunning(ControlError):
    """No agent serves the control socket."""


def parse_address(address: str) -> tuple[int, Any]:
    """``(family, address)`` of a control address: a Unix socket path, or ``[HOST:]PORT`` on a
    loopback address."""
    text = str(address)
    host, sep, port = text.rpartition(":")
    if (sep and port.isdigit() and "/" not in text) or text.isdigit():
        host = host or "127.0.0.1"
        number = int(port if sep else text)
        if not 0 <= number <= 65535:
            raise ControlError(f"control port {number} is not in 0..65535")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ControlError(f"the control socket serves loopback only, not {host!r}")
        return socket.AF_INET, (host, number)
    return socket.AF_UNIX, text


class ControlServer:
    """Serves the control socket at ``address``; each request goes to ``submit(command, args,
    reply)``, which must call ``reply(answer)`` once (from any thread)."""

    def __init__(self, address: str, submit: Submit) -> None:
        self.family, where = parse_address(address)
        self._submit = submit
        handler = _handler(self)
        if self.family == socket.AF_UNIX:
            if os.path.exists(where):
                _remove_stale(where)
            self.server: socketserver.BaseServer = _UnixServer(where, handler)
            os.chmod(where, 0o600)
            self.address = where
        else:
            self.server = _TcpServer(where, handler)
            self.address = "%s:%d" % self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="control",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        logger.info("control socket on %s", self.address)

    def answer(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        box: queue.Queue = queue.Queue(maxsize=1)
        self._submit(command, args, box.put)
        try:
            return box.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            return {"ok": False, "error": f"the agent did not answer in {ANSWER_TIMEOUT:g} s"}

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        if self.family == socket.AF_UNIX:
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                pass


def _remove_stale(path: str) -> None:
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        raise ControlError(f"{path} exists and is not a socket: choose another --control path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
        os.unlink(path)  # left by an agent that died
        return
    finally:
        probe.close()
    raise ControlError(f"another tickwire agent is running at {path}")


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(control: ControlServer) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._send({"ok": False, "error": "request line too long"})
                    return
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict) or not isinstance(message.get("command"),
                                                                       str):
                        raise ValueError("a request is {\"command\": NAME, \"args\": {...}}")
                    args = message.get("args") or {}
                    if not isinstance(args, dict):
                        raise ValueError("args must be an object")
                except ValueError as e:
                    self._send({"ok": False, "error": f"bad request: {e}"})
                    continue
                self._send(control.answer(message["command"], args))

        def _send(self, answer: dict[str, Any]) -> None:
            try:
                self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")
                self.wfile.flush()
            except OSError:
                pass
    return Handler


def request(address: str, command: str, args: dict[str, Any] | None = None, *,
            timeout: float = 35.0) -> Any:
    """Send one request to the agent at ``address``; its result, or :class:`ControlError` with
    the agent's error, or :class:`AgentNotRunning`."""
    family, where = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout) as e:
            raise AgentNotRunning(
                f"no tickwire agent is running at {address} "
                f"({getattr(e, 'strerror', None) or e}): start one with "
                f"'tickwire run --config FILE'") from None
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise ControlError(f"the agent at {address} did not answer in "
                                   f"{timeout:g} s") from None
            if not chunk:
                raise AgentNotRunning(f"the tickwire agent at {address} closed the connection "
                                      f"without answering")
            data += chunk
    finally:
        sock.close()
    answer = json.loads(data)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "the agent refused the request"))
    return answer.get("result")
