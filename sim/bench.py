"""``make bench``: measures the appliance and writes ``docs/benchmarks.md`` with a plot of the
tick-to-trade latency histogram.

Figures: tick-to-trade cycles and the sustained message rate of the whole appliance in Verilator
(a replayed feed), the native replay harness's speed on a 1,000,000-message feed (checked against
the reference decoder), the per-stage latencies of ``docs/architecture.md``, post-route Fmax and
utilization of each open-flow board's full build and of the order book on an ECP5-85F
(``tickwire.bitstreams.bench``, cached in ``build/`` by a hash of the design), the host
journal's append rate and the host agent's event rate. Each figure in the document says how it was measured.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .demo import CLOCK_MHZ, _simulate

__all__ = ["main", "measure_tick_to_trade", "measure_replay", "stage_latencies", "write_report",
           "plot_latency_histogram", "percentile"]

logger = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parent.parent
DOC = _REPO / "docs" / "benchmarks.md"
PLOT_NAME = "benchmarks-tick-to-trade.png"


def percentile(values, q):
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


# -- measurements --------------------------------------------------------------------------------

#: Risk limits of the tick-to-trade run, over the demo's defaults (sim/defaults.py): the defaults
#: allow 4 open orders and 500 shares long, so only the first few triggers would become orders;
#: raised here so that every trigger the feed causes is an order whose latency is measured.
BENCH_RISK_LIMITS = {"risk.max_open_orders[0]": 0xFFFF, "risk.max_long_position[0]": 0xFFFF_FFFF,
                     "risk.max_short_position[0]": 0xFFFF_FFFF,
                     "risk.max_open_notional[0]": (1 << 63) - 1}


def measure_tick_to_trade(messages: int, per_datagram: int, clock_mhz: float,
                          out: Path) -> dict[str, Any]:
    """The whole appliance in Verilator (``sim/tb_top.py``, the demo bench) on a generated feed
    of ``messages`` ITCH messages, ``per_datagram`` per MoldUDP64 datagram, in back-to-back
    frames, with :data:`BENCH_RISK_LIMITS`: tick-to-trade of every order, messages per cycle,
    losses."""
    t0 = time.monotonic()
    s = _simulate(out, {"TICKWIRE_DEMO_MESSAGES": str(messages),
                        "TICKWIRE_DEMO_MAX_MESSAGES": str(per_datagram),
                        "TICKWIRE_DEMO_REGISTERS": json.dumps(BENCH_RISK_LIMITS)}, clock_mhz)
    wall = time.monotonic() - t0
    c = s["counters"]
    ns = s["clock_ns"]
    lat = s["latency_cycles"]
    cycles = s["feed_cycles"]
    delivered = c["moldudp64.messages"]
    lost = s["frames_in"] - c["net_rx.frames_accepted"] + c["mac_rx.overflow"]
    figures = {
        "messages": messages, "per_datagram": per_datagram, "frames_in": s["frames_in"],
        "clock_ns": ns, "feed_cycles": cycles, "feed_bytes": s["feed_bytes"],
        "delivered": delivered, "frames_lost": lost, "messages_per_cycle": delivered / cycles,
        "latency_cycles": lat, "orders": len(lat), "matches_model": s.get("matches_model"),
        "wall_seconds": wall, "out": str(out),
    }
    if lat:
        figures["tick_to_trade"] = {"min": min(lat), "median": percentile(lat, .5),
                                    "p99": percentile(lat, .99), "max": max(lat)}
    return figures


def _replay_feed(messages: int, symbols: int, seed: int) -> Path:
    """The raw ITCH feed of the replay benchmark: generated once (~20k messages/s), kept in
    build/bench under a hash of the generator's sources."""
    from .itchfile import generate_raw_itch
    from .progress import track
    from .runner import build_root
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (
        _REPO / "sim" / "feed.py", _REPO / "protocols" / "itch.py",
        _REPO / "protocols" / "layout.py"))).hexdigest()[:12]
    feed = build_root() / "bench" / f"replay-{messages}-{symbols}-{seed}-{digest}.itch"
    if not feed.exists():
        feed.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        generate_raw_itch(feed, messages, symbols, seed, track=track)
        print(f"replay bench: generated {feed.name} in {time.monotonic() - t0:.0f} s")
    return feed


