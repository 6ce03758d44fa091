"""sim/tcp_check.py: the checker against frames built with scapy (independent of our layouts),
each class of error, reassembly of shuffled segmentations, and the scripted peer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter

from tickwire.protocols import soupbintcp
from tickwire.sim.pcap import write_pcap
from tickwire.sim.tcp_check import (
    Direction, ScriptedPeer, TcpCheckError, TcpConnection, TcpStreamChecker, build_tcp_frame,
    check_pcap, parse_frame,
)

CARD_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CARD_IP, PEER_IP = "10.0.0.2", "10.0.0.1"
CARD_PORT, PEER_PORT = 40001, 15000
SENT, RECEIVED = Direction.CARD_SENT, Direction.CARD_RECEIVED


def card_frame(seq, ack, payload=b"", *, flags=None, window=65535, ip_id=0, options=None,
               src_mac=CARD_MAC, dst_mac=PEER_MAC, ttl=64, ip_flags="DF", sport=CARD_PORT):
    """A frame from the card, built by scapy (checksums computed by scapy)."""
    if flags is None:
        flags = "PA" if payload else "A"
    packet = (Ether(src=src_mac, dst=dst_mac)
              / IP(src=CARD_IP, dst=PEER_IP, id=ip_id, flags=ip_flags, ttl=ttl)
              / TCP(sport=sport, dport=PEER_PORT, seq=seq % 2**32, ack=ack % 2**32, flags=flags,
                    window=window,
                    options=options or []))
    if payload:
        packet = packet / Raw(payload)
    return bytes(packet)


def peer_frame(seq, ack, payload=b"", *, flags=None, window=65535, ip_id=0, options=None):
    if flags is None:
        flags = "PA" if payload else "A"
    packet = (Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, id=ip_id, flags="DF")
              / TCP(sport=PEER_PORT, dport=CARD_PORT, seq=seq % 2**32, ack=ack % 2**32, flags=flags,
                    window=window, options=options or []))
    if payload:
        packet = packet / Raw(payload)
    return bytes(packet)


def new_checker(**kwargs):
    return TcpStreamChecker(card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=PEER_MAC, **kwargs)


CARD_ISS, PEER_ISS = 0xFFFFFF00, 7_000_000      # the card's stream wraps around 2**32
LOGIN = soupbintcp.frame("L", b"user01pass01    " + b" " * 10 + b"1".rjust(20))
ORDERS = [soupbintcp.frame("U", b"O" + bytes([i]) * 46) for i in range(6)]
ACCEPTED = soupbintcp.frame("A", b"SESSION001" + b"1".rjust(20))
EXECUTIONS = [soupbintcp.frame("S", b"E" + bytes([0x40 + i]) * 39) for i in range(3)]


def clean_session():
    """A whole session as (direction, frame, timestamp, host) records: handshake, login, orders
    with a go-back-N retransmission and a duplicate ACK, executions, a zero window and its probe,
    teardown. Returns the records, the card's stream and the peer's stream."""
    records = []
    card_seq, peer_seq = CARD_ISS + 1, PEER_ISS + 1
    ident = iter(range(100, 10_000))
    t = iter(range(1_000, 10**9, 1_000))

    def card(frame, host=False):
        records.append((SENT, frame, next(t), host))

    def peer(frame):
        records.append((RECEIVED, frame, next(t), False))

    mss = [("MSS", 1460)]
    card(card_frame(CARD_ISS, 0, flags="S", options=mss, ip_id=1), host=True)
    peer(peer_frame(PEER_ISS, CARD_ISS + 1, flags="SA", window=4000, options=mss))
    card(card_frame(card_seq, peer_seq, ip_id=next(ident)))          # send_ack
    card_stream = LOGIN + b"".join(ORDERS)
    segments = [LOGIN] + ORDERS
    offsets = [0]
    for s in segments:
        offsets.append(offsets[-1] + len(s))
    # Login and three orders; the peer acknowledges the login only.
    for k in range(4):
        card(card_frame(CARD_ISS + 1 + offsets[k], peer_seq, segments[k], ip_id=next(ident)))
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[1], window=4000))
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[1], window=4000))        # duplicate ACK
    for k in range(1, 4):                                                      # retransmit
        card(card_frame(CARD_ISS + 1 + offsets[k], peer_seq, segments[k], ip_id=next(ident)))
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[4], window=4000))
    # Executions from the peer, each acknowledged by the card.
    peer_stream = ACCEPTED + b"".join(EXECUTIONS)
    for s in [ACCEPTED] + EXECUTIONS:
        peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[4], s, window=4000))
        peer_seq += len(s)
        card(card_frame(CARD_ISS + 1 + offsets[4], peer_seq, ip_id=next(ident)))
    # The peer closes its window; the card probes; the window reopens; the last orders go.
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[4], window=0))
    card(card_frame(CARD_ISS + 1 + offsets[4] - 1, peer_seq, ip_id=next(ident)))   # probe
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[4], window=0))
    peer(peer_frame(peer_seq, CARD_ISS + 1 + offsets[4], window=4000))
    for k in range(4, 7):
        card(card_frame(CARD_ISS + 1 + offsets[k], peer_seq, segments[k], ip_id=next(ident)))
    card_end = CARD_ISS + 1 + offsets[7]
    peer(peer_frame(peer_seq, card_end, window=4000))
    # Teardown by the host; the peer answers FIN; the host acknowledges it.
    card(card_frame(card_end, peer_seq, flags="FA", ip_id=5), host=True)
    peer(peer_frame(peer_seq, card_end + 1, flags="FA", window=4000))
    card(card_frame(card_end + 1, peer_seq + 1, flags="A", ip_id=6), host=True)
    return records, card_stream, peer_stream


def checked(records, **kwargs):
    checker = new_checker(**kwargs)
    checker.feed_all(records)
    return checker.result()


def test_clean_session_passes():
    records, card_stream, peer_stream = clean_session()
    result = checked(records, rcv_window=65535)
    assert result.errors == [], "\n".join(map(str, result.errors))
    result.raise_for_errors()
    report = result.report(CARD_PORT)
    assert report.card_stream == card_stream
    assert report.peer_stream == peer_stream
    assert report.card_gaps == [] and report.peer_gaps == []
    assert (report.card_segments, report.card_retransmitted_segments) == (10, 3)
    assert (report.card_pure_acks, report.card_window_probes) == (6, 1)
    assert report.card_host_frames == 3 and report.card_fin and report.peer_fin
    assert (report.peer_segments, report.peer_retransmitted_segments) == (4, 0)
    assert report.peer_duplicate_acks == 2       # the duplicate ACK and the repeated zero window
    assert report.peer_bad_checksums == 0 and not report.peer_reset


def test_clean_session_from_pcap(tmp_path):
    records, card_stream, peer_stream = clean_session()
    path = tmp_path / "session.pcap"
    write_pcap(path, [(t, frame) for _, frame, t, _ in records])
    result = check_pcap(path, card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=PEER_MAC)
    assert result.ok, "\n".join(map(str, result.errors))
    assert result.report(CARD_PORT).card_stream == card_stream
    assert result.report(CARD_PORT).peer_stream == peer_stream


def test_pcap_errors_carry_timestamps(tmp_path):
    records, _, _ = clean_session()
    frame = bytearray(records[4][1])
    frame[14 + 10] ^= 0x01                       # IPv4 header checksum
    records[4] = (SENT, bytes(frame), records[4][2], False)
    path = tmp_path / "bad.pcap"
    write_pcap(path, [(t, f) for _, f, t, _ in records])
    result = check_pcap(path, card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=PEER_MAC)
    assert [(e.index, e.timestamp_ns) for e in result.errors] == [(4, records[4][2])]
    with pytest.raises(TcpCheckError, match="IPv4 header checksum"):
        result.raise_for_errors()


def test_clean_session_from_pcapng(tmp_path):
    records, card_stream, _ = clean_session()
    path = tmp_path / "session.pcapng"
    with PcapNgWriter(str(path)) as writer:
        for _, frame, t, _ in records:
            packet = Ether(frame)
            packet.time = t / 1e9
            writer.write(packet)
    result = check_pcap(path, card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=PEER_MAC)
    assert result.ok, "\n".join(map(str, result.errors))
    assert result.report(CARD_PORT).card_stream == card_stream


def test_pcap_bad_file(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(b"not a pcap at all, really")
    with pytest.raises(TcpCheckError, match="not a pcap file"):
        check_pcap(path, card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=PEER_MAC)


# -- each class of error ----------------------------------------------------------------------

def first_data_record(records):
    """Index of the card's first data segment (the login) in ``clean_session``."""
    return next(i for i, (d, f, _, h) in enumerate(records)
                if d is SENT and not h and len(Ether(f)[TCP].payload))


