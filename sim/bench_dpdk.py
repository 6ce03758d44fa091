"""Benchmark: the ``dpdk`` driver against ``rawpacket``/``ethmgmt`` on the same veth pair, in one run.

A network namespace with a veth pair (made and removed here); on the card's end the management
bridge (:mod:`tickwire.sim.mgmt_bridge`) answers register reads from a register file, in a
process of its own; on the host's end each driver in turn, each in a process of its own (DPDK
initialises once per process):

* register-read round trip: ``reads`` reads of one word through the management protocol, each
  timed from the call to the value (``time.perf_counter_ns``), p50 / p99 / mean;
* packets per second sent: ``frames`` 60-byte frames handed to the driver as fast as it takes
  them (``send_frame``, one at a time for ``rawpacket``; the ``dpdk`` driver's ``send_frames``
  hands batches to its ring), divided by the time until the last one left; the card end's kernel
  counter says how many arrived.

``python -m tickwire.sim.bench_dpdk`` prints the figures and their ratio; ``make bench`` writes
them into docs/benchmarks.md (:func:`section`). Needs root, iproute2 and DPDK (``make dpdk``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import time
import traceback
from typing import Any

__all__ = ["measure", "section", "main"]

HOST_MAC = "02:00:00:00:00:0a"
CARD_MAC = "02:74:77:69:72:01"
#: EtherType of the frames the throughput test sends (the bridge listens to 0x88B5 only).
BULK_ETHERTYPE = 0x88B6


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _run(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _rx_packets(netns: str, interface: str) -> int:
    doc = json.loads(_run("-n", netns, "-j", "-s", "link", "show", interface))
    return int(doc[0]["stats64"]["rx"]["packets"])


# -- the processes ----------------------------------------------------------------------------------

def _responder(netns: str, ready: Any, stop: Any) -> None:
    from tickwire.drivers.base import Driver
    from .mgmt_bridge import ManagementBridge
    from .netns import inside

    class RegisterFile(Driver):
        def read(self, address: int) -> int:
            return address * 3

        def write(self, address: int, value: int) -> None:
            pass

        def events(self, timeout: float = 0.0, limit: int | None = None) -> list:
            return []
    with inside(netns):
        bridge = ManagementBridge(RegisterFile(), "twc", card_mac=CARD_MAC)
    bridge.start()
    ready.set()
    stop.wait(600)
    bridge.stop()


def _host(kind: str, netns: str, reads: int, frames: int, options: dict[str, Any],
          results: Any) -> None:
    try:
        results.put(("ok", _host_measure(kind, netns, reads, frames, options)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _host_measure(kind: str, netns: str, reads: int, frames: int,
                  options: dict[str, Any]) -> dict[str, Any]:
    from .netns import inside
    frame = (bytes.fromhex("ffffffffffff") + bytes.fromhex(HOST_MAC.replace(":", ""))
             + BULK_ETHERTYPE.to_bytes(2, "big")).ljust(60, b"\0")
    with inside(netns):
        if kind == "dpdk":
            from tickwire.drivers.dpdk import DpdkDriver
            driver = DpdkDriver("twh", card_mac=CARD_MAC, timeout=5, **options)
            registers, sender = driver, driver
        else:
            from tickwire.drivers.ethmgmt import EthManagementDriver
            from tickwire.drivers.rawpacket import RawPacketDriver
            registers = EthManagementDriver("twh", CARD_MAC, timeout=5, **options)
            sender = RawPacketDriver("twh", ethertype=BULK_ETHERTYPE, blocks=2, timeout=5)
    try:
        for address in range(200):                 # warm up
            assert registers.read(address) == address * 3
        latencies = []
        for k in range(reads):
            address = k & 0xFFF
            start = time.perf_counter_ns()
            value = registers.read(address)
            latencies.append((time.perf_counter_ns() - start) / 1000)
            if value != address * 3:
                raise AssertionError(f"read of word {address} gave {value}, not {address * 3}")
        sent_before = driver.stats()["tx"] if kind == "dpdk" else 0
        start = time.perf_counter()
        if kind == "dpdk":
            batch = [frame] * 256
            sent = 0
            while sent < frames:
                sent += driver.send_frames("twh", batch[:frames - sent])
            deadline = time.monotonic() + 30
            while driver.stats()["tx"] + driver.stats()["tx_failed"] - sent_before < frames \
                    and time.monotonic() < deadline:
                time.sleep(1e-4)
            stats = driver.stats()
        else:
            for _ in range(frames):
                sender.send_frame("twh", frame)
            stats = {}
        seconds = time.perf_counter() - start
        return {"latency_us": latencies, "send_seconds": seconds, "sent": frames,
                "retries": getattr(registers, "client").retries, "stats": stats}
    finally:
        registers.close()
        sender.close()


def _in_process(kind: str, netns: str, reads: int, frames: int,
                options: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_host, args=(kind, netns, reads, frames, options, results))
    child.start()
    try:
        status, value = results.get(timeout=600)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    if status != "ok":
        raise RuntimeError(f"the {kind} measurement failed:\n{value}")
    return value


# -- the measurement ----------------------------------------------------------------------------------

def measure(*, reads: int = 5000, frames: int = 200_000,
            dpdk_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both drivers on one veth pair; the figures as a dict (see :func:`section`)."""
    from tickwire.drivers.dpdk import dpdk_available
    if os.geteuid() != 0:
        raise RuntimeError("the DPDK benchmark needs root (network namespaces, AF_PACKET, DPDK)")
    missing = dpdk_available()
    if missing:
        raise RuntimeError(missing)
    dpdk_options = {"lcores": [0, 1], "idle_us": 0, "spin_us": 0, **(dpdk_options or {})}
    netns = f"twbench{os.getpid()}"
    _run("netns", "add", netns)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    responder = None
    try:
        _run("-n", netns, "link", "add", "twh", "address", HOST_MAC, "type", "veth", "peer",
             "name", "twc")
        for name in ("twh", "twc"):
            _run("-n", netns, "link", "set", name, "up")
        responder = context.Process(target=_responder, args=(netns, ready, stop))
        responder.start()
        if not ready.wait(60):
            raise RuntimeError("the responder did not start")
        figures: dict[str, Any] = {"reads": reads, "frames": frames, "frame_bytes": 60,
                                   "dpdk_options": dpdk_options, "drivers": {}}
        for kind, options in (("rawpacket", {}), ("dpdk", dpdk_options)):
            before = _rx_packets(netns, "twc")
            result = _in_process(kind, netns, reads, frames, options)
            time.sleep(0.2)
            # what came besides the bulk frames: one request per read (and per retry)
            arrived = _rx_packets(netns, "twc") - before - (reads + 200 + result["retries"])
            latencies = result["latency_us"]
            figures["drivers"][kind] = {
                "read_p50_us": _percentile(latencies, 50), "read_p99_us": _percentile(latencies, 99),
                "read_mean_us": sum(latencies) / len(latencies),
                "read_max_us": max(latencies), "retries": result["retries"],
                "packets_per_second": result["sent"] / result["send_seconds"],
                "arrived": arrived, "sent": result["sent"], "stats": result["stats"]}
        raw, dpdk = figures["drivers"]["rawpacket"], figures["drivers"]["dpdk"]
        figures["ratio"] = {
            "packets_per_second": dpdk["packets_per_second"] / raw["packets_per_second"],
            "read_p50": raw["read_p50_us"] / dpdk["read_p50_us"],
            "read_p99": raw["read_p99_us"] / dpdk["read_p99_us"]}
        return figures
    finally:
        stop.set()
        if responder is not None:
            responder.join(20)
            if responder.is_alive():
                responder.kill()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def print_figures(f: dict[str, Any]) -> None:
    print(f"dpdk bench: {f['reads']} register reads and {f['frames']:,} frames of "
          f"{f['frame_bytes']} bytes per driver on one veth pair (dpdk options {f['dpdk_options']})")
    for kind, d in f["drivers"].items():
        print(f"  {kind:9s}  read p50 {d['read_p50_us']:8.1f} us  p99 {d['read_p99_us']:8.1f} us  "
              f"mean {d['read_mean_us']:8.1f} us  send {d['packets_per_second']:10,.0f} packets/s "
              f"({d['arrived']:,} of {d['sent']:,} arrived)")
    r = f["ratio"]
    print(f"  ratio: packets/s dpdk / rawpacket {r['packets_per_second']:.2f}; read latency "
          f"rawpacket / dpdk p50 {r['read_p50']:.2f}, p99 {r['read_p99']:.2f}")


