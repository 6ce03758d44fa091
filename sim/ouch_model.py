"""Reference pieces for the OUCH gateware, written from :mod:`tickwire.protocols.ouch` and
:mod:`tickwire.protocols.soupbintcp`, not from the gateware: the bytes the encoder must send for
an order record, random exchange traffic (well-formed and malformed SoupBinTCP packets), and
what the inbound parser must report for it. Shared by the Amaranth tests and the cocotb benches."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..hdl.order import APPENDAGE_FIELDS
from ..hdl.ouch_inbound import OuchParser, SOUP_RECORD_NAMES, counter_name, record_layout
from ..protocols import ouch, soupbintcp
from ..protocols.ouch import ParseError

__all__ = ["ENCODER_ACTIONS", "present_appendages", "expected_packet", "random_message",
           "random_appendages", "random_packet", "raw_packet", "split_beats", "aligned_beats",
           "ParserModel"]

#: Order actions the encoder sends.
ENCODER_ACTIONS = "OUXM"


def present_appendages(record: dict[str, int]) -> list[str]:
    """The appendages an order record's ``appendage_mask`` says are present, in mask order."""
    return [name for k, name in enumerate(APPENDAGE_FIELDS) if record["appendage_mask"] >> k & 1]


def expected_packet(record: dict[str, int]) -> bytes | None:
    """The SoupBinTCP packet the encoder must send for an order record, or None for an action
    it drops."""
    if chr(record["action"]) not in ENCODER_ACTIONS:
        return None
    return soupbintcp.frame("U", ouch.pack_order(record, present_appendages(record)))


# -- exchange traffic -------------------------------------------------------------------------

_PRINTABLE = bytes(range(0x20, 0x7F))


def _value(rng: random.Random, f) -> object:
    if f.type == "alpha":
        return bytes(rng.choice(_PRINTABLE) for _ in range(f.width))
    if f.type in ("signed", "signed_price4"):
        return rng.randrange(-(1 << 8 * f.width - 1), 1 << 8 * f.width - 1)
    top = (1 << 8 * f.width) - 1
    return rng.choice([0, 1, top, rng.randrange(top + 1), rng.randrange(1 << 32) if f.width > 4 else 7])


def random_appendages(rng: random.Random) -> list[tuple[str, object]]:
    tags = rng.sample(sorted(ouch.APPENDAGE_TAGS), rng.choice([0, 0, 1, 2, 5]))
    return [(ouch.APPENDAGE_TAGS[t].name, _value(rng, ouch.APPENDAGE_TAGS[t].field)) for t in tags]


def random_message(rng: random.Random, type_: str) -> bytes:
    """A well-formed OUCH outbound message of ``type_`` with random fields and appendages."""
    m = ouch.OUTBOUND[type_]
    values = {f.name: _value(rng, f) for f in m.fields if f.name not in ("message_type", "appendage_length")}
    appendages = random_appendages(rng) if type_ in ouch.WITH_APPENDAGE_OUT else []
    return ouch.pack_message(ouch.OUTBOUND, type_, appendages, **values)


def raw_packet(packet_type: bytes, payload: bytes) -> bytes:
    return (len(packet_type) + len(payload)).to_bytes(2, "big") + packet_type + payload


def random_packet(rng: random.Random, malformed: float = 0.2) -> tuple[str, bytes]:
    """(what, SoupBinTCP packet bytes): mostly well-formed, ``malformed`` of them broken."""
    if rng.random() < malformed:
        kind = rng.choice(["zero_length", "packet_type", "message_type", "empty_data", "truncated",
                           "too_long", "appendage_length", "heartbeat_length", "login_length"])
        t = rng.choice(sorted(ouch.OUTBOUND))
        message = random_message(rng, t)
        m = ouch.OUTBOUND[t]
        if kind == "zero_length":
            return kind, b"\x00\x00"
        if kind == "packet_type":
            return kind, raw_packet(bytes([rng.choice(b"ULROQx\x00\xff")]), message[:rng.randrange(len(message) + 1)])
        if kind == "message_type":
            return kind, raw_packet(b"S", bytes([rng.choice(b"OXZz0\x00\xff")]) + message[1:])
        if kind == "empty_data":
            return kind, raw_packet(b"S", b"")
        if kind == "truncated":
            return kind, raw_packet(b"S", message[:rng.randrange(1, m.length)])
        if kind == "too_long":
            if t in ouch.WITH_APPENDAGE_OUT:  # bytes past the declared appendages
                return kind, raw_packet(b"S", message + bytes(rng.randrange(1, 12)))
            return kind, raw_packet(b"S", message + bytes(rng.randrange(1, 120)))
        if kind == "appendage_length":
            t = rng.choice(sorted(ouch.WITH_APPENDAGE_OUT))
            message = bytearray(random_message(rng, t))
            f = ouch.OUTBOUND[t]["appendage_length"]
            declared = int.from_bytes(message[f.offset:f.end], "big")
            wrong = rng.choice([declared + 1, declared - 1 if declared else 3, 0xFFFF, declared + 100])
            message[f.offset:f.end] = wrong.to_bytes(2, "big")
            return kind, raw_packet(b"S", bytes(message))
        if kind == "heartbeat_length":
            return kind, raw_packet(rng.choice([b"H", b"Z"]), bytes(rng.randrange(1, 5)))
        return kind, raw_packet(rng.choice([b"A", b"J"]), bytes(rng.choice([0, 2, 29, 31, 40])))
    kind = rng.choice(["data"] * 12 + ["heartbeat", "end", "debug", "login", "reject"])
    if kind == "data":
        return kind, soupbintcp.frame("S", random_message(rng, rng.choice(sorted(ouch.OUTBOUND))))
    if kind == "heartbeat":
        return kind, soupbintcp.frame("H")
    if kind == "end":
        return kind, soupbintcp.frame("Z")
    if kind == "debug":
        n = rng.choice([0, 1, 7, 40, 200])
        return kind, soupbintcp.frame("+", bytes(rng.choice(_PRINTABLE) for _ in range(n)))
    if kind == "login":
        payload = soupbintcp.SERVER["A"].pack(session=f"S{rng.randrange(10**6):06d}",
                                              sequence_number=f"{rng.randrange(1, 10**9):>20}")
        return kind, soupbintcp.frame("A", payload)
    return kind, soupbintcp.frame("J", rng.choice([b"A", b"S"]))


