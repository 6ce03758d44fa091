"""NASDAQ OUCH 5.0 message layouts: inbound (client to exchange) and outbound (exchange to client)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable, Mapping

from .layout import F, Field, LayoutError, Message

_T = F("message_type", 0, 1, "alpha")

#: Client-to-exchange messages. Prices are 8-byte integers with 4 implied decimals.
INBOUND: dict[str, Message] = {m.type: m for m in (
    Message("Enter Order", "O", (
        _T, F("user_ref_num", 1, 4), F("side", 5, 1, "alpha"), F("quantity", 6, 4),
        F("symbol", 10, 8, "alpha"), F("price", 18, 8, "price4"),
        F("time_in_force", 26, 1, "alpha"), F("display", 27, 1, "alpha"),
        F("capacity", 28, 1, "alpha"), F("intermarket_sweep_eligibility", 29, 1, "alpha"),
        F("cross_type", 30, 1, "alpha"), F("cl_ord_id", 31, 14, "alpha"),
        F("appendage_length", 45, 2))),
    Message("Replace Order", "U", (
        _T, F("orig_user_ref_num", 1, 4), F("user_ref_num", 5, 4), F("quantity", 9, 4),
        F("price", 13, 8, "price4"), F("time_in_force", 21, 1, "alpha"),
        F("display", 22, 1, "alpha"), F("intermarket_sweep_eligibility", 23, 1, "alpha"),
        F("cl_ord_id", 24, 14, "alpha"), F("appendage_length", 38, 2))),
    Message("Cancel Order", "X", (
        _T, F("user_ref_num", 1, 4), F("quantity", 5, 4))),
    Message("Modify Order", "M", (
        _T, F("user_ref_num", 1, 4), F("side", 5, 1, "alpha"), F("quantity", 6, 4))),
    Message("Account Query Request", "Q", (_T,)),
)}

#: Exchange-to-client messages. Timestamps are 8-byte nanoseconds since midnight.
OUTBOUND: dict[str, Message] = {m.type: m for m in (
    Message("System Event", "S", (
        _T, F("timestamp", 1, 8, "timestamp"), F("event_code", 9, 1, "alpha"))),
    Message("Order Accepted", "A", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("side", 13, 1, "alpha"),
        F("quantity", 14, 4), F("symbol", 18, 8, "alpha"), F("price", 26, 8, "price4"),
        F("time_in_force", 34, 1, "alpha"), F("display", 35, 1, "alpha"),
        F("order_reference_number", 36, 8), F("capacity", 44, 1, "alpha"),
        F("intermarket_sweep_eligibility", 45, 1, "alpha"), F("cross_type", 46, 1, "alpha"),
        F("order_state", 47, 1, "alpha"), F("cl_ord_id", 48, 14, "alpha"),
        F("appendage_length", 62, 2))),
    Message("Order Replaced", "U", (
        _T, F("timestamp", 1, 8, "timestamp"), F("orig_user_ref_num", 9, 4), F("user_ref_num", 13, 4),
        F("side", 17, 1, "alpha"), F("quantity", 18, 4), F("symbol", 22, 8, "alpha"),
        F("price", 30, 8, "price4"), F("time_in_force", 38, 1, "alpha"), F("display", 39, 1, "alpha"),
        F("order_reference_number", 40, 8), F("capacity", 48, 1, "alpha"),
        F("intermarket_sweep_eligibility", 49, 1, "alpha"), F("cross_type", 50, 1, "alpha"),
        F("order_state", 51, 1, "alpha"), F("cl_ord_id", 52, 14, "alpha"),
        F("appendage_length", 66, 2))),
    Message("Order Canceled", "C", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("quantity", 13, 4),
        F("reason", 17, 1, "alpha"))),
    Message("Order Executed", "E", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("quantity", 13, 4),
        F("price", 17, 8, "price4"), F("liquidity_flag", 25, 1, "alpha"), F("match_number", 26, 8),
        F("appendage_length", 34, 2))),
    Message("AIQ Canceled", "D", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("decrement_shares", 13, 4),
        F("reason", 17, 1, "alpha"), F("quantity_prevented_from_trading", 18, 4),
        F("execution_price", 22, 8, "price4"), F("liquidity_flag", 30, 1, "alpha"),
        F("aiq_strategy", 31, 1, "alpha"))),
    Message("Broken Trade", "B", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("match_number", 13, 8),
        F("reason", 21, 1, "alpha"), F("cl_ord_id", 22, 14, "alpha"))),
    # The reject reason is a 2-byte number (OUCH 5.0 Appendix D codes 0x0001...), not two characters.
    Message("Order Rejected", "J", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("reason", 13, 2),
        F("cl_ord_id", 15, 14, "alpha"))),
    Message("Cancel Pending", "P", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4))),
    Message("Cancel Reject", "I", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4))),
    Message("Order Priority Update", "T", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("price", 13, 8, "price4"),
        F("display", 21, 1, "alpha"), F("order_reference_number", 22, 8))),
    Message("Order Modified", "M", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("side", 13, 1, "alpha"),
        F("quantity", 14, 4))),
    Message("Order Restated", "R", (
        _T, F("timestamp", 1, 8, "timestamp"), F("user_ref_num", 9, 4), F("reason", 13, 1, "alpha"),
        F("appendage_length", 14, 2))),
    Message("Account Query Response", "Q", (
        _T, F("timestamp", 1, 8, "timestamp"), F("next_user_ref_num", 9, 4))),
)}

ENTER_ORDER = INBOUND["O"]

SIDES = {"B": "buy", "S": "sell", "T": "sell short", "E": "sell short exempt"}
TIME_IN_FORCE = {"0": "day", "3": "IOC", "5": "GTX", "6": "GTT", "E": "after hours"}
DISPLAY = {"Y": "visible", "N": "hidden", "A": "attributable"}
CAPACITY = {"A": "agency", "P": "principal", "R": "riskless", "O": "other"}
INTERMARKET_SWEEP = {"Y": "eligible", "N": "not eligible"}
CROSS_TYPE = {"N": "continuous market", "O": "opening cross", "C": "closing cross", "H": "halt/IPO",
              "S": "supplemental", "R": "retail", "E": "extended life", "A": "after hours close"}

#: Largest quantity OUCH 5.0 accepts on an order (must be below 1,000,000).
MAX_QUANTITY = 999_999


def pack_inbound(type_: str, **values) -> bytes:
    try:
        return INBOUND[type_].pack(**values)
    except KeyError:
        raise ValueError(f"unknown OUCH 5.0 inbound message type {type_!r}") from None


def unpack_inbound(data: bytes) -> dict:
    return _unpack(INBOUND, data, "inbound")


def unpack_outbound(data: bytes) -> dict:
    return _unpack(OUTBOUND, data, "outbound")


def _unpack(table: dict[str, Message], data: bytes, what: str) -> dict:
    if not data:
        raise ValueError(f"empty OUCH {what} message")
    t = chr(data[0])
    if t not in table:
        raise ValueError(f"unknown OUCH 5.0 {what} message type {t!r}")
    m = table[t]
    values = m.unpack(data)
    if "appendage_length" in values:
        tail = data[m.length:]
        if len(tail) != values["appendage_length"]:
            raise ValueError(f"OUCH {t!r}: appendage length {values['appendage_length']} but "
                             f"{len(tail)} bytes follow")
        values["appendage"] = bytes(tail)
    elif len(data) != m.length:
        raise ValueError(f"OUCH {t!r} message is {m.length} bytes, got {len(data)}")
    return values


# -- Optional appendages ---------------------------------------------------------------------
#
# Messages with an ``appendage_length`` field are followed by that many bytes of TagValue
# elements. Each element is a length byte (counting the tag byte and the value), the tag byte,
# then the value in the field encoding of :mod:`tickwire.protocols.layout` (integers big-endian).


@dataclass(frozen=True)
class Appendage:
    """One OUCH 5.0 optional field: its tag, its name in this code base, its value's encoding."""

    tag: int
    name: str
    width: int
    type: str = "integer"

    def __post_init__(self) -> None:
        if not 1 <= self.tag <= 0xFF:
            raise ValueError(f"appendage {self.name!r}: tag must be 1..255, not {self.tag!r}")

    @property
    def field(self) -> Field:
        """The value as a layout field at offset 0 (for encoding and decoding)."""
        return Field(self.name, 0, self.width, self.type)

    @property
    def element_length(self) -> int:
        """Bytes of one TagValue element carrying this field: length byte, tag byte, value."""
        return 2 + self.width


