"""ITCH 5.0 decoder: whole messages in, one decoded record per message of any of the 23 types out."""

from amaranth.hdl import Module, Signal, Cat
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import itch
from ..protocols.itch import RECORD_FIELDS
from .packet import byte_lane, be_value
from .moldudp64 import message_layout
from .csr import Register, registers_signature

__all__ = ["ItchDecoder", "record_layout", "RECORD_FIELDS"]

#: The decoded-message record (:data:`tickwire.protocols.itch.RECORD_FIELDS`): header fields,
#: named fields that keep one meaning across types, and generic fields filled per type as
#: :data:`tickwire.protocols.itch.RECORD_SOURCES` says. Integers are plain unsigned values; alpha
#: fields keep the wire order, first character in bits [7:0]; fields a type does not use are 0.
record_layout = data.StructLayout(RECORD_FIELDS)


def _field_value(msg_bytes, field):
    raw = msg_bytes[field.offset:field.end]
    if field.type == "alpha":
        return Cat(*raw)
    return be_value(raw)


class ItchDecoder(wiring.Component):
    """Decodes every ITCH 5.0 message type (S R H Y L V W K J h A F E C X D U P Q B I N O) into
    one :data:`record_layout` record.

    The type byte selects the type; a message whose length is not its type's length from the
    spec is dropped and counted, as is an unknown type byte. Each record field is one
    ``Switch`` on the type byte choosing among the byte slices that feed it
    (:data:`tickwire.protocols.itch.RECORD_SOURCES`, offsets from :mod:`tickwire.protocols.itch`).

    Parameters
    ----------
    max_message_length : int
        Bytes of each message carried by the input stream; at least the longest ITCH message.

    Members
    -------
    i_stream : In(stream.Signature(message_layout(max_message_length)))
        Whole messages with their MoldUDP64 sequence number and length.
    o_stream : Out(stream.Signature(record_layout))
        One record per message of a known type with its spec length.
    regs : Out(registers_signature(ItchDecoder.registers))
        Counters.

    Latency
    -------
    1 cycle from a message taken to its record valid (tests/hdl/test_itch.py).
    """

    registers = (
        Register("decoded", 32, "ro", "Messages decoded: a known ITCH 5.0 type at its length."),
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

        # Type known, and the message has its type's length.
        known = Signal()
        length_ok = Signal()
        with m.Switch(mtype):
            for t, layout in itch.MESSAGES.items():
                with m.Case(ord(t)):
                    m.d.comb += [known.eq(1), length_ok.eq(i.payload.length == layout.length)]

        # Every record field: a Switch on the type byte over the distinct slices feeding it
        # (types reading the same bytes share a Case); 0 for the types without such a field.
        rec = Signal(record_layout)
        m.d.comb += [rec.sequence_number.eq(i.payload.sequence_number),
                     rec.recovered.eq(i.payload.recovered)]
        for rname, sources in itch.RECORD_SOURCES.items():
            target = getattr(rec, rname)
            slices: dict[tuple[int, int, bool], list[str]] = {}
            for t, fname in sources.items():
                f = itch.MESSAGES[t][fname]
                slices.setdefault((f.offset, f.width, f.type == "alpha"), []).append(t)
            if len(slices) == 1 and len(sources) == len(itch.MESSAGES):
                # The header: the same bytes in every type.
                m.d.comb += target.eq(_field_value(msg, itch.MESSAGES[t][fname]))
                continue
            with m.Switch(mtype):
                for types in slices.values():
                    with m.Case(*(ord(t) for t in types)):
                        m.d.comb += target.eq(_field_value(msg, itch.MESSAGES[types[0]][sources[types[0]]]))

        with m.If(i.valid & i.ready):
            with m.If(~known):
                m.d.sync += counters["unknown_type"].eq(counters["unknown_type"] + 1)
            with m.Elif(~length_ok):
                m.d.sync += counters["bad_length"].eq(counters["bad_length"] + 1)
            with m.Else():
                m.d.sync += [o.valid.eq(1), o.payload.eq(rec),
                             counters["decoded"].eq(counters["decoded"] + 1)]
        return m
