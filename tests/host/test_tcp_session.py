"""The host's connection manager and SoupBinTCP client over a card session (host/tcp_session.py),
driving the reference model of the card (sim/tcp_card_model.py) against a scripted peer whose
frames scapy builds and reads; timers run on a fake clock."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from tickwire.host.tcp_session import (CardAddress, CardSoupBinSession, TcpCard, TcpCardPort, TcpConnectError,
                                       TcpSessionError, TcpTimers, build_segment, parse_segment)
from tickwire.protocols import soupbintcp
from tickwire.sim.tcp_card_model import ModelCardPort, TcpCardModel

CARD_MAC, PEER_MAC = "02:00:00:00:77:02", "02:00:00:00:77:01"
CARD_IP, PEER_IP = "10.77.0.2", "10.77.0.1"
PEER_PORT = 15000
IRS = 7_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Net:
    """The card (model + host) and a scripted peer on the other end of the wire."""

    def __init__(self, *, timers: TcpTimers = TcpTimers(), sessions: int = 2) -> None:
        self.model = TcpCardModel(sessions=sessions)
        self.port = ModelCardPort(self.model)
        self.clock = Clock()
        self.card = TcpCard(self.port, CardAddress.of(CARD_MAC, CARD_IP), sessions=sessions, timers=timers,
                            clock=self.clock, rng=random.Random(7))
        self.seq = IRS          # the peer's next sequence number
        self.window = 65535
        self.services: list = []       # more loops to run (a SoupBinTCP client)

    def out(self) -> list:
        self.card.service()
        for service in self.services:
            service()
        return [Ether(f) for f in self.port.take_tx()]

    def tick(self, seconds: float) -> list:
        self.clock.t += seconds
        return self.out()

    def send(self, frame) -> None:
        self.port.receive(bytes(frame))

    def segment(self, c, flags: str = "A", payload: bytes = b"", *, seq: int | None = None, ack: int | None = None,
                window: int | None = None, options=None) -> None:
        seq = self.seq if seq is None else seq
        ack = self.model_snd_max(c) if ack is None else ack
        self.send(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, flags="DF")
                  / TCP(sport=PEER_PORT, dport=c.local_port, seq=seq, ack=ack, flags=flags,
                        window=self.window if window is None else window, options=options or []) / payload)

    def model_snd_max(self, c) -> int:
        return self.port.read("tcp.snd_max", session=c.session)

    def arp_reply(self) -> None:
        self.send(Ether(src=PEER_MAC, dst=CARD_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=CARD_MAC,
                                                          pdst=CARD_IP))

    def connect(self, session: int = 0, *, mss: int = 1000, window: int = 65535):
        c = self.card.connection(session, PEER_IP, PEER_PORT)
        c.open()
        (request,) = self.out()
        assert request[ARP].op == 1 and request[ARP].pdst == PEER_IP and request.dst == "ff:ff:ff:ff:ff:ff"
        self.arp_reply()
        (syn,) = self.out()
        self.window = window
        self.send(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP)
                  / TCP(sport=PEER_PORT, dport=c.local_port, seq=self.seq, ack=syn[TCP].seq + 1, flags="SA",
                        window=window, options=[("MSS", mss)]))
        self.seq += 1
        (ack,) = self.out()
        assert c.established and int(ack[TCP].flags) == 0x10 and ack[TCP].ack == self.seq
        return c, syn


def tcp_frames(frames):
    return [f for f in frames if TCP in f]


# -- ARP and the handshake ------------------------------------------------------------------------------

def test_answers_arp_for_the_card_only():
    net = Net()
    net.send(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=CARD_IP))
    net.send(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst="10.77.0.9"))
    (reply,) = net.out()
    assert (reply.dst, reply.src) == (PEER_MAC, CARD_MAC)
    a = reply[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, CARD_MAC, CARD_IP, PEER_MAC, PEER_IP)
    assert net.card.counters["arp_replies"] == 1


def test_arp_gives_up():
    net = Net(timers=TcpTimers(arp_interval=0.5, arp_retries=2))
    c = net.card.connection(0, PEER_IP, PEER_PORT)
    c.open()
    requests = len(net.out())
    for _ in range(6):
        requests += len(net.tick(0.5))
    assert c.state == "RESET" and "no ARP answer" in c.error and requests == 3


def test_handshake_loads_the_session():
    net = Net()
    c, syn = net.connect(mss=1000, window=5000)
    assert int(syn[TCP].flags) == 0x02 and syn[TCP].options == [("MSS", 1460)] and syn[TCP].window == 65535
    assert syn[IP].flags == "DF" and syn.dst == PEER_MAC
    again = Ether(bytes(syn))
    del again[IP].chksum, again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == syn[TCP].chksum
    p = net.port
    assert p.read("tcp.peer_mac", session=0) == int(PEER_MAC.replace(":", ""), 16)
    assert p.read("tcp.mss", session=0) == 1000 and p.read("tcp.peer_window", session=0) == 5000
    assert p.read("tcp.snd_nxt", session=0) == (syn[TCP].seq + 1) & 0xFFFFFFFF
    assert p.read("tcp.rcv_nxt", session=0) == IRS + 1 and p.read("tcp.established", session=0) == 1
    assert p.read("tcp.local_port", session=0) == c.local_port and syn[TCP].sport == c.local_port
    c.append(b"\x00\x01R")
    (data,) = net.out()
    assert (data[TCP].seq, bytes(data[TCP].payload)) == (syn[TCP].seq + 1, b"\x00\x01R")


def test_syn_is_repeated_with_backoff_then_given_up():
    net = Net(timers=TcpTimers(syn_retries=2))
    c = net.card.connection(0, PEER_IP, PEER_PORT)
    c.open()
    net.out()
    net.arp_reply()
    assert len(net.out()) == 1
    assert net.tick(0.99) == []
    assert len(net.tick(0.01)) == 1           # 1 s
    assert net.tick(1.5) == []
    assert len(net.tick(0.5)) == 1            # 2 s later
    net.tick(4.0)
    assert c.state == "RESET" and "no SYN-ACK" in c.error


def test_refused():
    net = Net()
    c = net.card.connection(0, PEER_IP, PEER_PORT)
    c.open()
    net.out()
    net.arp_reply()
    (syn,) = net.out()
    net.segment(c, "RA", seq=0, ack=syn[TCP].seq + 1)
    net.out()
    assert c.state == "RESET" and "refused" in c.error


# -- timers ---------------------------------------------------------------------------------------------

def test_rto_backoff_and_rtt_sample():
    net = Net(timers=TcpTimers(initial_rto=1.0, min_rto=0.01))
    c, syn = net.connect()
    c.append(b"\x00\x03Uab")
    (first,) = net.out()
    assert net.tick(0.99) == []
    (again,) = net.tick(0.01)
    assert bytes(again[TCP].payload) == bytes(first[TCP].payload) and again[TCP].seq == first[TCP].seq
    assert net.tick(1.99) == []
    assert len(net.tick(0.01)) == 1           # RTO doubled to 2 s
    assert c.rto == 4.0 and net.model.counters["tx_retransmits"] == 2
    net.segment(c)                            # everything acknowledged: Karn, no sample
    net.out()
    assert c.counters["rtt_samples"] == 0
    c.append(b"\x00\x03Ucd")
    net.out()
    net.tick(0.1)
    net.segment(c)
    net.out()
    assert c.counters["rtt_samples"] == 1
    assert c.srtt == pytest.approx(0.1) and c.rttvar == pytest.approx(0.05) and c.rto == pytest.approx(0.3)
    assert net.tick(5.0) == []                # nothing in flight, no timer


def test_zero_window_is_probed_and_reopens():
    net = Net(timers=TcpTimers(initial_rto=1.0, min_rto=1.0))
    c, _ = net.connect(window=0)
    c.append(b"\x00\x03Uxy")
    assert net.out() == []
    assert net.tick(0.5) == []
    (probe,) = net.tick(0.5)                                  # one RTO after it was seen blocked
    snd_una = net.port.read("tcp.snd_una", session=0)
    assert probe[TCP].seq == (snd_una - 1) & 0xFFFFFFFF and len(probe[TCP].payload) == 0
    assert net.tick(1.0) == []
    assert len(net.tick(1.0)) == 1                            # interval doubled
    net.segment(c, window=100)                                # the window opens
    (data,) = net.out()
    assert bytes(data[TCP].payload) == b"\x00\x03Uxy" and c.counters["probes"] == 2


def test_out_of_order_and_duplicates_are_answered_with_an_ack():
    net = Net()
    c, _ = net.connect()
    got = []
    c.on_payload = got.append
    net.segment(c, "PA", b"late", seq=net.seq + 10)
    (ack,) = net.out()
    assert ack[TCP].ack == net.seq and c.counters["acks_for_punted"] == 1
    net.segment(c, "PA", b"abc")
    net.out()
    net.segment(c, "PA", b"abc")                              # duplicate
    (dup,) = net.out()
    assert dup[TCP].ack == net.seq + 3 and got == [b"abc"]


def test_reset_by_the_peer_and_out_of_window_reset_ignored():
    net = Net()
    c, _ = net.connect()
    net.segment(c, "R", seq=net.seq + 70000)
    net.out()
    assert c.established
    net.segment(c, "R")
    net.out()
    assert c.state == "RESET" and net.port.read("tcp.established", session=0) == 0


def test_unknown_segment_gets_a_reset():
    net = Net()
    net.send(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP)
             / TCP(sport=1, dport=2, seq=5, ack=99, flags="PA") / b"x")
    (rst,) = net.out()
    assert int(rst[TCP].flags) == 0x04 and rst[TCP].seq == 99


# -- teardown -------------------------------------------------------------------------------------------

def test_active_close_waits_for_the_acknowledgement_then_fin():
    net = Net(timers=TcpTimers(time_wait=1.0))
    c, _ = net.connect()
    got = []
    c.on_payload = got.append
    c.append(b"\x00\x01O")
    net.out()
    c.close()
    assert tcp_frames(net.out()) == [] and c.state == "DRAINING"
    net.segment(c)
    (fin,) = net.out()
    top = net.model_snd_max(c)
    assert int(fin[TCP].flags) == 0x11 and fin[TCP].seq == top and c.state == "FIN_WAIT_1"
    net.segment(c, ack=top + 1)
    net.out()
    assert c.state == "FIN_WAIT_2"
    net.segment(c, "PA", b"bye", ack=top + 1)               # data after our FIN: the host takes it
    (ack,) = net.out()
    assert got == [b"bye"] and ack[TCP].ack == net.seq + 3
    net.seq += 3
    net.segment(c, "FA", ack=top + 1)
    (last,) = net.out()
    assert (last[TCP].seq, last[TCP].ack, c.state) == (top + 1, net.seq + 1, "TIME_WAIT")
    net.tick(1.0)
    assert c.state == "CLOSED" and c.finished


def test_fin_is_repeated_and_given_up():
    net = Net(timers=TcpTimers(fin_retries=1))
    c, _ = net.connect()
    c.close()
    (fin,) = net.out()
    (again,) = net.tick(1.0)
    assert again[TCP].seq == fin[TCP].seq
    frames = net.tick(2.0)
    assert c.state == "RESET" and [int(f[TCP].flags) & 0x04 for f in frames] == [0x04]


def test_passive_close_with_data_in_the_fin():
    net = Net()
    c, _ = net.connect()
    got = []
    c.on_payload = got.append
    net.segment(c, "FPA", b"end")
    (ack,) = net.out()
    assert got == [b"end"] and ack[TCP].ack == net.seq + 4 and c.state == "CLOSE_WAIT"
    c.append(b"\x00\x01R")                                   # half-closed: we may still send
    net.out()
    net.segment(c, seq=net.seq + 4)
    c.close()
    (fin,) = net.out()
    assert int(fin[TCP].flags) == 0x11 and c.state == "LAST_ACK" and fin[TCP].ack == net.seq + 4
    net.segment(c, seq=net.seq + 4, ack=fin[TCP].seq + 1)
    net.out()
    assert c.state == "CLOSED"


# -- bad input ------------------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(TcpSessionError, match="unicast"):
        CardAddress.of("01:00:5e:00:00:01", CARD_IP)
    with pytest.raises(TcpSessionError, match="IPv4 address must look like"):
        CardAddress.of(CARD_MAC, "10.77.0")
    with pytest.raises(TcpSessionError, match="prefix length"):
        CardAddress.of(CARD_MAC, CARD_IP, prefix_length=33)
    with pytest.raises(TcpSessionError, match="initial_rto"):
        TcpTimers(initial_rto=0)
    with pytest.raises(TcpSessionError, match="min_rto"):
        TcpTimers(min_rto=5, max_rto=1)
    with pytest.raises(TcpSessionError, match="not a TcpCardPort"):
        TcpCard(object(), CardAddress.of(CARD_MAC, CARD_IP))    # type: ignore[arg-type]
    net = Net()
    assert isinstance(net.port, TcpCardPort)
    with pytest.raises(TcpSessionError, match="card session must be 0..1"):
        net.card.connection(2, PEER_IP, PEER_PORT)
    with pytest.raises(TcpSessionError, match="peer port must be 1..65535"):
        net.card.connection(0, PEER_IP, 0)
    with pytest.raises(TcpSessionError, match="no gateway"):
        net.card.connection(0, "192.168.1.1", PEER_PORT)
    with pytest.raises(TcpSessionError, match="peer address"):
        net.card.connection(0, "nonsense", PEER_PORT)
    c = net.card.connection(0, PEER_IP, PEER_PORT)
    with pytest.raises(TcpSessionError, match="in use"):
        net.card.connection(0, PEER_IP, PEER_PORT)
    with pytest.raises(TcpSessionError, match="cannot send in state CLOSED|3..0"):
        c.append(b"\x00\x01R")
    c.open()
    with pytest.raises(TcpSessionError, match="opened already"):
        c.open()
    net2 = Net()
    c2, _ = net2.connect(mss=100)
    with pytest.raises(TcpSessionError, match="3..100 bytes"):
        c2.append(b"x" * 101)


def test_gateway_is_resolved_for_other_subnets():
    net = Net()
    net.card.address = CardAddress.of(CARD_MAC, CARD_IP, gateway_ip="10.77.0.254")
    c = net.card.connection(0, "192.168.5.5", PEER_PORT)
    c.open()
    (request,) = net.out()
    assert request[ARP].pdst == "10.77.0.254"


def test_parse_and_build_segment_round_trip():
    frame = build_segment(source_mac=1, destination_mac=2, source_ip=3, destination_ip=4, source_port=5,
                          destination_port=6, seq=7, ack=8, flags=0x12, window=9, payload=b"hi", mss=1400)
    s = parse_segment(frame)
    assert s is not None and (s.seq, s.ack, s.flags, s.window, s.payload, s.mss) == (7, 8, 0x12, 9, b"hi", 1400)
    bad = bytearray(frame)
    bad[-1] ^= 1
    assert parse_segment(bytes(bad)) is None and parse_segment(frame[:40]) is None


# -- SoupBinTCP over the card ---------------------------------------------------------------------------

class Config:
    name, number, host, port = "ouch1", 0, PEER_IP, PEER_PORT
    username, password, session, local_port = "TWUSER", "TWPASS", "", None


def soup_net(**kwargs):
    net = Net(timers=TcpTimers(time_wait=0.5))
    events = []
    soup = CardSoupBinSession(net.card, Config(), lambda kind, s, value: events.append((kind, value)), **kwargs)
    net.services.append(soup.service)
    return net, soup, events


def soup_connect(net, soup, *, arp: bool = True, frames=None):
    if frames is None:
        soup.start()
        frames = net.out()
    if arp:
        net.arp_reply()
        frames = net.out()
    (syn,) = frames
    net.send(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP)
             / TCP(sport=PEER_PORT, dport=syn[TCP].sport, seq=net.seq, ack=syn[TCP].seq + 1, flags="SA",
                   options=[("MSS", 1460)]))
    net.seq += 1
    frames = tcp_frames(net.out())
    login = [f for f in frames if len(f[TCP].payload)]
    assert len(login) == 1
    packets, rest = soupbintcp.unframe(bytes(login[0][TCP].payload))
    assert rest == b"" and packets[0][0] == "L"
    return soupbintcp.CLIENT["L"].unpack(packets[0][1])


def server(net, soup, packet_type: str, payload: bytes = b"") -> None:
    data = soupbintcp.frame(packet_type, payload)
    net.segment(soup.connection, "PA", data)
    net.seq += len(data)
    net.out()


def test_soupbin_login_sequenced_heartbeat_logout():
    net, soup, events = soup_net(heartbeat_interval=1.0)
    login = soup_connect(net, soup)
    assert (login["username"], login["password"], login["requested_sequence_number"].strip()) == \
        ("TWUSER", "TWPASS    ", "1")
    server(net, soup, "A", soupbintcp.SERVER["A"].pack(session="S1", sequence_number="5".rjust(20)))
    assert soup.logged_in and ("state", "up") in events
    server(net, soup, "S", b"accepted")
    server(net, soup, "H")
    assert [v for k, v in events if k == "sequenced"] == [(5, b"accepted")] and soup.next_sequence == 6
    net.segment(soup.connection)                 # the peer acknowledges the login
    net.out()
    frames = net.tick(1.0)
    assert [bytes(f[TCP].payload) for f in frames if len(f[TCP].payload)] == [soupbintcp.frame("R")]
    soup.send(soupbintcp.frame("U", b"order"))
    net.tick(0.5)
    assert [f for f in net.tick(0.4) if len(f[TCP].payload)] == []      # the order counted as sending
    soup.logout()
    (logout,) = [f for f in net.out() if len(f[TCP].payload)]
    assert bytes(logout[TCP].payload) == soupbintcp.frame("O")
    net.segment(soup.connection)
    net.segment(soup.connection, "FA")           # the server closes after the logout
    net.seq += 1
    frames = tcp_frames(net.out())
    assert any(int(f[TCP].flags) & 0x01 for f in frames)                # our FIN
    net.segment(soup.connection, ack=net.model_snd_max(soup.connection) + 1)
    net.out()
    assert soup.done and events[-1] == ("state", "stopped")


def test_soupbin_reconnect_resumes_the_sequence():
    net, soup, events = soup_net(server_timeout=3.0)
    soup_connect(net, soup)
    server(net, soup, "A", soupbintcp.SERVER["A"].pack(session="S1", sequence_number="1".rjust(20)))
    server(net, soup, "S", b"one")
    server(net, soup, "S", b"two")
    first_port = soup.connection.local_port
    net.segment(soup.connection, "R")            # the server resets
    net.out()
    assert soup.state.startswith("down") and not soup.logged_in
    net.tick(0.1)
    assert soup.connection is None
    login = soup_connect(net, soup, arp=False, frames=net.tick(0.15))  # ARP cache still knows the peer
    assert login["requested_sequence_number"].strip() == "3" and soup.connection.local_port != first_port
    server(net, soup, "A", soupbintcp.SERVER["A"].pack(session="S1", sequence_number="3".rjust(20)))
    server(net, soup, "S", b"three")
    assert [v for k, v in events if k == "sequenced"] == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert soup.logins == 2


def test_soupbin_server_silence_and_end_of_session():
    net, soup, events = soup_net(server_timeout=2.0, heartbeat_interval=10.0)
    soup_connect(net, soup)
    server(net, soup, "A", soupbintcp.SERVER["A"].pack(session="S1", sequence_number="1".rjust(20)))
    frames = net.tick(2.5)
    assert any(int(f[TCP].flags) & 0x04 for f in tcp_frames(frames))   # aborted with a RST
    assert "nothing from the server" in soup.state
    soup_connect(net, soup, arp=False, frames=net.tick(0.3))
    server(net, soup, "A", soupbintcp.SERVER["A"].pack(session="S1", sequence_number="1".rjust(20)))
    server(net, soup, "Z")
    assert soup.ended and ("state", "ended") in events


def test_soupbin_rejected_and_bad_config():
    net, soup, events = soup_net()
    soup_connect(net, soup)
    server(net, soup, "J", b"A")
    assert soup.state == "rejected: not authorized" and soup.stopped

    class Long(Config):
        username = "TOOLONGNAME"
    with pytest.raises(TcpSessionError, match="too long"):
        CardSoupBinSession(net.card, Long(), lambda *a: None)
    with pytest.raises(TcpSessionError, match="first sequence"):
        CardSoupBinSession(net.card, Config(), lambda *a: None, first_sequence=0)
    with pytest.raises(TcpSessionError, match="not logged in"):
        CardSoupBinSession(net.card, Config(), lambda *a: None).send(b"\x00\x01R")


def test_connect_error_type():
    assert issubclass(TcpConnectError, TcpSessionError)
