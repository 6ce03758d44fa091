"""OUCH 5.0 TagValue appendages and order/parse helpers of protocols/ouch.py: the tag table
against the specification's appendix (typed in here independently), hand-built byte vectors,
round trips, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickwire.protocols import ouch, soupbintcp
from tickwire.protocols.layout import LayoutError
from tickwire.protocols.ouch import ParseError

# OUCH 5.0 "Optional Appendages": tag -> value length in bytes, as printed in the specification.
SPEC_TAG_LENGTHS = {1: 8, 2: 4, 3: 4, 4: 1, 5: 4, 6: 1, 7: 4, 9: 8, 10: 1, 11: 4, 12: 1, 13: 4,
                    14: 4, 15: 4, 16: 1, 17: 1, 18: 1, 22: 4, 23: 8, 24: 2, 25: 1, 26: 4, 27: 1, 28: 1}
# The appendages the card's order record carries, by the specification's tag.
ORDER_APPENDAGE_TAGS = {"min_qty": 3, "max_floor": 5, "price_type": 6, "peg_offset": 7, "discretion_price": 9,
                        "discretion_price_type": 10, "discretion_peg_offset": 11, "post_only": 12}


def test_tag_table_matches_spec():
    assert {t: a.width for t, a in ouch.APPENDAGE_TAGS.items()} == SPEC_TAG_LENGTHS
    for name, tag in ORDER_APPENDAGE_TAGS.items():
        assert ouch.APPENDAGES_BY_NAME[name].tag == tag
    assert ouch.APPENDAGES_BY_NAME["peg_offset"].type == "signed_price4"
    assert ouch.APPENDAGES_BY_NAME["discretion_price"].type == "price4"


def test_known_bytes():
    """Length byte (tag + value), tag, big-endian value; a negative peg offset in two's complement."""
    block = ouch.pack_appendages([("min_qty", 100), ("peg_offset", -5), ("post_only", "Y"),
                                  ("discretion_price", 1_234_500)])
    assert block == bytes.fromhex("05 03 00000064" "05 07 fffffffb" "02 0c 59" "09 09 000000000012d644")
    assert ouch.unpack_appendages(block) == [("min_qty", 100), ("peg_offset", -5), ("post_only", "Y"),
                                             ("discretion_price", 1_234_500)]


@given(st.lists(st.sampled_from(sorted(ouch.APPENDAGES_BY_NAME)), max_size=10), st.data())
def test_round_trip(names, data):
    values = []
    for name in names:
        a = ouch.APPENDAGES_BY_NAME[name]
        if a.type == "alpha":
            v = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=a.width,
                                  max_size=a.width))
        elif a.type == "signed_price4":
            v = data.draw(st.integers(-(1 << 8 * a.width - 1), (1 << 8 * a.width - 1) - 1))
        else:
            v = data.draw(st.integers(0, (1 << 8 * a.width) - 1))
        values.append((name, v))
    block = ouch.pack_appendages(values)
    assert len(block) == sum(ouch.APPENDAGES_BY_NAME[n].element_length for n in names)
    assert ouch.unpack_appendages(block) == values


@pytest.mark.parametrize("block,match", [
    (bytes.fromhex("05 03 000000"), "runs past"),
    (bytes.fromhex("00"), "runs past"),
    (bytes.fromhex("02 08 00"), "unknown tag 8"),
    (bytes.fromhex("04 03 000000"), "length byte 4, expected 5"),
])
def test_bad_blocks(block, match):
    with pytest.raises(LayoutError, match=match):
        ouch.unpack_appendages(block)


def test_pack_message_fills_appendage_length():
    message = ouch.pack_message(ouch.INBOUND, "O", [("max_floor", 200)], user_ref_num=7, side="B",
                                quantity=1000, symbol="AAPL", price=1_500_000)
    assert len(message) == 47 + 6
    assert message[45:47] == b"\x00\x06" and message[47:] == bytes.fromhex("05 05 000000c8")
    decoded = ouch.unpack_inbound(message)
    assert decoded["appendage_length"] == 6 and ouch.unpack_appendages(decoded["appendage"]) == [("max_floor", 200)]
    with pytest.raises(LayoutError, match="carries no appendages"):
        ouch.pack_message(ouch.INBOUND, "X", [("min_qty", 1)], user_ref_num=1)
    with pytest.raises(LayoutError, match="computed"):
        ouch.pack_message(ouch.INBOUND, "O", appendage_length=3)
    with pytest.raises(LayoutError, match="unknown OUCH 5.0 appendage"):
        ouch.pack_appendages([("no_such", 1)])


