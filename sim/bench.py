"""``make bench``: figures measured on the RTL in Verilator (tick-to-trade, feed throughput)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

from .demo import CLOCK_MHZ, _simulate

__all__ = ["main"]


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.sim.bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=3000, metavar="N",
                        help="ITCH messages in the feed (default: %(default)s)")
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    replay_ok = True
    if args.replay_messages:
        replay_ok = _bench_replay(args.replay_messages, args.replay_symbols, args.replay_seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="tickwire-bench-"))
    t0 = time.monotonic()
    s = _simulate(out, {"TICKWIRE_DEMO_MESSAGES": str(args.messages),
                        "TICKWIRE_DEMO_MAX_MESSAGES": str(args.per_datagram)}, args.clock_mhz)
    wall = time.monotonic() - t0
    c = s["counters"]
    ns = s["clock_ns"]
    lat = s["latency_cycles"]
    cycles = s["feed_cycles"]
    msgs = c["moldudp64.messages"]
    lost = s["frames_in"] - c["net_rx.frames_accepted"] + c["mac_rx.overflow"]
    print(f"bench: {args.messages} ITCH messages in {s['frames_in']} back-to-back XGMII frames, "
          f"{args.per_datagram} per datagram, clock {1000 / ns:.2f} MHz")
    print(f"  feed on the wire            {cycles} cycles, {s['feed_bytes']} bytes "
          f"({s['feed_bytes'] * 8 / (cycles * ns):.2f} Gb/s of frame bytes)")
    print(f"  messages delivered          {msgs} of {args.messages}, frames lost {lost}")
    print(f"  sustained                   {msgs / cycles:.3f} messages/cycle = "
          f"{msgs / (cycles * ns) * 1e3:.1f} M messages/s")
    if lat:
        print(f"  tick-to-trade ({len(lat)} orders)  min {min(lat)}  p50 {_percentile(lat, .5)}  "
              f"p99 {_percentile(lat, .99)}  max {max(lat)} cycles "
              f"({min(lat) * ns:.1f} / {_percentile(lat, .5) * ns:.1f} / {max(lat) * ns:.1f} ns)")
    print(f"  simulation wall time        {wall:.1f} s (Verilator build reused when unchanged)")
    (out / "bench.json").write_text(json.dumps({"messages_per_cycle": msgs / cycles, "latency_cycles": lat,
                                                "frames_lost": lost, **s}, indent=2))
    return 0 if lost == 0 and msgs == args.messages and replay_ok else 1


def _bench_replay(messages: int, symbols: int, seed: int) -> bool:
    """The native replay harness on a generated raw ITCH file (what ``tickwire sim decode`` runs),
    every record compared with the reference decoder; True when all match."""
    from tickwire.sim.itchfile import generate_raw_itch, read_raw_itch
    from tickwire.sim.progress import track
    from tickwire.sim.replay import build_harness, compare_with_model, replay_file
    from tickwire.sim.runner import build_root

    # The generator runs at ~20k messages/s: keep its file for the next bench of the same feed.
    sources = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (
        sources / "sim" / "feed.py", sources / "protocols" / "itch.py",
        sources / "protocols" / "layout.py"))).hexdigest()[:12]
    feed = build_root() / "bench" / f"replay-{messages}-{symbols}-{seed}-{digest}.itch"
    if not feed.exists():
        feed.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        generate_raw_itch(feed, messages, symbols, seed, track=track)
        print(f"replay bench: generated {feed.name} in {time.monotonic() - t0:.0f} s")
    t0 = time.monotonic()
    harness = build_harness()
    built = time.monotonic() - t0
    run = replay_file(feed, harness=harness)
    payloads = list(track(run.raw(), messages, "replay"))
    n = run.records
    print(f"replay bench: {messages} ITCH messages ({feed.stat().st_size} bytes raw ITCH, "
          f"{symbols} symbols) in {run.frames} frames through the native harness "
          f"(harness ready in {built:.1f} s)")
    for label, seconds in (("whole run, wall", run.seconds), ("harness, wall", run.harness_seconds),
                           ("harness, CPU", run.harness_cpu_seconds)):
        print(f"  {label:26s}  {seconds:7.1f} s  {n / seconds:10,.0f} messages/s  "
              f"{n / seconds * 60:12,.0f} messages/min")
    print(f"  simulated                   {run.cycles} cycles, "
          f"{run.cycles / run.harness_cpu_seconds:,.0f} cycles per CPU second; "
          f"frames lost {sum(run.lost().values())}")
    # Compared after the run: the reference decoder is slower than the harness.
    t0 = time.monotonic()
    comparison = compare_with_model(map(harness.unpacker(), track(payloads, n, "compare")),
                                    read_raw_itch(feed))
    print(f"  compared with the reference {comparison.compared} records field for field: "
          f"{comparison.equal} equal, {comparison.compared - comparison.equal} differ, "
          f"{comparison.missing} missing, {comparison.extra} extra "
          f"({time.monotonic() - t0:.0f} s)")
    for index, fields in comparison.differences:
        print(f"    record {index}: {fields}")
    return comparison.ok and comparison.compared == messages


if __name__ == "__main__":
    raise SystemExit(main())
