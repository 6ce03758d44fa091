"""A lab for the card's TCP engine on a Linux TAP interface: the card side (the engine's model,
or the Verilated appliance served by ``tickwire sim serve --transport tcp``) bridged to a TAP in a
network namespace the caller creates, the host's connection manager and SoupBinTCP client
(:mod:`tickwire.host.tcp_session`) driving it, a kernel-TCP SoupBinTCP peer in the namespace,
optional tcpdump capture, and the checks of what crossed the TAP. Used by the interop tests
(tests/sim/test_tcp_tap.py, tests/sim/test_tcp_card_tap.py); every loop is bounded in count
and time."""

from __future__ import annotations

import logging
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from tickwire.host.tcp_session import CardAddress, CardSoupBinSession, TcpCard, TcpTimers
from tickwire.protocols import ouch, soupbintcp
from tickwire.sim.pcap import PcapError, read_pcap
from tickwire.sim.tap import Tap, TapBridge, configure
from tickwire.sim.tcp_card_model import ModelCardPort, TcpCardModel

__all__ = ["Lab", "ModelBackend", "SimCardBackend", "PEER", "TAP_NAME", "PEER_IP", "CARD_IP", "CARD_MAC",
           "PEER_PORT", "run", "connect", "logout", "check_streams", "analyse_capture",
           "check_with_tcp_check", "tshark_findings"]

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

    def __init__(self, netns: str, tmp: Path, *, drop=None, backend: Any = None) -> None:
        self.netns, self.tmp = netns, tmp
        self.tap = Tap(TAP_NAME, netns)
        configure(netns, TAP_NAME, f"{PEER_IP}/24")
        self.backend = backend if backend is not None else ModelBackend()
        self.model = getattr(self.backend, "model", None)
        self.port = self.backend.port
        self.tcp_frames_on_tap = 0
        self.bridge = TapBridge(self.tap, to_card=self.backend.to_card, from_card=self.backend.from_card,
                                drop=drop, tap_frame=self._count_tcp)
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
        deadline = time.monotonic() + timeout * self.backend.time_scale
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
        deadline = time.monotonic() + timeout * self.backend.time_scale
        n = 0
        while n < count and time.monotonic() < deadline:
            if self.soup is not None and self.soup.logged_in and self.backend.ready():
                for _ in range(min(8, count - n)):
                    packet = self.order(first + n, **order)
                    self.data_appends.append(packet)
                    self.backend.append_data(0, packet)
                    n += 1
            self.step()
        return n

    def sequenced(self) -> list:
        return [v for k, v in self.events if k == "sequenced"]

    def close(self) -> None:
        from .card import stop_process
        for p in self.processes:
            stop_process(p, 5)
        self.tap.close()
        self.backend.close()




class ModelBackend:
    """The card side as the engine's frame-level model (sim/tcp_card_model.py)."""

    #: The lab's time bounds are multiplied by this (the model answers at once).
    time_scale = 1.0

    def __init__(self) -> None:
        self.model = TcpCardModel()
        self.port = ModelCardPort(self.model)
        self.to_card: Callable[[bytes], None] = self.port.receive
        self.from_card: Callable[[], Iterable[bytes]] = self.port.take_tx

    def append_data(self, session: int, packet: bytes) -> None:
        self.model.append(session, packet, source="data")

    def ready(self) -> bool:
        return self.model.waiting() == 0

    def counters(self) -> dict[str, int]:
        return dict(self.model.counters)

    def close(self) -> None:
        pass


class SimCardBackend:
    """The card side as the Verilated appliance behind ``tickwire sim serve --transport tcp``
    (socket ``path``): register access through :class:`tickwire.host.card.Card`, the engine's
    host ports through :class:`tickwire.host.tcp_port.CardTcpPort`, the order port's frames
    to and from the TAP (FCS added by the card server, removed here)."""

    #: The lab's time bounds are multiplied by this: every frame crosses a socket and the
    #: simulated clock, several times slower than the model when the machine is busy.
    time_scale = 4.0

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        from tickwire.host.card import Card
        from tickwire.host.tcp_port import CardTcpPort
        self.card = Card.open({"driver": "sim", "socket": path, "timeout": timeout})
        self.port = CardTcpPort(self.card)
        # A card shared between labs starts each with no session open (an earlier lab may have
        # left one established, whose ACKs and retransmissions would reach this lab's TAP).
        for session in range(self.card.regmap.constants.get("sessions", 4)):
            self.card.write("tcp.established", 0, session)

    def to_card(self, frame: bytes) -> None:
        # A TAP hands over frames as the kernel built them; on a wire they are padded to 60 bytes.
        self.card.driver.send_frame("order", bytes(frame).ljust(60, b"\0"))

    def append_data(self, session: int, packet: bytes) -> None:
        # The card's own orders come from risk and the OUCH encoder; what the lab appends in bulk
        # enters the same byte stream through the host's port (i_host_data).
        self.card.driver.send_frame("host_data", bytes([session]) + bytes(packet))

    def from_card(self) -> list[bytes]:
        return [frame.data for frame in self.port.order_frames()]

    def ready(self) -> bool:
        return True

    def counters(self) -> dict[str, int]:
        return {r.name: self.card.read(f"tcp.{r.name}") for r in self.card.regmap.stage("tcp")
                if r.name.startswith(("tx_", "rx_"))}

    def close(self) -> None:
        self.card.close()


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
    assert errors == [], "\n".join(errors[:20])
    report = result.report(lab.soup.connection.local_port if lab.soup.connection else result.reports[-1]
                           .connection.local_port)
    assert report.card_stream == (lab.tmp / "peer.1.in").read_bytes()
    assert report.peer_stream == (lab.tmp / "peer.1.out").read_bytes()


#: tshark notes that are not findings on the kernel's (the peer's) segments: a TCP checksum of
#: 0xffff where 0x0000 is canonical (RFC 1624) is the same ones'-complement value, so receivers
#: accept it, and Linux's incremental checksum updates emit it now and then (one segment in a run
#: of several thousand). The card computes each checksum whole and cannot send 0xffff (its sums
#: are never zero), so on the card's segments the note still counts.
PEER_NOTES = ("TCP Checksum 0xffff instead of 0x0000",)


def tshark_findings(path: Path) -> list[str]:
    """Expert findings of tshark at warning or error level (checksum checks on), as
    ``frame<TAB>source address<TAB>message``, without the :data:`PEER_NOTES` on the peer's frames."""
    result = run("tshark", "-n", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                 "-Y", "_ws.expert.severity >= 0x00600000", "-T", "fields", "-e", "frame.number", "-e",
                 "ip.src", "-e", "_ws.expert.message")
    return [line for line in result.stdout.splitlines() if line.strip() and not _peer_note(line)]


def _peer_note(line: str) -> bool:
    _, source, message = (line.split("\t", 2) + ["", ""])[:3]
    return source == PEER_IP and message.startswith(PEER_NOTES)


