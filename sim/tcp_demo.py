"""``tickwire demo`` over TCP: the Verilated appliance (its order transport strap at TCP) trades
with the exchange simulator through Linux TAP interfaces in a network namespace of its own.

Wiring (everything but the card lives in namespace ``twdemo<pid>``, removed at the end)::

    tickwire exchange (10.77.0.1:15000, kernel TCP) --- TAP twdo0 --- card order port (10.77.0.2)
    tickwire exchange MoldUDP64 feed (multicast)     --- TAP twdf0 --- card feed line A

The host's connection manager (:mod:`tickwire.host.tcp_session`) opens the card's TCP session
(ARP, SYN, the engine's registers) and runs the SoupBinTCP client over the card's engine; the
card's own orders (trigger -> risk -> OUCH) go into the same byte stream. The exchange's answers
come back through the engine into the card's order feedback (risk exposure) and to the host,
which keeps positions from them. Needs root, /dev/net/tun and iproute2: :func:`unavailable` says
why not.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..protocols import ouch
from ..protocols.net import int_to_ip, int_to_mac
from .defaults import CARD_MAC, FEED_GROUP, FEED_PORT, apply_defaults

__all__ = ["unavailable", "run_tcp_demo", "format_tcp_summary", "TcpDemoError"]

logger = logging.getLogger(__name__)

ORDER_TAP, FEED_TAP = "twdo0", "twdf0"
EXCHANGE_IP, CARD_IP = "10.77.0.1", "10.77.0.2"
FEED_NET = "10.78.0.1/24"
EXCHANGE_PORT = 15000
ORDER_MAC = "02:54:57:00:00:02"


class TcpDemoError(RuntimeError):
    """The TCP demo could not set up or did not trade."""


def unavailable() -> str | None:
    """Why the TCP demo cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "TAP interfaces and network namespaces need root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TUN/TAP)"
    if shutil.which("ip") is None:
        return "no 'ip' command (iproute2)"
    return None


