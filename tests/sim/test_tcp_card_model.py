"""The reference model of the card's TCP engine (sim/tcp_card_model.py) against docs/tcp.md, with
frames built and checked by scapy (an implementation independent of protocols/net.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from tickwire.sim.tcp_card_model import COUNTERS, ModelCardPort, TcpCardModel, TcpModelError

CARD_MAC, PEER_MAC = "02:00:00:00:77:02", "02:00:00:00:77:01"
CARD_IP, PEER_IP = "10.77.0.2", "10.77.0.1"
CARD_PORT, PEER_PORT = 40000, 15000
ISS, IRS = 1000, 500_000


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ip(text: str) -> int:
    return int.from_bytes(bytes(int(p) for p in text.split(".")), "big")


def card(*, session: int = 0, iss: int = ISS, irs: int = IRS, window: int = 65535, mss: int = 1460,
         **params) -> TcpCardModel:
    """A model with ``session`` loaded as the host loads it after a handshake."""
    m = TcpCardModel(**params)
    m.write("tcp.local_mac", mac(CARD_MAC))
    m.write("tcp.local_ip", ip(CARD_IP))
    m.write("tcp.session", session)
    for name, value in (("peer_mac", mac(PEER_MAC)), ("peer_ip", ip(PEER_IP)), ("local_port", CARD_PORT),
                        ("peer_port", PEER_PORT), ("mss", mss), ("snd_nxt", iss), ("rcv_nxt", irs),
                        ("peer_window", window), ("established", 1)):
        m.write(name, value)
    return m


def peer(seq: int, ack: int, *, payload: bytes = b"", flags: str = "A", window: int = 65535, sport=PEER_PORT,
         dport=CARD_PORT, src=PEER_IP, dst=CARD_IP, dst_mac=CARD_MAC, options=None, pad: bool = False) -> bytes:
    """A segment from the peer to the card, built by scapy."""
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, options=options or [])
    frame = bytes(Ether(src=PEER_MAC, dst=dst_mac) / IP(src=src, dst=dst, flags="DF") / tcp / payload)
    return frame.ljust(60, b"\0") if pad else frame


def sent(m: TcpCardModel) -> list:
    """The card's frames, parsed by scapy."""
    tx, _, _ = m.take()
    return [Ether(f) for f in tx]


def checksums_ok(frame) -> bool:
    raw = bytes(frame)
    again = Ether(raw)
    del again[IP].chksum
    del again[TCP].chksum
    rebuilt = Ether(bytes(again))
    return rebuilt[IP].chksum == frame[IP].chksum and rebuilt[TCP].chksum == frame[TCP].chksum


def test_registers_select_and_errors():
    m = TcpCardModel(sessions=2)
    assert m.read("tcp.rcv_window") == 65535
    m.write("session", 1)
    m.write("peer_port", 1234)
    m.write("session", 0)
    assert m.read("peer_port") == 0
    m.write("session", 1)
    assert m.read("tcp.peer_port") == 1234
    with pytest.raises(TcpModelError, match="read-only"):
        m.write("snd_una", 5)
    with pytest.raises(TcpModelError, match="read-only"):
        m.write("tx_segments", 5)
    with pytest.raises(TcpModelError, match="no register"):
        m.read("tcp.nonsense")
    with pytest.raises(TcpModelError, match="does not fit 16 bits"):
        m.write("peer_port", 70000)
    with pytest.raises(TcpModelError, match="session must be 0..1"):
        m.write("session", 2)
    with pytest.raises(TcpModelError, match="session must be 0..1"):
        m.write("retransmit", 7)
    with pytest.raises(TcpModelError, match="positive integer"):
        TcpCardModel(sessions=0)
    with pytest.raises(TcpModelError, match="one or more bytes"):
        m.append(0, b"")
    with pytest.raises(TcpModelError, match="source"):
        m.append(0, b"abc", source="elsewhere")
    with pytest.raises(TcpModelError, match="at least 14"):
        m.send_frame(b"\x01")


def test_snd_nxt_write_sets_all_three_and_empties_the_buffer():
    m = card(window=0)
    m.append(0, b"x" * 20)
    assert m.read("queued") == 20 and m.read("snd_una") == ISS
    m.write("snd_nxt", 7777)
    assert (m.read("snd_nxt"), m.read("snd_una"), m.read("snd_max"), m.read("queued")) == (7777, 7777, 7777, 0)


