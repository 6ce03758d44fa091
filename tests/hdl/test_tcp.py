"""TCP engine (tickwire.hdl.tcp) in the Amaranth simulator, frames checked with scapy (an
independent implementation of Ethernet, IPv4 and TCP)."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

#: Each example simulates thousands of cycles: generate and replay, do not spend minutes shrinking.
_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from tickwire.hdl.ouch import ouch_packet_layout
from tickwire.hdl.packet import packet_layout
from tickwire.hdl.tcp import TcpEngine
from tickwire.protocols.net import mac_to_int, ip_to_int

CARD_MAC, PEER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
CARD_IP, PEER_IP = "10.77.0.2", "10.77.0.1"
CARD_PORT, PEER_PORT = 40000, 15000
ISS, IRS = 1000, 0x7FFFFFF0          # the peer's sequence numbers wrap past 2**31 on purpose


def beats(data: bytes, **extra):
    out = []
    for k in range(0, len(data), 8):
        chunk = data[k:k + 8]
        out.append({"data": int.from_bytes(chunk.ljust(8, b"\0"), "little"), "nbytes": len(chunk),
                    "last": int(k + 8 >= len(data)), "length": len(data), **extra})
    return out


class Rig:
    """Drives a TcpEngine cycle by cycle: queued packets and frames in, everything out kept."""

    def __init__(self, dut: TcpEngine, ctx):
        self.dut, self.ctx = dut, ctx
        self.data: list[dict] = []
        self.host_data: list[dict] = []
        self.rx: list[dict] = []
        self.host_frames: list[dict] = []
        self.tx: list[tuple[int, bytes]] = []
        self.payload: list[tuple[int, int, bytes]] = []
        self.punted: list[bytes] = []
        self.cycle = 0
        self.tx_ready = True
        self._tx, self._pay, self._punt = b"", b"", b""
        self.first_data_taken: list[int] = []
        self.last_data_taken: list[int] = []
        self.tx_started: list[int] = []

    async def write(self, name: str, value: int, session: int | None = None) -> None:
        regs = self.dut.regs
        if session is not None:
            self.ctx.set(regs.session, session)
        self.ctx.set(getattr(regs, name), value)
        if hasattr(regs, f"{name}_stb"):
            await self.step()   # the bank's strobe comes the cycle after the value is stored
            self.ctx.set(getattr(regs, f"{name}_stb"), 1)
            await self.step()
            self.ctx.set(getattr(regs, f"{name}_stb"), 0)
        await self.step()

    def read(self, name: str, session: int | None = None) -> int:
        if session is not None:
            self.ctx.set(self.dut.regs.session, session)
        return self.ctx.get(getattr(self.dut.regs, name))

    async def open(self, session: int = 0, *, window: int = 65535, mss: int = 1460, port_offset: int = 0) -> None:
        await self.write("local_mac", mac_to_int(CARD_MAC))
        await self.write("local_ip", ip_to_int(CARD_IP))
        await self.write("rcv_window", 0xFFFF)
        for name, value in (("peer_mac", mac_to_int(PEER_MAC)), ("peer_ip", ip_to_int(PEER_IP)),
                            ("local_port", CARD_PORT + session + port_offset), ("peer_port", PEER_PORT),
                            ("mss", mss), ("snd_nxt", ISS + 1), ("rcv_nxt", IRS + 1),
                            ("peer_window", window), ("established", 1)):
            await self.write(name, value, session)

    def send(self, session: int, packet: bytes, *, host: bool = False) -> None:
        (self.host_data if host else self.data).extend(beats(packet, session=session))

    def receive(self, frame: bytes) -> None:
        self.rx.extend(beats(frame))

    async def step(self) -> None:
        ctx, dut = self.ctx, self.dut
        for queue, port, layout in ((self.data, dut.i_data, ouch_packet_layout()),
                                    (self.host_data, dut.i_host_data, ouch_packet_layout()),
                                    (self.rx, dut.i_rx, packet_layout()),
                                    (self.host_frames, dut.i_host_frame, packet_layout())):
            ctx.set(port.valid, bool(queue))
            if queue:
                ctx.set(port.payload, layout.const(queue[0]))
        ctx.set(dut.o_tx.ready, self.tx_ready)
        ctx.set(dut.o_payload.ready, 1)
        ctx.set(dut.o_host_frame.ready, 1)
        taken = {}
        for queue, port in ((self.data, dut.i_data), (self.host_data, dut.i_host_data),
                            (self.rx, dut.i_rx), (self.host_frames, dut.i_host_frame)):
            taken[id(queue)] = bool(queue) and ctx.get(port.valid) and ctx.get(port.ready)
        if ctx.get(dut.o_tx.valid) and self.tx_ready:
            p = ctx.get(dut.o_tx.payload)
            if not self._tx:
                self.tx_started.append(self.cycle)
            self._tx += int(p.data).to_bytes(8, "little")[:p.nbytes]
            if p.last:
                self.tx.append((self.tx_started[-1], self._tx))
                self._tx = b""
        if ctx.get(dut.o_payload.valid):
            p = ctx.get(dut.o_payload.payload)
            self._pay += int(p.data).to_bytes(8, "little")[:p.nbytes]
            if p.last:
                assert len(self._pay) == p.length
                self.payload.append((self.cycle, int(p.session), self._pay))
                self._pay = b""
        if ctx.get(dut.o_host_frame.valid):
            p = ctx.get(dut.o_host_frame.payload)
            self._punt += int(p.data).to_bytes(8, "little")[:p.nbytes]
            if p.last:
                assert len(self._punt) == p.length
                self.punted.append(self._punt)
                self._punt = b""
        for queue in (self.data, self.host_data, self.rx, self.host_frames):
            if taken[id(queue)]:
                beat = queue.pop(0)
                if queue is self.data and beat["last"]:
                    self.last_data_taken.append(self.cycle)
        await ctx.tick()
        self.cycle += 1

    async def run(self, cycles: int = 400) -> None:
        for _ in range(cycles):
            await self.step()


def simulate(scenario, **params):
    dut = TcpEngine(**params)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out = {}

    async def bench(ctx):
        rig = Rig(dut, ctx)
        out["rig"] = rig
        await scenario(rig)

    sim.add_testbench(bench)
    sim.run()
    return out["rig"]


def parse(frame: bytes):
    """The frame as scapy sees it, after checking both checksums independently."""
    pkt = Ether(frame)
    assert IP in pkt and TCP in pkt, pkt.summary()
    ip, tcp = pkt[IP], pkt[TCP]
    again = Ether(frame)
    del again[IP].chksum
    del again[TCP].chksum
    again = Ether(bytes(again))
    assert ip.chksum == again[IP].chksum, "bad IPv4 checksum"
    assert tcp.chksum == again[TCP].chksum, "bad TCP checksum"
    assert ip.ihl == 5 and ip.flags == "DF" and ip.ttl == 64 and tcp.dataofs == 5
    assert pkt.src == CARD_MAC and pkt.dst == PEER_MAC and ip.src == CARD_IP and ip.dst == PEER_IP
    return ip, tcp, bytes(tcp.payload)[:ip.len - 40]


def peer_frame(seq: int, ack: int, *, payload: bytes = b"", flags: str = "A", window: int = 65535,
               port: int = CARD_PORT, options=None, chksum: int | None = None) -> bytes:
    tcp = TCP(sport=PEER_PORT, dport=port, seq=seq, ack=ack, flags=flags, window=window,
              options=options or [])
    if chksum is not None:
        tcp.chksum = chksum
    return bytes(Ether(src=PEER_MAC, dst=CARD_MAC) / IP(src=PEER_IP, dst=CARD_IP, flags="DF") / tcp
                 / Raw(payload))


def soup(n: int, size: int = 40) -> bytes:
    body = bytes((n + k) % 256 for k in range(size))
    return len(body + b"U").to_bytes(2, "big") + b"U" + body


def test_segments_acks_and_payload():
    packets = [soup(k, 20 + 7 * k) for k in range(6)]

    async def scenario(rig):
        await rig.open()
        for p in packets[:3]:
            rig.send(0, p)
        rig.send(0, packets[3], host=True)
        await rig.run(150)
        sent = [parse(f) for _, f in rig.tx]
        # A peer ACK for the first two, with data: the card takes it, acknowledges, frees.
        first_two = sum(map(len, packets[:2]))
        rig.receive(peer_frame(IRS + 1, ISS + 1 + first_two, payload=b"\x00\x03Hxy", flags="PA", window=4000))
        await rig.run(60)
        rig.result = (sent, first_two)
        rig.una = rig.read("snd_una", 0)
        rig.queued = rig.read("queued", 0)
        rig.rcv = rig.read("rcv_nxt_readback", 0)

    rig = simulate(scenario)
    sent, first_two = rig.result
    assert len(sent) == 4
    stream = b"".join(p for _, _, p in sent)
    assert stream == b"".join(packets[:4])
    seq = ISS + 1
    for (ip, tcp, payload), packet in zip(sent, packets):
        assert tcp.seq == seq and tcp.ack == IRS + 1 and str(tcp.flags) == "PA" and payload == packet
        seq += len(packet)
    assert [ip.id for ip, _, _ in sent] == [0, 1, 2, 3]
    assert rig.payload == [(rig.payload[0][0], 0, b"\x00\x03Hxy")]
    ack_ip, ack_tcp, ack_payload = parse(rig.tx[-1][1])
    assert ack_payload == b"" and str(ack_tcp.flags) == "A" and ack_tcp.ack == IRS + 1 + 5
    assert ack_tcp.seq == ISS + 1 + sum(map(len, packets[:4]))
    assert rig.una == ISS + 1 + first_two
    assert rig.queued == sum(map(len, packets[2:4]))
    assert rig.rcv == IRS + 1 + 5


def test_latency_of_an_order_segment():
    async def scenario(rig):
        await rig.open()
        await rig.run(5)
        rig.send(0, soup(1, 48))
        await rig.run(40)

    rig = simulate(scenario)
    assert len(rig.tx) == 1
    latency = rig.tx_started[0] - rig.last_data_taken[0]
    assert latency == 4, latency


def test_window_stops_the_stream_and_an_ack_reopens_it():
    packets = [soup(k, 30) for k in range(5)]        # 33 bytes each

    async def scenario(rig):
        await rig.open(window=70)                      # room for two packets
        for p in packets:
            rig.send(0, p)
        await rig.run(150)
        rig.before = list(rig.tx)
        rig.receive(peer_frame(IRS + 1, ISS + 1 + 33, window=100))   # one acknowledged, window 100
        await rig.run(150)

    rig = simulate(scenario)
    assert [parse(f)[2] for _, f in rig.before] == packets[:2]
    after = [parse(f) for _, f in rig.tx[len(rig.before):]]
    # Acknowledged up to 33: the window of 100 reaches 133, so packets 2 and 3 (up to 132) go.
    assert [p for _, _, p in after] == packets[2:4]
    for _, tcp, payload in after:
        assert tcp.seq + len(payload) - (ISS + 1 + 33) <= 100


def test_retransmit_sends_the_same_bytes_again():
    packets = [soup(k, 25) for k in range(3)]

    async def scenario(rig):
        await rig.open()
        for p in packets:
            rig.send(0, p)
        await rig.run(120)
        rig.receive(peer_frame(IRS + 1, ISS + 1 + len(packets[0])))
        await rig.run(40)
        await rig.write("retransmit", 0)
        await rig.run(120)
        rig.retx = rig.read("tx_retransmits")

    rig = simulate(scenario)
    frames = [parse(f) for _, f in rig.tx]
    data = [(tcp.seq, p) for _, tcp, p in frames if p]
    assert data[:3] == [(ISS + 1, packets[0]), (ISS + 1 + 28, packets[1]), (ISS + 1 + 56, packets[2])]
    assert data[3:] == data[1:3]          # the unacknowledged two again, same bytes
    assert rig.retx == 2


def test_what_the_card_does_not_take_goes_to_the_host_or_is_counted():
    syn = peer_frame(IRS, 0, flags="S")
    fin = peer_frame(IRS + 1, ISS + 1, flags="FA")
    ahead = peer_frame(IRS + 100, ISS + 1, payload=b"late")
    with_options = peer_frame(IRS + 1, ISS + 1, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    other_port = peer_frame(IRS + 1, ISS + 1, port=CARD_PORT + 9)
    arp = bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=PEER_IP, pdst=CARD_IP))
    bad_tcp = peer_frame(IRS + 1, ISS + 1, payload=b"abc", chksum=0x1234)
    bad_ip = bytearray(peer_frame(IRS + 1, ISS + 1))
    bad_ip[24] ^= 0xFF

    async def scenario(rig):
        await rig.open()
        for frame in (syn, fin, ahead, with_options, other_port, arp, bad_tcp, bytes(bad_ip)):
            rig.receive(frame)
        await rig.run(250)
        rig.counts = {n: rig.read(n) for n in ("rx_punted", "rx_bad_checksum", "rx_segments")}

    rig = simulate(scenario)
    assert rig.punted == [syn, fin, ahead, with_options, other_port, arp.ljust(60, b"\0")[:len(arp)]]
    assert rig.counts == {"rx_punted": 6, "rx_bad_checksum": 2, "rx_segments": 0}
    assert rig.payload == [] and rig.tx == []


def test_closed_and_oversize_packets_are_dropped_and_counted():
    async def scenario(rig):
        await rig.open(mss=100)
        rig.send(1, soup(1, 20))           # session 1 is not established
        rig.send(0, soup(2, 200))          # longer than the MSS
        rig.send(7, soup(3, 20))           # no such session
        rig.send(0, soup(4, 20))
        await rig.run(120)
        rig.counts = {n: rig.read(n) for n in ("tx_closed_drops", "tx_oversize_drops", "tx_segments")}

    rig = simulate(scenario)
    assert [parse(f)[2] for _, f in rig.tx] == [soup(4, 20)]
    assert rig.counts == {"tx_closed_drops": 2, "tx_oversize_drops": 1, "tx_segments": 1}


def test_host_frames_go_out_unchanged_and_probe_and_ack_commands():
    arp = bytes(Ether(src=CARD_MAC, dst=PEER_MAC) / ARP(op=2, psrc=CARD_IP, pdst=PEER_IP))

    async def scenario(rig):
        await rig.open()
        rig.host_frames.extend(beats(arp))
        await rig.run(30)
        await rig.write("probe", 0)
        await rig.run(30)
        await rig.write("send_ack", 0)
        await rig.run(30)

    rig = simulate(scenario)
    assert rig.tx[0][1] == arp
    probe, ack = parse(rig.tx[1][1]), parse(rig.tx[2][1])
    assert probe[1].seq == ISS and probe[2] == b"" and ack[1].seq == ISS + 1 and ack[1].ack == IRS + 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=_NO_SHRINK)
@given(sizes=st.lists(st.integers(1, 90), min_size=1, max_size=10),
       inbound=st.lists(st.integers(1, 70), max_size=4), ready=st.booleans())
@example(sizes=[20, 17, 74, 72, 9, 17], inbound=[], ready=False)   # the buffer wraps mid-stream
@example(sizes=[1, 2, 3, 6, 7, 8, 9], inbound=[1, 2, 3, 8, 9], ready=True)
def test_random_streams_arrive_whole_in_both_directions(sizes, inbound, ready):
    """Random packet sizes (every byte-lane alignment), a small buffer that wraps, the peer
    acknowledging as it goes, and payload from the peer: both streams arrive byte for byte."""
    packets = [soup(k, n) for k, n in enumerate(sizes)]
    messages = [bytes((k * 7 + i) % 251 for i in range(n)) for k, n in enumerate(inbound)]

    async def scenario(rig):
        rig.tx_ready = ready
        await rig.open()
        for p in packets:
            rig.send(0, p)
        rcv = IRS + 1
        for msg in messages:
            rig.receive(peer_frame(rcv, ISS + 1, payload=msg, flags="PA"))
            rcv += len(msg)
        seen = 0
        for _ in range(40):
            await rig.run(40)
            rig.tx_ready = True
            got = [parse(f) for _, f in rig.tx]
            acked = max([ISS + 1] + [t.seq + len(p) for _, t, p in got if p])
            if len(got) > seen:
                seen = len(got)
                rig.receive(peer_frame(rcv, acked))
        rig.una = rig.read("snd_una", 0)

    rig = simulate(scenario, buffer_words=16, descriptors=4)
    got = [parse(f) for _, f in rig.tx]
    assert b"".join(p for _, _, p in got if p) == b"".join(packets)
    assert [p for _, _, p in rig.payload] == messages
    assert rig.una == ISS + 1 + sum(map(len, packets))


@pytest.mark.parametrize("kwargs", [{"sessions": 0}, {"buffer_words": 100}, {"descriptors": 1},
                                    {"rx_fifo_words": 64}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        TcpEngine(**kwargs)


# -- against the independent frame-level model (sim/tcp_card_model.py) ----------------------------

def _model_open(model, session=0, *, window=65535, mss=1460):
    model.write("local_mac", mac_to_int(CARD_MAC))
    model.write("local_ip", ip_to_int(CARD_IP))
    model.write("session", session)
    for name, value in (("peer_mac", mac_to_int(PEER_MAC)), ("peer_ip", ip_to_int(PEER_IP)),
                        ("local_port", CARD_PORT + session), ("peer_port", PEER_PORT), ("mss", mss),
                        ("snd_nxt", ISS + 1), ("rcv_nxt", IRS + 1), ("peer_window", window),
                        ("established", 1)):
        model.write(name, value)


_phase = st.one_of(
    st.tuples(st.just("send"), st.lists(st.tuples(st.integers(0, 1), st.integers(1, 80), st.booleans()),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("peer"), st.integers(0, 60), st.integers(0, 4000), st.booleans()),
    st.tuples(st.just("command"), st.sampled_from(["retransmit", "send_ack", "probe"])),
    st.tuples(st.just("junk"), st.sampled_from(["syn", "ahead", "bad", "options"])),
)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=_NO_SHRINK)
@given(phases=st.lists(_phase, min_size=1, max_size=6), window=st.sampled_from([120, 65535]))
@example(phases=[("send", [(0, 1, True), (0, 1, False)])], window=65535)
@example(phases=[("send", [(0, 70, False), (1, 9, True), (0, 80, False)]), ("peer", 10, 100, False),
                 ("command", "retransmit"), ("junk", "ahead"), ("peer", 0, 4000, True)], window=120)
@example(phases=[("junk", "bad"), ("command", "probe"), ("send", [(0, 57, False), (0, 72, False), (1, 18, True)]),
                 ("peer", 30, 3340, True), ("command", "send_ack"),
                 ("send", [(0, 24, False), (0, 61, False), (1, 37, True), (1, 1, True)])], window=65535)
def test_engine_matches_the_model_frame_for_frame(phases, window):
    """Phases of inputs (packets from the gateware and the host, peer segments that acknowledge
    and carry data, commands, frames the card must not take), each run until the engine is quiet:
    the frames it sends, punts and delivers equal the model's, byte for byte."""
    from tickwire.sim.tcp_card_model import TcpCardModel
    model = TcpCardModel(buffer_words=32, descriptors=4)
    for s in (0, 1):
        _model_open(model, s, window=window)
    model.take()
    expected = []
    rcv = {0: IRS + 1, 1: IRS + 1}
    steps = []
    for k, phase in enumerate(phases):
        kind = phase[0]
        if kind == "send":
            for n, (s, size, host) in enumerate(phase[1]):
                model.append(s, soup(k * 7 + n, size), source="host" if host else "data")
            steps.append(("send", [(s, soup(k * 7 + n, size), host) for n, (s, size, host) in enumerate(phase[1])]))
        elif kind == "peer":
            _, size, ack_back, session1 = phase
            s = int(session1)
            model.write("session", s)
            una, mx = model.read("snd_una"), model.read("snd_max")
            ack = una + min(ack_back, (mx - una) & 0xFFFFFFFF)
            data = bytes((k + i) % 256 for i in range(size))
            frame = peer_frame(rcv[s], ack & 0xFFFFFFFF, payload=data, flags="PA" if data else "A",
                               window=window, port=CARD_PORT + s)
            rcv[s] += size
            model.rx(frame)
            steps.append(("rx", frame))
        elif kind == "command":
            model.write(phase[1], 0)
            steps.append(("command", phase[1]))
        else:
            frame = {"syn": peer_frame(IRS, 0, flags="S"), "ahead": peer_frame(IRS + 999, ISS + 1, payload=b"x"),
                     "bad": peer_frame(rcv[0], ISS + 1, payload=b"abc", chksum=1),
                     "options": peer_frame(rcv[0], ISS + 1, options=[("NOP", None)] * 4)}[phase[1]]
            model.rx(frame)
            steps.append(("rx", frame))
        expected.append(model.take())

    async def scenario(rig):
        await rig.open(0, window=window)
        await rig.open(1, window=window)
        rig.phases = []
        for step in steps:
            before = (len(rig.tx), len(rig.punted), len(rig.payload))
            if step[0] == "send":
                for s, packet, host in step[1]:     # one after another, as the model took them
                    rig.send(s, packet, host=host)
                    await rig.run(20)
            elif step[0] == "rx":
                rig.receive(step[1])
            else:
                await rig.write(step[1], 0)
            await rig.run(60 + 30 * (len(step[1]) if step[0] == "send" else 1))
            rig.phases.append(([f for _, f in rig.tx[before[0]:]], rig.punted[before[1]:],
                               [(s, p) for _, s, p in rig.payload[before[2]:]]))

    rig = simulate(scenario, buffer_words=32, descriptors=4)
    for k, ((tx, punted, payload), (m_tx, m_punted, m_payload)) in enumerate(zip(rig.phases, expected)):
        assert tx == m_tx, f"phase {k} {steps[k][0]}: frames sent differ"
        assert punted == m_punted and payload == m_payload, f"phase {k}"
