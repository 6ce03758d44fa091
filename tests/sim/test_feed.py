"""sim/feed.py: the synthetic ITCH feed, its MoldUDP64 packing and the UDP/IPv4 framing."""

from __future__ import annotations

from collections import Counter

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tickwire.protocols import itch, moldudp64
from tickwire.sim.defaults import DEFAULT_FEED, DEFAULT_REGISTERS
from tickwire.sim.feed import (
    DEFAULT_SYMBOLS, MARKET_OPEN_NS, REFERENCE_PRICES, build_feed, datagrams, feed_frames, frames,
    generate_messages, int_to_ip, int_to_mac, ip_to_int, ipv4_checksum, iter_feed_frames,
    mac_to_int, multicast_mac, symbol_table, udp_frame,
)

ADDRESSES = dict(src_mac="02:00:00:00:00:10", dst_mac="01:00:5e:36:0c:6f", src_ip="10.0.0.1",
                 dst_ip="233.54.12.111", src_port=1234, dst_port=26400)


def decode_all(messages):
    return [itch.unpack(m) for m in messages]


def test_deterministic_per_seed():
    assert generate_messages(300, seed=5) == generate_messages(300, seed=5)
    assert generate_messages(300, seed=5) != generate_messages(300, seed=6)
    assert generate_messages(100, seed=5) == generate_messages(300, seed=5)[:100]


def test_starts_with_system_event_and_directory():
    msgs = decode_all(generate_messages(50, seed=3))
    assert len(msgs) == 50
    assert (msgs[0]["message_type"], msgs[0]["event_code"], msgs[0]["stock_locate"]) == ("S", "O", 0)
    assert [(m["message_type"], m["stock"].rstrip(), m["stock_locate"]) for m in msgs[1:4]] == [
        ("R", "AAPL", 1), ("R", "MSFT", 2), ("R", "NVDA", 3)]
    assert msgs[1]["round_lot_size"] == 100


def test_timestamps_increase_from_the_open():
    msgs = decode_all(generate_messages(500, seed=11))
    stamps = [m["timestamp"] for m in msgs]
    assert stamps[0] > MARKET_OPEN_NS
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert stamps[-1] < 24 * 3600 * 10**9


@pytest.mark.parametrize("seed", [1, 2, 2024])
def test_order_events_follow_a_consistent_book(seed):
    msgs = decode_all(generate_messages(1000, seed=seed))
    locates = {m["stock"]: m["stock_locate"] for m in msgs if m["message_type"] == "R"}
    live: dict[int, dict] = {}
    seen_refs: set[int] = set()
    for m in msgs:
        t = m["message_type"]
        if t in "AF":
            ref = m["order_reference_number"]
            assert ref not in seen_refs
            seen_refs.add(ref)
            assert locates[m["stock"]] == m["stock_locate"]
            assert m["buy_sell_indicator"] in "BS" and m["shares"] > 0
            live[ref] = {"shares": m["shares"], "locate": m["stock_locate"], "stock": m["stock"]}
        elif t in "ECXDU":
            ref = m["original_order_reference_number" if t == "U" else "order_reference_number"]
            order = live[ref]  # only live orders are touched
            assert m["stock_locate"] == order["locate"]
            if t in "EC":
                assert 0 < m["executed_shares"] <= order["shares"]
                order["shares"] -= m["executed_shares"]
            elif t == "X":
                assert 0 < m["cancelled_shares"] < order["shares"]
                order["shares"] -= m["cancelled_shares"]
            if t in "DU" or order["shares"] == 0:
                del live[ref]
            if t == "U":
                new = m["new_order_reference_number"]
                assert new not in seen_refs
                seen_refs.add(new)
                live[new] = {"shares": m["shares"], "locate": order["locate"], "stock": order["stock"]}


def test_prices_are_realistic():
    msgs = decode_all(generate_messages(1000, seed=9))
    stock_of = {m["stock_locate"]: m["stock"].rstrip() for m in msgs if m["message_type"] == "R"}
    for m in msgs:
        price = m.get("price") or m.get("execution_price")
        if m["message_type"] in "AFUCP":
            reference = REFERENCE_PRICES[stock_of[m["stock_locate"]]]
            assert abs(price - reference) < reference * 0.05, m
            assert price % 100 == 0  # whole cents


