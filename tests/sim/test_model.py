"""sim/model.py against hand-worked examples from docs/pipeline-contract.md, stage by stage."""

from __future__ import annotations

import typing

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tickwire.protocols import itch, moldudp64, ouch, soupbintcp
from tickwire.protocols.net import ETHERNET_HEADER_LENGTH, IPV4, ipv4_checksum
from tickwire.protocols.risk import RejectReason
from tickwire.sim.defaults import DEFAULT_FEED, DEFAULT_REGISTERS
from tickwire.sim.feed import build_feed, udp_frame
from tickwire.protocols.risk import VERDICT_COUNTERS
from tickwire.protocols.strategy import RuleKind
from tickwire.sim.model import (
    COUNTER_NAMES, Delivered, GapEvent, ItchModel, MacRxModel, MacTxModel, MarketDataModel, MoldUdp64Model,
    NetRxModel, NetTxModel, OrderEntryModel, OuchStage, PipelineModel, Record, RegisterFile, RiskStage,
    TriggerModel, cl_ord_id, fcs, itch_decode, order_values, record_values, with_fcs,
)
from tickwire.sim.risk_model import BookTop

GROUP_MAC = "01:00:5e:36:0c:6f"  # 233.54.12.111 -> 01:00:5e + 0x360c6f
FEED = dict(src_mac="02:00:00:00:00:10", dst_mac=GROUP_MAC, src_ip="10.0.0.1",
            dst_ip="233.54.12.111", src_port=26400, dst_port=26400)
AAPL = "AAPL    "


def feed_frame(payload: bytes, **changes) -> bytes:
    return udp_frame(payload, **{**FEED, **changes})


def with_ip(frame: bytes, *, checksum: int | None = None, **fields) -> bytes:
    """``frame`` with IPv4 header fields replaced and the header checksum redone (or ``checksum``)."""
    start = ETHERNET_HEADER_LENGTH
    values = {**IPV4.unpack(frame[start:start + 20]), **fields, "header_checksum": 0}
    header = IPV4.pack(**values)
    header = IPV4.pack(**{**values, "header_checksum":
                          ipv4_checksum(header) if checksum is None else checksum})
    return frame[:start] + header + frame[start + 20:]


def add_order(side="S", price=1_899_600, shares=300, locate=1, type_="A", stock="AAPL", **extra):
    return itch.pack(type_, stock_locate=locate, tracking_number=0, timestamp=34_200_000_000_000,
                     order_reference_number=42, buy_sell_indicator=side, shares=shares,
                     stock=stock, price=price, **extra)


# -- mac_rx --------------------------------------------------------------------------------

def test_fcs_is_little_endian_crc32():
    assert fcs(b"123456789") == bytes.fromhex("2639f4cb")  # CRC-32 check value 0xCBF43926


def test_mac_rx_accepts_good_frames_and_strips_fcs():
    mac = MacRxModel()
    frame = bytes(range(60))
    assert mac.process(with_fcs(frame)) == frame
    assert mac.process(with_fcs(bytes(1532))) == bytes(1532)  # 1536 with FCS: the largest
    assert mac.counters == {"mac_rx.frames_ok": 2, "mac_rx.bad_fcs": 0, "mac_rx.runt": 0,
                            "mac_rx.oversize": 0, "mac_rx.overflow": 0}


def test_mac_rx_drops():
    mac = MacRxModel()
    good = with_fcs(bytes(range(60)))
    assert mac.process(good[:-1] + bytes([good[-1] ^ 1])) is None
    assert mac.process(good, error=True) is None
    assert mac.process(with_fcs(bytes(59))) is None        # 63 bytes with FCS
    assert mac.process(with_fcs(bytes(1533))) is None      # 1537 bytes with FCS
    assert mac.process(b"") is None
    assert mac.counters == {"mac_rx.frames_ok": 0, "mac_rx.bad_fcs": 2, "mac_rx.runt": 2,
                            "mac_rx.oversize": 1, "mac_rx.overflow": 0}


# -- net_rx --------------------------------------------------------------------------------

def net_rx_drop(frame: bytes) -> str | None:
    model = NetRxModel()
    payload = model.process(frame)
    dropped = [k for k, v in model.counters.items() if v and k != "net_rx.frames_accepted"]
    assert len(dropped) == (payload is None)
    return dropped[0] if dropped else None


def test_net_rx_accepts_and_strips_padding():
    model = NetRxModel()
    assert model.process(feed_frame(b"hello")) == b"hello"            # 47 bytes padded to 60
    assert model.process(feed_frame(bytes(300))) == bytes(300)
    # unicast to the card's own MAC, still sent to the group address
    assert model.process(feed_frame(b"x", dst_mac=DEFAULT_REGISTERS["net_rx.mac_address"])) == b"x"
    # DF is not a fragment
    assert model.process(with_ip(feed_frame(b"y"), flags_fragment_offset=0x4000)) == b"y"
    assert model.counters["net_rx.frames_accepted"] == 4


