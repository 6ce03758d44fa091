"""The appliance's configuration file: card, feeds, sessions, symbols, risk limits, trigger rules.

One TOML file describes the whole appliance::

    [card]
    driver = "sim"                    # sim | pcie | rdma | rawpacket | dpdk
    socket = "/run/tickwire-sim.sock" # every other key is an option of the driver
    # map = "registers.json"          # register map (default: the packaged one)

    [[feeds]]
    name = "nasdaq-itch"
    a = { interface = "eth1", group = "233.54.12.111", port = 26477 }
    b = { interface = "eth2", group = "233.49.196.111", port = 26477 }

    [[sessions]]
    name = "ouch1"
    host = "10.1.1.10"
    port = 20001
    username = "TWIR01"
    password_env = "TICKWIRE_OUCH1_PASSWORD"   # or password = "..."
    session = ""                      # SoupBinTCP session to join ("" = the current one)

    [symbols]
    tracked = ["AAPL", "MSFT"]
    filter = true

    [risk]
    kill = false
    max_order_quantity = 1000         # a per-slot register: the default of every tracked symbol
    max_order_notional = "250000.00"  # a decimal string is a price in currency units

    [risk.symbols.AAPL]
    max_order_quantity = 500

    [risk.sessions.ouch1]
    max_open_notional = "1000000"

    [[trigger.rules]]
    enable = true
    stock_locate = 13
    side = "B"
    price_limit = "183.25"
    quantity = 100

    [registers]                       # any other writable register, by "stage.name"
    "ouch.cl_ord_id_prefix" = "TWIR"

Risk and trigger keys are register names of the ``risk`` and ``trigger`` stages of the register
map, so the file follows the gateware: a plain register is written once; a register indexed by a
slot selector (``indexed_by`` in the map) takes ``[risk]`` as the default for every tracked
symbol's slot (slot k is ``tracked[k]``) and ``[risk.symbols.SYM]`` per symbol; one indexed by a
session selector takes ``[risk]`` as the default for every session and ``[risk.sessions.NAME]``
per session (the session number is its position in ``[[sessions]]`` unless it sets ``number``).
``kill = true`` in ``[risk.sessions.NAME]`` sets the session's bit of ``risk.kill_session``.
(The example's ``[risk.symbols.*]`` and ``[risk.sessions.*]`` tables need a map with per-slot and
per-session risk registers; with a map whose ``risk.max_order_quantity`` is one plain register,
they are refused with the line and key, and ``[risk]`` sets it.)

Values: integers (``true``/``false`` are 1/0); for registers whose name says price, notional or
collar, a string is a decimal amount with at most 4 decimals, stored in price units of 1/10000
(``"183.25"`` is 1832500); other strings are MAC addresses, IPv4 addresses or ASCII as in
:mod:`tickwire.host.config`.

Every error names the file, the line and the key (``config.toml:14: sessions[0].port: ...``).
:func:`plan` turns a config into the ordered register writes it implies; :func:`diff` compares
them with what the card holds and :func:`apply` writes the differing ones, all or nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .config import ConfigError, convert_string
from .errors import TickwireError
from .regmap import Register, RegisterMap, Registers, Transport

__all__ = [
    "ConfigError", "ApplyError", "KeyLocator", "AppConfig", "CardConfig", "FeedLine", "Feed",
    "Session", "TriggerRule", "Write", "Change", "load_config", "parse_config", "plan", "diff",
    "apply", "as_registers", "add_commands", "DRIVERS",
]

logger = logging.getLogger(__name__)

DRIVERS = ("sim", "pcie", "rdma", "rawpacket", "ethmgmt", "dpdk")
PRICE_SCALE = 10_000
_PRICE_NAME = re.compile(r"price|notional|collar")
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9 .\-]{0,7}\Z")
_TRACK_NAME = re.compile(r"track_name_(\d+)\Z")

Path_ = tuple[str | int, ...]


class ApplyError(TickwireError):
    """A register write of ``config apply`` failed; the message says what was restored."""


# -- locating keys in the source ------------------------------------------------------------------

class KeyLocator:
    """Line numbers of the keys and tables of a TOML text (``tomllib`` keeps none).

    A path is a tuple of keys and array-of-tables indices: ``("sessions", 1, "port")`` is the
    ``port`` key of the second ``[[sessions]]`` table, ``("risk", "symbols", "AAPL")`` the table
    ``[risk.symbols.AAPL]`` (or a dotted key ``symbols.AAPL`` under ``[risk]``). :meth:`line`
    returns the line of the longest known prefix of a path, so a key inside an inline table or an
    element of an array gives the line of the key that holds it.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path_, int] = {}
        self._arrays: dict[Path_, int] = {}
        self._scan(text)

    def line(self, path: Sequence[str | int]) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    # A small scanner: headers and keys at the start of statements; values are skipped with their
    # strings (all four kinds), arrays and inline tables, which may span lines.
    def _scan(self, text: str) -> None:
        i, n, line = 0, len(text), 1
        table: Path_ = ()
        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
                i += 1
            elif c in " \t\r":
                i += 1
            elif c == "#":
                while i < n and text[i] != "\n":
                    i += 1
            elif c == "[":
                array = text.startswith("[[", i)
                i += 2 if array else 1
                parts, i = self._key(text, i)
                i = text.find("\n", i) if text.find("\n", i) >= 0 else n
                table = self._header(parts, array, line)
            else:
                parts, i = self._key(text, i)
                if not parts:  # not a key: skip the line rather than loop
                    i = text.find("\n", i) if text.find("\n", i) >= 0 else n
                    continue
                path = table + tuple(parts)
                for k in range(len(table) + 1, len(path) + 1):
                    self.lines.setdefault(path[:k], line)
                while i < n and text[i] in " \t":
                    i += 1
                if i < n and text[i] == "=":
                    i, line = self._skip_value(text, i + 1, line)

    def _header(self, parts: list[str], array: bool, line: int) -> Path_:
        resolved: Path_ = ()
        for k, part in enumerate(parts):
            resolved += (part,)
            last = k == len(parts) - 1
            if last and array:
                count = self._arrays.get(resolved, 0)
                self._arrays[resolved] = count + 1
                self.lines.setdefault(resolved, line)
                resolved += (count,)
            elif resolved in self._arrays:
                resolved += (self._arrays[resolved] - 1,)
        self.lines.setdefault(resolved, line)
        return resolved

    @staticmethod
    def _key(text: str, i: int) -> tuple[list[str], int]:
        parts: list[str] = []
        n = len(text)
        while i < n:
            while i < n and text[i] in " \t":
                i += 1
            if i >= n:
                break
            c = text[i]
            if c in "\"'":
                end = i + 1
                while end < n and text[end] != c and text[end] != "\n":
                    end += 2 if c == '"' and text[end] == "\\" else 1
                raw = text[i + 1:end]
                if c == '"':
                    try:
                        raw = json.loads(f'"{raw}"')
                    except ValueError:
                        pass
                parts.append(raw)
                i = end + 1
            else:
                start = i
                while i < n and (text[i].isalnum() or text[i] in "_-"):
                    i += 1
                if i == start:
                    break
                parts.append(text[start:i])
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == ".":
                i += 1
                continue
            break
        return parts, i

    @staticmethod
    def _skip_value(text: str, i: int, line: int) -> tuple[int, int]:
        n, depth = len(text), 0
        while i < n:
            c = text[i]
            if c == "\n":
                if depth == 0:
                    return i, line
                line += 1
                i += 1
            elif c == "#":
                while i < n and text[i] != "\n":
                    i += 1
            elif c in "[{":
                depth += 1
                i += 1
            elif c in "]}":
                depth -= 1
                i += 1
            elif text.startswith('"""', i) or text.startswith("'''", i):
                quote = text[i:i + 3]
                end = i + 3
                while end < n and not text.startswith(quote, end):
                    end += 2 if quote == '"""' and text[end] == "\\" else 1
                line += text.count("\n", i, end)
                i = end + 3
                while i < n and text[i] == quote[0]:  # up to two quotes may end the string
                    i += 1
            elif c in "\"'":
                end = i + 1
                while end < n and text[end] != c and text[end] != "\n":
                    end += 2 if c == '"' and text[end] == "\\" else 1
                i = end + 1
            else:
                i += 1
        return i, line


