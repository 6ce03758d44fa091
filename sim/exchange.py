"""Exchange simulator: OUCH 5.0 over SoupBinTCP 4.0 in, matching, ITCH 5.0 over MoldUDP64 out
(``tickwire exchange``; docs/exchange.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

from tickwire.host.errors import TickwireError
from tickwire.protocols import ouch

from .matching import (CANCEL_IOC, CANCEL_USER, MAX_PRICE, Executed, IocCanceled, MatchingEngine, Order,
                       OrderRejected,
                       Reduced, RejectReason, Removed, UnknownOrder)
from .mold_feed import DEFAULT_MAX_PAYLOAD, ItchEncoder, MoldFeed
from .soupbin_server import SoupBinServer

__all__ = ["Exchange", "ExchangeConfig", "ExchangeThread", "SymbolConfig", "AccountConfig", "SeedConfig",
           "ExchangeConfigError", "DEFAULT_CONFIG", "parse_price", "add_commands"]

logger = logging.getLogger(__name__)

NANOSECONDS_PER_DAY = 86_400 * 1_000_000_000
CAPACITIES = frozenset("APRO")


class ExchangeConfigError(TickwireError):
    """A bad exchange configuration value (the message names the key and the value)."""


# -- configuration -----------------------------------------------------------------------------

def parse_price(value: Any, what: str) -> int:
    """A price as an integer in 1/10000 dollar from a decimal string or a number ("189.5" ->
    1895000); more than 4 decimals, negative values and non-numbers are an error."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ExchangeConfigError(f"{what}: price must be a decimal string or a number, not {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ExchangeConfigError(f"{what}: {value!r} is not a price") from None
    if not d.is_finite() or d < 0:
        raise ExchangeConfigError(f"{what}: price must be a non-negative number, not {value!r}")
    units = d * 10_000
    if units != units.to_integral_value():
        raise ExchangeConfigError(f"{what}: {value!r} has more than 4 decimals")
    return int(units)


def _alpha(value: Any, what: str, width: int) -> str:
    if not isinstance(value, str) or not value or len(value) > width or not value.isascii() \
            or not value.isprintable() or value != value.strip():
        raise ExchangeConfigError(f"{what} must be 1..{width} printable ASCII characters without "
                                  f"surrounding spaces, not {value!r}")
    return value


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ExchangeConfigError(f"{what} must be a port number 0..65535, not {value!r}")
    return value


def _address(value: Any, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ExchangeConfigError(f"{what} must be an IP address, not {value!r}") from None
    return value


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86_400:
        raise ExchangeConfigError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class SymbolConfig:
    """A traded symbol: ``reference_price`` and ``tick_size`` in 1/10000 dollar."""

    symbol: str
    reference_price: int
    tick_size: int = 100
    round_lot_size: int = 100

    def __post_init__(self) -> None:
        _alpha(self.symbol, "symbol", 8)
        if self.symbol != self.symbol.upper():
            raise ExchangeConfigError(f"symbol must be upper case, not {self.symbol!r}")
        for name in ("reference_price", "tick_size", "round_lot_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ExchangeConfigError(f"symbol {self.symbol}: {name} must be a positive integer, not {v!r}")
        if self.reference_price > MAX_PRICE:
            raise ExchangeConfigError(f"symbol {self.symbol}: reference_price {self.reference_price} is above "
                                      f"the highest price {MAX_PRICE} (1/10000 dollar)")
        if self.reference_price % self.tick_size:
            raise ExchangeConfigError(f"symbol {self.symbol}: reference_price {self.reference_price} is not a "
                                      f"multiple of tick_size {self.tick_size}")


@dataclass(frozen=True)
class AccountConfig:
    """An OUCH account: SoupBinTCP username (<= 6) and password (<= 10); ``mpid`` attributes its
    display ``A`` orders on the feed (default: the first 4 characters of the username)."""

    username: str
    password: str
    mpid: str = ""

    def __post_init__(self) -> None:
        _alpha(self.username, "account username", 6)
        _alpha(self.password, f"account {self.username}: password", 10)
        if self.mpid:
            _alpha(self.mpid, f"account {self.username}: mpid", 4)


@dataclass(frozen=True)
class SeedConfig:
    """Resting liquidity placed at start: ``orders`` day orders 1..``levels`` ticks from the
    reference price on the passive side, 1..``max_lots`` round lots, from random ``seed``."""

    orders: int = 0
    seed: int = 1
    levels: int = 10
    max_lots: int = 5

    def __post_init__(self) -> None:
        for name, low in (("orders", 0), ("levels", 1), ("max_lots", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ExchangeConfigError(f"seed {name} must be an integer >= {low}, not {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ExchangeConfigError(f"seed seed must be an integer, not {self.seed!r}")


def _default_session(prefix: str) -> str:
    return prefix + time.strftime("%y%m%d", time.gmtime()) + "01"


@dataclass(frozen=True)
class ExchangeConfig:
    """Everything the exchange simulator needs; see docs/exchange.md for the TOML form."""

    symbols: tuple[SymbolConfig, ...]
    accounts: tuple[AccountConfig, ...]
    host: str = "127.0.0.1"
    order_port: int = 0
    session: str = field(default_factory=lambda: _default_session("TW"))
    heartbeat_interval: float = 1.0
    client_timeout: float = 15.0
    feed_address: str = "127.0.0.1"
    feed_port: int = 26400
    feed_session: str = field(default_factory=lambda: _default_session("TF"))
    retransmit_port: int = 0
    feed_max_payload: int = DEFAULT_MAX_PAYLOAD
    feed_ttl: int = 1
    feed_interface: str = ""
    seed: SeedConfig = SeedConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "accounts", tuple(self.accounts))
        if not self.symbols:
            raise ExchangeConfigError("the exchange needs at least one symbol")
        names = [s.symbol for s in self.symbols]
        if len(set(names)) != len(names):
            raise ExchangeConfigError(f"symbols listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        users = [a.username.upper() for a in self.accounts]
        if len(set(users)) != len(users):
            raise ExchangeConfigError(f"accounts listed twice (usernames ignore case): "
                                      f"{sorted({u for u in users if users.count(u) > 1})}")
        _address(self.host, "exchange host")
        _port(self.order_port, "exchange order_port")
        _alpha(self.session, "exchange session", 10)
        _seconds(self.heartbeat_interval, "exchange heartbeat_interval")
        _seconds(self.client_timeout, "exchange client_timeout")
        _address(self.feed_address, "feed address")
        _port(self.feed_port, "feed port")
        if self.feed_port == 0:
            raise ExchangeConfigError("feed port must be a destination port 1..65535, not 0")
        _alpha(self.feed_session, "feed session", 10)
        _port(self.retransmit_port, "feed retransmit_port")
        if isinstance(self.feed_max_payload, bool) or not isinstance(self.feed_max_payload, int) \
                or not 100 <= self.feed_max_payload <= 65_000:
            raise ExchangeConfigError(f"feed max_payload must be 100..65000 bytes, not {self.feed_max_payload!r}")
        if isinstance(self.feed_ttl, bool) or not isinstance(self.feed_ttl, int) or not 0 <= self.feed_ttl <= 255:
            raise ExchangeConfigError(f"feed ttl must be 0..255, not {self.feed_ttl!r}")
        if self.feed_interface:
            _address(self.feed_interface, "feed interface")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "configuration") -> "ExchangeConfig":
        """The configuration of a parsed TOML document (tables ``exchange``, ``feed``, ``seed``,
        arrays ``symbols`` and ``accounts``)."""
        def table(name: str, keys: set[str]) -> dict[str, Any]:
            t = data.get(name, {})
            if not isinstance(t, dict):
                raise ExchangeConfigError(f"{source}: [{name}] must be a table, not {t!r}")
            unknown = set(t) - keys
            if unknown:
                raise ExchangeConfigError(f"{source}: [{name}] has unknown keys {sorted(unknown)} "
                                          f"(known: {sorted(keys)})")
            return t

        def array(name: str, keys: set[str]) -> list[dict[str, Any]]:
            rows = data.get(name, [])
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ExchangeConfigError(f"{source}: {name} must be an array of tables ([[{name}]])")
            for k, row in enumerate(rows):
                unknown = set(row) - keys
                if unknown:
                    raise ExchangeConfigError(f"{source}: {name}[{k}] has unknown keys {sorted(unknown)} "
                                              f"(known: {sorted(keys)})")
            return rows

        unknown = set(data) - {"exchange", "feed", "seed", "symbols", "accounts"}
        if unknown:
            raise ExchangeConfigError(f"{source}: unknown tables {sorted(unknown)} "
                                      f"(known: exchange, feed, seed, symbols, accounts)")
        exchange = table("exchange", {"host", "order_port", "session", "heartbeat_interval", "client_timeout"})
        feed = table("feed", {"address", "port", "session", "retransmit_port", "max_payload", "ttl", "interface"})
        seed = table("seed", {"orders", "seed", "levels", "max_lots"})
        symbols = []
        for k, row in enumerate(array("symbols", {"symbol", "reference_price", "tick_size", "round_lot_size"})):
            if "symbol" not in row or "reference_price" not in row:
                raise ExchangeConfigError(f"{source}: symbols[{k}] needs symbol and reference_price")
            symbols.append(SymbolConfig(
                symbol=row["symbol"],
                reference_price=parse_price(row["reference_price"], f"{source}: symbols[{k}].reference_price"),
                tick_size=parse_price(row.get("tick_size", "0.01"), f"{source}: symbols[{k}].tick_size"),
                round_lot_size=row.get("round_lot_size", 100)))
        accounts = []
        for k, row in enumerate(array("accounts", {"username", "password", "mpid"})):
            if "username" not in row or "password" not in row:
                raise ExchangeConfigError(f"{source}: accounts[{k}] needs username and password")
            accounts.append(AccountConfig(row["username"], row["password"], row.get("mpid", "")))
        values: dict[str, Any] = {}
        for key in ("host", "order_port", "session", "heartbeat_interval", "client_timeout"):
            if key in exchange:
                values[key] = exchange[key]
        for key, name in (("address", "feed_address"), ("port", "feed_port"), ("session", "feed_session"),
                          ("retransmit_port", "retransmit_port"), ("max_payload", "feed_max_payload"),
                          ("ttl", "feed_ttl"), ("interface", "feed_interface")):
            if key in feed:
                values[name] = feed[key]
        try:
            return cls(symbols=tuple(symbols), accounts=tuple(accounts), seed=SeedConfig(**seed), **values)
        except ExchangeConfigError as e:
            raise ExchangeConfigError(f"{source}: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "ExchangeConfig":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ExchangeConfigError(f"exchange configuration {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ExchangeConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(data, str(path))


#: The built-in configuration of ``tickwire exchange`` without ``--config``.
DEFAULT_CONFIG = ExchangeConfig(
    symbols=(SymbolConfig("AAPL", 189_5000), SymbolConfig("MSFT", 420_0000), SymbolConfig("NVDA", 120_0000)),
    accounts=(AccountConfig("TWUSER", "TWPASS"),),
    order_port=15000,
    seed=SeedConfig(orders=200, seed=1),
)


# -- the exchange ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Owner:
    """Who an order belongs to, and the OUCH fields the engine does not keep."""
    username: str
    user_ref_num: int
    capacity: str
    intermarket_sweep_eligibility: str
    cross_type: str
    cl_ord_id: str


@dataclass
class _AccountState:
    config: AccountConfig
    last_user_ref_num: int = 0
    orders: dict[int, Order] = field(default_factory=dict)   # by UserRefNum


def _default_clock() -> int:
    return time.time_ns() % NANOSECONDS_PER_DAY


class Exchange:
    """The exchange simulator: matching engine, SoupBinTCP/OUCH order port, ITCH/MoldUDP64 feed.

    Use ``async with Exchange(config) as exchange:`` or ``await start()`` / ``await stop()``.
    After start: :attr:`order_port`, :attr:`retransmit_port`, :attr:`feed_destination`.
    ``clock`` gives nanoseconds since midnight for the OUCH and ITCH timestamps.
    """

    def __init__(self, config: ExchangeConfig, *, clock=_default_clock) -> None:
        self.config = config
        self.clock = clock
        self.engine = MatchingEngine({s.symbol: s.tick_size for s in config.symbols})
        self._accounts = {a.username.upper(): _AccountState(a) for a in config.accounts}
        self.server = SoupBinServer(
            accounts={a.username: a.password for a in config.accounts}, session=config.session,
            on_message=self._on_message, host=config.host, port=config.order_port,
            heartbeat_interval=config.heartbeat_interval, client_timeout=config.client_timeout)
        self.feed = MoldFeed(
            session=config.feed_session, destination=(config.feed_address, config.feed_port),
            retransmit_address=(config.host, config.retransmit_port), max_payload=config.feed_max_payload,
            heartbeat_interval=config.heartbeat_interval, multicast_ttl=config.feed_ttl,
            multicast_interface=config.feed_interface)
        self.itch = ItchEncoder([s.symbol for s in config.symbols], self._attribution)
        self.started = False
        self.stopped = False
        self.counters = {"orders": 0, "rejects": 0, "executions": 0, "cancels": 0, "replaces": 0,
                         "modifies": 0, "cancel_rejects": 0}

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self) -> "Exchange":
        if self.started:
            raise RuntimeError("the exchange is already started")
        self.started = True
        await self.feed.start()
        now = self.clock()
        self.feed.publish([self.itch.system_event("O", now)])
        self.feed.publish(self.itch.stock_directory(s.symbol, s.round_lot_size, now) for s in self.config.symbols)
        self.feed.publish([self.itch.system_event("S", now), self.itch.system_event("Q", now)])
        self._seed()
        self.feed.flush()
        for account in self._accounts.values():
            self.server.send(account.config.username, ouch.pack_message(
                ouch.OUTBOUND, "S", timestamp=now, event_code="S"))
        await self.server.start()
        logger.info("exchange up: orders on %s:%d (session %s), feed to %s:%d (session %s), "
                    "retransmission on %s:%d", self.config.host, self.order_port, self.config.session,
                    *self.feed_destination, self.config.feed_session, self.config.host, self.retransmit_port)
        return self

    async def end_session(self) -> None:
        """End of day: System Event E and End of Session to the order clients; M, E, C and the
        MoldUDP64 end-of-session packet on the feed. The exchange keeps its ports open."""
        if self.server.ended:
            return
        now = self.clock()
        for account in self._accounts.values():
            self.server.send(account.config.username, ouch.pack_message(
                ouch.OUTBOUND, "S", timestamp=now, event_code="E"))
        self.server.end_session()
        self.feed.publish([self.itch.system_event(c, now) for c in "MEC"])
        self.feed.end_session()

    async def stop(self) -> None:
        if self.stopped or not self.started:
            return
        self.stopped = True
        await self.end_session()
        await self.server.stop()
        await self.feed.stop()
        logger.info("exchange stopped: %s", self.counters)

    async def __aenter__(self) -> "Exchange":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def order_port(self) -> int:
        return self.server.port

    @property
    def order_address(self) -> tuple[str, int]:
        return self.config.host, self.server.port

    @property
    def retransmit_port(self) -> int:
        return self.feed.retransmit_port

    @property
    def feed_destination(self) -> tuple[str, int]:
        return self.config.feed_address, self.config.feed_port

    # -- seeded liquidity ----------------------------------------------------------------------
    def _seed(self) -> None:
        seed = self.config.seed
        rng = random.Random(seed.seed)
        for _ in range(seed.orders):
            s = rng.choice(self.config.symbols)
            side = rng.choice("BS")
            ticks = rng.randint(1, seed.levels)
            if side == "B":
                ticks = min(ticks, (s.reference_price - 1) // s.tick_size)
                if ticks < 1:
                    side, ticks = "S", 1
            price = s.reference_price + (-ticks if side == "B" else ticks) * s.tick_size
            quantity = rng.randint(1, seed.max_lots) * s.round_lot_size
            _, events = self.engine.enter(s.symbol, side, price, min(quantity, ouch.MAX_QUANTITY))
            self._publish(events, self.clock())

    # -- OUCH ----------------------------------------------------------------------------------
    def _attribution(self, order: Order) -> str:
        owner = order.owner
        if isinstance(owner, _Owner):
            config = self._accounts[owner.username.upper()].config
            return config.mpid or config.username[:4]
        return "TWSM"

    def _on_message(self, username: str, payload: bytes) -> None:
        try:
            message = ouch.unpack_inbound(payload)
        except ValueError as e:
            self.server.counters["malformed"] += 1
            logger.warning("OUCH from %s: %s (%s)", username, e, payload[:64].hex())
            self.server.debug(username, f"bad OUCH message: {e}")
            return
        account = self._accounts[username.upper()]
        now = self.clock()
        handler = {"O": self._enter, "U": self._replace, "X": self._cancel, "M": self._modify,
                   "Q": self._query}[message["message_type"]]
        try:
            handler(account, message, now)
        except Exception:   # a bug here must not take the session down
            logger.exception("OUCH %r from %s: internal error", message["message_type"], username)
            self.server.debug(username, "internal error in the exchange simulator")
        self.feed.flush()

    def _send(self, username: str, type_: str, **values: Any) -> None:
        self.server.send(username, ouch.pack_message(ouch.OUTBOUND, type_, **values))

    def _reject(self, account: _AccountState, user_ref_num: int, reason: RejectReason, why: str, now: int,
                cl_ord_id: str = "") -> None:
        self.counters["rejects"] += 1
        logger.info("OUCH %s: UserRefNum %d rejected (0x%04x %s): %s", account.config.username, user_ref_num,
                    reason, reason.name, why)
        self._send(account.config.username, "J", timestamp=now, user_ref_num=user_ref_num, reason=int(reason),
                   cl_ord_id=cl_ord_id)

    def _cancel_reject(self, account: _AccountState, user_ref_num: int, why: str, now: int) -> None:
        self.counters["cancel_rejects"] += 1
        logger.info("OUCH %s: cancel/modify of UserRefNum %d refused: %s", account.config.username,
                    user_ref_num, why)
        self._send(account.config.username, "I", timestamp=now, user_ref_num=user_ref_num)

    def _next_user_ref_num(self, account: _AccountState, user_ref_num: int) -> str | None:
        """None when ``user_ref_num`` may be used (and records it), else why not."""
        if user_ref_num <= account.last_user_ref_num:
            return (f"UserRefNum {user_ref_num} is not greater than the last one used, "
                    f"{account.last_user_ref_num}")
        account.last_user_ref_num = user_ref_num
        return None

    def _enter(self, account: _AccountState, m: dict, now: int) -> None:
        username = account.config.username
        urn, cl_ord_id = m["user_ref_num"], m["cl_ord_id"].rstrip(" ")
        why = self._next_user_ref_num(account, urn)
        if why is not None:
            return self._reject(account, urn, RejectReason.OTHER, why, now, cl_ord_id)
        if m["cross_type"] != "N":
            return self._reject(account, urn, RejectReason.INVALID_CROSS_ORDER,
                                f"cross type {m['cross_type']!r}: only 'N' (continuous) is supported", now, cl_ord_id)
        if m["capacity"] not in CAPACITIES:
            return self._reject(account, urn, RejectReason.OTHER, f"capacity {m['capacity']!r} is not A, P, R or O",
                                now, cl_ord_id)
        symbol = m["symbol"].rstrip(" ")
        owner = _Owner(username, urn, m["capacity"], m["intermarket_sweep_eligibility"], m["cross_type"], cl_ord_id)
        try:
            order, events = self.engine.enter(symbol, m["side"], m["price"], m["quantity"], m["time_in_force"],
                                              m["display"], owner)
        except OrderRejected as e:
            return self._reject(account, urn, e.reason, str(e), now, cl_ord_id)
        self.counters["orders"] += 1
        account.orders[urn] = order
        self._send(username, "A", timestamp=now, user_ref_num=urn, side=m["side"], quantity=m["quantity"],
                   symbol=symbol, price=m["price"], time_in_force=m["time_in_force"], display=m["display"],
                   order_reference_number=order.order_reference_number, capacity=m["capacity"],
                   intermarket_sweep_eligibility=m["intermarket_sweep_eligibility"], cross_type=m["cross_type"],
                   order_state="D" if m["time_in_force"] == "3" else "L", cl_ord_id=cl_ord_id)
        self._dispatch(events, now)

    def _replace(self, account: _AccountState, m: dict, now: int) -> None:
        username = account.config.username
        orig, urn, cl_ord_id = m["orig_user_ref_num"], m["user_ref_num"], m["cl_ord_id"].rstrip(" ")
        why = self._next_user_ref_num(account, urn)
        if why is not None:
            return self._reject(account, urn, RejectReason.OTHER, why, now, cl_ord_id)
        old = account.orders.get(orig)
        if old is None or not old.live:
            return self._reject(account, urn, RejectReason.REPLACE_NOT_ALLOWED,
                                f"original UserRefNum {orig} is not a live order", now, cl_ord_id)
        previous: _Owner = old.owner
        owner = replace(previous, user_ref_num=urn, cl_ord_id=cl_ord_id,
                        intermarket_sweep_eligibility=m["intermarket_sweep_eligibility"])
        try:
            new, events = self.engine.replace(old.order_reference_number, m["price"], m["quantity"],
                                              m["time_in_force"], m["display"], owner)
        except OrderRejected as e:
            return self._reject(account, urn, e.reason, str(e), now, cl_ord_id)
        self.counters["replaces"] += 1
        account.orders[urn] = new
        self._send(username, "U", timestamp=now, orig_user_ref_num=orig, user_ref_num=urn, side=new.side,
                   quantity=m["quantity"], symbol=new.symbol, price=new.price, time_in_force=new.time_in_force,
                   display=new.display, order_reference_number=new.order_reference_number,
                   capacity=owner.capacity, intermarket_sweep_eligibility=owner.intermarket_sweep_eligibility,
                   cross_type=owner.cross_type, order_state="D" if new.time_in_force == "3" else "L",
                   cl_ord_id=cl_ord_id)
        self._dispatch(events, now)

    def _cancel(self, account: _AccountState, m: dict, now: int) -> None:
        urn = m["user_ref_num"]
        order = account.orders.get(urn)
        if order is None or not order.live:
            return self._cancel_reject(account, urn, "not a live order", now)
        events = self.engine.cancel(order.order_reference_number, m["quantity"])
        if not events:
            logger.info("OUCH %s: cancel of UserRefNum %d to %d shares: it has %d open, nothing to do",
                        account.config.username, urn, m["quantity"], order.quantity)
        self.counters["cancels"] += 1
        self._dispatch(events, now)

    def _modify(self, account: _AccountState, m: dict, now: int) -> None:
        urn = m["user_ref_num"]
        order = account.orders.get(urn)
        if order is None or not order.live:
            return self._cancel_reject(account, urn, "not a live order", now)
        try:
            events = self.engine.modify(order.order_reference_number, m["side"], m["quantity"])
        except (OrderRejected, UnknownOrder) as e:
            return self._cancel_reject(account, urn, str(e), now)
        self.counters["modifies"] += 1
        if m["quantity"] == 0:
            self._dispatch(events, now)
            return
        self._publish(events, now)
        self._send(account.config.username, "M", timestamp=now, user_ref_num=urn, side=order.side,
                   quantity=order.quantity)

    def _query(self, account: _AccountState, m: dict, now: int) -> None:
        self._send(account.config.username, "Q", timestamp=now, next_user_ref_num=account.last_user_ref_num + 1)

    def _dispatch(self, events: list, now: int) -> None:
        """OUCH messages to the owners of the orders in ``events``, and the ITCH messages."""
        for event in events:
            if isinstance(event, Executed):
                self.counters["executions"] += 1
                for order, flag in ((event.resting, "A"), (event.incoming, "R")):
                    if isinstance(order.owner, _Owner):
                        self._send(order.owner.username, "E", timestamp=now, user_ref_num=order.owner.user_ref_num,
                                   quantity=event.quantity, price=event.price, liquidity_flag=flag,
                                   match_number=event.match_number)
            elif isinstance(event, IocCanceled) and isinstance(event.order.owner, _Owner):
                self._send(event.order.owner.username, "C", timestamp=now,
                           user_ref_num=event.order.owner.user_ref_num, quantity=event.quantity, reason=CANCEL_IOC)
            elif isinstance(event, (Reduced, Removed)) and event.quantity and isinstance(event.order.owner, _Owner):
                self._send(event.order.owner.username, "C", timestamp=now,
                           user_ref_num=event.order.owner.user_ref_num, quantity=event.quantity,
                           reason=event.reason or CANCEL_USER)
        self._publish(events, now)

    def _publish(self, events: list, now: int) -> None:
        for event in events:
            self.feed.publish(self.itch.encode(event, now))


# -- a thread for synchronous callers ------------------------------------------------------------

class ExchangeThread:
    """Runs an :class:`Exchange` on its own event loop in a background thread.

    ``start()`` returns once the ports are bound (or raises what the start raised); ``stop()``
    stops the exchange and joins the thread. Also a context manager. The ports are read through
    :attr:`exchange` (``order_port``, ``retransmit_port``) or the shortcuts below.
    """

    def __init__(self, config: ExchangeConfig, *, start_timeout: float = 10.0) -> None:
        self.exchange = Exchange(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.start_timeout = start_timeout

    @property
    def order_port(self) -> int:
        return self.exchange.order_port

    @property
    def retransmit_port(self) -> int:
        return self.exchange.retransmit_port

    def start(self) -> "ExchangeThread":
        self._thread = threading.Thread(target=self._run, name="tickwire-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            raise RuntimeError(f"the exchange did not start within {self.start_timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, function, *args: Any) -> Any:
        """Run ``function(*args)`` on the exchange's loop and return its result (for inspecting
        the engine, the streams or the feed from another thread without races)."""
        if self._loop is None:
            raise RuntimeError("the exchange thread is not running")
        async def run() -> Any:
            return function(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.start_timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(self.start_timeout)
            self._thread = None

    def __enter__(self) -> "ExchangeThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.exchange.start()
            except BaseException as e:
                self._error = e
                self._ready.set()
                await self.exchange.stop()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.exchange.stop()
        asyncio.run(main())


# -- command line --------------------------------------------------------------------------------

def _feed_destination(text: str) -> tuple[str, int]:
    import argparse
    match = re.fullmatch(r"\[?([0-9A-Fa-f.:]+?)\]?:(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected ADDRESS:PORT, not {text!r}")
    return match.group(1), int(match.group(2))


def add_commands(commands: Any, parents: list) -> None:
    """``tickwire exchange`` (registered by :mod:`tickwire.host.cli`)."""
    import sys
    parser = commands.add_parser(
        "exchange", parents=parents, help="run the exchange simulator (OUCH over SoupBinTCP, ITCH out)",
        description="Run a price-time matching exchange: OUCH 5.0 over SoupBinTCP 4.0 on a TCP port, "
                    "the book as ITCH 5.0 in MoldUDP64 over UDP, MoldUDP64 retransmission on a UDP "
                    "port. Prints the bound ports and runs until interrupted (SIGINT or SIGTERM). "
                    "See docs/exchange.md.")
    parser.add_argument("--config", metavar="TOML", type=Path, default=None,
                        help="exchange configuration (default: the built-in demo: AAPL, MSFT, NVDA, "
                             "account TWUSER/TWPASS, 200 seeded orders)")
    parser.add_argument("--host", metavar="ADDRESS", default=None,
                        help="address the order and retransmission ports bind (default: the file's, "
                             "else 127.0.0.1)")
    parser.add_argument("--port", metavar="PORT", type=int, default=None,
                        help="SoupBinTCP order port, 0 for any free port (default: the file's, else 15000 "
                             "for the built-in configuration, 0 for a file without one)")
    parser.add_argument("--feed", metavar="ADDRESS:PORT", type=_feed_destination, default=None,
                        help="where the MoldUDP64 datagrams go (default: the file's, else 127.0.0.1:26400)")
    parser.add_argument("--retransmit-port", metavar="PORT", type=int, default=None,
                        help="MoldUDP64 retransmission UDP port, 0 for any free port (default: the file's, else 0)")
    parser.add_argument("--seed-orders", metavar="N", type=int, default=None,
                        help="number of seeded resting orders (default: the file's, else 200 built in)")

    def run(args: Any) -> int:
        config = DEFAULT_CONFIG if args.config is None else ExchangeConfig.from_toml(args.config)
        changes: dict[str, Any] = {}
        if args.host is not None:
            changes["host"] = args.host
        if args.port is not None:
            changes["order_port"] = args.port
        if args.feed is not None:
            changes["feed_address"], changes["feed_port"] = args.feed
        if args.retransmit_port is not None:
            changes["retransmit_port"] = args.retransmit_port
        if args.seed_orders is not None:
            changes["seed"] = replace(config.seed, orders=args.seed_orders)
        config = replace(config, **changes)

        def say(text: str) -> None:
            print(f"tickwire: exchange: {text}", file=sys.stderr, flush=True)
        return asyncio.run(_serve(config, say))
    parser.set_defaults(handler=run)


async def _serve(config: ExchangeConfig, say) -> int:
    import signal
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exchange = Exchange(config)
    await exchange.start()
    say(f"orders: SoupBinTCP {config.host}:{exchange.order_port} session {config.session} "
        f"(accounts: {', '.join(a.username for a in config.accounts) or 'none'})")
    say(f"feed: MoldUDP64 to {config.feed_address}:{config.feed_port} session {config.feed_session}, "
        f"retransmission on {config.host}:{exchange.retransmit_port}")
    say(f"symbols: {', '.join(f'{s.symbol} {s.reference_price / 10_000:.4f}' for s in config.symbols)}; "
        f"{len(exchange.engine.orders)} seeded orders resting")
    try:
        await stop.wait()
    finally:
        await exchange.stop()
        say(f"stopped: {exchange.counters}")
    return 0
