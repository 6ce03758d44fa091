"""Reference model of the skeleton pipeline, written from docs/pipeline-contract.md and the specs.

One class (or function) per stage, each usable alone: ``MacRxModel`` -> ``NetRxModel`` ->
``MoldUdp64Model`` -> ``ItchModel`` -> ``TriggerModel`` -> ``RiskModel`` -> ``OuchModel`` ->
``NetTxModel`` -> ``MacTxModel``. :class:`MarketDataModel` chains the receive side of both feed
lines and the injection port up to MoldUDP64; :class:`PipelineModel` chains everything and
predicts, for each frame arriving on a feed port (or datagram injected), the frames the card
sends on the order port, and every ``ro`` counter. Nothing here is derived from the RTL.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, NamedTuple, TypedDict

from tickwire.protocols import itch, moldudp64
from tickwire.protocols.net import (  # fcs is re-exported
    ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_IPV4, FCS_LENGTH, IP_PROTOCOL_UDP, IPV4,
    IPV4_FLAG_DONT_FRAGMENT, IPV4_FLAG_MORE_FRAGMENTS, IPV4_FRAGMENT_OFFSET_MASK,
    IPV4_HEADER_LENGTH, IPV4_TIME_TO_LIVE, IPV4_VERSION_IHL, MIN_FRAME_LENGTH, MIN_FRAME_LENGTH_WITH_FCS,
    MULTICAST_MAC_GROUP_MASK, MULTICAST_MAC_PREFIX, UDP,
    UDP_HEADER_LENGTH, UDP_PAYLOAD_OFFSET, fcs, ipv4_checksum,
)
from tickwire.protocols.risk import VERDICT_COUNTERS

from .defaults import DEFAULT_REGISTERS

logger = logging.getLogger(__name__)

#: Largest frame mac_rx accepts, FCS included (``max_frame``).
MAX_FRAME = 1536

#: Gaps the moldudp64 stage keeps open for filling (contract section "moldudp64").
MAX_OPEN_GAPS = 4


def _stage_counters(stage: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` of one stage renamed for another instance of it (``mac_rx`` -> ``mac_rx_b``)."""
    return tuple(stage + name[name.index("."):] for name in names)


MAC_RX_COUNTERS = ("mac_rx.frames_ok", "mac_rx.bad_fcs", "mac_rx.runt", "mac_rx.oversize",
                   "mac_rx.overflow")
NET_RX_COUNTERS = ("net_rx.frames_accepted", "net_rx.drop_mac", "net_rx.drop_ethertype",
                   "net_rx.drop_ip_header", "net_rx.drop_checksum", "net_rx.drop_ip_destination",
                   "net_rx.drop_udp_port", "net_rx.drop_length")
#: Feed line B: its own MAC and filter, with the same counters under their own names.
MAC_RX_B_COUNTERS = _stage_counters("mac_rx_b", MAC_RX_COUNTERS)
NET_RX_B_COUNTERS = _stage_counters("net_rx_b", NET_RX_COUNTERS)
MOLDUDP64_COUNTERS = ("moldudp64.messages", "moldudp64.malformed", "moldudp64.truncated",
                      "moldudp64.session_changes", "moldudp64.heartbeats",
                      "moldudp64.end_of_session", "moldudp64.duplicates", "moldudp64.gaps",
                      "moldudp64.last_gap_first", "moldudp64.last_gap_count",
                      "moldudp64.expected_sequence", "moldudp64.recovered",
                      "moldudp64.late_datagrams", "moldudp64.gaps_abandoned", "moldudp64.open_gaps")
SYMBOLS_COUNTERS = ("symbols.directory_entries", "symbols.passed", "symbols.filtered",
                    "symbols.out_of_range")
ITCH_COUNTERS = ("itch.decoded", "itch.unknown_type", "itch.bad_length")
BOOK_COUNTER_NAMES = ("book.messages", "book.bbo_updates", "book.collisions", "book.unknown_references",
                      "book.outside_window", "book.depth_exhausted", "book.live_orders")
TRIGGER_COUNTERS = ("trigger.fired",) + tuple(f"trigger.rule_{k}_fired" for k in range(4))
ORDER_ENTRY_COUNTERS = ("order_entry.host_queue_level", "order_entry.host_submitted", "order_entry.host_dropped",
                        "order_entry.session_user_ref_num", "order_entry.orders", "order_entry.exposure_submitted")
RISK_COUNTERS = tuple(f"risk.{name}" for name in VERDICT_COUNTERS.values()) + (
    "risk.exposure_updates", "risk.exposure_saturated", "risk.exposure_refused", "risk.last_reject_reason")
OUCH_COUNTERS = ("ouch.orders_sent", "ouch.enter_sent", "ouch.replace_sent", "ouch.cancel_sent", "ouch.modify_sent",
                 "ouch.appendages_sent", "ouch.invalid_action")
NET_TX_COUNTERS = ("net_tx.frames_sent",)
MAC_TX_COUNTERS = ("mac_tx.frames_sent",)
#: Every ``ro`` register the model predicts (all but ``id.*``), in pipeline order.
COUNTER_NAMES: tuple[str, ...] = (MAC_RX_COUNTERS + NET_RX_COUNTERS + MOLDUDP64_COUNTERS
                                  + ITCH_COUNTERS + SYMBOLS_COUNTERS + BOOK_COUNTER_NAMES + TRIGGER_COUNTERS
                                  + ORDER_ENTRY_COUNTERS + RISK_COUNTERS
                                  + OUCH_COUNTERS + NET_TX_COUNTERS + MAC_TX_COUNTERS
                                  + MAC_RX_B_COUNTERS + NET_RX_B_COUNTERS)
