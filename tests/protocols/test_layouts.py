"""Byte layouts of protocols/: lengths and offsets against the spec tables, round trips, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.protocols import itch, moldudp64, net, ouch, soupbintcp
from tickwire.protocols.layout import F, Field, LayoutError, Message, message_table
from tickwire.protocols.risk import RejectReason

# Message lengths as printed in the specifications (ITCH 5.0 sections 1.1-1.8, OUCH 5.0 sections
# 2 and 3), typed in here independently of the layout tables.
ITCH_LENGTHS = {"S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35,
                "h": 21, "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44,
                "Q": 40, "B": 19, "I": 50, "N": 20, "O": 48}
OUCH_INBOUND_LENGTHS = {"O": 47, "U": 40, "X": 9, "M": 10, "Q": 1}
OUCH_OUTBOUND_LENGTHS = {"S": 10, "A": 64, "U": 68, "C": 18, "D": 32, "E": 36, "B": 36, "J": 29,
                         "P": 13, "I": 13, "T": 30, "M": 18, "R": 16, "Q": 13}

# (offset, width) of the fields the skeleton pipeline reads or writes, from the spec tables.
ITCH_ORDER_FIELDS = {
    "A": {"order_reference_number": (11, 8), "buy_sell_indicator": (19, 1), "shares": (20, 4),
          "stock": (24, 8), "price": (32, 4)},
    "F": {"attribution": (36, 4), "price": (32, 4)},
    "E": {"executed_shares": (19, 4), "match_number": (23, 8)},
    "C": {"printable": (31, 1), "execution_price": (32, 4)},
    "X": {"cancelled_shares": (19, 4)},
    "D": {"order_reference_number": (11, 8)},
    "U": {"original_order_reference_number": (11, 8), "new_order_reference_number": (19, 8),
          "shares": (27, 4), "price": (31, 4)},
}
ENTER_ORDER_FIELDS = {"user_ref_num": (1, 4), "side": (5, 1), "quantity": (6, 4), "symbol": (10, 8),
                      "price": (18, 8), "time_in_force": (26, 1), "display": (27, 1),
                      "capacity": (28, 1), "intermarket_sweep_eligibility": (29, 1),
                      "cross_type": (30, 1), "cl_ord_id": (31, 14), "appendage_length": (45, 2)}

ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def alpha(width: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=ASCII, max_size=width)


def field_values(message: Message) -> st.SearchStrategy[dict]:
    """Any values that fit ``message``'s fields (the type field is left to ``pack``)."""
    strategies = {}
    for f in message.fields:
        if f.name in ("message_type", "packet_type"):
            continue
        if f.type == "alpha":
            strategies[f.name] = alpha(f.width)
        elif f.type in ("signed", "signed_price4"):
            strategies[f.name] = st.integers(-(1 << 8 * f.width - 1), (1 << 8 * f.width - 1) - 1)
        else:
            strategies[f.name] = st.integers(0, (1 << 8 * f.width) - 1)
    return st.fixed_dictionaries(strategies)


def expected_unpack(message: Message, values: dict) -> dict:
    out = {}
    for f in message.fields:
        v = values.get(f.name, message.type if f.name == "message_type" else None)
        out[f.name] = v.ljust(f.width) if f.type == "alpha" else v
    return out


def test_itch_has_the_23_message_types_with_spec_lengths():
    assert itch.LENGTHS == ITCH_LENGTHS
    assert (itch.MIN_LENGTH, itch.MAX_LENGTH) == (12, 50)


def test_ouch_lengths_match_spec():
    assert {t: m.length for t, m in ouch.INBOUND.items()} == OUCH_INBOUND_LENGTHS
    assert {t: m.length for t, m in ouch.OUTBOUND.items()} == OUCH_OUTBOUND_LENGTHS


@pytest.mark.parametrize("type_", sorted(ITCH_ORDER_FIELDS))
def test_itch_order_field_offsets(type_):
    for name, (offset, width) in ITCH_ORDER_FIELDS[type_].items():
        f = itch.MESSAGES[type_][name]
        assert (f.offset, f.width) == (offset, width), name


def test_itch_common_header():
    for m in itch.MESSAGES.values():
        assert [(f.name, f.offset, f.width) for f in m.fields[:4]] == [
            ("message_type", 0, 1), ("stock_locate", 1, 2), ("tracking_number", 3, 2),
            ("timestamp", 5, 6)]


