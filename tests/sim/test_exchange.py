"""The exchange simulator (sim/exchange.py) over real loopback sockets: SoupBinTCP sessions, OUCH
answers byte-checked with protocols/ouch.py, the ITCH/MoldUDP64 feed replayed into reference books,
retransmission, configuration and the ``tickwire exchange`` command. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickwire.protocols import itch, moldudp64, ouch, soupbintcp
from tickwire.sim.book_model import BookModel
from tickwire.sim.exchange import (AccountConfig, Exchange, ExchangeConfig, ExchangeConfigError, ExchangeThread,
                                   SeedConfig, SymbolConfig, parse_price)
from tickwire.sim.matching import RejectReason
from tickwire.sim.model import itch_decode

TIMEOUT = 5.0       # seconds any single wait may take
NOW = 34_200_000_000_000   # 09:30:00 in ns since midnight: the fixed clock of byte-exact checks
SYMBOLS = (SymbolConfig("AAPL", 189_5000), SymbolConfig("MSFT", 420_0000))
ACCOUNTS = (AccountConfig("ALICE", "secret1"), AccountConfig("BOB", "secret2", mpid="BOBM"))


def run(body, timeout: float = 60.0, **changes):
    """Run a coroutine, or ``body(exchange, feed)`` against a fresh exchange (config ``changes``)."""
    coro = with_exchange(body, **changes) if callable(body) else body
    return asyncio.run(asyncio.wait_for(coro, timeout))


class FeedReceiver:
    """A UDP socket on loopback the feed is sent to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def datagrams(self, settle: float = 0.3, limit: float = 10.0) -> list[bytes]:
        """Every datagram that arrives until no message-carrying one (heartbeats do not count)
        has come for ``settle`` seconds, or for ``limit`` seconds in all."""
        loop = asyncio.get_running_loop()
        out: list[bytes] = []
        end = time.monotonic() + limit
        quiet_from = time.monotonic()
        while time.monotonic() < end and time.monotonic() - quiet_from < settle:
            try:
                d = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), settle)
            except TimeoutError:
                break
            out.append(d)
            if moldudp64.HEADER.unpack(d)["message_count"] != moldudp64.HEARTBEAT_COUNT:
                quiet_from = time.monotonic()
        return out

    def close(self) -> None:
        self.sock.close()


def config(feed_port: int, **changes) -> ExchangeConfig:
    values = dict(symbols=SYMBOLS, accounts=ACCOUNTS, session="TESTSESS01", feed_port=feed_port,
                  feed_session="TESTFEED01", heartbeat_interval=0.2, client_timeout=1.0)
    values.update(changes)
    return ExchangeConfig(**values)