#: The ``ro`` registers of the market-data path (``hdl/market_data.py``), in pipeline order.
MARKET_DATA_COUNTER_NAMES: tuple[str, ...] = (MAC_RX_COUNTERS + NET_RX_COUNTERS + MAC_RX_B_COUNTERS
                                              + NET_RX_B_COUNTERS + MOLDUDP64_COUNTERS + ITCH_COUNTERS)



class Record(TypedDict):
    """One decoded ITCH 5.0 message of any type (contract section "itch").

    The fields of ``tickwire.protocols.itch.RECORD_FIELDS`` but ``sequence_number``; which ITCH
    field each one holds for each type is ``tickwire.protocols.itch.RECORD_SOURCES``. Alpha fields
    are ``str`` (the wire bytes, padding kept, one character per byte), integers ``int``; a
    field the type does not use is ``""`` or ``0``.
    """

    message_type: str
    stock_locate: int
    tracking_number: int
    timestamp: int
    order_reference_number: int
    new_order_reference_number: int
    buy_sell_indicator: str
    shares: int
    price: int
    price_2: int
    price_3: int
    price_4: int
    price_5: int
    stock: str
    match_number: int
    attribution: str
    printable: str
    cross_type: str
    value_1: int
    value_2: int
    value_3: int
    text: str
    code_1: str
    code_2: str
    code_3: str
    code_4: str
    code_5: str
    code_6: str
    code_7: str
    code_8: str
    code_9: str
    code_10: str


def with_fcs(frame: bytes) -> bytes:
    """``frame`` followed by its FCS, as it arrives on the wire."""
    return bytes(frame) + fcs(frame)


class RegisterFile(dict):
    """The ``rw`` registers by name: :data:`DEFAULT_REGISTERS` overridden by ``values``.

    Always a copy, so a model never changes the caller's mapping or the defaults; a stage given a
    ``RegisterFile`` shares it (that is how :class:`PipelineModel` wires its stages).
    """

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        super().__init__(DEFAULT_REGISTERS)
        for name, value in (values or {}).items():
            self.write(name, value)

    def write(self, name: str, value: int) -> None:
        if name not in DEFAULT_REGISTERS:
            raise KeyError(f"no rw register {name!r}; known: {sorted(DEFAULT_REGISTERS)}")
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"register {name}: value must be a non-negative int, not {value!r}")
        self[name] = value

    @classmethod
    def of(cls, registers: Mapping[str, int] | None) -> RegisterFile:
        return registers if isinstance(registers, RegisterFile) else cls(registers)


class _Stage:
    COUNTERS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)

    def _count(self, name: str) -> None:
        self.counters[name] += 1


class MacRxModel(_Stage):
    """Feed-port MAC receive: length and FCS checks, FCS stripped.

    Checks, first failure wins: runt (< 64 bytes with FCS), oversize (> ``max_frame``), then an
    /E/ inside the frame or a bad FCS (both ``mac_rx.bad_fcs``). ``mac_rx.overflow`` depends on
    timing and buffer depth and stays 0 here.
    """

    COUNTERS = MAC_RX_COUNTERS

    def __init__(self, *, max_frame: int = MAX_FRAME, stage: str = "mac_rx") -> None:
        if max_frame < MIN_FRAME_LENGTH_WITH_FCS:
            raise ValueError(f"max_frame must be at least {MIN_FRAME_LENGTH_WITH_FCS}, not {max_frame!r}")
        self.max_frame = max_frame
        self.stage = stage
        self.COUNTERS = _stage_counters(stage, MAC_RX_COUNTERS)
        super().__init__()

    def _count(self, name: str) -> None:
        super()._count(self.stage + name[name.index("."):])

    def process(self, frame_with_fcs: bytes, *, error: bool = False) -> bytes | None:
        """The frame without FCS, or None when dropped. ``error``: an /E/ was inside the frame."""
        n = len(frame_with_fcs)
        if error:
            # An /E/ marks the frame corrupt whatever length it reached (contract: bad_fcs).
            self._count("mac_rx.bad_fcs")
        elif n < MIN_FRAME_LENGTH_WITH_FCS:
            self._count("mac_rx.runt")
        elif n > self.max_frame:
            self._count("mac_rx.oversize")
        elif fcs(frame_with_fcs[:-FCS_LENGTH]) != frame_with_fcs[-FCS_LENGTH:]:
            self._count("mac_rx.bad_fcs")
        else:
            self._count("mac_rx.frames_ok")
            return bytes(frame_with_fcs[:-FCS_LENGTH])
        logger.debug("mac_rx: dropped %d-byte frame (error=%s)", n, error)
        return None