@pytest.mark.parametrize("frame,counter", [
    (feed_frame(b"x", dst_mac="01:00:5e:36:0c:70"), "net_rx.drop_mac"),
    (feed_frame(b"x", dst_mac="ff:ff:ff:ff:ff:ff"), "net_rx.drop_mac"),
    (feed_frame(b"x")[:12] + b"\x86\xdd" + feed_frame(b"x")[14:], "net_rx.drop_ethertype"),
    (with_ip(feed_frame(b"x"), version_ihl=0x46), "net_rx.drop_ip_header"),
    (with_ip(feed_frame(b"x"), version_ihl=0x65), "net_rx.drop_ip_header"),
    (with_ip(feed_frame(b"x"), flags_fragment_offset=0x2000), "net_rx.drop_ip_header"),  # MF
    (with_ip(feed_frame(b"x"), flags_fragment_offset=0x0001), "net_rx.drop_ip_header"),  # offset
    (with_ip(feed_frame(b"x"), protocol=6), "net_rx.drop_ip_header"),
    (with_ip(feed_frame(b"x"), checksum=0x1234), "net_rx.drop_checksum"),
    (with_ip(feed_frame(b"x", dst_port=1), checksum=0), "net_rx.drop_checksum"),  # first wins
    (feed_frame(b"x", dst_ip="233.54.12.112"), "net_rx.drop_ip_destination"),
    (feed_frame(b"x", dst_port=26401), "net_rx.drop_udp_port"),
    (with_ip(feed_frame(bytes(20)), total_length=27), "net_rx.drop_length"),
    (with_ip(feed_frame(bytes(100)), total_length=129), "net_rx.drop_length"),  # past the frame
    (with_ip(feed_frame(bytes(100)), total_length=127), "net_rx.drop_length"),  # != UDP length
])
def test_net_rx_drops(frame, counter):
    assert net_rx_drop(frame) == counter


def test_net_rx_follows_register_changes():
    regs = RegisterFile()
    model = NetRxModel(regs)
    frame = feed_frame(b"x", dst_port=30000)
    assert model.process(frame) is None
    regs.write("net_rx.udp_port", 30000)
    assert model.process(frame) == b"x"


# -- moldudp64 -----------------------------------------------------------------------------

M = [itch.pack("D", order_reference_number=i) for i in range(10)]  # 19-byte messages


def mold(sequence: int, messages: list[bytes], session: str = "SESSION001") -> bytes:
    return moldudp64.pack(session, sequence, messages)


def test_moldudp64_in_order_and_gap():
    model = MoldUdp64Model()
    assert model.counters["moldudp64.expected_sequence"] == 0
    assert model.process(mold(1, M[:3])) == [(1, M[0]), (2, M[1]), (3, M[2])]
    assert model.counters["moldudp64.expected_sequence"] == 4
    assert model.process(mold(6, M[3:5])) == [(6, M[3]), (7, M[4])]  # 4 and 5 were lost
    c = model.counters
    assert (c["moldudp64.gaps"], c["moldudp64.last_gap_first"], c["moldudp64.last_gap_count"]) == (1, 4, 2)
    assert (c["moldudp64.messages"], c["moldudp64.expected_sequence"]) == (5, 8)


def test_moldudp64_adopts_the_first_session_without_a_gap():
    model = MoldUdp64Model()
    assert model.process(mold(1000, M[:2])) == [(1000, M[0]), (1001, M[1])]
    assert model.counters["moldudp64.gaps"] == 0
    assert model.counters["moldudp64.session_changes"] == 0


def test_moldudp64_duplicates():
    model = MoldUdp64Model()
    model.process(mold(1, M[:3]))
    assert model.process(mold(2, M[1:5])) == [(4, M[3]), (5, M[4])]
    assert model.process(mold(1, M[:3])) == []
    c = model.counters
    assert (c["moldudp64.duplicates"], c["moldudp64.messages"], c["moldudp64.gaps"]) == (5, 5, 0)


def test_moldudp64_heartbeats():
    model = MoldUdp64Model()
    model.process(mold(1, M[:3]))                 # expected 4
    assert model.process(mold(4, [])) == []       # up to date
    assert model.process(mold(3, [])) == []       # behind: nothing
    assert model.counters["moldudp64.gaps"] == 0
    assert model.process(mold(9, [])) == []       # 4..8 missed
    c = model.counters
    assert (c["moldudp64.heartbeats"], c["moldudp64.gaps"], c["moldudp64.last_gap_first"],
            c["moldudp64.last_gap_count"], c["moldudp64.expected_sequence"]) == (3, 1, 4, 5, 9)
    assert model.process(mold(9, M[:1])) == [(9, M[0])]


def test_moldudp64_end_of_session():
    model = MoldUdp64Model()
    model.process(mold(1, M[:1]))
    packet = moldudp64.HEADER.pack(session="SESSION001", sequence_number=50, message_count=0xFFFF)
    assert model.process(packet) == []
    c = model.counters
    assert (c["moldudp64.end_of_session"], c["moldudp64.gaps"], c["moldudp64.expected_sequence"]) == (1, 0, 2)