def test_enter_order_offsets():
    for name, (offset, width) in ENTER_ORDER_FIELDS.items():
        f = ouch.ENTER_ORDER[name]
        assert (f.offset, f.width) == (offset, width), name


def test_order_rejected_reason_is_a_number():
    # OUCH 5.0 section 3.8: Reason is a 2-byte numeric code (Appendix D), e.g. 0x001F.
    m = ouch.OUTBOUND["J"]
    data = m.pack(timestamp=1, user_ref_num=7, reason=0x001F, cl_ord_id="X")
    assert data[13:15] == b"\x00\x1f"
    assert ouch.unpack_outbound(data)["reason"] == 0x001F


def test_field_names_are_snake_case_and_unique():
    tables = [itch.MESSAGES, ouch.INBOUND, ouch.OUTBOUND, soupbintcp.SERVER, soupbintcp.CLIENT]
    messages = [m for t in tables for m in t.values()]
    messages += [moldudp64.HEADER, soupbintcp.HEADER, net.ETHERNET, net.IPV4, net.UDP]
    for m in messages:
        names = m.field_names
        assert len(set(names)) == len(names), m.name
        for n in names:
            assert n == n.lower() and n.replace("_", "").isalnum() and not n.startswith("_"), n


@pytest.mark.parametrize("type_", sorted(itch.MESSAGES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_itch_round_trip(type_, data):
    m = itch.MESSAGES[type_]
    values = data.draw(field_values(m))
    packed = itch.pack(type_, **values)
    assert len(packed) == ITCH_LENGTHS[type_]
    assert packed[0:1] == type_.encode()
    assert itch.unpack(packed) == expected_unpack(m, values)


@pytest.mark.parametrize("direction,type_", [("in", t) for t in sorted(ouch.INBOUND)]
                         + [("out", t) for t in sorted(ouch.OUTBOUND)])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), appendage=st.binary(max_size=12))
def test_ouch_round_trip(direction, type_, data, appendage):
    m = (ouch.INBOUND if direction == "in" else ouch.OUTBOUND)[type_]
    values = data.draw(field_values(m))
    tail = b""
    if "appendage_length" in m:
        values["appendage_length"] = len(appendage)
        tail = appendage
    packed = m.pack(**values) + tail
    decoded = (ouch.unpack_inbound if direction == "in" else ouch.unpack_outbound)(packed)
    expected = expected_unpack(m, values)
    if tail or "appendage_length" in m:
        expected["appendage"] = tail
    assert decoded == expected


@settings(max_examples=50, deadline=None)
@given(session=alpha(10), sequence=st.integers(0, (1 << 64) - 1),
       messages=st.lists(st.binary(min_size=1, max_size=60), max_size=20))
def test_moldudp64_round_trip(session, sequence, messages):
    header, out = moldudp64.unpack(moldudp64.pack(session, sequence, messages))
    assert header == {"session": session.ljust(10), "sequence_number": sequence,
                      "message_count": len(messages)}
    assert out == messages


@settings(max_examples=50, deadline=None)
@given(packets=st.lists(st.tuples(st.sampled_from("+ULRO"), st.binary(max_size=40)), max_size=8),
       tail=st.binary(max_size=1))
def test_soupbintcp_round_trip(packets, tail):
    stream = b"".join(soupbintcp.frame(t, p) for t, p in packets)
    assert soupbintcp.unframe(stream + tail) == (packets, tail)


def test_itch_add_order_bytes_by_hand():
    data = itch.pack("A", stock_locate=1, tracking_number=2, timestamp=34_200_000_000_000,
                     order_reference_number=0x1122334455667788, buy_sell_indicator="S", shares=100,
                     stock="AAPL", price=1_899_600)
    assert data == bytes.fromhex(
        "41" "0001" "0002" "1f1aced9f000" "1122334455667788" "53" "00000064"
        "4141504c20202020" "001cfc50")


def test_net_headers():
    assert (net.ETHERNET.length, net.IPV4.length, net.UDP.length) == (14, 20, 8)
    assert net.UDP_PAYLOAD_OFFSET == 42
    assert net.IPV4["destination_address"].offset == 16 and net.IPV4["header_checksum"].offset == 10