def replace(records, index, frame):
    d, _, t, h = records[index]
    records = list(records)
    records[index] = (d, frame, t, h)
    return records


def flip(frame, position, mask=0x01):
    frame = bytearray(frame)
    frame[position] ^= mask
    return bytes(frame)


def ident_of(frame):
    return Ether(frame)[IP].id


def one_error(records, **kwargs):
    result = checked(records, **kwargs)
    assert len(result.errors) == 1, "\n".join(map(str, result.errors))
    return result.errors[0]


def test_bad_ip_checksum():
    records, _, _ = clean_session()
    i = first_data_record(records)
    error = one_error(replace(records, i, flip(records[i][1], 14 + 11)))
    assert error.index == i and "IPv4 header checksum" in error.message


def test_bad_tcp_checksum():
    records, _, _ = clean_session()
    i = first_data_record(records)
    error = one_error(replace(records, i, flip(records[i][1], 34 + 17)))
    assert error.index == i and "TCP checksum" in error.message


def test_payload_change_breaks_the_tcp_checksum_and_the_stream():
    records, _, _ = clean_session()
    i = first_data_record(records) + 1           # the first order: retransmitted later
    result = checked(replace(records, i, flip(records[i][1], 60)))
    messages = [e.message for e in result.errors]
    assert any("TCP checksum" in m for m in messages)
    assert any("first sent as" in m for m in messages)   # the retransmission differs from it


