"""NASDAQ OUCH 5.0 message layouts: inbound (client to exchange) and outbound (exchange to client)."""

from __future__ import annotations

from .layout import F, Message

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
