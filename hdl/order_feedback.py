"""Order feedback: the exchange's SoupBinTCP byte stream of one order session through the inbound
OUCH parser and the open-order table to risk's exposure updates, merged with the host's."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ..protocols import ouch
from ..protocols.ouch import ExposureKind, ParseError
from .open_orders import LATENCY as OPEN_ORDERS_LATENCY
from .open_orders import OpenOrders, anomaly_layout, feedback_layout
from .order import order_layout
from .ouch_inbound import OuchParser, record_layout
from .packet import packet_layout
from .risk import exposure_update_layout

__all__ = ["OrderFeedback", "ORDER_FEEDBACK_STAGES", "LATENCY"]

#: The stages with registers, in the order their register windows should take.
ORDER_FEEDBACK_STAGES = ("ouch_inbound", "open_orders")

#: Cycles from the beat holding an exposure-changing packet's last byte taken (the byte being the
#: beat's last) to the first exposure update valid on ``o_exposure``: the parser's 1 and the
#: table's :data:`~tickwire.hdl.open_orders.LATENCY` (tests/hdl/test_order_feedback.py).
LATENCY = 1 + OPEN_ORDERS_LATENCY


class OrderFeedback(wiring.Component):
    """The exchange's answers about the card's orders, as exposure updates for risk.

    The inbound parser (:class:`~tickwire.hdl.ouch_inbound.OuchParser`) decodes the byte stream;
    its records of valid Sequenced Data carrying an exposure-changing OUCH message (the types of
    :data:`tickwire.protocols.ouch.EXPOSURE_KINDS`) go to the open-order table
    (:class:`~tickwire.hdl.open_orders.OpenOrders`) as ``feedback_layout`` messages. The table
    reads the records rather than the parser's ``o_exposure``, which it leaves always ready and
    unused: a Broken Trade names its execution only by match number and an accepted order can
    be dead on arrival (Order State), and ``exposure_layout`` carries neither. Every other
    record is passed over at once. Every record also leaves on ``o_record`` (a copy, as the
    parser hands it over) for the host's event ring. The stages' register ports are left to the
    owner's register bank (``stages``), as in :class:`~tickwire.hdl.market_data.MarketDataPath`.

    Parameters
    ----------
    session : int
        The card's index of this order session (the parser's ``session``).
    sessions, entries, executions, insert_queue_depth, host_queue_depth : int
        Of :class:`~tickwire.hdl.open_orders.OpenOrders`.

    Members
    -------
    i_inbound : In(stream.Signature(packet_layout()))
        The exchange's bytes of the session, in order (the parser's input).
    i_accepted : In(stream.Signature(order_layout, always_ready=True))
        Order actions risk accepted (``Appliance.o_accepted``).
    i_host_exposure : In(stream.Signature(exposure_update_layout))
        The host's exposure updates (``OrderEntry.o_exposure``); ``ready`` is always 1.
    o_exposure : Out(stream.Signature(exposure_update_layout))
        To ``Risk.i_exposure``.
    o_record : Out(stream.Signature(record_layout, always_ready=True))
        Every record the parser hands over (a pulse per record).
    o_anomaly : Out(stream.Signature(anomaly_layout, always_ready=True))
        The table's anomalies.

    Latency
    -------
    :data:`LATENCY` = 3 cycles from the beat holding the last byte of an exposure-changing packet
    taken (when that byte is the beat's last) to its first update valid on ``o_exposure``, the
    table being free (tests/hdl/test_order_feedback.py ``test_latency``).
    """

    def __init__(self, *, session: int = 0, sessions: int = 4, entries: int = 256,
                 executions: int = 256, insert_queue_depth: int = 16, host_queue_depth: int = 4):
        self.ouch_inbound = OuchParser(session=session)
        self.open_orders = OpenOrders(sessions=sessions, entries=entries, executions=executions,
                                      insert_queue_depth=insert_queue_depth,
                                      host_queue_depth=host_queue_depth)
        self.stages = {name: getattr(self, name) for name in ORDER_FEEDBACK_STAGES}
        super().__init__({
            "i_inbound": In(stream.Signature(packet_layout())),
            "i_accepted": In(stream.Signature(order_layout, always_ready=True)),
            "i_host_exposure": In(stream.Signature(exposure_update_layout)),
            "o_exposure": Out(stream.Signature(exposure_update_layout)),
            "o_record": Out(stream.Signature(record_layout, always_ready=True)),
            "o_anomaly": Out(stream.Signature(anomaly_layout, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        parser = m.submodules.ouch_inbound = self.ouch_inbound
        table = m.submodules.open_orders = self.open_orders
        connect(m, wiring.flipped(self.i_inbound), parser.i_stream)
        connect(m, wiring.flipped(self.i_accepted), table.i_accepted)
        connect(m, wiring.flipped(self.i_host_exposure), table.i_host)
        connect(m, table.o_exposure, wiring.flipped(self.o_exposure))
        connect(m, table.o_anomaly, wiring.flipped(self.o_anomaly))
        m.d.comb += parser.o_exposure.ready.eq(1)

        rec = parser.o_stream.payload
        kind = Signal(3)
        with m.Switch(rec.message_type):
            for t, k in ouch.EXPOSURE_KINDS.items():
                with m.Case(ord(t)):
                    m.d.comb += kind.eq(k)
        relevant = Signal()
        m.d.comb += relevant.eq((rec.error == ParseError.NONE) & (rec.packet_type == ord("S"))
                                & (kind != ExposureKind.NONE))
        message = Signal(feedback_layout)
        m.d.comb += [
            message.kind.eq(kind), message.session.eq(rec.session),
            message.user_ref_num.eq(rec.user_ref_num), message.orig_user_ref_num.eq(rec.orig_user_ref_num),
            message.quantity.eq(rec.quantity),
            message.price.eq(Mux(rec.price[32:] != 0, 0xFFFF_FFFF, rec.price[:32])),
            message.order_state.eq(rec.order_state), message.match_number.eq(rec.match_number),
            table.i_feedback.valid.eq(parser.o_stream.valid & relevant),
            table.i_feedback.payload.eq(message),
            parser.o_stream.ready.eq(Mux(relevant, table.i_feedback.ready, 1)),
            self.o_record.valid.eq(parser.o_stream.valid & parser.o_stream.ready),
            self.o_record.payload.eq(rec),
        ]
        return m