def format_path(path: Sequence[str | int]) -> str:
    """``("sessions", 1, "port")`` as ``sessions[1].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            out += ("." if out else "") + (part if bare else json.dumps(part))
    return out


# -- the configuration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CardConfig:
    """``[card]``: the driver's name and options (passed to ``tickwire.drivers.open_driver``)."""

    driver: str
    options: Mapping[str, Any]
    map: Path | None = None

    def driver_config(self) -> dict[str, Any]:
        return {"driver": self.driver, **self.options}


@dataclass(frozen=True)
class FeedLine:
    interface: str
    group: ipaddress.IPv4Address
    port: int
    mac: int | None = None
    source: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class Feed:
    name: str
    a: FeedLine
    b: FeedLine | None


@dataclass(frozen=True)
class Session:
    name: str
    number: int
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    session: str = ""
    card: bool = False
    local_ip: ipaddress.IPv4Address | None = None
    local_port: int | None = None
    local_mac: int | None = None
    gateway_mac: int | None = None


@dataclass(frozen=True)
class TriggerRule:
    values: Mapping[str, int]


@dataclass(frozen=True)
class Write:
    """One register write a config implies; ``select`` is ``(selector register, index)`` for a
    register indexed by a table selector, written just before it. ``key`` is the config key."""

    register: str
    value: int
    key: str
    select: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        return self.register if self.select is None else f"{self.register}[{self.select[1]}]"