def measure_replay(messages: int, symbols: int, seed: int) -> dict[str, Any]:
    """The native replay harness (what ``tickwire sim decode`` runs) on a generated raw ITCH
    file, every record then compared field for field with the reference decoder."""
    from .itchfile import read_raw_itch
    from .progress import track
    from .replay import build_harness, compare_with_model, replay_file

    feed = _replay_feed(messages, symbols, seed)
    t0 = time.monotonic()
    harness = build_harness()
    built = time.monotonic() - t0
    run = replay_file(feed, harness=harness)
    payloads = list(track(run.raw(), messages, "replay"))
    t0 = time.monotonic()
    comparison = compare_with_model(map(harness.unpacker(), track(payloads, run.records, "compare")),
                                    read_raw_itch(feed))
    return {
        "messages": messages, "symbols": symbols, "seed": seed, "feed": feed.name,
        "feed_bytes": feed.stat().st_size, "frames": run.frames, "records": run.records,
        "cycles": run.cycles, "seconds": run.seconds, "harness_seconds": run.harness_seconds,
        "harness_cpu_seconds": run.harness_cpu_seconds, "harness_ready_seconds": built,
        "frames_lost": sum(run.lost().values()), "compared": comparison.compared,
        "equal": comparison.equal, "missing": comparison.missing, "extra": comparison.extra,
        "differences": [list(d) for d in comparison.differences][:10],
        "compare_seconds": time.monotonic() - t0,
        "ok": comparison.ok and comparison.compared == messages,
    }


