"""Reference model of the skeleton pipeline, written from docs/pipeline-contract.md and the specs.

One class (or function) per stage, each usable alone: ``MacRxModel`` -> ``NetRxModel`` ->
``MoldUdp64Model`` -> ``ItchModel`` -> ``TriggerModel`` -> ``RiskModel`` -> ``OuchModel`` ->
``NetTxModel`` -> ``MacTxModel``. :class:`PipelineModel` chains them and predicts, for each frame
arriving on the feed port, the frames the card sends on the order port, and every ``ro`` counter.
Nothing here is derived from the RTL.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, TypedDict

from tickwire.protocols import itch, moldudp64, soupbintcp
from tickwire.protocols.net import (  # fcs is re-exported
    ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_IPV4, FCS_LENGTH, IP_PROTOCOL_UDP, IPV4,
    IPV4_FLAG_DONT_FRAGMENT, IPV4_FLAG_MORE_FRAGMENTS, IPV4_FRAGMENT_OFFSET_MASK,
    IPV4_HEADER_LENGTH, IPV4_TIME_TO_LIVE, IPV4_VERSION_IHL, MIN_FRAME_LENGTH, MIN_FRAME_LENGTH_WITH_FCS,
    MULTICAST_MAC_GROUP_MASK, MULTICAST_MAC_PREFIX, UDP,
    UDP_HEADER_LENGTH, UDP_PAYLOAD_OFFSET, fcs, ipv4_checksum,
)
from tickwire.protocols.ouch import ENTER_ORDER
from tickwire.protocols.risk import VERDICT_COUNTERS, RejectReason

from .defaults import DEFAULT_REGISTERS

logger = logging.getLogger(__name__)

#: Largest frame mac_rx accepts, FCS included (``max_frame``).
MAX_FRAME = 1536

MAC_RX_COUNTERS = ("mac_rx.frames_ok", "mac_rx.bad_fcs", "mac_rx.runt", "mac_rx.oversize",
                   "mac_rx.overflow")
NET_RX_COUNTERS = ("net_rx.frames_accepted", "net_rx.drop_mac", "net_rx.drop_ethertype",
                   "net_rx.drop_ip_header", "net_rx.drop_checksum", "net_rx.drop_ip_destination",
                   "net_rx.drop_udp_port", "net_rx.drop_length")
MOLDUDP64_COUNTERS = ("moldudp64.messages", "moldudp64.malformed", "moldudp64.truncated",
                      "moldudp64.session_changes", "moldudp64.heartbeats",
                      "moldudp64.end_of_session", "moldudp64.duplicates", "moldudp64.gaps",
                      "moldudp64.last_gap_first", "moldudp64.last_gap_count",
                      "moldudp64.expected_sequence")
ITCH_COUNTERS = ("itch.decoded", "itch.skipped", "itch.unknown_type", "itch.bad_length")
TRIGGER_COUNTERS = ("trigger.fired",)
RISK_COUNTERS = ("risk.accepted", "risk.rejected_kill", "risk.rejected_zero_quantity",
                 "risk.rejected_quantity", "risk.rejected_notional", "risk.last_reject_reason")
OUCH_COUNTERS = ("ouch.orders_sent",)
NET_TX_COUNTERS = ("net_tx.frames_sent",)
MAC_TX_COUNTERS = ("mac_tx.frames_sent",)
#: Every ``ro`` register the model predicts (all but ``id.*``), in pipeline order.
COUNTER_NAMES: tuple[str, ...] = (MAC_RX_COUNTERS + NET_RX_COUNTERS + MOLDUDP64_COUNTERS
                                  + ITCH_COUNTERS + TRIGGER_COUNTERS + RISK_COUNTERS
                                  + OUCH_COUNTERS + NET_TX_COUNTERS + MAC_TX_COUNTERS)



class Record(TypedDict):
    """One decoded order-level ITCH message (contract section "itch")."""

    message_type: str
    stock_locate: int
    tracking_number: int
    timestamp: int
    order_reference_number: int
    new_order_reference_number: int
    buy_sell_indicator: str
    shares: int
    price: int
    stock: str
    match_number: int
    attribution: str
    printable: str


class Intent(TypedDict):
    """An order the trigger wants to send: side 'B'/'S', price(4), quantity, 8-character symbol."""

    side: str
    price: int
    quantity: int
    symbol: str


def with_fcs(frame: bytes) -> bytes:
    """``frame`` followed by its FCS, as it arrives on the wire."""
    return bytes(frame) + fcs(frame)


class RegisterFile(dict):
    """The ``rw`` registers by name: :data:`DEFAULT_REGISTERS` overridden by ``values``.

    Always a copy, so a model never changes the caller's mapping or the defaults; a stage given a
    ``RegisterFile`` shares it (that is how :class:`PipelineModel` wires its stages).
    """

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        super().__init__(DEFAULT_REGISTERS)
        for name, value in (values or {}).items():
            self.write(name, value)

    def write(self, name: str, value: int) -> None:
        if name not in DEFAULT_REGISTERS:
            raise KeyError(f"no rw register {name!r}; known: {sorted(DEFAULT_REGISTERS)}")
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"register {name}: value must be a non-negative int, not {value!r}")
        self[name] = value

    @classmethod
    def of(cls, registers: Mapping[str, int] | None) -> RegisterFile:
        return registers if isinstance(registers, RegisterFile) else cls(registers)


class _Stage:
    COUNTERS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)

    def _count(self, name: str) -> None:
        self.counters[name] += 1


class MacRxModel(_Stage):
    """Feed-port MAC receive: length and FCS checks, FCS stripped.

    Checks, first failure wins: runt (< 64 bytes with FCS), oversize (> ``max_frame``), then an
    /E/ inside the frame or a bad FCS (both ``mac_rx.bad_fcs``). ``mac_rx.overflow`` depends on
    timing and buffer depth and stays 0 here.
    """

    COUNTERS = MAC_RX_COUNTERS

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        if max_frame < MIN_FRAME_LENGTH_WITH_FCS:
            raise ValueError(f"max_frame must be at least {MIN_FRAME_LENGTH_WITH_FCS}, not {max_frame!r}")
        self.max_frame = max_frame
        super().__init__()

    def process(self, frame_with_fcs: bytes, *, error: bool = False) -> bytes | None:
        """The frame without FCS, or None when dropped. ``error``: an /E/ was inside the frame."""
        n = len(frame_with_fcs)
        if error:
            # An /E/ marks the frame corrupt whatever length it reached (contract: bad_fcs).
            self._count("mac_rx.bad_fcs")
        elif n < MIN_FRAME_LENGTH_WITH_FCS:
            self._count("mac_rx.runt")
        elif n > self.max_frame:
            self._count("mac_rx.oversize")
        elif fcs(frame_with_fcs[:-FCS_LENGTH]) != frame_with_fcs[-FCS_LENGTH:]:
            self._count("mac_rx.bad_fcs")
        else:
            self._count("mac_rx.frames_ok")
            return bytes(frame_with_fcs[:-FCS_LENGTH])
        logger.debug("mac_rx: dropped %d-byte frame (error=%s)", n, error)
        return None


class NetRxModel(_Stage):
    """Ethernet/IPv4/UDP receive filter (contract section "net_rx"): payload or None."""

    COUNTERS = NET_RX_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def _drop(self, reason: str, frame: bytes) -> None:
        self._count(f"net_rx.drop_{reason}")
        logger.debug("net_rx: drop_%s %s", reason, frame[:UDP_PAYLOAD_OFFSET].hex())

    def process(self, frame: bytes) -> bytes | None:
        regs = self.registers
        # Frames after mac_rx are >= 60 bytes; a shorter one (stage tested alone) reads as zeros.
        head = bytes(frame[:UDP_PAYLOAD_OFFSET]).ljust(UDP_PAYLOAD_OFFSET, b"\x00")
        eth = ETHERNET.unpack(head)
        ip_bytes = head[ETHERNET_HEADER_LENGTH:ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH]
        ip = IPV4.unpack(ip_bytes)
        udp = UDP.unpack(head[ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH:])
        group = regs["net_rx.multicast_group"]
        if eth["destination_address"] not in (regs["net_rx.mac_address"], _multicast_mac_of(group)):
            self._drop("mac", frame)
        elif eth["ethertype"] != ETHERTYPE_IPV4:
            self._drop("ethertype", frame)
        elif (ip["version_ihl"] != IPV4_VERSION_IHL
              or ip["flags_fragment_offset"] & (IPV4_FLAG_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK)
              or ip["protocol"] != IP_PROTOCOL_UDP):
            self._drop("ip_header", frame)
        elif ipv4_checksum(ip_bytes) != 0:
            self._drop("checksum", frame)
        elif ip["destination_address"] != group:
            self._drop("ip_destination", frame)
        elif udp["destination_port"] != regs["net_rx.udp_port"]:
            self._drop("udp_port", frame)
        elif not (IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH <= ip["total_length"]
                  and ETHERNET_HEADER_LENGTH + ip["total_length"] <= len(frame)
                  and udp["length"] == ip["total_length"] - IPV4_HEADER_LENGTH):
            self._drop("length", frame)
        else:
            self._count("net_rx.frames_accepted")
            return bytes(frame[UDP_PAYLOAD_OFFSET:UDP_PAYLOAD_OFFSET + udp["length"] - UDP_HEADER_LENGTH])
        return None


def _multicast_mac_of(group: int) -> int:
    """01:00:5e + the low 23 bits, whatever ``group`` holds (the register is not validated)."""
    return MULTICAST_MAC_PREFIX | (group & MULTICAST_MAC_GROUP_MASK)


class MoldUdp64Model(_Stage):
    """MoldUDP64 session and sequence tracking (contract section "moldudp64").

    The first datagram's session is adopted with expected := its sequence number and no
    ``session_changes``; before that ``moldudp64.expected_sequence`` reads 0.
    """

    COUNTERS = MOLDUDP64_COUNTERS

    def __init__(self) -> None:
        super().__init__()
        self.session: bytes | None = None

    @property
    def expected(self) -> int:
        return self.counters["moldudp64.expected_sequence"]

    @expected.setter
    def expected(self, value: int) -> None:
        self.counters["moldudp64.expected_sequence"] = value & (1 << 64) - 1

    def _gap(self, sequence: int) -> None:
        self._count("moldudp64.gaps")
        self.counters["moldudp64.last_gap_first"] = self.expected
        self.counters["moldudp64.last_gap_count"] = sequence - self.expected
        logger.info("moldudp64: session %r gap: expected %d, got %d (%d missing)",
                    self.session, self.expected, sequence, sequence - self.expected)

    def process(self, payload: bytes) -> list[tuple[int, bytes]]:
        """The ``(sequence_number, message)`` pairs this datagram delivers, in order."""
        if len(payload) < moldudp64.HEADER_LENGTH:
            self._count("moldudp64.malformed")
            return []
        header = moldudp64.HEADER.unpack(payload)
        session = bytes(payload[:10])
        sequence, count = header["sequence_number"], header["message_count"]
        if self.session is None:
            self.session, self.expected = session, sequence
        elif session != self.session:
            logger.info("moldudp64: session %r -> %r at sequence %d", self.session, session, sequence)
            self._count("moldudp64.session_changes")
            self.session, self.expected = session, sequence
        if count == moldudp64.HEARTBEAT_COUNT:
            self._count("moldudp64.heartbeats")
            if sequence > self.expected:
                self._gap(sequence)
                self.expected = sequence
            return []
        if count == moldudp64.END_OF_SESSION_COUNT:
            self._count("moldudp64.end_of_session")
            return []
        delivered: list[tuple[int, bytes]] = []
        pos = moldudp64.HEADER_LENGTH
        for i in range(count):
            if pos + moldudp64.BLOCK_LENGTH_WIDTH > len(payload):
                self._count("moldudp64.truncated")  # fewer blocks than the count
                break
            length = int.from_bytes(payload[pos:pos + moldudp64.BLOCK_LENGTH_WIDTH], "big")
            if length < itch.MIN_LENGTH:
                self._count("moldudp64.malformed")
                break
            end = pos + moldudp64.BLOCK_LENGTH_WIDTH + length
            if end > len(payload):
                self._count("moldudp64.truncated")
                break
            message = bytes(payload[pos + moldudp64.BLOCK_LENGTH_WIDTH:end])
            pos = end
            message_sequence = sequence + i
            if message_sequence < self.expected:
                self._count("moldudp64.duplicates")
                continue
            if message_sequence > self.expected:
                self._gap(message_sequence)
            self.expected = message_sequence + 1
            self._count("moldudp64.messages")
            delivered.append((message_sequence, message))
        return delivered


def itch_outcome(message: bytes) -> str:
    """What the itch stage does with ``message``: the suffix of the counter it bumps
    (``decoded``, ``skipped``, ``unknown_type`` or ``bad_length``)."""
    type_ = chr(message[0]) if message else ""
    if type_ not in itch.MESSAGES:
        return "unknown_type"
    if len(message) != itch.LENGTHS[type_]:
        return "bad_length"
    return "decoded" if type_ in itch.ORDER_TYPES else "skipped"


def itch_decode(message: bytes) -> Record | None:
    """The record of an order-level message (A F E C X D U, right length), else None."""
    if itch_outcome(message) != "decoded":
        return None
    type_ = chr(message[0])
    fields = itch.MESSAGES[type_].unpack(message)
    record: dict[str, Any] = {
        "message_type": type_, "stock_locate": fields["stock_locate"],
        "tracking_number": fields["tracking_number"], "timestamp": fields["timestamp"],
        "order_reference_number": 0, "new_order_reference_number": 0,
        "buy_sell_indicator": " ", "shares": 0, "price": 0, "stock": " " * 8, "match_number": 0,
        "attribution": " " * 4, "printable": " ",
    }
    for name, sources in itch.RECORD_SOURCES.items():
        if type_ in sources:
            record[name] = fields[sources[type_]]
    return Record(**record)  # type: ignore[typeddict-item]


class ItchModel(_Stage):
    """ITCH 5.0 framing and decode (contract section "itch")."""

    COUNTERS = ITCH_COUNTERS

    def process(self, message: bytes) -> Record | None:
        outcome = itch_outcome(message)
        self._count(f"itch.{outcome}")
        if outcome in ("unknown_type", "bad_length"):
            logger.debug("itch: %s %s", outcome, message.hex())
        return itch_decode(message)


class TriggerModel(_Stage):
    """The one-rule trigger (contract section "trigger"): an intent or None."""

    COUNTERS = TRIGGER_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def process(self, record: Record) -> Intent | None:
        regs = self.registers
        if (not regs["trigger.enable"] or record["message_type"] not in ("A", "F")
                or record["stock_locate"] != regs["trigger.stock_locate"]):
            return None
        side, limit = regs["trigger.side"], regs["trigger.price_limit"]
        if side == ord("B"):
            fires = record["buy_sell_indicator"] == "S" and record["price"] <= limit
        elif side == ord("S"):
            fires = record["buy_sell_indicator"] == "B" and record["price"] >= limit
        else:
            fires = False
        if not fires:
            return None
        self._count("trigger.fired")
        return Intent(side=chr(side), price=record["price"],
                      quantity=min(regs["trigger.quantity"], record["shares"]),
                      symbol=record["stock"])


class RiskModel(_Stage):
    """Pre-trade risk checks in priority order (contract section "risk")."""

    COUNTERS = RISK_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def check(self, intent: Intent) -> RejectReason:
        """The first failing check's reason, or ``RejectReason.NONE``; no counters change."""
        regs = self.registers
        if regs["risk.kill"]:
            return RejectReason.KILL
        if intent["quantity"] == 0:
            return RejectReason.ZERO_QUANTITY
        if intent["quantity"] > regs["risk.max_order_quantity"]:
            return RejectReason.MAX_QUANTITY
        if intent["quantity"] * intent["price"] > regs["risk.max_order_notional"]:
            return RejectReason.MAX_NOTIONAL
        return RejectReason.NONE

    def process(self, intent: Intent) -> tuple[bool, RejectReason]:
        reason = self.check(intent)
        self._count("risk." + VERDICT_COUNTERS[reason])
        if reason is RejectReason.NONE:
            return True, reason
        self.counters["risk.last_reject_reason"] = int(reason)
        logger.debug("risk: rejected %s: %s", intent, reason.name)
        return False, reason


