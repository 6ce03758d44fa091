"""NASDAQ TotalView-ITCH 5.0 message layouts (source: the official specification, shared/specs)."""

from __future__ import annotations

from typing import Any, Mapping

from .layout import F, Message

#: Every message starts with this header; the stock locate is at the same place in all of them.
_HEADER = (
    F("message_type", 0, 1, "alpha"),
    F("stock_locate", 1, 2),
    F("tracking_number", 3, 2),
    F("timestamp", 5, 6, "timestamp"),
)


def _msg(type_: str, name: str, *body) -> Message:
    return Message(name, type_, _HEADER + tuple(body))


MESSAGES: dict[str, Message] = {m.type: m for m in (
    _msg("S", "System Event", F("event_code", 11, 1, "alpha")),
    _msg("R", "Stock Directory",
         F("stock", 11, 8, "alpha"), F("market_category", 19, 1, "alpha"),
         F("financial_status_indicator", 20, 1, "alpha"), F("round_lot_size", 21, 4),
         F("round_lots_only", 25, 1, "alpha"), F("issue_classification", 26, 1, "alpha"),
         F("issue_sub_type", 27, 2, "alpha"), F("authenticity", 29, 1, "alpha"),
         F("short_sale_threshold_indicator", 30, 1, "alpha"), F("ipo_flag", 31, 1, "alpha"),
         F("luld_reference_price_tier", 32, 1, "alpha"), F("etp_flag", 33, 1, "alpha"),
         F("etp_leverage_factor", 34, 4), F("inverse_indicator", 38, 1, "alpha")),
    _msg("H", "Stock Trading Action",
         F("stock", 11, 8, "alpha"), F("trading_state", 19, 1, "alpha"),
         F("reserved", 20, 1, "alpha"), F("reason", 21, 4, "alpha")),
    _msg("Y", "Reg SHO Short Sale Price Test Restricted Indicator",
         F("stock", 11, 8, "alpha"), F("reg_sho_action", 19, 1, "alpha")),
    _msg("L", "Market Participant Position",
         F("mpid", 11, 4, "alpha"), F("stock", 15, 8, "alpha"),
         F("primary_market_maker", 23, 1, "alpha"), F("market_maker_mode", 24, 1, "alpha"),
         F("market_participant_state", 25, 1, "alpha")),
    _msg("V", "MWCB Decline Level",
         F("level_1", 11, 8, "price8"), F("level_2", 19, 8, "price8"), F("level_3", 27, 8, "price8")),
    _msg("W", "MWCB Status", F("breached_level", 11, 1, "alpha")),
    _msg("K", "Quoting Period Update",
         F("stock", 11, 8, "alpha"), F("ipo_quotation_release_time", 19, 4),
         F("ipo_quotation_release_qualifier", 23, 1, "alpha"), F("ipo_price", 24, 4, "price4")),
    _msg("J", "LULD Auction Collar",
         F("stock", 11, 8, "alpha"), F("auction_collar_reference_price", 19, 4, "price4"),
         F("upper_auction_collar_price", 23, 4, "price4"), F("lower_auction_collar_price", 27, 4, "price4"),
         F("auction_collar_extension", 31, 4)),
    _msg("h", "Operational Halt",
         F("stock", 11, 8, "alpha"), F("market_code", 19, 1, "alpha"),
         F("operational_halt_action", 20, 1, "alpha")),
    _msg("A", "Add Order - No MPID Attribution",
         F("order_reference_number", 11, 8), F("buy_sell_indicator", 19, 1, "alpha"),
         F("shares", 20, 4), F("stock", 24, 8, "alpha"), F("price", 32, 4, "price4")),
    _msg("F", "Add Order with MPID Attribution",
         F("order_reference_number", 11, 8), F("buy_sell_indicator", 19, 1, "alpha"),
         F("shares", 20, 4), F("stock", 24, 8, "alpha"), F("price", 32, 4, "price4"),
         F("attribution", 36, 4, "alpha")),
    _msg("E", "Order Executed",
         F("order_reference_number", 11, 8), F("executed_shares", 19, 4), F("match_number", 23, 8)),
    _msg("C", "Order Executed With Price",
         F("order_reference_number", 11, 8), F("executed_shares", 19, 4), F("match_number", 23, 8),
         F("printable", 31, 1, "alpha"), F("execution_price", 32, 4, "price4")),
    _msg("X", "Order Cancel",
         F("order_reference_number", 11, 8), F("cancelled_shares", 19, 4)),
    _msg("D", "Order Delete", F("order_reference_number", 11, 8)),
    _msg("U", "Order Replace",
         F("original_order_reference_number", 11, 8), F("new_order_reference_number", 19, 8),
         F("shares", 27, 4), F("price", 31, 4, "price4")),
    _msg("P", "Trade (Non-Cross)",
         F("order_reference_number", 11, 8), F("buy_sell_indicator", 19, 1, "alpha"),
         F("shares", 20, 4), F("stock", 24, 8, "alpha"), F("price", 32, 4, "price4"),
         F("match_number", 36, 8)),
    _msg("Q", "Cross Trade",
         F("shares", 11, 8), F("stock", 19, 8, "alpha"), F("cross_price", 27, 4, "price4"),
         F("match_number", 31, 8), F("cross_type", 39, 1, "alpha")),
    _msg("B", "Broken Trade", F("match_number", 11, 8)),
    _msg("I", "Net Order Imbalance Indicator",
         F("paired_shares", 11, 8), F("imbalance_shares", 19, 8),
         F("imbalance_direction", 27, 1, "alpha"), F("stock", 28, 8, "alpha"),
         F("far_price", 36, 4, "price4"), F("near_price", 40, 4, "price4"),
         F("current_reference_price", 44, 4, "price4"), F("cross_type", 48, 1, "alpha"),
         F("price_variation_indicator", 49, 1, "alpha")),
    _msg("N", "Retail Price Improvement Indicator",
         F("stock", 11, 8, "alpha"), F("interest_flag", 19, 1, "alpha")),
    _msg("O", "Direct Listing with Capital Raise Price Discovery",
         F("stock", 11, 8, "alpha"), F("open_eligibility_status", 19, 1, "alpha"),
         F("minimum_allowable_price", 20, 4, "price4"), F("maximum_allowable_price", 24, 4, "price4"),
         F("near_execution_price", 28, 4, "price4"), F("near_execution_time", 32, 8),
         F("lower_price_range_collar", 40, 4, "price4"), F("upper_price_range_collar", 44, 4, "price4")),
)}