def test_conflicting_retransmission():
    records, _, _ = clean_session()
    retransmissions = [i for i, (d, f, _, h) in enumerate(records)
                       if d is SENT and not h and Ether(f)[TCP].seq == CARD_ISS + 1 + len(LOGIN)]
    i = retransmissions[1]                       # the second copy of the first order
    packet = Ether(records[i][1])
    payload = bytearray(bytes(packet[TCP].payload))
    payload[10] ^= 0xFF
    frame = card_frame(packet[TCP].seq, packet[TCP].ack, bytes(payload), ip_id=packet[IP].id)
    error = one_error(replace(records, i, frame))
    assert error.index == i and "first sent as" in error.message
    assert f"stream offset {len(LOGIN) + 10}" in error.message


def test_byte_beyond_window():
    records, _, _ = clean_session()
    # The SYN-ACK offers 4000 bytes; shrink it to less than the login and first two orders.
    window = len(LOGIN) + len(ORDERS[0]) + 5
    syn_ack = Ether(records[1][1])
    records = replace(records, 1, peer_frame(syn_ack[TCP].seq, syn_ack[TCP].ack, flags="SA",
                                             window=window, options=[("MSS", 1460)]))
    result = checked(records)
    # The second and third orders, sent before any ACK; the retransmissions come after one.
    assert [e.index for e in result.errors] == [5, 6]
    assert all("beyond the peer's window" in e.message for e in result.errors)
    assert f"window {window} =" in result.errors[0].message
    assert f"{len(ORDERS[1]) - 5} byte(s) beyond" in result.errors[0].message


def test_zero_window_respected_and_violated():
    records, _, _ = clean_session()
    zero = next(i for i, (d, f, _, _) in enumerate(records)
                if d is RECEIVED and Ether(f)[TCP].window == 0)
    # Move the frame that reopens the window after the card's next data segment.
    reopen = zero + 3
    assert Ether(records[reopen][1])[TCP].window == 4000
    moved = records[:reopen] + [records[reopen + 1], records[reopen]] + records[reopen + 2:]
    error = one_error(moved)
    assert error.index == reopen and "beyond the peer's window" in error.message


def test_ack_beyond_what_the_peer_sent():
    records, _, _ = clean_session()
    i = next(i for i, (d, f, _, h) in enumerate(records)
             if d is SENT and not h and Ether(f)[TCP].ack != PEER_ISS + 1)   # first ack of data
    packet = Ether(records[i][1])
    frame = card_frame(packet[TCP].seq, packet[TCP].ack + 1, ip_id=packet[IP].id)
    result = checked(replace(records, i, frame))
    assert [e.index for e in result.errors] == [i]
    assert "1 byte(s) beyond the peer's in-order data" in result.errors[0].message


def test_ack_of_an_out_of_order_segment_is_an_error():
    checker = new_checker(connections=[TcpConnection(CARD_PORT, PEER_IP, PEER_PORT, snd_nxt=1000,
                                                     rcv_nxt=5000, peer_window=1000)])
    checker.feed(RECEIVED, peer_frame(5010, 1000, b"x" * 10))           # bytes 10..20: a hole
    checker.feed(SENT, card_frame(1000, 5000, ip_id=1))                 # fine: still 5000
    checker.feed(SENT, card_frame(1000, 5020, ip_id=2))                 # acks across the hole
    checker.feed(RECEIVED, peer_frame(5000, 1000, b"y" * 10))
    checker.feed(SENT, card_frame(1000, 5020, ip_id=3))                 # now right
    checker.feed(SENT, card_frame(1000, 5010, ip_id=4))                 # backwards
    result = checker.result()
    assert [e.index for e in result.errors] == [2, 5]
    assert "went backwards" in result.errors[1].message
    assert result.report(CARD_PORT).peer_stream == b"y" * 10 + b"x" * 10