#: OUCH 5.0 TagValue optional fields (specification appendix "Optional Appendages"): tag -> field.
APPENDAGE_TAGS: dict[int, Appendage] = {a.tag: a for a in (
    Appendage(1, "secondary_ord_ref_num", 8),
    Appendage(2, "firm", 4, "alpha"),
    Appendage(3, "min_qty", 4),
    Appendage(4, "customer_type", 1, "alpha"),
    Appendage(5, "max_floor", 4),
    Appendage(6, "price_type", 1, "alpha"),
    Appendage(7, "peg_offset", 4, "signed_price4"),
    Appendage(9, "discretion_price", 8, "price4"),
    Appendage(10, "discretion_price_type", 1, "alpha"),
    Appendage(11, "discretion_peg_offset", 4, "signed_price4"),
    Appendage(12, "post_only", 1, "alpha"),
    Appendage(13, "random_reserves", 4),
    Appendage(14, "route", 4, "alpha"),
    Appendage(15, "expire_time", 4),
    Appendage(16, "trade_now", 1, "alpha"),
    Appendage(17, "handle_inst", 1, "alpha"),
    Appendage(18, "bbo_weight_indicator", 1, "alpha"),
    Appendage(22, "display_quantity", 4),
    Appendage(23, "display_price", 8, "price4"),
    Appendage(24, "group_id", 2),
    Appendage(25, "shares_located", 1, "alpha"),
    Appendage(26, "locate_broker", 4, "alpha"),
    Appendage(27, "side", 1, "alpha"),
    Appendage(28, "user_ref_idx", 1),
)}

