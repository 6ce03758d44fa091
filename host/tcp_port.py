"""A card's TCP engine as the host's connection manager sees it (:class:`TcpCardPort` of
:mod:`tickwire.host.tcp_session`), over any driver that carries the engine's host ports: the
``tcp.*`` registers through :class:`tickwire.host.card.Card`, raw frames to ``host_frame``, host
packets to ``host_data`` (after a byte with the session), and back the ``host_frame`` (punted)
and ``payload`` (session byte, then the bytes) frames."""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

from tickwire.protocols.net import FCS_LENGTH

from .card import Card
from .errors import TickwireError

__all__ = ["CardTcpPort", "TcpPortError"]

logger = logging.getLogger(__name__)


class TcpPortError(TickwireError):
    """The card or its driver cannot carry the TCP engine's host ports."""


class CardTcpPort:
    """:class:`tickwire.host.tcp_session.TcpCardPort` over ``card`` (its register map must have
    the ``tcp`` stage; its driver must send ``host_frame``/``host_data`` and receive
    ``host_frame``/``payload`` frames, as the ``sim`` driver does).

    Frames of other ports that :meth:`poll` receives meanwhile (the order port's own frames) are
    kept in :attr:`other_frames` (the newest ``keep`` of them) for whoever checks the wire.
    """

    def __init__(self, card: Card, *, keep: int = 100_000) -> None:
        if "tcp" not in card.regmap.stages():
            raise TcpPortError(f"the register map {card.regmap.source} has no tcp stage: the card "
                               f"has no TCP engine")
        self.card = card
        self.driver: Any = card.driver
        self.other_frames: collections.deque = collections.deque(maxlen=keep)

    def read(self, name: str, session: int | None = None) -> int:
        register = self.card.regmap[name]
        return self.card.read(name, session if register.indexed_by else None)

    def write(self, name: str, value: int, session: int | None = None) -> None:
        register = self.card.regmap[name]
        if register.indexed_by:
            self.card.write(name, value, session)
        else:
            # Commands (retransmit, send_ack, probe) take the session as their value; card-wide
            # registers ignore the session.
            self.card.write(name, value)

    def send_frame(self, frame: bytes) -> None:
        self.driver.send_frame("host_frame", bytes(frame))

    def append(self, session: int, packet: bytes) -> None:
        if not 0 <= session <= 255:
            raise TcpPortError(f"session must be 0..255, not {session!r}")
        if not packet:
            raise TcpPortError("an empty packet cannot be appended")
        self.driver.send_frame("host_data", bytes([session]) + bytes(packet))

    def order_frames(self) -> list[Any]:
        """The order port's frames :meth:`poll` kept (oldest first, emptied), without their FCS:
        what a wire (or a TAP) carries."""
        out = []
        while self.other_frames:
            frame = self.other_frames.popleft()
            if frame.port == "order":
                out.append(dataclasses.replace(frame, data=frame.data[:-FCS_LENGTH]))
        return out

    def poll(self) -> tuple[list[bytes], list[tuple[int, bytes]]]:
        punted: list[bytes] = []
        payload: list[tuple[int, bytes]] = []
        for frame in self.driver.receive_frames(0.0, 4096):
            if frame.port == "host_frame":
                punted.append(frame.data)
            elif frame.port == "payload":
                payload.append((frame.data[0], frame.data[1:]))
            else:
                self.other_frames.append(frame)
        return punted, payload