def test_options_present():
    records, _, _ = clean_session()
    i = first_data_record(records)
    packet = Ether(records[i][1])
    frame = card_frame(packet[TCP].seq, packet[TCP].ack, bytes(packet[TCP].payload),
                       ip_id=packet[IP].id, options=[("NOP", None), ("NOP", None),
                                                     ("Timestamp", (1, 2))])
    error = one_error(replace(records, i, frame))
    assert error.index == i and "TCP options present (data offset 8 words)" in error.message


@pytest.mark.parametrize("which", ["source", "destination"])
def test_wrong_mac(which):
    records, _, _ = clean_session()
    i = first_data_record(records)
    packet = Ether(records[i][1])
    other = "02:00:00:00:00:99"
    kwargs = {"src_mac": other} if which == "source" else {"dst_mac": other}
    frame = card_frame(packet[TCP].seq, packet[TCP].ack, bytes(packet[TCP].payload),
                       ip_id=packet[IP].id, **kwargs)
    error = one_error(replace(records, i, frame))
    assert error.index == i and f"Ethernet {which} 02:00:00:00:00:99" in error.message


@pytest.mark.parametrize("change, message", [
    ({"ttl": 63}, "TTL 63"),
    ({"ip_flags": 0}, "flags/fragment offset 0x0000"),
    ({"flags": "FA"}, "TCP flags ACK|FIN"),
    ({"flags": "A"}, "data goes with ACK|PSH"),
    ({"sport": 40002}, "no known connection"),
])
def test_header_fields(change, message):
    records, _, _ = clean_session()
    i = first_data_record(records)
    packet = Ether(records[i][1])
    frame = card_frame(packet[TCP].seq, packet[TCP].ack, bytes(packet[TCP].payload),
                       ip_id=packet[IP].id, **change)
    errors = checked(replace(records, i, frame)).errors
    assert any(e.index == i and message in e.message for e in errors), "\n".join(map(str, errors))


def test_identification_must_increment():
    records, _, _ = clean_session()
    i = first_data_record(records) + 1
    packet = Ether(records[i][1])
    frame = card_frame(packet[TCP].seq, packet[TCP].ack, bytes(packet[TCP].payload),
                       ip_id=packet[IP].id + 1)
    errors = checked(replace(records, i, frame)).errors
    assert [e.index for e in errors] == [i, i + 1]      # the skip, then the step back
    assert "IPv4 identification" in errors[0].message


def test_total_length_and_padding():
    records, _, _ = clean_session()
    i = 2                                         # the card's first pure ACK: 54 bytes
    assert len(records[i][1]) == 54
    padded = checked(replace(records, i, records[i][1] + bytes(6)))
    assert padded.ok, "\n".join(map(str, padded.errors))
    longer = checked(replace(records, i, records[i][1] + bytes(8)))
    assert [e.index for e in longer.errors] == [i] and "total length 40" in longer.errors[0].message


def test_gap_in_the_card_stream():
    checker = new_checker(connections=[TcpConnection(CARD_PORT, PEER_IP, PEER_PORT, snd_nxt=2**32 - 5,
                                                     rcv_nxt=0, peer_window=100)])
    checker.feed(SENT, card_frame(2**32 - 5, 0, b"0123456789", ip_id=1))
    checker.feed(SENT, card_frame(15, 0, b"abcde", ip_id=2))           # offsets 20..24
    result = checker.result()
    assert [e.index for e in result.errors] == [None]
    assert "sequence numbers 5..14 (stream offsets 10..19) were never sent" in result.errors[0].message
    report = result.report(CARD_PORT)
    assert report.card_stream == b"0123456789" and report.card_gaps == [(10, 20)]
    assert checker.result().errors == result.errors             # result() can be read again


def test_pure_ack_beyond_snd_max():
    checker = new_checker(connections=[TcpConnection(CARD_PORT, PEER_IP, PEER_PORT, snd_nxt=10,
                                                     rcv_nxt=20)])
    checker.feed(SENT, card_frame(10, 20, b"abc", ip_id=1))
    checker.feed(SENT, card_frame(13, 20, ip_id=2))
    checker.feed(SENT, card_frame(14, 20, ip_id=3))
    result = checker.result()
    assert [e.index for e in result.errors] == [2] and "beyond SND.MAX 13" in result.errors[0].message