def cl_ord_id(prefix: int, user_ref_num: int) -> str:
    """The 14-character ClOrdID: 4 ASCII bytes of ``prefix`` (most significant first), the
    user_ref_num as 8 upper-case hex digits, 2 spaces."""
    return prefix.to_bytes(4, "big").decode("ascii", errors="replace") + f"{user_ref_num:08X}  "


def enter_order(intent: Intent, user_ref_num: int, registers: Mapping[str, int]) -> bytes:
    """The 47-byte OUCH 5.0 Enter Order message for ``intent``."""
    return ENTER_ORDER.pack(
        user_ref_num=user_ref_num, side=intent["side"], quantity=intent["quantity"],
        symbol=intent["symbol"], price=intent["price"],
        time_in_force=chr(registers["ouch.time_in_force"]), display=chr(registers["ouch.display"]),
        capacity=chr(registers["ouch.capacity"]),
        intermarket_sweep_eligibility=chr(registers["ouch.intermarket_sweep_eligibility"]),
        cross_type=chr(registers["ouch.cross_type"]),
        cl_ord_id=cl_ord_id(registers["ouch.cl_ord_id_prefix"], user_ref_num), appendage_length=0)


def ouch_encode(intent: Intent, user_ref_num: int, registers: Mapping[str, int]) -> bytes:
    """The 50-byte SoupBinTCP Unsequenced Data packet carrying :func:`enter_order`."""
    return soupbintcp.frame("U", enter_order(intent, user_ref_num, registers))