@dataclass(frozen=True)
class Change:
    """A write whose register holds something else on the card now."""

    write: Write
    current: int


@dataclass(frozen=True)
class AppConfig:
    """A validated configuration file. :attr:`writes` are the register writes it implies, in
    order (see :func:`plan`)."""

    source: str
    card: CardConfig
    feeds: tuple[Feed, ...]
    sessions: tuple[Session, ...]
    tracked: tuple[str, ...]
    symbol_filter: bool | None
    writes: tuple[Write, ...]
    data: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def session_number(self, name: str) -> int:
        for s in self.sessions:
            if s.name == name:
                return s.number
        raise ConfigError(f"config {self.source}: no session {name!r}")


class _Checker:
    """Reads values out of the parsed TOML, failing with file, line and key."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.locator = KeyLocator(text)

    def error(self, path: Sequence[str | int], message: str) -> ConfigError:
        line = self.locator.line(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        key = format_path(path)
        return ConfigError(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    def table(self, data: Mapping[str, Any], path: Path_, allowed: Iterable[str] | None = None,
              ) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.error(path, f"must be a table, not {_kind(data)}")
        if allowed is not None:
            allowed = tuple(allowed)
            for key in data:
                if key not in allowed:
                    raise self.error(path + (key,), f"unknown key (expected one of "
                                                    f"{', '.join(allowed)})")
        return data

    def get(self, data: Mapping[str, Any], path: Path_, key: str, kind: type | tuple[type, ...],
            *, required: bool = False, default: Any = None) -> Any:
        if key not in data:
            if required:
                raise self.error(path + (key,), "missing (required)")
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if bool not in kinds and isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(_kind_name(k) for k in kinds)
            raise self.error(path + (key,), f"must be {names}, not {_kind(value)} {value!r}")
        return value

    def port(self, data: Mapping[str, Any], path: Path_, key: str, *, required: bool = True,
             ) -> int | None:
        value = self.get(data, path, key, int, required=required)
        if value is not None and not 1 <= value <= 65535:
            raise self.error(path + (key,), f"port {value} is not in 1..65535")
        return value

    def ipv4(self, data: Mapping[str, Any], path: Path_, key: str, *, required: bool = True,
             multicast: bool = False) -> ipaddress.IPv4Address | None:
        value = self.get(data, path, key, str, required=required)
        if value is None:
            return None
        try:
            address = ipaddress.IPv4Address(value)
        except ipaddress.AddressValueError:
            raise self.error(path + (key,), f"{value!r} is not an IPv4 address") from None
        if multicast and not address.is_multicast:
            raise self.error(path + (key,), f"{value} is not a multicast group (224.0.0.0/4)")
        return address

    def mac(self, data: Mapping[str, Any], path: Path_, key: str) -> int | None:
        value = self.get(data, path, key, str)
        if value is None:
            return None
        if not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value):
            raise self.error(path + (key,), f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        return int(value.replace(":", ""), 16)


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", list: "an array",
            dict: "a table", float: "a number"}.get(kind, kind.__name__)


def load_config(path: str | os.PathLike[str], regmap: RegisterMap | None = None, *,
                environ: Mapping[str, str] | None = None) -> AppConfig:
    """Read and validate the config file at ``path``; ``regmap`` defaults to ``[card] map`` or
    the packaged map. Passwords named by ``password_env`` come from ``environ`` (default:
    ``os.environ``)."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config {source} not found") from None
    except OSError as e:
        raise ConfigError(f"config {source} cannot be read: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {source} is not UTF-8: {e}") from None
    return parse_config(text, source=source, regmap=regmap, environ=environ,
                        base=Path(path).parent)