def test_unknown_connection_without_learning():
    checker = new_checker(learn_connections=False)
    checker.feed(SENT, card_frame(1, 0, flags="S"), host=True)
    checker.feed(SENT, card_frame(2, 0, b"x", ip_id=1))
    errors = checker.result().errors
    assert len(errors) == 2 and all("no known connection" in e.message for e in errors)


def test_host_frames_and_reconnect():
    checker = new_checker()
    arp = bytes(Ether(src=CARD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CARD_IP, pdst=PEER_IP))
    checker.feed(SENT, arp, host=True)
    checker.feed(SENT, arp)                       # not marked: an error
    for iss, data in ((100, b"first"), (900, b"second")):
        checker.feed(SENT, card_frame(iss, 0, flags="S", options=[("MSS", 1460)], ttl=128),
                     host=True)                   # the host's own TTL is no error
        checker.feed(RECEIVED, peer_frame(50, iss + 1, flags="SA", window=100))
        checker.feed(SENT, card_frame(iss + 1, 51, data, ip_id=7))
    result = checker.result()
    assert [e.index for e in result.errors] == [1, 1]           # broadcast, and not TCP
    assert "EtherType 0x0806" in result.errors[1].message
    assert [r.card_stream for r in result.reports] == [b"first", b"second"]
    assert result.report(CARD_PORT).card_stream == b"second"
    with pytest.raises(TcpCheckError, match="no connection on the card's port 1"):
        result.report(1)


def test_bad_input():
    with pytest.raises(TcpCheckError, match="direction must be one of"):
        new_checker().feed("sideways", b"")
    with pytest.raises(TcpCheckError, match="port number"):
        TcpConnection(0, PEER_IP, PEER_PORT)
    with pytest.raises(ValueError, match="MAC address"):
        TcpStreamChecker(card_mac="nope", card_ip=CARD_IP, peer_mac=PEER_MAC)
    checker = new_checker()
    checker.feed(SENT, b"\x00" * 10)
    assert "runt frame of 10 bytes" in checker.result().errors[0].message


# -- reassembly of shuffled segmentations -----------------------------------------------------

