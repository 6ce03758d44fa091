"""Simulated card: the Verilated appliance served to host drivers over a local socket.

``tickwire sim serve`` builds (once per change of the gateware) the native harness
``sim/native/card_main.cpp`` around :class:`tickwire.hdl.top.Appliance`, starts it, and serves it
on a Unix domain socket (or 127.0.0.1 TCP) to :class:`tickwire.drivers.sim.SimDriver`: register
reads and writes on the register bus, frames into feed lines A and B and the injection port,
bytes into the inbound order-session port, frames out of the order port, and the card's event
ring in host memory.

The harness's top level ``card_top`` is generated from the appliance's Verilog: it finds the ports
it knows by name (:data:`ROLES`), ties every other input off (an output stream's ``ready`` to 1,
an XGMII line to idle, anything else to 0), so the harness keeps building when ports are added.

Events: every record the appliance's event stage sends on ``o_events`` (``ORDER_SENT``,
``RISK_REJECT``, ``BOOK_UNTRUSTED``, ``GAP``, 32 bytes in :mod:`tickwire.protocols.events`
format) goes into the event ring the client attached (:class:`EventSource`), renumbered in ring
order. The server adds one kind the gateware does not make yet: ``LATENCY`` for each order frame
of a trigger order (start of the last feed frame in, start of the order frame out), after that
order's ``ORDER_SENT``. All ``cycles`` are the appliance's own clock (``id.cycles``).

Socket protocol (both ways: u32 little-endian length of what follows, then the body). Requests
start with an op byte; replies with a status byte (0 ok, 1 error: a UTF-8 message follows)::

    op  request body                         reply body
    1   HELLO   u16 PROTOCOL_VERSION          JSON: card description (ports, clock, map consts)
    2   READ    u32 address                   u32 value
    3   WRITE   u32 address, u32 value        -
    4   SEND    u8 port (PORTS), bytes        -      feed ports: Ethernet frame without FCS;
                                                     inject: one MoldUDP64 datagram;
                                                     inbound: bytes of the order session's
                                                     stream from the exchange (SoupBinTCP)
    5   RECV    u32 timeout_ms, u32 limit     frames: u8 port, u64 cycle, u32 length, bytes
    6   RING    u32 entries, path (UTF-8)     -      write events into the ring in that file
    7   RUN     u64 cycles                    u64 cycle
    8   SETTLE  u64 max_cycles                u64 cycle, u8 settled
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import mmap
import os
import queue
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = ["CardHarness", "build_card_harness", "CardEngine", "CardServer", "serve",
           "EventSource", "default_socket_path", "PROTOCOL_VERSION", "PORTS", "OUT_PORTS",
           "Op", "MAX_MESSAGE", "SimCardError"]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Frame ports a client sends to, by code. ``order`` is the order port's receive side (the
#: exchange's frames); ``host_frame`` a raw frame the TCP engine sends; ``host_data`` one
#: SoupBinTCP packet for the TCP engine, after a byte with its session.
PORTS = ("feed_a", "feed_b", "inject", "inbound", "order", "host_frame", "host_data")
#: Frame ports frames come out of, by code: the order port's frames, frames the TCP engine
#: passes to the host, and its in-order received payload (after a byte with the session).
OUT_PORTS = ("order", "host_frame", "payload")
#: Largest message either side accepts (a frame, or a batch of received frames).
MAX_MESSAGE = 1 << 24
#: Generated top level of the harness, and the executable.
WRAPPER = "card_top"
EXECUTABLE = "card"
#: The order transports the card serves: one build (``Appliance(transport="both")``, DUT
#: ``top_both``) whose ``i_order_transport`` strap the harness sets from ``TICKWIRE_CARD_TRANSPORT``.
TRANSPORTS = ("udp", "tcp")
CARD_DUT = "top_both"
#: Bits of the harness's wide ports (inject, inbound and event payloads).
PAYLOAD_BITS = 256
#: Largest packet on a packet_layout port (its ``length`` field is 16 bits); longer inbound byte
#: runs are cut into packets of this size.
MAX_PACKET = 0xFFFF
#: Harness port -> (appliance port, kind). Kinds: ``xgmii_in``, ``xgmii_out``, ``stream_in``,
#: ``stream_out`` (always ready), ``csr``, ``strap`` (a 1-bit input held from before reset).
ROLES: Mapping[str, tuple[str, str]] = {
    "feed_a": ("feed_rx", "xgmii_in"),
    "feed_b": ("feed_rx_b", "xgmii_in"),
    "inject": ("i_inject", "stream_in"),
    "inbound": ("i_inbound", "stream_in"),
    "order": ("order_rx", "xgmii_in"),
    "host_data": ("i_host_data", "stream_in"),
    "host_frame": ("i_host_frame", "stream_in"),
    "events": ("o_events", "stream_out"),
    "punt": ("o_host_frame", "stream_out"),
    "payload": ("o_payload", "stream_out"),
    "tx": ("order_tx", "xgmii_out"),
    "csr": ("csr", "csr"),
    "transport": ("i_order_transport", "strap"),
}
_NATIVE = Path(__file__).resolve().parent / "native"
_SOURCES = (_NATIVE / "card_main.cpp",)
_XGMII_IDLE_WORD = 0x0707070707070707


class SimCardError(RuntimeError):
    """The harness failed to build, start or answer."""


class Op:
    """Socket request codes."""

    HELLO, READ, WRITE, SEND, RECV, RING, RUN, SETTLE = range(1, 9)


class _Harness:
    """Harness request and message codes (card_main.cpp)."""

    READ, WRITE, FEED, INJECT, RUN, SETTLE, RESET, QUIT, INBOUND, HOST_DATA, HOST_FRAME = range(1, 12)
    TX_FRAME, IDLE, EVENT, PUNT, PAYLOAD, ERROR, REPLY = 0x01, 0x03, 0x04, 0x05, 0x06, 0x7F, 0x80


# -- build ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CardHarness:
    """A built card harness: its folder and what ``harness.json`` says about the appliance."""

    directory: Path
    doc: Mapping[str, Any]

    @property
    def executable(self) -> Path:
        return self.directory / EXECUTABLE

    @property
    def roles(self) -> tuple[str, ...]:
        """Harness ports the appliance has (``feed_b``, ``inject``... may be missing)."""
        return tuple(self.doc["roles"])

    @classmethod
    def load(cls, directory: Path) -> CardHarness:
        return cls(directory, json.loads((directory / "harness.json").read_text()))


def _source_key() -> str:
    from .runner import source_key
    from . import replay
    return source_key(Path(replay.__file__), Path(__file__), *_SOURCES)


def build_card_harness(announce: Callable[[str], None] | None = None) -> CardHarness:
    """The card harness for the current gateware, built unless a build of the same sources exists
    (the Verilog is not even generated again then). ``announce`` hears when a build starts. One
    build serves both order transports (:data:`TRANSPORTS`, chosen when the card starts)."""
    from .runner import build_root, index_build, indexed_build
    dut = CARD_DUT
    native = build_root() / "native"
    key = f"card-{dut}-{_source_key()}"
    directory = indexed_build(native, key)
    if directory is None:
        directory = _build(native, announce or (lambda text: logger.info("%s", text)), dut)
        index_build(native, key, directory)
    return CardHarness.load(directory)


def _build(native: Path, announce: Callable[[str], None], dut: str = CARD_DUT) -> Path:
    from tickwire.hdl.build import regmap
    from tickwire.hdl.events import event_record_layout
    from tickwire.hdl.packet import packet_layout
    from .replay import _flatten, _top_ports, verilate
    from .runner import _duts, generate
    verilog, _ = generate(dut)
    toplevel = _duts()[dut].toplevel
    ports = _top_ports(verilog.read_text(), toplevel)
    wrapper, roles = card_wrapper(ports, toplevel)
    widths = {name: w for _, w, name in ports}
    from tickwire.hdl.ouch import ouch_packet_layout
    layouts = {"inject": packet_layout(), "inbound": packet_layout(),
               "events": event_record_layout, "host_frame": packet_layout(),
               "punt": packet_layout(), "host_data": ouch_packet_layout(),
               "payload": ouch_packet_layout()}
    for role, layout in layouts.items():
        port = f"{ROLES[role][0]}__payload"
        if role in roles and widths[port] != layout.size:
            raise SimCardError(f"{port} is {widths[port]} bits, its layout {layout.size}")
    doc = {"dut": dut, "verilog": verilog.name, "roles": roles,
           "inject_fields": [dataclasses.asdict(f) for f in _flatten(layouts["inject"])],
           "host_data_fields": [dataclasses.asdict(f) for f in _flatten(layouts["host_data"])],
           "regmap": regmap()}
    return verilate(native, "card", verilog, WRAPPER, wrapper, _SOURCES, EXECUTABLE, doc, announce)


def card_wrapper(ports: list[tuple[str, int, str]], module: str) -> tuple[str, list[str]]:
    """``card_top`` around ``module`` (whose ports are ``(direction, width, name)``) and the
    harness ports it connects (:data:`ROLES` whose appliance port exists).

    The harness's inputs for the feed lines, the register bus and reset pass through a register;
    the input streams (injection, inbound) do not. Harness outputs the appliance lacks are
    constants (an idle order port, no events, never ready); appliance inputs no role names are
    tied off."""
    names = {name: (d, w) for d, w, name in ports}

    def has(port: str, direction: str) -> bool:
        return names.get(port, ("", 0))[0] == direction

    def decl(width: int) -> str:
        return f"[{width - 1}:0] " if width > 1 else ""

    roles = []
    for role, (port, kind) in ROLES.items():
        wanted = {"xgmii_in": [("__data", "input"), ("__ctrl", "input")],
                  "xgmii_out": [("__data", "output"), ("__ctrl", "output")],
                  "stream_in": [("__valid", "input"), ("__payload", "input")],
                  "stream_out": [("__valid", "output"), ("__payload", "output")],
                  "csr": [("__addr", "input"), ("__w_stb", "input"), ("__w_data", "input"),
                          ("__r_stb", "input"), ("__r_data", "output")],
                  "strap": [("", "input")]}[kind]
        if all(has(port + suffix, d) for suffix, d in wanted):
            roles.append(role)
    if "csr" not in roles or "feed_a" not in roles:
        raise SimCardError(f"{module} has no register bus 'csr' or no feed port 'feed_rx': the "
                           f"card harness needs both")

    # (harness port, direction, width, registered)
    own = [("rst", "input", 1, True), ("csr_addr", "input", 32, True),
           ("csr_w_stb", "input", 1, True), ("csr_w_data", "input", 32, True),
           ("csr_r_stb", "input", 1, True), ("csr_r_data", "output", 32, False),
           ("feed_a_data", "input", 64, True), ("feed_a_ctrl", "input", 8, True),
           ("feed_b_data", "input", 64, True), ("feed_b_ctrl", "input", 8, True),
           ("inject_valid", "input", 1, False), ("inject_payload", "input", PAYLOAD_BITS, False),
           ("inject_ready", "output", 1, False), ("inbound_valid", "input", 1, False),
           ("inbound_payload", "input", PAYLOAD_BITS, False),
           ("inbound_ready", "output", 1, False), ("events_valid", "output", 1, False),
           ("events_payload", "output", PAYLOAD_BITS, False), ("tx_data", "output", 64, False),
           ("tx_ctrl", "output", 8, False),
           ("order_data", "input", 64, True), ("order_ctrl", "input", 8, True),
           ("host_data_valid", "input", 1, False), ("host_data_payload", "input", PAYLOAD_BITS, False),
           ("host_data_ready", "output", 1, False),
           ("host_frame_valid", "input", 1, False), ("host_frame_payload", "input", PAYLOAD_BITS, False),
           ("host_frame_ready", "output", 1, False),
           ("punt_valid", "output", 1, False), ("punt_payload", "output", PAYLOAD_BITS, False),
           ("payload_valid", "output", 1, False), ("payload_payload", "output", PAYLOAD_BITS, False),
           ("transport", "input", 1, True)]
    initial = {"rst": "1'b1", "feed_a_data": f"64'h{_XGMII_IDLE_WORD:x}", "feed_a_ctrl": "8'hff",
               "feed_b_data": f"64'h{_XGMII_IDLE_WORD:x}", "feed_b_ctrl": "8'hff",
               "order_data": f"64'h{_XGMII_IDLE_WORD:x}", "order_ctrl": "8'hff"}
    lines = [f"// Generated by tickwire.sim.card: {module} as the card harness drives it.",
             f"module {WRAPPER}(clk, " + ", ".join(n for n, *_ in own) + ");", "  input clk;"]
    lines += [f"  {d} {decl(w)}{n};" for n, d, w, _ in own]
    lines += [f"  reg {decl(w)}{n}_q = {initial.get(n, '0')};" for n, d, w, r in own if r]
    lines.append("  always @(posedge clk) begin")
    lines += [f"    {n}_q <= {n};" for n, d, w, r in own if r]
    lines.append("  end")

    # appliance port -> expression it connects to (inputs) or harness output it drives (outputs)
    inputs: dict[str, str] = {"rst": "rst_q"}
    outputs: dict[str, str] = {}
    constants = {"csr_r_data": "32'h0", "inject_ready": "1'b0", "inbound_ready": "1'b0",
                 "events_valid": "1'b0", "events_payload": f"{PAYLOAD_BITS}'h0",
                 "host_data_ready": "1'b0", "host_frame_ready": "1'b0", "punt_valid": "1'b0",
                 "punt_payload": f"{PAYLOAD_BITS}'h0", "payload_valid": "1'b0",
                 "payload_payload": f"{PAYLOAD_BITS}'h0",
                 "tx_data": f"64'h{_XGMII_IDLE_WORD:x}",
                 "tx_ctrl": "8'hff"}
    for role in roles:
        port, kind = ROLES[role]
        if kind == "csr":
            aw = names["csr__addr"][1]
            inputs.update({"csr__addr": f"csr_addr_q[{aw - 1}:0]", "csr__w_stb": "csr_w_stb_q",
                           "csr__w_data": "csr_w_data_q", "csr__r_stb": "csr_r_stb_q"})
            outputs["csr__r_data"] = "csr_r_data"
        elif kind == "xgmii_in":
            inputs.update({f"{port}__data": f"{role}_data_q", f"{port}__ctrl": f"{role}_ctrl_q"})
        elif kind == "xgmii_out":
            outputs.update({f"{port}__data": f"{role}_data", f"{port}__ctrl": f"{role}_ctrl"})
        elif kind == "stream_in":
            w = names[f"{port}__payload"][1]
            inputs.update({f"{port}__valid": f"{role}_valid",
                           f"{port}__payload": f"{role}_payload[{w - 1}:0]"})
            if has(f"{port}__ready", "output"):
                outputs[f"{port}__ready"] = f"{role}_ready"
        elif kind == "strap":
            inputs[port] = f"{role}_q"
        elif kind == "stream_out":
            outputs.update({f"{port}__valid": f"{role}_valid",
                            f"{port}__payload": f"{role}_payload"})
            if has(f"{port}__ready", "input"):
                inputs[f"{port}__ready"] = "1'b1"
    driven = set(outputs.values())
    for name, _, width, _ in own:
        if name in constants and name not in driven:
            lines.append(f"  assign {name} = {constants[name]};")

    connections = [".clk(clk)"]
    for d, w, name in ports:
        if name == "clk":
            continue
        if name in inputs:
            connections.append(f".{name}({inputs[name]})")
        elif name in outputs:
            target = outputs[name]
            full = {n: width for n, _, width, _ in own}[target]
            if w == full:
                connections.append(f".{name}({target})")
            else:
                lines.append(f"  wire {decl(w)}{name}_w;")
                lines.append(f"  assign {target} = {{{full - w}'h0, {name}_w}};")
                connections.append(f".{name}({name}_w)")
        elif d == "input":
            connections.append(f".{name}({_tie_off(names, name, w)})")
        else:
            connections.append(f".{name}()")
    lines.append(f"  {module} dut(\n    " + ",\n    ".join(connections) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n", roles


def _tie_off(names: Mapping[str, tuple[str, int]], name: str, width: int) -> str:
    """An unknown input: an output stream's ``ready`` is 1, an XGMII line idle, the rest 0."""
    stem, _, kind = name.rpartition("__")
    if kind == "ready" and names.get(f"{stem}__valid", ("", 0))[0] == "output":
        return "1'b1"
    if kind == "ctrl" and names.get(f"{stem}__data", ("", 0))[0] == "input":
        return f"{width}'h{(1 << width) - 1:x}"
    if kind == "data" and names.get(f"{stem}__ctrl", ("", 0))[0] == "input":
        return f"{width}'h{int.from_bytes(bytes([0x07] * (width // 8)), 'little'):x}"
    return f"{width}'h0"