def section(f: dict[str, Any], lines: list[str]) -> None:
    """The docs/benchmarks.md section of figures from :func:`measure`."""
    raw, dpdk, r = f["drivers"]["rawpacket"], f["drivers"]["dpdk"], f["ratio"]
    lines += ["## DPDK versus rawpacket on a veth pair", "",
              "| | `rawpacket` / `ethmgmt` (AF_PACKET) | `dpdk` (net_af_packet PMD, busy poll) | "
              "ratio |", "|---|---:|---:|---:|",
              f"| register read round trip, p50 | {raw['read_p50_us']:.1f} us | "
              f"{dpdk['read_p50_us']:.1f} us | {r['read_p50']:.2f} (rawpacket / dpdk) |",
              f"| register read round trip, p99 | {raw['read_p99_us']:.1f} us | "
              f"{dpdk['read_p99_us']:.1f} us | {r['read_p99']:.2f} (rawpacket / dpdk) |",
              f"| frames sent per second ({f['frame_bytes']} bytes) | "
              f"{raw['packets_per_second']:,.0f} | {dpdk['packets_per_second']:,.0f} | "
              f"{r['packets_per_second']:.2f} (dpdk / rawpacket) |", "",
              f"* `python -m tickwire.sim.bench_dpdk`: a veth pair in a network namespace of its "
              f"own; on the card's end the management bridge (`sim/mgmt_bridge.py`, the reference "
              f"model on a register file, plain AF_PACKET socket) in a process of its own; each "
              f"driver in a process of its own. {f['reads']:,} reads per driver after 200 to warm "
              f"up, each timed from the call to the value; {f['frames']:,} frames handed to the "
              f"driver as fast as it takes them, timed until the last left "
              f"({raw['arrived']:,} and {dpdk['arrived']:,} counted at the card end).",
              f"* `dpdk` options {f['dpdk_options']}: the poll loop busy-polls on its own lcore; "
              f"both drivers' round trips include the same Python responder, and the veth pair's "
              f"kernel path sits under DPDK's net_af_packet too, so these figures compare the host "
              f"side only; a NIC with a DPDK poll-mode driver removes the kernel from the path.",
              ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.sim.bench_dpdk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=5000, metavar="N",
                        help="timed register reads per driver (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=200_000, metavar="N",
                        help="frames sent per driver (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = measure(reads=args.reads, frames=args.frames)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