def stage_latencies(doc: Path = _REPO / "docs" / "architecture.md") -> list[tuple[str, str]]:
    """(stage, latency) rows of the "Stages and latency" table of ``docs/architecture.md``."""
    rows = []
    in_section = False
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            in_section = line.strip() == "## Stages and latency"
        elif in_section and line.startswith("| ") and not line.startswith("| stage |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4:
                rows.append((cells[0], cells[-1]))
    return rows


def _measure_order_wire() -> dict[str, Any]:
    from .order_wire import measure_order_to_wire
    return measure_order_to_wire()


def _section_order_wire(figures: dict[str, Any], lines: list[str]) -> None:
    from ..hdl.top import CLOCK_HZ
    cycles = figures["cycles"]
    lines += ["## Order intent to the wire over TCP", "",
              f"**{cycles} cycles ({cycles * 1e9 / CLOCK_HZ:.1f} ns at {CLOCK_HZ / 1e6:g} MHz)** from an "
              f"order action taken by risk to the XGMII word with the /S/ of its TCP segment. Measured "
              f"with the {figures['how']}. The OUCH packet is stored whole in the TCP engine's "
              f"retransmit buffer before its segment starts, because the TCP checksum in the header "
              f"covers it (docs/tcp.md).", ""]


def _measure_journal() -> dict[str, Any]:
    from ..host.bench_journal import bench_journal
    return bench_journal().as_dict()


def _measure_agent() -> dict[str, Any]:
    from ..host.bench_agent import bench_agent
    return bench_agent().as_dict()


# -- the report ------------------------------------------------------------------------------------

def plot_latency_histogram(latencies: list[int], clock_ns: float, path: Path, title: str) -> None:
    """A histogram of tick-to-trade cycles (one bar per cycle value) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    lo, hi = min(latencies), max(latencies)
    ax.hist(latencies, bins=range(lo, hi + 2), color="#3465a4", edgecolor="#3465a4")
    for q, style in ((.5, "--"), (.99, ":")):
        ax.axvline(percentile(latencies, q), color="#cc0000", linestyle=style,
                   label=f"{'median' if q == .5 else 'p99'} {percentile(latencies, q)} cycles")
    ax.set_xlabel(f"tick-to-trade, core cycles ({clock_ns:g} ns each)")
    ax.set_ylabel("orders")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {rev}{' with uncommitted changes' if dirty else ''}"


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _section_tick_to_trade(t: dict[str, Any], lines: list[str]) -> None:
    ns = t["clock_ns"]
    lines += ["## Tick-to-trade and sustained message rate", ""]
    if "tick_to_trade" in t:
        q = t["tick_to_trade"]
        lines += ["| | min | median | p99 | max |", "|---|---|---|---|---|",
                  "| cycles | " + " | ".join(str(q[k]) for k in ("min", "median", "p99", "max")) + " |",
                  f"| ns at {1000 / ns:.2f} MHz | " + " | ".join(f"{q[k] * ns:.1f}" for k in
                                                              ("min", "median", "p99", "max")) + " |",
                  "", f"![tick-to-trade histogram]({PLOT_NAME})", ""]
    else:
        lines += ["No order left the card in this run: no tick-to-trade to measure.", ""]
    lines += [
        f"* Tick-to-trade: the whole appliance (`hdl/top.py`) in Verilator (`sim/tb_top.py`, the "
        f"`tickwire demo` bench) on a generated feed of {t['messages']:,} ITCH messages, "
        f"{t['per_datagram']} per MoldUDP64 datagram, in {t['frames_in']} back-to-back XGMII "
        f"frames; cycles from the first XGMII word of the feed frame in to the first word of the "
        f"order frame out, for each of the {t['orders']} orders the trigger sent (risk limits "
        f"on open orders, position and open notional raised so that every trigger is an order: "
        f"`BENCH_RISK_LIMITS` in `sim/bench.py`); p99 is the nearest-rank 99th percentile"
        f"{' (with fewer than 100 orders it is the maximum)' if t['orders'] < 100 else ''}. The "
        f"order frames were compared with the reference model: "
        f"{'equal byte for byte' if t['matches_model'] else 'DIFFERENT'}.",
        f"* Messages per cycle sustained: {t['delivered']:,} of {t['messages']:,} messages "
        f"delivered by the MoldUDP64 stage while the feed took {t['feed_cycles']:,} cycles on the "
        f"wire ({t['feed_bytes'] * 8 / (t['feed_cycles'] * ns):.2f} Gb/s of frame bytes): "
        f"**{t['messages_per_cycle']:.3f} messages/cycle** = "
        f"{t['delivered'] / (t['feed_cycles'] * ns) * 1e3:.1f} M messages/s at "
        f"{1000 / ns:.2f} MHz, frames lost {t['frames_lost']}. The densest legal feed (12-byte "
        f"messages) is measured by `tests/hdl/test_line_rate.py`.", ""]


def _section_replay(r: dict[str, Any], lines: list[str]) -> None:
    n = r["records"]
    lines += ["## Native replay speed", "",
              "| | seconds | messages/s |", "|---|---|---|"]
    for label, key in (("whole run, wall clock", "seconds"), ("harness, wall clock", "harness_seconds"),
                       ("harness, CPU time", "harness_cpu_seconds")):
        lines.append(f"| {label} | {r[key]:.1f} | {_n(n / r[key])} |")
    lines += ["",
              f"* `tickwire sim decode`'s native harness (the market-data path in Verilator, "
              f"driven from C++) on a generated raw ITCH file of {r['messages']:,} messages "
              f"({r['feed_bytes']:,} bytes, {r['symbols']} symbols, seed {r['seed']}) in "
              f"{r['frames']:,} frames: {r['cycles']:,} simulated cycles, "
              f"{_n(r['cycles'] / r['harness_cpu_seconds'])} cycles per CPU second; frames lost "
              f"{r['frames_lost']}. Every record was then compared field for field with the "
              f"reference decoder: {r['equal']:,} of {r['compared']:,} equal, {r['missing']} "
              f"missing, {r['extra']} extra. Wall-clock figures depend on what else runs on the "
              f"machine; the CPU-time figure less so.", ""]


def _section_stages(rows: list[tuple[str, str]], lines: list[str]) -> None:
    lines += ["## Per-stage latency", "",
              "Copied from the table in `docs/architecture.md`, where each figure is measured by "
              "the stage's own bench (`sim/tb_<stage>.py` via `tests/hdl/test_<stage>.py`, or "
              "the Amaranth test named in the row).", "",
              "| stage | latency (core cycles) |", "|---|---|"]
    lines += [f"| {stage} | {latency} |" for stage, latency in rows]
    lines.append("")


def _section_boards(boards: list[dict[str, Any]], lines: list[str]) -> None:
    lines += ["## Boards: post-route Fmax and utilization (open flow, ECP5)", ""]
    for b in boards:
        if "stale" in b or "error" in b:
            lines += [f"* `{b['board']}`: no post-route figures: {b.get('stale') or b.get('error')}."]
            s = b.get("synthesis_only")
            if s:
                lines += [f"  Its synthesis (yosys `synth_ecp5 -abc9` of the board top, "
                          f"{s['measured_at']}"
                          f"{'' if s['current'] else ', an earlier version of the design'}): "
                          f"{s['lut4']:,} LUT4, {s['ff']:,} FF, {s['ebr']} EBR, {s['dsp']} DSP, "
                          f"{s['carry']:,} CCU2C, {s['distributed_ram']:,} DPR16X4; place and "
                          f"route not finished."]
            estimate = b.get("placement_estimate")
            if estimate:
                lines += ["  nextpnr's Fmax estimate after placement (before routing): " + ", ".join(
                    f"`{c['name']}` {c['fmax_mhz']:.2f} MHz (target {c['target_mhz']:g})"
                    for c in estimate) + "."]
            lines.append("")
            continue
        u, p = b["utilization"] or {}, b["placed"]

        def placed(cell):
            return (f"{p[cell]['used']:,} / {p[cell]['available']:,}" if cell in p else "-")
        lines += [f"### `{b['board']}` ({b['fpga']}), core clock {b['core_mhz']:g} MHz", "",
                  "| clock | Fmax (MHz) | target (MHz) | met |", "|---|---|---|---|"]
        lines += [f"| `{c['name']}` | {c['fmax_mhz']:.1f} | {c['target_mhz']:.2f} | "
                  f"{'yes' if c['met'] else '**no**'} |" for c in b["clocks"]]
        lines += ["", "| resource | synthesized (yosys) | placed / available (nextpnr) |",
                  "|---|---|---|",
                  f"| LUT4 | {u.get('lut4', 0):,} | {placed('TRELLIS_COMB')} (logic cells) |",
                  f"| FF | {u.get('ff', 0):,} | {placed('TRELLIS_FF')} |",
                  f"| EBR (18 kbit block RAM) | {u.get('ebr', 0)} | {placed('DP16KD')} |",
                  f"| DSP (18x18 multipliers) | {u.get('dsp', 0)} | {placed('MULT18X18D')} |",
                  f"| carry (CCU2C) / distributed RAM (DPR16X4) | {u.get('carry', 0):,} / "
                  f"{u.get('distributed_ram', 0):,} | |", ""]
        s = b["seconds"]
        lines += ["Build time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in s.items())
                  + f" (total {sum(s.values()) / 60:.1f} min, 2 shared cores).", ""]
        if b["timing_error"]:
            lines += [f"**Timing not met**: {b['timing_error']}", ""]
        if b.get("stale_note"):
            lines += [f"**Measured on an earlier design**: {b['stale_note']}.", ""]
        lines += [f"How: {b['how']}", ""]


def _section_book(book: dict[str, Any], lines: list[str]) -> None:
    lines += ["## Order book on the ECP5-85F", "",
              "| parameters | LUT4 | FF | EBR | DSP | Fmax (MHz) | fits |", "|---|---|---|---|---|---|---|"]

    def row(entry, fmax):
        u = entry["utilization"]
        args = ", ".join(f"{k}={v:,}" for k, v in entry["parameters"].items())
        return (f"| {args} | {u['lut4']:,} | {u['ff']:,} | {u['ebr']} | {u['dsp']} | {fmax} | "
                f"{'yes' if entry['fits'] else 'no'} |")
    lines.append(row(book["default"], "- (synthesis only)"))
    for entry in book["searched"]:
        if book["largest"] is None or entry["parameters"] != book["largest"]["parameters"]:
            lines.append(row(entry, "- (synthesis only)"))
    if book["largest"] is not None:
        lines.append(row(book["largest"], f"**{book['largest']['fmax_mhz']:.1f}**"))
    lines += ["", f"* Default parameters: {book['default']['how']}"]
    for entry in book["searched"]:
        if book["largest"] is None or entry["parameters"] != book["largest"]["parameters"]:
            lines.append(f"* capacity {entry['parameters']['capacity']:,}: synthesis only, "
                         f"{entry['utilization']['ebr']} EBR: does not fit.")
    if book["largest"] is not None:
        lines += [f"* Largest that fits: {book['largest']['how']} Synthesis "
                  f"{book['largest']['synth_seconds'] / 60:.1f} min, place and route "
                  f"{book['largest']['pnr_seconds'] / 60:.1f} min."]
    notes = {e.get("stale_note") for e in [book["default"], *book["searched"], book["largest"] or {}]}
    lines += [f"* **Stale**: these figures were {note.removeprefix('measured ')}." for note in sorted(notes - {None})]
    lines.append("")


def _section_journal(j: dict[str, Any], lines: list[str]) -> None:
    lines += ["## Host journal", "",
              "| method | records/s (wall clock) | records/s (CPU time) |", "|---|---|---|"]
    for name in ("append", "appender", "append_many"):
        lines.append(f"| `Journal.{name}` | {_n(j[f'{name}_records_per_second'])} | "
                     f"{_n(j[f'{name}_cpu_records_per_second'])} |")
    lines += [f"| read back (CRCs checked) | {_n(j['read_records_per_second'])} | |", "",
              f"* `tickwire.host.bench_journal.bench_journal()`: {j['records']:,} ORDER records "
              f"({j['record_bytes']} bytes each on disk) appended from Python into a journal in a "
              f"temporary folder (`/dev/shm` when there is one), best of {j['repeats']} runs per "
              f"method. Goal {j['goal_records_per_second']:,} records/s one at a time "
              f"(`appender`, wall clock): {'met' if j['meets_goal'] else '**not met**'}.", ""]


def _section_agent(a: dict[str, Any], lines: list[str]) -> None:
    lines += ["## Host agent", "",
              "| card events | events/s (wall clock) | events/s (CPU time) |", "|---|---|---|",
              f"| RISK_REJECT (journalled) | {_n(a['reject_events_per_second'])} | "
              f"{_n(a['reject_cpu_events_per_second'])} |",
              f"| ORDER_SENT (kept for its order frame) | {_n(a['order_sent_events_per_second'])} | "
              f"{_n(a['order_sent_cpu_events_per_second'])} |", "",
              f"* `tickwire.host.bench_agent.bench_agent()`: the agent as `tickwire run` runs it "
              f"(config file, journal in `/dev/shm` when there is one, control socket, metrics), "
              f"its card an in-memory event ring the bench fills with {a['events']:,} events of "
              f"each kind; the time from queueing them to the agent having taken the last. So the "
              f"figures are the host's cost per event, not a transport's; "
              f"{a['journalled']:,} REJECT records were journalled.", ""]


def _section_dpdk(f: dict[str, Any], lines: list[str]) -> None:
    from .bench_dpdk import section
    section(f, lines)


def write_report(figures: dict[str, Any], path: Path = DOC) -> None:
    """``docs/benchmarks.md`` from the figures ``main`` gathered (sections for what is missing
    say why)."""
    lines = ["# Benchmarks", "",
             f"Written by `make bench` (`python -m tickwire.sim.bench`) on {figures['date']}, "
             f"{figures['revision']}, on {figures['machine']}. Every figure below was measured; "
             f"each says how. Simulation figures are re-measured on every run; the ECP5 place "
             f"and route results are reused from `build/` while the design they were measured on "
             f"hashes the same (the date of each measurement is given).", ""]
    sections: list[tuple[str, Callable[[Any, list[str]], None]]] = [
        ("tick_to_trade", _section_tick_to_trade), ("replay", _section_replay),
        ("stages", _section_stages), ("order_wire", _section_order_wire), ("boards", _section_boards),
        ("book", _section_book),
        ("journal", _section_journal), ("agent", _section_agent), ("dpdk", _section_dpdk)]
    for key, write in sections:
        value = figures.get(key)
        reused = figures.get("reused", {}).get(key)
        start = len(lines)
        if isinstance(value, dict) and "failed" in value:
            title = {"tick_to_trade": "Tick-to-trade", "replay": "Native replay speed",
                     "stages": "Per-stage latency", "order_wire": "Order intent to the wire over TCP",
                     "boards": "Boards", "book": "Order book",
                     "journal": "Host journal", "agent": "Host agent",
                     "dpdk": "DPDK versus rawpacket"}[key]
            lines += [f"## {title}", "", f"Not measured in this run: {value['failed']}", ""]
        elif value is not None:
            write(value, lines)
            if reused:      # after the section's heading
                lines[start + 2:start + 2] = [f"*Not re-measured by the last run: these figures are "
                                              f"from the run of {reused}.*", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


# -- the command -----------------------------------------------------------------------------------

#: The parts ``--skip`` names.
PARTS = ("tick_to_trade", "replay", "boards", "book", "journal", "agent", "dpdk")


def _figures_file() -> Path:
    from .runner import build_root
    return build_root() / "bench" / "figures.json"


def _attempt(name: str, figures: dict[str, Any], run: Callable[[], Any]) -> bool:
    """Run one measurement into ``figures[name]``; a failure is recorded, not fatal."""
    try:
        figures[name] = run()
        return True
    except Exception as e:   # any failure: written into the report and the exit status
        logger.debug("bench %s failed", name, exc_info=True)
        figures[name] = {"failed": f"{type(e).__name__}: {e}".splitlines()[0][:400]}
        print(f"bench: {name} FAILED: {figures[name]['failed']}")
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.sim.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, metavar="N",
                        help="ITCH messages in the tick-to-trade feed (default: %(default)s)")
    parser.add_argument("--per-datagram", type=int, default=40, metavar="N",
                        help="messages per MoldUDP64 datagram (default: %(default)s)")
    parser.add_argument("--clock-mhz", type=float, default=CLOCK_MHZ, metavar="MHZ",
                        help="core clock (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="keep the captures in DIR")
    parser.add_argument("--replay-messages", type=int, default=1_000_000, metavar="N",
                        help="messages of the native replay benchmark, 0 to skip it "
                             "(default: %(default)s)")
    parser.add_argument("--replay-symbols", type=int, default=100, metavar="K",
                        help="symbols in the replay feed (default: %(default)s)")
    parser.add_argument("--replay-seed", type=int, default=1, metavar="S",
                        help="seed of the replay feed (default: %(default)s)")
    parser.add_argument("--no-build", action="store_true",
                        help="use only cached ECP5 results; never start a place and route "
                             "(default: build what is stale, which takes many minutes)")
    parser.add_argument("--skip", action="append", default=[], metavar="PART",
                        choices=PARTS,
                        help="do not measure a part (repeatable): tick_to_trade, replay, boards, "
                             "book, journal, agent, dpdk; the report keeps its figures from the last run "
                             "(build/bench/figures.json), dated (default: none)")
    parser.add_argument("--doc", type=Path, default=DOC, metavar="FILE",
                        help="the report to write (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": _revision(),
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} cores shared with other jobs",
    }
    ok = True
    if "replay" not in args.skip and args.replay_messages:
        ok &= _attempt("replay", figures, lambda: measure_replay(
            args.replay_messages, args.replay_symbols, args.replay_seed))
        if "failed" not in figures["replay"]:
            _print_replay(figures["replay"])
            ok &= figures["replay"]["ok"]
    if "tick_to_trade" not in args.skip:
        out = args.out or Path(tempfile.mkdtemp(prefix="tickwire-bench-"))
        ok &= _attempt("tick_to_trade", figures, lambda: measure_tick_to_trade(
            args.messages, args.per_datagram, args.clock_mhz, out))
        t = figures["tick_to_trade"]
        if "failed" not in t:
            _print_tick_to_trade(t)
            (out / "bench.json").write_text(json.dumps(t, indent=2))
            ok &= t["frames_lost"] == 0 and t["delivered"] == args.messages
            if t["latency_cycles"]:
                plot_latency_histogram(
                    t["latency_cycles"], t["clock_ns"], args.doc.parent / PLOT_NAME,
                    f"tick-to-trade, {t['orders']} orders, {t['messages']:,} messages, "
                    f"{t['per_datagram']} per datagram (Verilator)")
    _attempt("stages", figures, stage_latencies)
    if _attempt("order_wire", figures, _measure_order_wire):
        print(f"order intent -> TCP segment on XGMII: {figures['order_wire']['cycles']} cycles")
    if "boards" not in args.skip:
        from ..bitstreams.bench import appliance_figures
        from ..bitstreams.boards import BOARDS
        boards = []
        for name, board in BOARDS.items():
            if board.flow == "ecp5":
                print(f"bench: {name}: full build {'from the cache' if args.no_build else '(cached when unchanged)'} ...")
                holder: dict[str, Any] = {}
                _attempt(name, holder, lambda: appliance_figures(board, build=not args.no_build))
                boards.append({"board": name, "error": holder[name]["failed"]}
                              if "failed" in holder[name] else holder[name])
                _print_board(boards[-1])
        figures["boards"] = boards
    if "book" not in args.skip:
        print("bench: order book on the ECP5-85F (cached when unchanged) ...")
        from ..bitstreams.bench import book_figures
        if _attempt("book", figures, lambda: book_figures(build=not args.no_build)):
            _print_book(figures["book"])
    if "journal" not in args.skip:
        if _attempt("journal", figures, _measure_journal):
            j = figures["journal"]
            print(f"journal: appender {_n(j['appender_records_per_second'])} records/s, "
                  f"append_many {_n(j['append_many_records_per_second'])} records/s (wall clock)")
    if "agent" not in args.skip:
        if _attempt("agent", figures, _measure_agent):
            a = figures["agent"]
            print(f"agent: {_n(a['reject_events_per_second'])} RISK_REJECT events/s journalled, "
                  f"{_n(a['order_sent_events_per_second'])} ORDER_SENT events/s (wall clock)")
    if "dpdk" not in args.skip:
        from .bench_dpdk import measure as measure_dpdk, print_figures as print_dpdk
        if _attempt("dpdk", figures, measure_dpdk):
            print_dpdk(figures["dpdk"])
    saved = _figures_file()
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    for part in args.skip:
        if part in previous and part not in figures:
            figures[part] = previous[part]
            figures.setdefault("reused", {})[part] = previous.get("dates", {}).get(part, previous.get("date"))
    figures["dates"] = {**previous.get("dates", {}),
                        **{p: figures["date"] for p in PARTS if p in figures and p not in args.skip}}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(figures, indent=1, default=str))
    write_report(figures, args.doc)
    print(f"bench: wrote {args.doc}" + (f" and {args.doc.parent / PLOT_NAME}"
                                        if (args.doc.parent / PLOT_NAME).exists() else ""))
    return 0 if ok else 1


def _print_tick_to_trade(t: dict[str, Any]) -> None:
    ns, lat = t["clock_ns"], t["latency_cycles"]
    print(f"bench: {t['messages']} ITCH messages in {t['frames_in']} back-to-back XGMII frames, "
          f"{t['per_datagram']} per datagram, clock {1000 / ns:.2f} MHz")
    print(f"  feed on the wire            {t['feed_cycles']} cycles, {t['feed_bytes']} bytes "
          f"({t['feed_bytes'] * 8 / (t['feed_cycles'] * ns):.2f} Gb/s of frame bytes)")
    print(f"  messages delivered          {t['delivered']} of {t['messages']}, frames lost {t['frames_lost']}")
    print(f"  sustained                   {t['messages_per_cycle']:.3f} messages/cycle = "
          f"{t['delivered'] / (t['feed_cycles'] * ns) * 1e3:.1f} M messages/s")
    if lat:
        q = t["tick_to_trade"]
        print(f"  tick-to-trade ({len(lat)} orders)  min {q['min']}  p50 {q['median']}  "
              f"p99 {q['p99']}  max {q['max']} cycles "
              f"({q['min'] * ns:.1f} / {q['median'] * ns:.1f} / {q['max'] * ns:.1f} ns)")
    print(f"  simulation wall time        {t['wall_seconds']:.1f} s (Verilator build reused when unchanged)")


def _print_replay(r: dict[str, Any]) -> None:
    n = r["records"]
    print(f"replay bench: {r['messages']} ITCH messages ({r['feed_bytes']} bytes raw ITCH, "
          f"{r['symbols']} symbols) in {r['frames']} frames through the native harness "
          f"(harness ready in {r['harness_ready_seconds']:.1f} s)")
    for label, key in (("whole run, wall", "seconds"), ("harness, wall", "harness_seconds"),
                       ("harness, CPU", "harness_cpu_seconds")):
        print(f"  {label:26s}  {r[key]:7.1f} s  {n / r[key]:10,.0f} messages/s  "
              f"{n / r[key] * 60:12,.0f} messages/min")
    print(f"  simulated                   {r['cycles']} cycles, "
          f"{r['cycles'] / r['harness_cpu_seconds']:,.0f} cycles per CPU second; "
          f"frames lost {r['frames_lost']}")
    print(f"  compared with the reference {r['compared']} records field for field: "
          f"{r['equal']} equal, {r['compared'] - r['equal']} differ, {r['missing']} missing, "
          f"{r['extra']} extra ({r['compare_seconds']:.0f} s)")
    for index, fields in r["differences"]:
        print(f"    record {index}: {fields}")


def _print_board(b: dict[str, Any]) -> None:
    if "stale" in b or "error" in b:
        print(f"  {b['board']}: not measured: {b.get('stale') or b.get('error')}")
        return
    u = b["utilization"] or {}
    print(f"  {b['board']}: {u.get('lut4', 0):,} LUT4, {u.get('ff', 0):,} FF, {u.get('ebr', 0)} EBR, "
          f"{u.get('dsp', 0)} DSP; " + ", ".join(
              f"{c['name']} {c['fmax_mhz']:.1f} MHz (needs {c['target_mhz']:.1f})" for c in b["clocks"])
          + f"; built {b['measured_at']}" + ("; TIMING NOT MET" if b["timing_error"] else "")
          + ("; design changed since (stale)" if b.get("stale_note") else ""))


def _print_book(book: dict[str, Any]) -> None:
    d = book["default"]
    u = d["utilization"]
    print(f"  book, default ({', '.join(f'{k}={v}' for k, v in d['parameters'].items())}), "
          f"synthesis only: {u['lut4']:,} LUT4, {u['ff']:,} FF, {u['ebr']} EBR, {u['dsp']} DSP"
          f"{'' if d['fits'] else ' (does not fit the ECP5-85F)'}")
    largest = book["largest"]
    if largest is None:
        print("  book: no capacity tried fits the ECP5-85F")
        return
    u = largest["utilization"]
    print(f"  book, largest that fits (capacity={largest['parameters']['capacity']:,}), placed and "
          f"routed: {u['lut4']:,} LUT4, {u['ff']:,} FF, {u['ebr']} EBR, {u['dsp']} DSP, Fmax "
          f"{largest['fmax_mhz']:.1f} MHz (target {largest['target_mhz']:g})")


if __name__ == "__main__":
    raise SystemExit(main())