class NetRxModel(_Stage):
    """Ethernet/IPv4/UDP receive filter (contract section "net_rx"): payload or None."""

    COUNTERS = NET_RX_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None, *, stage: str = "net_rx") -> None:
        """``stage``: the instance's name, ``net_rx`` (line A) or ``net_rx_b``; its registers
        and counters are ``<stage>.<name>``."""
        self.registers = RegisterFile.of(registers)
        self.stage = stage
        self.COUNTERS = _stage_counters(stage, NET_RX_COUNTERS)
        super().__init__()

    def _count(self, name: str) -> None:
        super()._count(self.stage + name[name.index("."):])

    def _drop(self, reason: str, frame: bytes) -> None:
        self._count(f"net_rx.drop_{reason}")
        logger.debug("%s: drop_%s %s", self.stage, reason, frame[:UDP_PAYLOAD_OFFSET].hex())

    def process(self, frame: bytes) -> bytes | None:
        regs = self.registers
        stage = self.stage
        # Frames after mac_rx are >= 60 bytes; a shorter one (stage tested alone) reads as zeros.
        head = bytes(frame[:UDP_PAYLOAD_OFFSET]).ljust(UDP_PAYLOAD_OFFSET, b"\x00")
        eth = ETHERNET.unpack(head)
        ip_bytes = head[ETHERNET_HEADER_LENGTH:ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH]
        ip = IPV4.unpack(ip_bytes)
        udp = UDP.unpack(head[ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH:])
        group = regs[f"{stage}.multicast_group"]
        if eth["destination_address"] not in (regs[f"{stage}.mac_address"], _multicast_mac_of(group)):
            self._drop("mac", frame)
        elif eth["ethertype"] != ETHERTYPE_IPV4:
            self._drop("ethertype", frame)
        elif (ip["version_ihl"] != IPV4_VERSION_IHL
              or ip["flags_fragment_offset"] & (IPV4_FLAG_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK)
              or ip["protocol"] != IP_PROTOCOL_UDP):
            self._drop("ip_header", frame)
        elif ipv4_checksum(ip_bytes) != 0:
            self._drop("checksum", frame)
        elif ip["destination_address"] != group:
            self._drop("ip_destination", frame)
        elif udp["destination_port"] != regs[f"{stage}.udp_port"]:
            self._drop("udp_port", frame)
        elif not (IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH <= ip["total_length"]
                  and ETHERNET_HEADER_LENGTH + ip["total_length"] <= len(frame)
                  and udp["length"] == ip["total_length"] - IPV4_HEADER_LENGTH):
            self._drop("length", frame)
        else:
            self._count("net_rx.frames_accepted")
            return bytes(frame[UDP_PAYLOAD_OFFSET:UDP_PAYLOAD_OFFSET + udp["length"] - UDP_HEADER_LENGTH])
        return None


def _multicast_mac_of(group: int) -> int:
    """01:00:5e + the low 23 bits, whatever ``group`` holds (the register is not validated)."""
    return MULTICAST_MAC_PREFIX | (group & MULTICAST_MAC_GROUP_MASK)


class GapEvent(NamedTuple):
    """A gap the moldudp64 stage reports (``o_gap``): the missing range, as a MoldUDP64
    retransmission request names it."""

    session: bytes
    sequence_number: int
    message_count: int


class Delivered(NamedTuple):
    """A message the moldudp64 stage delivers; ``recovered``: it filled an open gap."""

    sequence_number: int
    message: bytes
    recovered: bool


class MoldUdp64Model(_Stage):
    """MoldUDP64 session, sequence and gap tracking (contract section "moldudp64").

    The first datagram's session is adopted with expected := its sequence number and no
    ``session_changes``; before that ``moldudp64.expected_sequence`` reads 0. Datagrams from
    every source (feed line A, line B, the injection port) go through the one :meth:`process`,
    in the order the stage receives them. :attr:`gap_events` lists every gap reported;
    :attr:`open_gaps` the gaps still open, oldest first, as ``[next missing, end)`` pairs.
    """

    COUNTERS = MOLDUDP64_COUNTERS

    def __init__(self, *, max_open_gaps: int = MAX_OPEN_GAPS) -> None:
        if max_open_gaps < 1:
            raise ValueError(f"max_open_gaps must be at least 1, not {max_open_gaps!r}")
        super().__init__()
        self.max_open_gaps = max_open_gaps
        self.session: bytes | None = None
        self.open_gaps: list[list[int]] = []
        self.gap_events: list[GapEvent] = []

    @property
    def expected(self) -> int:
        return self.counters["moldudp64.expected_sequence"]

    @expected.setter
    def expected(self, value: int) -> None:
        self.counters["moldudp64.expected_sequence"] = value & (1 << 64) - 1

    def _gap(self, sequence: int) -> None:
        first, count = self.expected, sequence - self.expected
        self._count("moldudp64.gaps")
        self.counters["moldudp64.last_gap_first"] = first
        self.counters["moldudp64.last_gap_count"] = count & 0xFFFFFFFF
        assert self.session is not None
        self.gap_events.append(GapEvent(self.session, first, count))
        logger.info("moldudp64: session %r gap: expected %d, got %d (%d missing)",
                    self.session, first, sequence, count)
        if len(self.open_gaps) == self.max_open_gaps:
            abandoned = self.open_gaps.pop(0)
            self._count("moldudp64.gaps_abandoned")
            logger.info("moldudp64: gap [%d, %d) abandoned unfilled", *abandoned)
        self.open_gaps.append([first, sequence])
        self._sync_open_gaps()

    def _sync_open_gaps(self) -> None:
        self.counters["moldudp64.open_gaps"] = len(self.open_gaps)

    def _sequence(self, message_sequence: int) -> bool | None:
        """Where a message goes: False delivered live, True delivered as recovered, None dropped."""
        if message_sequence >= self.expected:
            if message_sequence > self.expected:
                self._gap(message_sequence)
            self.expected = message_sequence + 1
            return False
        for gap in self.open_gaps:
            if gap[0] == message_sequence:
                gap[0] += 1
                if gap[0] == gap[1]:
                    self.open_gaps.remove(gap)
                    self._sync_open_gaps()
                self._count("moldudp64.recovered")
                return True
        self._count("moldudp64.duplicates")
        return None

    def process(self, payload: bytes) -> list[tuple[int, bytes]]:
        """The ``(sequence_number, message)`` pairs this datagram delivers, in order."""
        return [(d.sequence_number, d.message) for d in self.process_datagram(payload)]

    def process_datagram(self, payload: bytes) -> list[Delivered]:
        """The messages this datagram delivers, in order, each with its ``recovered`` flag."""
        if len(payload) < moldudp64.HEADER_LENGTH:
            self._count("moldudp64.malformed")
            return []
        header = moldudp64.HEADER.unpack(payload)
        session = bytes(payload[:10])
        sequence, count = header["sequence_number"], header["message_count"]
        if self.session is None:
            self.session, self.expected = session, sequence
        elif session != self.session:
            logger.info("moldudp64: session %r -> %r at sequence %d", self.session, session, sequence)
            self._count("moldudp64.session_changes")
            self.counters["moldudp64.gaps_abandoned"] += len(self.open_gaps)
            self.open_gaps.clear()
            self._sync_open_gaps()
            self.session, self.expected = session, sequence
        if count == moldudp64.HEARTBEAT_COUNT:
            self._count("moldudp64.heartbeats")
            if sequence > self.expected:
                self._gap(sequence)
                self.expected = sequence
            return []
        if count == moldudp64.END_OF_SESSION_COUNT:
            self._count("moldudp64.end_of_session")
            return []
        delivered: list[Delivered] = []
        framed = 0
        pos = moldudp64.HEADER_LENGTH
        for i in range(count):
            if pos + moldudp64.BLOCK_LENGTH_WIDTH > len(payload):
                self._count("moldudp64.truncated")  # fewer blocks than the count
                break
            length = int.from_bytes(payload[pos:pos + moldudp64.BLOCK_LENGTH_WIDTH], "big")
            if length < itch.MIN_LENGTH:
                self._count("moldudp64.malformed")
                break
            end = pos + moldudp64.BLOCK_LENGTH_WIDTH + length
            if end > len(payload):
                self._count("moldudp64.truncated")
                break
            message = bytes(payload[pos + moldudp64.BLOCK_LENGTH_WIDTH:end])
            pos = end
            framed += 1
            recovered = self._sequence(sequence + i)
            if recovered is not None:
                self._count("moldudp64.messages")
                delivered.append(Delivered(sequence + i, message, recovered))
        if framed and not delivered:
            self._count("moldudp64.late_datagrams")
        return delivered