class Client:
    """A SoupBinTCP client on a real TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> "Client":
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT))

    def send(self, packet_type: str, payload: bytes = b"") -> None:
        self.writer.write(soupbintcp.frame(packet_type, payload))

    async def login(self, username: str, password: str, session: str = "", sequence_number: int | str = 0):
        self.send("L", soupbintcp.CLIENT["L"].pack(username=username, password=password,
                                                   requested_session=session,
                                                   requested_sequence_number=str(sequence_number).rjust(20)))
        return await self.packet()

    async def packet(self, timeout: float = TIMEOUT, skip_heartbeats: bool = True) -> tuple[str, bytes]:
        async with asyncio.timeout(timeout):
            while True:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
                body = await self.reader.readexactly(length)
                if body[:1] != b"H" or not skip_heartbeats:
                    return chr(body[0]), body[1:]

    async def sequenced(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            t, payload = await self.packet()
            assert t == "S", (t, payload)
            out.append(payload)
        return out

    def order(self, user_ref_num: int, side: str, quantity: int, symbol: str, price: int, tif: str = "0",
              display: str = "Y", **extra) -> None:
        values = dict(user_ref_num=user_ref_num, side=side, quantity=quantity, symbol=symbol, price=price,
                      time_in_force=tif, display=display, capacity="A", intermarket_sweep_eligibility="N",
                      cross_type="N", cl_ord_id=f"C{user_ref_num}")
        values.update(extra)
        self.send("U", ouch.pack_message(ouch.INBOUND, "O", **values))

    def inbound(self, type_: str, **values) -> None:
        self.send("U", ouch.pack_message(ouch.INBOUND, type_, **values))

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """True when the server closes the connection within ``timeout`` (data before it is skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def accepted(urn, side, quantity, symbol, price, ref, tif="0", display="Y", state="L"):
    return ouch.pack_message(ouch.OUTBOUND, "A", timestamp=NOW, user_ref_num=urn, side=side, quantity=quantity,
                             symbol=symbol, price=price, time_in_force=tif, display=display,
                             order_reference_number=ref, capacity="A", intermarket_sweep_eligibility="N",
                             cross_type="N", order_state=state, cl_ord_id=f"C{urn}")


def executed(urn, quantity, price, flag, match):
    return ouch.pack_message(ouch.OUTBOUND, "E", timestamp=NOW, user_ref_num=urn, quantity=quantity, price=price,
                             liquidity_flag=flag, match_number=match)


def canceled(urn, quantity, reason):
    return ouch.pack_message(ouch.OUTBOUND, "C", timestamp=NOW, user_ref_num=urn, quantity=quantity, reason=reason)


def rejected(urn, reason, cl_ord_id=None):
    return ouch.pack_message(ouch.OUTBOUND, "J", timestamp=NOW, user_ref_num=urn, reason=int(reason),
                             cl_ord_id=f"C{urn}" if cl_ord_id is None else cl_ord_id)


START_OF_DAY = ouch.pack_message(ouch.OUTBOUND, "S", timestamp=NOW, event_code="S")


async def with_exchange(body, **changes):
    feed = FeedReceiver()
    try:
        async with Exchange(config(feed.port, **changes), clock=lambda: NOW) as exchange:
            return await body(exchange, feed)
    finally:
        feed.close()


# -- SoupBinTCP -----------------------------------------------------------------------------------

def test_login_accept_and_reject():
    async def body(exchange, feed):
        c = await Client.connect(exchange.order_port)
        assert await c.login("alice", "wrong") == ("J", b"A")
        assert await c.closed()
        c = await Client.connect(exchange.order_port)
        assert await c.login("NOBODY", "secret1") == ("J", b"A")
        c = await Client.connect(exchange.order_port)
        assert await c.login("ALICE", "secret1", session="OTHERSESS") == ("J", b"S")
        c = await Client.connect(exchange.order_port)
        assert await c.login("ALICE", "secret1", sequence_number="12x") == ("J", b"S")
        c = await Client.connect(exchange.order_port)   # case does not matter; blank session = current
        t, payload = await c.login("alice", "SECRET1")
        assert (t, payload) == ("A", soupbintcp.SERVER["A"].pack(session="TESTSESS01",
                                                                  sequence_number="2".rjust(20)))
        assert exchange.server.connected("ALICE")
        c.close()
        assert exchange.server.counters["login_rejects"] == 4
    run(body)


def test_packet_before_login_closes():
    async def body(exchange, feed):
        c = await Client.connect(exchange.order_port)
        c.send("R")
        assert await c.closed()
    run(body)


def test_heartbeats_and_timeout():
    async def body(exchange, feed):
        c = await Client.connect(exchange.order_port)
        await c.login("ALICE", "secret1", sequence_number=1)
        assert await c.sequenced(1) == [START_OF_DAY]
        # Client heartbeats every 0.1 s keep the session for 2.5 client timeouts; the server
        # sends its own heartbeat every 0.2 s.
        start, beats = time.monotonic(), 0
        while time.monotonic() - start < 2.5:
            c.send("R")
            last_heartbeat = time.monotonic()
            try:
                t, _ = await c.packet(timeout=0.1, skip_heartbeats=False)
                assert t == "H"
                beats += 1
            except TimeoutError:
                pass
        assert 5 <= beats <= 30, beats
        assert exchange.server.connected("ALICE")
        # Silence: the server hangs up after client_timeout (1.0 s), not before.
        assert await c.closed(timeout=4.0)
        silence = time.monotonic() - last_heartbeat
        assert 0.95 <= silence <= 4.0, silence
        assert exchange.server.counters["timeouts"] == 1
        assert not exchange.server.connected("ALICE")
    run(body)


def test_silent_before_login_disconnected():
    async def body(exchange, feed):
        c = await Client.connect(exchange.order_port)
        assert await c.closed(timeout=3.0)
    run(body)


def test_logout_and_resume():
    async def body(exchange, feed):
        c = await Client.connect(exchange.order_port)
        await c.login("BOB", "secret2", sequence_number=1)
        for urn in (1, 2, 3):
            c.order(urn, "B", 100, "AAPL", 180_0000 + urn * 100)
        first = await c.sequenced(4)
        assert first[0] == START_OF_DAY
        c.send("O")
        assert await c.closed()
        assert first == exchange.server.stream("BOB")
        # Resume at 3: Login Accepted says 3, then messages 3 and 4, byte for byte.
        c = await Client.connect(exchange.order_port)
        assert await c.login("BOB", "secret2", "TESTSESS01", 3) == (
            "A", soupbintcp.SERVER["A"].pack(session="TESTSESS01", sequence_number="3".rjust(20)))
        assert await c.sequenced(2) == first[2:]
        c.order(4, "B", 100, "AAPL", 180_0000)
        assert await c.sequenced(1) == [accepted(4, "B", 100, "AAPL", 180_0000, 4)]
        c.close()
        await asyncio.sleep(0.1)
        # 0 = only new messages; a number past the end is clamped to the next one.
        for requested in (0, 99):
            c = await Client.connect(exchange.order_port)
            assert await c.login("BOB", "secret2", sequence_number=requested) == (
                "A", soupbintcp.SERVER["A"].pack(session="TESTSESS01", sequence_number="6".rjust(20)))
            with pytest.raises(TimeoutError):
                await c.packet(timeout=0.3)
            c.close()
    run(body)


def test_second_login_takes_over():
    async def body(exchange, feed):
        a = await Client.connect(exchange.order_port)
        await a.login("ALICE", "secret1")
        b = await Client.connect(exchange.order_port)
        t, _ = await b.login("ALICE", "secret1")
        assert t == "A"
        assert await a.closed()
        b.order(1, "S", 10, "AAPL", 200_0000)
        assert (await b.sequenced(1))[0][:1] == b"A"
    run(body)


def test_end_of_session_on_stop():
    async def body():
        feed = FeedReceiver()
        exchange = Exchange(config(feed.port), clock=lambda: NOW)
        await exchange.start()
        c = await Client.connect(exchange.order_port)
        await c.login("ALICE", "secret1", sequence_number=1)
        assert await c.sequenced(1) == [START_OF_DAY]
        await exchange.stop()
        assert await c.packet() == ("S", ouch.pack_message(ouch.OUTBOUND, "S", timestamp=NOW, event_code="E"))
        assert await c.packet() == ("Z", b"")
        assert await c.closed()
        datagrams = await feed.datagrams()
        header, messages = moldudp64.unpack(datagrams[-1])
        assert header["message_count"] == moldudp64.END_OF_SESSION_COUNT
        _, last = moldudp64.unpack(datagrams[-2])
        assert [itch.unpack(m)["event_code"] for m in last[-3:]] == ["M", "E", "C"]
        assert header["sequence_number"] == len(exchange.feed.messages) + 1
        feed.close()
    run(body())


# -- OUCH -----------------------------------------------------------------------------------------

async def two_clients(exchange):
    alice, bob = await Client.connect(exchange.order_port), await Client.connect(exchange.order_port)
    await alice.login("ALICE", "secret1")
    await bob.login("BOB", "secret2")
    return alice, bob


def test_accept_execute_both_sides():
    async def body(exchange, feed):
        alice, bob = await two_clients(exchange)
        alice.order(10, "S", 300, "AAPL", 190_0000)
        assert await alice.sequenced(1) == [accepted(10, "S", 300, "AAPL", 190_0000, 1)]
        bob.order(5, "B", 500, "AAPL", 190_0100)
        assert await bob.sequenced(2) == [accepted(5, "B", 500, "AAPL", 190_0100, 2),
                                          executed(5, 300, 190_0000, "R", 1)]
        assert await alice.sequenced(1) == [executed(10, 300, 190_0000, "A", 1)]
        assert exchange.engine.book("AAPL").bids == [(190_0100, [(2, 200)])]
        assert exchange.engine.book("AAPL").asks == []
    run(body)


def test_ioc_partial_fill():
    async def body(exchange, feed):
        alice, bob = await two_clients(exchange)
        alice.order(1, "S", 100, "MSFT", 420_0000)
        await alice.sequenced(1)
        bob.order(1, "B", 250, "MSFT", 420_0000, tif="3")
        assert await bob.sequenced(3) == [accepted(1, "B", 250, "MSFT", 420_0000, 2, tif="3", state="D"),
                                          executed(1, 100, 420_0000, "R", 1), canceled(1, 150, "I")]
        assert exchange.engine.orders == {}
    run(body)


def test_cancel_paths():
    async def body(exchange, feed):
        alice, _ = await two_clients(exchange)
        alice.order(1, "B", 100, "AAPL", 189_0000)
        await alice.sequenced(1)
        alice.inbound("X", user_ref_num=1, quantity=40)       # leave 40: 60 taken off
        assert await alice.sequenced(1) == [canceled(1, 60, "U")]
        alice.inbound("X", user_ref_num=1, quantity=0)
        assert await alice.sequenced(1) == [canceled(1, 40, "U")]
        alice.inbound("X", user_ref_num=1, quantity=0)        # dead now
        alice.inbound("X", user_ref_num=77, quantity=0)       # never existed
        assert await alice.sequenced(2) == [
            ouch.pack_message(ouch.OUTBOUND, "I", timestamp=NOW, user_ref_num=1),
            ouch.pack_message(ouch.OUTBOUND, "I", timestamp=NOW, user_ref_num=77)]
        assert exchange.engine.orders == {}
        messages = [itch.unpack(m) for m in exchange.feed.messages if m[:1] in b"AXD"]
        assert [(m["message_type"], m.get("cancelled_shares")) for m in messages] == [("A", None), ("X", 60), ("D", None)]
    run(body)


def test_modify_and_replace():
    async def body(exchange, feed):
        alice, bob = await two_clients(exchange)
        alice.order(1, "S", 100, "AAPL", 191_0000)
        alice.order(2, "S", 100, "AAPL", 191_0000)
        await alice.sequenced(2)
        alice.inbound("M", user_ref_num=1, side="T", quantity=70)   # sell -> sell short, 100 -> 70
        assert await alice.sequenced(1) == [
            ouch.pack_message(ouch.OUTBOUND, "M", timestamp=NOW, user_ref_num=1, side="T", quantity=70)]
        assert exchange.engine.book("AAPL").asks == [(191_0000, [(1, 70), (2, 100)])]   # priority kept
        alice.inbound("M", user_ref_num=1, side="T", quantity=80)   # up: refused
        alice.inbound("M", user_ref_num=1, side="B", quantity=10)   # sell -> buy: refused
        assert await alice.sequenced(2) == [ouch.pack_message(ouch.OUTBOUND, "I", timestamp=NOW, user_ref_num=1)] * 2
        alice.inbound("U", orig_user_ref_num=2, user_ref_num=3, quantity=50, price=190_9000, time_in_force="0",
                      display="Y", intermarket_sweep_eligibility="N", cl_ord_id="C3")
        assert await alice.sequenced(1) == [ouch.pack_message(
            ouch.OUTBOUND, "U", timestamp=NOW, orig_user_ref_num=2, user_ref_num=3, side="S", quantity=50,
            symbol="AAPL", price=190_9000, time_in_force="0", display="Y", order_reference_number=3, capacity="A",
            intermarket_sweep_eligibility="N", cross_type="N", order_state="L", cl_ord_id="C3")]
        alice.inbound("U", orig_user_ref_num=2, user_ref_num=4, quantity=50, price=190_9000, time_in_force="0",
                      display="Y", intermarket_sweep_eligibility="N", cl_ord_id="C4")
        alice.inbound("X", user_ref_num=2, quantity=0)
        assert await alice.sequenced(2) == [rejected(4, RejectReason.REPLACE_NOT_ALLOWED),
                                            ouch.pack_message(ouch.OUTBOUND, "I", timestamp=NOW, user_ref_num=2)]
        # Bob lifts the replaced order (now best) and part of the modified one.
        bob.order(1, "B", 100, "AAPL", 191_0000)
        assert await alice.sequenced(2) == [executed(3, 50, 190_9000, "A", 1), executed(1, 50, 191_0000, "A", 2)]
        itch_types = [chr(m[0]) for m in exchange.feed.messages if m[:1] in b"AXDUE"]
        assert itch_types == ["A", "A", "X", "U", "E", "E"]
    run(body)


@pytest.mark.parametrize("changes, reason", [
    (dict(symbol="ZZZZ"), RejectReason.INVALID_SYMBOL),
    (dict(quantity=0), RejectReason.INVALID_QUANTITY),
    (dict(quantity=1_000_000), RejectReason.SHARES_EXCEED_THRESHOLD),
    (dict(price=189_0050), RejectReason.INVALID_PRICE),
    (dict(price=0), RejectReason.INVALID_PRICE),
    (dict(side="X"), RejectReason.INVALID_SIDE),
    (dict(display="Q"), RejectReason.INVALID_DISPLAY),
    (dict(cross_type="O"), RejectReason.INVALID_CROSS_ORDER),
    (dict(tif="6"), RejectReason.OTHER),
    (dict(capacity="Z"), RejectReason.OTHER),
])
def test_rejects(changes, reason):
    async def body(exchange, feed):
        alice, _ = await two_clients(exchange)
        values = dict(side="B", quantity=100, symbol="AAPL", price=189_0000)
        values.update(changes)
        alice.order(7, **values)
        assert await alice.sequenced(1) == [rejected(7, reason)]
        assert exchange.engine.orders == {} or len(exchange.engine.orders) == 0
    run(body)


def test_user_ref_num_must_increase():
    async def body(exchange, feed):
        alice, _ = await two_clients(exchange)
        alice.order(5, "B", 100, "AAPL", 189_0000)
        alice.order(5, "B", 100, "AAPL", 189_0000)
        alice.order(4, "B", 100, "AAPL", 189_0000)
        alice.inbound("Q")
        got = await alice.sequenced(4)
        assert got[1:] == [rejected(5, RejectReason.OTHER), rejected(4, RejectReason.OTHER),
                           ouch.pack_message(ouch.OUTBOUND, "Q", timestamp=NOW, next_user_ref_num=6)]
        assert len(exchange.engine.orders) == 1
    run(body)


def test_malformed_gets_debug():
    async def body(exchange, feed):
        alice, _ = await two_clients(exchange)
        alice.send("U", b"O\x00\x01")          # truncated Enter Order
        t, text = await alice.packet()
        assert t == "+" and b"OUCH" in text
        alice.send("U", b"Z" * 10)             # unknown type
        t, _ = await alice.packet()
        assert t == "+"
        alice.order(1, "B", 100, "AAPL", 189_0000)  # the session goes on
        assert (await alice.sequenced(1))[0][:1] == b"A"
    run(body)


# -- ITCH / MoldUDP64 -----------------------------------------------------------------------------

def request(session: str, sequence_number: int, count: int) -> bytes:
    return moldudp64.REQUEST.pack(session=session, sequence_number=sequence_number, message_count=count)


async def ask(port: int, data: bytes, timeout: float = 0.5) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        return await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
    except TimeoutError:
        return None
    finally:
        sock.close()


def replay_feed(datagrams: list[bytes], session: str) -> dict[int, bytes]:
    """Sequence number -> message of the feed's datagrams (heartbeats and end of session skipped)."""
    out: dict[int, bytes] = {}
    for d in datagrams:
        header, messages = moldudp64.unpack(d)
        assert header["session"].rstrip() == session
        for k, m in enumerate(messages):
            n = header["sequence_number"] + k
            assert out.setdefault(n, m) == m
    return out


def simple_books(messages: list[bytes]) -> dict[str, tuple[list, list]]:
    """Order-level books from ITCH add/execute/cancel/delete/replace (orders in arrival order)."""
    locates: dict[int, str] = {}
    orders: dict[int, list] = {}   # ref -> [locate, side, price, shares]
    for m in messages:
        v = itch.unpack(m)
        t = v["message_type"]
        if t == "R":
            locates[v["stock_locate"]] = v["stock"].rstrip()
        elif t in "AF":
            assert v["order_reference_number"] not in orders
            orders[v["order_reference_number"]] = [v["stock_locate"], v["buy_sell_indicator"], v["price"], v["shares"]]
        elif t == "E" or t == "X":
            o = orders[v["order_reference_number"]]
            o[3] -= v["executed_shares"] if t == "E" else v["cancelled_shares"]
            assert o[3] >= 0
            if o[3] == 0:
                del orders[v["order_reference_number"]]
        elif t == "D":
            del orders[v["order_reference_number"]]
        elif t == "U":
            o = orders.pop(v["original_order_reference_number"])
            orders[v["new_order_reference_number"]] = [o[0], o[1], v["price"], v["shares"]]
    books = {}
    for locate, symbol in locates.items():
        def side(s: str) -> list:
            rows = sorted(((ref, o) for ref, o in orders.items() if o[0] == locate and o[1] == s),
                          key=lambda r: (-r[1][2] if s == "B" else r[1][2], r[0]))
            levels: list = []
            for ref, o in rows:
                if not levels or levels[-1][0] != o[2]:
                    levels.append((o[2], []))
                levels[-1][1].append((ref, o[3]))
            return levels
        books[symbol] = (side("B"), side("S"))
    return books


def by_arrival(levels: list) -> list:
    """Orders within a level sorted by reference number (= arrival for orders that were not modified)."""
    return [(p, sorted(orders)) for p, orders in levels]


def test_feed_replay_matches_book_and_retransmission():
    """Random order flow from two clients (1,000 messages) with seeded liquidity: the feed, with its
    gaps filled by retransmission requests, rebuilds the exchange's books exactly."""
    async def body(exchange, feed):
        alice, bob = await two_clients(exchange)
        rng = random.Random(7)
        urn = {"A": 0, "B": 0}
        live: dict[str, list[int]] = {"A": [], "B": []}
        for i in range(1000):
            who = rng.choice("AB")
            c = alice if who == "A" else bob
            roll = rng.random()
            if roll < 0.6 or not live[who]:
                s = rng.choice(SYMBOLS)
                urn[who] += 1
                live[who].append(urn[who])
                c.order(urn[who], rng.choice("BS"), rng.randint(1, 8) * 100, s.symbol,
                        s.reference_price + rng.randint(-12, 12) * 100, tif=rng.choice("0003"),
                        display=rng.choice("YYYAN"))
            elif roll < 0.75:
                c.inbound("X", user_ref_num=rng.choice(live[who]), quantity=rng.choice([0, 100]))
            elif roll < 0.85:
                c.inbound("M", user_ref_num=rng.choice(live[who]), side=rng.choice("BS"), quantity=rng.choice([0, 100]))
            else:
                urn[who] += 1
                live[who].append(urn[who])
                c.inbound("U", orig_user_ref_num=rng.choice(live[who][:-1] or [0]), user_ref_num=urn[who],
                          quantity=rng.randint(1, 8) * 100, price=189_5000 + rng.randint(-12, 12) * 100,
                          time_in_force="0", display="Y", intermarket_sweep_eligibility="N", cl_ord_id="R")
            if i % 50 == 0:
                await asyncio.gather(alice.writer.drain(), bob.writer.drain())
        alice.inbound("Q")
        bob.inbound("Q")
        for c in (alice, bob):      # everything processed once the query answers arrive
            async with asyncio.timeout(TIMEOUT * 4):
                while (await c.packet())[1][:1] != b"Q":
                    pass
        got = replay_feed(await feed.datagrams(), exchange.feed.session)
        last = len(exchange.feed.messages)
        missing = [n for n in range(1, last + 1) if n not in got]
        for n in missing:          # fill gaps (if loopback dropped any) from the retransmission server
            reply = await ask(exchange.retransmit_port, request(exchange.feed.session, n, 1))
            assert reply is not None
            got.update(replay_feed([reply], exchange.feed.session))
        assert sorted(got) == list(range(1, last + 1))
        messages = [got[n] for n in range(1, last + 1)]
        assert messages == exchange.feed.messages
        # Rebuild: an order-level book, and the project's reference book model (levels).
        books = simple_books(messages)
        model = BookModel(slots=4, capacity=4096, ways=16, depth=64)
        for n, m in enumerate(messages, 1):
            record = itch_decode(m)
            model.process(record, slot=record["stock_locate"] - 1, sequence_number=n)
        assert model.events == []
        executions = sum(1 for m in messages if m[:1] in b"EP")
        assert executions > 50 and any(m[:1] == b"U" for m in messages) and any(m[:1] == b"F" for m in messages)
        for k, s in enumerate(SYMBOLS):
            snap = exchange.engine.book(s.symbol)
            visible = {ref for ref, o in exchange.engine.orders.items() if o.display != "N"}
            bids = [(p, [o for o in orders if o[0] in visible]) for p, orders in snap.bids]
            asks = [(p, [o for o in orders if o[0] in visible]) for p, orders in snap.asks]
            bids, asks = [lv for lv in bids if lv[1]], [lv for lv in asks if lv[1]]
            assert (by_arrival(bids), by_arrival(asks)) == tuple(by_arrival(x) for x in books[s.symbol])
            view = model.level_view(k)
            assert view["bid"] == [(p, sum(q for _, q in o), len(o)) for p, o in bids]
            assert view["ask"] == [(p, sum(q for _, q in o), len(o)) for p, o in asks]
            bid, ask_ = exchange.engine.best(s.symbol)
            assert bid is None or ask_ is None or bid < ask_
        print(f"feed: {last} ITCH messages, {executions} executions, {len(missing)} filled by retransmission")
    run(body, seed=SeedConfig(orders=100, seed=3), client_timeout=10.0)


def test_retransmission_requests():
    async def body(exchange, feed):
        assert len(exchange.feed.messages) >= 10   # directory + seeds
        reply = await ask(exchange.retransmit_port, request("TESTFEED01", 2, 5))
        header, messages = moldudp64.unpack(reply)
        assert header["sequence_number"] == 2 and messages == exchange.feed.messages[1:6]
        # A count larger than what fits: cut at max_payload, still from the requested number.
        reply = await ask(exchange.retransmit_port, request("TESTFEED01", 1, 60000))
        header, messages = moldudp64.unpack(reply)
        assert len(reply) <= exchange.config.feed_max_payload and messages == exchange.feed.messages[:len(messages)]
        assert await ask(exchange.retransmit_port, request("OTHERSESS", 1, 5)) is None
        assert await ask(exchange.retransmit_port, request("TESTFEED01", len(exchange.feed.messages) + 1, 5)) is None
        assert await ask(exchange.retransmit_port, b"short") is None
        assert exchange.feed.requests_answered == 2
    run(body, seed=SeedConfig(orders=200, seed=1), feed_max_payload=400)


def test_feed_start_and_heartbeat():
    async def body(exchange, feed):
        datagrams = await feed.datagrams(settle=0.5)
        start = moldudp64.unpack(datagrams[0])[1]
        decoded = [itch.unpack(m) for m in start]
        assert [(d["message_type"], d.get("event_code")) for d in decoded[:1]] == [("S", "O")]
        assert [(d["stock"].rstrip(), d["stock_locate"]) for d in decoded[1:3]] == [("AAPL", 1), ("MSFT", 2)]
        assert [d["event_code"] for d in decoded[3:5]] == ["S", "Q"]
        beats = [moldudp64.unpack(d)[0] for d in datagrams if moldudp64.unpack(d)[0]["message_count"] == 0]
        assert beats and all(h["sequence_number"] == len(exchange.feed.messages) + 1 for h in beats)
    run(body)


# -- configuration, thread, command line ----------------------------------------------------------

def test_parse_price():
    assert parse_price("189.5", "x") == 189_5000
    assert parse_price(0.01, "x") == 100
    assert parse_price(190, "x") == 190_0000
    for bad in ("1.00001", "abc", -1, True, [1]):
        with pytest.raises(ExchangeConfigError):
            parse_price(bad, "x")


@pytest.mark.parametrize("data, message", [
    ({"symbols": []}, "at least one symbol"),
    ({"symbols": [{"symbol": "AAPL"}]}, "needs symbol and reference_price"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": "1.005"}]}, "not a multiple of tick_size"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}, {"symbol": "AAPL", "reference_price": 2}]}, "twice"),
    ({"symbols": [{"symbol": "aapl", "reference_price": 1}]}, "upper case"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "exchange": {"session": "ELEVENCHARS"}}, "session"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "exchange": {"order_port": 70000}}, "order_port"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "exchange": {"colour": 1}}, "unknown keys"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "feed": {"address": "localhost"}}, "IP address"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}],
      "accounts": [{"username": "TOOLONGNAME", "password": "x"}]}, "username"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "seed": {"orders": -1}}, "seed orders"),
    ({"symbols": [{"symbol": "AAPL", "reference_price": 1}], "extra": {}}, "unknown tables"),
])
def test_config_errors(data, message):
    with pytest.raises(ExchangeConfigError, match=message):
        ExchangeConfig.from_dict(data, "test.toml")


