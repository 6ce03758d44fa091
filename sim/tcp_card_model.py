"""Frame-level reference model of the card's TCP engine (docs/tcp.md, ``tickwire.hdl.tcp.TcpEngine``).

The model is written from docs/tcp.md alone, independently of the gateware, so the two can be
compared. It has no timing: every input is handled at once and everything the engine may send
is sent eagerly (in session order) before the call returns. Inputs mirror the engine's ports:

* :meth:`TcpCardModel.append` for ``i_data`` (``source="data"``) and ``i_host_data``
  (``source="host"``): one whole SoupBinTCP packet for a session;
* :meth:`TcpCardModel.rx` for ``i_rx``: one received frame (FCS removed, padding kept);
* :meth:`TcpCardModel.send_frame` for ``i_host_frame``: a raw frame sent as it is;
* :meth:`TcpCardModel.write` / :meth:`TcpCardModel.read`: the ``tcp`` register window by name,
  with the ``session`` select register, as the host sees it.

Outputs accumulate in :attr:`TcpCardModel.tx` (``o_tx``), :attr:`TcpCardModel.host_frames`
(``o_host_frame``) and :attr:`TcpCardModel.payload` (``o_payload``: ``(session, bytes)``);
:meth:`TcpCardModel.take` empties them. :class:`ModelCardPort` adapts the model to
:class:`tickwire.host.tcp_session.TcpCardPort`.

Choices where docs/tcp.md leaves room (each is listed in the module's tests):

* a packet occupies ``ceil(length / 8)`` words of its session's buffer;
* checksums are checked (and bad ones dropped) for every IPv4 frame with IHL 5 whose header is
  complete, before addresses are compared; the TCP checksum for every such TCP, unfragmented
  frame whose total length fits the frame; frames too short or inconsistent are punted;
* a packet longer than the session's whole buffer is dropped as oversize (it could never fit);
* counters are card-wide; ``tx_segments`` counts every data segment sent, retransmissions
  included, ``tx_retransmits`` the retransmitted ones, ``tx_acks`` pure ACKs and probes;
* ``send_ack`` and ``probe`` send whatever the session's state, ``retransmit`` rewinds SND.NXT
  but data leaves only while the session is ``established``;
* the IPv4 identification counter starts at 0 and is not reset by a ``snd_nxt`` write.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from tickwire.protocols.net import (ETHERNET, ETHERNET_HEADER_LENGTH, ETHERTYPE_IPV4, IP_PROTOCOL_TCP,
                                    IPV4, IPV4_FLAG_MORE_FRAGMENTS,
                                    IPV4_FRAGMENT_OFFSET_MASK, IPV4_HEADER_LENGTH, IPV4_VERSION_IHL, TCP, TCP_ACK, TCP_DATA_OFFSET_NO_OPTIONS,
                                    TCP_HEADER_LENGTH, TCP_HEADER_OFFSET, TCP_PSH, ipv4_checksum,
                                    tcp_checksum, tcp_frame)

__all__ = ["TcpCardModel", "ModelCardPort", "TcpModelError", "REGISTERS", "COUNTERS", "COMMANDS",
           "PER_SESSION", "CARD_WIDE", "segment_frame"]

logger = logging.getLogger(__name__)

MOD = 1 << 32
MASK32 = MOD - 1
WORD_BYTES = 8

#: Card-wide registers: name -> (width, access, reset).
CARD_WIDE: dict[str, tuple[int, str, int]] = {
    "local_mac": (48, "rw", 0), "local_ip": (32, "rw", 0), "rcv_window": (16, "rw", 65535),
    "session": (8, "rw", 0)}
#: Registers of the session selected by ``session``: name -> (width, access, reset).
PER_SESSION: dict[str, tuple[int, str, int]] = {
    "peer_mac": (48, "rw", 0), "peer_ip": (32, "rw", 0), "local_port": (16, "rw", 0),
    "peer_port": (16, "rw", 0), "mss": (16, "rw", 0), "snd_nxt": (32, "rw", 0),
    "rcv_nxt": (32, "rw", 0), "peer_window": (16, "rw", 0), "established": (1, "rw", 0),
    "snd_una": (32, "ro", 0), "snd_max": (32, "ro", 0), "queued": (32, "ro", 0)}
#: Command registers: writing the session number acts on that session.
COMMANDS = ("retransmit", "send_ack", "probe")
#: Saturating 32-bit counters (read-only, card-wide).
COUNTERS = ("tx_segments", "tx_retransmits", "tx_acks", "tx_closed_drops", "tx_oversize_drops",
            "rx_segments", "rx_bad_checksum", "rx_punted")
REGISTERS = tuple(CARD_WIDE) + tuple(PER_SESSION) + COMMANDS + COUNTERS


class TcpModelError(ValueError):
    """Bad input to the model: an unknown register, a value that does not fit, a bad session."""


def _diff(a: int, b: int) -> int:
    """``a - b`` in 32-bit wrap-around arithmetic (0 .. 2**32 - 1)."""
    return (a - b) & MASK32


@dataclass
class _Descriptor:
    seq: int
    data: bytes
    words: int


@dataclass
class _Session:
    index: int
    peer_mac: int = 0
    peer_ip: int = 0
    local_port: int = 0
    peer_port: int = 0
    mss: int = 0
    rcv_nxt: int = 0
    peer_window: int = 0
    established: int = 0
    snd_una: int = 0
    snd_nxt: int = 0
    snd_max: int = 0
    #: Sequence number after the last appended byte.
    snd_end: int = 0
    identification: int = 0
    descriptors: deque[_Descriptor] = field(default_factory=deque)
    words_used: int = 0
    ack_pending: bool = False

    def reset_stream(self, iss_plus_one: int) -> None:
        self.snd_una = self.snd_nxt = self.snd_max = self.snd_end = iss_plus_one
        self.descriptors.clear()
        self.words_used = 0
        self.ack_pending = False


def packet_words(length: int) -> int:
    """Retransmit-buffer words a packet of ``length`` bytes takes: it is stored from byte lane 6,
    where a segment's payload starts in its seventh word (docs/tcp.md)."""
    return (length + 6 + WORD_BYTES - 1) // WORD_BYTES