def test_closed_and_oversize_packets_are_dropped_and_counted():
    m = card(mss=100)
    m.write("established", 0)
    m.append(0, b"a" * 10)
    m.write("established", 1)
    m.append(0, b"b" * 101)
    m.append(0, b"c" * 100)
    frames = sent(m)
    assert [bytes(f[TCP].payload) for f in frames] == [b"c" * 100]
    assert m.counters["tx_closed_drops"] == 1 and m.counters["tx_oversize_drops"] == 1


def test_segment_format():
    m = card()
    m.append(0, b"\x00\x05Uhell", source="data")
    m.append(0, b"\x00\x01R", source="host")
    first, second = sent(m)
    for n, (f, payload, seq) in enumerate(((first, b"\x00\x05Uhell", ISS), (second, b"\x00\x01R", ISS + 7))):
        assert (f.dst, f.src, f.type) == (PEER_MAC, CARD_MAC, 0x0800)
        i, t = f[IP], f[TCP]
        assert (i.version, i.ihl, i.tos, i.len, i.id, int(i.flags), i.frag, i.ttl, i.proto) == \
            (4, 5, 0, 40 + len(payload), n, 2, 0, 64, 6)
        assert (i.src, i.dst) == (CARD_IP, PEER_IP)
        assert (t.sport, t.dport, t.seq, t.ack, t.dataofs, int(t.flags), t.window, t.urgptr, t.options) == \
            (CARD_PORT, PEER_PORT, seq, IRS, 5, 0x18, 65535, 0, [])
        assert bytes(t.payload) == payload
        assert checksums_ok(f)
    assert m.counters["tx_segments"] == 2
    assert m.read("snd_max") == ISS + 10 and m.read("queued") == 10


def test_window_holds_segments_back_exactly_at_the_edge():
    m = card(window=20)
    m.append(0, b"a" * 10)
    m.append(0, b"b" * 10)       # seq + len - una = 20 <= 20: goes
    m.append(0, b"c" * 1)        # 21 > 20: waits
    assert [len(f[TCP].payload) for f in sent(m)] == [10, 10]
    m.rx(peer(IRS, ISS + 5, window=15))   # una 1005: 1021 - 1005 = 16 > 15
    assert sent(m) == []
    m.rx(peer(IRS, ISS + 5, window=16))
    (f,) = sent(m)
    assert (f[TCP].seq, bytes(f[TCP].payload)) == (ISS + 20, b"c")


def test_ack_frees_and_out_of_range_acks_are_ignored():
    m = card()
    for k in range(3):
        m.append(0, bytes([k]) * 10)
    sent(m)
    m.rx(peer(IRS, ISS + 40))                      # beyond SND.MAX: SND.UNA stays
    assert m.read("snd_una") == ISS and m.read("queued") == 30
    m.rx(peer(IRS, ISS + 15, window=1000))         # inside the second packet
    assert m.read("snd_una") == ISS + 15 and m.read("queued") == 15 and m.read("peer_window") == 1000
    m.rx(peer(IRS, ISS + 10))                      # behind SND.UNA: no move
    assert m.read("snd_una") == ISS + 15
    m.rx(peer(IRS, ISS + 30))
    assert m.read("queued") == 0 and m.counters["rx_segments"] == 4
    assert sent(m) == []                           # pure ACKs get no answer


def test_in_order_payload_pure_ack_and_piggyback():
    m = card(window=0)
    m.rx(peer(IRS, ISS, payload=b"hello", flags="PA", window=0, pad=True))   # padded by the peer's MAC
    (ack,) = sent(m)
    assert (int(ack[TCP].flags), ack[TCP].seq, ack[TCP].ack, len(ack[TCP].payload)) == (0x10, ISS, IRS + 5, 0)
    assert checksums_ok(ack)
    _, _, payload = m.take()
    assert payload == []       # taken by sent()
    m.append(0, b"order")      # window 0: waits
    assert sent(m) == []
    m.rx(peer(IRS + 5, ISS, payload=b"world", window=100))
    (data,) = sent(m)          # the order carries the ACK: no pure ACK
    assert (bytes(data[TCP].payload), data[TCP].ack) == (b"order", IRS + 10)
    assert m.read("rcv_nxt") == IRS + 10 and m.counters["tx_acks"] == 1