@st.composite
def shuffled_session(draw):
    """Both streams cut at random points, random segments sent again (whole or from a random
    point, as a go-back-N would), each direction shuffled, then interleaved at random. The card's
    acknowledgment numbers follow what the peer's frames delivered so far in wire order."""
    card_stream = draw(st.binary(min_size=1, max_size=3000))
    peer_stream = draw(st.binary(min_size=0, max_size=1500))
    card_iss = draw(st.sampled_from([0, 0xFFFFFFFF - 700, 0x7FFFFFF0, 123456]))
    peer_iss = draw(st.sampled_from([0xFFFFFFFF, 0xFFFFFF00, 5]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def cut(stream, limit):
        points = sorted(set(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(limit)))))
        bounds = [0] + points + [len(stream)]
        segments = [(a, stream[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
        for _ in range(rng.randrange(len(segments) + 1)):
            a, data = rng.choice(segments)
            start = rng.randrange(len(data))
            segments.append((a + start, data[start:start + rng.randrange(1, len(data) - start + 1)]))
        rng.shuffle(segments)
        return segments

    card_segments = cut(card_stream, 40)
    peer_segments = cut(peer_stream, 20) if peer_stream else []
    order = [SENT] * len(card_segments) + [RECEIVED] * len(peer_segments)
    rng.shuffle(order)
    return card_stream, peer_stream, card_iss, peer_iss, card_segments, peer_segments, order


@settings(max_examples=60, deadline=None)
@given(shuffled_session())
def test_shuffled_segmentation_reassembles(session):
    card_stream, peer_stream, card_iss, peer_iss, card_segments, peer_segments, order = session
    records = [(SENT, card_frame(card_iss, 0, flags="S"), None, True),
               (RECEIVED, peer_frame(peer_iss, card_iss + 1, flags="SA", window=65535))]
    received = set()
    card_high = 0
    identification = iter(range(2**16 + 10))
    card_iter, peer_iter = iter(card_segments), iter(peer_segments)
    for direction in order:
        if direction is SENT:
            offset, data = next(card_iter)
            in_order = 0
            while in_order in received:
                in_order += 1
            records.append((SENT, card_frame(card_iss + 1 + offset, peer_iss + 1 + in_order, data,
                                             ip_id=next(identification)), None, False))
            card_high = max(card_high, offset + len(data))
        else:
            offset, data = next(peer_iter)
            received.update(range(offset, offset + len(data)))
            records.append((RECEIVED, peer_frame(peer_iss + 1 + offset, card_iss + 1, data,
                                                 window=65535), None, False))
    in_order = len(peer_stream)
    records.append((SENT, card_frame(card_iss + 1 + card_high, peer_iss + 1 + in_order,
                                     ip_id=next(identification)), None, False))
    result = checked(records)
    assert result.ok, "\n".join(map(str, result.errors))
    report = result.report(CARD_PORT)
    assert report.card_stream == card_stream and report.peer_stream == peer_stream
    assert report.card_segments == len(card_segments)
    assert report.card_pure_acks == 1


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=2, max_size=400), st.data())
def test_one_changed_byte_in_a_retransmission_is_found(stream, data):
    cut = data.draw(st.integers(1, len(stream) - 1))
    position = data.draw(st.integers(0, len(stream) - 1))
    changed = bytearray(stream)
    changed[position] ^= data.draw(st.integers(1, 255))
    checker = new_checker(connections=[TcpConnection(CARD_PORT, PEER_IP, PEER_PORT, snd_nxt=1,
                                                     rcv_nxt=1, peer_window=1000)])
    checker.feed(SENT, card_frame(1, 1, stream[:cut], ip_id=0))
    checker.feed(SENT, card_frame(1 + cut, 1, stream[cut:], ip_id=1))
    checker.feed(SENT, card_frame(1, 1, bytes(changed), ip_id=2))
    errors = checker.result().errors
    assert len(errors) == 1 and errors[0].index == 2
    assert f"(stream offset {position})" in errors[0].message


# -- the scripted peer ------------------------------------------------------------------------

class MiniCard:
    """A card-like go-back-N sender built with scapy, to drive :class:`ScriptedPeer`."""

    def __init__(self, peer, checker, iss=0xFFFFFFF0):
        self.peer, self.checker = peer, checker
        self.snd_una = self.snd_nxt = self.base = iss + 1
        self.peer_window = peer.window
        self.rcv_nxt = peer.snd_nxt
        self.stream = bytearray()
        self.segments: list[tuple[int, bytes]] = []      # (offset, packet)
        self.ident = 0
        self.delivered = bytearray()

    def _frame(self, seq, payload=b""):
        self.ident += 1
        return card_frame(seq & 0xFFFFFFFF, self.rcv_nxt, payload, ip_id=self.ident)

    def _out(self, frame):
        self.checker.feed(SENT, frame)
        for answer in self.peer.receive(frame):
            self.inbound(answer)

    def inbound(self, frame):
        self.checker.feed(RECEIVED, frame)
        tcp = Ether(frame)[TCP]
        delta = (tcp.ack - self.snd_una) % 2**32
        ack = self.snd_una + (delta - 2**32 if delta >= 2**31 else delta)
        if self.snd_una <= ack <= self.snd_nxt:
            self.snd_una = ack
        self.peer_window = tcp.window
        payload = bytes(tcp.payload)
        if payload and tcp.seq == self.rcv_nxt:
            self.delivered += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) % 2**32
            self._out(self._frame(self.snd_max))

    @property
    def snd_max(self):
        return self.base + len(self.stream)

    def append(self, packet):
        self.segments.append((len(self.stream), packet))
        self.stream += packet

    def pump(self, *, honour_window=True):
        """Send queued segments the window allows; returns how many went."""
        sent = 0
        for offset, packet in self.segments:
            seq = self.base + offset
            if seq < self.snd_nxt:
                continue
            if honour_window and seq + len(packet) - self.snd_una > self.peer_window:
                break
            self.snd_nxt = seq + len(packet)
            self._out(self._frame(seq, packet))
            sent += 1
        return sent

    def retransmit(self):
        self.snd_nxt = self.snd_una
        return self.pump()

    def probe(self):
        self._out(self._frame(self.snd_una - 1))


def peer_and_card(**kwargs):
    peer = ScriptedPeer(card_mac=CARD_MAC, card_ip=CARD_IP, card_port=CARD_PORT, peer_mac=PEER_MAC,
                        peer_ip=PEER_IP, peer_port=PEER_PORT, card_sequence=0xFFFFFFF1,
                        peer_sequence=0x7FFFFFF0, **kwargs)
    checker = new_checker(connections=[peer.connection])
    return peer, MiniCard(peer, checker), checker


