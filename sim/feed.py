"""Deterministic synthetic NASDAQ TotalView-ITCH 5.0 feed, in MoldUDP64 datagrams over UDP/IPv4."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from tickwire.protocols import itch, moldudp64
from tickwire.protocols.net import (
    ETHERNET, ETHERTYPE_IPV4, IP_PROTOCOL_UDP, IPV4, IPV4_FLAG_DONT_FRAGMENT, IPV4_HEADER_LENGTH,
    IPV4_VERSION_IHL, MIN_FRAME_LENGTH, UDP, UDP_HEADER_LENGTH, int_to_ip, int_to_mac, ip_to_int,
    ipv4_checksum, mac_to_int, multicast_mac,
)

__all__ = [
    "DEFAULT_SYMBOLS", "REFERENCE_PRICES", "MARKET_OPEN_NS", "DEFAULT_SESSION", "DEFAULT_MAX_PAYLOAD",
    "generate_messages", "iter_messages", "symbol_table", "OPENING_EVENTS", "CLOSING_EVENTS",
    "datagrams", "iter_datagrams", "iter_feed_frames", "udp_frame", "frames", "feed_frames", "build_feed",
    # address and checksum helpers, defined in tickwire.protocols.net
    "mac_to_int", "int_to_mac", "ip_to_int", "int_to_ip", "ipv4_checksum", "multicast_mac",
]

logger = logging.getLogger(__name__)

DEFAULT_SYMBOLS: dict[str, int] = {"AAPL": 1, "MSFT": 2, "NVDA": 3}
#: Opening mid prices (price(4): 1/10000 dollar) of the default symbols; others get a random one.
REFERENCE_PRICES: dict[str, int] = {"AAPL": 190_0000, "MSFT": 415_0000, "NVDA": 880_0000}
#: 09:30:00.000000000 in nanoseconds since midnight.
MARKET_OPEN_NS = (9 * 3600 + 30 * 60) * 1_000_000_000
TICK = 100  # $0.01 in price(4) units
DEFAULT_SESSION = "TICKWIRE01"
#: Largest MoldUDP64 payload ``datagrams`` builds by default (fits a 1500-byte MTU).
DEFAULT_MAX_PAYLOAD = 1400

#: Relative frequencies of the message types of the random walk once orders are live.
_WEIGHTS: dict[str, int] = {"A": 30, "F": 8, "E": 10, "C": 3, "X": 8, "D": 12, "U": 10,
                            "H": 2, "P": 4, "I": 3, "Q": 1}


@dataclass
class _Order:
    stock_locate: int
    stock: str
    side: str
    shares: int
    price: int


class _LiveOrders:
    """The live orders by reference number, indexable in ascending reference order.

    Reference numbers are handed out in increasing order, so the ``i``-th order ever added has
    slot ``i`` and the live references in slot order are sorted. A Fenwick tree over the slots
    (1 = live) finds the ``k``-th live one in O(log n): ``rng.choice(live.refs)`` picks what
    ``rng.choice(sorted(live))`` would, without sorting."""

    def __init__(self) -> None:
        self.orders: dict[int, _Order] = {}
        self._slot: dict[int, int] = {}
        self._refs: list[int] = []   # by slot
        self._tree = [0]             # Fenwick tree, 1-based; len - 1 is a power of two
        self.refs = _SortedRefs(self)

    def __len__(self) -> int:
        return len(self.orders)

    def __getitem__(self, ref: int) -> _Order:
        return self.orders[ref]

    def _add(self, slot: int, delta: int) -> None:
        tree, i = self._tree, slot + 1
        while i < len(tree):
            tree[i] += delta
            i += i & -i

    def __setitem__(self, ref: int, order: _Order) -> None:
        if self._refs and ref <= self._refs[-1]:
            raise ValueError(f"order reference numbers must increase: {ref} after {self._refs[-1]}")
        slot = len(self._refs)
        if slot + 1 >= len(self._tree):  # grow: rebuild the tree at twice the size
            size = max(1024, 2 * (len(self._tree) - 1))
            tree = [0] * (size + 1)
            for s, r in enumerate(self._refs):
                if r in self._slot:
                    tree[s + 1] += 1
            for i in range(1, size + 1):
                j = i + (i & -i)
                if j <= size:
                    tree[j] += tree[i]
            self._tree = tree
        self.orders[ref] = order
        self._slot[ref] = slot
        self._refs.append(ref)
        self._add(slot, 1)

    def __delitem__(self, ref: int) -> None:
        del self.orders[ref]
        self._add(self._slot.pop(ref), -1)

    def at(self, index: int) -> int:
        """The ``index``-th smallest live reference number (from 0)."""
        if not 0 <= index < len(self.orders):
            raise IndexError(index)
        tree, pos, step = self._tree, 0, (len(self._tree) - 1)
        while step:
            nxt = pos + step
            if nxt < len(tree) and tree[nxt] <= index:
                pos = nxt
                index -= tree[nxt]
            step >>= 1
        return self._refs[pos]


class _SortedRefs:
    """The live reference numbers in ascending order, as a sequence (for ``Random.choice``)."""

    def __init__(self, live: _LiveOrders) -> None:
        self.live = live

    def __len__(self) -> int:
        return len(self.live)

    def __getitem__(self, index: int) -> int:
        return self.live.at(index)


class _Generator:
    """State of one feed: clock, reference and match numbers, mid prices and the live orders."""

    def __init__(self, rng: random.Random, symbols: Mapping[str, int]) -> None:
        self.rng = rng
        self.symbols = dict(symbols)
        self.sorted_symbols = sorted(self.symbols)
        self.timestamp = MARKET_OPEN_NS
        self.next_order_reference_number = rng.randrange(1_000, 100_000)
        self.next_match_number = rng.randrange(1_000, 100_000)
        self.mid = {s: REFERENCE_PRICES.get(s, rng.randrange(20, 500) * 10_000) for s in symbols}
        self.live = _LiveOrders()

    # -- helpers -----------------------------------------------------------------------------
    def header(self, locate: int) -> dict[str, Any]:
        self.timestamp += self.rng.randrange(100, 20_000) if self.rng.random() < 0.9 \
            else self.rng.randrange(20_000, 2_000_000)
        return {"stock_locate": locate, "tracking_number": self.rng.randrange(1, 5),
                "timestamp": self.timestamp}

    def symbol(self) -> tuple[str, int]:
        stock = self.rng.choice(self.sorted_symbols)
        step = self.rng.choice((-1, 0, 0, 1))
        self.mid[stock] = max(TICK, self.mid[stock] + step * TICK)
        return stock, self.symbols[stock]

    def quote_price(self, stock: str, side: str) -> int:
        """A limit price a few ticks behind the mid on ``side`` (sometimes at the mid)."""
        ticks = min(int(self.rng.expovariate(1 / 4)), 25)
        price = self.mid[stock] - ticks * TICK if side == "B" else self.mid[stock] + ticks * TICK
        return max(TICK, price)

    def shares(self) -> int:
        if self.rng.random() < 0.15:
            return self.rng.randrange(1, 100)  # odd lot
        return self.rng.choice((100, 100, 100, 200, 200, 300, 400, 500, 1000))

    def order_reference_number(self) -> int:
        n = self.next_order_reference_number
        self.next_order_reference_number += self.rng.randrange(1, 8)
        return n

    def match_number(self) -> int:
        n = self.next_match_number
        self.next_match_number += 1
        return n

    def pick_live(self) -> tuple[int, _Order]:
        ref = self.rng.choice(self.live.refs)
        return ref, self.live[ref]

    # -- messages ----------------------------------------------------------------------------
    def system_event(self, event_code: str) -> bytes:
        return itch.pack("S", **self.header(0), event_code=event_code)

    def stock_directory(self, stock: str, locate: int) -> bytes:
        return itch.pack("R", **self.header(locate), stock=stock, market_category="Q",
                         financial_status_indicator="N", round_lot_size=100, round_lots_only="N",
                         issue_classification="C", issue_sub_type="Z", authenticity="P",
                         short_sale_threshold_indicator="N", ipo_flag="N",
                         luld_reference_price_tier="1", etp_flag="N", etp_leverage_factor=0,
                         inverse_indicator="N")

    def add_order(self, type_: str) -> bytes:
        stock, locate = self.symbol()
        side = self.rng.choice("BS")
        order = _Order(locate, stock, side, self.shares(), self.quote_price(stock, side))
        ref = self.order_reference_number()
        self.live[ref] = order
        fields = dict(order_reference_number=ref, buy_sell_indicator=side, shares=order.shares,
                      stock=stock, price=order.price)
        if type_ == "F":
            fields["attribution"] = self.rng.choice(("GSCO", "MSCO", "NITE", "VIRT", "JPMS"))
        return itch.pack(type_, **self.header(locate), **fields)

    def execute(self, with_price: bool) -> bytes:
        ref, order = self.pick_live()
        executed = order.shares if self.rng.random() < 0.5 else self.rng.randrange(1, order.shares + 1)
        self._reduce(ref, order, executed)
        fields = dict(order_reference_number=ref, executed_shares=executed,
                      match_number=self.match_number())
        if not with_price:
            return itch.pack("E", **self.header(order.stock_locate), **fields)
        price = max(TICK, order.price + self.rng.choice((-TICK, TICK)))
        return itch.pack("C", **self.header(order.stock_locate), **fields,
                         printable=self.rng.choice("YYYN"), execution_price=price)

    def cancel(self) -> bytes:
        ref, order = self.pick_live()
        if order.shares < 2:
            return self.delete()
        cancelled = self.rng.randrange(1, order.shares)
        self._reduce(ref, order, cancelled)
        return itch.pack("X", **self.header(order.stock_locate), order_reference_number=ref,
                         cancelled_shares=cancelled)

    def delete(self) -> bytes:
        ref, order = self.pick_live()
        del self.live[ref]
        return itch.pack("D", **self.header(order.stock_locate), order_reference_number=ref)

    def replace(self) -> bytes:
        ref, order = self.pick_live()
        del self.live[ref]
        self.symbol()  # let the mids move
        new = _Order(order.stock_locate, order.stock, order.side, self.shares(),
                     self.quote_price(order.stock, order.side))
        new_ref = self.order_reference_number()
        self.live[new_ref] = new
        return itch.pack("U", **self.header(order.stock_locate), original_order_reference_number=ref,
                         new_order_reference_number=new_ref, shares=new.shares, price=new.price)

    def trading_action(self) -> bytes:
        stock, locate = self.symbol()
        return itch.pack("H", **self.header(locate), stock=stock, trading_state="T", reserved=" ",
                         reason="")

    def trade(self) -> bytes:
        stock, locate = self.symbol()
        # Non-displayed executions: order reference number 0 and side always 'B' (spec 1.5.1).
        return itch.pack("P", **self.header(locate), order_reference_number=0,
                         buy_sell_indicator="B", shares=self.shares(), stock=stock,
                         price=self.mid[stock], match_number=self.match_number())

    def imbalance(self) -> bytes:
        stock, locate = self.symbol()
        mid = self.mid[stock]
        return itch.pack("I", **self.header(locate), paired_shares=self.rng.randrange(0, 100_000),
                         imbalance_shares=self.rng.randrange(0, 20_000),
                         imbalance_direction=self.rng.choice("BSN"), stock=stock,
                         far_price=mid + TICK, near_price=mid, current_reference_price=mid,
                         cross_type="C", price_variation_indicator="L")

    def cross_trade(self) -> bytes:
        stock, locate = self.symbol()
        return itch.pack("Q", **self.header(locate), shares=self.rng.randrange(1_000, 1_000_000),
                         stock=stock, cross_price=self.mid[stock], match_number=self.match_number(),
                         cross_type="O")

    def _reduce(self, ref: int, order: _Order, shares: int) -> None:
        order.shares -= shares
        if order.shares == 0:
            del self.live[ref]

    def next(self) -> bytes:
        if not self.live:
            return self.add_order("A")
        types = list(_WEIGHTS)
        type_ = self.rng.choices(types, weights=[_WEIGHTS[t] for t in types])[0]
        return {
            "A": lambda: self.add_order("A"), "F": lambda: self.add_order("F"),
            "E": lambda: self.execute(False), "C": lambda: self.execute(True),
            "X": self.cancel, "D": self.delete, "U": self.replace, "H": self.trading_action,
            "P": self.trade, "I": self.imbalance, "Q": self.cross_trade,
        }[type_]()


def _symbol_map(symbols: Mapping[str, int] | Sequence[str]) -> dict[str, int]:
    if isinstance(symbols, Mapping):
        result = dict(symbols)
    else:
        result = {s: i + 1 for i, s in enumerate(symbols)}
    for stock, locate in result.items():
        if not stock or len(stock) > 8 or not stock.isascii():
            raise ValueError(f"stock symbol must be 1 to 8 ASCII characters, not {stock!r}")
        if not 0 < locate <= 0xFFFF:
            raise ValueError(f"stock locate of {stock} must be in 1..65535, not {locate!r}")
    if len(set(result.values())) != len(result):
        raise ValueError(f"stock locates must be unique: {result}")
    return result


#: System events (spec 1.1) that open and close a trading day when ``session_events`` is set:
#: start of messages, of system hours and of market hours before the walk; end of market hours,
#: of system hours and of messages after it.
OPENING_EVENTS = ("O", "S", "Q")
CLOSING_EVENTS = ("M", "E", "C")


def iter_messages(count: int, seed: int = 1,
                  symbols: Mapping[str, int] | Sequence[str] = DEFAULT_SYMBOLS, *,
                  session_events: bool = False) -> Iterator[bytes]:
    """The messages of :func:`generate_messages`, one at a time (for long feeds)."""
    table = _symbol_map(symbols)
    opening = OPENING_EVENTS if session_events else OPENING_EVENTS[:1]
    closing = CLOSING_EVENTS if session_events else ()
    fixed = len(opening) + len(table) + len(closing)
    if count < fixed:
        raise ValueError(f"count must be at least {fixed} (system events and directory), not {count}")
    gen = _Generator(random.Random(seed), table)
    yield gen.system_event(opening[0])
    for stock, locate in table.items():
        yield gen.stock_directory(stock, locate)
    for event_code in opening[1:]:
        yield gen.system_event(event_code)
    for _ in range(count - fixed):
        yield gen.next()
    for event_code in closing:
        yield gen.system_event(event_code)
    logger.debug("generated %d ITCH messages (seed %d, %d orders live at the end)",
                 count, seed, len(gen.live))


def generate_messages(count: int, seed: int = 1,
                      symbols: Mapping[str, int] | Sequence[str] = DEFAULT_SYMBOLS, *,
                      session_events: bool = False) -> list[bytes]:
    """``count`` ITCH 5.0 messages: System Event 'O', one Stock Directory per symbol, then a
    random walk of order-book events over the live orders, mixed with other message types.

    Parameters
    ----------
    count
        Total number of messages, at least 1 + the number of symbols (+ 5 with session events).
    seed
        Seed of the ``random.Random`` that drives the walk; equal seeds give equal feeds.
    symbols
        ``{stock: stock_locate}``, or a list of stocks (locates 1, 2, ...).
    session_events
        Also open the day with System Events 'S' and 'Q' after the directory and close it with
        'M', 'E', 'C' (:data:`OPENING_EVENTS`, :data:`CLOSING_EVENTS`), as a day's file does.
    """
    return list(iter_messages(count, seed, symbols, session_events=session_events))


#: Well-known symbols :func:`symbol_table` hands out first.
_WELL_KNOWN_SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "COST",
                       "NFLX", "AMD", "PEP", "ADBE", "CSCO", "INTC", "QCOM", "TXN", "AMGN", "INTU",
                       "SBUX", "GILD", "MDLZ", "ADP", "BKNG", "ISRG", "VRTX", "REGN", "PYPL",
                       "MU", "LRCX", "ZVZZT", "QQQ", "SPY", "IWM", "TQQQ", "SQQQ")


def symbol_table(count: int) -> dict[str, int]:
    """``count`` distinct symbols with stock locates 1..count: well-known tickers first, then
    made-up four-letter ones (deterministic)."""
    if not 0 < count <= 0xFFFF:
        raise ValueError(f"symbol count must be in 1..65535, not {count!r}")
    names = list(_WELL_KNOWN_SYMBOLS[:count])
    taken = set(names)
    i = 0
    while len(names) < count:
        # 7919 is prime, so i -> i * 7919 mod 26**4 visits every four-letter name once.
        n = i * 7919 % 26 ** 4
        i += 1
        name = "".join(chr(ord("A") + (n // 26 ** k) % 26) for k in (3, 2, 1, 0))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return {name: locate for locate, name in enumerate(names, 1)}


def iter_datagrams(messages: Iterable[bytes], session: str | bytes = DEFAULT_SESSION,
                   first_sequence: int = 1, max_payload: int = DEFAULT_MAX_PAYLOAD,
                   max_messages: int | None = None) -> Iterator[tuple[int, list[bytes], bytes]]:
    """The packets of :func:`datagrams` one at a time, each as ``(first sequence number,
    messages, packet)``."""
    if max_messages is not None and not 0 < max_messages < moldudp64.END_OF_SESSION_COUNT:
        raise ValueError(f"max_messages must be in 1..65534, not {max_messages!r}")
    batch: list[bytes] = []
    size = moldudp64.HEADER_LENGTH
    sequence = first_sequence
    for message in messages:
        block = moldudp64.BLOCK_LENGTH_WIDTH + len(message)
        if moldudp64.HEADER_LENGTH + block > max_payload:
            raise ValueError(f"a {len(message)}-byte message does not fit max_payload {max_payload}")
        if batch and (size + block > max_payload or len(batch) == max_messages):
            yield sequence, batch, moldudp64.pack(session, sequence, batch)
            sequence += len(batch)
            batch, size = [], moldudp64.HEADER_LENGTH
        batch.append(message)
        size += block
    if batch:
        yield sequence, batch, moldudp64.pack(session, sequence, batch)


def datagrams(messages: Iterable[bytes], session: str | bytes = DEFAULT_SESSION,
              first_sequence: int = 1, max_payload: int = DEFAULT_MAX_PAYLOAD,
              max_messages: int | None = None) -> list[bytes]:
    """Pack ``messages`` in order into MoldUDP64 downstream packets with consecutive sequence
    numbers; each packet is at most ``max_payload`` bytes and holds at most ``max_messages``."""
    return [packet for _, _, packet in iter_datagrams(messages, session, first_sequence,
                                                      max_payload, max_messages)]


def udp_frame(payload: bytes, *, src_mac: int | str, dst_mac: int | str, src_ip: int | str,
              dst_ip: int | str, src_port: int, dst_port: int, identification: int = 0,
              ttl: int = 64, dont_fragment: bool = True) -> bytes:
    """An Ethernet II / IPv4 / UDP frame carrying ``payload``: IPv4 header checksum filled in,
    UDP checksum 0, no FCS, zero-padded to the 60-byte minimum."""
    total_length = IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH + len(payload)
    if total_length > 0xFFFF:
        raise ValueError(f"{len(payload)}-byte payload does not fit one IPv4 datagram")
    ethernet = ETHERNET.pack(destination_address=mac_to_int(dst_mac),
                             source_address=mac_to_int(src_mac), ethertype=ETHERTYPE_IPV4)
    ip = dict(version_ihl=IPV4_VERSION_IHL, total_length=total_length,
              identification=identification & 0xFFFF,
              flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT if dont_fragment else 0,
              time_to_live=ttl, protocol=IP_PROTOCOL_UDP, source_address=ip_to_int(src_ip),
              destination_address=ip_to_int(dst_ip))
    ip_header = IPV4.pack(**ip, header_checksum=ipv4_checksum(IPV4.pack(**ip)))
    udp = UDP.pack(source_port=src_port, destination_port=dst_port,
                   length=UDP_HEADER_LENGTH + len(payload), checksum=0)
    return (ethernet + ip_header + udp + payload).ljust(MIN_FRAME_LENGTH, b"\x00")


def frames(payloads: Iterable[bytes], *, src_mac: int | str, src_ip: int | str, src_port: int,
           dst_ip: int | str, dst_port: int, dst_mac: int | str | None = None,
           first_identification: int = 0) -> list[bytes]:
    """One :func:`udp_frame` per payload, IPv4 identification counting up from
    ``first_identification``; ``dst_mac`` defaults to the multicast MAC of ``dst_ip``."""
    if dst_mac is None:
        dst_mac = multicast_mac(ip_to_int(dst_ip))
    return [udp_frame(p, src_mac=src_mac, dst_mac=dst_mac, src_ip=src_ip, dst_ip=dst_ip,
                      src_port=src_port, dst_port=dst_port, identification=first_identification + i)
            for i, p in enumerate(payloads)]


def _feed_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    from .defaults import DEFAULT_FEED  # late: defaults is configuration, feed is mechanism

    cfg = {**DEFAULT_FEED, **(config or {})}
    unknown = set(cfg) - set(DEFAULT_FEED)
    if unknown:
        raise ValueError(f"unknown feed parameters {sorted(unknown)}; known: {sorted(DEFAULT_FEED)}")
    return cfg


def _datagrams_and_frames(messages: Iterable[bytes], cfg: Mapping[str, Any]) -> tuple[list[bytes], list[bytes]]:
    packets = datagrams(messages, session=cfg["session"], first_sequence=cfg["first_sequence"],
                        max_payload=cfg["max_payload"], max_messages=cfg["max_messages"])
    out = frames(packets, src_mac=cfg["src_mac"], src_ip=cfg["src_ip"], src_port=cfg["src_port"],
                 dst_ip=cfg["dst_ip"], dst_port=cfg["dst_port"])
    return packets, out


def iter_feed_frames(messages: Iterable[bytes], config: Mapping[str, Any] | None = None
                     ) -> Iterator[tuple[int, bytes]]:
    """The frames of :func:`feed_frames` one at a time, as ``(timestamp_ns, frame)`` records for
    :func:`tickwire.sim.pcap.write_pcap`: the ITCH timestamp of the datagram's first message (the
    previous datagram's when that message is too short to carry one)."""
    cfg = _feed_config(config)
    dst_mac = multicast_mac(ip_to_int(cfg["dst_ip"]))
    timestamp_field = itch.MESSAGES["S"]["timestamp"]  # the common header: same in every type
    timestamp = 0
    packets = iter_datagrams(messages, session=cfg["session"], first_sequence=cfg["first_sequence"],
                             max_payload=cfg["max_payload"], max_messages=cfg["max_messages"])
    for i, (_, batch, packet) in enumerate(packets):
        if len(batch[0]) >= timestamp_field.end:
            timestamp = timestamp_field.decode(batch[0])
        yield timestamp, udp_frame(packet, src_mac=cfg["src_mac"], dst_mac=dst_mac,
                                   src_ip=cfg["src_ip"], dst_ip=cfg["dst_ip"],
                                   src_port=cfg["src_port"], dst_port=cfg["dst_port"],
                                   identification=i)


