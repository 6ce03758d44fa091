"""Prometheus metrics of the host agent: counters and latency histograms fed from its events.

Each :class:`AgentMetrics` owns its own ``CollectorRegistry`` (never the process-wide default),
so that two agents, or the tests, do not share counters. Events are the journal's records
(:class:`tickwire.host.journal.Record`): :meth:`AgentMetrics.observe` counts them, measures the
time from an order to its acknowledgement and first fill (nanosecond timestamps of the records),
and keeps position and P&L gauges when given a :class:`~tickwire.host.positions.Positions`.
Card latencies (tick-to-trade and the like, in core clock cycles) come in through
:meth:`AgentMetrics.card_latency`. :func:`serve` exposes the registry over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["AgentMetrics", "serve", "LATENCY_BUCKETS", "CARD_LATENCY_BUCKETS"]

logger = logging.getLogger(__name__)

#: Host-side latencies, seconds: 10 us .. 10 s.
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                   5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Card latencies, seconds: 50 ns .. 100 us.
CARD_LATENCY_BUCKETS = (5e-8, 1e-7, 2e-7, 3e-7, 5e-7, 7.5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 1e-4)
#: Orders remembered for latency matching; the oldest are forgotten beyond this.
PENDING_LIMIT = 100_000
PREFIX = "tickwire"


class AgentMetrics:
    """The agent's metrics in a registry of their own (:attr:`registry`).

    Parameters
    ----------
    session_names : mapping, optional
        Session number -> name for the ``session`` label (default: the number).
    clock_hz : int
        Core clock of the card, to turn latencies in cycles into seconds.
    """

    def __init__(self, *, session_names: dict[int, str] | None = None,
                 clock_hz: int = 156_250_000) -> None:
        if clock_hz <= 0:
            raise ValueError(f"clock_hz must be positive, not {clock_hz!r}")
        self.registry = CollectorRegistry(auto_describe=True)
        self.session_names = dict(session_names or {})
        self.clock_hz = clock_hz
        r = self.registry
        self.records = Counter(f"{PREFIX}_journal_records", "Records journalled, by type",
                               ["type"], registry=r)
        self.orders = Counter(f"{PREFIX}_orders", "Orders sent", ["session"], registry=r)
        self.rejects = Counter(f"{PREFIX}_rejects", "Orders rejected, by source and reason",
                               ["session", "source", "reason"], registry=r)
        self.acks = Counter(f"{PREFIX}_acks", "Orders acknowledged", ["session"], registry=r)
        self.fills = Counter(f"{PREFIX}_fills", "Executions", ["session"], registry=r)
        self.filled_shares = Counter(f"{PREFIX}_filled_shares", "Shares executed",
                                     ["session", "side"], registry=r)
        self.cancels = Counter(f"{PREFIX}_cancels", "Cancellations", ["session"], registry=r)
        self.kills = Counter(f"{PREFIX}_kills", "Kill switch set", registry=r)
        self.alerts = Counter(f"{PREFIX}_alerts", "Alerts raised, by code", ["code"], registry=r)
        self.feed_gaps = Counter(f"{PREFIX}_feed_gaps", "Sequence gaps seen on the feed",
                                 registry=r)
        self.order_to_ack = Histogram(f"{PREFIX}_order_to_ack_seconds",
                                      "Order sent to exchange acknowledgement",
                                      ["session"], buckets=LATENCY_BUCKETS, registry=r)
        self.order_to_fill = Histogram(f"{PREFIX}_order_to_first_fill_seconds",
                                       "Order sent to its first execution",
                                       ["session"], buckets=LATENCY_BUCKETS, registry=r)
        self.card_latency_seconds = Histogram(f"{PREFIX}_card_latency_seconds",
                                              "Latency measured on the card, by stage",
                                              ["stage"], buckets=CARD_LATENCY_BUCKETS, registry=r)
        self.killed = Gauge(f"{PREFIX}_killed", "1 while the kill switch is set", registry=r)
        self.position = Gauge(f"{PREFIX}_position_shares", "Position",
                              ["session", "symbol"], registry=r)
        self.realized = Gauge(f"{PREFIX}_realized_pnl", "Realized P&L, currency units",
                              ["session", "symbol"], registry=r)
        self.unrealized = Gauge(f"{PREFIX}_unrealized_pnl", "Unrealized P&L, currency units",
                                ["session", "symbol"], registry=r)
        self.open_notional = Gauge(f"{PREFIX}_gross_open_notional",
                                   "Gross open notional, currency units",
                                   ["session", "symbol"], registry=r)
        # (session, user_ref_num) -> [order timestamp_ns, acknowledged, filled, side]
        self._pending: OrderedDict[tuple[int, int], list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _session(self, number: int) -> str:
        return self.session_names.get(number, str(number))

    def observe(self, record: Any) -> None:
        """Count one journal record and update the latencies it completes."""
        from .journal import REJECT_SOURCE_RISK, RecordType
        t, f = record.type, record.fields
        name = t.name.lower() if isinstance(t, RecordType) else str(t)
        self.records.labels(name).inc()
        with self._lock:
            if t == RecordType.ORDER:
                self.orders.labels(self._session(f["session"])).inc()
                self._pending[(f["session"], f["user_ref_num"])] = [record.timestamp_ns, False,
                                                                     False, f["side"]]
                while len(self._pending) > PENDING_LIMIT:
                    self._pending.popitem(last=False)
            elif t == RecordType.ACK:
                session = self._session(f["session"])
                self.acks.labels(session).inc()
                pending = self._pending.get((f["session"], f["user_ref_num"]))
                if pending is not None and not pending[1]:
                    pending[1] = True
                    self.order_to_ack.labels(session).observe(
                        max(0, record.timestamp_ns - pending[0]) / 1e9)
            elif t == RecordType.FILL:
                session = self._session(f["session"])
                self.fills.labels(session).inc()
                key = (f["session"], f["user_ref_num"])
                pending = self._pending.get(key)
                if pending is not None and not pending[2]:
                    pending[2] = True
                    self.order_to_fill.labels(session).observe(
                        max(0, record.timestamp_ns - pending[0]) / 1e9)
                side = pending[3] if pending is not None else "unknown"
                self.filled_shares.labels(session, side).inc(f["quantity"])
            elif t == RecordType.REJECT:
                source = "risk" if f["source"] == REJECT_SOURCE_RISK else "exchange"
                self.rejects.labels(self._session(f["session"]), source, str(f["reason"])).inc()
                self._pending.pop((f["session"], f["user_ref_num"]), None)
            elif t == RecordType.CANCEL:
                self.cancels.labels(self._session(f["session"])).inc()
            elif t == RecordType.KILL:
                self.kills.inc()
                self.killed.set(1)
            elif t == RecordType.UNKILL:
                self.killed.set(0)
            elif t == RecordType.ALERT:
                self.alerts.labels(str(f["code"])).inc()

    def feed_gap(self, count: int = 1) -> None:
        self.feed_gaps.inc(count)

    def card_latency(self, stage: str, cycles: int) -> None:
        """A latency the card measured, in core clock cycles (e.g. ``"tick_to_trade"``)."""
        if cycles < 0:
            raise ValueError(f"latency of {stage} is negative: {cycles} cycles")
        self.card_latency_seconds.labels(stage).observe(cycles / self.clock_hz)

    def update_positions(self, positions: Any) -> None:
        """Set the position and P&L gauges from a :class:`Positions` (call it now and then)."""
        from .positions import PRICE_SCALE
        for row in positions.summary():
            labels = (self._session(row["session"]), row["symbol"])
            self.position.labels(*labels).set(row["position"])
            self.realized.labels(*labels).set(row["realized"] / PRICE_SCALE)
            self.unrealized.labels(*labels).set((row["unrealized"] or 0) / PRICE_SCALE)
            self.open_notional.labels(*labels).set(row["gross_open_notional"] / PRICE_SCALE)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's current value from the registry (for tests and the status command)."""
        return self.registry.get_sample_value(name, labels or {})


def serve(metrics: AgentMetrics, port: int, host: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serve ``metrics`` at ``http://host:port/metrics`` from a daemon thread; ``port`` 0 picks a
    free one (``server.server_port``). Returns ``(server, thread)``; stop with
    ``server.shutdown(); server.server_close()``."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, not {port}")
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server, thread
