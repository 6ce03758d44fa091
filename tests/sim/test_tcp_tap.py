"""The card's TCP engine behind a TAP interface, twice over: its reference model
(sim/tcp_card_model.py) and the Verilated appliance itself (``tickwire sim serve --transport
tcp``, whose order port the bridge connects to the TAP),
(sim/tap.py), driven by the host's connection manager and SoupBinTCP client
(host/tcp_session.py), against the Linux kernel's TCP stack in a network namespace each test
creates and removes: handshake, thousands of orders and executions compared byte for byte, a
segment dropped in each direction, a window that closes and reopens, a peer reset, reconnects
that resume the SoupBinTCP sequence (also against ``tickwire exchange``), and a tcpdump capture
checked with tshark and scapy. Every loop is bounded in count and time."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickwire.protocols import ouch, soupbintcp
from tickwire.sim.tcp_lab import (PEER_IP, PEER_PORT, TAP_NAME, Lab, ModelBackend, SimCardBackend,
                                  analyse_capture, check_streams, check_with_tcp_check, connect, logout,
                                  run, tshark_findings)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="TAP interfaces and network namespaces need root"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="/dev/net/tun is missing (no TUN/TAP)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2)"),
]


@pytest.fixture
def netns():
    name = f"twtcp{os.getpid()}"
    run("ip", "netns", "del", name, check=False)
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def tcp_card_server(tmp_path_factory):
    """``tickwire sim serve --transport tcp`` on a Unix socket, for the whole module (built once)."""
    from tickwire.sim.card import build_card_harness, served
    build_card_harness(announce=lambda text: print(text, file=sys.stderr))
    with served(tmp_path_factory.mktemp("tcpcard"), transport="tcp") as path:
        yield path


@pytest.fixture(params=["model", "card"])
def backend(request):
    """The card side: the engine's model, or the Verilated appliance."""
    if request.param == "model":
        yield ModelBackend()
    else:
        yield SimCardBackend(request.getfixturevalue("tcp_card_server"))


@pytest.fixture
def lab(netns, tmp_path, backend):
    lab = Lab(netns, tmp_path, backend=backend)
    yield lab
    lab.close()


# -- the tests ------------------------------------------------------------------------------------------

def test_handshake_orders_executions_and_clean_capture(lab, capsys):
    pcap = lab.start_capture()
    peer = lab.start_peer()
    handshake = connect(lab)
    count = 3000
    start = time.monotonic()
    assert lab.send_orders(count, 20.0) == count
    assert lab.run_until(lambda: len(lab.sequenced()) == count, 10.0), len(lab.sequenced())
    seconds = time.monotonic() - start
    logout(lab)
    peer.wait(5)
    check_streams(lab)
    sequenced = lab.sequenced()
    assert [n for n, _ in sequenced] == list(range(1, count + 1))
    for k, (_, message) in enumerate(sequenced):
        assert ouch.unpack_outbound(message)["user_ref_num"] == k + 1
    counters = lab.backend.counters()
    assert counters["rx_bad_checksum"] == 0 and counters["tx_oversize_drops"] == 0
    assert counters["tx_closed_drops"] == 0
    with capsys.disabled():
        print(f"\n{type(lab.backend).__name__} over TAP: handshake + login {handshake * 1e3:.1f} ms; {count} orders and "
              f"executions in {seconds:.2f} s = {count / seconds:,.0f} orders/s; card {counters}")
    if pcap is None:
        pytest.skip("tcpdump is not installed (Debian package tcpdump): capture not checked")
    lab.stop_capture()
    stats = analyse_capture(pcap)
    assert stats["card_segments"] >= count and stats["retransmitted"] == 0
    check_with_tcp_check(lab, pcap)
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (Debian package tshark): expert analysis not run")
    assert tshark_findings(pcap) == []


