"""OUCH 5.0 order encoder: Enter, Replace, Cancel and Modify Order with TagValue appendages,
framed as SoupBinTCP Unsequenced Data packets and sent as a 64-bit packet stream."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from ..protocols import ouch, soupbintcp
from .order import order_layout, APPENDAGE_FIELDS
from .packet import packet_layout
from .csr import Register, registers_signature

__all__ = ["OuchEncoder", "ouch_packet_layout", "ACTIONS", "MAX_PACKET_LENGTH", "ENTER_ORDER_PACKET_LENGTH"]

#: Order actions the encoder sends: ``order_layout.action`` -> OUCH 5.0 inbound message.
ACTIONS = {t: ouch.INBOUND[t] for t in ("O", "U", "X", "M")}

#: The appendages of :data:`tickwire.hdl.order.APPENDAGE_FIELDS`, in mask-bit (and wire) order.
APPENDAGES = tuple(ouch.APPENDAGES_BY_NAME[name] for name in APPENDAGE_FIELDS)

#: SoupBinTCP header plus Enter Order without appendages (the packet of the walking skeleton).
ENTER_ORDER_PACKET_LENGTH = soupbintcp.HEADER_LENGTH + ouch.ENTER_ORDER.length

#: Longest packet the encoder sends: an Enter Order carrying every appendage.
MAX_PACKET_LENGTH = soupbintcp.HEADER_LENGTH + max(m.length for m in ACTIONS.values()) + \
    sum(a.element_length for a in APPENDAGES)

#: Order record field carrying an OUCH field, where the names differ.
_RECORD_NAMES = {"symbol": "stock"}


def ouch_packet_layout() -> data.StructLayout:
    """:func:`tickwire.hdl.packet.packet_layout` plus the order ``session`` the packet belongs to
    (the SoupBinTCP/TCP connection that must carry it)."""
    fields = {name: field.shape for name, field in packet_layout()}
    return data.StructLayout({**fields, "session": 8})


def _be_bytes(width, name):
    """A ``width``-byte big-endian field: the signal to drive with its value, and the same
    bytes in wire order (first byte in bits [7:0])."""
    v = Signal(8 * width, name=name)
    return v, Cat(*[v[8 * (width - 1 - k):8 * (width - k)] for k in range(width)])


class OuchEncoder(wiring.Component):
    """Encodes order actions as SoupBinTCP-framed OUCH 5.0 messages.

    ``order_layout.action`` picks the message: ``'O'`` Enter, ``'U'`` Replace, ``'X'`` Cancel,
    ``'M'`` Modify; any other action is taken, counted in ``invalid_action`` and sends nothing.
    Every field comes from the order, UserRefNum and ClOrdID included. Enter and Replace carry
    the appendages whose ``appendage_mask`` bit is set, as TagValue elements in the order of
    :data:`tickwire.hdl.order.APPENDAGE_FIELDS` (ascending tag), Appendage Length filled in;
    Cancel and Modify have no appendage in OUCH 5.0, so their mask is ignored. Byte positions,
    tags and value encodings come from :mod:`tickwire.protocols.ouch`.

    The packet leaves as one SoupBinTCP Unsequenced Data packet (length, ``'U'``, message) on a
    packet stream: 8 bytes a beat, first byte in bits [7:0], ``nbytes``/``last`` on the final
    beat, ``length`` (the packet's bytes) and ``session`` (the order's) on every beat.

    Members
    -------
    i_stream : In(stream.Signature(order_layout))
        Orders accepted by risk.
    o_stream : Out(stream.Signature(ouch_packet_layout()))
        SoupBinTCP packets, 12 (Cancel) to :data:`MAX_PACKET_LENGTH` (93) bytes.
    regs : Out(registers_signature(OuchEncoder.registers))

    Latency
    -------
    The first beat of a packet is valid the cycle after its order is taken (1 cycle); the
    packet follows at one beat per cycle and the next order is taken on the cycle its last
    beat leaves, so packets go back to back (tests/hdl/test_ouch.py, sim/tb_ouch.py).
    """

    registers = (
        Register("orders_sent", 32, "ro", "Order messages encoded (all actions)."),
        Register("enter_sent", 32, "ro", "Enter Order messages encoded."),
        Register("replace_sent", 32, "ro", "Replace Order messages encoded."),
        Register("cancel_sent", 32, "ro", "Cancel Order messages encoded."),
        Register("modify_sent", 32, "ro", "Modify Order messages encoded."),
        Register("appendages_sent", 32, "ro", "TagValue appendage elements encoded."),
        Register("invalid_action", 32, "ro", "Orders dropped: action is not 'O', 'U', 'X' or 'M'."),
    )
    _COUNTERS = {"O": "enter_sent", "U": "replace_sent", "X": "cancel_sent", "M": "modify_sent"}

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(order_layout)),
            "o_stream": Out(stream.Signature(ouch_packet_layout())),
            "regs": Out(registers_signature(self.registers)),
        })

    def _appendage_block(self, m, order):
        """The TagValue elements present, packed from byte 0, and their total length."""
        width = sum(a.element_length for a in APPENDAGES)
        block = Const(0, 8 * width)
        length = Const(0, 8)
        # Built from the last element back: each present element is put in front of the rest.
        for k in reversed(range(len(APPENDAGES))):
            a = APPENDAGES[k]
            value = getattr(order, a.name)
            v, wire = _be_bytes(a.width, f"appendage_{a.name}")
            if a.type == "alpha":
                # Single characters and alpha fields are in wire order in the record.
                m.d.comb += v.eq(value)
                wire = v
            elif a.type in ("signed", "signed_price4"):
                m.d.comb += v.eq(value.as_signed())
            else:
                m.d.comb += v.eq(value)
            element = Cat(Const(1 + a.width, 8), Const(a.tag, 8), wire)
            present = order.appendage_mask[k]
            nxt = Signal(8 * width, name=f"appendages_from_{a.name}")
            m.d.comb += nxt.eq(Mux(present, Cat(element, block)[:8 * width], block))
            block = nxt
            length = Mux(present, length + a.element_length, length)
        total = Signal(8, name="appendage_length")
        m.d.comb += total.eq(length)
        return block, total

    def _packet(self, m, type_, order, block, appendage_length):
        """The whole SoupBinTCP packet of action ``type_`` (wire order) and its length."""
        msg = ACTIONS[type_]
        has_appendage = "appendage_length" in msg
        vectors = []
        for f in msg.fields:
            if f.name == "message_type":
                vectors.append(Const(ord(type_), 8))
                continue
            if f.name == "appendage_length":
                value = appendage_length
            else:
                name = _RECORD_NAMES.get(f.name, f.name)
                if name not in order_layout.members:
                    raise AssertionError(f"{msg.name}: field {f.name!r} has no order_layout member {name!r}")
                value = getattr(order, name)
            if f.type == "alpha":
                v = Signal(8 * f.width, name=f"{type_}_{f.name}")
                m.d.comb += v.eq(value)
                vectors.append(v)
            else:
                v, wire = _be_bytes(f.width, f"{type_}_{f.name}")
                m.d.comb += v.eq(value)
                vectors.append(wire)
        length = Signal(16, name=f"{type_}_packet_length")
        payload = msg.length + (appendage_length if has_appendage else 0)
        m.d.comb += length.eq(soupbintcp.HEADER_LENGTH + payload)
        soup_length, soup_wire = _be_bytes(2, f"{type_}_soup_length")
        m.d.comb += soup_length.eq(payload + 1)
        packet = Cat(soup_wire, Const(ord("U"), 8), *vectors, *([block] if has_appendage else []))
        return packet, length

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        words = (MAX_PACKET_LENGTH + 7) // 8
        counters = {reg.name: Signal(32, name=reg.name) for reg in self.registers}
        for name, sig in counters.items():
            m.d.comb += getattr(r, name).eq(sig)

        order = i.payload
        block, appendage_length = self._appendage_block(m, order)
        packets = {t: self._packet(m, t, order, block, appendage_length) for t in ACTIONS}

        packet = Signal(64 * words)
        length = Signal(16)
        known = Signal()
        with m.Switch(order.action):
            for t, (vector, plen) in packets.items():
                with m.Case(ord(t)):
                    m.d.comb += [packet.eq(vector), length.eq(plen), known.eq(1)]

        # -- the outgoing packet: a shift register emptied a beat at a time -------------------
        buffer = Signal(64 * words)
        left = Signal(range(words + 1))     # beats still to send, this one included
        sent_bytes = Signal(16)             # bytes before the current beat
        last = Signal()
        m.d.comb += [
            last.eq(left == 1),
            o.payload.data.eq(buffer[:64]),
            o.payload.last.eq(last),
            o.payload.nbytes.eq(Mux(last, o.payload.length - sent_bytes, 8)),
        ]
        with m.If(o.valid & o.ready):
            m.d.sync += [buffer.eq(buffer >> 64), left.eq(left - 1), sent_bytes.eq(sent_bytes + 8)]
            with m.If(last):
                m.d.sync += o.valid.eq(0)

        m.d.comb += i.ready.eq(~o.valid | (o.ready & last))
        with m.If(i.valid & i.ready):
            with m.If(known):
                m.d.sync += [
                    o.valid.eq(1), buffer.eq(packet), left.eq((length + 7) >> 3), sent_bytes.eq(0),
                    o.payload.length.eq(length), o.payload.session.eq(order.session),
                    counters["orders_sent"].eq(counters["orders_sent"] + 1),
                ]
                with m.Switch(order.action):
                    for t, name in self._COUNTERS.items():
                        with m.Case(ord(t)):
                            m.d.sync += counters[name].eq(counters[name] + 1)
                with m.If((order.action == ord("O")) | (order.action == ord("U"))):
                    m.d.sync += counters["appendages_sent"].eq(
                        counters["appendages_sent"] + sum(order.appendage_mask[k] for k in range(len(APPENDAGES))))
            with m.Else():
                m.d.sync += counters["invalid_action"].eq(counters["invalid_action"] + 1)
        return m