#: Message length by type, as the feed handler needs it for framing.
LENGTHS: dict[str, int] = {t: m.length for t, m in MESSAGES.items()}

#: The shortest and longest ITCH 5.0 messages.
MIN_LENGTH = min(LENGTHS.values())
MAX_LENGTH = max(LENGTHS.values())

#: Order-level types: the ones that add, execute, cancel, replace or delete a book order.
ORDER_TYPES = ("A", "F", "E", "C", "X", "D", "U")

#: The four header fields every message starts with, read into the record the same way for all.
HEADER_FIELDS = ("message_type", "stock_locate", "tracking_number", "timestamp")

#: The decoded-message record: field name -> width in bits. One record carries any of the 23
#: types. The header fields and the named fields (order_reference_number ... cross_type) keep one
#: meaning across the types that have them; the generic ones are filled per type in message
#: order: ``price``..``price_5`` the 4-byte prices, ``value_1``..``value_3`` the other integers
#: (I: the imbalance shares; V: the three 8-byte price levels), ``code_1``..``code_10`` the
#: one-character codes, ``text`` the one 2- or 4-character alpha field of H and R.
#: ``sequence_number`` is the MoldUDP64 sequence number of the message and ``recovered`` says it
#: filled a gap late; ``tracked`` and ``tracked_slot`` are the symbol directory's verdict on the
#: locate (tracked, and the slot the order book keeps it in) (:data:`SIDEBAND_FIELDS`: no ITCH
#: source; 0 out of the decoder).
#: Integers are unsigned; alpha fields keep the wire order, first character in bits [7:0]. A field
#: narrower than its record field sits in the low bits (integers zero-extended, alpha high bytes
#: 0); a record field the type does not use is 0.
RECORD_FIELDS: dict[str, int] = {
    "message_type": 8,
    "stock_locate": 16,
    "tracking_number": 16,
    "timestamp": 48,
    "order_reference_number": 64,
    "new_order_reference_number": 64,
    "buy_sell_indicator": 8,
    "shares": 64,
    "price": 32,
    "price_2": 32,
    "price_3": 32,
    "price_4": 32,
    "price_5": 32,
    "stock": 64,
    "match_number": 64,
    "attribution": 32,
    "printable": 8,
    "cross_type": 8,
    "value_1": 64,
    "value_2": 64,
    "value_3": 64,
    "text": 32,
    **{f"code_{n}": 8 for n in range(1, 11)},
    "sequence_number": 64,
    "recovered": 1,
    "tracked": 1,
    "tracked_slot": 16,
}

