"""``make bench``: figures measured on the RTL in Verilator (tick-to-trade, feed throughput)."""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
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
    return 0 if lost == 0 and msgs == args.messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