def assert_scapy_agrees(frame):
    """scapy recomputes both checksums of a frame the peer built and gets the same."""
    packet = Ether(frame)
    again = packet.copy()
    del again[IP].chksum, again[TCP].chksum
    again = Ether(bytes(again))
    assert (again[IP].chksum, again[TCP].chksum) == (packet[IP].chksum, packet[TCP].chksum)
    return packet


def test_peer_clean_round_trip():
    peer, card, checker = peer_and_card()
    orders = [soupbintcp.frame("U", bytes([i]) * (20 + i)) for i in range(20)]
    for o in orders:
        card.append(o)
    assert card.pump() == 20
    for frame in peer.send_soup("A", b"SESSION001" + b"1".rjust(20)) + peer.send_soup("S", b"E" * 40):
        assert_scapy_agrees(frame)
        card.inbound(frame)
    result = checker.result()
    assert result.ok, "\n".join(map(str, result.errors))
    report = result.report(CARD_PORT)
    assert bytes(peer.received) == report.card_stream == b"".join(orders)
    assert report.peer_stream == bytes(card.delivered) == \
        soupbintcp.frame("A", b"SESSION001" + b"1".rjust(20)) + soupbintcp.frame("S", b"E" * 40)
    assert (report.card_segments, report.peer_pure_acks, report.card_pure_acks) == (20, 20, 2)
    assert peer.snd_una == peer.snd_nxt and card.snd_una == card.snd_max


def test_peer_loss_duplicate_acks_and_retransmission():
    peer, card, checker = peer_and_card()
    orders = [soupbintcp.frame("U", bytes([i]) * 30) for i in range(6)]
    for o in orders:
        card.append(o)
    peer.drop_card_segments(2)
    card.pump()
    assert peer.dropped == [2] and peer.duplicate_acks_sent == 3   # for segments 3, 4 and 5
    assert checker.result().report(CARD_PORT).peer_duplicate_acks == 3
    assert card.snd_una == card.base + 2 * len(orders[0])
    assert card.retransmit() == 4               # go-back-N: 2 fills the hole, 3..5 are old
    assert peer.duplicate_acks_sent == 6
    result = checker.result()
    assert result.ok, "\n".join(map(str, result.errors))
    report = result.report(CARD_PORT)
    assert bytes(peer.received) == report.card_stream == b"".join(orders)
    assert (report.card_segments, report.card_retransmitted_segments) == (10, 4)
    assert report.peer_duplicate_acks == 6
    assert card.snd_una == card.snd_max


def test_peer_zero_window_probe_and_reopen():
    peer, card, checker = peer_and_card(window=100, auto_ack=False)
    for i in range(8):
        card.append(soupbintcp.frame("U", bytes([i]) * 30))       # 33 bytes each
    assert card.pump() == 3                                      # 99 bytes fit in 100
    card.inbound(peer.set_window(0))                             # acknowledges them, closes
    assert card.pump() == 0
    card.probe()
    assert checker.result().report(CARD_PORT).card_window_probes == 1
    card.inbound(peer.set_window(1000))
    assert card.pump() == 5
    card.inbound(peer.ack())
    assert card.snd_una == card.snd_max
    result = checker.result()
    assert result.ok, "\n".join(map(str, result.errors))
    assert bytes(peer.received) == bytes(card.stream) and peer.beyond_window_bytes == 0


def test_peer_cuts_bytes_beyond_its_window_and_the_checker_flags_them():
    peer, card, checker = peer_and_card(window=50, auto_ack=False)
    card.append(soupbintcp.frame("U", b"x" * 40))
    card.append(soupbintcp.frame("U", b"y" * 40))
    card.pump(honour_window=False)
    assert peer.beyond_window_bytes == 2 * 43 - 50 and len(peer.received) == 50
    errors = checker.result().errors
    assert len(errors) == 1 and "36 byte(s) beyond the peer's window" in errors[0].message


def test_peer_out_of_order_and_duplicate_segments_reach_the_checker():
    peer, card, checker = peer_and_card(mss=16)
    data = bytes(range(100))
    frames = peer.send(data)
    assert len(frames) == 7
    for frame in [frames[3], frames[0], frames[0]] + frames[1:]:
        checker.feed(RECEIVED, frame)
    report = checker.result().report(CARD_PORT)
    assert report.peer_stream == data and report.peer_retransmitted_segments == 2
    again = peer.retransmit()
    assert [bytes(Ether(f)[TCP].payload) for f in again] == \
        [bytes(Ether(f)[TCP].payload) for f in frames]