def test_mixes_order_events_with_types_to_skip():
    counts = Counter(chr(m[0]) for m in generate_messages(300, seed=DEFAULT_FEED["seed"]))
    assert set("AFECXDU") <= set(counts)
    assert len(set("HPIQ") & set(counts)) >= 3
    assert counts["A"] + counts["F"] > 0.25 * 300


def test_custom_symbols():
    msgs = decode_all(generate_messages(40, seed=1, symbols=["ZVZZT", "QQQ"]))
    assert [(m["stock"].rstrip(), m["stock_locate"]) for m in msgs[1:3]] == [("ZVZZT", 1), ("QQQ", 2)]
    assert {m["stock_locate"] for m in msgs[3:]} <= {1, 2}
    msgs = decode_all(generate_messages(10, seed=1, symbols={"IBM": 77}))
    assert msgs[1]["stock_locate"] == 77


def test_generate_errors():
    with pytest.raises(ValueError, match="at least 4"):
        generate_messages(3)
    with pytest.raises(ValueError, match="1 to 8 ASCII"):
        generate_messages(10, symbols=["TOOLONGNAME"])
    with pytest.raises(ValueError, match="unique"):
        generate_messages(10, symbols={"A": 1, "B": 1})


def test_datagrams_pack_in_order_with_consecutive_sequence_numbers():
    msgs = generate_messages(300, seed=4)
    packets = datagrams(msgs, session="SESSION007", first_sequence=1000, max_payload=400)
    expected_sequence = 1000
    out = []
    for p in packets:
        assert len(p) <= 400
        header, block = moldudp64.unpack(p)
        assert header["session"] == "SESSION007"
        assert header["sequence_number"] == expected_sequence
        expected_sequence += header["message_count"]
        out += block
    assert out == msgs
    assert all(moldudp64.unpack(p)[0]["message_count"] <= 5
               for p in datagrams(msgs, max_messages=5))
    assert len(datagrams(msgs, max_messages=1)) == 300


def test_datagram_errors():
    with pytest.raises(ValueError, match="does not fit max_payload"):
        datagrams([bytes(50)], max_payload=60)
    with pytest.raises(ValueError, match="max_messages"):
        datagrams([bytes(50)], max_messages=0)
    assert datagrams([]) == []


def test_ipv4_checksum_known_header():
    # The classic worked example: 192.168.0.1 -> 192.168.0.199, checksum 0xb861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ipv4_checksum(header) == 0xB861
    assert ipv4_checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0


def test_udp_frame_parses_with_scapy():
    payload = bytes(range(100))
    frame = udp_frame(payload, **ADDRESSES, identification=0x1234)
    pkt = Ether(frame)
    assert (pkt.dst, pkt.src, pkt.type) == ("01:00:5e:36:0c:6f", "02:00:00:00:00:10", 0x0800)
    ip = pkt[IP]
    assert (ip.version, ip.ihl, ip.len, ip.id, ip.ttl, ip.proto, ip.src, ip.dst) == \
        (4, 5, 128, 0x1234, 64, 17, "10.0.0.1", "233.54.12.111")
    assert ip.flags == "DF" and ip.frag == 0
    rebuilt = IP(bytes(ip))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum  # scapy computes the same header checksum
    udp = pkt[UDP]
    assert (udp.sport, udp.dport, udp.len, udp.chksum) == (1234, 26400, 108, 0)
    assert bytes(udp.payload) == payload
    assert len(frame) == 14 + 20 + 8 + 100


def test_udp_frame_pads_to_60_bytes():
    frame = udp_frame(b"hi", **ADDRESSES)
    assert len(frame) == 60 and frame[44:] == bytes(16)
    assert Ether(frame)[UDP].len == 10