def feed_frames(messages: Iterable[bytes], config: Mapping[str, Any] | None = None) -> list[bytes]:
    """``messages`` packed into MoldUDP64 datagrams and Ethernet frames (no FCS) as the feed
    ``config`` describes (parameters of :data:`~tickwire.sim.defaults.DEFAULT_FEED`; the
    generator's ``count``, ``seed`` and ``symbols`` are not used)."""
    return _datagrams_and_frames(messages, _feed_config(config))[1]


def build_feed(config: Mapping[str, Any] | None = None) -> list[tuple[int, bytes]]:
    """The feed described by ``config`` (default :data:`tickwire.sim.defaults.DEFAULT_FEED`) as
    ``(timestamp_ns, frame)`` records ready for :func:`tickwire.sim.pcap.write_pcap`; each
    timestamp is the ITCH timestamp of the datagram's first message."""
    cfg = _feed_config(config)
    messages = generate_messages(cfg["count"], seed=cfg["seed"], symbols=cfg["symbols"])
    packets, out = _datagrams_and_frames(messages, cfg)
    stamps = []
    for packet in packets:
        first = moldudp64.unpack(packet)[1][0]
        stamps.append(itch.MESSAGES[chr(first[0])]["timestamp"].decode(first))
    return list(zip(stamps, out))
