"""``tickwire run`` (the host agent) and the commands for people that talk to it over its control
socket: ``status``, ``positions``, ``orders``, ``limits``, ``kill``, ``unkill``, ``order send``.

Every command but ``run`` prints a table (rich on a terminal, plain text otherwise) or, with
``--json``, the agent's answer as JSON; when no agent is running it says so in one line and exits
with status 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_commands", "parse_price"]

PRICE_SCALE = 10_000


def parse_price(text: str) -> int:
    """A price in currency units (``"189.25"``) as price units of 1/10000."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price") from None
    units = value * PRICE_SCALE
    if units != units.to_integral_value() or units <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive price with at most 4 decimals")
    return int(units)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def add_commands(commands: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``status``, ``positions``, ``orders``, ``limits``, ``kill``, ``unkill`` and
    ``order`` to the ``tickwire`` subcommands."""
    from .agent import default_control_path
    control = argparse.ArgumentParser(add_help=False)
    control.add_argument("--control", metavar="ADDRESS", default=default_control_path(),
                         help="the agent's control socket: a Unix socket path or [HOST:]PORT on "
                              "127.0.0.1 (default: %(default)s)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true",
                        help="print the agent's answer as JSON (default: a table)")
    common = [*parents, control]

    run = commands.add_parser(
        "run", parents=common, help="run the host agent",
        description="Apply the config (all or nothing), open the card through its driver, and "
                    "run: card events, order sessions, journal, positions and P&L, "
                    "reconciliation with the card, gap retransmissions, control socket and "
                    "Prometheus metrics. Runs until SIGINT or SIGTERM.")
    run.add_argument("--config", metavar="FILE", type=Path, required=True,
                     help="the appliance config file (TOML)")
    run.add_argument("--journal", metavar="DIR", type=Path, default=Path("journal"),
                     help="journal folder (default: %(default)s)")
    run.add_argument("--metrics-port", metavar="PORT", type=int, default=None,
                     help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port; "
                          "default: no metrics endpoint)")
    run.add_argument("--rerequest", metavar="HOST:PORT", type=_host_port, default=None,
                     help="MoldUDP64 retransmission server for feed gaps (default: none)")
    run.add_argument("--feed-session", metavar="NAME", default="",
                     help="MoldUDP64 session named in retransmission requests "
                          "(default: '%(default)s', blank)")
    run.add_argument("--reconcile-interval", metavar="SECONDS", type=float, default=1.0,
                     help="how often to mark positions and reconcile with the card "
                          "(default: %(default)s)")
    run.add_argument("--heartbeat-interval", metavar="SECONDS", type=float, default=1.0,
                     help="SoupBinTCP client heartbeat interval (default: %(default)s)")
    run.add_argument("--no-apply", action="store_true",
                     help="do not write the config's registers (default: apply them)")
    run.set_defaults(handler=_cmd_run)

    for name, help_text in (("status", "the agent, its card, sessions and counters"),
                            ("positions", "positions and P&L per session and symbol"),
                            ("orders", "open orders"),
                            ("limits", "the card's risk limits and exposure")):
        parser = commands.add_parser(name, parents=[*common, output], help=help_text,
                                     description=help_text[0].upper() + help_text[1:] + ".")
        parser.set_defaults(handler=_cmd_show, command_name=name)

    for name, help_text in (("kill", "set the kill switch (of one session with --session)"),
                            ("unkill", "clear the kill switch (of one session with --session)")):
        parser = commands.add_parser(name, parents=[*common, output], help=help_text,
                                     description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument("--session", metavar="S", default=None,
                            help="session name or number (default: the whole card)")
        parser.add_argument("--reason", metavar="TEXT", default=None,
                            help="reason journalled with it (default: operator)")
        parser.set_defaults(handler=_cmd_kill, command_name=name)

    order = commands.add_parser("order", parents=common, help="send a host order",
                                description="Host orders through the card (risk checks them).")
    order_commands = order.add_subparsers(dest="order_command", metavar="COMMAND", required=True)
    send = order_commands.add_parser("send", parents=[*common, output],
                                     help="send an order through the card",
                                     description="Queue an Enter Order on the card; prints "
                                                 "whether risk accepted it.")
    send.add_argument("side", metavar="SIDE", choices=("buy", "sell", "B", "S"),
                      help="buy or sell")
    send.add_argument("quantity", metavar="QUANTITY", type=int, help="shares")
    send.add_argument("symbol", metavar="SYMBOL", help="a tracked symbol")
    send.add_argument("price", metavar="PRICE", type=parse_price,
                      help="limit price in currency units (e.g. 189.25)")
    send.add_argument("--session", metavar="S", default=None,
                      help="session name or number (default: the card's session)")
    send.add_argument("--ioc", action="store_true",
                      help="immediate or cancel (default: day order)")
    send.set_defaults(handler=_cmd_order)


# -- run --------------------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent, AgentOptions
    options = AgentOptions(config=args.config, journal=args.journal, control=args.control,
                           metrics_port=args.metrics_port, rerequest=args.rerequest,
                           feed_session=args.feed_session,
                           reconcile_interval=args.reconcile_interval,
                           heartbeat_interval=args.heartbeat_interval,
                           apply_config=not args.no_apply)
    agent = Agent(options)
    agent.start()
    previous = {s: signal.signal(s, lambda signum, frame: agent.stop())
                for s in (signal.SIGINT, signal.SIGTERM)}
    status = agent._cmd_status({}, None)
    print(f"tickwire: agent running (pid {status['pid']}): control {options.control}, journal "
          f"{options.journal} ({status['journal']['records']} records), metrics "
          f"{status['metrics'] or 'off'}", file=sys.stderr, flush=True)
    try:
        agent.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        agent.close()
    print("tickwire: agent stopped", file=sys.stderr, flush=True)
    return 0


# -- talking to the agent -----------------------------------------------------------------------

def _ask(args: argparse.Namespace, command: str, request_args: dict[str, Any] | None = None
         ) -> Any:
    from .control import AgentNotRunning, request
    try:
        return request(args.control, command, request_args)
    except AgentNotRunning as e:
        print(f"tickwire: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _money(value: Any) -> str:
    from .positions import format_price_units
    return format_price_units(value)


def _table(title: str, columns: Sequence[str], rows: list[list[Any]]) -> None:
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(c)
        for row in cells:
            table.add_row(*row)
        Console().print(table)
        return
    print(title)
    if not cells:
        print("  (none)")
        return
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cmd_show(args: argparse.Namespace) -> int:
    result = _ask(args, args.command_name)
    if args.json:
        _print_json(result)
        return 0
    name = args.command_name
    if name == "status":
        _table(f"agent pid {result['pid']}, up {result['uptime_s']} s, config {result['config']}",
               ("item", "value"),
               [["card", result["card"]], ["cycles", result["cycles"]],
                ["killed", result["killed"]],
                ["killed sessions", f"0x{result['killed_sessions']:x}"],
                ["journal", f"{result['journal']['directory']} "
                            f"({result['journal']['records']} records)"],
                ["metrics", result["metrics"]],
                ["reconciliation", "ok" if not result["reconciliation"]["mismatches"] else
                 json.dumps(result["reconciliation"]["mismatches"])],
                *([k, v] for k, v in sorted(result["counts"].items()))])
        _table("order sessions", ("name", "number", "state", "logins", "next sequence"),
               [[s["name"], s["number"], s["state"], s["logins"], s["next_sequence"]]
                for s in result["sessions"]])
    elif name == "positions":
        _table("positions (prices and P&L in currency units)",
               ("session", "symbol", "position", "realized", "unrealized", "open buy",
                "open sell", "open notional"),
               [[r["session"], r["symbol"], r["position"], _money(r["realized"]),
                 _money(r["unrealized"]), r["open_buy_quantity"], r["open_sell_quantity"],
                 _money(r["gross_open_notional"])] for r in result["positions"]])
    elif name == "orders":
        _table("open orders", ("session", "user_ref_num", "symbol", "side", "price", "quantity",
                               "open", "filled", "acknowledged"),
               [[o["session"], o["user_ref_num"], o["symbol"], o["side"], _money(o["price"]),
                 o["quantity"], o["open_quantity"], o["filled_quantity"], o["acknowledged"]]
                for o in result["orders"]])
    elif name == "limits":
        _table(f"risk: kill {result['risk'].get('kill')}, kill_session "
               f"{result['risk'].get('kill_session')}", ("item", "value"), [])
        if result["slots"]:
            columns = list(result["slots"][0])
            _table("per symbol", columns, [[row[c] for c in columns] for row in result["slots"]])
        if result["sessions"]:
            columns = list(result["sessions"][0])
            _table("per session", columns,
                   [[row[c] for c in columns] for row in result["sessions"]])
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    result = _ask(args, args.command_name, {"session": args.session, "reason": args.reason})
    if args.json:
        _print_json(result)
    else:
        state = "SET" if result["killed"] else "clear"
        print(f"kill switch {state}; sessions killed: 0x{result['killed_sessions']:x}")
    return 0


def _cmd_order(args: argparse.Namespace) -> int:
    side = {"buy": "B", "sell": "S"}.get(args.side, args.side)
    result = _ask(args, "order", {"side": side, "quantity": args.quantity,
                                  "symbol": args.symbol, "price": args.price,
                                  "session": args.session,
                                  "time_in_force": "3" if args.ioc else "0"})
    if args.json:
        _print_json(result)
    elif result["accepted"]:
        print(f"accepted by risk: user_ref_num {result['user_ref_num']}")
    else:
        print(f"REJECTED by risk: {result['reason']} (code {result['reason_code']})")
    return 0 if result["accepted"] else 3