def test_moldudp64_session_change():
    model = MoldUdp64Model()
    model.process(mold(100, M[:2]))
    assert model.process(mold(1, M[2:4], session="SESSION002")) == [(1, M[2]), (2, M[3])]
    c = model.counters
    assert (c["moldudp64.session_changes"], c["moldudp64.gaps"], c["moldudp64.duplicates"],
            c["moldudp64.expected_sequence"]) == (1, 0, 0, 3)
    assert model.session == b"SESSION002"


def test_moldudp64_truncated_block():
    model = MoldUdp64Model()
    packet = mold(1, M[:3])
    assert model.process(packet[:-1]) == [(1, M[0]), (2, M[1])]
    assert model.counters["moldudp64.truncated"] == 1
    assert model.counters["moldudp64.expected_sequence"] == 3


def test_moldudp64_fewer_blocks_than_the_count():
    model = MoldUdp64Model()
    packet = bytearray(mold(1, M[:2]))
    packet[18:20] = (5).to_bytes(2, "big")  # claims 5 messages, carries 2
    assert model.process(bytes(packet)) == [(1, M[0]), (2, M[1])]
    assert model.counters["moldudp64.truncated"] == 1
    packet[18:20] = (1).to_bytes(2, "big")  # claims 1: the second block is ignored
    assert model.process(bytes(packet)) == []  # sequence 1 again: a duplicate
    assert (model.counters["moldudp64.truncated"], model.counters["moldudp64.duplicates"]) == (1, 1)


def test_moldudp64_malformed():
    model = MoldUdp64Model()
    assert model.process(mold(1, [])[:19]) == []
    assert model.counters["moldudp64.malformed"] == 1
    assert model.counters["moldudp64.expected_sequence"] == 0  # nothing was adopted
    # second block 11 bytes long: it and everything after it are dropped
    packet = mold(1, [M[0], b"D" + bytes(10), M[2]])
    assert model.process(packet) == [(1, M[0])]
    c = model.counters
    assert (c["moldudp64.malformed"], c["moldudp64.messages"], c["moldudp64.truncated"]) == (2, 1, 0)


def test_moldudp64_gap_is_reported_kept_open_and_filled_in_order():
    model = MoldUdp64Model()
    model.process(mold(1, M[:3]))
    assert model.process(mold(7, M[6:8])) == [(7, M[6]), (8, M[7])]       # 4, 5, 6 missing
    assert model.gap_events == [GapEvent(b"SESSION001", 4, 3)]
    assert model.open_gaps == [[4, 7]] and model.counters["moldudp64.open_gaps"] == 1
    assert model.process_datagram(mold(5, M[4:6])) == []                  # starts inside: no fill
    assert model.counters["moldudp64.duplicates"] == 2
    assert model.process_datagram(mold(4, M[3:8])) == [                   # 4..8: 7, 8 were live
        Delivered(4, M[3], True), Delivered(5, M[4], True), Delivered(6, M[5], True)]
    c = model.counters
    assert (c["moldudp64.recovered"], c["moldudp64.messages"], c["moldudp64.duplicates"],
            c["moldudp64.open_gaps"], c["moldudp64.expected_sequence"]) == (3, 8, 4, 0, 9)
    assert model.open_gaps == []


def test_moldudp64_heartbeat_gap_can_be_filled():
    model = MoldUdp64Model()
    model.process(mold(1, M[:1]))
    model.process(mold(4, []))                                           # 2, 3 missing
    assert model.gap_events == [GapEvent(b"SESSION001", 2, 2)]
    assert model.process(mold(2, M[1:3])) == [(2, M[1]), (3, M[2])]
    assert model.counters["moldudp64.recovered"] == 2 and model.open_gaps == []


def test_moldudp64_too_many_open_gaps_abandon_the_oldest():
    model = MoldUdp64Model(max_open_gaps=2)
    for first in (1, 3, 5, 7):                                           # 2, 4, 6 missing
        model.process(mold(first, M[:1]))
    assert model.open_gaps == [[4, 5], [6, 7]]
    assert model.counters["moldudp64.gaps_abandoned"] == 1
    assert model.process(mold(2, M[:1])) == []                           # abandoned: a duplicate
    assert model.process(mold(6, M[:1])) == [(6, M[0])]
    assert model.process(mold(1, M[:1], session="SESSION002")) == [(1, M[0])]
    c = model.counters
    assert (c["moldudp64.gaps_abandoned"], c["moldudp64.open_gaps"], c["moldudp64.duplicates"]) == (2, 0, 1)


def test_moldudp64_late_datagrams():
    model = MoldUdp64Model()
    model.process(mold(1, M[:3]))
    model.process(mold(1, M[:3]))                                        # all duplicates: late
    model.process(mold(2, M[1:5]))                                       # some new: not late
    model.process(mold(4, []))                                           # heartbeat: no messages
    model.process(mold(1, M[:3])[:-1] + b"")                             # 2 whole messages, both old
    packet = bytearray(mold(1, M[:1]))
    packet[20:22] = (3).to_bytes(2, "big")                               # malformed first block
    model.process(bytes(packet))
    assert model.counters["moldudp64.late_datagrams"] == 2