#: Record fields that come from the MoldUDP64 stage, not from the ITCH message.
SIDEBAND_FIELDS = ("sequence_number", "recovered", "tracked", "tracked_slot")


def _each(types: str, name: str) -> dict[str, str]:
    return {t: name for t in types}


#: Which ITCH field feeds which record field, per type: record field -> {type: ITCH field name}.
#: Every field of every type appears exactly once (tests/protocols/test_itch_record.py), so a
#: record gives back the whole message (:func:`record_to_fields`). ``hdl/itch.py`` and the
#: reference model (``sim/model.py``) both read this table.
RECORD_SOURCES: dict[str, dict[str, str]] = {
    **{name: _each("".join(MESSAGES), name) for name in HEADER_FIELDS},
    "order_reference_number": {**_each("AFECXDP", "order_reference_number"),
                               "U": "original_order_reference_number"},
    "new_order_reference_number": {"U": "new_order_reference_number"},
    "buy_sell_indicator": _each("AFP", "buy_sell_indicator"),
    "shares": {**_each("AFUPQ", "shares"), "E": "executed_shares", "C": "executed_shares",
               "X": "cancelled_shares", "I": "paired_shares"},
    "price": {**_each("AFUP", "price"), "C": "execution_price", "Q": "cross_price",
              "K": "ipo_price", "J": "auction_collar_reference_price", "I": "far_price",
              "O": "minimum_allowable_price"},
    "price_2": {"J": "upper_auction_collar_price", "I": "near_price", "O": "maximum_allowable_price"},
    "price_3": {"J": "lower_auction_collar_price", "I": "current_reference_price",
                "O": "near_execution_price"},
    "price_4": {"O": "lower_price_range_collar"},
    "price_5": {"O": "upper_price_range_collar"},
    "stock": _each("RHYLKJhAFPQINO", "stock"),
    "match_number": _each("ECPQB", "match_number"),
    "attribution": {"F": "attribution", "L": "mpid"},
    "printable": {"C": "printable"},
    "cross_type": _each("QI", "cross_type"),
    "value_1": {"R": "round_lot_size", "V": "level_1", "K": "ipo_quotation_release_time",
                "J": "auction_collar_extension", "I": "imbalance_shares", "O": "near_execution_time"},
    "value_2": {"R": "etp_leverage_factor", "V": "level_2"},
    "value_3": {"V": "level_3"},
    "text": {"H": "reason", "R": "issue_sub_type"},
    "code_1": {"S": "event_code", "R": "market_category", "H": "trading_state",
               "Y": "reg_sho_action", "L": "primary_market_maker", "W": "breached_level",
               "K": "ipo_quotation_release_qualifier", "h": "market_code",
               "I": "imbalance_direction", "N": "interest_flag", "O": "open_eligibility_status"},
    "code_2": {"R": "financial_status_indicator", "H": "reserved", "L": "market_maker_mode",
               "h": "operational_halt_action", "I": "price_variation_indicator"},
    "code_3": {"R": "round_lots_only", "L": "market_participant_state"},
    "code_4": {"R": "issue_classification"},
    "code_5": {"R": "authenticity"},
    "code_6": {"R": "short_sale_threshold_indicator"},
    "code_7": {"R": "ipo_flag"},
    "code_8": {"R": "luld_reference_price_tier"},
    "code_9": {"R": "etp_flag"},
    "code_10": {"R": "inverse_indicator"},
}

#: The inverse of :data:`RECORD_SOURCES`: type -> {ITCH field name: record field}, in message order.
RECORD_TARGETS: dict[str, dict[str, str]] = {
    t: {f.name: r for f in m.fields for r, sources in RECORD_SOURCES.items() if sources.get(t) == f.name}
    for t, m in MESSAGES.items()
}