# -- the harness process ---------------------------------------------------------------------------

class CardEngine:
    """The harness process: one request at a time, replies matched in order; frames, gap beats
    and idle notices that arrive meanwhile go to ``on_message(kind, body)`` (called from the
    reader thread, which must not make requests)."""

    def __init__(self, harness: CardHarness, on_message: Callable[[int, bytes], None], *,
                 timeout: float = 60.0, transport: str = "udp") -> None:
        if transport not in TRANSPORTS:
            raise SimCardError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if transport != "udp" and "transport" not in harness.roles:
            raise SimCardError("this card harness has no order transport strap: it serves udp only")
        self.harness = harness
        self.transport = transport
        self.timeout = timeout
        self._on_message = on_message
        self._replies: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._lock = threading.Lock()
        self.cycles = 0
        self.proc = subprocess.Popen([str(harness.executable)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "TICKWIRE_CARD_TRANSPORT": transport})
        self._reader = threading.Thread(target=self._read, name="card-harness", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        try:
            while head := stdout.read(4):
                if len(head) < 4:
                    break
                body = stdout.read(int.from_bytes(head, "little"))
                kind, body = body[0], body[1:]
                if kind & _Harness.REPLY:
                    self._replies.put((kind & ~_Harness.REPLY, body))
                elif kind == _Harness.ERROR:
                    logger.error("card harness: %s", body.decode(errors="replace"))
                else:
                    try:
                        self._on_message(kind, body)
                    except Exception:  # keep reading: the card must not stall on a host bug
                        logger.exception("card harness message 0x%02x", kind)
        finally:
            self._replies.put(None)

    def request(self, op: int, body: bytes = b"", timeout: float | None = None) -> bytes:
        """Send request ``op`` and wait for its reply (after the u64 cycle, which is kept in
        :attr:`cycles`)."""
        with self._lock:
            if self.proc.poll() is not None:
                raise SimCardError(self._death())
            message = bytes([op]) + body
            try:
                self.proc.stdin.write(len(message).to_bytes(4, "little") + message)
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise SimCardError(self._death()) from None
            try:
                reply = self._replies.get(timeout=timeout or self.timeout)
            except queue.Empty:
                raise SimCardError(f"the card harness did not answer request {op} in "
                                   f"{timeout or self.timeout} s") from None
            if reply is None:
                self._replies.put(None)
                raise SimCardError(self._death())
            kind, body = reply
            if kind != op:
                raise SimCardError(f"card harness answered request {op} with reply {kind}")
            self.cycles = int.from_bytes(body[:8], "little")
            return body[8:]

    def _death(self) -> str:
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "the card harness stopped answering"
        stderr = self.proc.stderr.read().decode(errors="replace").strip()
        return f"the card harness exited with status {self.proc.returncode}: {stderr}"

    def read(self, address: int) -> int:
        return int.from_bytes(self.request(_Harness.READ, struct.pack("<I", address)), "little")

    def write(self, address: int, value: int) -> None:
        self.request(_Harness.WRITE, struct.pack("<II", address, value))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(_Harness.QUIT, timeout=5)
            except SimCardError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


# -- events ----------------------------------------------------------------------------------------

class EventSource:
    """The card's events: the appliance's event records (and the server's ``LATENCY`` events)
    written into the ring a client attached, kept in a bounded backlog until then.

    Records are written through :class:`tickwire.drivers.ring.RingWriter`, which numbers them in
    ring order (the gateware's own numbering counts only its records)."""

    BACKLOG = 65536
    #: Trigger orders remembered until their frame leaves (UserRefNum -> True).
    PENDING = 4096

    def __init__(self, harness: CardHarness) -> None:
        self._lock = threading.Lock()
        self._backlog: collections.deque = collections.deque(maxlen=self.BACKLOG)
        self._writer = None
        self._mapping: mmap.mmap | None = None
        #: UserRefNums of trigger orders sent whose frame has not left yet.
        self._trigger_orders: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.records = 0

    def attach(self, path: str, entries: int) -> None:
        """Write events into the ring in file ``path`` (set up by the host) from now on."""
        from tickwire.drivers.ring import RingWriter
        from tickwire.protocols import events as ev
        with open(path, "r+b") as f:
            size = ev.ring_bytes(entries)
            if os.fstat(f.fileno()).st_size < size:
                raise ev.EventError(f"event ring file {path} is smaller than {size} bytes")
            mapping = mmap.mmap(f.fileno(), size)
        writer = RingWriter(mapping)
        if writer.entries != entries:
            raise ev.EventError(f"event ring file {path} holds {writer.entries} entries, "
                                f"not {entries}")
        with self._lock:
            self._detach()
            self._writer, self._mapping = writer, mapping
            while self._backlog:
                self._writer.write(self._backlog.popleft())
        logger.info("events go to ring %s (%d entries)", path, entries)

    def _detach(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._mapping.close()
            self._writer = self._mapping = None

    def close(self) -> None:
        with self._lock:
            self._detach()

    def emit(self, event) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.write(event)
            else:
                self._backlog.append(event)

    def record(self, record: bytes) -> None:
        """One 32-byte record from the appliance's ``o_events``."""
        from tickwire.protocols import events as ev
        try:
            event = ev.unpack(record)
        except ev.EventError as e:
            logger.error("o_events: %s", e)
            return
        self.records += 1
        if event.type == ev.EventType.ORDER_SENT and not event.flags & ev.EventFlag.HOST:
            self._trigger_orders[event["user_ref_num"]] = None
            while len(self._trigger_orders) > self.PENDING:
                self._trigger_orders.popitem(last=False)
        self.emit(event)

    def order_frame(self, cycle: int, feed_cycle: int, frame: bytes) -> None:
        """``LATENCY`` for the order frame of a trigger order: from the start of the last feed
        frame in to the start of this frame out."""
        from tickwire.protocols import events as ev
        fields = _order_fields(frame)
        if fields is None:
            # ACKs, the host's SoupBinTCP packets and frames (TCP transport) are no orders
            logger.debug("order port: frame at cycle %d is not an OUCH order", cycle)
            return
        user_ref_num = fields["user_ref_num"]
        if user_ref_num not in self._trigger_orders:
            return  # a host order: no feed frame caused it
        del self._trigger_orders[user_ref_num]
        if feed_cycle <= cycle:
            self.emit(ev.Event(ev.EventType.LATENCY, cycle, fields={
                "ingress_cycles": feed_cycle, "user_ref_num": user_ref_num}))


def _order_payload(frame: bytes, fcs: bool = True) -> bytes | None:
    """The SoupBinTCP bytes an order-port frame carries (FCS at the end unless ``fcs`` is
    False): a UDP datagram's payload, a TCP segment's data (None for a segment without data or
    another frame)."""
    from tickwire.protocols.net import (ETHERNET_HEADER_LENGTH, FCS_LENGTH, IP_PROTOCOL_TCP,
                                        IP_PROTOCOL_UDP, TCP_PAYLOAD_OFFSET, UDP_PAYLOAD_OFFSET)
    trailer = FCS_LENGTH if fcs else 0
    if len(frame) < ETHERNET_HEADER_LENGTH + 20 + trailer or frame[12:14] != b"\x08\x00":
        return None
    end = min(len(frame) - trailer, ETHERNET_HEADER_LENGTH + int.from_bytes(frame[16:18], "big"))
    if frame[23] == IP_PROTOCOL_UDP:
        return frame[UDP_PAYLOAD_OFFSET:end]
    if frame[23] == IP_PROTOCOL_TCP and end > TCP_PAYLOAD_OFFSET:
        return frame[TCP_PAYLOAD_OFFSET:end]
    return None


def _order_fields(frame: bytes, fcs: bool = True) -> dict[str, int] | None:
    """ORDER_SENT fields of an order frame (Ethernet/IPv4/UDP or a TCP segment, SoupBinTCP
    Unsequenced Data, an OUCH 5.0 inbound message, FCS unless ``fcs`` is False), or None if it
    is not one."""
    from tickwire.protocols import ouch, soupbintcp
    payload = _order_payload(frame, fcs)
    if payload is None:
        return None
    try:
        packets, _ = soupbintcp.unframe(payload)
        if not packets or packets[0][0] != "U":
            return None
        message = ouch.unpack_inbound(packets[0][1])
    except (ValueError, KeyError, IndexError):
        return None
    side = message.get("side", "")
    return {"action": ord(message["message_type"]), "user_ref_num": message.get("user_ref_num", 0),
            "quantity": message.get("quantity", 0),
            "price": min(message.get("price", 0), 0xFFFF_FFFF), "stock_locate": 0,
            "side": ord(side[0]) if side else 0, "session": 0}


# -- the server ------------------------------------------------------------------------------------

class CardServer:
    """The simulated card and its socket server (``serve_forever`` in the caller's thread)."""

    MAX_FRAMES = 65536

    def __init__(self, harness: CardHarness, *, socket_path: str | None = None,
                 port: int | None = None, host: str = "127.0.0.1", transport: str = "udp") -> None:
        if (socket_path is None) == (port is None):
            raise ValueError("give a Unix socket path or a TCP port, not both or neither")
        self.harness = harness
        self.events = EventSource(harness)
        self._frames: collections.deque = collections.deque(maxlen=self.MAX_FRAMES)
        self._frames_ready = threading.Condition()
        self._stop = threading.Event()
        self._tap: Any = None
        if "events" not in harness.roles:
            logger.warning("the appliance has no o_events port: the card sends no events")
        self.engine = CardEngine(harness, self._on_message, transport=transport)
        handler = _handler(self)
        if socket_path is not None:
            if os.path.exists(socket_path):
                _remove_stale_socket(socket_path)
            self.server: socketserver.BaseServer = _UnixServer(socket_path, handler)
            self.address = socket_path
        else:
            self.server = _TcpServer((host, port), handler)
            self.address = "%s:%d" % self.server.server_address[:2]

    def attach_tap(self, tap: Any) -> None:
        """Connect the order port to ``tap`` (a :class:`tickwire.sim.tap.Tap`): every frame the
        card sends goes to it as well (FCS removed), every frame the kernel sends out of it
        reaches the order port's receive side (padded to 60 bytes, FCS added), from a thread of
        its own until :meth:`close`."""
        if "order" not in self.harness.roles or self.engine.transport != "tcp":
            raise SimCardError("the order port is the TCP engine's only with --transport tcp")
        self._tap = tap

        def pump() -> None:
            while not self._stop.is_set():
                try:
                    if tap.wait(0.1):
                        for frame in tap.read_frames():
                            self.send("order", frame.ljust(60, b"\0"))
                except (OSError, SimCardError, ValueError) as e:
                    if not self._stop.is_set():
                        logger.error("TAP %s: %s", tap.name, e)
                    return
        threading.Thread(target=pump, name=f"tap-{tap.name}", daemon=True).start()

    def _on_message(self, kind: int, body: bytes) -> None:
        if kind == _Harness.TX_FRAME:
            cycle, feed_cycle = struct.unpack_from("<QQ", body)
            frame = body[16:]
            if self._tap is not None:
                try:
                    self._tap.write_frame(frame[:-4])
                except OSError as e:
                    logger.error("TAP %s: %s", self._tap.name, e)
            with self._frames_ready:
                self._frames.append((0, cycle, frame))
                self._frames_ready.notify_all()
            self.events.order_frame(cycle, feed_cycle, frame)
        elif kind in (_Harness.PUNT, _Harness.PAYLOAD):
            cycle = int.from_bytes(body[:8], "little")
            port = OUT_PORTS.index("host_frame" if kind == _Harness.PUNT else "payload")
            with self._frames_ready:
                self._frames.append((port, cycle, body[8:]))
                self._frames_ready.notify_all()
        elif kind == _Harness.EVENT:
            self.events.record(body[8:8 + 32])
        elif kind == _Harness.IDLE:
            logger.debug("card idle at cycle %d", int.from_bytes(body[:8], "little"))

    def describe(self) -> dict[str, Any]:
        doc = self.harness.doc
        return {"protocol": PROTOCOL_VERSION, "card": "tickwire sim", "harness":
                self.harness.directory.name, "roles": list(doc["roles"]),
                "send_ports": [p for p in PORTS if p in doc["roles"]],
                "receive_ports": list(OUT_PORTS), "constants": doc["regmap"]["constants"],
                "cycles": self.engine.cycles}

    def send(self, port: str, data: bytes) -> None:
        from tickwire.protocols.net import fcs
        if port not in self.harness.roles:
            raise ValueError(f"the simulated appliance has no port {port!r}")
        if port in ("feed_a", "feed_b", "order"):
            frame = data + fcs(data)
            line = {"feed_a": 0, "feed_b": 1, "order": 2}[port]
            self.engine.request(_Harness.FEED, struct.pack("<BH", line, 12) + frame)
        elif port == "host_frame":
            beats = _inject_beats(data, self.harness.doc["inject_fields"])
            self.engine.request(_Harness.HOST_FRAME, struct.pack("<H", len(beats)) + b"".join(beats))
        elif port == "host_data":
            if len(data) < 2:
                raise ValueError("host_data: a session byte and a SoupBinTCP packet")
            beats = _inject_beats(data[1:], self.harness.doc["host_data_fields"], session=data[0])
            self.engine.request(_Harness.HOST_DATA, struct.pack("<H", len(beats)) + b"".join(beats))
        elif port == "inject":
            beats = _inject_beats(data, self.harness.doc["inject_fields"])
            self.engine.request(_Harness.INJECT, struct.pack("<H", len(beats)) + b"".join(beats))
        else:  # inbound: a run of the session's byte stream, as packets of at most MAX_PACKET
            for start in range(0, len(data), MAX_PACKET):
                beats = _inject_beats(data[start:start + MAX_PACKET],
                                      self.harness.doc["inject_fields"])
                self.engine.request(_Harness.INBOUND,
                                    struct.pack("<H", len(beats)) + b"".join(beats))

    def receive(self, timeout: float, limit: int) -> list[tuple[int, int, bytes]]:
        deadline = time.monotonic() + timeout
        with self._frames_ready:
            while not self._frames:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return []
                self._frames_ready.wait(left)
            return [self._frames.popleft() for _ in range(min(limit, len(self._frames)))]

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.1)
        finally:
            self.close()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread or a signal handler's thread)."""
        threading.Thread(target=self.server.shutdown, daemon=True).start()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._frames_ready:
            self._frames_ready.notify_all()
        self.server.server_close()
        if isinstance(self.server, _UnixServer):
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                pass
        self.engine.close()
        self.events.close()
        if self._tap is not None:
            self._tap.close()


def _inject_beats(datagram: bytes, fields: list[Mapping[str, Any]], **extra: int) -> list[bytes]:
    """A datagram as injection-port beats (``packet_layout``), each 32 bytes little-endian."""
    if not 1 <= len(datagram) <= 0xFFFF:
        raise ValueError(f"a datagram of {len(datagram)} bytes cannot be injected (1 to 65535)")
    f = {d["name"]: d for d in fields}
    out = []
    for start in range(0, len(datagram), 8):
        chunk = datagram[start:start + 8]
        last = start + 8 >= len(datagram)
        value = 0
        for name, v in (("data", int.from_bytes(chunk, "little")), ("nbytes", len(chunk)),
                        ("last", int(last)), ("length", len(datagram)), *extra.items()):
            if name in f:
                value |= (v & ((1 << f[name]["width"]) - 1)) << f[name]["offset"]
        out.append(value.to_bytes(PAYLOAD_BITS // 8, "little"))
    return out


def _remove_stale_socket(path: str) -> None:
    import stat
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        raise OSError(f"{path} exists and is not a socket: choose another --socket path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
        os.unlink(path)  # a leftover from a server that died
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another simulated card is serving there")


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _handler(card: CardServer) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            if sock.family != getattr(socket, "AF_UNIX", None):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not card._stop.is_set():
                head = _recv_exact(sock, 4)
                if head is None:
                    return
                length = int.from_bytes(head, "little")
                if not 1 <= length <= MAX_MESSAGE:
                    logger.warning("client sent a %d-byte message; closing it", length)
                    return
                body = _recv_exact(sock, length)
                if body is None:
                    return
                try:
                    reply = b"\x00" + self._answer(body[0], body[1:])
                except (ValueError, OSError, struct.error, SimCardError) as e:
                    reply = b"\x01" + str(e).encode()
                sock.sendall(len(reply).to_bytes(4, "little") + reply)

        def _answer(self, op: int, body: bytes) -> bytes:
            engine = card.engine
            if op == Op.HELLO:
                (version,) = struct.unpack("<H", body)
                if version != PROTOCOL_VERSION:
                    raise ValueError(f"protocol version {version} is not served "
                                     f"(this card speaks {PROTOCOL_VERSION})")
                return json.dumps(card.describe()).encode()
            if op == Op.READ:
                return struct.pack("<I", engine.read(*struct.unpack("<I", body)))
            if op == Op.WRITE:
                engine.write(*struct.unpack("<II", body))
                return b""
            if op == Op.SEND:
                if not body or body[0] >= len(PORTS):
                    raise ValueError("SEND: unknown port code")
                card.send(PORTS[body[0]], body[1:])
                return b""
            if op == Op.RECV:
                timeout_ms, limit = struct.unpack("<II", body)
                frames = card.receive(min(timeout_ms, 60_000) / 1000, max(limit, 1))
                return b"".join(struct.pack("<BQI", port, cycle, len(frame)) + frame
                                for port, cycle, frame in frames)
            if op == Op.RING:
                (entries,) = struct.unpack_from("<I", body)
                card.events.attach(body[4:].decode(), entries)
                return b""
            if op == Op.RUN:
                (cycles,) = struct.unpack("<Q", body)
                engine.request(_Harness.RUN, body, timeout=max(60.0, cycles / 1e5))
                return struct.pack("<Q", engine.cycles)
            if op == Op.SETTLE:
                (limit,) = struct.unpack("<Q", body)
                settled = engine.request(_Harness.SETTLE, body, timeout=max(60.0, limit / 1e5))
                return struct.pack("<QB", engine.cycles, settled[0])
            raise ValueError(f"unknown request {op}")
    return Handler


@contextlib.contextmanager
def served(folder: Path, *, transport: str = "udp", options: tuple[str, ...] = (),
           timeout: float = 600.0) -> Iterator[str]:
    """``tickwire sim serve --transport T --socket folder/card.sock *options`` in a process of its
    own (its output in ``folder/serve.log``, a file: a pipe nobody reads would fill and stall it);
    yields the socket path once it is listening, stops the process (SIGTERM) afterwards. Raises
    :class:`SimCardError` when it does not start within ``timeout`` seconds (long enough for a
    harness build)."""
    import subprocess
    import sys
    folder = Path(folder)
    path = folder / "card.sock"
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tickwire.host.cli", "sim", "serve", "--transport",
                                 transport, "--socket", str(path), *options],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SimCardError(f"tickwire sim serve did not start: {log_path.read_text()}")
                time.sleep(0.05)
            yield str(path)
        finally:
            stop_process(proc)


def stop_process(proc: Any, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for it."""
    import subprocess
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/tickwire-sim.sock``, else ``/tmp/tickwire-sim-<uid>.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "tickwire-sim.sock")
    return f"/tmp/tickwire-sim-{os.getuid()}.sock"


def serve(socket_path: str | None = None, port: int | None = None, *, host: str = "127.0.0.1",
          announce: Callable[[str], None] | None = None, transport: str = "udp",
          tap: str | None = None, netns: str | None = None) -> int:
    """``tickwire sim serve``: build the harness if needed, serve until SIGINT or SIGTERM."""
    say = announce or (lambda text: logger.info("%s", text))
    if socket_path is None and port is None:
        socket_path = default_socket_path()
    harness = build_card_harness(announce=say)
    card = CardServer(harness, socket_path=socket_path, port=port, host=host, transport=transport)
    if tap is not None:
        from .tap import Tap
        card.attach_tap(Tap(tap, netns))
        say(f"order port on TAP {tap}" + (f" in network namespace {netns}" if netns else ""))

    def stop(signum: int, frame: Any) -> None:
        card.shutdown()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"simulated card ({harness.directory.name}) listening on {card.address}")
        card.serve_forever()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def add_commands(sim_commands: Any, parents: list) -> None:
    """``tickwire sim serve`` (registered by :mod:`tickwire.host.cli`)."""
    import sys
    parser = sim_commands.add_parser(
        "serve", parents=parents, help="serve the simulated card to host drivers",
        description="Build (once per change of the gateware) and run the Verilated appliance as "
                    "a simulated card, served on a local socket to the 'sim' driver: registers, "
                    "feed and injection frames in, order frames and card events out. Runs until "
                    "interrupted (SIGINT or SIGTERM).")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=None,
                       help=f"Unix domain socket to listen on (default: {default_socket_path()})")
    where.add_argument("--port", metavar="PORT", type=int, default=None,
                       help="listen on 127.0.0.1 TCP port PORT instead (0: any free port)")
    parser.add_argument("--transport", metavar="KIND", choices=TRANSPORTS, default="udp",
                        help="how orders leave the card: tcp (the card's TCP engine, docs/tcp.md) "
                             "or udp (a datagram per packet, relayed by the host) (default: %(default)s)")

    parser.add_argument("--tap", metavar="NAME", default=None,
                        help="with --transport tcp: connect the card's order port to a new TAP "
                             "interface NAME (root, /dev/net/tun); the host's connection manager "
                             "drives the card's TCP engine over the socket (docs/tcp.md)")
    parser.add_argument("--netns", metavar="NS", default=None,
                        help="create the TAP inside existing network namespace NS")

    def run(args: Any) -> int:
        def say(text: str) -> None:
            print(f"tickwire: {text}", file=sys.stderr, flush=True)
        if args.tap is not None and args.transport != "tcp":
            raise SimCardError("--tap needs --transport tcp (the order port's receive side)")
        return serve(args.socket, args.port, announce=say, transport=args.transport, tap=args.tap,
                     netns=args.netns)
    parser.set_defaults(handler=run)