def test_payload_leaves_tagged_with_the_session():
    m = card(session=2)
    m.rx(peer(IRS, ISS, payload=b"abc"))
    _, punted, payload = m.take()
    assert payload == [(2, b"abc")] and punted == []


@pytest.mark.parametrize("why, frame", [
    ("arp", bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=CARD_IP))),
    ("other mac", peer(IRS, ISS, dst_mac="02:00:00:00:00:99")),
    ("other ip", peer(IRS, ISS, dst="10.77.0.9")),
    ("other port", peer(IRS, ISS, dport=CARD_PORT + 1)),
    ("other peer port", peer(IRS, ISS, sport=PEER_PORT + 1)),
    ("other peer", peer(IRS, ISS, src="10.77.0.3")),
    ("ip options", bytes(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, options=[b"\x01" * 4])
                         / TCP(sport=PEER_PORT, dport=CARD_PORT, seq=IRS, ack=ISS, flags="A"))),
    ("fragment", bytes(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, flags="MF")
                       / TCP(sport=PEER_PORT, dport=CARD_PORT, seq=IRS, ack=ISS, flags="A"))),
    ("udp", bytes(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, proto=17) / bytes(20))),
    ("syn", peer(IRS, ISS, flags="SA")), ("fin", peer(IRS, ISS, flags="FA")),
    ("rst", peer(IRS, ISS, flags="RA")), ("urg", peer(IRS, ISS, flags="UA", payload=b"x")),
    ("no ack", peer(IRS, ISS, flags="P", payload=b"x")),
    ("ece", peer(IRS, ISS, flags="EA")),
    ("tcp options", peer(IRS, ISS, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])),
    ("ahead", peer(IRS + 1, ISS, payload=b"x")), ("duplicate", peer(IRS - 1, ISS, payload=b"x")),
    ("window probe", peer(IRS - 1, ISS)),
    ("short", bytes(Ether(src=PEER_MAC, dst=CARD_MAC, type=0x0800)) + b"\x45\x00"),
    ("ipv6", bytes(Ether(src=PEER_MAC, dst=CARD_MAC, type=0x86DD)) + bytes(40)),
])
def test_punted_whole_and_unchanged(why, frame):
    m = card()
    m.rx(frame)
    tx, punted, payload = m.take()
    assert punted == [frame], why
    assert tx == [] and payload == []
    assert m.counters["rx_punted"] == 1 and m.counters["rx_segments"] == 0
    assert m.read("rcv_nxt") == IRS and m.read("peer_window") == 65535


def test_not_established_session_is_punted():
    m = card()
    m.write("established", 0)
    frame = peer(IRS, ISS, payload=b"x")
    m.rx(frame)
    assert m.take()[1] == [frame]


@pytest.mark.parametrize("field", ["ip", "tcp", "payload"])
def test_bad_checksums_are_dropped_and_counted(field):
    m = card()
    frame = bytearray(peer(IRS, ISS, payload=b"data!"))
    at = {"ip": 14 + 10, "tcp": 34 + 16, "payload": 54 + 2}[field]
    frame[at] ^= 0x40
    m.rx(bytes(frame))
    assert m.take() == ([], [], [])
    assert m.counters["rx_bad_checksum"] == 1 and m.counters["rx_punted"] == 0


def test_retransmit_is_go_back_n_with_the_same_bytes():
    m = card()
    packets = [bytes([65 + k]) * (5 + k) for k in range(4)]
    for p in packets:
        m.append(0, p)
    first = sent(m)
    m.rx(peer(IRS, ISS + 5))                     # the first is acknowledged
    m.write("retransmit", 0)
    again = sent(m)
    assert [(f[TCP].seq, bytes(f[TCP].payload)) for f in again] == \
        [(f[TCP].seq, bytes(f[TCP].payload)) for f in first[1:]]
    assert [f[IP].id for f in again] == [4, 5, 6]          # identification keeps counting
    assert m.counters["tx_retransmits"] == 3 and m.counters["tx_segments"] == 7
    m.append(0, b"new")
    (new,) = sent(m)
    assert new[TCP].seq == ISS + sum(map(len, packets)) and m.counters["tx_retransmits"] == 3