def parse_config(text: str, *, source: str = "<config>", regmap: RegisterMap | None = None,
                 environ: Mapping[str, str] | None = None, base: Path | None = None) -> AppConfig:
    """Validate the config in ``text`` (see :func:`load_config`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    c = _Checker(source, text)
    environ = os.environ if environ is None else environ
    c.table(data, (), ("card", "feeds", "sessions", "symbols", "risk", "trigger", "registers"))

    card = _card(c, data, base)
    if regmap is None:
        try:
            regmap = RegisterMap.load(card.map)
        except TickwireError as e:
            raise c.error(("card", "map"), str(e)) from None
    feeds = _feeds(c, data)
    sessions = _sessions(c, data, environ)
    tracked, symbol_filter = _symbols(c, data, regmap)
    config = AppConfig(source=source, card=card, feeds=feeds, sessions=sessions, tracked=tracked,
                       symbol_filter=symbol_filter, writes=(), data=data)
    writes = plan(config, regmap, _checker=c)
    return replace(config, writes=tuple(writes))


def _card(c: _Checker, data: Mapping[str, Any], base: Path | None) -> CardConfig:
    if "card" not in data:
        raise c.error(("card",), "missing: the file needs a [card] table with a driver")
    table = c.table(data["card"], ("card",))
    driver = c.get(table, ("card",), "driver", str, required=True)
    if driver not in DRIVERS:
        raise c.error(("card", "driver"), f"{driver!r} is not a driver (one of "
                                          f"{', '.join(DRIVERS)})")
    map_path = c.get(table, ("card",), "map", str)
    options = {k: v for k, v in table.items() if k not in ("driver", "map")}
    for key, value in options.items():
        if isinstance(value, (dict, list)) and not all(
                isinstance(v, (str, int, float, bool)) for v in
                (value.values() if isinstance(value, dict) else value)):
            raise c.error(("card", key), "driver options must be scalars or flat arrays/tables")
    resolved = None
    if map_path is not None:
        resolved = Path(map_path)
        if base is not None and not resolved.is_absolute():
            resolved = base / resolved
    return CardConfig(driver=driver, options=options, map=resolved)


def _feed_line(c: _Checker, table: Any, path: Path_) -> FeedLine:
    table = c.table(table, path, ("interface", "group", "port", "mac", "source"))
    return FeedLine(interface=c.get(table, path, "interface", str, required=True),
                    group=c.ipv4(table, path, "group", multicast=True),
                    port=c.port(table, path, "port"),
                    mac=c.mac(table, path, "mac"),
                    source=c.ipv4(table, path, "source", required=False))


def _feeds(c: _Checker, data: Mapping[str, Any]) -> tuple[Feed, ...]:
    feeds = c.get(data, (), "feeds", list, default=[])
    out = []
    names = set()
    for k, entry in enumerate(feeds):
        path: Path_ = ("feeds", k)
        entry = c.table(entry, path, ("name", "a", "b"))
        name = c.get(entry, path, "name", str, default=f"feed{k}")
        if name in names:
            raise c.error(path + ("name",), f"feed {name!r} is named twice")
        names.add(name)
        if "a" not in entry:
            raise c.error(path + ("a",), "missing: a feed needs line a (and may have line b)")
        a = _feed_line(c, entry["a"], path + ("a",))
        b = _feed_line(c, entry["b"], path + ("b",)) if "b" in entry else None
        out.append(Feed(name, a, b))
    return tuple(out)


_SESSION_KEYS = ("name", "number", "host", "port", "username", "password", "password_env",
                 "session", "card", "local_ip", "local_port", "local_mac", "gateway_mac")


def _sessions(c: _Checker, data: Mapping[str, Any], environ: Mapping[str, str],
              ) -> tuple[Session, ...]:
    entries = c.get(data, (), "sessions", list, default=[])
    out: list[Session] = []
    for k, entry in enumerate(entries):
        path: Path_ = ("sessions", k)
        entry = c.table(entry, path, _SESSION_KEYS)
        name = c.get(entry, path, "name", str, required=True)
        if any(s.name == name for s in out):
            raise c.error(path + ("name",), f"session {name!r} is named twice")
        number = c.get(entry, path, "number", int, default=k)
        if not 0 <= number < 0xFFFF:
            raise c.error(path + ("number",), f"session number {number} is not in 0..65534")
        if any(s.number == number for s in out):
            raise c.error(path + ("number",), f"session number {number} is used twice")
        if ("password" in entry) == ("password_env" in entry):
            raise c.error(path + ("password",), "give exactly one of password and password_env")
        if "password" in entry:
            password = c.get(entry, path, "password", str)
        else:
            variable = c.get(entry, path, "password_env", str)
            if variable not in environ:
                raise c.error(path + ("password_env",), f"environment variable {variable} is "
                                                        f"not set")
            password = environ[variable]
        soup_session = c.get(entry, path, "session", str, default="")
        if len(soup_session) > 10 or not soup_session.isascii():
            raise c.error(path + ("session",), f"{soup_session!r}: a SoupBinTCP session is up "
                                               f"to 10 ASCII characters")
        username = c.get(entry, path, "username", str, required=True)
        if len(username) > 6 or not username.isascii():
            raise c.error(path + ("username",), f"{username!r}: a SoupBinTCP username is up to "
                                                f"6 ASCII characters")
        host = c.get(entry, path, "host", str, required=True)
        out.append(Session(
            name=name, number=number, host=host, port=c.port(entry, path, "port"),
            username=username, password=password, session=soup_session,
            card=c.get(entry, path, "card", bool, default=False),
            local_ip=c.ipv4(entry, path, "local_ip", required=False),
            local_port=c.port(entry, path, "local_port", required=False),
            local_mac=c.mac(entry, path, "local_mac"), gateway_mac=c.mac(entry, path,
                                                                           "gateway_mac")))
    if sum(s.card for s in out) > 1:
        second = [k for k, s in enumerate(out) if s.card][1]
        raise c.error(("sessions", second, "card"), "only one session can be the card's")
    return tuple(out)


def _symbols(c: _Checker, data: Mapping[str, Any], regmap: RegisterMap,
             ) -> tuple[tuple[str, ...], bool | None]:
    if "symbols" not in data:
        return (), None
    table = c.table(data["symbols"], ("symbols",), ("tracked", "filter"))
    tracked = c.get(table, ("symbols",), "tracked", list, default=[])
    names = _track_name_registers(regmap)
    for k, symbol in enumerate(tracked):
        path: Path_ = ("symbols", "tracked", k)
        if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
            raise c.error(path, f"{symbol!r} is not a stock symbol (1 to 8 upper-case letters, "
                                f"digits, '.', '-' or spaces)")
        if symbol in tracked[:k]:
            raise c.error(path, f"{symbol} is tracked twice")
    if len(tracked) > len(names):
        raise c.error(("symbols", "tracked"), f"{len(tracked)} symbols, but the card tracks at "
                                              f"most {len(names)} by name")
    return tuple(tracked), c.get(table, ("symbols",), "filter", bool)


def _track_name_registers(regmap: RegisterMap) -> list[Register]:
    found = []
    for register in regmap.stage("symbols") if "symbols" in regmap.stages() else ():
        m = _TRACK_NAME.match(register.name)
        if m and register.writable:
            found.append((int(m.group(1)), register))
    return [r for _, r in sorted(found)]


def symbol_value(symbol: str) -> int:
    """A stock symbol as ``symbols.track_name_k`` holds it: ASCII, first character in bits 7:0,
    padded with spaces to 8 characters."""
    return int.from_bytes(symbol.ljust(8).encode("ascii"), "little")


# -- register writes ------------------------------------------------------------------------------

def plan(config: AppConfig, regmap: RegisterMap, *, _checker: _Checker | None = None,
         ) -> list[Write]:
    """The register writes ``config`` implies, in the order they are to be written: feeds,
    order session, symbols, risk (plain registers, then per slot, then per session), trigger
    rules, then the ``[registers]`` table. A register set by two keys is an error."""
    c = _checker or _Checker(config.source, "")
    data = config.data
    writes: list[Write] = []
    owner: dict[tuple[str, int | None], str] = {}

    def add(register: str, value: int, path: Path_, select: tuple[str, int] | None = None,
            ) -> None:
        reg = regmap.get(register)
        if reg is None:
            raise c.error(path, f"the register map has no register {register} "
                                f"({regmap.source})")
        if not reg.writable:
            raise c.error(path, f"register {register} is read-only")
        try:
            value = reg.check_value(value)
        except TickwireError as e:
            raise c.error(path, str(e)) from None
        key = (register, None if select is None else select[1])
        where = format_path(path)
        if key in owner:
            raise c.error(path, f"sets {register}{'' if select is None else f'[{select[1]}]'}, "
                                f"which {owner[key]} sets already")
        owner[key] = where
        writes.append(Write(register, value, where, select))

    # Feeds: the card receives one feed on lines A (net_rx) and B (net_rx_b).
    if len(config.feeds) > 1:
        raise c.error(("feeds", 1), "the card receives one feed (lines a and b); this is a "
                                    "second one")
    for feed_index, feed in enumerate(config.feeds):
        for line_name, line, stage in (("a", feed.a, "net_rx"), ("b", feed.b, "net_rx_b")):
            if line is None:
                continue
            path: Path_ = ("feeds", feed_index, line_name)
            add(f"{stage}.multicast_group", int(line.group), path + ("group",))
            add(f"{stage}.udp_port", line.port, path + ("port",))
            if line.mac is not None:
                add(f"{stage}.mac_address", line.mac, path + ("mac",))

    # The session the card sends orders on: the one marked card = true, or the only one.
    card_sessions = [s for s in config.sessions if s.card] or (
        list(config.sessions) if len(config.sessions) == 1 else [])
    for session in card_sessions:
        k = config.sessions.index(session)
        path = ("sessions", k)
        try:
            host = ipaddress.IPv4Address(session.host)
        except ipaddress.AddressValueError:
            raise c.error(path + ("host",), f"{session.host!r}: the card's session needs an IPv4 "
                                            f"address (the card has no resolver)") from None
        add("net_tx.dst_ip", int(host), path + ("host",))
        add("net_tx.dst_port", session.port, path + ("port",))
        for key, register, value in (("local_ip", "net_tx.src_ip", session.local_ip),
                                     ("local_port", "net_tx.src_port", session.local_port),
                                     ("local_mac", "net_tx.src_mac", session.local_mac),
                                     ("gateway_mac", "net_tx.dst_mac", session.gateway_mac)):
            if value is not None:
                add(register, int(value), path + (key,))

    # Symbols tracked by name, unused slots cleared.
    if "symbols" in data:
        if config.symbol_filter is not None:
            add("symbols.filter_enable", int(config.symbol_filter), ("symbols", "filter"))
        if "tracked" in data["symbols"]:
            for k, register in enumerate(_track_name_registers(regmap)):
                value = symbol_value(config.tracked[k]) if k < len(config.tracked) else 0
                add(register.qualified_name, value, ("symbols", "tracked", k))

    _plan_risk(c, config, regmap, add)
    _plan_trigger(c, config, regmap, add)

    # Anything else, by register name.
    if "registers" in data:
        table = c.table(data["registers"], ("registers",))
        for name, value in table.items():
            path = ("registers", name)
            register = regmap.get(name)
            if register is None:
                raise c.error(path, f"no register {name!r} in the register map "
                                    f"({regmap.source})")
            if register.indexed_by:
                raise c.error(path, f"{name} is indexed by {register.indexed_by}; set it in "
                                    f"[risk.symbols.*] or [risk.sessions.*]")
            add(name, _register_value(c, path, register, value), path)
    return writes


def _register_value(c: _Checker, path: Path_, register: Register, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value < 0:
            raise c.error(path, f"{value} is negative; registers are unsigned")
        return value
    if isinstance(value, str):
        if _PRICE_NAME.search(register.name):
            return _price(c, path, value)
        try:
            return convert_string(value)
        except ValueError as e:
            raise c.error(path, str(e)) from None
    raise c.error(path, f"must be an integer or a string, not {_kind(value)} {value!r}")


def _price(c: _Checker, path: Path_, text: str) -> int:
    try:
        amount = Decimal(text.replace("_", ""))
    except InvalidOperation:
        raise c.error(path, f"{text!r} is not a decimal amount") from None
    units = amount * PRICE_SCALE
    if not amount.is_finite() or units != units.to_integral_value():
        raise c.error(path, f"{text!r} has more than 4 decimals (prices are in 1/10000)")
    if units < 0:
        raise c.error(path, f"{text!r} is negative")
    return int(units)


def _plan_risk(c: _Checker, config: AppConfig, regmap: RegisterMap, add: Any) -> None:
    data = config.data
    if "risk" not in data:
        return
    risk = c.table(data["risk"], ("risk",))
    stage = {r.name: r for r in regmap.stage("risk")} if "risk" in regmap.stages() else {}
    slot_of = {symbol: k for k, symbol in enumerate(config.tracked)}
    session_of = {s.name: s.number for s in config.sessions}

    def register_for(path: Path_, key: str) -> Register:
        register = stage.get(key)
        if register is None or not register.writable:
            known = ", ".join(sorted(r.name for r in stage.values() if r.writable))
            raise c.error(path, f"not a writable register of stage risk in the register map "
                                f"(writable: {known})")
        return register

    def selector_kind(register: Register) -> str | None:
        if not register.indexed_by:
            return None
        return "session" if "session" in register.indexed_by else "slot"

    defaults = {k: v for k, v in risk.items() if k not in ("symbols", "sessions")}
    per_slot: dict[int, dict[str, tuple[Any, Path_]]] = {}
    per_session: dict[int, dict[str, tuple[Any, Path_]]] = {}
    session_kills: dict[int, tuple[bool, Path_]] = {}
    for key, value in defaults.items():
        path: Path_ = ("risk", key)
        register = register_for(path, key)
        kind = selector_kind(register)
        if kind is None:
            add(register.qualified_name, _register_value(c, path, register, value), path)
        elif kind == "slot":
            for slot in slot_of.values():
                per_slot.setdefault(slot, {})[key] = (value, path)
        else:
            for number in session_of.values():
                per_session.setdefault(number, {})[key] = (value, path)

    for symbol, limits in c.table(risk.get("symbols", {}), ("risk", "symbols")).items():
        base: Path_ = ("risk", "symbols", symbol)
        if symbol not in slot_of:
            raise c.error(base, f"{symbol} is not in [symbols] tracked: limits are kept per "
                                f"tracked symbol's slot")
        for key, value in c.table(limits, base).items():
            register = register_for(base + (key,), key)
            if selector_kind(register) != "slot":
                raise c.error(base + (key,), f"risk.{key} is not a per-symbol register (set it "
                                             f"in [risk])")
            per_slot.setdefault(slot_of[symbol], {})[key] = (value, base + (key,))

    for name, limits in c.table(risk.get("sessions", {}), ("risk", "sessions")).items():
        base = ("risk", "sessions", name)
        if name not in session_of:
            raise c.error(base, f"no session {name!r} in [[sessions]]")
        for key, value in c.table(limits, base).items():
            if key == "kill":
                if not isinstance(value, bool):
                    raise c.error(base + (key,), f"must be a boolean, not {_kind(value)}")
                session_kills[session_of[name]] = (value, base + (key,))
                continue
            register = register_for(base + (key,), key)
            if selector_kind(register) != "session":
                raise c.error(base + (key,), f"risk.{key} is not a per-session register")
            per_session.setdefault(session_of[name], {})[key] = (value, base + (key,))

    for table in (per_slot, per_session):
        for index in sorted(table):
            for key, (value, path) in table[index].items():
                register = stage[key]
                add(register.qualified_name, _register_value(c, path, register, value), path,
                    (register.indexed_by, index))
    if session_kills:
        path = next(iter(session_kills.values()))[1]
        register = stage.get("kill_session")
        if register is None:
            raise c.error(path, "the register map has no risk.kill_session: the card cannot "
                                "kill one session")
        mask = sum(1 << number for number, (kill, _) in session_kills.items() if kill)
        if mask > register.max_value:
            raise c.error(path, f"session numbers above {register.width - 1} cannot be killed "
                                f"on the card")
        add(register.qualified_name, mask, path)


def _plan_trigger(c: _Checker, config: AppConfig, regmap: RegisterMap, add: Any) -> None:
    data = config.data
    if "trigger" not in data:
        return
    trigger = c.table(data["trigger"], ("trigger",), ("rules",))
    rules = c.get(trigger, ("trigger",), "rules", list, default=[])
    stage = {r.name: r for r in regmap.stage("trigger")} if "trigger" in regmap.stages() else {}
    indexed = any(r.indexed_by for r in stage.values() if r.writable)
    if len(rules) > 1 and not indexed:
        raise c.error(("trigger", "rules", 1), "the card has one trigger rule; this is a "
                                                "second one")
    for k, rule in enumerate(rules):
        base: Path_ = ("trigger", "rules", k)
        rule = c.table(rule, base)
        for key, value in rule.items():
            path = base + (key,)
            register = stage.get(key)
            if register is None or not register.writable:
                known = ", ".join(sorted(r.name for r in stage.values() if r.writable))
                raise c.error(path, f"not a writable register of stage trigger (writable: "
                                    f"{known})")
            if key == "side" and value not in ("B", "S"):
                raise c.error(path, f"side must be 'B' or 'S', not {value!r}")
            select = (register.indexed_by, k) if register.indexed_by else None
            add(register.qualified_name, _register_value(c, path, register, value), path,
                select)


# -- card access ----------------------------------------------------------------------------------

def as_registers(card: Any, regmap: RegisterMap) -> Registers:
    """``card`` as :class:`Registers`: a ``Registers``, an object with a ``registers`` attribute
    that is one (the card API), or a word :class:`Transport` (a driver)."""
    if isinstance(card, Registers):
        return card
    inner = getattr(card, "registers", None)
    if isinstance(inner, Registers):
        return inner
    if isinstance(card, Transport):
        return Registers(regmap, card)
    raise TypeError(f"{card!r} offers neither named registers nor read/write of words")


def _read(regs: Registers, write: Write) -> int:
    if write.select is not None:
        regs.write(*write.select)
    return regs.read(write.register)


def _write(regs: Registers, write: Write, value: int) -> None:
    if write.select is not None:
        regs.write(*write.select)
    regs.write(write.register, value)


def diff(writes: Iterable[Write], card: Any, regmap: RegisterMap) -> list[Change]:
    """The writes whose register holds another value on the card now (read back; a register
    indexed by a selector is read after writing its selector)."""
    regs = as_registers(card, regmap)
    changes = []
    for write in writes:
        try:
            current = _read(regs, write)
        except (TickwireError, OSError) as e:
            raise ApplyError(f"reading {write.name} failed: {e}") from None
        if current != write.value:
            changes.append(Change(write, current))
    return changes


def apply(writes: Iterable[Write], card: Any, regmap: RegisterMap, *, journal: Any = None,
          verify: bool = True) -> list[Change]:
    """Write the registers that differ (:func:`diff`), in order; with ``verify`` read each back.

    All or nothing: if a write (or its read-back) fails, the registers written so far, including
    the failed one, get their old values back, in reverse order, and :class:`ApplyError` says
    which write failed and whether the restore worked. With a ``journal``
    (:class:`tickwire.host.journal.Journal`) every write that stays is recorded as a
    CONFIG_CHANGE. Returns the changes made.
    """
    regs = as_registers(card, regmap)
    changes = diff(writes, regs, regmap)
    done: list[Change] = []
    try:
        for change in changes:
            done.append(change)  # before writing: a failed write may have written some words
            _write(regs, change.write, change.write.value)
            if verify:
                back = _read(regs, change.write)
                if back != change.write.value:
                    raise ApplyError(f"{change.write.name} reads back 0x{back:x} after writing "
                                     f"0x{change.write.value:x}")
    except Exception as e:
        failed = done[-1].write.name
        problems = []
        for change in reversed(done):
            try:
                _write(regs, change.write, change.current)
            except Exception as restore_error:  # keep restoring the others
                try:  # the failed write itself may have changed nothing
                    if _read(regs, change.write) == change.current:
                        continue
                except Exception:
                    pass
                problems.append(f"{change.write.name} ({restore_error})")
        if problems:
            raise ApplyError(
                f"writing {failed} failed: {e}; restoring the old values failed too for "
                f"{', '.join(problems)}: the card is PARTLY CONFIGURED, check it") from e
        raise ApplyError(f"writing {failed} failed: {e}; the {len(done)} register(s) written "
                         f"were restored, the card is as it was") from e
    if journal is not None:
        from .journal import RecordType
        for change in changes:
            journal.write(RecordType.CONFIG_CHANGE, address=regmap[change.write.register].address,
                          old_value=change.current, new_value=change.write.value,
                          register=change.write.name)
    for change in changes:
        logger.info("wrote %s = 0x%x (was 0x%x) for %s", change.write.name, change.write.value,
                    change.current, change.write.key)
    return changes


# -- command line ---------------------------------------------------------------------------------

def add_commands(commands: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``config check|diff|apply`` to the ``tickwire`` subcommands."""
    config = commands.add_parser("config", parents=list(parents),
                                 help="check a config file, diff it against the card, apply it",
                                 description="Validate the appliance config file and show or "
                                             "apply the register writes it implies.")
    sub = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    for name, help_text, handler in (
            ("check", "validate the file and list the register writes it implies", _cmd_check),
            ("diff", "list the register writes that differ from the card", _cmd_diff),
            ("apply", "write the registers that differ, all or nothing", _cmd_apply)):
        command = sub.add_parser(name, parents=list(parents), help=help_text,
                                 description=help_text[0].upper() + help_text[1:] + ".")
        command.add_argument("--config", metavar="FILE", type=Path, required=True,
                             help="the appliance config file (TOML)")
        command.add_argument("--map", metavar="FILE", type=Path, default=None,
                             help="register map JSON (default: [card] map, else the packaged "
                                  "tickwire/host/registers.json)")
        command.add_argument("--json", action="store_true",
                             help="print JSON instead of a table (default: table)")
        if name != "check":
            command.add_argument("--card", metavar="DRIVER", choices=DRIVERS, default=None,
                                 help="driver to reach the card, overriding [card] driver "
                                      "(default: the file's)")
        command.set_defaults(handler=handler)


