"""The host agent (``tickwire run --config FILE``): applies the config, then keeps the card's
order sessions, journal, positions and P&L, reconciliation, gap recovery and control socket.

Start-up, in this order, each step failing with one :class:`tickwire.host.errors.TickwireError`
that says what is wrong and leaving nothing half done: read and check the config file
(:mod:`tickwire.host.appconfig`); open the journal (one agent per journal: its lock); bind the
control socket (refused when another agent serves there); open the card through the config's
driver (:class:`tickwire.host.card.Card`: driver unavailable, card not answering, wrong card);
rebuild positions from the journal; apply the config's register writes, all or nothing, each one
journalled as a CONFIG_CHANGE; start the metrics endpoint and the order sessions.

Then one thread (:meth:`Agent.run`) does everything that touches the journal, so the journal has
its single writer; the order sessions' threads and the control socket's threads hand it work
through a queue. Each turn it takes the frames the card sent on its order port, the card's events,
the exchange's messages, the control requests and the retransmissions that came back:

* card ``ORDER_SENT`` + the order frame: ORDER journalled, positions, the OUCH packet forwarded on
  the order session (SoupBinTCP Unsequenced Data, :mod:`tickwire.host.order_session`); a session
  that is down makes it an exchange REJECT (reason :data:`REJECT_SESSION_DOWN`) and an ALERT;
* card ``RISK_REJECT``: REJECT (source risk, the card's reason code);
* card ``GAP``: a MoldUDP64 retransmission request to the re-request server, answers injected into
  the card (``inject`` port); ``BOOK_UNTRUSTED``: an ALERT; ``LATENCY``: the card latency histogram;
* exchange messages (OUCH 5.0 outbound): ACK, FILL, CANCEL, REJECT, REPLACE journalled, positions
  updated, and the card's exposure told: through its ``i_inbound`` port when it has one (the raw
  session bytes go there), else through the ``order_entry.exposure_*`` registers;
* every ``reconcile_interval`` seconds when the card has been quiet: top of book of every tracked
  symbol (BBO journalled when it changed: the mark for unrealized P&L) and the card's exposure per
  slot (``risk.position``, ``open_buy_quantity``, ``open_sell_quantity``) against the positions;
  a mismatch seen twice in a row is an ALERT (journalled once per distinct mismatch).

Restart: positions come back from the journal (:meth:`Positions.from_records`); each session's
next sequence number is kept in ``<journal>/sessions/<name>.seq`` (written after the message is
journalled, so after ``kill -9`` at most the message being handled is received again: repeated
executions are recognised by their match number).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tickwire.protocols import moldudp64, ouch, soupbintcp
from tickwire.protocols.events import Event, EventFlag, EventType
from tickwire.protocols.net import FCS_LENGTH, UDP_PAYLOAD_OFFSET
from tickwire.protocols.risk import ExposureUpdateKind, RejectReason

from .errors import TickwireError
from .journal import (ALL_SESSIONS, REJECT_SOURCE_EXCHANGE, REJECT_SOURCE_RISK, SCHEMAS,
                      Journal, JournalReader, Record, RecordType)
from .positions import Positions, PositionsError

__all__ = ["Agent", "AgentOptions", "AgentError", "AlertCode", "REJECT_SESSION_DOWN",
           "default_control_path"]

logger = logging.getLogger(__name__)

#: Exchange REJECT reason the agent records when it could not send an order (session down).
REJECT_SESSION_DOWN = 0xFFFF
#: Alert severities.
INFO, WARNING, CRITICAL = 0, 1, 2


class AlertCode:
    """ALERT record codes."""

    RECONCILE = 1        #: card exposure and host positions differ
    FEED_GAP = 2         #: the card reported a feed gap
    BOOK_UNTRUSTED = 3   #: the card's book stopped vouching for a symbol
    SESSION = 4          #: an order session went down, was rejected or ended
    ORDER_NOT_SENT = 5   #: an order could not be forwarded to the exchange
    UNKNOWN_ORDER = 6    #: an exchange message or fill for an order the host does not know
    CARD = 7             #: the card misbehaved (lost events, errors reading it)
    CONFIG = 8           #: config applied


class AgentError(TickwireError):
    """The agent cannot start or run (the message says why)."""


def default_control_path() -> str:
    """``$XDG_RUNTIME_DIR/tickwire-agent.sock``, else ``/tmp/tickwire-agent-<uid>.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "tickwire-agent.sock")
    return f"/tmp/tickwire-agent-{os.getuid()}.sock"