#: Record fields that hold alpha (ASCII) fields; every other record field holds integers.
ALPHA_RECORD_FIELDS: frozenset[str] = frozenset(
    r for r, sources in RECORD_SOURCES.items()
    if any(MESSAGES[t][f].type == "alpha" for t, f in sources.items()))


def _record_bytes(value: int | str, name: str) -> bytes:
    """An alpha record field's bytes in wire order (from the gateware's integer or a str)."""
    if isinstance(value, str):
        return value.encode("latin-1")
    return int(value).to_bytes(RECORD_FIELDS[name] // 8, "little")


def record_to_fields(record: Mapping[str, int | str]) -> dict[str, Any]:
    """The ITCH fields of one decoded record, under the spec's names, in message order.

    Parameters
    ----------
    record
        Record field -> value: either the integers of the gateware's record (alpha fields first
        character in bits [7:0]) or the reference model's record (alpha fields as ``str``).
        :data:`SIDEBAND_FIELDS` and record fields the type does not use are ignored.

    Returns
    -------
    ``{"type": letter, "stock_locate": ..., ...}``: integers as on the wire (prices in 1/10000
    or 1/10^8, timestamps in ns since midnight), alpha fields with their space padding stripped.
    Raises ``ValueError`` for an unknown type or a value that does not fit its ITCH field.
    """
    type_ = _record_bytes(record["message_type"], "message_type").decode("latin-1")
    if type_ not in MESSAGES:
        raise ValueError(f"record of unknown ITCH 5.0 message type {type_!r}")
    out: dict[str, Any] = {"type": type_}
    for f in MESSAGES[type_].fields[1:]:
        slot = RECORD_TARGETS[type_][f.name]
        value = record[slot]
        if f.type == "alpha":
            raw = _record_bytes(value, slot)
            if any(raw[f.width:]):
                raise ValueError(f"{type_} {f.name}: record field {slot} {raw!r} is wider than "
                                 f"{f.width} characters")
            out[f.name] = raw[:f.width].decode("ascii", errors="replace").rstrip(" ")
        else:
            if not 0 <= int(value) < 1 << 8 * f.width:
                raise ValueError(f"{type_} {f.name}: record field {slot} = {value} does not fit "
                                 f"{f.width} bytes")
            out[f.name] = int(value)
    return out


def record_markdown() -> str:
    """The record table of docs/pipeline-contract.md (section "itch"), made from
    :data:`RECORD_FIELDS` and :data:`RECORD_SOURCES`; a test checks the page holds it."""
    rows = ["| record field | bits | ITCH field it holds, by type |", "|---|---|---|"]
    for name, width in RECORD_FIELDS.items():
        sources = RECORD_SOURCES.get(name, {})
        if name == "sequence_number":
            text = "the message's MoldUDP64 sequence number"
        elif name == "recovered":
            text = "1: the message filled an open gap late (a retransmission or the other line's copy)"
        elif name == "tracked":
            text = "symbols: 1 when the locate is tracked (0 out of itch)"
        elif name == "tracked_slot":
            text = "symbols: the tracked locate's order-book slot (0 out of itch)"
        elif len(sources) == len(MESSAGES) and all(f == name for f in sources.values()):
            text = f"all {len(MESSAGES)} types: {name}"
        else:
            by_field: dict[str, list[str]] = {}
            for t in MESSAGES:
                if t in sources:
                    by_field.setdefault(sources[t], []).append(t)
            text = "; ".join(f"{' '.join(types)}: {f}" for f, types in by_field.items())
        rows.append(f"| `{name}` | {width} | {text} |")
    rows.append(f"| | {sum(RECORD_FIELDS.values())} | total |")
    return "\n".join(rows) + "\n"


def pack(type_: str, **values) -> bytes:
    """Encode one ITCH message of ``type_``."""
    try:
        return MESSAGES[type_].pack(**values)
    except KeyError:
        raise ValueError(f"unknown ITCH 5.0 message type {type_!r}") from None


def unpack(data: bytes) -> dict:
    """Decode one ITCH message (its first byte gives the type)."""
    if not data:
        raise ValueError("empty ITCH message")
    t = chr(data[0])
    if t not in MESSAGES:
        raise ValueError(f"unknown ITCH 5.0 message type {t!r}")
    if len(data) != MESSAGES[t].length:
        raise ValueError(f"ITCH {t!r} message is {MESSAGES[t].length} bytes, got {len(data)}")
    return MESSAGES[t].unpack(data)
