"""The decoded-record mapping of protocols/itch.py: coverage of every ITCH field, widths, the
record table in docs/pipeline-contract.md, and record_to_fields round trips for every type."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.protocols import itch
from tickwire.sim.model import itch_decode, record_values

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "pipeline-contract.md"


def test_every_itch_field_is_in_exactly_one_record_field():
    for type_, message in itch.MESSAGES.items():
        holders = {f.name: [r for r, sources in itch.RECORD_SOURCES.items() if sources.get(type_) == f.name]
                   for f in message.fields}
        assert all(len(h) == 1 for h in holders.values()), (type_, holders)
        assert list(itch.RECORD_TARGETS[type_]) == list(message.field_names)


def test_record_sources_name_real_fields_that_fit():
    assert set(itch.RECORD_SOURCES) == set(itch.RECORD_FIELDS) - set(itch.SIDEBAND_FIELDS)
    for name, sources in itch.RECORD_SOURCES.items():
        kinds = set()
        for type_, field_name in sources.items():
            f = itch.MESSAGES[type_][field_name]  # KeyError: no such type or field
            assert 8 * f.width <= itch.RECORD_FIELDS[name], (name, type_, field_name)
            kinds.add(f.type == "alpha")
        assert len(kinds) == 1, f"{name} holds alpha and integer fields"
        assert (name in itch.ALPHA_RECORD_FIELDS) == kinds.pop()


def test_header_and_named_fields():
    for name in itch.HEADER_FIELDS:
        assert itch.RECORD_SOURCES[name] == {t: name for t in itch.MESSAGES}
    assert itch.RECORD_SOURCES["order_reference_number"]["U"] == "original_order_reference_number"
    assert itch.RECORD_SOURCES["shares"]["Q"] == "shares" and itch.RECORD_FIELDS["shares"] == 64
    assert itch.RECORD_FIELDS["timestamp"] == 48
    assert sum(itch.RECORD_FIELDS.values()) == 1010   # 993 + tracked (1) + tracked_slot (16)


def test_contract_holds_the_record_table():
    text = CONTRACT.read_text()
    start = text.index("<!-- record table:")
    table = text[text.index("\n", start) + 1:text.index("<!-- end of record table -->")]
    assert table == itch.record_markdown(), \
        "docs/pipeline-contract.md record table is stale: paste tickwire.protocols.itch.record_markdown()"


ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def field_values(message) -> st.SearchStrategy[dict]:
    strategies = {}
    for f in message.fields[1:]:
        if f.type == "alpha":
            strategies[f.name] = st.text(alphabet=ASCII, max_size=f.width)
        else:
            strategies[f.name] = st.integers(0, (1 << 8 * f.width) - 1)
    return st.fixed_dictionaries(strategies)


@pytest.mark.parametrize("type_", sorted(itch.MESSAGES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_record_to_fields_round_trip(type_, data):
    values = data.draw(field_values(itch.MESSAGES[type_]))
    record = itch_decode(itch.pack(type_, **values))
    want = {"type": type_, **{n: v.rstrip(" ") if isinstance(v, str) else v for n, v in values.items()}}
    assert itch.record_to_fields(record) == want
    # the same from the gateware's integers, whatever sequence number rides along
    assert itch.record_to_fields(record_values(record, sequence_number=5)) == want


def test_record_to_fields_keeps_any_byte_and_strips_only_padding():
    record = record_values(itch_decode(itch.pack("A", stock=b" A\x80", buy_sell_indicator="")))
    fields = itch.record_to_fields(record)
    assert fields["stock"] == " A\ufffd" and fields["buy_sell_indicator"] == ""
    assert list(fields) == ["type"] + list(itch.MESSAGES["A"].field_names[1:])


def test_record_to_fields_rejects_bad_records():
    record = record_values(itch_decode(itch.pack("H", reason="LUDP")))
    with pytest.raises(ValueError, match="unknown ITCH 5.0 message type 'z'"):
        itch.record_to_fields({**record, "message_type": ord("z")})
    with pytest.raises(ValueError, match="does not fit 4 bytes"):
        itch.record_to_fields({**record, "message_type": ord("K"), "value_1": 1 << 32})
    with pytest.raises(ValueError, match="wider than 2 characters"):
        itch.record_to_fields({**record, "message_type": ord("R")})  # text holds 4 characters