def itch_outcome(message: bytes) -> str:
    """What the itch stage does with ``message``: the suffix of the counter it bumps
    (``decoded``, ``unknown_type`` or ``bad_length``)."""
    type_ = chr(message[0]) if message else ""
    if type_ not in itch.MESSAGES:
        return "unknown_type"
    if len(message) != itch.LENGTHS[type_]:
        return "bad_length"
    return "decoded"


def itch_decode(message: bytes) -> Record | None:
    """The record of a message of a known type at its spec length, else None.

    Each ITCH field is read from the spec layout (``tickwire.protocols.itch.MESSAGES``) and put in
    the record field ``RECORD_SOURCES`` names for it; alpha fields keep their bytes
    (``latin-1``, so any byte value survives).
    """
    if itch_outcome(message) != "decoded":
        return None
    type_ = chr(message[0])
    layout = itch.MESSAGES[type_]
    record: dict[str, Any] = {name: "" if name in itch.ALPHA_RECORD_FIELDS else 0
                              for name in itch.RECORD_FIELDS if name not in itch.SIDEBAND_FIELDS}
    for name, sources in itch.RECORD_SOURCES.items():
        if type_ in sources:
            f = layout[sources[type_]]
            raw = message[f.offset:f.end]
            record[name] = raw.decode("latin-1") if f.type == "alpha" else int.from_bytes(raw, "big")
    return Record(**record)  # type: ignore[typeddict-item]


def record_values(record: Record, sequence_number: int = 0, recovered: bool = False) -> dict[str, int]:
    """``record`` as the integers of the gateware's record layout (``hdl/itch.py``): alpha
    fields first character in bits [7:0], unused high bytes 0."""
    out: dict[str, int] = {}
    for name, value in record.items():
        out[name] = int.from_bytes(value.encode("latin-1"), "little") if isinstance(value, str) else value
    out["sequence_number"] = sequence_number
    out["recovered"] = int(recovered)
    out["tracked"] = 0
    out["tracked_slot"] = 0
    return out


class ItchModel(_Stage):
    """ITCH 5.0 length check and decode of all 23 types (contract section "itch")."""

    COUNTERS = ITCH_COUNTERS

    def process(self, message: bytes) -> Record | None:
        outcome = itch_outcome(message)
        self._count(f"itch.{outcome}")
        if outcome in ("unknown_type", "bad_length"):
            logger.debug("itch: %s %s", outcome, message.hex())
        return itch_decode(message)