def test_retransmit_respects_the_window_and_an_ack_beyond_rewound_snd_nxt():
    m = card()
    for k in range(3):
        m.append(0, bytes([k]) * 10)
    sent(m)
    m.rx(peer(IRS, ISS, window=10))
    m.write("retransmit", 0)
    assert [f[TCP].seq for f in sent(m)] == [ISS]            # only the first fits
    m.rx(peer(IRS, ISS + 30, window=100))                    # the peer had them all
    assert sent(m) == [] and m.read("snd_nxt") == ISS + 30 and m.read("queued") == 0


def test_send_ack_and_probe():
    m = card()
    m.append(0, b"x" * 10)
    sent(m)
    m.write("retransmit", 0)
    sent(m)
    m.write("send_ack", 0)
    m.write("probe", 0)
    ack, probe = sent(m)
    assert (ack[TCP].seq, ack[TCP].ack, int(ack[TCP].flags), len(ack[TCP].payload)) == (ISS + 10, IRS, 0x10, 0)
    assert (probe[TCP].seq, int(probe[TCP].flags), len(probe[TCP].payload)) == (ISS - 1, 0x10, 0)
    assert m.counters["tx_acks"] == 2


def test_host_frames_go_out_as_they_are():
    m = card()
    raw = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=CARD_MAC) / ARP(psrc=CARD_IP, pdst=PEER_IP))
    m.send_frame(raw)
    assert m.take()[0] == [raw]


def test_full_descriptor_queue_stalls_the_input_in_order():
    m = card(descriptors=2, window=0)
    for k in range(4):
        m.append(0, bytes([k]) * 4, source="data")
    m.append(0, b"H" * 4, source="host")
    assert m.read("queued") == 8 and m.waiting() == 3
    m.rx(peer(IRS, ISS, window=1000))
    m.rx(peer(IRS, ISS + 8, window=1000))
    m.rx(peer(IRS, ISS + 16, window=1000))
    order = [bytes(f[TCP].payload)[:1] for f in sent(m)]
    # data first when both wait: every data packet goes before the waiting host packet
    assert order == [b"\0", b"\1", b"\2", b"\3", b"H"] and m.waiting() == 0


def test_full_buffer_stalls_and_words_are_counted():
    m = card(buffer_words=5, window=0)          # packets are stored from byte lane 6
    m.append(0, b"a" * 9)                       # 2 words
    m.append(0, b"b" * 16)                      # 3 words
    m.append(0, b"c")                           # 1 word: does not fit
    assert m.waiting() == 1 and m.read("queued") == 25
    m.append(0, b"d" * 40, source="host")       # 6 words, more than the whole buffer: dropped, not stuck
    m.rx(peer(IRS, ISS, window=100))
    m.rx(peer(IRS, ISS + 9, window=100))
    assert [bytes(f[TCP].payload)[:1] for f in sent(m)] == [b"a", b"b", b"c"]
    assert m.counters["tx_oversize_drops"] == 1


def test_sequence_numbers_wrap():
    iss = (1 << 32) - 6
    m = card(iss=iss, irs=(1 << 32) - 2, window=12)
    m.append(0, b"x" * 8)
    m.append(0, b"y" * 4)
    m.append(0, b"z")
    frames = sent(m)
    assert [f[TCP].seq for f in frames] == [iss, 2]
    m.rx(peer((1 << 32) - 2, 6, payload=b"abcd", window=12))
    frames = sent(m)
    assert [(f[TCP].seq, f[TCP].ack, bytes(f[TCP].payload)) for f in frames] == [(6, 2, b"z")]
    assert m.read("queued") == 1 and m.read("snd_una") == 6


def test_counters_saturate():
    m = card()
    m.counters["tx_acks"] = (1 << 32) - 1
    m.write("send_ack", 0)
    assert m.read("tx_acks") == (1 << 32) - 1


def test_model_card_port_selects_the_session():
    m = TcpCardModel(sessions=3)
    p = ModelCardPort(m)
    p.write("tcp.mss", 100, session=2)
    assert p.read("tcp.mss", session=1) == 0 and p.read("tcp.mss", session=2) == 100
    p.append(1, b"abc")
    assert m.counters["tx_closed_drops"] == 1
    assert p.poll() == ([], [])