def segment_frame(*, local_mac: int, peer_mac: int, local_ip: int, peer_ip: int, local_port: int,
                  peer_port: int, seq: int, ack: int, flags: int, window: int, identification: int,
                  payload: bytes = b"", options: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP frame as the card (and the host, for its own segments) builds it: no IP
    options, DF, TTL 64, both checksums; ``options`` (a multiple of 4 bytes) only for the host's SYN."""
    if len(options) % 4:
        raise TcpModelError(f"TCP options must be a multiple of 4 bytes, not {len(options)}")
    return tcp_frame(source_mac=local_mac, destination_mac=peer_mac, source_ip=local_ip,
                     destination_ip=peer_ip, source_port=local_port, destination_port=peer_port,
                     seq=seq, ack=ack, flags=flags, window=window, identification=identification,
                     payload=payload, options=options)


class TcpCardModel:
    """The card's TCP engine at frame level (see the module docstring and docs/tcp.md).

    Parameters
    ----------
    sessions
        Number of sessions (default 4).
    buffer_words
        64-bit words of retransmit buffer per session (default 512 = 4 KiB).
    descriptors
        Packets kept per session (default 32).
    """

    def __init__(self, *, sessions: int = 4, buffer_words: int = 512, descriptors: int = 32) -> None:
        for name, value in (("sessions", sessions), ("buffer_words", buffer_words),
                            ("descriptors", descriptors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TcpModelError(f"{name} must be a positive integer, not {value!r}")
        if sessions > 256:
            raise TcpModelError(f"sessions must be at most 256 (8-bit select), not {sessions}")
        self.sessions = sessions
        self.buffer_words = buffer_words
        self.descriptor_count = descriptors
        self._card = {name: reset for name, (_, _, reset) in CARD_WIDE.items()}
        self._sessions = [_Session(i) for i in range(sessions)]
        self.counters = {name: 0 for name in COUNTERS}
        #: Packets waiting at ``i_data`` / ``i_host_data`` (the input stalls): (session, packet).
        self._waiting: dict[str, deque[tuple[int, bytes]]] = {"data": deque(), "host": deque()}
        #: Outputs: ``o_tx`` frames, ``o_host_frame`` frames, ``o_payload`` (session, bytes).
        self.tx: list[bytes] = []
        self.host_frames: list[bytes] = []
        self.payload: list[tuple[int, bytes]] = []

    # -- registers ---------------------------------------------------------------------------------

    def _selected(self) -> _Session:
        return self._sessions[self._card["session"]]

    def _session(self, session: int) -> _Session:
        if isinstance(session, bool) or not isinstance(session, int) or not 0 <= session < self.sessions:
            raise TcpModelError(f"session must be 0..{self.sessions - 1}, not {session!r}")
        return self._sessions[session]

    def read(self, name: str) -> int:
        """The value of register ``name`` (``"snd_una"`` or ``"tcp.snd_una"``); per-session
        registers read the session selected by ``session``."""
        name = self._name(name)
        if name in CARD_WIDE:
            return self._card[name]
        if name in COUNTERS:
            return self.counters[name]
        if name in COMMANDS:
            return 0
        s = self._selected()
        if name == "snd_nxt":
            return s.snd_nxt
        if name == "queued":
            return _diff(s.snd_end, s.snd_una)
        return getattr(s, name)

    def write(self, name: str, value: int) -> None:
        """Write register ``name``; a command register takes the session number it acts on."""
        name = self._name(name)
        if name in COUNTERS or (name in PER_SESSION and PER_SESSION[name][1] == "ro"):
            raise TcpModelError(f"register tcp.{name} is read-only")
        if name in COMMANDS:
            s = self._session(value)
            if s.established:          # commands act on established sessions only (docs/tcp.md)
                getattr(self, f"_command_{name}")(s)
            self._service()
            return
        width = (CARD_WIDE.get(name) or PER_SESSION[name])[0]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << width:
            raise TcpModelError(f"register tcp.{name}: {value!r} does not fit {width} bits")
        if name == "session":
            self._session(value)
            self._card[name] = value
        elif name in CARD_WIDE:
            self._card[name] = value
        elif name == "snd_nxt":
            self._selected().reset_stream(value)
        else:
            setattr(self._selected(), name, value)
        self._service()

    def _name(self, name: str) -> str:
        if not isinstance(name, str):
            raise TcpModelError(f"register name must be a string, not {name!r}")
        short = name[4:] if name.startswith("tcp.") else name
        if short not in REGISTERS:
            raise TcpModelError(f"no register {name!r} in window tcp (registers: {', '.join(REGISTERS)})")
        return short

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = min(self.counters[name] + n, MASK32)

    # -- inputs ------------------------------------------------------------------------------------

    def append(self, session: int, packet: bytes, *, source: str = "data") -> None:
        """One whole packet into ``i_data`` (``source="data"``) or ``i_host_data`` (``"host"``)."""
        self._session(session)
        if source not in self._waiting:
            raise TcpModelError(f"source must be 'data' or 'host', not {source!r}")
        if not isinstance(packet, (bytes, bytearray)) or not packet:
            raise TcpModelError(f"a packet is one or more bytes, not {packet!r}")
        self._waiting[source].append((session, bytes(packet)))
        self._service()

    def send_frame(self, frame: bytes) -> None:
        """A raw frame from the host (``i_host_frame``): sent as it is."""
        if not isinstance(frame, (bytes, bytearray)) or len(frame) < ETHERNET_HEADER_LENGTH:
            raise TcpModelError(f"a frame has at least {ETHERNET_HEADER_LENGTH} bytes, not {frame!r}")
        self.tx.append(bytes(frame))
        self._service()

    def rx(self, frame: bytes) -> None:
        """A frame received on the order port (``i_rx``, FCS removed)."""
        if not isinstance(frame, (bytes, bytearray)):
            raise TcpModelError(f"a frame is bytes, not {frame!r}")
        frame = bytes(frame)
        verdict = self._receive(frame)
        if verdict == "punt":
            self._count("rx_punted")
            self.host_frames.append(frame)
        elif verdict == "bad_checksum":
            self._count("rx_bad_checksum")
        self._service()

    def take(self) -> tuple[list[bytes], list[bytes], list[tuple[int, bytes]]]:
        """Everything output so far, emptied: (``o_tx`` frames, ``o_host_frame`` frames,
        ``o_payload`` chunks)."""
        out = (self.tx, self.host_frames, self.payload)
        self.tx, self.host_frames, self.payload = [], [], []
        return out

    def waiting(self) -> int:
        """Packets waiting at the inputs because their session's buffer is full."""
        return len(self._waiting["data"]) + len(self._waiting["host"])

    # -- receive -----------------------------------------------------------------------------------

    def _receive(self, frame: bytes) -> str:
        """``"handled"``, ``"punt"`` or ``"bad_checksum"``."""
        if len(frame) < ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH:
            return "punt"
        eth = ETHERNET.unpack(frame)
        if eth["ethertype"] != ETHERTYPE_IPV4:
            return "punt"
        ip_bytes = frame[ETHERNET_HEADER_LENGTH:ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH]
        ip = IPV4.unpack(ip_bytes)
        if ip["version_ihl"] != IPV4_VERSION_IHL:
            return "punt"
        if ipv4_checksum(ip_bytes) != 0:
            return "bad_checksum"
        total = ip["total_length"]
        available = len(frame) - ETHERNET_HEADER_LENGTH
        fragment = ip["flags_fragment_offset"] & (IPV4_FLAG_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK)
        if total < IPV4_HEADER_LENGTH or total > available or ip["protocol"] != IP_PROTOCOL_TCP or fragment:
            return "punt"
        segment = frame[TCP_HEADER_OFFSET:ETHERNET_HEADER_LENGTH + total]
        if len(segment) < TCP_HEADER_LENGTH:
            return "punt"
        if tcp_checksum(ip["source_address"], ip["destination_address"], segment) != 0:
            return "bad_checksum"
        if eth["destination_address"] != self._card["local_mac"] \
                or ip["destination_address"] != self._card["local_ip"]:
            return "punt"
        tcp = TCP.unpack(segment)
        if tcp["data_offset"] != TCP_DATA_OFFSET_NO_OPTIONS or tcp["flags"] & ~TCP_PSH != TCP_ACK:
            return "punt"
        s = self._match(ip["source_address"], tcp["source_port"], tcp["destination_port"])
        if s is None or tcp["sequence_number"] != s.rcv_nxt:
            return "punt"
        payload = segment[TCP_HEADER_LENGTH:]
        ack = tcp["acknowledgment_number"]
        if 0 < _diff(ack, s.snd_una) <= _diff(s.snd_max, s.snd_una):
            self._acknowledge(s, ack)
        s.peer_window = tcp["window"]
        self._count("rx_segments")
        if payload:
            s.rcv_nxt = (s.rcv_nxt + len(payload)) & MASK32
            self.payload.append((s.index, payload))
            s.ack_pending = True
        return "handled"

    def _match(self, peer_ip: int, peer_port: int, local_port: int) -> _Session | None:
        for s in self._sessions:
            if s.established and s.peer_ip == peer_ip and s.peer_port == peer_port \
                    and s.local_port == local_port:
                return s
        return None

    def _acknowledge(self, s: _Session, ack: int) -> None:
        s.snd_una = ack
        while s.descriptors:
            d = s.descriptors[0]
            end = (d.seq + len(d.data)) & MASK32
            if _diff(end, d.seq) > _diff(ack, d.seq):     # not wholly acknowledged
                break
            s.descriptors.popleft()
            s.words_used -= d.words
        if _diff(s.snd_nxt, s.snd_una) > _diff(s.snd_max, s.snd_una):
            s.snd_nxt = s.snd_una                         # acknowledged beyond a rewound SND.NXT

    # -- commands ----------------------------------------------------------------------------------

    def _command_retransmit(self, s: _Session) -> None:
        s.snd_nxt = s.snd_una

    def _command_send_ack(self, s: _Session) -> None:
        self._emit(s, seq=s.snd_max, payload=b"", flags=TCP_ACK)
        self._count("tx_acks")
        s.ack_pending = False

    def _command_probe(self, s: _Session) -> None:
        self._emit(s, seq=(s.snd_una - 1) & MASK32, payload=b"", flags=TCP_ACK)
        self._count("tx_acks")

    # -- sending -----------------------------------------------------------------------------------

    def _service(self) -> None:
        """Take waiting packets while they fit, then send every segment the windows allow."""
        progress = True
        while progress:
            progress = self._take_inputs()
            for s in self._sessions:
                if self._send_data(s):
                    progress = True
                if s.ack_pending:
                    self._command_send_ack(s)

    def _take_inputs(self) -> bool:
        taken = False
        while True:
            source = "data" if self._waiting["data"] else "host" if self._waiting["host"] else None
            if source is None:
                return taken
            index, packet = self._waiting[source][0]
            s = self._sessions[index]
            words = packet_words(len(packet))
            if not s.established:
                self._count("tx_closed_drops")
                logger.debug("session %d: dropped a %d-byte packet (not established)", index, len(packet))
            elif len(packet) > s.mss or words > self.buffer_words:
                self._count("tx_oversize_drops")
                logger.debug("session %d: dropped a %d-byte packet (mss %d)", index, len(packet), s.mss)
            elif len(s.descriptors) >= self.descriptor_count or s.words_used + words > self.buffer_words:
                return taken                                  # stall until an ACK frees space
            else:
                s.descriptors.append(_Descriptor(s.snd_end, packet, words))
                s.words_used += words
                s.snd_end = (s.snd_end + len(packet)) & MASK32
            self._waiting[source].popleft()
            taken = True

    def _send_data(self, s: _Session) -> bool:
        if not s.established:
            return False
        sent = False
        for d in s.descriptors:
            end = (d.seq + len(d.data)) & MASK32
            if _diff(end, s.snd_una) <= _diff(s.snd_nxt, s.snd_una):
                continue                                      # already sent (up to SND.NXT)
            if _diff(end, s.snd_una) > s.peer_window:
                break                                         # beyond the window: wait
            retransmission = _diff(end, s.snd_una) <= _diff(s.snd_max, s.snd_una)
            self._emit(s, seq=d.seq, payload=d.data, flags=TCP_ACK | TCP_PSH)
            self._count("tx_segments")
            if retransmission:
                self._count("tx_retransmits")
            s.snd_nxt = end
            if _diff(end, s.snd_una) > _diff(s.snd_max, s.snd_una):
                s.snd_max = end
            s.ack_pending = False
            sent = True
        return sent

    def _emit(self, s: _Session, *, seq: int, payload: bytes, flags: int) -> None:
        self.tx.append(segment_frame(
            local_mac=self._card["local_mac"], peer_mac=s.peer_mac, local_ip=self._card["local_ip"],
            peer_ip=s.peer_ip, local_port=s.local_port, peer_port=s.peer_port, seq=seq, ack=s.rcv_nxt,
            flags=flags, window=self._card["rcv_window"], identification=s.identification,
            payload=payload))
        s.identification = (s.identification + 1) & 0xFFFF


class ModelCardPort:
    """:class:`tickwire.host.tcp_session.TcpCardPort` over a :class:`TcpCardModel`.

    Register names are qualified (``"tcp.snd_una"``); a per-session access with ``session`` writes
    ``tcp.session`` first, as a host does on the card. Frames the model sends on ``o_tx`` are
    collected for the network side with :meth:`take_tx` (the bridge's "frame from card").
    """

    def __init__(self, model: TcpCardModel) -> None:
        self.model = model

    def read(self, name: str, session: int | None = None) -> int:
        if session is not None:
            self.model.write("session", session)
        return self.model.read(name)

    def write(self, name: str, value: int, session: int | None = None) -> None:
        if session is not None:
            self.model.write("session", session)
        self.model.write(name, value)

    def send_frame(self, frame: bytes) -> None:
        self.model.send_frame(frame)

    def append(self, session: int, packet: bytes) -> None:
        self.model.append(session, packet, source="host")

    def poll(self) -> tuple[list[bytes], list[tuple[int, bytes]]]:
        frames, payload = self.model.host_frames, self.model.payload
        self.model.host_frames, self.model.payload = [], []
        return frames, payload

    # -- the network side (for a bridge) -----------------------------------------------------------

    def take_tx(self) -> list[bytes]:
        frames, self.model.tx = self.model.tx, []
        return frames

    def receive(self, frame: bytes) -> None:
        self.model.rx(frame)

    def receive_all(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            self.model.rx(frame)
