"""Agent event rate: card events per second the agent's loop takes, journals and counts.

``python -m tickwire.host.bench_agent`` prints the figures; :func:`bench_agent` returns them
(``make bench`` calls it). The agent runs as ``tickwire run`` runs it (config file, journal,
control socket, metrics), but its card is an in-memory driver whose event ring the bench fills,
so the figure is the host's cost per event and not the transport's: RISK_REJECT events (each
journalled as a REJECT record) and ORDER_SENT events (each kept to be matched with its order
frame). The journal goes to ``/dev/shm`` when it exists (see :mod:`.bench_journal`).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..protocols.events import Event, EventType
from .agent import Agent, AgentOptions
from .bench_journal import scratch_folder
from .card import Card
from .journal import JournalReader, RecordType

__all__ = ["AgentBench", "bench_agent", "main"]

_CONFIG = """
[card]
driver = "sim"
socket = "/nonexistent"

[symbols]
tracked = ["AAPL"]
"""


class _EventRing:
    """A card for the bench: registers read back what was written (0 before), the event ring
    holds what the bench queued; no order frames."""

    name = "bench"
    capabilities = frozenset({"registers", "events"})
    send_ports: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.words: collections.defaultdict[int, int] = collections.defaultdict(int)
        self.queue: collections.deque[Event] = collections.deque()

    def read(self, address: int) -> int:
        return self.words[address]

    def write(self, address: int, value: int) -> None:
        self.words[address] = value

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[Event]:
        out = []
        while self.queue and (limit is None or len(out) < limit):
            out.append(self.queue.popleft())
        return out

    def receive_frames(self, timeout: float = 0.0, limit: int | None = None) -> list[Any]:
        return []

    def send_frame(self, port: str, frame: bytes) -> None:
        raise ValueError("the bench card has no send ports")

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class AgentBench:
    """Events per second, wall clock and the process's CPU time (the loop runs in a thread of
    this process), for ``events`` events of each kind."""

    events: int
    reject_events_per_second: float
    reject_cpu_events_per_second: float
    order_sent_events_per_second: float
    order_sent_cpu_events_per_second: float
    journalled: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _feed(agent: Agent, ring: _EventRing, events: list[Event],
          timeout: float) -> tuple[float, float]:
    """Queues ``events`` and waits until the agent has taken them all; (wall, CPU) seconds."""
    before = agent.counts["events"]
    wall, cpu = time.perf_counter(), time.process_time()
    ring.queue.extend(events)
    deadline = time.monotonic() + timeout
    while agent.counts["events"] - before < len(events):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent took {agent.counts['events'] - before} of "
                               f"{len(events)} events in {timeout} s")
        time.sleep(0.001)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_agent(events: int = 100_000, *, timeout: float = 120.0) -> AgentBench:
    """Runs an agent on a fresh journal and measures ``events`` RISK_REJECT events, then
    ``events`` ORDER_SENT events. Raises ``ValueError`` for a count below 1 and
    ``TimeoutError`` if the agent falls behind by more than ``timeout`` seconds."""
    if events < 1:
        raise ValueError(f"events must be at least 1, not {events}")
    ring = _EventRing()
    with tempfile.TemporaryDirectory(prefix="tickwire-agent-bench-",
                                     dir=scratch_folder()) as tmp:
        folder = Path(tmp)
        (folder / "agent.toml").write_text(_CONFIG)
        agent = Agent(AgentOptions(config=folder / "agent.toml", journal=folder / "journal",
                                   control=str(folder / "agent.sock"), reconcile_interval=3600),
                      open_card=lambda config, regmap: Card(ring, regmap, check_identity=False))
        agent.start()
        thread = threading.Thread(target=agent.run, name="agent", daemon=True)
        thread.start()
        try:
            reject = Event(EventType.RISK_REJECT, 5, fields={
                "reason": 1, "quantity": 10, "price": 1_0000, "stock_locate": 0,
                "side": ord("B"), "session": 0, "slot": 0})
            sent = Event(EventType.ORDER_SENT, 7, fields={
                "action": ord("O"), "user_ref_num": 1, "quantity": 10, "price": 1_0000,
                "side": ord("B"), "session": 0, "slot": 0, "stock_locate": 0})
            reject_wall, reject_cpu = _feed(agent, ring, [reject] * events, timeout)
            sent_wall, sent_cpu = _feed(agent, ring, [sent] * events, timeout)
        finally:
            agent.stop()
            thread.join(timeout=10)
            agent.close()
        rejects = sum(1 for r in JournalReader(folder / "journal") if r.type == RecordType.REJECT)
    if rejects != events:
        raise RuntimeError(f"{rejects} REJECT records journalled for {events} RISK_REJECT events")
    return AgentBench(events=events, reject_events_per_second=events / reject_wall,
                      reject_cpu_events_per_second=events / max(reject_cpu, 1e-9),
                      order_sent_events_per_second=events / sent_wall,
                      order_sent_cpu_events_per_second=events / max(sent_cpu, 1e-9),
                      journalled=rejects)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.host.bench_agent",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000,
                        help="events of each kind (default: 100000)")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events must be at least 1, not {args.events}")
    b = bench_agent(args.events)
    print(f"agent: {b.reject_events_per_second:,.0f} RISK_REJECT events/s journalled "
          f"({b.reject_cpu_events_per_second:,.0f}/s of CPU time), "
          f"{b.order_sent_events_per_second:,.0f} ORDER_SENT events/s "
          f"({b.order_sent_cpu_events_per_second:,.0f}/s of CPU time); {b.events:,} of each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