class SymbolDirectoryModel(_Stage):
    """Locate -> symbol table, tracked slots and the tracked-symbol filter (contract section "symbols")."""

    COUNTERS = SYMBOLS_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None, *, max_locates: int = 16384,
                 track_names: int = 8, slots: int = 256) -> None:
        self.registers = RegisterFile.of(registers)
        self.max_locates = max_locates
        self.track_names = track_names
        self.slots = slots
        self.names: dict[int, str] = {}
        self.tracked: dict[int, int] = {}   # locate -> book slot
        super().__init__()

    def track_locate(self, value: int) -> None:
        """The host wrote ``symbols.track_locate``: (slot << 17 | flag << 16 | locate)."""
        locate, flag, slot = value & 0xFFFF, value >> 16 & 1, value >> 17
        if locate < self.max_locates and slot < self.slots:
            if flag:
                self.tracked[locate] = slot
            else:
                self.tracked.pop(locate, None)

    def lookup(self, locate: int) -> tuple[str, bool]:
        """The directory entry of ``locate`` (stock, '' when none) and whether it is tracked."""
        return self.names.get(locate, ""), locate in self.tracked

    def slot(self, locate: int) -> int | None:
        """The book slot of ``locate`` now, None when it is not tracked."""
        return self.tracked.get(locate)

    def _named(self, stock: str) -> int | None:
        value = int.from_bytes(stock.encode("latin-1"), "little")
        for k in range(self.track_names):
            name = self.registers[f"symbols.track_name_{k}"]
            if name != 0 and name == value:
                return k
        return None

    def process(self, record: Record) -> bool:
        """Whether ``record`` goes on; Stock Directory records fill the table on the way."""
        locate = record["stock_locate"]
        fits = locate < self.max_locates
        if not fits:
            self._count("symbols.out_of_range")
        if record["message_type"] == "R" and fits:
            self.names[locate] = record["stock"]
            self._count("symbols.directory_entries")
            named = self._named(record["stock"])
            if named is not None:
                self.tracked[locate] = named
        passes = (not self.registers["symbols.filter_enable"] or locate == 0
                  or (fits and locate in self.tracked))
        self._count("symbols.passed" if passes else "symbols.filtered")
        return passes

    def annotate(self, values: dict[str, int]) -> dict[str, int]:
        """The gateware record ``values`` (``record_values``) as the stage passes it on: with
        ``tracked`` and ``tracked_slot`` of its locate, as the table holds them now."""
        slot = self.slot(values["stock_locate"]) if values["stock_locate"] < self.max_locates else None
        return {**values, "tracked": int(slot is not None), "tracked_slot": slot or 0}


class TriggerModel(_Stage):
    """The rule trigger (contract section "trigger"): top-of-book records in, Enter Order
    actions out (as dicts of :data:`tickwire.hdl.order.order_layout` fields, integers)."""

    def __init__(self, registers: Mapping[str, int] | None = None, *, rules: int = 4) -> None:
        self.registers = RegisterFile.of(registers)
        self.rules = rules
        self.COUNTERS = ("trigger.fired",) + tuple(f"trigger.rule_{k}_fired" for k in range(rules))
        self.held = [False] * rules
        super().__init__()

    def _holds(self, k: int, bbo: Mapping[str, Any]) -> bool:
        from tickwire.protocols.strategy import RuleKind
        regs = self.registers
        kind, threshold = regs[f"trigger.rule_{k}_kind"], regs[f"trigger.rule_{k}_threshold"]
        side = regs[f"trigger.rule_{k}_side"]
        bid, ask = bbo["bid_orders"] != 0, bbo["ask_orders"] != 0
        takes = ask if side == ord("B") else bid if side == ord("S") else False
        if not (bbo["trusted"] and not bbo["recovered"] and takes):
            return False
        if kind == RuleKind.ASK_AT_OR_BELOW:
            return ask and bbo["ask_price"] <= threshold
        if kind == RuleKind.BID_AT_OR_ABOVE:
            return bid and bbo["bid_price"] >= threshold
        if kind == RuleKind.SPREAD_AT_MOST:
            return bid and ask and bbo["ask_price"] - bbo["bid_price"] <= threshold
        if kind == RuleKind.BID_IMBALANCE:
            return bid and ask and bbo["bid_shares"] * 256 >= threshold * bbo["ask_shares"]
        if kind == RuleKind.ASK_IMBALANCE:
            return bid and ask and bbo["ask_shares"] * 256 >= threshold * bbo["bid_shares"]
        return False

    def process(self, bbo: Mapping[str, Any]) -> list[dict[str, int]]:
        """The orders one top-of-book record makes (``bbo``: :data:`tickwire.hdl.book.bbo_layout`
        fields as integers), in rule order."""
        from tickwire.hdl.order import OrderSource
        regs = self.registers
        orders = []
        for k in range(self.rules):
            if regs[f"trigger.rule_{k}_kind"] == 0 or regs[f"trigger.rule_{k}_slot"] != bbo["slot"]:
                continue
            holds = self._holds(k, bbo)
            fires, self.held[k] = holds and not self.held[k], holds
            if not fires:
                continue
            side = regs[f"trigger.rule_{k}_side"]
            buy = side == ord("B")
            there = bbo["ask_shares"] if buy else bbo["bid_shares"]
            self._count("trigger.fired")
            self._count(f"trigger.rule_{k}_fired")
            orders.append({
                "action": ord("O"), "source": OrderSource.TRIGGER, "session": regs[f"trigger.rule_{k}_session"],
                "slot": bbo["slot"], "stock_locate": bbo["stock_locate"], "stock": bbo["stock"], "side": side,
                "price": bbo["ask_price"] if buy else bbo["bid_price"],
                "quantity": min(regs[f"trigger.rule_{k}_quantity"], there),
                "time_in_force": regs["trigger.time_in_force"], "display": regs["trigger.display"],
                "capacity": regs["trigger.capacity"],
                "intermarket_sweep_eligibility": regs["trigger.intermarket_sweep_eligibility"],
                "cross_type": regs["trigger.cross_type"],
                "timestamp": bbo["timestamp"], "sequence_number": bbo["sequence_number"],
            })
        return orders


