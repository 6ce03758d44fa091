"""Ethernet/IPv4/UDP: receive filter that strips headers, transmit header builder."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import net as wire
from .packet import packet_layout, byte_lane, be_value
from .csr import Register, registers_signature

__all__ = ["NetRx", "NetTx", "payload_record_layout"]

HEADERS = wire.UDP_PAYLOAD_OFFSET  # 42


def _offset(message, name, base=0):
    f = message[name]
    return base + f.offset, f.width


ETH = 0
IP = wire.ETHERNET.length
UDP = IP + wire.IPV4.length


def _fields():
    """Absolute frame offsets of the header fields the filter and the builder use."""
    out = {}
    for name in wire.ETHERNET.field_names:
        out[f"eth.{name}"] = _offset(wire.ETHERNET, name, ETH)
    for name in wire.IPV4.field_names:
        out[f"ip.{name}"] = _offset(wire.IPV4, name, IP)
    for name in wire.UDP.field_names:
        out[f"udp.{name}"] = _offset(wire.UDP, name, UDP)
    return out


FIELDS = _fields()


class NetRx(wiring.Component):
    """Ethernet/IPv4/UDP receive filter: passes the UDP payload of frames sent to the feed.

    Checks, in order (the first failing one names the drop counter): destination MAC (own or
    the group's multicast MAC), EtherType IPv4, IPv4 version/IHL 5/not fragmented/UDP, header
    checksum, destination IP = group, UDP destination port, lengths consistent with the frame.
    The payload leaves realigned to lane 0, Ethernet padding removed.

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        Frames from :class:`~tickwire.hdl.mac.MacRx` (FCS already checked and stripped).
    o_stream : Out(stream.Signature(packet_layout()))
        UDP payloads.
    regs : Out(registers_signature(NetRx.registers))

    Latency
    -------
    Payload word ``j`` leaves one cycle after frame word ``6 + j`` arrives (a payload whose last
    word ends inside frame word ``5 + j`` takes one extra cycle); tests/hdl/test_net.py.
    """

    registers = (
        Register("mac_address", 48, "rw", "MAC address of the feed port."),
        Register("multicast_group", 32, "rw", "IPv4 multicast group (destination address) of the feed."),
        Register("udp_port", 16, "rw", "UDP destination port of the feed."),
        Register("frames_accepted", 32, "ro", "Frames passed on."),
        Register("drop_mac", 32, "ro", "Frames dropped: destination MAC is neither ours nor the group's."),
        Register("drop_ethertype", 32, "ro", "Frames dropped: EtherType is not IPv4."),
        Register("drop_ip_header", 32, "ro", "Frames dropped: IPv4 options, fragment, or not UDP."),
        Register("drop_checksum", 32, "ro", "Frames dropped: IPv4 header checksum wrong."),
        Register("drop_ip_destination", 32, "ro", "Frames dropped: destination IP is not the group."),
        Register("drop_udp_port", 32, "ro", "Frames dropped: UDP destination port differs."),
        Register("drop_length", 32, "ro", "Frames dropped: IP/UDP lengths disagree with the frame."),
    )
    _DROPS = ("drop_mac", "drop_ethertype", "drop_ip_header", "drop_checksum",
              "drop_ip_destination", "drop_udp_port", "drop_length")

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(packet_layout())),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        header_words = (HEADERS + 7) // 8  # 6: the last one also holds payload bytes
        hdr = Signal(8 * 8 * (header_words - 1))  # frame bytes 0..39, registered
        word = Signal(range(header_words + 2))   # frame word index, saturating
        prev = Signal(64)
        accepted = Signal()
        done = Signal()            # payload complete (or frame rejected): drop the rest
        payload_len = Signal(16)
        sent = Signal(16)          # payload bytes sent so far
        flush = Signal()           # one more output word owed after the frame's last word

        def hbyte(n):
            return byte_lane(hdr, n)

        def field(name):
            off, width = FIELDS[name]
            return be_value([hbyte(off + k) for k in range(width)])

        counters = {r.name: Signal(32, name=r.name) for r in self.registers if r.access == "ro"}
        for name, sig in counters.items():
            m.d.comb += getattr(self.regs, name).eq(sig)

        # -- the verdict, from header bytes 0..39 (all registered once word 5 arrives) ---------
        group = self.regs.multicast_group
        dst_mac = field("eth.destination_address")
        mcast_mac = Cat(group[:23], Const(0, 1), Const(0x01005E, 24))
        ip_csum = Signal(20)
        words16 = [be_value([hbyte(IP + 2 * k), hbyte(IP + 2 * k + 1)]) for k in range(10)]
        m.d.comb += ip_csum.eq(sum(words16))
        folded = Signal(17)
        m.d.comb += folded.eq(ip_csum[:16] + ip_csum[16:])
        csum_ok = (folded[:16] + folded[16]) == 0xFFFF
        total_length = field("ip.total_length")
        udp_length = field("udp.length")
        checks = [
            (dst_mac == self.regs.mac_address) | (dst_mac == mcast_mac),
            field("eth.ethertype") == wire.ETHERTYPE_IPV4,
            (field("ip.version_ihl") == wire.IPV4_VERSION_IHL) &
            ((field("ip.flags_fragment_offset") &
              (wire.IPV4_FLAG_MORE_FRAGMENTS | wire.IPV4_FRAGMENT_OFFSET_MASK)) == 0) &
            (field("ip.protocol") == wire.IP_PROTOCOL_UDP),
            csum_ok,
            field("ip.destination_address") == group,
            field("udp.destination_port") == self.regs.udp_port,
            (total_length >= wire.IPV4_HEADER_LENGTH + wire.UDP_HEADER_LENGTH) &
            (total_length + IP <= i.payload.length) &
            (udp_length == total_length - wire.IPV4_HEADER_LENGTH),
        ]
        verdict = Signal(len(checks) + 1)   # one-hot: drop reason index, or the last bit = accept
        with m.If(~checks[0]):
            m.d.comb += verdict.eq(1 << 0)
        for k in range(1, len(checks)):
            with m.Elif(~checks[k]):
                m.d.comb += verdict.eq(1 << k)
        with m.Else():
            m.d.comb += verdict.eq(1 << len(checks))

        can_emit = Signal()
        m.d.comb += can_emit.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

        def emit(data_, nbytes, last):
            m.d.sync += [o.valid.eq(1), o.payload.data.eq(data_), o.payload.nbytes.eq(nbytes),
                         o.payload.last.eq(last), o.payload.length.eq(payload_len)]

        remaining = Signal(16)
        m.d.comb += remaining.eq(payload_len - sent)

        with m.If(flush):
            # The last payload word lies wholly in the previous frame word (lanes 2..7).
            m.d.comb += i.ready.eq(0)
            with m.If(can_emit):
                emit(Cat(prev[16:], Const(0, 16)), remaining, 1)
                m.d.sync += [flush.eq(0), sent.eq(payload_len)]
        with m.Else():
            m.d.comb += i.ready.eq(can_emit)
            with m.If(i.valid & can_emit):
                m.d.sync += prev.eq(i.payload.data)
                with m.If(word != header_words + 1):
                    m.d.sync += word.eq(word + 1)
                for w in range(header_words - 1):
                    with m.If(word == w):
                        m.d.sync += hdr[64 * w:64 * (w + 1)].eq(i.payload.data)
                with m.If(word == header_words - 1):
                    # Word 5: decide; its lanes 2..7 are the first payload bytes.
                    new_len = udp_length - 8
                    m.d.sync += [payload_len.eq(new_len), sent.eq(0)]
                    for k, name in enumerate(self._DROPS):
                        with m.If(verdict[k]):
                            m.d.sync += counters[name].eq(counters[name] + 1)
                    with m.If(verdict[-1]):
                        m.d.sync += [counters["frames_accepted"].eq(counters["frames_accepted"] + 1),
                                     accepted.eq(1), done.eq(0)]
                        with m.If(i.payload.last):
                            m.d.sync += flush.eq(new_len != 0)
                            with m.If(new_len == 0):
                                m.d.sync += done.eq(1)
                    with m.Else():
                        m.d.sync += [accepted.eq(0), done.eq(1)]
                with m.Elif((word >= header_words) & accepted & ~done):
                    # Output word = previous word's lanes 2..7 + this word's lanes 0..1.
                    out = Cat(prev[16:], i.payload.data[:16])
                    last = remaining <= 8
                    emit(out, Mux(last, remaining, 8), last)
                    m.d.sync += sent.eq(Mux(last, payload_len, sent + 8))
                    with m.If(last):
                        m.d.sync += done.eq(1)
                    with m.Elif(i.payload.last):
                        # Frame ends but payload bytes remain in this word's lanes 2..7.
                        m.d.sync += flush.eq(1)
                with m.If(i.payload.last):
                    m.d.sync += word.eq(0)
                    with m.If(word < header_words - 1):
                        # Shorter than the headers: the MAC never passes such a runt, but count it.
                        m.d.sync += counters["drop_length"].eq(counters["drop_length"] + 1)
        return m


def payload_record_layout(max_payload: int) -> data.StructLayout:
    """A whole short payload in one beat: ``length`` bytes of ``data``, first byte in bits [7:0]."""
    return data.StructLayout({"data": 8 * max_payload, "length": 16})


class NetTx(wiring.Component):
    """Builds an Ethernet/IPv4/UDP frame around a payload record and sends it as 64-bit words.

    The header is fixed by the registers except the lengths, the IPv4 identification and the
    IPv4 checksum; the sum of the fixed part is kept precomputed in a register.

    Parameters
    ----------
    max_payload : int
        Largest payload in bytes.

    Members
    -------
    i_stream : In(stream.Signature(payload_record_layout(max_payload)))
    o_stream : Out(stream.Signature(packet_layout()))
    regs : Out(registers_signature(NetTx.registers))

    Latency
    -------
    The first frame word is offered one cycle after the payload is accepted; the frame follows
    at one word per cycle (tests/hdl/test_net.py).
    """

    registers = (
        Register("src_mac", 48, "rw", "Source MAC of the order port."),
        Register("dst_mac", 48, "rw", "Destination MAC (next hop) of the order port."),
        Register("src_ip", 32, "rw", "Source IPv4 address of the order port."),
        Register("dst_ip", 32, "rw", "Destination IPv4 address of the order port."),
        Register("src_port", 16, "rw", "UDP source port."),
        Register("dst_port", 16, "rw", "UDP destination port."),
        Register("frames_sent", 32, "ro", "Frames built and sent."),
    )

    def __init__(self, *, max_payload: int = 64):
        if not 1 <= max_payload <= 1472:
            raise ValueError(f"max_payload must be 1..1472, not {max_payload!r}")
        self.max_payload = max_payload
        super().__init__({
            "i_stream": In(stream.Signature(payload_record_layout(max_payload))),
            "o_stream": Out(stream.Signature(packet_layout())),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        r = self.regs
        frame_bytes = HEADERS + self.max_payload
        frame_words = (frame_bytes + 7) // 8
        frame = Signal(8 * 8 * frame_words)
        frame_len = Signal(16)
        index = Signal(range(frame_words + 1))
        busy = Signal()
        identification = Signal(16)
        frames_sent = Signal(32)
        m.d.comb += r.frames_sent.eq(frames_sent)

        # Fixed part of the IPv4 header checksum: version/IHL/TOS, flags, TTL/protocol, addresses.
        fixed = Signal(20)
        m.d.sync += fixed.eq((wire.IPV4_VERSION_IHL << 8) + wire.IPV4_FLAG_DONT_FRAGMENT +
                             (wire.IPV4_TIME_TO_LIVE << 8 | wire.IP_PROTOCOL_UDP) +
                             r.src_ip[16:] + r.src_ip[:16] + r.dst_ip[16:] + r.dst_ip[:16])

        plen = i.payload.length
        total_length = Signal(16)
        m.d.comb += total_length.eq(plen + wire.IPV4_HEADER_LENGTH + wire.UDP_HEADER_LENGTH)
        s1 = Signal(20)
        m.d.comb += s1.eq(fixed + total_length + identification)
        s2 = Signal(17)
        m.d.comb += s2.eq(s1[:16] + s1[16:])
        checksum = Signal(16)
        m.d.comb += checksum.eq(~(s2[:16] + s2[16]))

        values = {
            "eth.destination_address": r.dst_mac, "eth.source_address": r.src_mac,
            "eth.ethertype": wire.ETHERTYPE_IPV4,
            "ip.version_ihl": wire.IPV4_VERSION_IHL, "ip.type_of_service": 0, "ip.total_length": total_length,
            "ip.identification": identification, "ip.flags_fragment_offset": wire.IPV4_FLAG_DONT_FRAGMENT,
            "ip.time_to_live": wire.IPV4_TIME_TO_LIVE, "ip.protocol": wire.IP_PROTOCOL_UDP,
            "ip.header_checksum": checksum, "ip.source_address": r.src_ip, "ip.destination_address": r.dst_ip,
            "udp.source_port": r.src_port, "udp.destination_port": r.dst_port,
            "udp.length": plen + wire.UDP_HEADER_LENGTH, "udp.checksum": 0,
        }
        if set(values) != set(FIELDS):
            raise AssertionError(f"header fields not covered: {set(FIELDS) ^ set(values)}")
        header = Signal(8 * HEADERS)
        for name, value in values.items():
            off, width = FIELDS[name]
            v = Signal(8 * width, name=name.replace(".", "_"))
            m.d.comb += v.eq(value)
            for k in range(width):  # big-endian on the wire
                byte = width - 1 - k
                m.d.comb += header[8 * (off + k):8 * (off + k) + 8].eq(v[8 * byte:8 * byte + 8])

        m.d.comb += i.ready.eq(~busy)
        with m.If(i.valid & ~busy):
            m.d.sync += [frame.eq(Cat(header, i.payload.data)), frame_len.eq(plen + HEADERS),
                         index.eq(0), busy.eq(1), identification.eq(identification + 1),
                         frames_sent.eq(frames_sent + 1)]

        words_total = Signal(range(frame_words + 1))
        m.d.comb += words_total.eq((frame_len + 7) >> 3)
        is_last = index == words_total - 1
        with m.Switch(index):
            for k in range(frame_words):
                with m.Case(k):
                    m.d.comb += o.payload.data.eq(frame[64 * k:64 * (k + 1)])
        m.d.comb += [o.valid.eq(busy), o.payload.last.eq(is_last), o.payload.length.eq(frame_len),
                     o.payload.nbytes.eq(Mux(is_last, (frame_len - 1)[:3] + 1, 8))]
        with m.If(o.valid & o.ready):
            m.d.sync += index.eq(index + 1)
            with m.If(is_last):
                m.d.sync += busy.eq(0)
        return m