def test_market_data_model_a_b_lines():
    """The same datagram on both lines: the first copy delivers, the other is late; line B has
    its own filter registers and counters."""
    from tickwire.sim.defaults import FEED_GROUP_B
    model = MarketDataModel()
    payload = mold(1, M[:2])
    frame_a = with_fcs(feed_frame(payload))
    frame_b = with_fcs(feed_frame(payload, dst_ip=FEED_GROUP_B, dst_mac="01:00:5e:36:0c:70"))
    assert [d.sequence_number for d, _ in model.receive(frame_b, line="b")] == [1, 2]
    assert model.receive(frame_a, line="a") == []
    assert model.receive(frame_a, line="b") == []                        # A's group on line B
    c = model.counters
    assert (c["net_rx.frames_accepted"], c["net_rx_b.frames_accepted"], c["net_rx_b.drop_mac"],
            c["moldudp64.duplicates"], c["moldudp64.late_datagrams"], c["itch.decoded"]) == (1, 1, 1, 2, 1, 2)
    assert [d.recovered for d, _ in model.inject(mold(3, M[2:3]))] == [False]
    with pytest.raises(ValueError, match="line"):
        model.receive(frame_a, line="c")


# -- itch ----------------------------------------------------------------------------------

#: A record with every field unused, as ``itch_decode`` leaves the fields a type does not have.
BLANK = {name: "" if name in itch.ALPHA_RECORD_FIELDS else 0
         for name in itch.RECORD_FIELDS if name not in itch.SIDEBAND_FIELDS}
HEADER = dict(stock_locate=7, tracking_number=3, timestamp=34_200_000_000_001)


def test_record_type_lists_every_record_field():
    hints = typing.get_type_hints(Record)
    assert list(hints) == [n for n in itch.RECORD_FIELDS if n not in itch.SIDEBAND_FIELDS]
    for name, kind in hints.items():
        assert (kind is str) == (name in itch.ALPHA_RECORD_FIELDS), name


def test_itch_decodes_add_order():
    msg = add_order(type_="F", attribution="GSCO")
    assert itch_decode(msg) == {
        **BLANK, "message_type": "F", "stock_locate": 1, "tracking_number": 0,
        "timestamp": 34_200_000_000_000, "order_reference_number": 42,
        "buy_sell_indicator": "S", "shares": 300, "price": 1_899_600, "stock": AAPL,
        "attribution": "GSCO"}


def test_itch_record_sources_per_type():
    e = itch_decode(itch.pack("E", stock_locate=2, order_reference_number=7, executed_shares=50,
                              match_number=99))
    assert (e["order_reference_number"], e["shares"], e["match_number"], e["price"]) == (7, 50, 99, 0)
    c = itch_decode(itch.pack("C", order_reference_number=7, executed_shares=5, match_number=3,
                              printable="N", execution_price=1234))
    assert (c["shares"], c["price"], c["printable"], c["stock"]) == (5, 1234, "N", "")
    x = itch_decode(itch.pack("X", order_reference_number=7, cancelled_shares=25))
    assert (x["shares"], x["buy_sell_indicator"]) == (25, "")
    u = itch_decode(itch.pack("U", original_order_reference_number=7,
                              new_order_reference_number=8, shares=10, price=5000))
    assert (u["order_reference_number"], u["new_order_reference_number"], u["shares"],
            u["price"]) == (7, 8, 10, 5000)
    d = itch_decode(itch.pack("D", order_reference_number=7))
    assert (d["message_type"], d["order_reference_number"], d["shares"]) == ("D", 7, 0)


# Hand-worked records for the types beyond the order book (contract section "itch", record table).

def test_itch_decodes_system_event_and_stock_directory():
    assert itch_decode(itch.pack("S", **HEADER, event_code="Q")) == {
        **BLANK, "message_type": "S", **HEADER, "code_1": "Q"}
    r = itch.pack("R", **HEADER, stock="MSFT", market_category="Q", financial_status_indicator="N",
                  round_lot_size=100, round_lots_only="N", issue_classification="C",
                  issue_sub_type="Z", authenticity="P", short_sale_threshold_indicator="N",
                  ipo_flag=" ", luld_reference_price_tier="1", etp_flag="N",
                  etp_leverage_factor=2, inverse_indicator="Y")
    assert itch_decode(r) == {
        **BLANK, "message_type": "R", **HEADER, "stock": "MSFT    ", "code_1": "Q", "code_2": "N",
        "value_1": 100, "code_3": "N", "code_4": "C", "text": "Z ", "code_5": "P", "code_6": "N",
        "code_7": " ", "code_8": "1", "code_9": "N", "value_2": 2, "code_10": "Y"}


