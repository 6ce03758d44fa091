"""Market-data path: feed port XGMII in, decoded ITCH records out."""

from amaranth.hdl import Module
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out, connect

from .csr import CsrBank, CsrBusSignature
from .itch import ItchDecoder, record_layout
from .mac import MacRx, XgmiiSignature
from .moldudp64 import MoldUdp64
from .net import NetRx

__all__ = ["MarketDataPath", "MarketDataTop", "MARKET_DATA_STAGES"]

#: The stages of the path, in pipeline order (their register windows keep this order).
MARKET_DATA_STAGES = ("mac_rx", "net_rx", "moldudp64", "itch")


class MarketDataPath(wiring.Component):
    """MAC -> Ethernet/IPv4/UDP filter -> MoldUDP64 -> ITCH decoder.

    The stages' register ports are left to the owner's register bank (``stages``).

    Parameters
    ----------
    rx_buffer_words : int
        Feed MAC store-and-forward buffer (64-bit words).

    Members
    -------
    feed_rx : In(XgmiiSignature)
    o_records : Out(stream.Signature(record_layout))
        One decoded record per delivered message.

    Latency
    -------
    The sum of the stages' (docs/architecture.md).
    """

    def __init__(self, *, rx_buffer_words: int = 512):
        self.rx_buffer_words = rx_buffer_words
        self.mac_rx = MacRx(buffer_words=rx_buffer_words)
        self.net_rx = NetRx()
        self.moldudp64 = MoldUdp64()
        self.itch = ItchDecoder()
        self.stages = {name: getattr(self, name) for name in MARKET_DATA_STAGES}
        super().__init__({
            "feed_rx": In(XgmiiSignature()),
            "o_records": Out(stream.Signature(record_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        for name, stage in self.stages.items():
            m.submodules[name] = stage
        connect(m, wiring.flipped(self.feed_rx), self.mac_rx.xgmii)
        connect(m, self.mac_rx.o_stream, self.net_rx.i_stream)
        connect(m, self.net_rx.o_stream, self.moldudp64.i_stream)
        connect(m, self.moldudp64.o_stream, self.itch.i_stream)
        connect(m, self.itch.o_stream, wiring.flipped(self.o_records))
        return m


class MarketDataTop(wiring.Component):
    """The market-data path alone with its own register bus: the top level of the native replay
    harness and of the line-rate tests.

    Members
    -------
    feed_rx : In(XgmiiSignature)
    o_records : Out(stream.Signature(record_layout))
    csr : In(CsrBusSignature)
    """

    def __init__(self, *, rx_buffer_words: int = 512):
        from .top import Identity
        self.identity = Identity()
        self.path = MarketDataPath(rx_buffer_words=rx_buffer_words)
        self.stages = {"id": self.identity, **self.path.stages}
        self.bank = CsrBank([(name, type(stage).registers) for name, stage in self.stages.items()])
        super().__init__({
            "feed_rx": In(XgmiiSignature()),
            "o_records": Out(stream.Signature(record_layout)),
            "csr": In(CsrBusSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.identity = self.identity
        m.submodules.path = self.path
        m.submodules.csr_bank = self.bank
        connect(m, wiring.flipped(self.csr), self.bank.bus)
        for name, stage in self.stages.items():
            connect(m, getattr(self.bank, name), stage.regs)
        connect(m, wiring.flipped(self.feed_rx), self.path.feed_rx)
        connect(m, self.path.o_records, wiring.flipped(self.o_records))
        return m