def _load(args: argparse.Namespace) -> tuple[AppConfig, RegisterMap]:
    regmap = RegisterMap.load(args.map) if args.map is not None else None
    config = load_config(args.config, regmap)
    if regmap is None:
        regmap = RegisterMap.load(config.card.map)
    return config, regmap


def _open_card(config: AppConfig, driver: str | None) -> Any:
    try:
        from tickwire.drivers import open_driver
    except ImportError:
        raise ConfigError("diff and apply need a card, but this installation has no "
                          "tickwire.drivers.open_driver; `config check` shows the writes "
                          "without one") from None
    card = config.card if driver is None else replace(config.card, driver=driver)
    return open_driver(card.driver_config())


def _print_writes(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool,
                  title: str) -> None:
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(title)
    if not rows:
        return
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)).rstrip())


def _cmd_check(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    rows = [{"register": w.name, "value": f"0x{w.value:x}", "key": w.key} for w in config.writes]
    _print_writes(rows, ("register", "value", "key"), args.json,
                  f"{config.source}: ok: driver {config.card.driver}, {len(config.feeds)} "
                  f"feed(s), {len(config.sessions)} session(s), {len(config.tracked)} tracked "
                  f"symbol(s), {len(config.writes)} register write(s)")
    return 0


def _close(card: Any) -> None:
    close = getattr(card, "close", None)
    if callable(close):
        close()


def _cmd_diff(args: argparse.Namespace) -> int:
    config, regmap = _load(args)
    card = _open_card(config, args.card)
    try:
        changes = diff(config.writes, card, regmap)
    finally:
        _close(card)
    rows = [{"register": ch.write.name, "card": f"0x{ch.current:x}",
             "config": f"0x{ch.write.value:x}", "key": ch.write.key} for ch in changes]
    _print_writes(rows, ("register", "card", "config", "key"), args.json,
                  f"{len(changes)} of {len(config.writes)} register(s) differ")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    config, regmap = _load(args)
    card = _open_card(config, args.card)
    try:
        changes = apply(config.writes, card, regmap)
    finally:
        _close(card)
    rows = [{"register": ch.write.name, "old": f"0x{ch.current:x}",
             "new": f"0x{ch.write.value:x}", "key": ch.write.key} for ch in changes]
    _print_writes(rows, ("register", "old", "new", "key"), args.json,
                  f"{len(changes)} register(s) written")
    return 0