def test_address_helpers():
    assert mac_to_int("02:54:57:00:00:01") == 0x025457000001
    assert mac_to_int("02-54-57-00-00-01") == mac_to_int(bytes.fromhex("025457000001"))
    assert int_to_mac(0x025457000001) == "02:54:57:00:00:01"
    assert ip_to_int("233.54.12.111") == 0xE9360C6F == ip_to_int(bytes([233, 54, 12, 111]))
    assert int_to_ip(0x0A000102) == "10.0.1.2"
    assert multicast_mac(ip_to_int("233.54.12.111")) == 0x01005E360C6F
    assert multicast_mac(ip_to_int("239.255.255.255")) == 0x01005E7FFFFF  # high bit of 24 dropped
    for bad in ("02:54:57:00:00", "zz:54:57:00:00:01", "0254.5700.0001"):
        with pytest.raises(ValueError):
            mac_to_int(bad)
    for bad in ("10.0.0", "10.0.0.256", "a.b.c.d"):
        with pytest.raises(ValueError):
            ip_to_int(bad)
    with pytest.raises(ValueError, match="not an IPv4 multicast"):
        multicast_mac(ip_to_int("10.0.0.1"))


def test_frames_count_identification_and_default_to_multicast_mac():
    out = frames([b"a", b"b"], src_mac=1, src_ip="10.0.0.1", src_port=1, dst_ip="233.54.12.111",
                 dst_port=2, first_identification=0xFFFF)
    assert [Ether(f)[IP].id for f in out] == [0xFFFF, 0]
    assert all(Ether(f).dst == "01:00:5e:36:0c:6f" for f in out)


def test_build_feed_defaults():
    records = build_feed()
    assert len(records) == 38  # 300 messages, 8 per datagram
    stamps = [t for t, _ in records]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    for _, frame in records:
        pkt = Ether(frame)
        assert pkt[IP].dst == int_to_ip(DEFAULT_REGISTERS["net_rx.multicast_group"])
        assert pkt[UDP].dport == DEFAULT_REGISTERS["net_rx.udp_port"]
    assert build_feed() == records
    with pytest.raises(ValueError, match="unknown feed parameters"):
        build_feed({"cnt": 3})


def _sorted_choice_messages(count, seed, symbols):
    """generate_messages as it was written first: live orders picked from ``sorted(live)``."""
    import random
    from tickwire.sim import feed as feed_module
    gen = feed_module._Generator(random.Random(seed), feed_module._symbol_map(symbols))
    gen.pick_live = lambda: (lambda ref: (ref, gen.live[ref]))(
        gen.rng.choice(sorted(gen.live.orders)))
    out = [gen.system_event("O")]
    out += [gen.stock_directory(s, locate) for s, locate in gen.symbols.items()]
    while len(out) < count:
        out.append(gen.next())
    return out


@pytest.mark.parametrize("seed", [1, 2024])
def test_live_order_index_picks_as_sorting_did(seed):
    # The Fenwick-tree index of live orders keeps the feeds of every seed what they were.
    assert generate_messages(5000, seed=seed) == _sorted_choice_messages(5000, seed, DEFAULT_SYMBOLS)


def test_session_events_and_symbol_table():
    table = symbol_table(40)
    assert list(table)[:3] == ["AAPL", "MSFT", "NVDA"] and list(table.values()) == list(range(1, 41))
    assert len(set(table)) == 40 and all(1 <= len(s) <= 8 for s in table)
    msgs = decode_all(generate_messages(200, seed=1, symbols=symbol_table(4), session_events=True))
    assert len(msgs) == 200
    assert [m["event_code"] for m in msgs if m["message_type"] == "S"] == list("OSQMEC")
    assert [m["message_type"] for m in msgs[:8]] == ["S", "R", "R", "R", "R", "S", "S", "A"]
    assert [m["message_type"] for m in msgs[-3:]] == ["S", "S", "S"]
    with pytest.raises(ValueError, match="at least 10"):
        generate_messages(9, symbols=symbol_table(4), session_events=True)


def test_iter_feed_frames_is_build_feed():
    cfg = {**DEFAULT_FEED, "count": 500, "seed": 8}
    messages = generate_messages(500, seed=8)
    assert list(iter_feed_frames(messages, cfg)) == build_feed(cfg)
    assert [f for _, f in iter_feed_frames(messages, cfg)] == feed_frames(messages, cfg)