EXAMPLE_TOML = """
[exchange]
order_port = 0
session = "CLISESS001"
heartbeat_interval = 0.5

[feed]
port = {feed_port}
session = "CLIFEED001"

[seed]
orders = 20

[[symbols]]
symbol = "AAPL"
reference_price = "189.50"

[[symbols]]
symbol = "BRK"
reference_price = 60000
tick_size = "1.00"
round_lot_size = 1

[[accounts]]
username = "TWUSER"
password = "TWPASS"
"""


def test_toml_config(tmp_path):
    path = tmp_path / "exchange.toml"
    path.write_text(EXAMPLE_TOML.format(feed_port=26401))
    c = ExchangeConfig.from_toml(path)
    assert [(s.symbol, s.reference_price, s.tick_size, s.round_lot_size) for s in c.symbols] == [
        ("AAPL", 189_5000, 100, 100), ("BRK", 60000_0000, 1_0000, 1)]
    assert (c.session, c.feed_session, c.feed_port, c.heartbeat_interval, c.seed.orders) == (
        "CLISESS001", "CLIFEED001", 26401, 0.5, 20)
    path.write_text("[exchange\n")
    with pytest.raises(ExchangeConfigError, match="not valid TOML"):
        ExchangeConfig.from_toml(path)
    with pytest.raises(ExchangeConfigError, match="not found"):
        ExchangeConfig.from_toml(tmp_path / "missing.toml")