class OuchModel(_Stage):
    """OUCH Enter Order encoder; takes ``ouch.next_user_ref_num`` and increments it."""

    COUNTERS = OUCH_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def process(self, intent: Intent) -> bytes:
        user_ref_num = self.registers["ouch.next_user_ref_num"]
        self.registers["ouch.next_user_ref_num"] = (user_ref_num + 1) & 0xFFFFFFFF
        self._count("ouch.orders_sent")
        return ouch_encode(intent, user_ref_num, self.registers)


class NetTxModel(_Stage):
    """Order-port Ethernet/IPv4/UDP framing (contract section "net_tx"); frames without padding."""

    COUNTERS = NET_TX_COUNTERS

    def __init__(self, registers: Mapping[str, int] | None = None) -> None:
        self.registers = RegisterFile.of(registers)
        super().__init__()

    def process(self, payload: bytes) -> bytes:
        regs = self.registers
        identification = self.counters["net_tx.frames_sent"] & 0xFFFF
        ip = dict(version_ihl=IPV4_VERSION_IHL, type_of_service=0,
                  total_length=IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH + len(payload),
                  identification=identification, flags_fragment_offset=IPV4_FLAG_DONT_FRAGMENT,
                  time_to_live=IPV4_TIME_TO_LIVE, protocol=IP_PROTOCOL_UDP,
                  source_address=regs["net_tx.src_ip"], destination_address=regs["net_tx.dst_ip"])
        frame = (ETHERNET.pack(destination_address=regs["net_tx.dst_mac"],
                               source_address=regs["net_tx.src_mac"], ethertype=ETHERTYPE_IPV4)
                 + IPV4.pack(**ip, header_checksum=ipv4_checksum(IPV4.pack(**ip)))
                 + UDP.pack(source_port=regs["net_tx.src_port"], destination_port=regs["net_tx.dst_port"],
                            length=UDP_HEADER_LENGTH + len(payload), checksum=0)
                 + payload)
        self._count("net_tx.frames_sent")
        return frame


