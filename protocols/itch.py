"""NASDAQ TotalView-ITCH 5.0 message layouts (source: the official specification, shared/specs)."""

from __future__ import annotations

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

#: Types whose fields the skeleton gateware decodes (order-level book events).
ORDER_TYPES = ("A", "F", "E", "C", "X", "D", "U")

#: Field names of the decoded-message record, with the ITCH field each one is read from per type.
#: One record serves all order-level types: ``shares`` is the order's shares (A, F, U), the
#: executed shares (E, C) or the cancelled shares (X); ``price`` is the limit price (A, F, U) or
#: the execution price (C).
RECORD_SOURCES: dict[str, dict[str, str]] = {
    "order_reference_number": {"A": "order_reference_number", "F": "order_reference_number",
                               "E": "order_reference_number", "C": "order_reference_number",
                               "X": "order_reference_number", "D": "order_reference_number",
                               "U": "original_order_reference_number"},
    "new_order_reference_number": {"U": "new_order_reference_number"},
    "buy_sell_indicator": {"A": "buy_sell_indicator", "F": "buy_sell_indicator"},
    "shares": {"A": "shares", "F": "shares", "E": "executed_shares", "C": "executed_shares",
               "X": "cancelled_shares", "U": "shares"},
    "price": {"A": "price", "F": "price", "C": "execution_price", "U": "price"},
    "stock": {"A": "stock", "F": "stock"},
    "match_number": {"E": "match_number", "C": "match_number"},
    "attribution": {"F": "attribution"},
    "printable": {"C": "printable"},
}


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