def test_exchange_thread_and_round_trip():
    """The exchange on its own thread; a blocking client measures enter -> Order Accepted."""
    feed = FeedReceiver()
    try:
        with ExchangeThread(config(feed.port, client_timeout=10.0)) as thread:
            with socket.create_connection(("127.0.0.1", thread.order_port), timeout=TIMEOUT) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(soupbintcp.frame("L", soupbintcp.CLIENT["L"].pack(
                    username="ALICE", password="secret1", requested_session="", requested_sequence_number="0")))
                buffer = b""

                def next_packet() -> tuple[str, bytes]:
                    nonlocal buffer
                    while True:
                        packets, rest = soupbintcp.unframe(buffer)
                        if packets:
                            t, p = packets[0]
                            buffer = buffer[3 + len(p):]
                            if t != "H":
                                return t, p
                            continue
                        chunk = s.recv(65536)
                        assert chunk, "connection closed"
                        buffer += chunk
                assert next_packet()[0] == "A"
                times = []
                for urn in range(1, 1001):
                    order = soupbintcp.frame("U", ouch.pack_message(
                        ouch.INBOUND, "O", user_ref_num=urn, side="B" if urn % 2 else "S", quantity=100,
                        symbol="AAPL", price=189_5000, time_in_force="0", display="Y", capacity="A",
                        intermarket_sweep_eligibility="N", cross_type="N"))
                    start = time.perf_counter()
                    s.sendall(order)
                    t, p = next_packet()
                    times.append(time.perf_counter() - start)
                    assert t == "S" and p[:1] == b"A"
                    if urn % 2 == 0:
                        assert next_packet()[1][:1] == b"E" and next_packet()[1][:1] == b"E"  # self-match: both sides
            matched = thread.call(lambda: thread.exchange.counters["executions"])
            assert matched == 500
        median = statistics.median(times) * 1e6
        p99 = sorted(times)[int(len(times) * 0.99)] * 1e6
        print(f"loopback round trip enter -> Order Accepted: median {median:.0f} us, p99 {p99:.0f} us")
        assert median < 50_000
    finally:
        feed.close()