def test_itch_decodes_trading_action_and_market_participant():
    h = itch.pack("H", **HEADER, stock="AAPL", trading_state="H", reserved=" ", reason="LUDP")
    assert itch_decode(h) == {**BLANK, "message_type": "H", **HEADER, "stock": AAPL,
                              "code_1": "H", "code_2": " ", "text": "LUDP"}
    m = itch.pack("L", **HEADER, mpid="GSCO", stock="AAPL", primary_market_maker="Y",
                  market_maker_mode="N", market_participant_state="A")
    assert itch_decode(m) == {**BLANK, "message_type": "L", **HEADER, "attribution": "GSCO",
                              "stock": AAPL, "code_1": "Y", "code_2": "N", "code_3": "A"}


def test_itch_decodes_circuit_breaker_and_luld_collar():
    v = itch.pack("V", **HEADER, level_1=1 << 40, level_2=(1 << 64) - 1, level_3=5)
    assert itch_decode(v) == {**BLANK, "message_type": "V", **HEADER, "value_1": 1 << 40,
                              "value_2": (1 << 64) - 1, "value_3": 5}
    j = itch.pack("J", **HEADER, stock="AAPL", auction_collar_reference_price=1_000_000,
                  upper_auction_collar_price=1_100_000, lower_auction_collar_price=900_000,
                  auction_collar_extension=2)
    assert itch_decode(j) == {**BLANK, "message_type": "J", **HEADER, "stock": AAPL,
                              "price": 1_000_000, "price_2": 1_100_000, "price_3": 900_000,
                              "value_1": 2}


def test_itch_decodes_trades_and_imbalance():
    q = itch.pack("Q", **HEADER, shares=(1 << 64) - 2, stock="AAPL", cross_price=1_900_000,
                  match_number=77, cross_type="O")
    assert itch_decode(q) == {**BLANK, "message_type": "Q", **HEADER, "shares": (1 << 64) - 2,
                              "stock": AAPL, "price": 1_900_000, "match_number": 77,
                              "cross_type": "O"}
    p = itch.pack("P", **HEADER, order_reference_number=0, buy_sell_indicator="B", shares=10,
                  stock="AAPL", price=5, match_number=78)
    assert itch_decode(p) == {**BLANK, "message_type": "P", **HEADER, "buy_sell_indicator": "B",
                              "shares": 10, "stock": AAPL, "price": 5, "match_number": 78}
    assert itch_decode(itch.pack("B", **HEADER, match_number=78)) == {
        **BLANK, "message_type": "B", **HEADER, "match_number": 78}
    i = itch.pack("I", **HEADER, paired_shares=1 << 33, imbalance_shares=500,
                  imbalance_direction="B", stock="AAPL", far_price=1, near_price=2,
                  current_reference_price=3, cross_type="C", price_variation_indicator="L")
    assert itch_decode(i) == {**BLANK, "message_type": "I", **HEADER, "shares": 1 << 33,
                              "value_1": 500, "code_1": "B", "stock": AAPL, "price": 1,
                              "price_2": 2, "price_3": 3, "cross_type": "C", "code_2": "L"}


def test_itch_decodes_direct_listing_price_discovery():
    o = itch.pack("O", **HEADER, stock="AAPL", open_eligibility_status="Y",
                  minimum_allowable_price=10, maximum_allowable_price=20, near_execution_price=15,
                  near_execution_time=34_500_000_000_000, lower_price_range_collar=12,
                  upper_price_range_collar=18)
    assert itch_decode(o) == {**BLANK, "message_type": "O", **HEADER, "stock": AAPL,
                              "code_1": "Y", "price": 10, "price_2": 20, "price_3": 15,
                              "value_1": 34_500_000_000_000, "price_4": 12, "price_5": 18}


def test_itch_alpha_bytes_survive_and_record_values_are_wire_order():
    a = itch_decode(add_order(stock=b"\xffAB"))
    assert a["stock"] == "\xffAB     "
    values = record_values(a, sequence_number=9)
    assert values["stock"] == int.from_bytes(b"\xffAB     ", "little")
    assert (values["message_type"], values["buy_sell_indicator"]) == (ord("A"), ord("S"))
    assert (values["attribution"], values["sequence_number"], values["shares"]) == (0, 9, 300)
    assert set(values) == set(itch.RECORD_FIELDS)


def test_itch_counters():
    model = ItchModel()
    assert model.process(add_order()) is not None
    assert model.process(itch.pack("S", event_code="O"))["code_1"] == "O"
    assert model.process(itch.pack("I"))["message_type"] == "I"
    assert model.process(b"Z" + bytes(20)) is None                         # unknown type
    assert model.process(add_order()[:-1]) is None                         # A is 36 bytes
    assert model.process(itch.pack("S") + b"\x00") is None                 # S is 12 bytes
    assert model.counters == {"itch.decoded": 3, "itch.unknown_type": 1, "itch.bad_length": 2}


# -- trigger -------------------------------------------------------------------------------

