"""OUCH 5.0 inbound parser: the exchange's SoupBinTCP byte stream to decoded records, exposure
updates for risk, and per-type and malformed-packet counters."""

import re

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import ouch, soupbintcp
from ..protocols.ouch import ParseError
from .packet import packet_layout
from .csr import Register, registers_signature

__all__ = ["OuchParser", "record_layout", "exposure_layout", "RECORD_FIELDS", "CAPTURE_BYTES",
           "SOUP_RECORD_NAMES", "counter_name"]

#: SoupBinTCP server packet field -> record field (``session`` is the card's session index).
SOUP_RECORD_NAMES = {"session": "login_session", "sequence_number": "login_sequence_number",
                     "reject_reason_code": "reject_reason_code"}


def _record_fields() -> dict[str, int]:
    """Every field an OUCH outbound message or SoupBinTCP server packet carries -> bits."""
    fields: dict[str, int] = {}
    for t, m in ouch.OUTBOUND.items():
        for f in m.fields:
            if f.name != "message_type":
                name = ouch.RECORD_ALIASES.get((t, f.name), f.name)
                fields[name] = max(fields.get(name, 0), 8 * f.width)
    for m in soupbintcp.SERVER.values():
        for f in m.fields:
            fields[SOUP_RECORD_NAMES[f.name]] = 8 * f.width
    return fields


#: The named fields of :data:`record_layout` after its header fields.
RECORD_FIELDS = _record_fields()

#: One SoupBinTCP packet from the exchange, decoded. ``packet_type`` is the SoupBinTCP type
#: (0 for a packet of length 0), ``message_type`` the OUCH type of Sequenced Data (else 0),
#: ``error`` a :class:`~tickwire.protocols.ouch.ParseError`, ``session`` the card's session
#: index, ``sequence_count`` how many Sequenced Data packets arrived since the last Login
#: Accepted, this one included (the SoupBinTCP sequence number is the Login Accepted's plus
#: ``sequence_count - 1``). The named fields follow the message layouts of
#: :mod:`tickwire.protocols.ouch` (integers as integers, alpha fields with the first character
#: in the low byte; AIQ Canceled's Decrement Shares and Execution Price are ``quantity`` and
#: ``price``); fields the packet does not carry are 0, as are bytes past a short packet's end.
record_layout = data.StructLayout({
    "packet_type": 8, "message_type": 8, "error": 3, "session": 8, "sequence_count": 64,
    **RECORD_FIELDS,
})

#: What an exchange message does to an order's exposure, for the risk stage: ``kind`` an
#: :class:`~tickwire.protocols.ouch.ExposureKind`; ``quantity`` the message's Quantity
#: (AIQ Canceled: Decrement Shares); ``price`` its Price (AIQ Canceled: Execution Price),
#: saturated to 32 bits like ``order_layout.price``; ``orig_user_ref_num`` set by Order Replaced.
exposure_layout = data.StructLayout({
    "kind": 3, "session": 8, "user_ref_num": 32, "orig_user_ref_num": 32, "quantity": 32, "price": 32,
})

#: Packet bytes kept for decoding: the SoupBinTCP header and the longest fixed message part.
CAPTURE_BYTES = soupbintcp.HEADER_LENGTH + max(
    max(m.length for m in ouch.OUTBOUND.values()),
    max(sum(f.width for f in m.fields) for m in soupbintcp.SERVER.values()))


def counter_name(message_name: str) -> str:
    """Register name of a message counter: ``"Order Executed"`` -> ``"order_executed"``."""
    return re.sub(r"[^a-z0-9]+", "_", message_name.lower()).strip("_")


_SOUP_COUNTED = {t: counter_name(m.name) for t, m in soupbintcp.SERVER.items() if t != "S"}
_ERROR_COUNTERS = {e: f"error_{e.name.lower()}" for e in ParseError if e != ParseError.NONE}