APPENDAGES_BY_NAME: dict[str, Appendage] = {a.name: a for a in APPENDAGE_TAGS.values()}

#: Messages that may carry appendages: those whose layout ends in ``appendage_length``.
WITH_APPENDAGE_IN = frozenset(t for t, m in INBOUND.items() if "appendage_length" in m)
WITH_APPENDAGE_OUT = frozenset(t for t, m in OUTBOUND.items() if "appendage_length" in m)


def pack_appendages(values: Iterable[tuple[str, Any]]) -> bytes:
    """TagValue elements for ``(name, value)`` pairs, in the order given."""
    out = bytearray()
    for name, value in values:
        try:
            a = APPENDAGES_BY_NAME[name]
        except KeyError:
            raise LayoutError(f"unknown OUCH 5.0 appendage {name!r}") from None
        out += bytes((1 + a.width, a.tag)) + a.field.encode(value)
    return bytes(out)


def unpack_appendages(data: bytes) -> list[tuple[str, Any]]:
    """``(name, value)`` pairs of a TagValue block; raises :class:`LayoutError` for an element
    that runs past the block, an unknown tag, or a length byte that disagrees with the tag."""
    out = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0 or pos + 1 + length > len(data):
            raise LayoutError(f"appendage element at byte {pos}: length {length} runs past the "
                              f"{len(data)}-byte block")
        tag = data[pos + 1]
        if tag not in APPENDAGE_TAGS:
            raise LayoutError(f"appendage element at byte {pos}: unknown tag {tag}")
        a = APPENDAGE_TAGS[tag]
        if length != 1 + a.width:
            raise LayoutError(f"appendage {a.name!r} (tag {tag}): length byte {length}, "
                              f"expected {1 + a.width}")
        out.append((a.name, a.field.decode(data[pos + 2:pos + 2 + a.width])))
        pos += 1 + length
    return out


def pack_message(table: Mapping[str, Message], type_: str, appendages: Iterable[tuple[str, Any]] = (),
                 **values: Any) -> bytes:
    """A message of ``table`` (:data:`INBOUND` or :data:`OUTBOUND`) with its TagValue
    appendages and ``appendage_length`` filled in."""
    if type_ not in table:
        raise LayoutError(f"unknown OUCH 5.0 message type {type_!r}")
    m = table[type_]
    tail = pack_appendages(appendages)
    if "appendage_length" in m:
        if "appendage_length" in values:
            raise LayoutError(f"{m.name}: appendage_length is computed, do not pass it")
        values["appendage_length"] = len(tail)
    elif tail:
        raise LayoutError(f"{m.name} ({type_!r}) carries no appendages")
    return m.pack(**values) + tail


#: Order record field (:data:`tickwire.hdl.order.order_layout`) -> OUCH field, where they differ.
_RECORD_NAMES = {"symbol": "stock"}