def bbo(slot=0, bid=(0, 0, 0), ask=(0, 0, 0), trusted=1, recovered=0, sequence=1):
    return {"slot": slot, "stock_locate": 1, "stock": int.from_bytes(AAPL.encode(), "little"),
            "timestamp": 5, "sequence_number": sequence, "recovered": recovered, "trusted": trusted,
            "bid_price": bid[0], "bid_shares": bid[1], "bid_orders": bid[2],
            "ask_price": ask[0], "ask_shares": ask[1], "ask_orders": ask[2]}


ONE_RULE = {"trigger.rule_0_kind": RuleKind.ASK_AT_OR_BELOW, "trigger.rule_0_slot": 0,
            "trigger.rule_0_side": ord("B"), "trigger.rule_0_threshold": 1_900_000,
            "trigger.rule_0_quantity": 100, "trigger.rule_0_session": 2,
            **{f"trigger.rule_{k}_kind": 0 for k in range(1, 4)}}


def test_trigger_fires_when_the_rule_starts_to_hold():
    model = TriggerModel(ONE_RULE)
    assert model.process(bbo(ask=(1_900_100, 300, 1))) == []                   # above the limit
    [order] = model.process(bbo(ask=(1_900_000, 300, 2), sequence=7))          # at it: fires
    assert {k: order[k] for k in ("action", "side", "price", "quantity", "session", "slot", "sequence_number")} == \
        {"action": ord("O"), "side": ord("B"), "price": 1_900_000, "quantity": 100, "session": 2, "slot": 0,
         "sequence_number": 7}
    assert model.process(bbo(ask=(1_899_000, 40, 1))) == []                    # still holds: no repeat
    assert model.process(bbo(ask=(1_900_100, 40, 1))) == []                    # stops holding
    [order] = model.process(bbo(ask=(1_899_000, 40, 1)))                       # again: fires
    assert order["quantity"] == 40                                             # at most what is offered
    assert model.counters == {"trigger.fired": 2, "trigger.rule_0_fired": 2, "trigger.rule_1_fired": 0,
                              "trigger.rule_2_fired": 0, "trigger.rule_3_fired": 0}


def test_trigger_refuses_untrusted_recovered_and_other_slots():
    for record in (bbo(ask=(1_000_000, 100, 1), trusted=0), bbo(ask=(1_000_000, 100, 1), recovered=1),
                   bbo(slot=1, ask=(1_000_000, 100, 1)), bbo(bid=(1_000_000, 100, 1))):
        assert TriggerModel(ONE_RULE).process(record) == [], record


@pytest.mark.parametrize("kind, side, threshold, record, fires", [
    (RuleKind.BID_AT_OR_ABOVE, "S", 100, bbo(bid=(100, 10, 1)), True),
    (RuleKind.BID_AT_OR_ABOVE, "S", 101, bbo(bid=(100, 10, 1)), False),
    (RuleKind.SPREAD_AT_MOST, "B", 5, bbo(bid=(100, 10, 1), ask=(105, 7, 1)), True),
    (RuleKind.SPREAD_AT_MOST, "B", 4, bbo(bid=(100, 10, 1), ask=(105, 7, 1)), False),
    (RuleKind.SPREAD_AT_MOST, "B", 99, bbo(ask=(105, 7, 1)), False),           # one side only
    (RuleKind.BID_IMBALANCE, "B", 512, bbo(bid=(100, 20, 1), ask=(105, 10, 1)), True),   # 2.0 x
    (RuleKind.BID_IMBALANCE, "B", 513, bbo(bid=(100, 20, 1), ask=(105, 10, 1)), False),
    (RuleKind.ASK_IMBALANCE, "S", 384, bbo(bid=(100, 10, 1), ask=(105, 15, 1)), True),   # 1.5 x
    (RuleKind.ASK_IMBALANCE, "S", 385, bbo(bid=(100, 10, 1), ask=(105, 15, 1)), False),
])
def test_trigger_kinds(kind, side, threshold, record, fires):
    regs = {**ONE_RULE, "trigger.rule_0_kind": kind, "trigger.rule_0_side": ord(side),
            "trigger.rule_0_threshold": threshold}
    orders = TriggerModel(regs).process(record)
    assert bool(orders) == fires
    if orders:   # a buy takes the best ask, a sell the best bid
        assert orders[0]["price"] == (record["ask_price"] if side == "B" else record["bid_price"])


# -- order entry ---------------------------------------------------------------------------

def test_order_entry_numbers_and_cl_ord_id():
    model = OrderEntryModel()
    first = model.process({"action": ord("O"), "session": 1})
    second = model.process({"action": ord("O"), "session": 1})
    own = model.process({"action": ord("O"), "session": 1, "user_ref_num": 40})
    after = model.process({"action": ord("U"), "session": 1})
    cancel = model.process({"action": ord("X"), "session": 1, "user_ref_num": 2})
    assert [o["user_ref_num"] for o in (first, second, own, after, cancel)] == [1, 2, 40, 41, 2]
    assert model.process({"action": ord("O"), "session": 0})["user_ref_num"] == 1   # per session
    assert cl_ord_id(int.from_bytes(b"TW01", "big"), 0xABCDEF12).to_bytes(14, "little") == b"TW01ABCDEF12  "
    assert first["cl_ord_id"].to_bytes(14, "little") == b"TW0100000001  "