class OuchParser(wiring.Component):
    """Decodes the SoupBinTCP byte stream of one order session from the exchange.

    The input is the in-order byte stream TCP delivers: each beat carries ``nbytes`` (0..8)
    bytes in lanes 0 up, and packets run across beats at any alignment; ``last`` and
    ``length`` are ignored. SoupBinTCP length framing splits the stream into packets, one
    packet boundary handled per cycle (so up to 8 bytes a cycle, fewer where packets end).
    Every packet gives one record on ``o_stream``: Sequenced Data carrying any OUCH 5.0
    outbound message of :data:`tickwire.protocols.ouch.OUTBOUND` (System Event, Order
    Accepted/Replaced/Canceled, AIQ Canceled, Order Executed, Broken Trade, Order Rejected,
    Cancel Pending/Reject, Order Priority Update, Order Modified, Order Restated, Account Query
    Response) decoded into named fields, and the non-data packets (Debug, Login Accepted and
    Rejected, Server Heartbeat, End of Session) as events. Appendages are skipped; their
    Appendage Length must equal the bytes that follow. A malformed packet (see
    :class:`~tickwire.protocols.ouch.ParseError`) still gives a record, with ``error`` set, and
    its counter; whatever its length, it is consumed, so the parser never wedges. Valid
    messages that change exposure also give an ``o_exposure`` beat.

    Parameters
    ----------
    session : int
        The card's index of this order session, carried in every record (0..255).

    Members
    -------
    i_stream : In(stream.Signature(packet_layout()))
        The exchange's bytes, in order.
    o_stream : Out(stream.Signature(record_layout))
        One record per SoupBinTCP packet.
    o_exposure : Out(stream.Signature(exposure_layout))
        Exposure updates for risk.
    regs : Out(registers_signature(OuchParser.registers))

    Latency
    -------
    A packet's record (and exposure update) is valid the cycle after the cycle its last byte is
    consumed: 1 cycle after the beat holding that byte is taken, when the byte is the beat's
    last (tests/hdl/test_ouch_inbound.py, sim/tb_ouch_inbound.py). Both outputs are registers;
    while either holds a beat its consumer has not taken, no byte is consumed.
    """

    registers = (
        *(Register(counter_name(m.name), 32, "ro", f"{m.name} messages received.")
          for m in ouch.OUTBOUND.values()),
        *(Register(name, 32, "ro", f"SoupBinTCP {soupbintcp.SERVER[t].name} packets received.")
          for t, name in _SOUP_COUNTED.items()),
        Register("error_packet_length", 32, "ro", "Packets of SoupBinTCP length 0, or wrong for their type."),
        Register("error_packet_type", 32, "ro", "Packets of a type the server does not send."),
        Register("error_message_type", 32, "ro", "Sequenced Data with an unknown (or no) OUCH message type."),
        Register("error_message_length", 32, "ro", "OUCH messages truncated or longer than their layout."),
        Register("error_appendage_length", 32, "ro", "OUCH messages whose Appendage Length disagrees with the bytes."),
        Register("exposure_updates", 32, "ro", "Exposure updates sent to risk."),
        Register("price_saturated", 32, "ro", "Exposure updates whose price did not fit 32 bits."),
    )

    def __init__(self, *, session: int = 0):
        if not isinstance(session, int) or not 0 <= session <= 0xFF:
            raise ValueError(f"session must be an integer 0..255, not {session!r}")
        self.session = session
        super().__init__({
            "i_stream": In(stream.Signature(packet_layout())),
            "o_stream": Out(stream.Signature(record_layout)),
            "o_exposure": Out(stream.Signature(exposure_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, x, r = self.i_stream, self.o_stream, self.o_exposure, self.regs
        counters = {reg.name: Signal(32, name=reg.name) for reg in self.registers}
        for name, sig in counters.items():
            m.d.comb += getattr(r, name).eq(sig)

        def bump(name):
            m.d.sync += counters[name].eq(counters[name] + 1)

        # -- byte engine: consume up to the rest of the beat or of the packet each cycle -------
        cap = Signal(8 * CAPTURE_BYTES)       # the current packet's first bytes, zero beyond
        cap_next = Signal(8 * CAPTURE_BYTES)
        p = Signal(17)                        # bytes of the current packet consumed
        off = Signal(3)                       # bytes of the current beat consumed
        nbytes = Signal(4)
        avail = Signal(4)
        shifted = Signal(64)
        m.d.comb += [
            nbytes.eq(Mux(i.payload.nbytes > 8, 8, i.payload.nbytes)),
            avail.eq(nbytes - off),
            shifted.eq(i.payload.data >> (off * 8)),
        ]

        def sbyte(n):
            return shifted[8 * n:8 * n + 8]

        def cbyte(vector, n):
            return vector[8 * n:8 * n + 8]

        length_hi = Mux(p == 0, sbyte(0), cbyte(cap, 0))
        length_lo = Mux(p == 0, sbyte(1), Mux(p == 1, sbyte(0), cbyte(cap, 1)))
        packet_length = Signal(16)            # the SoupBinTCP length field, once known
        length_known = Signal()
        remaining = Signal(17)
        completes = Signal()
        take = Signal(4)                      # bytes consumed this cycle
        m.d.comb += [
            packet_length.eq(Cat(length_lo, length_hi)),
            length_known.eq(p + avail >= 2),
            remaining.eq(packet_length + 2 - p),
            completes.eq(length_known & (avail >= remaining)),
            take.eq(Mux(completes, remaining, avail)),
        ]
        for j in range(CAPTURE_BYTES):
            rel = Signal(17, name=f"rel_{j}")
            m.d.comb += rel.eq(j - p)
            with m.If((p <= j) & (rel < take)):
                m.d.comb += cbyte(cap_next, j).eq(shifted.word_select(rel[:3], 8))
            with m.Elif(j < p):
                m.d.comb += cbyte(cap_next, j).eq(cbyte(cap, j))

        out_free = Signal()
        proceed = Signal()
        word_done = Signal()
        m.d.comb += [
            out_free.eq((~o.valid | o.ready) & (~x.valid | x.ready)),
            proceed.eq(i.valid & out_free),
            word_done.eq(off + take == nbytes),
            i.ready.eq(out_free & word_done),
        ]
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(x.valid & x.ready):
            m.d.sync += x.valid.eq(0)
        with m.If(proceed):
            m.d.sync += [cap.eq(cap_next), off.eq(Mux(word_done, 0, off + take)),
                         p.eq(Mux(completes, 0, p + take))]

        # -- verdict and fields of a packet, from cap_next on the cycle it completes ----------
        base = soupbintcp.HEADER_LENGTH
        packet_type = Signal(8)
        message_type = Signal(8)
        payload_length = Signal(16)
        error = Signal(3)
        m.d.comb += [
            packet_type.eq(Mux(packet_length == 0, 0, cbyte(cap_next, 2))),
            payload_length.eq(packet_length - 1),
            message_type.eq(Mux((packet_type == ord("S")) & (packet_length >= 2), cbyte(cap_next, base), 0)),
        ]
        with m.If(packet_length == 0):
            m.d.comb += error.eq(ParseError.PACKET_LENGTH)
        with m.Else():
            with m.Switch(packet_type):
                with m.Case(ord("+")):
                    m.d.comb += error.eq(ParseError.NONE)
                for t, n in ouch.SERVER_PAYLOAD_LENGTHS.items():
                    with m.Case(ord(t)):
                        m.d.comb += error.eq(Mux(payload_length == n, ParseError.NONE, ParseError.PACKET_LENGTH))
                with m.Case(ord("S")):
                    with m.Switch(message_type):
                        for t, msg in ouch.OUTBOUND.items():
                            with m.Case(ord(t)):
                                if "appendage_length" in msg:
                                    f = msg["appendage_length"]
                                    declared = Cat(*reversed([cbyte(cap_next, base + f.offset + k)
                                                              for k in range(f.width)]))
                                    with m.If(payload_length < msg.length):
                                        m.d.comb += error.eq(ParseError.MESSAGE_LENGTH)
                                    with m.Elif(declared != payload_length - msg.length):
                                        m.d.comb += error.eq(ParseError.APPENDAGE_LENGTH)
                                else:
                                    with m.If(payload_length != msg.length):
                                        m.d.comb += error.eq(ParseError.MESSAGE_LENGTH)
                        with m.Default():
                            m.d.comb += error.eq(ParseError.MESSAGE_TYPE)
                with m.Default():
                    m.d.comb += error.eq(ParseError.PACKET_TYPE)

        def decode(f, start):
            """Field ``f`` of a layout whose byte 0 is packet byte ``start``, from cap_next."""
            raw = [cbyte(cap_next, start + f.offset + k) for k in range(f.width)]
            return Cat(*raw) if f.type == "alpha" else Cat(*reversed(raw))

        sequence_count = Signal(64)
        seq_now = Mux(packet_type == ord("S"), sequence_count + 1, sequence_count)
        rec = o.payload
        with m.If(proceed & completes):
            m.d.sync += [o.valid.eq(1), rec.eq(0), rec.packet_type.eq(packet_type),
                         rec.message_type.eq(message_type), rec.error.eq(error),
                         rec.session.eq(self.session), rec.sequence_count.eq(seq_now)]
            with m.If(packet_type == ord("S")):
                m.d.sync += sequence_count.eq(sequence_count + 1)
            with m.If((packet_type == ord("A")) & (error == ParseError.NONE)):
                m.d.sync += sequence_count.eq(0)
            with m.Switch(packet_type):
                for t, msg in soupbintcp.SERVER.items():
                    if msg.fields:
                        with m.Case(ord(t)):
                            for f in msg.fields:
                                m.d.sync += getattr(rec, SOUP_RECORD_NAMES[f.name]).eq(decode(f, base))
                with m.Case(ord("S")):
                    with m.Switch(message_type):
                        for t, msg in ouch.OUTBOUND.items():
                            with m.Case(ord(t)):
                                for f in msg.fields:
                                    if f.name != "message_type":
                                        name = ouch.RECORD_ALIASES.get((t, f.name), f.name)
                                        m.d.sync += getattr(rec, name).eq(decode(f, base))
            # Counters and the exposure update.
            for e, name in _ERROR_COUNTERS.items():
                with m.If(error == e):
                    bump(name)
            with m.If(error == ParseError.NONE):
                with m.Switch(packet_type):
                    for t, name in _SOUP_COUNTED.items():
                        with m.Case(ord(t)):
                            bump(name)
                    with m.Case(ord("S")):
                        with m.Switch(message_type):
                            for t, msg in ouch.OUTBOUND.items():
                                with m.Case(ord(t)):
                                    bump(counter_name(msg.name))
                                    if t in ouch.EXPOSURE_KINDS:
                                        self._exposure(m, x, t, decode, base, counters)
        return m

    def _exposure(self, m, x, t, decode, base, counters):
        """Send the exposure update of a valid message of type ``t``."""
        msg = ouch.OUTBOUND[t]
        names = {ouch.RECORD_ALIASES.get((t, f.name), f.name): f for f in msg.fields}
        values = {"user_ref_num": 0, "orig_user_ref_num": 0, "quantity": 0, "price": 0}
        for name in values:
            if name in names:
                values[name] = decode(names[name], base)
        price = Signal(64, name=f"exposure_price_{t}")
        m.d.comb += price.eq(values["price"])
        wide = price[32:] != 0
        m.d.sync += [
            x.valid.eq(1), x.payload.kind.eq(ouch.EXPOSURE_KINDS[t]), x.payload.session.eq(self.session),
            x.payload.user_ref_num.eq(values["user_ref_num"]),
            x.payload.orig_user_ref_num.eq(values["orig_user_ref_num"]),
            x.payload.quantity.eq(values["quantity"]),
            x.payload.price.eq(Mux(wide, Const(0xFFFFFFFF, 32), price[:32])),
            counters["exposure_updates"].eq(counters["exposure_updates"] + 1),
        ]
        with m.If(wide):
            m.d.sync += counters["price_saturated"].eq(counters["price_saturated"] + 1)