def test_cli_exchange(tmp_path):
    feed = FeedReceiver()
    path = tmp_path / "exchange.toml"
    path.write_text(EXAMPLE_TOML.format(feed_port=feed.port))
    process = subprocess.Popen([sys.executable, "-m", "tickwire.host.cli", "exchange", "--config", str(path),
                                "--seed-orders", "5"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        port = None
        lines = []
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"SoupBinTCP 127\.0\.0\.1:(\d+) session CLISESS001", line)
            if match:
                port = int(match.group(1))
        assert port, lines
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(soupbintcp.frame("L", soupbintcp.CLIENT["L"].pack(
                username="TWUSER", password="TWPASS", requested_session="CLISESS001",
                requested_sequence_number="1")))
            data = b""
            while len(soupbintcp.unframe(data)[0]) < 2:
                chunk = s.recv(4096)
                assert chunk
                data += chunk
            packets = soupbintcp.unframe(data)[0]
            assert packets[0][0] == "A" and packets[1] == ("S", packets[1][1]) and packets[1][1][:1] == b"S"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        rest = process.stderr.read()
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        feed.close()


def test_cli_bad_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[symbols]]\nsymbol = "AAPL"\nreference_price = "1.23456"\n')
    result = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "exchange", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "reference_price" in result.stderr and "4 decimals" in result.stderr
    assert Path(path).exists()