@dataclasses.dataclass
class _SessionConfig:
    name: str = "ouch0"
    number: int = 0
    host: str = EXCHANGE_IP
    port: int = EXCHANGE_PORT
    username: str = "TWUSER"
    password: str = "TWPASS"
    session: str = ""
    local_port: int | None = None


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise TcpDemoError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def run_tcp_demo(*, seconds: float = 6.0, host_orders: int = 4,
                 say: Callable[[str], None] = lambda text: logger.info("%s", text)) -> dict[str, Any]:
    """Run the appliance against the exchange simulator for ``seconds`` of trading (bounded), with
    ``host_orders`` host-submitted orders on top of the card's own; returns the summary."""
    why = unavailable()
    if why:
        raise TcpDemoError(f"the TCP demo cannot run here: {why}")
    from ..host.card import Card
    from ..host.positions import Positions
    from ..host.tcp_port import CardTcpPort
    from ..host.tcp_session import CardAddress, CardSoupBinSession, TcpCard
    from .card import CardServer, _order_fields, build_card_harness, stop_process
    from .tap import Tap, TapBridge, configure

    harness = build_card_harness(announce=say)
    netns = f"twdemo{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="tickwire-demo-"))
    server = CardServer(harness, socket_path=str(work / "card.sock"), transport="tcp")
    threading.Thread(target=server.serve_forever, name="card-server", daemon=True).start()
    processes: list[subprocess.Popen] = []
    taps: list[Any] = []
    card = None
    _ip("netns", "del", netns, check=False)
    _ip("netns", "add", netns)
    try:
        card = Card.open({"driver": "sim", "socket": str(work / "card.sock"), "timeout": 30})
        apply_defaults(card)
        card.events(timeout=0.1)

        order_tap, feed_tap = Tap(ORDER_TAP, netns), Tap(FEED_TAP, netns)
        taps += [order_tap, feed_tap]
        configure(netns, ORDER_TAP, f"{EXCHANGE_IP}/24")
        configure(netns, FEED_TAP, FEED_NET)
        # The feed leaves the namespace through the feed TAP as multicast.
        _ip("-n", netns, "route", "add", "224.0.0.0/4", "dev", FEED_TAP)

        port = CardTcpPort(card)
        tcp = TcpCard(port, CardAddress.of(ORDER_MAC, CARD_IP))

        wire_cycle: dict[int, int] = {}      # UserRefNum -> cycle its Enter Order's segment started

        def order_frames() -> list[bytes]:
            frames = port.order_frames()
            for frame in frames:
                fields = _order_fields(frame.data, fcs=False)     # one packet a segment
                if fields is not None and fields["action"] == ord("O"):
                    wire_cycle.setdefault(fields["user_ref_num"], frame.timestamp)
            return [frame.data for frame in frames]

        # A TAP hands over frames as the kernel built them; on a wire they are padded to 60 bytes.
        bridge = TapBridge(order_tap, to_card=lambda f: card.driver.send_frame("order", f.ljust(60, b"\0")),
                           from_card=order_frames)
        feed = TapBridge(feed_tap, to_card=lambda f: card.driver.send_frame("feed_a", f.ljust(60, b"\0")),
                         from_card=lambda: [])

        tickwire = Path(sys.executable).with_name("tickwire")
        exchange = subprocess.Popen(
            ["ip", "netns", "exec", netns, str(tickwire), "exchange", "--host", EXCHANGE_IP, "--port",
             str(EXCHANGE_PORT), "--feed", f"{int_to_ip(FEED_GROUP)}:{FEED_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes.append(exchange)

        answers: list[tuple[int, bytes]] = []
        states: list[str] = []

        def deliver(kind: str, session: Any, value: Any) -> None:
            if kind == "sequenced":
                answers.append(value)
            elif kind == "state":
                states.append(str(value))

        soup = CardSoupBinSession(tcp, _SessionConfig(), deliver)

        def step(wait: float = 0.001) -> None:
            tcp.service()
            soup.service()
            bridge.pump(wait)
            feed.pump(0.0)

        def run_until(condition: Callable[[], bool], timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                step()
                if condition():
                    return True
            return False

        say(f"namespace {netns}: exchange {EXCHANGE_IP}:{EXCHANGE_PORT} on {ORDER_TAP}, feed "
            f"{int_to_ip(FEED_GROUP)}:{FEED_PORT} on {FEED_TAP}; card {CARD_IP} ({ORDER_MAC}), feed MAC "
            f"{int_to_mac(CARD_MAC)}")
        deadline = time.monotonic() + 20
        line = ""
        while "orders: SoupBinTCP" not in line and time.monotonic() < deadline:
            line = exchange.stderr.readline() if exchange.poll() is None else ""
            if exchange.poll() is not None:
                raise TcpDemoError(f"the exchange simulator stopped: {exchange.stderr.read()}")
        # Log in first; the feed's first datagrams wait in the feed TAP's queue meanwhile, so the
        # orders the opening book triggers find the session open.
        soup.start()
        started = time.monotonic()
        deadline = time.monotonic() + 10.0
        while not soup.logged_in and time.monotonic() < deadline:
            tcp.service()
            soup.service()
            bridge.pump(0.001)
        if not soup.logged_in:
            raise TcpDemoError(f"the card's SoupBinTCP session did not log in: {states}")
        login_ms = (time.monotonic() - started) * 1e3
        say(f"logged in over the card's TCP engine in {login_ms:.1f} ms; trading for {seconds:g} s")

        submitted = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            step(0.002)
            # A few host orders as well, through risk like the card's own: marketable limits that
            # cross the seeded book (buy 5 cents over the reference, sell 5 under).
            if submitted < host_orders and time.monotonic() - started > 1.0 + submitted * 0.5:
                buy = submitted % 2 == 0
                card.submit_order(side="B" if buy else "S", quantity=100,
                                  price=189_5500 if buy else 189_4500,
                                  stock=int.from_bytes(b"AAPL    ", "little"), time_in_force=ord("0"),
                                  display=ord("Y"), capacity=ord("A"),
                                  intermarket_sweep_eligibility=ord("N"), cross_type=ord("N"))
                submitted += 1
        soup.logout()
        run_until(lambda: soup.done, 5.0)

        positions = Positions()
        fills, accepted, rejected, symbols = [], 0, 0, set()
        reject_reasons: collections.Counter = collections.Counter()
        for _, message in answers:
            kind = chr(message[0])
            fields = ouch.unpack_outbound(message)
            if kind == "A":
                accepted += 1
                symbols.add(fields["symbol"].strip())
                positions.order_accepted(0, fields["user_ref_num"], fields["symbol"].strip(),
                                         fields["side"], fields["quantity"], fields["price"])
            elif kind == "E":
                try:
                    positions.filled(0, fields["user_ref_num"], fields["quantity"], fields["price"])
                except Exception as e:           # an execution of an order not seen accepted
                    logger.warning("fill not applied: %s", e)
                fills.append(fields)
            elif kind == "J":
                rejected += 1
                reject_reasons[str(fields.get("reason"))] += 1
        events = card.events(timeout=0.5)
        to_wire = sorted(wire_cycle[e["user_ref_num"]] - e.cycles for e in events
                         if e.type.name == "ORDER_SENT" and e["user_ref_num"] in wire_cycle)
        # LATENCY events (the card server's): start of the feed frame in -> start of the order's
        # segment out, for the trigger's orders.
        tick_to_trade = sorted(e.cycles - e["ingress_cycles"] for e in events if e.type.name == "LATENCY")
        counters = {r.name: card.read(f"tcp.{r.name}") for r in card.regmap.stage("tcp")
                    if r.name.startswith(("tx_", "rx_"))}
        summary = {
            "login_ms": login_ms, "accept_to_wire_cycles": to_wire, "tick_to_trade_cycles": tick_to_trade, "seconds": seconds, "host_orders": submitted,
            "answers": len(answers), "accepted": accepted, "fills": fills, "exchange_rejects": rejected,
            "reject_reasons": dict(reject_reasons),
            "position": card.read("risk.position", 0), "tcp": counters,
            "trigger_fired": card.read("trigger.fired"), "risk_accepted": card.read("risk.accepted"),
            "events": collections.Counter(e.type.name for e in events),
            "book_messages": card.read("book.messages"), "feed_frames": feed.counters["to_card"],
            "positions": {sym: {"position": positions.book(0, sym).position,
                                "realized": positions.book(0, sym).realized} for sym in sorted(symbols)},
        }
        return summary
    finally:
        for p in processes:
            stop_process(p, 5)
        for t in taps:
            t.close()
        if card is not None:
            card.close()
        server.shutdown()
        _ip("netns", "del", netns, check=False)
        shutil.rmtree(work, ignore_errors=True)


def format_tcp_summary(summary: dict[str, Any]) -> str:
    fills = summary["fills"]
    lines = ["tickwire appliance over TCP, Verilated, trading with tickwire exchange through Linux TAP interfaces",
             f"  SoupBinTCP login over the card's TCP engine  {summary['login_ms']:.1f} ms",
             f"  feed frames in               {summary['feed_frames']} ({summary['book_messages']} book messages)",
             f"  trigger fired                {summary['trigger_fired']}; risk accepted {summary['risk_accepted']} "
             f"(host orders {summary['host_orders']})",
             f"  exchange answers             {summary['answers']} (accepted {summary['accepted']}, "
             f"fills {len(fills)}, rejects {summary['exchange_rejects']} {summary['reject_reasons'] or ''})"]
    for f in fills:
        lines.append(f"    fill  UserRefNum {f['user_ref_num']}: {f['quantity']} @ {f['price'] / 10000:.4f}")
    for sym, book in summary["positions"].items():
        lines.append(f"  host position {sym:<6}        {book['position']} shares, realized "
                     f"{book['realized'] / 10000:.2f} USD")
    lines.append(f"  card's risk position, AAPL   {summary['position']}")
    wire = summary["accept_to_wire_cycles"]
    if wire:
        lines.append(f"  risk accept -> /S/ of the order's TCP segment: {wire[0]} / {wire[len(wire) // 2]} / "
                     f"{wire[-1]} cycles min / median / max over {len(wire)} orders")
    ttt = summary["tick_to_trade_cycles"]
    if ttt:
        lines.append(f"  tick-to-trade (feed frame in -> order segment out), trigger orders: "
                     f"{', '.join(map(str, ttt))} cycles")
    lines.append(f"  card TCP engine              {summary['tcp']}")
    lines.append(f"  card events                  {dict(summary['events'])}")
    return "\n".join(lines)