def split_beats(rng: random.Random, data: bytes, *, empty: float = 0.05) -> list[dict[str, int]]:
    """The bytes as packet-stream beats of random size (1..8 bytes, now and then 0)."""
    beats = []
    pos = 0
    while pos < len(data):
        n = 0 if rng.random() < empty else rng.choice([8, 8, 8, rng.randint(1, 8)])
        chunk = data[pos:pos + n]
        pos += len(chunk)
        beats.append({"data": int.from_bytes(chunk, "little"), "nbytes": len(chunk), "last": 0, "length": 0})
    return beats


def aligned_beats(packets: list[bytes]) -> tuple[list[dict[str, int]], list[int]]:
    """Each packet from lane 0 of a fresh beat; returns the beats and each packet's last beat."""
    beats, ends = [], []
    for packet in packets:
        for pos in range(0, len(packet), 8):
            chunk = packet[pos:pos + 8]
            beats.append({"data": int.from_bytes(chunk, "little"), "nbytes": len(chunk),
                          "last": int(pos + 8 >= len(packet)), "length": len(packet)})
        ends.append(len(beats) - 1)
    return beats, ends


# -- reference model ------------------------------------------------------------------------


def _decode(f, data: bytes, start: int) -> int:
    raw = data[start + f.offset:start + f.end].ljust(f.width, b"\x00")
    return int.from_bytes(raw, "little" if f.type == "alpha" else "big")


@dataclass
class ParserModel:
    """What :class:`~tickwire.hdl.ouch_inbound.OuchParser` reports for a stream of packets."""

    session: int = 0
    records: list[dict[str, int]] = field(default_factory=list)
    exposures: list[dict[str, int]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    sequence_count: int = 0

    def __post_init__(self) -> None:
        self.counters = {reg.name: 0 for reg in OuchParser.registers}

    def packet(self, packet: bytes) -> dict[str, int]:
        length = int.from_bytes(packet[:2], "big")
        if len(packet) != 2 + length:
            raise ValueError(f"packet of {len(packet)} bytes has SoupBinTCP length {length}")
        record = {name: 0 for name, _ in record_layout}
        payload = packet[3:]
        ptype = chr(packet[2]) if length else ""
        error = ParseError.PACKET_LENGTH if not length else ouch.check_server_packet(ptype, payload)
        mtype = chr(payload[0]) if ptype == "S" and payload else ""
        if ptype == "S":
            self.sequence_count += 1
        record.update(packet_type=packet[2] if length else 0, message_type=ord(mtype) if mtype else 0,
                      error=int(error), session=self.session, sequence_count=self.sequence_count)
        if ptype == "A" and error == ParseError.NONE:
            self.sequence_count = 0
        if ptype in soupbintcp.SERVER:
            for f in soupbintcp.SERVER[ptype].fields:
                record[SOUP_RECORD_NAMES[f.name]] = _decode(f, payload, 0)
        if mtype in ouch.OUTBOUND:
            for f in ouch.OUTBOUND[mtype].fields[1:]:
                record[ouch.RECORD_ALIASES.get((mtype, f.name), f.name)] = _decode(f, payload, 0)
        if error != ParseError.NONE:
            self.counters[f"error_{error.name.lower()}"] += 1
        elif ptype == "S":
            self.counters[counter_name(ouch.OUTBOUND[mtype].name)] += 1
            if mtype in ouch.EXPOSURE_KINDS:
                price = record.get("price", 0) if "price" in _fields(mtype) else 0
                self.exposures.append({
                    "kind": int(ouch.EXPOSURE_KINDS[mtype]), "session": self.session,
                    "user_ref_num": record["user_ref_num"],
                    "orig_user_ref_num": record["orig_user_ref_num"] if "orig_user_ref_num" in _fields(mtype) else 0,
                    "quantity": record["quantity"] if "quantity" in _fields(mtype) else 0,
                    "price": min(price, 0xFFFFFFFF)})
                self.counters["exposure_updates"] += 1
                self.counters["price_saturated"] += price > 0xFFFFFFFF
        else:
            self.counters[counter_name(soupbintcp.SERVER[ptype].name)] += 1
        self.records.append(record)
        return record


def _fields(mtype: str) -> set[str]:
    return {ouch.RECORD_ALIASES.get((mtype, f.name), f.name) for f in ouch.OUTBOUND[mtype].fields}