def test_pipelined_order_rate():
    """Orders per second through the whole exchange (TCP in, matching, OUCH and ITCH out): 4,000
    orders sent back to back, half of them matching, until the last answer arrives."""
    async def body(exchange, feed):
        alice, bob = await two_clients(exchange)
        n = 4000
        start = time.perf_counter()
        for i in range(1, n + 1):
            c = alice if i % 2 else bob
            c.order(i, "B" if i % 2 else "S", 100, "AAPL", 189_5000)
            if i % 200 == 0:
                await asyncio.gather(alice.writer.drain(), bob.writer.drain())
        await asyncio.gather(alice.writer.drain(), bob.writer.drain())
        counts = {"alice": 0, "bob": 0}

        async def drain(c, name, expected):
            while counts[name] < expected:
                t, p = await c.packet()
                counts[name] += t == "S"
        # Each side: n/2 accepted + n/2 executions (every order matches once).
        await asyncio.gather(drain(alice, "alice", n), drain(bob, "bob", n))
        seconds = time.perf_counter() - start
        assert exchange.counters["orders"] == n and exchange.counters["executions"] == n // 2
        print(f"exchange over loopback: {n / seconds:,.0f} orders/s ({n // 2} matches, {seconds:.2f} s)")
        assert n / seconds > 100   # a floor that only catches a stall; the figure is printed
    run(body, client_timeout=10.0)


