"""ITCH 5.0 decoder: whole messages in, one decoded order-event record per message out."""

from amaranth.hdl import Module, Signal, Cat
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import itch
from .packet import byte_lane, be_value
from .moldudp64 import message_layout
from .csr import Register, registers_signature

__all__ = ["ItchDecoder", "record_layout", "RECORD_FIELDS"]

#: Decoded record fields and their widths in bits. Integers are plain unsigned values; alpha
#: fields keep the wire order, first character in bits [7:0].
RECORD_FIELDS = {
    "message_type": 8,
    "stock_locate": 16,
    "tracking_number": 16,
    "timestamp": 48,
    "order_reference_number": 64,
    "new_order_reference_number": 64,
    "buy_sell_indicator": 8,
    "shares": 32,
    "price": 32,
    "stock": 64,
    "match_number": 64,
    "attribution": 32,
    "printable": 8,
    "sequence_number": 64,
}

record_layout = data.StructLayout(RECORD_FIELDS)


def _field_value(msg_bytes, field):
    raw = msg_bytes[field.offset:field.end]
    if field.type == "alpha":
        return Cat(*raw)
    return be_value(raw)


class ItchDecoder(wiring.Component):
    """Decodes ITCH 5.0 order messages (A F E C X D U) into :data:`record_layout` records.

    Every other message type is recognised by its type byte, checked against its length from the
    spec, and skipped. Field positions come from :mod:`tickwire.protocols.itch`.

    Members
    -------
    i_stream : In(stream.Signature(message_layout(max_message_length)))
    o_stream : Out(stream.Signature(record_layout))
    regs : Out(registers_signature(ItchDecoder.registers))

    Latency
    -------
    1 cycle (tests/hdl/test_itch.py).
    """

    registers = (
        Register("decoded", 32, "ro", "Order messages decoded (A F E C X D U)."),
        Register("skipped", 32, "ro", "Other ITCH 5.0 messages framed by their length and skipped."),
        Register("unknown_type", 32, "ro", "Messages with a type byte ITCH 5.0 does not define."),
        Register("bad_length", 32, "ro", "Messages whose length differs from their type's length."),
    )

    def __init__(self, *, max_message_length: int = itch.MAX_LENGTH):
        if max_message_length < itch.MAX_LENGTH:
            raise ValueError(f"max_message_length must be at least {itch.MAX_LENGTH}, "
                             f"not {max_message_length!r}")
        self.max_message_length = max_message_length
        super().__init__({
            "i_stream": In(stream.Signature(message_layout(max_message_length))),
            "o_stream": Out(stream.Signature(record_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        msg = [byte_lane(i.payload.data, k) for k in range(self.max_message_length)]
        mtype = msg[0]

        counters = {r.name: Signal(32, name=r.name) for r in self.registers}
        for name, sig in counters.items():
            m.d.comb += getattr(self.regs, name).eq(sig)

        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

        rec = Signal(record_layout)
        header = itch.MESSAGES["A"]
        for name in ("message_type", "stock_locate", "tracking_number", "timestamp"):
            m.d.comb += getattr(rec, name).eq(_field_value(msg, header[name]))
        m.d.comb += rec.sequence_number.eq(i.payload.sequence_number)
        for rname in RECORD_FIELDS:
            if rname not in itch.RECORD_SOURCES:
                continue
            blank = itch.RECORD_SOURCES[rname]
            # Alpha fields not carried by a type read as spaces, integers as zero.
            any_alpha = any(itch.MESSAGES[t][f].type == "alpha" for t, f in blank.items())
            default = int.from_bytes(b" " * (RECORD_FIELDS[rname] // 8), "little") if any_alpha else 0
            m.d.comb += getattr(rec, rname).eq(default)

        with m.If(i.valid & i.ready):
            with m.Switch(mtype):
                for t, layout in itch.MESSAGES.items():
                    with m.Case(ord(t)):
                        with m.If(i.payload.length != layout.length):
                            m.d.sync += counters["bad_length"].eq(counters["bad_length"] + 1)
                        with m.Else():
                            if t in itch.ORDER_TYPES:
                                for rname, sources in itch.RECORD_SOURCES.items():
                                    if t in sources:
                                        m.d.comb += getattr(rec, rname).eq(
                                            _field_value(msg, layout[sources[t]]))
                                m.d.sync += [o.valid.eq(1), o.payload.eq(rec),
                                             counters["decoded"].eq(counters["decoded"] + 1)]
                            else:
                                m.d.sync += counters["skipped"].eq(counters["skipped"] + 1)
                with m.Default():
                    m.d.sync += counters["unknown_type"].eq(counters["unknown_type"] + 1)
        return m