def cl_ord_id(prefix: int, user_ref_num: int) -> int:
    """The 14-character ClOrdID the card gives (contract section "order_entry"): the 4 ASCII
    bytes of ``prefix`` (most significant first), the UserRefNum as 8 upper-case hex digits, two
    spaces; as the integer of ``order_layout.cl_ord_id`` (first character in bits 7:0)."""
    text = prefix.to_bytes(4, "big") + f"{user_ref_num:08X}  ".encode("ascii")
    return int.from_bytes(text, "little")


def order_values(**fields: int) -> dict[str, int]:
    """An order action with every field of :data:`tickwire.hdl.order.order_layout` (0 unless given)."""
    from tickwire.hdl.order import order_layout
    values = {name: 0 for name, _ in order_layout}
    values.update(fields)
    return values


class OrderEntryModel(_Stage):
    """Merges trigger and host orders and numbers them (contract section "order_entry")."""

    COUNTERS = ORDER_ENTRY_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None, *, sessions: int = 4) -> None:
        self.registers = RegisterFile.of(registers)
        self.sessions = sessions
        self.next = [self.registers["order_entry.next_user_ref_num"]] * sessions
        super().__init__()
        self._show()

    def _show(self) -> None:
        selected = self.registers["order_entry.user_ref_num_session"]
        self.counters["order_entry.session_user_ref_num"] = self.next[selected] if selected < self.sessions else 0

    def process(self, order: Mapping[str, int]) -> dict[str, int]:
        """The order as it leaves for risk: UserRefNum and ClOrdID given."""
        out = order_values(**order)
        numbered = out["action"] in (ord("O"), ord("U"))
        session = out["session"]
        if numbered and out["user_ref_num"] == 0 and session < self.sessions:
            out["user_ref_num"] = self.next[session]
        if numbered and session < self.sessions and out["user_ref_num"] >= self.next[session]:
            self.next[session] = (out["user_ref_num"] + 1) & 0xFFFFFFFF
        out["cl_ord_id"] = cl_ord_id(self.registers["order_entry.cl_ord_id_prefix"], out["user_ref_num"])
        self._count("order_entry.orders")
        self._show()
        return out


class RiskStage(_Stage):
    """The risk gate of the pipeline: :class:`tickwire.sim.risk_model.RiskModel` (issue 6's
    reference) with the appliance's register names; per-slot and per-session limits come from
    ``risk.<limit>[index]`` entries of the register values (:data:`~tickwire.sim.defaults.DEFAULT_INDEXED`)."""

    def __init__(self, registers: Mapping[str, int] | None = None, indexed: Mapping[str, int] | None = None,
                 *, slots: int = 256, sessions: int = 4) -> None:
        from .risk_model import RiskModel as Reference
        self.registers = RegisterFile.of(registers)
        self.reference = Reference(slots=slots, sessions=sessions)
        for name, value in (indexed or {}).items():
            self.write_indexed(name, value)
        self.COUNTERS = RISK_COUNTERS
        super().__init__()

    def write_indexed(self, name: str, value: int) -> None:
        """``risk.<register>[index]`` = value: the select register, then the value, as the host writes them."""
        stage, _, rest = name.partition(".")
        register, _, index = rest.partition("[")
        if stage != "risk" or not index.endswith("]"):
            raise KeyError(f"not an indexed risk register: {name!r}")
        index_value = int(index[:-1])
        from .risk_model import SESSION_LIMIT_NAMES
        if register in SESSION_LIMIT_NAMES:
            self.reference.write(register, value, session=index_value)
        else:
            self.reference.write(register, value, slot=index_value)

    def process(self, order: Mapping[str, int], book) -> tuple[bool, int]:
        """The verdict on ``order`` with ``book`` (:class:`~tickwire.sim.risk_model.BookTop`) as the
        book answers for its slot."""
        ref = self.reference
        ref.kill, ref.kill_session = self.registers["risk.kill"], self.registers["risk.kill_session"]
        accepted, reason = ref.order(order, book)
        self.process_counters()
        return accepted, int(reason)

    def process_counters(self) -> None:
        """Copy the reference's counters under the register names."""
        ref = self.reference
        for name in RISK_COUNTERS:
            self.counters[name] = (ref.counters[name.partition(".")[2]] if name != "risk.last_reject_reason"
                                   else ref.last_reject_reason)


class OuchStage(_Stage):
    """The OUCH encoder's output (:func:`tickwire.sim.ouch_model.expected_packet`) and counters."""

    COUNTERS = OUCH_COUNTERS
    _BY_ACTION = {"O": "ouch.enter_sent", "U": "ouch.replace_sent", "X": "ouch.cancel_sent", "M": "ouch.modify_sent"}

    def process(self, order: Mapping[str, int]) -> bytes | None:
        from .ouch_model import expected_packet, present_appendages
        packet = expected_packet(dict(order))
        if packet is None:
            self._count("ouch.invalid_action")
            return None
        self._count("ouch.orders_sent")
        self._count(self._BY_ACTION[chr(order["action"])])
        if chr(order["action"]) in "OU":
            self.counters["ouch.appendages_sent"] += len(present_appendages(dict(order)))
        return packet


