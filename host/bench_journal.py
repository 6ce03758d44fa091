"""Journal append rate: records per second appended from Python, one at a time and in batches.

``python -m tickwire.host.bench_journal`` prints the figures; :func:`bench_journal` returns them
(``make bench`` calls it). The journal is written to a temporary folder (``/dev/shm`` when it
exists, so that the figure is the host's cost and not the disk's: appends only touch the page
cache either way, but a tmpfs also keeps the page faults of new segments cheap and steady).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from .journal import HEADER_SIZE, Journal, JournalReader, RecordType

__all__ = ["JournalBench", "bench_journal", "scratch_folder", "main"]

#: The goal of issue 8: records per second appended from the agent.
GOAL_RECORDS_PER_SECOND = 500_000


@dataclass(frozen=True)
class JournalBench:
    """Measured rates, records per second: the best of ``repeats`` runs of ``records`` records,
    by wall-clock time and by the process's CPU time (the CPU figure is the journal's own cost
    when other processes share the cores)."""

    records: int
    repeats: int
    record_bytes: int
    append_records_per_second: float
    appender_records_per_second: float
    append_many_records_per_second: float
    read_records_per_second: float
    append_cpu_records_per_second: float
    appender_cpu_records_per_second: float
    append_many_cpu_records_per_second: float
    segments: int

    @property
    def meets_goal(self) -> bool:
        """The goal counts one-at-a-time appends with :meth:`Journal.appender`, wall clock."""
        return self.appender_records_per_second >= GOAL_RECORDS_PER_SECOND

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goal_records_per_second": GOAL_RECORDS_PER_SECOND,
                "meets_goal": self.meets_goal}


def scratch_folder() -> str | None:
    """``/dev/shm`` when it exists and is writable (the benches' temporary folders), else None."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_journal(records: int = 1_000_000, *, repeats: int = 3,
                  segment_size: int = 64 << 20) -> JournalBench:
    """Append ``records`` ORDER records (the agent's commonest record, 47 bytes on disk) three
    ways: :meth:`Journal.append`, a :meth:`Journal.appender` function, and
    :meth:`Journal.append_many`; ``repeats`` times each, the best rates are returned, with the
    rate of reading the records back (CRCs checked)."""
    if records < 1 or repeats < 1:
        raise ValueError(f"records and repeats must be at least 1, not {records}, {repeats}")
    order = RecordType.ORDER
    rows = [(i & 0xFFFFFFFF, i % 4, b"B", b"AAPL    ", 100, 1_234_500) for i in range(records)]
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    segments = record_bytes = 0

    def note(name: str, times: tuple[float, float]) -> None:
        wall[name] = max(wall.get(name, 0.0), records / max(times[0], 1e-9))
        cpu[name] = max(cpu.get(name, 0.0), records / max(times[1], 1e-9))

    for run in range(repeats):
        with tempfile.TemporaryDirectory(prefix="tickwire-bench-",
                                         dir=scratch_folder()) as folder:
            def path(name: str) -> str:
                return os.path.join(folder, name)

            with Journal(path("append"), segment_size=segment_size) as journal:
                def by_append(append: Callable[..., int] = journal.append) -> None:
                    for row in rows:
                        append(order, *row)
                note("append", _timed(by_append))
            with Journal(path("appender"), segment_size=segment_size) as journal:
                def by_appender(append: Callable[..., int] = journal.appender(order)) -> None:
                    for row in rows:
                        append(*row)
                note("appender", _timed(by_appender))
                record_bytes = (journal._end - HEADER_SIZE) // max(1, journal.next_index)
                segments = journal._segment_number + 1
            with Journal(path("many"), segment_size=segment_size) as journal:
                note("many", _timed(lambda: journal.append_many(order, rows)))
            count = 0

            def read() -> None:
                nonlocal count
                count = sum(1 for _ in JournalReader(path("many")))
            note("read", _timed(read))
            if count != records:
                raise RuntimeError(f"read back {count} records, wrote {records}")
    return JournalBench(
        records=records, repeats=repeats, record_bytes=record_bytes,
        append_records_per_second=wall["append"],
        appender_records_per_second=wall["appender"],
        append_many_records_per_second=wall["many"], read_records_per_second=wall["read"],
        append_cpu_records_per_second=cpu["append"],
        appender_cpu_records_per_second=cpu["appender"],
        append_many_cpu_records_per_second=cpu["many"], segments=segments)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.host.bench_journal",
                                     description="Measure the journal's append rate.")
    parser.add_argument("--records", metavar="N", type=int, default=1_000_000,
                        help="records per run (default: %(default)s)")
    parser.add_argument("--repeats", metavar="N", type=int, default=3,
                        help="runs; the best is reported (default: %(default)s)")
    args = parser.parse_args(argv)
    result = bench_journal(args.records, repeats=args.repeats)
    print(f"journal: {result.records:,} ORDER records of {result.record_bytes} bytes, best of "
          f"{result.repeats}")
    print(f"{'':14}{'wall clock':>14}{'CPU time':>14}  records/s")
    for name, wall, cpu in (
            ("append", result.append_records_per_second, result.append_cpu_records_per_second),
            ("appender", result.appender_records_per_second,
             result.appender_cpu_records_per_second),
            ("append_many", result.append_many_records_per_second,
             result.append_many_cpu_records_per_second)):
        print(f"  {name:<12}{wall:>14,.0f}{cpu:>14,.0f}")
    print(f"  {'read':<12}{result.read_records_per_second:>14,.0f}")
    print(f"goal: {GOAL_RECORDS_PER_SECOND:,} records/s one at a time (appender, wall clock): "
          f"{'met' if result.meets_goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
