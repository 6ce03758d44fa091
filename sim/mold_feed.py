"""Market data of the exchange simulator: book events as ITCH 5.0 in MoldUDP64 datagrams over UDP,
heartbeats, end of session, and the MoldUDP64 retransmission (re-request) server."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Callable, Iterable

from tickwire.protocols import itch, moldudp64

from .matching import Added, Event, Executed, IocCanceled, Order, Reduced, Removed, Replaced

__all__ = ["MoldFeed", "ItchEncoder", "DEFAULT_MAX_PAYLOAD"]

logger = logging.getLogger(__name__)

#: Default largest UDP payload of a feed datagram (fits a 1500-byte Ethernet MTU).
DEFAULT_MAX_PAYLOAD = 1400


class ItchEncoder:
    """Turns matching-engine events into ITCH 5.0 messages.

    Parameters
    ----------
    symbols
        The symbols in stock-locate order (locate 1 is the first).
    attribution
        Order -> MPID for attributable (display ``A``) orders.
    """

    def __init__(self, symbols: Iterable[str], attribution: Callable[[Order], str]) -> None:
        self.locates = {s: k + 1 for k, s in enumerate(symbols)}
        self._attribution = attribution

    def system_event(self, event_code: str, timestamp: int) -> bytes:
        return itch.pack("S", stock_locate=0, timestamp=timestamp, event_code=event_code)

    def stock_directory(self, symbol: str, round_lot_size: int, timestamp: int) -> bytes:
        return itch.pack("R", stock_locate=self.locates[symbol], timestamp=timestamp, stock=symbol,
                         market_category="Q", financial_status_indicator="N", round_lot_size=round_lot_size,
                         round_lots_only="N", issue_classification="C", issue_sub_type="Z",
                         authenticity="P", short_sale_threshold_indicator="N", ipo_flag="N",
                         luld_reference_price_tier="1", etp_flag="N", etp_leverage_factor=0,
                         inverse_indicator="N")

    def encode(self, event: Event, timestamp: int) -> list[bytes]:
        """The ITCH messages of one engine event (none for what the feed does not show)."""
        if isinstance(event, Added):
            return self._add(event.order, timestamp)
        if isinstance(event, Executed):
            resting = event.resting
            locate = self.locates[resting.symbol]
            if resting.display == "N":   # a hidden order's fill is reported as a trade
                return [itch.pack("P", stock_locate=locate, timestamp=timestamp, order_reference_number=0,
                                  buy_sell_indicator=resting.book_side, shares=event.quantity,
                                  stock=resting.symbol, price=event.price, match_number=event.match_number)]
            return [itch.pack("E", stock_locate=locate, timestamp=timestamp,
                              order_reference_number=resting.order_reference_number,
                              executed_shares=event.quantity, match_number=event.match_number)]
        if isinstance(event, Reduced):
            if event.order.display == "N":
                return []
            return [itch.pack("X", stock_locate=self.locates[event.order.symbol], timestamp=timestamp,
                              order_reference_number=event.order.order_reference_number,
                              cancelled_shares=event.quantity)]
        if isinstance(event, Removed):
            if event.order.display == "N":
                return []
            return [itch.pack("D", stock_locate=self.locates[event.order.symbol], timestamp=timestamp,
                              order_reference_number=event.order.order_reference_number)]
        if isinstance(event, Replaced):
            if event.old.display == "N":
                return []
            return [itch.pack("U", stock_locate=self.locates[event.new.symbol], timestamp=timestamp,
                              original_order_reference_number=event.old.order_reference_number,
                              new_order_reference_number=event.new.order_reference_number,
                              shares=event.new.quantity, price=event.new.price)]
        if isinstance(event, IocCanceled):
            return []
        raise TypeError(f"not a matching-engine event: {event!r}")

    def _add(self, order: Order, timestamp: int) -> list[bytes]:
        if order.display == "N":
            return []
        values = dict(stock_locate=self.locates[order.symbol], timestamp=timestamp,
                      order_reference_number=order.order_reference_number,
                      buy_sell_indicator=order.book_side, shares=order.quantity, stock=order.symbol,
                      price=order.price)
        if order.display == "A":
            return [itch.pack("F", attribution=self._attribution(order), **values)]
        return [itch.pack("A", **values)]


class _Retransmitter(asyncio.DatagramProtocol):
    def __init__(self, feed: "MoldFeed") -> None:
        self.feed = feed
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = self.feed.answer_request(data, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class MoldFeed:
    """Publishes ITCH messages in MoldUDP64 datagrams and answers retransmission requests.

    Parameters
    ----------
    session
        MoldUDP64 session name (at most 10 characters).
    destination
        ``(address, port)`` the datagrams go to; multicast only when ``address`` is a group.
    retransmit_address
        ``(host, port)`` the retransmission server binds (port 0: ephemeral).
    max_payload
        Largest datagram payload in bytes.
    heartbeat_interval
        Seconds without a datagram before a heartbeat is sent.
    multicast_ttl, multicast_interface
        For a multicast destination: TTL and outgoing interface address ("" = the default).
    """

    def __init__(self, *, session: str, destination: tuple[str, int], retransmit_address: tuple[str, int],
                 max_payload: int = DEFAULT_MAX_PAYLOAD, heartbeat_interval: float = 1.0,
                 multicast_ttl: int = 1, multicast_interface: str = "") -> None:
        if not 0 < len(session) <= 10:
            raise ValueError(f"MoldUDP64 session must be 1..10 characters, not {session!r}")
        if max_payload < moldudp64.HEADER_LENGTH + 2 + itch.MAX_LENGTH:
            raise ValueError(f"max_payload must hold at least one message, not {max_payload!r}")
        self.session = session
        self.destination = destination
        self.retransmit_address = retransmit_address
        self.max_payload = max_payload
        self.heartbeat_interval = heartbeat_interval
        self.multicast_ttl = multicast_ttl
        self.multicast_interface = multicast_interface
        #: Every message published, index = sequence number - 1.
        self.messages: list[bytes] = []
        self._pending_from = 0     # index of the first message not yet sent
        self._socket: socket.socket | None = None
        self._retransmit: asyncio.DatagramTransport | None = None
        self._heartbeat: asyncio.Task | None = None
        self._last_sent = 0.0
        self.datagrams_sent = 0
        self.requests_answered = 0
        self.ended = False

    @property
    def next_sequence_number(self) -> int:
        return len(self.messages) + 1

    @property
    def retransmit_port(self) -> int:
        if self._retransmit is None:
            raise RuntimeError("the feed is not started")
        return self._retransmit.get_extra_info("sockname")[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.destination[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if ipaddress.ip_address(self.destination[0]).is_multicast:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.multicast_ttl)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                if self.multicast_interface:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                    socket.inet_aton(self.multicast_interface))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.multicast_ttl)
        self._socket = sock
        transport, _ = await loop.create_datagram_endpoint(lambda: _Retransmitter(self),
                                                           local_addr=self.retransmit_address)
        self._retransmit = transport  # type: ignore[assignment]
        self._last_sent = time.monotonic()
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="moldudp64-heartbeat")
        logger.info("feed session %s to %s:%d, retransmission on %s:%d", self.session,
                    *self.destination, self.retransmit_address[0], self.retransmit_port)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            try:
                await self._heartbeat
            except asyncio.CancelledError:
                pass
            self._heartbeat = None
        if self._retransmit is not None:
            self._retransmit.close()
            self._retransmit = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, messages: Iterable[bytes]) -> None:
        """Queue messages (sequence numbers are given now); :meth:`flush` sends them."""
        if self.ended:
            raise RuntimeError("the MoldUDP64 session has ended")
        self.messages.extend(messages)

    def flush(self) -> None:
        """Send the queued messages in as few datagrams as ``max_payload`` allows."""
        while self._pending_from < len(self.messages):
            first = self._pending_from
            batch = self._batch(first, len(self.messages) - first)
            self._send(moldudp64.pack(self.session, first + 1, batch))
            self._pending_from += len(batch)

    def end_session(self) -> None:
        """Flush, then send the end-of-session packet (count 0xFFFF)."""
        self.flush()
        self.ended = True
        self._send(moldudp64.HEADER.pack(session=self.session, sequence_number=self.next_sequence_number,
                                         message_count=moldudp64.END_OF_SESSION_COUNT))

    def _batch(self, first: int, limit: int) -> list[bytes]:
        size = moldudp64.HEADER_LENGTH
        batch: list[bytes] = []
        for m in self.messages[first:first + min(limit, moldudp64.END_OF_SESSION_COUNT - 1)]:
            if batch and size + 2 + len(m) > self.max_payload:
                break
            batch.append(m)
            size += 2 + len(m)
        return batch

    def _send(self, datagram: bytes) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(datagram, self.destination)
        except (BlockingIOError, ConnectionRefusedError) as e:   # UDP: a lost datagram, as on a wire
            logger.debug("feed datagram not sent: %s", e)
        except OSError as e:
            logger.warning("feed datagram to %s:%d not sent: %s", *self.destination, e)
        self.datagrams_sent += 1
        self._last_sent = time.monotonic()

    async def _heartbeats(self) -> None:
        while True:
            wait = self._last_sent + self.heartbeat_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.ended:
                return
            self.flush()
            if time.monotonic() - self._last_sent >= self.heartbeat_interval:
                self._send(moldudp64.HEADER.pack(session=self.session,
                                                 sequence_number=self.next_sequence_number,
                                                 message_count=moldudp64.HEARTBEAT_COUNT))

    # -- retransmission ------------------------------------------------------------------------
    def answer_request(self, data: bytes, addr: tuple) -> bytes | None:
        """The reply to a MoldUDP64 request datagram, or None when it gets none."""
        try:
            request = moldudp64.REQUEST.unpack(data)
        except ValueError:
            logger.warning("retransmission request from %s: %d bytes, not a MoldUDP64 request", addr, len(data))
            return None
        session = request["session"].rstrip(" ")
        first, count = request["sequence_number"], request["message_count"]
        if session != self.session:
            logger.info("retransmission request from %s for session %r, not %r", addr, session, self.session)
            return None
        if not 1 <= first <= len(self.messages) or count == 0:
            logger.info("retransmission request from %s: session %s sequence %d count %d outside 1..%d",
                        addr, session, first, count, len(self.messages))
            return None
        batch = self._batch(first - 1, count)
        self.requests_answered += 1
        logger.debug("retransmission to %s: session %s sequence %d, %d messages", addr, session, first,
                     len(batch))
        return moldudp64.pack(self.session, first, batch)