def test_a_dropped_segment_in_each_direction(netns, tmp_path, backend):
    """The bridge drops the card's 100th data segment (the host's RTO makes the card retransmit)
    and the kernel's 80th (the kernel retransmits; the card punts what then comes out of order
    and the host answers each with an ACK). Where the kernel has netem (CONFIG_NET_SCH_NETEM),
    it also drops 2% of the kernel's segments at random."""
    seen = {"from_card": 0, "to_card": 0}

    def drop(direction: str, frame: bytes) -> bool:
        if len(frame) > 54 and frame[23] == 6 and struct.unpack_from("!H", frame, 16)[0] > 40:
            seen[direction] += 1
            return seen[direction] == {"from_card": 100, "to_card": 80}[direction]
        return False
    lab = Lab(netns, tmp_path, drop=drop, backend=backend)
    try:
        pcap = lab.start_capture()
        netem = run("ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", TAP_NAME, "root", "netem", "loss",
                    "2%", check=False).returncode == 0
        lab.start_peer()
        connect(lab)
        count = 600
        assert lab.send_orders(count, 15.0) == count
        assert lab.run_until(lambda: len(lab.sequenced()) == count, 15.0), len(lab.sequenced())
        if netem:
            run("ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", TAP_NAME, "root")
        retransmits = lab.soup.connection.counters["retransmits"]
        acks_for_punted = lab.soup.connection.counters["acks_for_punted"]
        logout(lab)
        lab.processes[-1].wait(5)
        check_streams(lab)
        assert [n for n, _ in lab.sequenced()] == list(range(1, count + 1))
        assert lab.bridge.counters == {**lab.bridge.counters, "dropped_from_card": 1, "dropped_to_card": 1}
        counters = lab.backend.counters()
        assert retransmits >= 1 and counters["tx_retransmits"] >= 1
        assert acks_for_punted >= 1 and counters["rx_punted"] >= 1
        if pcap is not None:
            lab.stop_capture()
            stats = analyse_capture(pcap, card_drops=True)
            assert stats["retransmitted"] >= 1
            check_with_tcp_check(lab, pcap, card_drops=True)
    finally:
        lab.close()


def test_window_closes_and_reopens(lab):
    """The peer stops reading for 1.5 s with a small receive buffer: the kernel closes the window,
    the card holds its segments (and then its input), the host probes, then it all goes through."""
    pcap = lab.start_capture()
    lab.start_peer(pause_after=20, pause=1.5, rcvbuf=2048)
    connect(lab)
    count = 400
    most_waiting = 0
    deadline = time.monotonic() + 15.0 * lab.backend.time_scale
    sent = 0
    while sent < count and time.monotonic() < deadline:
        sent += lab.send_orders(min(8, count - sent), 1.0, first=sent + 1)
        most_waiting = max(most_waiting, lab.port.read("tcp.queued", 0))
    assert sent == count
    assert lab.run_until(lambda: len(lab.sequenced()) == count, 15.0), len(lab.sequenced())
    probes = lab.soup.connection.counters["probes"]
    logout(lab)
    lab.processes[-1].wait(5)
    check_streams(lab)
    assert most_waiting > 1000                   # bytes held back behind the closed window
    assert probes >= 1
    if pcap is not None:
        lab.stop_capture()
        stats = analyse_capture(pcap)
        assert stats["min_window"] < len(lab.order(1))    # closed: not one order fits
        check_with_tcp_check(lab, pcap)


def test_peer_reset_then_reconnect_resumes_the_sequence(lab):
    lab.start_peer(reset_after=50)
    connect(lab)
    first_port = lab.soup.connection.local_port
    lab.send_orders(50, 10.0)
    assert lab.run_until(lambda: lab.soup.state.startswith("down"), 5.0), lab.soup.state
    delivered = len(lab.sequenced())
    assert lab.run_until(lambda: lab.soup.logged_in, 5.0), lab.events
    assert lab.soup.connection.local_port != first_port and lab.soup.logins == 2
    lab.send_orders(30, 10.0, first=51)
    assert lab.run_until(lambda: len(lab.sequenced()) == 80, 10.0), len(lab.sequenced())
    logout(lab)
    lab.processes[-1].wait(5)
    second = (lab.tmp / "peer.2.in").read_bytes()
    packets, _ = soupbintcp.unframe(second)
    assert packets[0][0] == "L"
    requested = int(soupbintcp.CLIENT["L"].unpack(packets[0][1])["requested_sequence_number"])
    assert requested == delivered + 1
    stream, _ = soupbintcp.unframe((lab.tmp / "peer.stream").read_bytes())
    sequenced = lab.sequenced()
    assert [n for n, _ in sequenced] == list(range(1, len(stream) + 1))
    assert [m for _, m in sequenced] == [payload for _, payload in stream]