# -- risk ----------------------------------------------------------------------------------

ORDER = order_values(action=ord("O"), side=ord("B"), price=1_899_700, quantity=100, slot=0, session=0,
                     user_ref_num=1, stock=int.from_bytes(AAPL.encode(), "little"))


@pytest.mark.parametrize("order, registers, reason", [
    (ORDER, {}, RejectReason.NONE),
    ({**ORDER, "price": 1_899_800}, {}, RejectReason.MAX_NOTIONAL),           # 100 * 189.98 > 18997
    ({**ORDER, "quantity": 0}, {}, RejectReason.ZERO_QUANTITY),
    ({**ORDER, "quantity": 1001, "price": 1}, {}, RejectReason.MAX_QUANTITY),
    ({**ORDER, "price": 1_874_900, "quantity": 1}, {}, RejectReason.PRICE_COLLAR),  # 2.01 below 189.50
    ({**ORDER, "quantity": 0}, {"risk.kill": 1}, RejectReason.KILL),          # kill first
    ({**ORDER, "slot": 1}, {}, RejectReason.SYMBOL_DISABLED),
])
def test_risk_reasons(order, registers, reason):
    from tickwire.sim.defaults import DEFAULT_INDEXED
    stage = RiskStage(RegisterFile(registers), DEFAULT_INDEXED)
    assert stage.process(order, BookTop()) == (reason is RejectReason.NONE, int(reason))
    assert stage.counters["risk." + VERDICT_COUNTERS[reason]] == 1


def test_risk_open_orders_count_toward_the_position():
    from tickwire.sim.defaults import DEFAULT_INDEXED
    stage = RiskStage(RegisterFile(), {**DEFAULT_INDEXED, "risk.max_open_orders[0]": 10})
    verdicts = [stage.process({**ORDER, "user_ref_num": n}, BookTop())[1] for n in range(1, 8)]
    # 5 x 100 shares fill the 500-share long limit; the sixth would go over.
    assert verdicts == [0] * 5 + [int(RejectReason.POSITION_LONG)] * 2


# -- ouch ----------------------------------------------------------------------------------

# The packet for ORDER with the default OUCH attributes, written out by hand.
ORDER_PACKET = bytes.fromhex(
    "0030" "55"                    # SoupBinTCP: length 48, 'U' unsequenced data
    "4f"                           # 'O' Enter Order
    "00000001"                     # user_ref_num 1
    "42"                           # side 'B'
    "00000064"                     # quantity 100
    "4141504c20202020"             # symbol 'AAPL    '
    "00000000001cfcb4"             # price 189.9700 (0x1cfcb4)
    "30" "59" "41" "4e" "4e"       # time in force '0', display 'Y', capacity 'A', ISO 'N', cross 'N'
    "5457303130303030303030312020" # cl_ord_id 'TW01' '00000001' '  '
    "0000")                        # appendage_length 0


def test_ouch_bytes_by_hand():
    order = {**ORDER, "time_in_force": ord("0"), "display": ord("Y"), "capacity": ord("A"),
             "intermarket_sweep_eligibility": ord("N"), "cross_type": ord("N"),
             "cl_ord_id": cl_ord_id(int.from_bytes(b"TW01", "big"), 1)}
    stage = OuchStage()
    assert stage.process(order) == ORDER_PACKET
    assert stage.process({**order, "action": ord("Z")}) is None
    assert (stage.counters["ouch.orders_sent"], stage.counters["ouch.enter_sent"],
            stage.counters["ouch.invalid_action"]) == (1, 1, 1)
    [(packet_type, message)] = soupbintcp.unframe(ORDER_PACKET)[0]
    assert packet_type == "U" and ouch.unpack_inbound(message)["cl_ord_id"] == "TW0100000001  "


# -- net_tx / mac_tx -----------------------------------------------------------------------

def test_net_tx_frame():
    model = NetTxModel()
    frames = [model.process(ORDER_PACKET) for _ in range(2)]
    for i, frame in enumerate(frames):
        pkt = Ether(frame)
        assert (pkt.dst, pkt.src, pkt.type) == ("02:00:00:00:00:fe", "02:54:57:00:00:01", 0x0800)
        ip = pkt[IP]
        assert (ip.version, ip.ihl, ip.tos, ip.len, ip.id, ip.flags, ip.frag, ip.ttl, ip.proto,
                ip.src, ip.dst) == (4, 5, 0, 78, i, "DF", 0, 64, 17, "10.0.1.2", "10.0.1.1")
        assert ipv4_checksum(frame[14:34]) == 0
        assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len, pkt[UDP].chksum) == (40000, 15000, 58, 0)
        assert bytes(pkt[UDP].payload) == ORDER_PACKET
    assert len(frames[0]) == 92
    # header bytes by hand: IPv4 0x45 0x00, total length 78, id 0, DF, TTL 64, UDP
    assert frames[0][14:24] == bytes.fromhex("4500004e000040004011")
    assert model.counters == {"net_tx.frames_sent": 2}


