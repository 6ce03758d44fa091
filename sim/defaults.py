"""Embedded default configuration: register values of docs/pipeline-contract.md and the demo feed.

The addresses are private/locally administered ones for simulation and loopback tests; they are
never meant for a real network. With these values the default feed builds the books of AAPL,
MSFT and NVDA; the trigger buys AAPL whenever its best ask comes down to $190.00 or below; risk
accepts those orders until the long-position and open-order limits are reached, and refuses the
ones outside the price collar.
"""

from __future__ import annotations

from typing import Any

from tickwire.hdl.order_entry import HOST_EXPOSURE_FIELDS, HOST_ORDER_FIELDS
from tickwire.protocols.net import ip_to_int, mac_to_int

#: The card's own (locally administered) MAC address on both ports.
CARD_MAC = mac_to_int("02:54:57:00:00:01")
#: The multicast group and UDP port of the demo ITCH feed.
FEED_GROUP = ip_to_int("233.54.12.111")
FEED_PORT = 26400
#: Feed line B carries the same datagrams to its own group (the port is the same).
FEED_GROUP_B = ip_to_int("233.54.12.112")

#: Every ``rw`` register of the contract, by ``stage.register`` name.
DEFAULT_REGISTERS: dict[str, int] = {
    "net_rx.mac_address": CARD_MAC,
    "net_rx.multicast_group": FEED_GROUP,
    "net_rx.udp_port": FEED_PORT,
    "net_rx_b.mac_address": CARD_MAC,
    "net_rx_b.multicast_group": FEED_GROUP_B,
    "net_rx_b.udp_port": FEED_PORT,
    "trigger.time_in_force": ord("0"),        # day
    "trigger.display": ord("Y"),              # visible
    "trigger.capacity": ord("A"),             # agency
    "trigger.intermarket_sweep_eligibility": ord("N"),
    "trigger.cross_type": ord("N"),           # continuous market
    # Rule 0: buy 100 AAPL (book slot 0) when its best ask comes down to $189.99 or below.
    # Rule 1: buy 50 AAPL when its spread narrows to one cent or less.
    # Rule 2: sell 100 MSFT (slot 1) when its best bid holds twice the shares of its best ask.
    # Rule 3: buy 100 NVDA (slot 2) when its best ask holds twice the shares of its best bid.
    # (Risk enables only AAPL, so the MSFT and NVDA orders are refused: DEFAULT_INDEXED.)
    **{f"trigger.rule_{k}_{name}": value
       for k, rule in enumerate(((1, 0, "B", 189_9900, 100), (3, 0, "B", 100, 50), (4, 1, "S", 512, 100),
                                 (5, 2, "B", 512, 100)))
       for name, value in zip(("kind", "slot", "side", "threshold", "quantity", "session"),
                              (rule[0], rule[1], ord(rule[2]), rule[3], rule[4], 0))},
    "risk.kill": 0,
    "risk.kill_session": 0,
    "risk.limit_slot": 0,                     # the selects the per-slot / per-session writes leave
    "risk.limit_session": 0,
    **{f"order_entry.host_{name}": 0 for name in HOST_ORDER_FIELDS},
    "order_entry.host_submit": 0,
    "order_entry.cl_ord_id_prefix": int.from_bytes(b"TW01", "big"),
    "order_entry.user_ref_num_session": 0,
    "order_entry.next_user_ref_num": 1,
    **{f"order_entry.exposure_{name}": 0 for name in HOST_EXPOSURE_FIELDS},
    "order_entry.exposure_submit": 0,
    "net_tx.src_mac": CARD_MAC,
    "net_tx.dst_mac": mac_to_int("02:00:00:00:00:fe"),
    "net_tx.src_ip": ip_to_int("10.0.1.2"),
    "net_tx.dst_ip": ip_to_int("10.0.1.1"),
    "net_tx.src_port": 40000,
    "net_tx.dst_port": 15000,
    "symbols.filter_enable": 0,               # pass every symbol until the host tracks some
    "symbols.track_locate": 0,
    # The default feed's symbols, in book slots 0, 1, 2.
    **{f"symbols.track_name_{k}": int.from_bytes(name.ljust(8).encode(), "little") if name else 0
       for k, name in enumerate(("AAPL", "MSFT", "NVDA", "", "", "", "", ""))},
    "symbols.lookup_locate": 0,
    "book.clear_untrusted": 0,
    "book.lookup_slot": 0,
}

#: Parameters of :func:`tickwire.sim.feed.build_feed`.
DEFAULT_FEED: dict[str, Any] = {
    "count": 300,
    "seed": 2024,
    "symbols": {"AAPL": 1, "MSFT": 2, "NVDA": 3},
    "session": "TICKWIRE01",
    "first_sequence": 1,
    "max_payload": 1400,
    "max_messages": 8,
    "src_mac": mac_to_int("02:00:00:00:00:10"),
    "src_ip": ip_to_int("10.0.0.1"),
    "src_port": 26400,
    "dst_ip": FEED_GROUP,
    "dst_port": FEED_PORT,
}


#: Per-slot and per-session risk limits of the default configuration, as the host writes them
#: (``risk.limit_slot`` / ``risk.limit_session`` selects the index, then the value): AAPL (slot 0)
#: may be bought up to 100 shares an order, $18,997.00 notional an order, within $2.00 of a
#: reference price of $189.50, and at most 500 shares long (open orders count) in 4 open orders;
#: session 0 may have $100,000 open and 1000 orders in a burst (a token back every cycle).
DEFAULT_INDEXED: dict[str, int] = {
    "risk.symbol_enabled[0]": 1,
    "risk.symbol_restricted[0]": 0,
    "risk.max_order_quantity[0]": 1000,
    "risk.max_order_notional[0]": 100 * 189_9700,
    "risk.reference_price[0]": 189_5000,
    "risk.price_collar[0]": 2_0000,
    "risk.max_long_position[0]": 500,
    "risk.max_short_position[0]": 500,
    "risk.max_open_orders[0]": 4,
    "risk.max_open_notional[0]": 100_000_0000,
    "risk.throttle_interval[0]": 0,
    "risk.throttle_burst[0]": 1000,
    "risk.last_user_ref_num[0]": 0,
}


def apply_defaults(card) -> None:
    """Write the default configuration into ``card`` (a :class:`tickwire.host.card.Card`): every
    writable plain register of :data:`DEFAULT_REGISTERS` the card's map has (not the ``*_submit``
    strobes: a write of any value is an action), then :data:`DEFAULT_INDEXED`."""
    for name, value in DEFAULT_REGISTERS.items():
        if name.endswith("_submit") or name not in card.regmap:
            continue
        register = card.regmap[name]
        if register.writable and not register.indexed_by:
            card.write(name, value)
    for key, value in DEFAULT_INDEXED.items():
        name, _, index = key.rstrip("]").partition("[")
        card.write(name, value, index=int(index))