def _record(**kw):
    base = {"action": ord("O"), "user_ref_num": 0x01020304, "orig_user_ref_num": 9, "side": ord("B"),
            "quantity": 300, "stock": int.from_bytes(b"MSFT    ", "little"), "price": 4_100_000,
            "time_in_force": ord("0"), "display": ord("Y"), "capacity": ord("A"),
            "intermarket_sweep_eligibility": ord("N"), "cross_type": ord("N"),
            "cl_ord_id": int.from_bytes(b"ABC-1         ", "little"), "min_qty": 100, "max_floor": 0,
            "price_type": ord("L"), "peg_offset": (-25) & 0xFFFFFFFF, "discretion_price": 0,
            "discretion_price_type": ord("L"), "discretion_peg_offset": 0, "post_only": ord("Y")}
    base.update(kw)
    return base


def test_pack_order_each_action():
    """The card's order record to OUCH bytes, checked field by field against the spec offsets."""
    enter = ouch.pack_order(_record(), ["min_qty", "peg_offset"])
    assert enter[0:1] == b"O" and enter[1:5] == bytes.fromhex("01020304") and enter[5:6] == b"B"
    assert enter[10:18] == b"MSFT    " and enter[18:26] == (4_100_000).to_bytes(8, "big")
    assert enter[31:45] == b"ABC-1         " and enter[45:47] == b"\x00\x0c"
    assert enter[47:] == bytes.fromhex("05 03 00000064" "05 07 ffffffe7")
    replace = ouch.pack_order(_record(action=ord("U")), ["post_only"])
    assert replace[:9] == b"U" + (9).to_bytes(4, "big") + bytes.fromhex("01020304")
    assert replace[38:40] == b"\x00\x03" and replace[40:] == bytes.fromhex("02 0c 59")
    cancel = ouch.pack_order(_record(action=ord("X")), ["min_qty"])  # no appendage on Cancel
    assert cancel == b"X" + bytes.fromhex("01020304") + (300).to_bytes(4, "big")
    modify = ouch.pack_order(_record(action=ord("M"), side=ord("S")), [])
    assert modify == b"M" + bytes.fromhex("01020304") + b"S" + (300).to_bytes(4, "big")
    with pytest.raises(LayoutError, match="action must be"):
        ouch.pack_order(_record(action=ord("Q")), [])


@pytest.mark.parametrize("packet_type,payload,error", [
    ("H", b"", ParseError.NONE), ("Z", b"", ParseError.NONE), ("+", b"anything", ParseError.NONE),
    ("A", bytes(30), ParseError.NONE), ("A", bytes(31), ParseError.PACKET_LENGTH),
    ("J", b"A", ParseError.NONE), ("J", b"", ParseError.PACKET_LENGTH), ("H", b"x", ParseError.PACKET_LENGTH),
    ("U", b"O", ParseError.PACKET_TYPE), ("S", b"", ParseError.MESSAGE_TYPE), ("S", b"X", ParseError.MESSAGE_TYPE),
    ("S", ouch.OUTBOUND["C"].pack(), ParseError.NONE),
    ("S", ouch.OUTBOUND["C"].pack()[:-1], ParseError.MESSAGE_LENGTH),
    ("S", ouch.OUTBOUND["C"].pack() + b"\x00", ParseError.MESSAGE_LENGTH),
    ("S", ouch.pack_message(ouch.OUTBOUND, "E", [("min_qty", 1)]), ParseError.NONE),
    ("S", ouch.pack_message(ouch.OUTBOUND, "E", [("min_qty", 1)])[:-1], ParseError.APPENDAGE_LENGTH),
    ("S", ouch.OUTBOUND["E"].pack()[:-2], ParseError.MESSAGE_LENGTH),
])
def test_check_server_packet(packet_type, payload, error):
    assert ouch.check_server_packet(packet_type, payload) == error
    if packet_type in ("H", "Z", "+", "A", "J", "S") and error == ParseError.NONE:
        assert soupbintcp.unframe(soupbintcp.frame(packet_type, payload))[0] == [(packet_type, payload)]