@dataclasses.dataclass
class AgentOptions:
    """What ``tickwire run`` takes besides the config file."""

    config: Path
    journal: Path
    control: str = dataclasses.field(default_factory=default_control_path)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    rerequest: tuple[str, int] | None = None
    feed_session: str = ""
    reconcile_interval: float = 1.0
    heartbeat_interval: float = 1.0
    server_timeout: float = 15.0
    order_timeout: float = 5.0
    apply_config: bool = True


@dataclasses.dataclass
class _Sent:
    """A card ORDER_SENT waiting for its order frame."""

    session: int
    action: str
    user_ref_num: int
    side: str
    quantity: int
    price: int
    host: bool


@dataclasses.dataclass
class _Waiter:
    """A host order sent from the control socket, waiting for the card's verdict."""

    session: int
    side: str
    quantity: int
    price: int
    deadline: float
    reply: Callable[[dict[str, Any]], None]


class Agent:
    """The agent; :meth:`start` (set-up, may raise), :meth:`run` (the loop), :meth:`close`."""

    def __init__(self, options: AgentOptions, *,
                 open_card: Callable[[Any, Any], Any] | None = None) -> None:
        self.options = options
        self._open_card = open_card   # (driver config, register map) -> Card; Card.open if None
        self.config: Any = None
        self.regmap: Any = None
        self.card: Any = None
        self.journal: Journal | None = None
        self.positions = Positions()
        self.metrics: Any = None
        self.sessions: dict[int, Any] = {}
        self._sequence_files: dict[int, Any] = {}
        self._control: Any = None
        self._metrics_server: Any = None
        self._rerequest_sock: socket.socket | None = None
        self._queue: queue.Queue = queue.Queue()
        self._appenders: dict[RecordType, tuple[Any, tuple[str, ...], frozenset[str]]] = {}
        self._stop = threading.Event()
        self._sent: collections.deque[_Sent] = collections.deque(maxlen=65536)
        self._waiters: list[_Waiter] = []
        self._match_numbers: set[tuple[int, int]] = set()
        self._last_bbo: dict[str, tuple[int, int]] = {}
        self._slots: dict[str, int] = {}
        self._reconcile_seen: dict[str, tuple] = {}
        self._alerted: set[tuple] = set()
        self._last_activity = 0.0
        self._next_reconcile = 0.0
        self.started_ns = time.time_ns()
        self.counts: collections.Counter[str] = collections.Counter()
        self.reconciliation: dict[str, Any] = {"checked": 0, "mismatches": {}}
        self.inbound_port = False
        self.killed = False
        self.killed_sessions = 0

    # -- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Everything up to the loop (see the module docstring); closes what it opened if a step
        fails."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from .appconfig import apply, load_config
        from .card import Card
        from .metrics import AgentMetrics
        from .regmap import RegisterMap
        o = self.options
        self.config = load_config(o.config)
        self.regmap = RegisterMap.load(self.config.card.map)
        self._slots = {symbol: k for k, symbol in enumerate(self.config.tracked)}
        self.journal = Journal(o.journal)
        self._rebuild()
        from .control import ControlServer
        self._control = ControlServer(o.control, self.submit)
        self.card = (self._open_card or Card.open)(self.config.card.driver_config(), self.regmap)
        driver = self.card.driver
        self.inbound_port = "inbound" in getattr(driver, "send_ports", ())
        if o.apply_config:
            changes = apply(self.config.writes, self.card, self.regmap, journal=self.journal)
            self.counts["config_changes"] += len(changes)
            logger.info("config %s applied: %d register(s) written", self.config.source,
                        len(changes))
        self.killed = bool(self.card.read("risk.kill")) if "risk.kill" in self.regmap else False
        if "risk.kill_session" in self.regmap:
            self.killed_sessions = self.card.read("risk.kill_session")
        self.metrics = AgentMetrics(session_names={s.number: s.name
                                                   for s in self.config.sessions})
        self.metrics.killed.set(int(self.killed))
        if o.metrics_port is not None:
            from .metrics import serve
            self._metrics_server, _ = serve(self.metrics, o.metrics_port, o.metrics_host)
        if o.rerequest is not None:
            self._rerequest_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._rerequest_sock.bind((o.metrics_host, 0))
            self._rerequest_sock.setblocking(False)
        self._start_sessions()
        self._control.start()
        logger.info("agent up: card %r, journal %s (%d records), control %s", self.card,
                    o.journal, self.journal.next_index, o.control)

    def _rebuild(self) -> None:
        """Positions, executions seen and kill state from the journal."""
        assert self.journal is not None
        reader = JournalReader(self.options.journal)
        positions = Positions()
        problems = 0
        for record in reader.records():
            try:
                positions.apply_record(record)
            except PositionsError as e:
                problems += 1
                logger.warning("journal record %d: %s", record.index, e)
            if record.type == RecordType.FILL:
                self._match_numbers.add((record.fields["session"],
                                         record.fields["match_number"]))
            self.counts[f"journal_{record.type.name.lower()}"] += 1
        self.positions = positions
        self.counts["rebuilt_records"] = reader.count()
        if problems:
            logger.warning("%d journal records did not fit the positions", problems)

    def _start_sessions(self) -> None:
        from .order_session import OrderSession, SequenceFile
        o = self.options
        for config in self.config.sessions:
            seq = SequenceFile(Path(o.journal) / "sessions" / f"{config.name}.seq")
            self._sequence_files[config.number] = seq
            session = OrderSession(config, self._from_session, first_sequence=seq.next,
                                   heartbeat_interval=o.heartbeat_interval,
                                   server_timeout=o.server_timeout)
            self.sessions[config.number] = session
            session.start()

    # -- hand-over from other threads -----------------------------------------------------------

    def submit(self, command: str, args: dict[str, Any],
               reply: Callable[[dict[str, Any]], None]) -> None:
        """A control request (from the control socket's threads), answered through ``reply``."""
        self._queue.put(("control", command, args, reply))

    def _from_session(self, kind: str, session: Any, value: Any) -> None:
        self._queue.put(("session", kind, session, value))

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("wake",))

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT through the CLI)."""
        frames_offered = "frames" in getattr(self.card.driver, "capabilities", ())
        while not self._stop.is_set():
            busy = False
            frames = (self.card.driver.receive_frames(timeout=0, limit=1024)
                      if frames_offered else [])
            events = self.card.events(limit=4096)
            for event in events:
                self._on_event(event)
            for frame in frames:
                self._on_order_frame(frame)
            if events or frames:
                busy = True
            busy |= self._drain(0.0 if busy else 0.005)
            busy |= self._poll_retransmissions()
            now = time.monotonic()
            if busy:
                self._last_activity = now
            self._expire_waiters(now)
            if now >= self._next_reconcile and now - self._last_activity > 0.2:
                self._next_reconcile = now + self.options.reconcile_interval
                self._periodic()

    def _drain(self, wait: float) -> bool:
        try:
            item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
        except queue.Empty:
            return False
        did = False
        while True:
            if item[0] == "session":
                self._on_session(*item[1:])
                did = True
            elif item[0] == "control":  # not card activity: reconciliation may still run
                self._on_control(*item[1:])
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return did

    # -- journal --------------------------------------------------------------------------------

    def _record(self, record_type: RecordType, **fields: Any) -> int:
        """Journal one record (with its ns timestamp) and count it in the metrics. Types without
        a text go through the journal's per-type ``appender`` (the fast path)."""
        journal = self.journal
        assert journal is not None
        now = time.time_ns()
        fast = self._appenders.get(record_type)
        if fast is None:
            schema = SCHEMAS[record_type]
            if schema.text:
                fast = (None, (), ())
            else:
                codes = schema.fields
                fast = (journal.appender(record_type), tuple(n for n, _ in codes),
                        frozenset(n for n, c in codes if c.endswith("s") or c == "c"))
            self._appenders[record_type] = fast
        append, names, text_fields = fast
        if append is None:
            index = journal.write(record_type, timestamp_ns=now, **fields)
        else:
            index = append(*[fields[n].encode("ascii") if n in text_fields
                             and isinstance(fields[n], str) else fields[n] for n in names],
                           timestamp_ns=now)
        self.metrics.observe(Record(index, now, record_type, fields))
        self.counts["journalled"] += 1
        return index

    def alert(self, severity: int, code: int, message: str) -> None:
        log = logger.error if severity >= CRITICAL else (logger.warning if severity else
                                                           logger.info)
        log("alert %d: %s", code, message)
        self._record(RecordType.ALERT, severity=severity, code=code, message=message)

    # -- card events ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.counts["events"] += 1
        t = event.type
        if t == EventType.ORDER_SENT:
            self._sent.append(_Sent(event["session"], chr(event["action"]), event["user_ref_num"],
                                    chr(event["side"] or 32), event["quantity"], event["price"],
                                    bool(event.flags & EventFlag.HOST)))
            if self._waiters:
                self._resolve_waiter(event, {"accepted": True,
                                             "user_ref_num": event["user_ref_num"]})
        elif t == EventType.RISK_REJECT:
            reason = event["reason"]
            self._record(RecordType.REJECT, user_ref_num=0, session=event["session"],
                         source=REJECT_SOURCE_RISK, reason=reason)
            if self._waiters:
                try:
                    name = RejectReason(reason).name
                except ValueError:
                    name = str(reason)
                self._resolve_waiter(event, {"accepted": False, "reason": name,
                                             "reason_code": reason})
        elif t == EventType.GAP:
            self.metrics.feed_gap()
            self.counts["gaps"] += 1
            first, count = event["sequence_number"], event["message_count"]
            self.alert(INFO, AlertCode.FEED_GAP,
                       f"feed gap: {count} message(s) from sequence {first}")
            self._request_retransmission(first, count)
        elif t == EventType.BOOK_UNTRUSTED:
            self.alert(WARNING, AlertCode.BOOK_UNTRUSTED,
                       f"book slot {event['slot']} (locate {event['stock_locate']}): "
                       f"event kind {event['reason']}")
        elif t == EventType.LATENCY:
            cycles = event.cycles - event["ingress_cycles"]
            if cycles >= 0:
                self.metrics.card_latency("tick_to_trade", cycles)
        else:  # EXCHANGE_ACK, FILL, CANCEL: the agent hears them from the session itself
            self.counts[f"card_{t.name.lower()}"] += 1

    def _resolve_waiter(self, event: Event, answer: dict[str, Any]) -> None:
        if not event.flags & EventFlag.HOST:
            return
        side = chr(event["side"]) if event["side"] else ""
        for waiter in self._waiters:
            if (waiter.session, waiter.side, waiter.quantity, waiter.price) == \
                    (event["session"], side, event["quantity"], event["price"]):
                self._waiters.remove(waiter)
                waiter.reply({"ok": True, "result": answer})
                return

    def _expire_waiters(self, now: float) -> None:
        for waiter in [w for w in self._waiters if w.deadline <= now]:
            self._waiters.remove(waiter)
            waiter.reply({"ok": False, "error": "the card gave no verdict on the order in "
                                                f"{self.options.order_timeout:g} s"})

    # -- orders leaving the card ----------------------------------------------------------------

    def _on_order_frame(self, frame: Any) -> None:
        self.counts["order_frames"] += 1
        payload = frame.data[UDP_PAYLOAD_OFFSET:len(frame.data) - FCS_LENGTH]
        try:
            packets, rest = soupbintcp.unframe(payload)
        except ValueError as e:
            self.alert(WARNING, AlertCode.CARD, f"order frame is not SoupBinTCP: {e}")
            return
        for packet_type, body in packets:
            if packet_type != "U":
                continue
            try:
                message = ouch.unpack_inbound(body)
            except ValueError as e:
                self.alert(WARNING, AlertCode.CARD, f"order frame: {e} ({body.hex()})")
                continue
            self._order_out(message, soupbintcp.frame("U", body))

    def _match_sent(self, action: str, user_ref_num: int) -> _Sent | None:
        for sent in self._sent:
            if sent.action == action and sent.user_ref_num == user_ref_num:
                self._sent.remove(sent)
                return sent
        return None

    def _card_session(self) -> int:
        for s in self.config.sessions:
            if s.card:
                return s.number
        return self.config.sessions[0].number if self.config.sessions else 0

    def _order_out(self, message: dict[str, Any], packet: bytes) -> None:
        action = message["message_type"]
        user_ref_num = message.get("user_ref_num", 0)
        sent = self._match_sent(action, user_ref_num)
        session = sent.session if sent is not None else self._card_session()
        if sent is None:
            logger.warning("order %s %d left the card without its ORDER_SENT event; session %d "
                           "assumed", action, user_ref_num, session)
        if action == "O":
            symbol = str(message["symbol"]).strip()
            self._record(RecordType.ORDER, user_ref_num=user_ref_num, session=session,
                         side=message["side"], symbol=symbol, quantity=message["quantity"],
                         price=message["price"])
            try:
                self.positions.order_accepted(session, user_ref_num, symbol, message["side"],
                                              message["quantity"], message["price"])
            except PositionsError as e:
                self.alert(WARNING, AlertCode.UNKNOWN_ORDER, str(e))
        order_session = self.sessions.get(session)
        try:
            if order_session is None:
                raise TickwireError(f"no order session number {session} in the config")
            order_session.send(packet)
            self.counts["orders_forwarded"] += 1
        except TickwireError as e:
            self.alert(CRITICAL, AlertCode.ORDER_NOT_SENT,
                       f"order {action} {user_ref_num} of session {session} not sent: {e}")
            if action == "O":
                self._exchange_reject(session, user_ref_num, REJECT_SESSION_DOWN)

    # -- the exchange ---------------------------------------------------------------------------

    def _on_session(self, kind: str, session: Any, value: Any) -> None:
        if kind == "bytes":
            self.counts["session_bytes"] += len(value)
            if self.inbound_port and session.number == self._card_session():
                try:
                    self.card.driver.send_frame("inbound", value)
                except TickwireError as e:
                    self.alert(WARNING, AlertCode.CARD, f"inbound port: {e}")
        elif kind == "sequenced":
            sequence, payload = value
            self._on_exchange(session.number, payload)
            self._sequence_files[session.number].next = sequence + 1
        elif kind == "state":
            severity = INFO if value == "up" else WARNING
            self.alert(severity, AlertCode.SESSION, f"order session {session.name}: {value}")

    def _on_exchange(self, session: int, payload: bytes) -> None:
        self.counts["exchange_messages"] += 1
        try:
            m = ouch.unpack_outbound(payload)
        except ValueError as e:
            self.alert(WARNING, AlertCode.UNKNOWN_ORDER, f"session {session}: {e}")
            return
        t = m["message_type"]
        p = self.positions
        if t in ("A", "E", "C", "D") and (session, m["user_ref_num"]) not in p.orders:
            # the journal keeps only what fits the orders it holds, so a replay never breaks
            self.alert(CRITICAL, AlertCode.UNKNOWN_ORDER,
                       f"session {session}: OUCH {t!r} for order {m['user_ref_num']}, which the "
                       f"host does not hold open: {m}")
            return
        try:
            if t == "A":
                self._record(RecordType.ACK, user_ref_num=m["user_ref_num"], session=session,
                             order_reference_number=m["order_reference_number"],
                             quantity=m["quantity"], price=m["price"])
                p.acknowledged(session, m["user_ref_num"], m["order_reference_number"])
            elif t == "E":
                key = (session, m["match_number"])
                if key in self._match_numbers:
                    logger.info("execution %d of session %d already journalled", key[1], session)
                    return
                self._match_numbers.add(key)
                order = p.orders.get((session, m["user_ref_num"]))
                self._record(RecordType.FILL, user_ref_num=m["user_ref_num"], session=session,
                             match_number=m["match_number"], quantity=m["quantity"],
                             price=m["price"], liquidity_flag=m["liquidity_flag"])
                p.filled(session, m["user_ref_num"], m["quantity"], m["price"])
                if order is not None:
                    self._exposure(ExposureUpdateKind.EXECUTION, order, m["quantity"])
                    if order.open_quantity == 0:
                        self._exposure(ExposureUpdateKind.DONE, order, 0)
            elif t in ("C", "D"):
                quantity = m["quantity"] if t == "C" else m["decrement_shares"]
                order = p.orders.get((session, m["user_ref_num"]))
                self._record(RecordType.CANCEL, user_ref_num=m["user_ref_num"], session=session,
                             quantity=quantity, reason=m["reason"])
                p.cancelled(session, m["user_ref_num"], quantity)
                if order is not None:
                    self._exposure(ExposureUpdateKind.CANCEL, order, quantity)
                    if order.open_quantity == 0:
                        self._exposure(ExposureUpdateKind.DONE, order, 0)
            elif t == "J":
                self._exchange_reject(session, m["user_ref_num"], m["reason"])
            elif t == "U":
                self._record(RecordType.REPLACE, user_ref_num=m["user_ref_num"], session=session,
                             previous_user_ref_num=m["orig_user_ref_num"],
                             quantity=m["quantity"], price=m["price"],
                             order_reference_number=m["order_reference_number"])
                p.replaced(session, m["orig_user_ref_num"], m["user_ref_num"], m["quantity"],
                           m["price"], m["order_reference_number"])
            elif t == "M":
                order = p.orders.get((session, m["user_ref_num"]))
                if order is not None and m["quantity"] < order.open_quantity:
                    taken = order.open_quantity - m["quantity"]
                    self._record(RecordType.CANCEL, user_ref_num=m["user_ref_num"],
                                 session=session, quantity=taken, reason="M")
                    p.cancelled(session, m["user_ref_num"], taken)
                    self._exposure(ExposureUpdateKind.CANCEL, order, taken)
                    if order.open_quantity == 0:
                        self._exposure(ExposureUpdateKind.DONE, order, 0)
            elif t == "B":
                self.alert(CRITICAL, AlertCode.UNKNOWN_ORDER,
                           f"session {session}: execution {m['match_number']} of order "
                           f"{m['user_ref_num']} broken by the exchange (reason {m['reason']})")
            else:
                logger.debug("session %d: OUCH %r %s", session, t, m)
        except PositionsError as e:
            self.alert(WARNING, AlertCode.UNKNOWN_ORDER, f"session {session}: {e}")

    def _exchange_reject(self, session: int, user_ref_num: int, reason: int) -> None:
        order = self.positions.orders.get((session, user_ref_num))
        self._record(RecordType.REJECT, user_ref_num=user_ref_num, session=session,
                     source=REJECT_SOURCE_EXCHANGE, reason=reason)
        self.positions.rejected(session, user_ref_num)
        if order is not None:
            self._exposure(ExposureUpdateKind.REJECT, order, order.open_quantity)

    def _exposure(self, kind: ExposureUpdateKind, order: Any, quantity: int) -> None:
        """Tell the card's risk stage what the exchange did to an order (unless the card hears
        the session itself through its inbound port)."""
        if "order_entry.exposure_submit" not in self.regmap or (
                self.inbound_port and order.session == self._card_session()):
            return  # the card follows its own session through i_inbound
        slot = self._slots.get(order.symbol)
        if slot is None:
            self.alert(WARNING, AlertCode.RECONCILE, f"order {order.user_ref_num}: symbol "
                                                     f"{order.symbol!r} is not tracked; the "
                                                     f"card's exposure cannot follow it")
            return
        values = {"kind": int(kind), "session": order.session, "slot": slot,
                  "side": ord(order.side), "quantity": quantity, "price": order.price,
                  "user_ref_num": order.user_ref_num}
        card = self.card
        with card._lock:
            for name, value in values.items():
                register = f"order_entry.exposure_{name}"
                if register in self.regmap:
                    card.write(register, value)
            card.write("order_entry.exposure_submit", 1)
        self.counts["exposure_updates"] += 1

    # -- gaps -----------------------------------------------------------------------------------

    def _request_retransmission(self, first: int, count: int) -> None:
        if self._rerequest_sock is None or self.options.rerequest is None:
            logger.warning("feed gap of %d from %d: no re-request server configured", count, first)
            return
        request = moldudp64.REQUEST.pack(session=self.options.feed_session.ljust(10),
                                         sequence_number=first, message_count=min(count, 0xFFFE))
        try:
            self._rerequest_sock.sendto(request, self.options.rerequest)
            self.counts["retransmission_requests"] += 1
        except OSError as e:
            self.alert(WARNING, AlertCode.FEED_GAP, f"retransmission request failed: {e}")

    def _poll_retransmissions(self) -> bool:
        sock = self._rerequest_sock
        if sock is None:
            return False
        got = False
        for _ in range(64):
            try:
                datagram, _ = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                logger.warning("re-request socket: %s", e)
                break
            got = True
            try:
                self.card.driver.send_frame("inject", datagram)
                self.counts["retransmissions_injected"] += 1
            except TickwireError as e:
                self.alert(WARNING, AlertCode.FEED_GAP, f"injecting a retransmission: {e}")
        return got

    # -- periodic: marks and reconciliation -----------------------------------------------------

    def _periodic(self) -> None:
        try:
            self._marks()
            self._reconcile()
        except TickwireError as e:
            self.alert(WARNING, AlertCode.CARD, f"reading the card: {e}")
        self.metrics.update_positions(self.positions)

    def _marks(self) -> None:
        if "book.lookup_slot" not in self.regmap:
            return
        card = self.card
        for symbol, slot in self._slots.items():
            with card._lock:
                card.write("book.lookup_slot", slot)
                bid = card.read("book.lookup_bid_price")
                ask = card.read("book.lookup_ask_price")
            if self._last_bbo.get(symbol) != (bid, ask):
                self._last_bbo[symbol] = (bid, ask)
                self._record(RecordType.BBO, symbol=symbol, bid=bid, ask=ask, bid_size=0,
                             ask_size=0)
                self.positions.quote(symbol, bid, ask)

    def card_exposure(self) -> dict[str, dict[str, int]]:
        """Per tracked symbol: the card's position and open quantities (risk, per slot)."""
        out = {}
        card = self.card
        for symbol, slot in self._slots.items():
            row = {}
            for name in ("position", "open_buy_quantity", "open_sell_quantity", "open_orders"):
                register = self.regmap[f"risk.{name}"] if f"risk.{name}" in self.regmap else None
                if register is None:
                    continue
                value = card.read(register.qualified_name, slot)
                if name == "position" and value >> (register.width - 1):
                    value -= 1 << register.width
                row[name] = value
            out[symbol] = row
        return out

    def host_exposure(self) -> dict[str, dict[str, int]]:
        out = {}
        for symbol in self._slots:
            out[symbol] = {
                "position": sum(b.position for (s, sym), b in self.positions.books.items()
                                if sym == symbol),
                "open_buy_quantity": self.positions.open_quantity("B", symbol=symbol),
                "open_sell_quantity": self.positions.open_quantity("S", symbol=symbol),
            }
        return out

    def _reconcile(self) -> None:
        if "risk.position" not in self.regmap:
            return
        card, host = self.card_exposure(), self.host_exposure()
        self.reconciliation["checked"] += 1
        mismatches = {}
        for symbol, mine in host.items():
            theirs = card.get(symbol, {})
            diff = {k: (v, theirs.get(k)) for k, v in mine.items() if theirs.get(k) != v}
            key = (symbol, tuple(sorted(mine.items())), tuple(sorted(theirs.items())))
            if not diff:
                self._reconcile_seen.pop(symbol, None)
                continue
            if self._reconcile_seen.get(symbol) != key:  # first sighting: could be in flight
                self._reconcile_seen[symbol] = key
                continue
            mismatches[symbol] = {k: {"host": h, "card": c} for k, (h, c) in diff.items()}
            if key not in self._alerted:
                self._alerted.add(key)
                text = ", ".join(f"{k} host {h} card {c}" for k, (h, c) in diff.items())
                self.alert(CRITICAL, AlertCode.RECONCILE, f"{symbol}: card exposure differs: "
                                                          f"{text}")
        self.reconciliation["mismatches"] = mismatches
        self.reconciliation["last"] = time.time_ns()

    # -- control requests -----------------------------------------------------------------------

    def _on_control(self, command: str, args: dict[str, Any],
                    reply: Callable[[dict[str, Any]], None]) -> None:
        handler = getattr(self, f"_cmd_{command.replace('-', '_')}", None)
        if handler is None:
            reply({"ok": False, "error": f"unknown command {command!r}"})
            return
        try:
            result = handler(args, reply)
        except (TickwireError, ValueError, KeyError, TypeError) as e:
            reply({"ok": False, "error": str(e)})
            return
        if result is not None:
            reply({"ok": True, "result": result})

    def _cmd_status(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        journal = self.journal
        return {
            "pid": os.getpid(), "started_ns": self.started_ns,
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3),
            "config": self.config.source, "driver": self.config.card.driver,
            "card": repr(self.card), "cycles": self.card.read("id.cycles")
            if "id.cycles" in self.regmap else None,
            "killed": self.killed, "killed_sessions": self.killed_sessions,
            "inbound_port": self.inbound_port,
            "journal": {"directory": str(self.options.journal),
                        "records": journal.next_index if journal else 0},
            "sessions": [{"name": s.name, "number": s.number, "state": s.state,
                          "logins": s.logins, "next_sequence": s.next_sequence}
                         for s in self.sessions.values()],
            "counts": dict(self.counts),
            "reconciliation": self.reconciliation,
            "control": self.options.control,
            "metrics": (f"http://{self.options.metrics_host}:"
                        f"{self._metrics_server.server_port}/metrics"
                        if self._metrics_server else None),
        }

    def _cmd_positions(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {"positions": self.positions.summary(),
                "totals": {str(k): v for k, v in self.positions.totals("session").items()},
                "bbo": {s: {"bid": b, "ask": a} for s, (b, a) in self.positions.bbo.items()}}

    def _cmd_orders(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {"orders": [dataclasses.asdict(o) for o in self.positions.orders.values()]}

    def _cmd_limits(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        card, regmap = self.card, self.regmap
        slots = []
        per_slot = [r for r in regmap.stage("risk") if r.indexed_by == "risk.limit_slot"]
        for symbol, slot in self._slots.items():
            row: dict[str, Any] = {"symbol": symbol, "slot": slot}
            for r in per_slot:
                value = card.read(r.qualified_name, slot)
                if r.name == "position" and value >> (r.width - 1):
                    value -= 1 << r.width
                row[r.name] = value
            slots.append(row)
        sessions = []
        per_session = [r for r in regmap.stage("risk") if r.indexed_by == "risk.limit_session"]
        for s in self.config.sessions:
            row = {"session": s.name, "number": s.number}
            for r in per_session:
                row[r.name] = card.read(r.qualified_name, s.number)
            sessions.append(row)
        plain = {r.name: card.read(r.qualified_name) for r in regmap.stage("risk")
                 if not r.indexed_by and r.name in ("kill", "kill_session")}
        return {"risk": plain, "slots": slots, "sessions": sessions}

    def _session_number(self, args: dict[str, Any]) -> int | None:
        name = args.get("session")
        if name is None:
            return None
        for s in self.config.sessions:
            if s.name == name or str(s.number) == str(name):
                return s.number
        raise TickwireError(f"no session {name!r} (sessions: "
                            f"{', '.join(s.name for s in self.config.sessions) or 'none'})")

    def _cmd_kill(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        session = self._session_number(args)
        reason = str(args.get("reason") or "operator (control socket)")
        if session is None:
            self.card.kill()
            self.killed = True
        else:
            mask = self.card.read("risk.kill_session") | (1 << session)
            self.card.write("risk.kill_session", mask)
            self.killed_sessions = mask
        self._record(RecordType.KILL, session=ALL_SESSIONS if session is None else session,
                     reason=reason)
        return {"killed": self.killed, "killed_sessions": self.killed_sessions}

    def _cmd_unkill(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        session = self._session_number(args)
        reason = str(args.get("reason") or "operator (control socket)")
        if session is None:
            self.card.unkill()
            self.killed = False
        else:
            mask = self.card.read("risk.kill_session") & ~(1 << session)
            self.card.write("risk.kill_session", mask)
            self.killed_sessions = mask
        self._record(RecordType.UNKILL, session=ALL_SESSIONS if session is None else session,
                     reason=reason)
        return {"killed": self.killed, "killed_sessions": self.killed_sessions}

    def _cmd_order(self, args: dict[str, Any], reply: Callable[[dict[str, Any]], None]) -> None:
        from .appconfig import symbol_value
        symbol = str(args["symbol"]).upper()
        if symbol not in self._slots:
            raise TickwireError(f"symbol {symbol} is not tracked (tracked: "
                                f"{', '.join(self._slots) or 'none'})")
        side = str(args["side"]).upper()
        if side not in ("B", "S"):
            raise TickwireError(f"side must be B or S, not {side!r}")
        quantity, price = int(args["quantity"]), int(args["price"])
        session = self._session_number(args)
        if session is None:
            session = self._card_session()
        self.card.submit_order(side=side, quantity=quantity, price=price, session=session,
                               slot=self._slots[symbol], stock=symbol_value(symbol),
                               time_in_force=ord(str(args.get("time_in_force", "0"))),
                               display=ord("Y"), capacity=ord("A"),
                               intermarket_sweep_eligibility=ord("N"), cross_type=ord("N"))
        self.counts["host_orders"] += 1
        self._waiters.append(_Waiter(session, side, quantity, price,
                                     time.monotonic() + self.options.order_timeout, reply))
        return None

    def _cmd_ping(self, args: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}

    # -- shut-down ------------------------------------------------------------------------------

    def close(self) -> None:
        """Log out of the sessions, stop the servers, close the card and the journal."""
        for session in self.sessions.values():
            session.stop()
        for seq in self._sequence_files.values():
            seq.close()
        self._sequence_files.clear()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._rerequest_sock is not None:
            self._rerequest_sock.close()
            self._rerequest_sock = None
        if self.card is not None:
            try:
                self.card.close()
            except TickwireError:
                pass
            self.card = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
