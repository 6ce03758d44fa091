"""``tickwire demo`` and ``tickwire sim run``: the appliance's RTL on Verilator, end to end."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Mapping

from ..hdl.top import CLOCK_HZ
from .runner import SimulationFailed, run

#: The gateware's core clock in MHz, the default of every command here.
CLOCK_MHZ = CLOCK_HZ / 1e6

__all__ = ["run_demo", "run_pcap", "format_summary"]

logger = logging.getLogger(__name__)


def _simulate(out_dir: Path, env: dict[str, str], clock_mhz: float) -> dict:
    if not clock_mhz > 0:
        raise ValueError(f"clock must be positive, not {clock_mhz!r} MHz")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        summary_path.unlink()
    period_ns = round(1000.0 / clock_mhz, 3)
    env = {**env, "TICKWIRE_DEMO_OUT": str(out_dir), "TICKWIRE_CLOCK_NS": f"{period_ns}"}
    try:
        (out_dir / "sim").mkdir(exist_ok=True)
        run("top", "tickwire.sim.tb_top", testcase="demo", extra_env=env, test_dir=out_dir / "sim",
            log_file=out_dir / "sim" / "simulation.log")
    except SimulationFailed as exc:
        raise SimulationFailed(f"{exc}; see {out_dir / 'sim' / 'simulation.log'}") from None
    return json.loads(summary_path.read_text())


def format_summary(summary: Mapping) -> str:
    """The human-readable report printed by the demo."""
    c = summary["counters"]
    lat = summary["latency_cycles"]
    ns = summary["clock_ns"]
    rejects = sum(v for k, v in c.items() if k.startswith("risk.rejected_"))
    reasons = ", ".join(f"{k.removeprefix('risk.rejected_').replace('_', ' ')} {v}"
                        for k, v in c.items() if k.startswith("risk.rejected_") and v) or "none"
    lines = [
        "tickwire appliance, simulated on Verilator (every figure below was measured in the simulation)",
        f"  clock                      {1000 / ns:.2f} MHz ({ns} ns per cycle)",
        f"  feed frames in             {summary['frames_in']} (accepted by the UDP filter: {c['net_rx.frames_accepted']})",
        f"  ITCH messages in           {c['moldudp64.messages']} (decoded: {c['itch.decoded']}, "
        f"unknown type / bad length: {c['itch.unknown_type']} / {c['itch.bad_length']})",
        f"  order book                 {c['book.messages']} book messages, {c['book.bbo_updates']} top-of-book "
        f"changes, {c['book.live_orders']} live orders (collisions {c['book.collisions']}, unknown references "
        f"{c['book.unknown_references']}, outside the window {c['book.outside_window']})",
        f"  trigger fired              {c['trigger.fired']} (rules: "
        + ", ".join(str(c.get(f'trigger.rule_{k}_fired', 0)) for k in range(4)) + ")",
        f"  orders rejected by risk    {rejects} ({reasons})",
        f"  orders out (OUCH 5.0)      {summary['orders_out']} (card counter: {c['mac_tx.frames_sent']})",
        f"  gaps / duplicates          {c['moldudp64.gaps']} / {c['moldudp64.duplicates']}",
        f"  bad FCS / dropped frames   {c['mac_rx.bad_fcs']} / "
        f"{sum(v for k, v in c.items() if k.startswith('net_rx.drop_'))}",
    ]
    if lat:
        med = statistics.median(lat)
        lines.append(f"  tick-to-trade              min {min(lat)} / median {med:g} / max {max(lat)} cycles "
                     f"= {min(lat) * ns:.1f} / {med * ns:.1f} / {max(lat) * ns:.1f} ns")
        lines.append("                             (start of the feed frame on XGMII in -> start of the order frame out)")
    else:
        lines.append("  tick-to-trade              no order left the card, nothing to measure")
    lines.append(f"  output matches the reference model byte for byte: {'yes' if summary['matches_model'] else 'NO'}")
    lines.append(f"  captures                   {summary['feed_pcap']} (feed port)")
    lines.append(f"                             {summary['orders_pcap']} (order port)")
    return "\n".join(lines)


def run_demo(out_dir: Path, messages: int | None = None, seed: int | None = None,
             clock_mhz: float = CLOCK_MHZ) -> int:
    """Build the RTL once, run the embedded default feed through it and print what happened."""
    env = {}
    if messages is not None:
        if messages < 20:
            raise ValueError(f"--messages must be at least 20, not {messages}")
        env["TICKWIRE_DEMO_MESSAGES"] = str(messages)
    if seed is not None:
        env["TICKWIRE_DEMO_SEED"] = str(seed)
    summary = _simulate(Path(out_dir), env, clock_mhz)
    print(format_summary(summary))
    return 0 if summary["orders_out"] > 0 else 1


def run_pcap(pcap: Path, out_dir: Path, registers: Mapping[str, int] | None = None,
             clock_mhz: float = CLOCK_MHZ) -> int:
    """Replay a pcap of feed frames (without FCS) through the RTL with optional register values."""
    from .pcap import read_pcap
    pcap = Path(pcap)
    frames = read_pcap(pcap)  # validates the file before the simulator starts
    if not frames:
        raise ValueError(f"{pcap}: no frames")
    env = {"TICKWIRE_DEMO_PCAP": str(pcap.resolve()),
           "TICKWIRE_DEMO_REGISTERS": json.dumps(dict(registers or {}))}
    summary = _simulate(Path(out_dir), env, clock_mhz)
    print(format_summary(summary))
    return 0