class NetTxModel(_Stage):
    """Order-port Ethernet/IPv4/UDP framing (contract section "net_tx"); frames without padding."""

    COUNTERS = NET_TX_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def process(self, payload: bytes) -> bytes:
        regs = self.registers
        identification = self.counters["net_tx.frames_sent"] & 0xFFFF
        ip = dict(version_ihl=IPV4_VERSION_IHL, type_of_service=0,
                  total_length=IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH + len(payload),
                  identification=identification, flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT,
                  time_to_live=IPV4_TIME_TO_LIVE, protocol=IP_PROTOCOL_UDP,
                  source_address=regs["net_tx.src_ip"], destination_address=regs["net_tx.dst_ip"])
        frame = (ETHERNET.pack(destination_address=regs["net_tx.dst_mac"],
                               source_address=regs["net_tx.src_mac"], ethertype=ETHERTYPE_IPV4)
                 + IPV4.pack(**ip, header_checksum=ipv4_checksum(IPV4.pack(**ip)))
                 + UDP.pack(source_port=regs["net_tx.src_port"], destination_port=regs["net_tx.dst_port"],
                            length=UDP_HEADER_LENGTH + len(payload), checksum=0)
                 + payload)
        self._count("net_tx.frames_sent")
        return frame


class MacTxModel(_Stage):
    """Order-port MAC transmit: zero padding to 60 bytes; :meth:`wire` also appends the FCS."""

    COUNTERS = MAC_TX_COUNTERS

    def process(self, frame: bytes) -> bytes:
        self._count("mac_tx.frames_sent")
        return bytes(frame).ljust(MIN_FRAME_LENGTH, b"\x00")

    @staticmethod
    def wire(frame: bytes) -> bytes:
        """Padded frame + FCS, the bytes between SFD and /T/."""
        return with_fcs(bytes(frame).ljust(MIN_FRAME_LENGTH, b"\x00"))


class MarketDataModel:
    """The market-data path (``hdl/market_data.py``): feed line A (``mac_rx``, ``net_rx``), feed
    line B (``mac_rx_b``, ``net_rx_b``) and the injection port, merged datagram by datagram into
    one MoldUDP64 sequencer, then the ITCH decoder (contract section "A/B lines and injection").

    Call :meth:`receive` and :meth:`inject` in the order the sequencer takes the datagrams (the
    arbiter's order); each returns what that datagram delivers.

    Parameters
    ----------
    registers
        ``rw`` register values by name (a :class:`RegisterFile` is shared, not copied).
    """

    LINES = ("a", "b")

    def __init__(self, registers: Mapping[str, int] | None = None, *, max_frame: int = MAX_FRAME,
                 max_open_gaps: int = MAX_OPEN_GAPS) -> None:
        self.registers = RegisterFile.of(registers)
        self.mac_rx = MacRxModel(max_frame=max_frame)
        self.net_rx = NetRxModel(self.registers)
        self.mac_rx_b = MacRxModel(max_frame=max_frame, stage="mac_rx_b")
        self.net_rx_b = NetRxModel(self.registers, stage="net_rx_b")
        self.moldudp64 = MoldUdp64Model(max_open_gaps=max_open_gaps)
        self.itch = ItchModel()
        self.stages = (self.mac_rx, self.net_rx, self.mac_rx_b, self.net_rx_b, self.moldudp64, self.itch)

    def payload(self, frame_with_fcs: bytes, *, error: bool = False, line: str = "a") -> bytes | None:
        """The UDP payload a frame on feed ``line`` passes on, or None (counted where dropped)."""
        if line not in self.LINES:
            raise ValueError(f"line must be one of {self.LINES}, not {line!r}")
        mac, net = (self.mac_rx, self.net_rx) if line == "a" else (self.mac_rx_b, self.net_rx_b)
        frame = mac.process(frame_with_fcs, error=error)
        return net.process(frame) if frame is not None else None

    def receive(self, frame_with_fcs: bytes, *, error: bool = False,
                line: str = "a") -> list[tuple[Delivered, Record | None]]:
        """One frame on feed ``line`` (FCS included; ``error``: it carried an /E/): the messages
        it delivers with their decoded records (None: not decoded)."""
        payload = self.payload(frame_with_fcs, error=error, line=line)
        return [] if payload is None else self.inject(payload)

    def inject(self, payload: bytes) -> list[tuple[Delivered, Record | None]]:
        """One MoldUDP64 datagram on the injection port, as :meth:`receive`."""
        return [(d, self.itch.process(d.message)) for d in self.moldudp64.process_datagram(payload)]

    @property
    def gap_events(self) -> list[GapEvent]:
        return self.moldudp64.gap_events

    @property
    def counters(self) -> dict[str, int]:
        """The path's ``ro`` registers by name (:data:`MARKET_DATA_COUNTER_NAMES`)."""
        merged: dict[str, int] = {}
        for stage in self.stages:
            merged.update(stage.counters)
        return {name: merged[name] for name in MARKET_DATA_COUNTER_NAMES}


class _BookStage(_Stage):
    """The order book (:class:`tickwire.sim.book_model.BookModel`) with the pipeline's counters."""

    COUNTERS = BOOK_COUNTER_NAMES

    def __init__(self, **params: int) -> None:
        from .book_model import BookModel
        self.model = BookModel(**params)
        super().__init__()
        self.counters = self.model.counters