MULTICAST_CHILD = r"""
import asyncio, json, socket, struct, sys
from tickwire.protocols import moldudp64
from tickwire.sim.exchange import AccountConfig, Exchange, ExchangeConfig, SeedConfig, SymbolConfig
GROUP, PORT, IFACE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind((GROUP, PORT))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(IFACE))
rx.settimeout(2.0)
async def main():
    config = ExchangeConfig(symbols=(SymbolConfig("AAPL", 189_5000),), accounts=(AccountConfig("A", "B"),),
                            feed_address=GROUP, feed_port=PORT, feed_interface=IFACE, feed_session="MCAST00001",
                            seed=SeedConfig(orders=10))
    async with Exchange(config) as exchange:
        published = len(exchange.feed.messages)
    got = []
    for _ in range(100):
        try:
            header, messages = moldudp64.unpack(rx.recv(65536))
        except socket.timeout:
            break
        got.append((header["sequence_number"], header["message_count"], len(messages)))
    print(json.dumps({"published": published, "got": got}))
asyncio.run(main())
"""


def test_multicast_feed_in_namespace(tmp_path):
    """A multicast feed, only inside a network namespace the test creates (and removes)."""
    import json
    import shutil
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip) for a network namespace")
    ns = f"twexch{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        for command in (["ip", "link", "set", "lo", "up", "multicast", "on"],
                        ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", ns, *command], check=True, capture_output=True, timeout=10)
        script = tmp_path / "child.py"
        script.write_text(MULTICAST_CHILD)
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(script), "239.77.0.1", "26477",
                                 "127.0.0.1"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        data = [g for g in report["got"] if g[1] not in (0, moldudp64.END_OF_SESSION_COUNT)]
        assert sum(g[2] for g in data) == report["published"] + 3   # + M, E, C at stop
        assert report["got"][-1][1] == moldudp64.END_OF_SESSION_COUNT
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