def test_mac_tx_pads_and_appends_fcs():
    model = MacTxModel()
    assert model.process(b"\x01" * 10) == b"\x01" * 10 + bytes(50)
    wire = MacTxModel.wire(b"\x01" * 10)
    assert len(wire) == 64 and wire[-4:] == fcs(wire[:-4])
    assert model.counters == {"mac_tx.frames_sent": 1}


# -- whole pipeline ------------------------------------------------------------------------

def test_pipeline_counter_names_are_the_contract_ro_registers():
    assert list(PipelineModel().counters) == list(COUNTER_NAMES)
    assert len(COUNTER_NAMES) == len(set(COUNTER_NAMES))
    assert all(v == 0 for k, v in PipelineModel().counters.items() if k != "order_entry.session_user_ref_num")


def test_pipeline_registers_are_checked_and_copied():
    with pytest.raises(KeyError, match="no rw register"):
        PipelineModel({"trigger.limit": 5})
    with pytest.raises(ValueError, match="non-negative int"):
        PipelineModel({"trigger.rule_0_quantity": -1})
    model = PipelineModel({"trigger.rule_0_quantity": 7})
    assert model.registers["trigger.rule_0_quantity"] == 7 and DEFAULT_REGISTERS["trigger.rule_0_quantity"] == 100


def directory(locate=1, stock="AAPL"):
    return itch.pack("R", stock_locate=locate, stock=stock, market_category="Q")


def test_pipeline_single_order():
    """A directory message makes AAPL slot 0, a sell at $189.97 makes the best ask, rule 0 buys."""
    model = PipelineModel()
    frame = feed_frame(mold(1, [directory(), add_order("S", 1_899_700, 300)]))
    [out] = model.feed(with_fcs(frame))
    assert out[42:] == ORDER_PACKET
    assert model.feed(frame + b"\x00\x00\x00\x00") == []  # bad FCS
    assert model.feed(with_fcs(frame), error=True) == []
    c = model.counters
    assert (c["mac_rx.frames_ok"], c["mac_rx.bad_fcs"], c["book.bbo_updates"], c["trigger.fired"],
            c["risk.accepted"], c["ouch.orders_sent"], c["net_tx.frames_sent"], c["mac_tx.frames_sent"]) == \
        (1, 2, 1, 1, 1, 1, 1, 1)


def test_pipeline_rejected_orders_still_use_their_user_ref_num():
    """The card numbers an order before risk: a refused one has used its number."""
    model = PipelineModel()
    cheap = [directory(), add_order("S", 1_899_000), itch.pack("D", stock_locate=1, order_reference_number=42)]
    model.registers.write("risk.kill", 1)
    assert model.feed(with_fcs(feed_frame(mold(1, cheap)))) == []
    model.registers.write("risk.kill", 0)
    [out] = model.feed(with_fcs(feed_frame(mold(4, cheap))))
    assert out[46:50] == b"\x00\x00\x00\x02"
    c = model.counters
    assert (c["risk.rejected_kill"], c["risk.accepted"], c["risk.last_reject_reason"]) == (1, 1, 1)


def test_pipeline_default_feed_end_to_end():
    model = PipelineModel()
    records = build_feed()
    orders = model.feed_all(with_fcs(frame) for _, frame in records)
    c = model.counters
    assert c["mac_rx.frames_ok"] == c["net_rx.frames_accepted"] == len(records)
    assert c["moldudp64.messages"] == c["itch.decoded"] == DEFAULT_FEED["count"]
    assert c["itch.unknown_type"] == c["itch.bad_length"] == 0
    # the demo shows orders out and refusals of several kinds
    assert c["trigger.fired"] == c["order_entry.orders"] == c["risk.accepted"] + len(model.rejects)
    assert c["ouch.orders_sent"] == c["net_tx.frames_sent"] == c["mac_tx.frames_sent"] == len(orders)
    assert (c["trigger.fired"], c["risk.accepted"]) == (13, 4)
    assert {reason for _, reason in model.rejects} == {RejectReason.SYMBOL_DISABLED, RejectReason.MAX_NOTIONAL,
                                                      RejectReason.MAX_OPEN_ORDERS}
    for i, frame in enumerate(orders):
        pkt = Ether(frame)
        assert pkt[IP].id == i
        [(_, message)] = soupbintcp.unframe(bytes(pkt[UDP].payload))[0]
        order = ouch.unpack_inbound(message)
        assert (order["side"], order["symbol"], order["display"]) == ("B", AAPL, "Y")
        assert order["cl_ord_id"] == f"TW01{order['user_ref_num']:08X}  "
        assert order["price"] * order["quantity"] <= 100 * 189_9700