# -- properties ---------------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    # one input only: with both waiting the gateware's go first (tested above), not call order
    st.tuples(st.just("append"), st.integers(1, 120), st.just("data")),
    st.tuples(st.just("ack"), st.integers(0, 100), st.integers(0, 400)),
    st.tuples(st.just("retransmit"), st.just(0), st.just(0)),
    st.tuples(st.just("data"), st.integers(1, 50), st.just(0)),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, iss=st.integers(0, (1 << 32) - 1), window=st.integers(0, 400))
def test_stream_window_and_retransmissions(ops, iss, window):
    """Whatever happens: nothing beyond the window, every byte sent is the appended byte at its
    sequence number, and after the peer acknowledges everything the stream is complete."""
    m = card(iss=iss, window=window, mss=100, buffer_words=32, descriptors=8)
    stream = b""
    appended = b""
    una, peer_window, rcv = iss, window, IRS
    wire: dict[int, int] = {}
    received = b""

    def check(frames):
        for f in frames:
            t = f[TCP]
            data = bytes(t.payload)
            if not data:
                continue
            offset = (t.seq - iss) % (1 << 32)
            end = (t.seq + len(data) - una) % (1 << 32)
            assert end <= peer_window, "sent beyond the window"
            assert appended[offset:offset + len(data)] == data
            for k, b in enumerate(data):
                assert wire.setdefault(offset + k, b) == b

    for op, a, b in ops:
        if op == "append":
            packet = bytes((len(stream) + k) % 251 for k in range(a))
            stream += packet
            m.append(0, packet, source=b)
            if a <= 100:
                appended += packet          # taken now, or waiting to be taken in order
        elif op == "ack":
            sent_so_far = (m.read("snd_max") - iss) % (1 << 32)
            acked = (una - iss) % (1 << 32)
            new = min(sent_so_far, acked + a)
            una, peer_window = (iss + new) % (1 << 32), b
            m.rx(peer(rcv, una, window=peer_window))
        elif op == "retransmit":
            m.write("retransmit", 0)
        else:
            m.rx(peer(rcv, una, window=peer_window, payload=b"p" * a))
            rcv += a
            received += b"p" * a
        check(sent(m))
        assert m.read("queued") >= (m.read("snd_max") - una) % (1 << 32)
    # the peer opens the window and acknowledges until everything is through
    peer_window = 400
    for _ in range(200):
        m.rx(peer(rcv, una, window=400))
        check(sent(m))
        m.write("retransmit", 0)
        check(sent(m))
        top = m.read("snd_max")
        if top == una and m.waiting() == 0 and m.read("queued") == 0:
            break
        una, peer_window = top, 400
        m.rx(peer(rcv, una, window=400))
        check(sent(m))
    assert m.read("queued") == 0 and m.waiting() == 0
    assert bytes(wire[k] for k in range(len(wire))) == appended
    assert m.read("rcv_nxt") == rcv
    _, punted, _ = m.take()
    assert punted == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_never_lost_or_crash(frame):
    m = card()
    m.rx(frame)
    counted = m.counters["rx_segments"] + m.counters["rx_punted"] + m.counters["rx_bad_checksum"]
    assert counted == 1
    _, punted, _ = m.take()
    assert punted == ([frame] if m.counters["rx_punted"] else [])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.integers(0, 200), st.integers(0, 255))
def test_truncated_or_corrupted_segments_are_counted(cut, flip_at, flip):
    good = peer(IRS, ISS, payload=b"0123456789")
    frame = bytearray(good[:len(good) - cut] if cut < len(good) else b"")
    if flip_at < len(frame):
        frame[flip_at] ^= flip
    m = card()
    m.rx(bytes(frame))
    counted = {name: m.counters[name] for name in ("rx_segments", "rx_punted", "rx_bad_checksum")}
    assert sum(counted.values()) == 1
    if counted["rx_segments"]:
        assert m.take()[2] == [(0, bytes(frame[54:64]))]


def test_counter_names_are_the_contracts():
    assert set(COUNTERS) == {"tx_segments", "tx_retransmits", "tx_acks", "tx_closed_drops", "tx_oversize_drops",
                             "rx_segments", "rx_bad_checksum", "rx_punted"}
