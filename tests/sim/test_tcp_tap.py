"""The card's TCP engine (its reference model, sim/tcp_card_model.py) behind a TAP interface
(sim/tap.py), driven by the host's connection manager and SoupBinTCP client
(host/tcp_session.py), against the Linux kernel's TCP stack in a network namespace each test
creates and removes: handshake, thousands of orders and executions compared byte for byte, a
segment dropped in each direction, a window that closes and reopens, a peer reset, reconnects
that resume the SoupBinTCP sequence (also against ``tickwire exchange``), and a tcpdump capture
checked with tshark and scapy. Every loop is bounded in count and time."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tickwire.host.tcp_session import CardAddress, CardSoupBinSession, TcpCard, TcpTimers
from tickwire.protocols import ouch, soupbintcp
from tickwire.sim.pcap import PcapError, read_pcap
from tickwire.sim.tap import Tap, TapBridge, configure
from tickwire.sim.tcp_card_model import ModelCardPort, TcpCardModel

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="TAP interfaces and network namespaces need root"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="/dev/net/tun is missing (no TUN/TAP)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2)"),
]

logger = logging.getLogger(__name__)

TAP_NAME = "twtap0"
PEER_IP, CARD_IP, CARD_MAC = "10.77.0.1", "10.77.0.2", "02:00:00:00:77:02"
PEER_PORT = 15000

#: A SoupBinTCP server for the kernel side: one sequenced stream across connections (a login
#: resumes it), an Executed for every Enter Order, records every byte in and out per connection.
PEER = textwrap.dedent('''
    import select, socket, struct, sys, time
    from tickwire.protocols import ouch, soupbintcp
    port, record, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    pause_after, pause, reset_after, rcvbuf = (int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]),
                                               int(sys.argv[7]))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("10.77.0.1", port))
    listener.listen(1)
    print("listening", flush=True)
    deadline = time.monotonic() + limit
    stream, orders, n = [], 0, 0
    while time.monotonic() < deadline:
        if not select.select([listener], [], [], 0.2)[0]:
            continue
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n += 1
        got, sent, buf, logged_in, reset = bytearray(), bytearray(), b"", False, False
        def send(kind, payload=b""):
            data = soupbintcp.frame(kind, payload)
            conn.sendall(data)
            sent.extend(data)
        while time.monotonic() < deadline and not reset:
            if not select.select([conn], [], [], 0.2)[0]:
                continue
            data = conn.recv(65536)
            if not data:
                break
            got.extend(data)
            buf += data
            packets, buf = soupbintcp.unframe(buf)
            done = False
            for kind, payload in packets:
                if kind == "L":
                    login = soupbintcp.CLIENT["L"].unpack(payload)
                    first = int(login["requested_sequence_number"].strip() or 0) or len(stream) + 1
                    first = min(first, len(stream) + 1)
                    send("A", soupbintcp.SERVER["A"].pack(session="TAPTEST", sequence_number=str(first).rjust(20)))
                    for message in stream[first - 1:]:
                        send("S", message)
                    logged_in = True
                elif kind == "U" and logged_in:
                    order = ouch.INBOUND["O"].unpack(payload)
                    orders += 1
                    message = ouch.pack_message(ouch.OUTBOUND, "E", timestamp=orders,
                                                user_ref_num=order["user_ref_num"], quantity=order["quantity"],
                                                price=order["price"], liquidity_flag="A", match_number=orders)
                    stream.append(message)
                    send("S", message)
                    if orders == pause_after:
                        time.sleep(pause)
                    if orders == reset_after:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        reset = True
                        break
                elif kind == "O":
                    done = True
            if done:
                break
        conn.close()
        open(f"{record}.{n}.in", "wb").write(got)
        open(f"{record}.{n}.out", "wb").write(sent)
        print(f"connection {n}: {len(got)} bytes in, {len(sent)} out, reset {reset}", flush=True)
        if n >= 2 or (not reset and reset_after == 0):
            break
    open(f"{record}.stream", "wb").write(b"".join(soupbintcp.frame("S", m) for m in stream))
''')


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=20, check=check)


class Config:
    name, number, host, port = "ouch0", 0, PEER_IP, PEER_PORT
    username, password, session, local_port = "TWUSER", "TWPASS", "", None


class Lab:
    """A namespace with the TAP, the model card and the host on it; optional capture."""

    def __init__(self, netns: str, tmp: Path, *, drop=None) -> None:
        self.netns, self.tmp = netns, tmp
        self.tap = Tap(TAP_NAME, netns)
        configure(netns, TAP_NAME, f"{PEER_IP}/24")
        self.model = TcpCardModel()
        self.port = ModelCardPort(self.model)
        self.tcp_frames_on_tap = 0
        self.bridge = TapBridge(self.tap, to_card=self.port.receive, from_card=self.port.take_tx, drop=drop,
                                tap_frame=self._count_tcp)
        self.card = TcpCard(self.port, CardAddress.of(CARD_MAC, CARD_IP),
                            timers=TcpTimers(initial_rto=0.3, min_rto=0.2, time_wait=0.2))
        self.host_appends: list[bytes] = []
        self.data_appends: list[bytes] = []
        self.received = bytearray()
        self.events: list[tuple[str, object]] = []
        self.soup: CardSoupBinSession | None = None
        self.processes: list[subprocess.Popen] = []
        append = self.port.append

        def recorded_append(session: int, packet: bytes) -> None:
            self.host_appends.append(packet)
            append(session, packet)
        self.port.append = recorded_append          # type: ignore[method-assign]

    def _count_tcp(self, direction: str, frame: bytes) -> None:
        if len(frame) > 23 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
            self.tcp_frames_on_tap += 1

    def start_peer(self, *, limit: float = 40.0, pause_after: int = 0, pause: float = 0.0, reset_after: int = 0,
                   rcvbuf: int = 0) -> subprocess.Popen:
        script = self.tmp / "peer.py"
        script.write_text(PEER)
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, str(script), str(PEER_PORT),
                              str(self.tmp / "peer"), str(limit), str(pause_after), str(pause),
                              str(reset_after), str(rcvbuf)], stdout=subprocess.PIPE, text=True)
        self.processes.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"
        return p

    def start_capture(self) -> Path | None:
        if shutil.which("tcpdump") is None:
            return None
        path = self.tmp / "tap.pcap"
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, "tcpdump", "-i", TAP_NAME, "-B", "32768", "-U",
                              "-s", "0", "-w", str(path), "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        assert p.stderr is not None
        line = p.stderr.readline()
        assert "listening" in line, line
        self.capture = p
        self.processes.append(p)
        return path

    def stop_capture(self) -> None:
        """Stop tcpdump once it has written every TCP frame that crossed the TAP (at most 15 s)."""
        path = self.tmp / "tap.pcap"
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                if len(read_pcap(path)) >= self.tcp_frames_on_tap:
                    break
            except PcapError:
                pass                                  # a record half written
            time.sleep(0.1)
        self.capture.send_signal(signal.SIGINT)
        _, err = self.capture.communicate(timeout=10)
        dropped = [line for line in err.splitlines() if "dropped by kernel" in line]
        assert dropped and dropped[0].split()[0] == "0", f"tcpdump lost frames: {err}"

    def client(self, **kwargs) -> CardSoupBinSession:
        soup = CardSoupBinSession(self.card, Config(), lambda kind, s, value: self.events.append((kind, value)),
                                  **kwargs)
        original = soup._on_payload

        def recorded(data: bytes) -> None:
            self.received.extend(data)
            original(data)
        soup._on_payload = recorded                 # type: ignore[method-assign]
        self.soup = soup
        return soup

    def step(self) -> None:
        self.card.service()
        if self.soup is not None:
            self.soup.service()
        self.bridge.pump(0.001)

    def run_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if condition():
                return True
        return False

    def order(self, n: int, *, symbol: str = "AAPL", side: str = "B", price: int = 1_895_000) -> bytes:
        return soupbintcp.frame("U", ouch.pack_message(
            ouch.INBOUND, "O", user_ref_num=n, side=side, quantity=100, symbol=symbol, price=price,
            time_in_force="0", display="Y", capacity="A", intermarket_sweep_eligibility="N", cross_type="N",
            cl_ord_id=f"C{n}"))

    def send_orders(self, count: int, timeout: float, *, first: int = 1, **order) -> int:
        """Append ``count`` orders through ``i_data`` (as the gateware does) while the session is
        logged in, no faster than the card takes them; returns how many went."""
        deadline = time.monotonic() + timeout
        n = 0
        while n < count and time.monotonic() < deadline:
            if self.soup is not None and self.soup.logged_in and self.model.waiting() == 0:
                for _ in range(min(8, count - n)):
                    packet = self.order(first + n, **order)
                    self.data_appends.append(packet)
                    self.model.append(0, packet, source="data")
                    n += 1
            self.step()
        return n

    def sequenced(self) -> list:
        return [v for k, v in self.events if k == "sequenced"]

    def close(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.tap.close()


@pytest.fixture
def netns():
    name = f"twtcp{os.getpid()}"
    run("ip", "netns", "del", name, check=False)
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def lab(netns, tmp_path):
    lab = Lab(netns, tmp_path)
    yield lab
    lab.close()


def connect(lab: Lab, **kwargs) -> float:
    soup = lab.client(**kwargs)
    start = time.monotonic()
    soup.start()
    assert lab.run_until(lambda: soup.logged_in, 5.0), lab.events
    return time.monotonic() - start


def logout(lab: Lab) -> None:
    assert lab.soup is not None
    lab.soup.logout()
    assert lab.run_until(lambda: lab.soup.done, 5.0), (lab.soup.state, lab.soup.connection)


def check_streams(lab: Lab, connection: int = 1) -> None:
    """Every byte the kernel peer read is a packet the host or the gateware appended, in order per
    input, nothing lost or duplicated; every byte the peer wrote is what the card handed up."""
    got = (lab.tmp / f"peer.{connection}.in").read_bytes()
    packets, rest = soupbintcp.unframe(got)
    assert rest == b""
    framed = [soupbintcp.frame(kind, payload) for kind, payload in packets]
    assert b"".join(framed) == got
    assert [p for p in framed if p[2:3] == b"U"] == lab.data_appends
    assert [p for p in framed if p[2:3] != b"U"] == lab.host_appends
    assert bytes(lab.received) == (lab.tmp / f"peer.{connection}.out").read_bytes()


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def analyse_capture(path: Path, *, card_drops: bool = False) -> dict[str, int]:
    """Check a capture on the TAP (parsed here with struct, not with protocols/): every checksum
    right; the card's segments never go beyond the window the kernel last advertised, a segment
    at an old sequence number carries the same bytes as before, new data starts where the
    previous ended (unless the bridge dropped the card's frame on purpose: ``card_drops``)."""
    stats = {"card_segments": 0, "kernel_segments": 0, "retransmitted": 0, "min_window": 1 << 16}
    sent: dict[tuple, dict[int, int]] = {}
    top: dict[tuple, int] = {}
    window: dict[tuple, tuple[int, int]] = {}
    for number, (_, frame) in enumerate(read_pcap(path), 1):
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800 or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        header, segment = frame[14:14 + ihl], frame[14 + ihl:14 + total]
        assert _ones_complement_sum(header) == 0xFFFF, f"frame {number}: bad IPv4 header checksum"
        pseudo = header[12:20] + struct.pack("!BBH", 0, 6, len(segment))
        assert _ones_complement_sum(pseudo + segment) == 0xFFFF, f"frame {number}: bad TCP checksum"
        sport, dport, seq, ack, offset, flags, win = struct.unpack_from("!HHIIBBH", segment)
        data = segment[(offset >> 4) * 4:]
        if header[12:16] == bytes(map(int, CARD_IP.split("."))):
            key = (sport, dport)
            stats["card_segments"] += 1
            if flags & 0x02:
                top[key] = (seq + 1) & 0xFFFFFFFF
                sent[key] = {}
                continue
            if not data or key not in top:
                continue
            gap = (seq - top[key]) % (1 << 32)
            if 0 < gap < 1 << 31:
                assert card_drops, f"frame {number}: {gap} bytes missing before seq {seq}"
            if key in window:
                una, advertised = window[key]
                end = (seq + len(data) - una) % (1 << 32)
                # (a go-back-N resend of bytes acknowledged meanwhile ends before SND.UNA)
                assert end <= advertised or end >= 1 << 31, \
                    f"frame {number}: beyond the window ({end} > {advertised})"
            known = sent[key]
            for k, b in enumerate(data):
                assert known.setdefault((seq + k) & 0xFFFFFFFF, b) == b, \
                    f"frame {number}: retransmission with other bytes"
            if gap >= 1 << 31:
                stats["retransmitted"] += 1
            end = (seq + len(data)) & 0xFFFFFFFF
            if (end - top[key]) % (1 << 32) < 1 << 31:
                top[key] = end
        else:
            key = (dport, sport)
            stats["kernel_segments"] += 1
            if flags & 0x10:
                window[key] = (ack, win)
                stats["min_window"] = min(stats["min_window"], win)
    return stats


def check_with_tcp_check(lab: Lab, path: Path, *, card_drops: bool = False) -> None:
    """The other helper's independent checker (sim/tcp_check.py) over the capture: every frame the
    card sent meets docs/tcp.md, and both reassembled streams are what the peer read and wrote.
    A frame the bridge dropped on purpose leaves a gap in the card's IPv4 identifications."""
    from tickwire.sim.tcp_check import check_pcap
    frames = read_pcap(path)
    card_mac = bytes.fromhex(CARD_MAC.replace(":", ""))
    peer_mac = next(frame[6:12] for _, frame in frames if frame[6:12] != card_mac)
    result = check_pcap(path, card_mac=CARD_MAC, card_ip=CARD_IP, peer_mac=peer_mac)
    errors = [str(e) for e in result.errors if not (card_drops and "IPv4 identification" in str(e))]
    assert errors == []
    report = result.report(lab.soup.connection.local_port if lab.soup.connection else result.reports[-1]
                           .connection.local_port)
    assert report.card_stream == (lab.tmp / "peer.1.in").read_bytes()
    assert report.peer_stream == (lab.tmp / "peer.1.out").read_bytes()


def tshark_findings(path: Path) -> list[str]:
    """Expert findings of tshark at warning or error level (checksum checks on)."""
    result = run("tshark", "-n", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                 "-Y", "_ws.expert.severity >= 0x00600000", "-T", "fields", "-e", "frame.number", "-e",
                 "_ws.expert.message")
    return [line for line in result.stdout.splitlines() if line.strip()]


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
    counters = lab.model.counters
    assert counters["rx_bad_checksum"] == 0 and counters["tx_oversize_drops"] == 0
    assert counters["tx_closed_drops"] == 0
    with capsys.disabled():
        print(f"\nmodel card over TAP: handshake + login {handshake * 1e3:.1f} ms; {count} orders and "
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


def test_a_dropped_segment_in_each_direction(netns, tmp_path):
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
    lab = Lab(netns, tmp_path, drop=drop)
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
        assert retransmits >= 1 and lab.model.counters["tx_retransmits"] >= 1
        assert acks_for_punted >= 1 and lab.model.counters["rx_punted"] >= 1
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
    deadline = time.monotonic() + 15.0
    sent = 0
    while sent < count and time.monotonic() < deadline:
        sent += lab.send_orders(min(8, count - sent), 1.0, first=sent + 1)
        most_waiting = max(most_waiting, lab.model.read("queued"))
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


def test_reconnect_resumes_against_the_exchange(netns, tmp_path):
    """``tickwire exchange`` in the namespace: orders that cross, Accepted and Executed back, a
    logout, a second login that resumes at the next sequence number, and an abort (RST) with a
    third login that asks for the whole stream again."""
    tickwire = Path(sys.executable).with_name("tickwire")
    lab = Lab(netns, tmp_path)
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
        assert lab.run_until(lambda: len(lab.sequenced()) >= 4 * pairs, 10.0), len(lab.sequenced())
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