def test_peer_fault_frames():
    peer, card, checker = peer_and_card()
    bad_ip = peer.segment(b"abc", bad_ip_checksum=True)
    bad_tcp = peer.segment(b"abc", bad_tcp_checksum=True)
    with_options = peer.segment(b"abc", options=bytes((1, 1, 8, 10)) + bytes(8))
    with_ip_options = peer.segment(b"abc", ip_options=bytes((1, 1, 1, 0)))
    for frame in (bad_ip, bad_tcp):
        checker.feed(RECEIVED, frame)
    report = checker.result().report(CARD_PORT)
    assert report.peer_bad_checksums == 2 and report.peer_stream == b""
    packet = assert_scapy_agrees(with_options)
    assert packet[TCP].dataofs == 8 and packet[TCP].options[2][0] == "Timestamp"
    packet = Ether(with_ip_options)
    assert packet[IP].ihl == 6 and bytes(packet[TCP].payload) == b"abc"
    assert Ether(peer.rst())[TCP].flags == "RA"
    fin = peer.fin()
    assert Ether(fin)[TCP].flags == "FA" and peer.snd_nxt == (0x7FFFFFF0 + 1)
    checker.feed(RECEIVED, fin)
    checker.feed(SENT, card_frame(0xFFFFFFF1, 0x7FFFFFF1, flags="FA", ip_id=1), host=True)
    result = checker.result()
    assert result.ok, "\n".join(map(str, result.errors))
    assert result.report(CARD_PORT).peer_fin and result.report(CARD_PORT).card_fin


def test_peer_answers_the_handshake_and_fin():
    peer, card, checker = peer_and_card()
    syn = card_frame(0x1000, 0, flags="S", options=[("MSS", 1460)])
    [syn_ack] = peer.receive(syn)
    packet = assert_scapy_agrees(syn_ack)
    assert packet[TCP].flags == "SA" and packet[TCP].ack == 0x1001
    assert packet[TCP].seq == 0x7FFFFFEF and dict(packet[TCP].options)["MSS"] == 1460
    assert peer.receive(card_frame(0x1001, 0x7FFFFFF0, b"hi", ip_id=1)) != []
    [fin_ack] = peer.receive(card_frame(0x1003, 0x7FFFFFF0, flags="FA", ip_id=2))
    assert Ether(fin_ack)[TCP].ack == 0x1004 and peer.fin_received
    assert peer.receive(card_frame(0x1004, 0x7FFFFFF0, flags="R", ip_id=3)) == []
    assert peer.reset_received and bytes(peer.received) == b"hi"


def test_peer_ignores_frames_that_are_not_its_own():
    peer, card, checker = peer_and_card()
    assert peer.receive(card_frame(0xFFFFFFF1, 0, b"x", sport=1234)) == []
    assert peer.receive(flip(card_frame(0xFFFFFFF1, 0, b"x"), 34 + 17)) == []
    assert (peer.ignored, peer.bad_checksums, len(peer.received)) == (1, 1, 0)


def test_peer_without_auto_ack():
    peer, card, checker = peer_and_card(auto_ack=False)
    card.append(b"abcdef")
    card.pump()
    assert card.snd_una == card.base and bytes(peer.received) == b"abcdef"
    card.inbound(peer.ack())
    assert card.snd_una == card.snd_max


def test_build_and_parse_agree_with_scapy():
    frame = build_tcp_frame(source_mac=0x020000000001, destination_mac=0x020000000002,
                            source_ip=0x0A000002, destination_ip=0x0A000001, source_port=1,
                            destination_port=2, sequence_number=2**32 + 5, acknowledgment_number=9,
                            flags=0x18, window=77, payload=b"payload", identification=3)
    reference = (Ether(src=CARD_MAC, dst=PEER_MAC) / IP(src=CARD_IP, dst=PEER_IP, id=3, flags="DF")
                 / TCP(sport=1, dport=2, seq=5, ack=9, flags="PA", window=77) / Raw(b"payload"))
    assert frame == bytes(reference)
    parsed = parse_frame(frame)
    assert parsed.ip_checksum_ok and parsed.tcp_checksum_ok and parsed.payload == b"payload"
    assert parsed.tcp["sequence_number"] == 5 and parsed.padding == b""
    assert not parse_frame(flip(frame, 60)).tcp_checksum_ok
    assert parse_frame(b"\x00" * 5) is None
    with pytest.raises(TcpCheckError, match="at most 40 fit"):
        build_tcp_frame(source_mac=0, destination_mac=0, source_ip=0, destination_ip=0,
                        source_port=1, destination_port=2, sequence_number=0,
                        acknowledgment_number=0, flags=0, window=0, options=bytes(41))