def test_reject_reasons():
    """The codes are an interface (events, journal, host): they never move."""
    assert [(r.name, int(r)) for r in RejectReason] == [
        ("NONE", 0), ("KILL", 1), ("ZERO_QUANTITY", 2), ("MAX_QUANTITY", 3), ("MAX_NOTIONAL", 4),
        ("KILL_SESSION", 5), ("UNKNOWN_SESSION", 6), ("UNKNOWN_SLOT", 7), ("INVALID_ORDER", 8),
        ("SYMBOL_DISABLED", 9), ("SYMBOL_RESTRICTED", 10), ("NO_REFERENCE_PRICE", 11), ("PRICE_COLLAR", 12),
        ("POSITION_LONG", 13), ("POSITION_SHORT", 14), ("MAX_OPEN_ORDERS", 15), ("OPEN_NOTIONAL", 16),
        ("THROTTLE", 17), ("USER_REF_NUM", 18)]


# -- errors ------------------------------------------------------------------------------------

def test_pack_rejects_unknown_field():
    with pytest.raises(LayoutError, match="unknown fields"):
        itch.pack("D", order_ref=1)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(LayoutError, match="does not fit"):
        itch.pack("D", stock_locate=1 << 16)
    with pytest.raises(LayoutError, match="longer than"):
        itch.pack("A", stock="TOOLONGSYM")
    with pytest.raises(LayoutError, match="integer value expected"):
        itch.pack("A", shares="100")
    with pytest.raises(LayoutError, match="does not fit"):
        itch.pack("A", shares=-1)
    with pytest.raises(ValueError, match="unknown ITCH"):
        itch.pack("Z")


def test_unpack_rejects_bad_input():
    good = itch.pack("D")
    with pytest.raises(ValueError, match="empty"):
        itch.unpack(b"")
    with pytest.raises(ValueError, match="unknown ITCH"):
        itch.unpack(b"z" + good[1:])
    with pytest.raises(ValueError, match="19 bytes, got 18"):
        itch.unpack(good[:-1])
    with pytest.raises(ValueError, match="19 bytes, got 20"):
        itch.unpack(good + b"\x00")
    with pytest.raises(LayoutError, match="need 19"):
        itch.MESSAGES["D"].unpack(good[:-1])


def test_ouch_unpack_rejects_bad_input():
    order = ouch.ENTER_ORDER.pack(user_ref_num=1, appendage_length=2)
    with pytest.raises(ValueError, match="appendage length 2 but 0"):
        ouch.unpack_inbound(order)
    assert ouch.unpack_inbound(order + b"\x01\x02")["appendage"] == b"\x01\x02"
    with pytest.raises(ValueError, match="unknown OUCH 5.0 inbound"):
        ouch.unpack_inbound(b"Z" + order[1:])
    with pytest.raises(ValueError, match="empty"):
        ouch.unpack_outbound(b"")
    with pytest.raises(ValueError, match="is 18 bytes, got 19"):
        ouch.unpack_outbound(ouch.OUTBOUND["C"].pack() + b"x")
    with pytest.raises(ValueError, match="unknown OUCH 5.0 inbound"):
        ouch.pack_inbound("Z")


def test_moldudp64_unpack_rejects_truncated_blocks():
    packet = moldudp64.pack("S", 1, [b"abc", b"defg"])
    with pytest.raises(ValueError, match="block 1"):
        moldudp64.unpack(packet[:-1])
    with pytest.raises(ValueError, match="block 1 length"):
        moldudp64.unpack(packet[:20 + 5 + 1])
    with pytest.raises(LayoutError):
        moldudp64.unpack(packet[:19])


def test_soupbintcp_errors():
    with pytest.raises(ValueError, match="one character"):
        soupbintcp.frame("UU")
    with pytest.raises(ValueError, match="length 0"):
        soupbintcp.unframe(b"\x00\x00")


def test_layout_definition_errors():
    with pytest.raises(ValueError, match="type must be one of"):
        Field("x", 0, 1, "float")
    with pytest.raises(ValueError, match="gap or overlap"):
        Message("bad", "", (F("a", 0, 1), F("b", 2, 1)))
    with pytest.raises(ValueError, match="declared length"):
        Message("bad", "", (F("a", 0, 1),), length=3)
    with pytest.raises(KeyError):
        itch.MESSAGES["A"]["no_such_field"]
    table = message_table(itch.MESSAGES)
    assert table["A"]["length"] == 36 and table["A"]["fields"][4]["name"] == "order_reference_number"