class MacTxModel(_Stage):
    """Order-port MAC transmit: zero padding to 60 bytes; :meth:`wire` also appends the FCS."""

    COUNTERS = MAC_TX_COUNTERS

    def process(self, frame: bytes) -> bytes:
        self._count("mac_tx.frames_sent")
        return bytes(frame).ljust(MIN_FRAME_LENGTH, b"\x00")

    @staticmethod
    def wire(frame: bytes) -> bytes:
        """Padded frame + FCS, the bytes between SFD and /T/."""
        return with_fcs(bytes(frame).ljust(MIN_FRAME_LENGTH, b"\x00"))


class PipelineModel:
    """The whole skeleton pipeline: feed-port frames in, order-port frames out.

    Parameters
    ----------
    registers
        ``rw`` register values by name; missing ones take :data:`DEFAULT_REGISTERS`. The model
        keeps its own copy (:attr:`registers`), which ``ouch.next_user_ref_num`` counts up in;
        change a register between frames with ``model.registers.write(name, value)``.
    """

    def __init__(self, registers: Mapping[str, int] | None = None, *, max_frame: int = MAX_FRAME) -> None:
        self.registers = RegisterFile(registers)
        self.mac_rx = MacRxModel(max_frame=max_frame)
        self.net_rx = NetRxModel(self.registers)
        self.moldudp64 = MoldUdp64Model()
        self.itch = ItchModel()
        self.trigger = TriggerModel(self.registers)
        self.risk = RiskModel(self.registers)
        self.ouch = OuchModel(self.registers)
        self.net_tx = NetTxModel(self.registers)
        self.mac_tx = MacTxModel()
        self._stages = (self.mac_rx, self.net_rx, self.moldudp64, self.itch, self.trigger,
                        self.risk, self.ouch, self.net_tx, self.mac_tx)

    def feed(self, frame_with_fcs: bytes, *, error: bool = False) -> list[bytes]:
        """Process one feed-port frame (FCS included; ``error``: it carried an /E/) and return
        the order-port frames (padded, without FCS) it causes, in order."""
        frame = self.mac_rx.process(frame_with_fcs, error=error)
        payload = self.net_rx.process(frame) if frame is not None else None
        if payload is None:
            return []
        out: list[bytes] = []
        for sequence, message in self.moldudp64.process(payload):
            record = self.itch.process(message)
            intent = self.trigger.process(record) if record is not None else None
            if intent is None:
                continue
            accepted, reason = self.risk.process(intent)
            if not accepted:
                continue
            packet = self.ouch.process(intent)
            logger.debug("order for sequence %d: %s", sequence, packet.hex())
            out.append(self.mac_tx.process(self.net_tx.process(packet)))
        return out

    def feed_all(self, frames_with_fcs: Iterable[bytes]) -> list[bytes]:
        """:meth:`feed` each frame; all order-port frames in order."""
        return [out for frame in frames_with_fcs for out in self.feed(frame)]

    @property
    def counters(self) -> dict[str, int]:
        """Every ``ro`` register of the contract except ``id.*``, by name."""
        merged: dict[str, int] = {}
        for stage in self._stages:
            merged.update(stage.counters)
        return {name: merged[name] for name in COUNTER_NAMES}
