"""OUCH 5.0 Enter Order encoder, framed as a SoupBinTCP Unsequenced Data packet."""

from amaranth.hdl import Module, Signal, Cat, Const, Mux
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from ..protocols import ouch, soupbintcp
from .trigger import intent_layout
from .net import payload_record_layout
from .csr import Register, registers_signature

__all__ = ["OuchEncoder", "ENTER_ORDER_PACKET_LENGTH"]

#: SoupBinTCP header (length, type 'U') plus the Enter Order message without appendage.
ENTER_ORDER_PACKET_LENGTH = soupbintcp.HEADER_LENGTH + ouch.ENTER_ORDER.length


def _hex_ascii(nibble):
    """ASCII upper-case hex digit of a 4-bit value, 8 bits wide."""
    return Mux(nibble < 10, nibble + ord("0"), nibble + (ord("A") - 10)).as_unsigned() | Const(0, 8)


class OuchEncoder(wiring.Component):
    """Turns accepted order intents into SoupBinTCP-framed OUCH 5.0 Enter Order messages.

    The UserRefNum counts up from ``next_user_ref_num`` (loaded whenever the host writes it);
    the ClOrdID is the 4-character prefix register, the UserRefNum in 8 upper-case hex digits
    and two spaces. Byte positions come from :data:`tickwire.protocols.ouch.ENTER_ORDER`.

    Members
    -------
    i_stream : In(stream.Signature(intent_layout))
    o_stream : Out(stream.Signature(payload_record_layout(ENTER_ORDER_PACKET_LENGTH)))
    regs : Out(registers_signature(OuchEncoder.registers))

    Latency
    -------
    1 cycle (tests/hdl/test_ouch.py).
    """

    registers = (
        Register("next_user_ref_num", 32, "rw", "UserRefNum of the next order; writing it reloads the counter.",
                 reset=1, strobe=True),
        Register("time_in_force", 8, "rw", "ASCII Time In Force of every order.", reset=ord("0")),
        Register("display", 8, "rw", "ASCII Display of every order.", reset=ord("Y")),
        Register("capacity", 8, "rw", "ASCII Capacity of every order.", reset=ord("A")),
        Register("intermarket_sweep_eligibility", 8, "rw", "ASCII Intermarket Sweep Eligibility.", reset=ord("N")),
        Register("cross_type", 8, "rw", "ASCII Cross Type of every order.", reset=ord("N")),
        Register("cl_ord_id_prefix", 32, "rw", "Four ASCII characters that start every ClOrdID (first in bits 31:24).",
                 reset=int.from_bytes(b"TW01", "big")),
        Register("orders_sent", 32, "ro", "Enter Order messages encoded."),
        Register("user_ref_num", 32, "ro", "The UserRefNum the next order will carry."),
    )

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(intent_layout)),
            "o_stream": Out(stream.Signature(payload_record_layout(ENTER_ORDER_PACKET_LENGTH))),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        ref = Signal(32, init=1)
        sent = Signal(32)
        m.d.comb += [r.orders_sent.eq(sent), r.user_ref_num.eq(ref)]

        m.d.comb += i.ready.eq((~o.valid | o.ready) & ~r.next_user_ref_num_stb)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

        intent = i.payload
        prefix = Cat(*[r.cl_ord_id_prefix[8 * (3 - k):8 * (4 - k)] for k in range(4)])
        hex_digits = Cat(*[_hex_ascii(ref[4 * (7 - k):4 * (8 - k)]) for k in range(8)])
        values = {
            "message_type": ord("O"),
            "user_ref_num": ref,
            "side": intent.side,
            "quantity": intent.quantity,
            "symbol": intent.stock,
            "price": intent.price,
            "time_in_force": r.time_in_force,
            "display": r.display,
            "capacity": r.capacity,
            "intermarket_sweep_eligibility": r.intermarket_sweep_eligibility,
            "cross_type": r.cross_type,
            "cl_ord_id": Cat(prefix, hex_digits, Const(int.from_bytes(b"  ", "little"), 16)),
            "appendage_length": 0,
        }
        layout = ouch.ENTER_ORDER
        if set(values) != set(layout.field_names):
            raise AssertionError(f"Enter Order fields not covered: {set(values) ^ set(layout.field_names)}")
        packet = Signal(8 * ENTER_ORDER_PACKET_LENGTH)
        header = soupbintcp.HEADER.pack(packet_length=layout.length + 1, packet_type="U")
        for k, b in enumerate(header):
            m.d.comb += packet[8 * k:8 * k + 8].eq(b)
        base = soupbintcp.HEADER_LENGTH
        for f in layout.fields:
            v = Signal(8 * f.width, name=f"enter_{f.name}")
            m.d.comb += v.eq(values[f.name])
            for k in range(f.width):
                # Alpha fields are already in wire order; integers go big-endian.
                src = k if f.type == "alpha" else f.width - 1 - k
                pos = base + f.offset + k
                m.d.comb += packet[8 * pos:8 * pos + 8].eq(v[8 * src:8 * src + 8])

        with m.If(r.next_user_ref_num_stb):
            m.d.sync += ref.eq(r.next_user_ref_num)
        with m.Elif(i.valid & i.ready):
            m.d.sync += [o.valid.eq(1), o.payload.data.eq(packet),
                         o.payload.length.eq(ENTER_ORDER_PACKET_LENGTH),
                         ref.eq(ref + 1), sent.eq(sent + 1)]
        return m