def pack_order(record: Mapping[str, int], appendage_names: Iterable[str]) -> bytes:
    """The OUCH 5.0 message the card sends for an order record (the integers of
    ``tickwire.hdl.order.order_layout``: ``action`` and single ASCII fields as byte values,
    ``stock`` and ``cl_ord_id`` with the first character in the low byte). ``appendage_names``
    are the appendages present, in the order the card writes them; Cancel and Modify carry none.
    This is the reference the gateware encoder is checked against."""
    type_ = chr(record["action"])
    if type_ not in ("O", "U", "X", "M"):
        raise LayoutError(f"order action must be 'O', 'U', 'X' or 'M', not {type_!r}")
    m = INBOUND[type_]
    values: dict[str, Any] = {}
    for f in m.fields:
        if f.name in ("message_type", "appendage_length"):
            continue
        raw = record[_RECORD_NAMES.get(f.name, f.name)]
        values[f.name] = raw.to_bytes(f.width, "little") if f.type == "alpha" else raw
    appendages = []
    if type_ in WITH_APPENDAGE_IN:
        for name in appendage_names:
            a = APPENDAGES_BY_NAME[name]
            raw = record[name]
            if a.type == "alpha":
                value: Any = raw.to_bytes(a.width, "little")
            elif a.type in ("signed", "signed_price4"):
                value = raw - (1 << 32) if raw >> 31 else raw  # the record holds 32-bit two's complement
            else:
                value = raw
            appendages.append((name, value))
    return pack_message(INBOUND, type_, appendages, **values)


# -- Receiving: what the card's inbound parser reports ----------------------------------------


class ParseError(IntEnum):
    """Why the inbound parser flagged a SoupBinTCP packet from the exchange (record ``error``)."""

    NONE = 0
    PACKET_LENGTH = 1       #: SoupBinTCP length 0, or wrong for a fixed-size packet type
    PACKET_TYPE = 2         #: not a SoupBinTCP server packet type
    MESSAGE_TYPE = 3        #: Sequenced Data carrying an unknown OUCH message type (or none)
    MESSAGE_LENGTH = 4      #: OUCH message shorter (truncated) or longer than its layout
    APPENDAGE_LENGTH = 5    #: Appendage Length disagrees with the bytes that follow


class ExposureKind(IntEnum):
    """What an exchange message does to an order's exposure (``exposure_layout.kind``)."""

    NONE = 0
    ACCEPTED = 1      #: Order Accepted: the order rests with ``quantity`` at ``price``
    REPLACED = 2      #: Order Replaced: ``orig_user_ref_num`` became ``user_ref_num``
    CANCELED = 3      #: Order Canceled / AIQ Canceled: ``quantity`` shares taken off
    EXECUTED = 4      #: Order Executed: ``quantity`` shares filled at ``price``
    REJECTED = 5      #: Order Rejected: the order never rested
    BROKEN = 6        #: Broken Trade: an execution of the order was broken
    MODIFIED = 7      #: Order Modified: the order now has ``quantity`` shares


#: OUCH outbound message type -> exposure kind (types not listed change no exposure).
EXPOSURE_KINDS: dict[str, ExposureKind] = {
    "A": ExposureKind.ACCEPTED, "U": ExposureKind.REPLACED, "C": ExposureKind.CANCELED,
    "D": ExposureKind.CANCELED, "E": ExposureKind.EXECUTED, "J": ExposureKind.REJECTED,
    "B": ExposureKind.BROKEN, "M": ExposureKind.MODIFIED,
}

#: Outbound fields reported under another name, so one record field means one thing:
#: (message type, field) -> record field.
RECORD_ALIASES: dict[tuple[str, str], str] = {
    ("D", "decrement_shares"): "quantity",
    ("D", "execution_price"): "price",
}

#: Fixed payload length of the SoupBinTCP server packets the parser checks (Debug is free-form).
SERVER_PAYLOAD_LENGTHS = {"A": 30, "J": 1, "H": 0, "Z": 0}


def check_server_packet(packet_type: str, payload: bytes) -> ParseError:
    """The verdict the inbound parser gives a SoupBinTCP packet (type + payload) from the
    exchange; the reference for :class:`tickwire.hdl.ouch_inbound.OuchParser`."""
    if packet_type == "+":
        return ParseError.NONE
    if packet_type in SERVER_PAYLOAD_LENGTHS:
        ok = len(payload) == SERVER_PAYLOAD_LENGTHS[packet_type]
        return ParseError.NONE if ok else ParseError.PACKET_LENGTH
    if packet_type != "S":
        return ParseError.PACKET_TYPE
    if not payload or chr(payload[0]) not in OUTBOUND:
        return ParseError.MESSAGE_TYPE
    m = OUTBOUND[chr(payload[0])]
    if len(payload) < m.length:
        return ParseError.MESSAGE_LENGTH
    if "appendage_length" not in m:
        return ParseError.NONE if len(payload) == m.length else ParseError.MESSAGE_LENGTH
    declared = m.unpack(payload)["appendage_length"]
    return ParseError.NONE if declared == len(payload) - m.length else ParseError.APPENDAGE_LENGTH