class PipelineModel:
    """The whole pipeline: feed-port frames in, order-port frames out.

    Parameters
    ----------
    registers
        ``rw`` register values by name; missing ones take :data:`DEFAULT_REGISTERS`. The model
        keeps its own copy (:attr:`registers`); change a register between frames with
        ``model.registers.write(name, value)``.
    indexed
        Per-slot and per-session risk limits, ``"risk.<limit>[index]": value``; missing:
        :data:`~tickwire.sim.defaults.DEFAULT_INDEXED`.
    book
        :class:`~tickwire.hdl.book.Book` parameters of the card modelled.

    The price collar's book midpoint is read from the model's book after the message that fired
    the order; the gateware reads it a few cycles later, when later messages of the same symbol
    may have moved it. Configurations that compare frames exactly use a host-set reference price.
    """

    def __init__(self, registers: Mapping[str, int] | None = None, *, indexed: Mapping[str, int] | None = None,
                 max_frame: int = MAX_FRAME, book: Mapping[str, int] | None = None, sessions: int = 4) -> None:
        from .defaults import DEFAULT_INDEXED
        self.registers = RegisterFile(registers)
        self.market_data = MarketDataModel(self.registers, max_frame=max_frame)
        self.mac_rx, self.net_rx = self.market_data.mac_rx, self.market_data.net_rx
        self.mac_rx_b, self.net_rx_b = self.market_data.mac_rx_b, self.market_data.net_rx_b
        self.moldudp64, self.itch = self.market_data.moldudp64, self.market_data.itch
        self.book = _BookStage(**(book or {}))
        self.symbols = SymbolDirectoryModel(self.registers, slots=self.book.model.slots)
        self.trigger = TriggerModel(self.registers)
        self.order_entry = OrderEntryModel(self.registers, sessions=sessions)
        self.risk = RiskStage(self.registers, DEFAULT_INDEXED if indexed is None else indexed,
                              slots=self.book.model.slots, sessions=sessions)
        self.ouch = OuchStage()
        self.net_tx = NetTxModel(self.registers)
        self.mac_tx = MacTxModel()
        #: Top-of-book records, rejected orders (order, reason) and accepted orders, in order.
        self.bbos: list[dict[str, int]] = []
        self.rejects: list[tuple[dict[str, int], int]] = []
        self.accepted: list[dict[str, int]] = []
        #: Every verdict in order: (order, reason), reason 0 for accepted.
        self.verdicts: list[tuple[dict[str, int], int]] = []
        self._stages = (*self.market_data.stages, self.symbols, self.book, self.trigger, self.order_entry,
                        self.risk, self.ouch, self.net_tx, self.mac_tx)

    def feed(self, frame_with_fcs: bytes, *, error: bool = False, line: str = "a") -> list[bytes]:
        """Process one frame on feed port ``line`` ("a" or "b"; FCS included; ``error``: it
        carried an /E/) and return the order-port frames (padded, without FCS) it causes, in order."""
        return self._trade(self.market_data.receive(frame_with_fcs, error=error, line=line))

    def inject(self, payload: bytes) -> list[bytes]:
        """Process one MoldUDP64 datagram on the injection port, as :meth:`feed`."""
        return self._trade(self.market_data.inject(payload))

    def submit(self, order: Mapping[str, int]) -> list[bytes]:
        """A host order (``order_entry.host_*`` registers, then ``host_submit``): its order-port
        frames (none when risk refuses it)."""
        from tickwire.hdl.order import OrderSource
        self.order_entry._count("order_entry.host_submitted")
        return self._order(order_values(**order, source=OrderSource.HOST))

    def exposure(self, update: Mapping[str, int]) -> None:
        """A host exposure update (``order_entry.exposure_*`` registers, then ``exposure_submit``)."""
        self.order_entry._count("order_entry.exposure_submitted")
        self.risk.reference.exposure(update)
        self.risk.process_counters()

    def _order(self, order: Mapping[str, int]) -> list[bytes]:
        from .risk_model import BookTop
        numbered = self.order_entry.process(order)
        slot = numbered["slot"]
        book = BookTop(*self.book.model.query(slot)) if slot < self.book.model.slots else BookTop()
        accepted, reason = self.risk.process(numbered, book)
        self.verdicts.append((numbered, reason))
        if not accepted:
            self.rejects.append((numbered, reason))
            return []
        self.accepted.append(numbered)
        packet = self.ouch.process(numbered)
        if packet is None:
            return []
        logger.debug("order %d: %s", numbered["user_ref_num"], packet.hex())
        return [self.mac_tx.process(self.net_tx.process(packet))]

    def _trade(self, delivered: list[tuple[Delivered, Record | None]]) -> list[bytes]:
        out: list[bytes] = []
        for (sequence, _, recovered), record in delivered:
            if record is None or not self.symbols.process(record):
                continue
            slot = self.symbols.slot(record["stock_locate"]) if record["stock_locate"] < self.symbols.max_locates else None
            bbo = self.book.model.process(record, slot=slot, sequence_number=sequence, recovered=recovered)
            if bbo is None:
                continue
            values = bbo._asdict()
            values["stock"] = int.from_bytes(values["stock"].encode("latin-1"), "little") if values["stock"] else 0
            values["recovered"], values["trusted"] = int(values["recovered"]), int(values["trusted"])
            self.bbos.append(values)
            for order in self.trigger.process(values):
                out += self._order(order)
        return out

    def feed_all(self, frames_with_fcs: Iterable[bytes]) -> list[bytes]:
        """:meth:`feed` each frame; all order-port frames in order."""
        return [out for frame in frames_with_fcs for out in self.feed(frame)]

    @property
    def counters(self) -> dict[str, int]:
        """Every ``ro`` register of the contract except ``id.*`` and the indexed read-backs, by name."""
        merged: dict[str, int] = {}
        for stage in self._stages:
            merged.update(stage.counters)
        return {name: merged[name] for name in COUNTER_NAMES}