def test_reconnect_resumes_against_the_exchange(netns, tmp_path, backend):
    """``tickwire exchange`` in the namespace: orders that cross, Accepted and Executed back, a
    logout, a second login that resumes at the next sequence number, and an abort (RST) with a
    third login that asks for the whole stream again."""
    tickwire = Path(sys.executable).with_name("tickwire")
    lab = Lab(netns, tmp_path, backend=backend)
    try:
        p = subprocess.Popen(["ip", "netns", "exec", netns, str(tickwire), "exchange", "--host", PEER_IP,
                              "--port", str(PEER_PORT), "--seed-orders", "0", "--feed", "127.0.0.1:26400"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lab.processes.append(p)
        assert p.stderr is not None
        for _ in range(20):
            line = p.stderr.readline()
            if "orders: SoupBinTCP" in line or not line:
                break
        assert "orders: SoupBinTCP" in line, line
        connect(lab)
        pairs = 50
        for k in range(pairs):
            lab.send_orders(1, 2.0, first=2 * k + 1, side="B", symbol="MSFT", price=4_200_000)
            lab.send_orders(1, 2.0, first=2 * k + 2, side="S", symbol="MSFT", price=4_200_000)
        # each pair: Accepted (buy), then the sell executes: Executed to both sides, or Accepted too
        executed = lambda: [chr(m[0]) for _, m in lab.sequenced()].count("E")   # noqa: E731
        assert lab.run_until(lambda: executed() == 2 * pairs, 10.0), executed()
        kinds = [chr(m[0]) for _, m in lab.sequenced()]
        assert kinds.count("E") == 2 * pairs and kinds.count("A") >= pairs
        before = len(lab.sequenced())
        logout(lab)
        lab.data_appends.clear()
        connect(lab, first_sequence=lab.soup.next_sequence)
        assert lab.soup.next_sequence == before + 1
        lab.send_orders(1, 2.0, first=1000, side="B", symbol="AAPL", price=1_000_000)
        assert lab.run_until(lambda: len(lab.sequenced()) == before + 1, 5.0)
        assert [n for n, _ in lab.sequenced()] == list(range(1, before + 2))
        # an abort, then a login asking for everything from 1: the exchange replays it all
        lab.soup.stopped = True
        lab.soup.connection.abort("test")
        assert lab.run_until(lambda: lab.soup.done, 5.0)
        old = lab.sequenced()
        lab.events.clear()
        connect(lab, first_sequence=1)
        assert lab.run_until(lambda: len(lab.sequenced()) == len(old), 5.0), len(lab.sequenced())
        assert lab.sequenced() == old
        logout(lab)
    finally:
        lab.close()


def test_the_cards_own_orders_leave_over_tcp(netns, tmp_path, tcp_card_server, capsys):
    """Orders the host submits to the Verilated card go through order entry, risk and the OUCH
    encoder into the TCP engine, out over the TAP to the kernel peer, whose Executed answers come
    back through the engine into the card's exposure: every OUCH byte the peer read equals the
    reference model's encoding (sim/model.py), risk accepted them all, the position is flat."""
    from tickwire.hdl.order import OrderSource
    from tickwire.sim.defaults import DEFAULT_INDEXED, DEFAULT_REGISTERS, apply_defaults
    from tickwire.sim.model import PipelineModel, order_values
    from tickwire.protocols.events import EventType
    backend = SimCardBackend(tcp_card_server)
    card = backend.card
    apply_defaults(card)
    card.events(timeout=0.2)
    model = PipelineModel(DEFAULT_REGISTERS, indexed=DEFAULT_INDEXED)
    lab = Lab(netns, tmp_path, backend=backend)
    try:
        pcap = lab.start_capture()
        peer = lab.start_peer()
        connect(lab)
        count, expected = 200, []
        start = time.monotonic()
        for n in range(count):
            side = "BS"[n % 2]
            card.submit_order(side=side, quantity=100, price=189_5000)
            numbered = model.order_entry.process(order_values(
                action=ord("O"), session=0, slot=0, side=ord(side), quantity=100, price=189_5000,
                source=OrderSource.HOST))
            expected.append(model.ouch.process(numbered))
            assert lab.run_until(lambda: len(lab.sequenced()) == n + 1, 5.0), (n, lab.backend.counters())
        seconds = time.monotonic() - start
        logout(lab)
        peer.wait(5)
        got, rest = soupbintcp.unframe((lab.tmp / "peer.1.in").read_bytes())
        assert rest == b""
        orders = [soupbintcp.frame(kind, payload) for kind, payload in got if kind == "U"]
        assert orders == expected
        events = []
        deadline = time.monotonic() + 10
        while sum(e.type == EventType.ORDER_SENT for e in events) < count and time.monotonic() < deadline:
            events += card.events(timeout=0.2)
        assert sum(e.type == EventType.ORDER_SENT for e in events) == count
        assert not [e for e in events if e.type == EventType.RISK_REJECT]
        assert card.read("risk.position", 0) == 0 and card.read("risk.open_orders", 0) == 0
        counters = backend.counters()
        assert counters["tx_segments"] >= count and counters["rx_bad_checksum"] == 0
        with capsys.disabled():
            print(f"\nVerilated card over TAP: {count} card orders through risk and OUCH and their "
                  f"executions in {seconds:.2f} s (one at a time); engine {counters}")
        if pcap is not None:
            lab.stop_capture()
            check_with_tcp_check(lab, pcap)
    finally:
        lab.close()


def test_sim_serve_puts_the_order_port_on_a_tap(netns, tmp_path, tcp_card_server):
    """``tickwire sim serve --transport tcp --tap NAME --netns NS``: the server itself bridges the
    order port; the host drives the card over the socket alone (no bridge in this process)."""
    from tickwire.host.card import Card
    from tickwire.host.tcp_port import CardTcpPort
    from tickwire.host.tcp_session import CardAddress, CardSoupBinSession, TcpCard
    from tickwire.sim.tap import configure
    from tickwire.sim.tcp_lab import CARD_IP, CARD_MAC, PEER, Config
    from tickwire.sim.card import served, stop_process
    peer = None
    with served(tmp_path, transport="tcp", options=("--tap", "twsrv0", "--netns", netns), timeout=120) as path:
        try:
            configure(netns, "twsrv0", f"{PEER_IP}/24")
            script = tmp_path / "peer.py"
            script.write_text(PEER)
            peer = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(script), str(PEER_PORT),
                                     str(tmp_path / "peer"), "30", "0", "0", "0", "0"], stdout=subprocess.PIPE, text=True)
            assert peer.stdout.readline().strip() == "listening"
            card = Card.open({"driver": "sim", "socket": path, "timeout": 30})
            port = CardTcpPort(card)
            tcp = TcpCard(port, CardAddress.of(CARD_MAC, CARD_IP))
            got = []
            soup = CardSoupBinSession(tcp, Config(), lambda kind, s, value: got.append((kind, value)))

            def run_until(condition, timeout):
                end = time.monotonic() + timeout
                while time.monotonic() < end and not condition():
                    tcp.service()
                    soup.service()
                    time.sleep(0.001)
                return condition()
            soup.start()
            assert run_until(lambda: soup.logged_in, 10.0), got
            orders = [soupbintcp.frame("U", ouch.pack_message(
                ouch.INBOUND, "O", user_ref_num=n, side="B", quantity=100, symbol="AAPL", price=1_895_000,
                time_in_force="0", display="Y", capacity="A", intermarket_sweep_eligibility="N", cross_type="N",
                cl_ord_id=f"C{n}")) for n in range(1, 51)]
            for packet in orders:
                port.append(0, packet)
            assert run_until(lambda: sum(k == "sequenced" for k, _ in got) == 50, 15.0), len(got)
            soup.logout()
            assert run_until(lambda: soup.done, 5.0)
            peer.wait(5)
            packets, _ = soupbintcp.unframe((tmp_path / "peer.1.in").read_bytes())
            assert [soupbintcp.frame(k, p) for k, p in packets if k == "U"] == orders
            card.close()
        finally:
            if peer is not None:
                stop_process(peer, 10)
