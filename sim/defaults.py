"""Embedded default configuration: register values of docs/pipeline-contract.md and the demo feed.

The addresses are private/locally administered ones for simulation and loopback tests; they are
never meant for a real network. With these values the default feed makes the trigger fire on
some AAPL sell orders (not all) and the risk stage accept some intents and reject the
higher-priced ones on notional.
"""

from __future__ import annotations

from typing import Any

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
    "trigger.enable": 1,
    "trigger.stock_locate": 1,                # AAPL in the default feed
    "trigger.side": ord("B"),                 # buy when a sell is offered at or below the limit
    "trigger.price_limit": 190_0000,          # $190.00
    "trigger.quantity": 100,
    "risk.kill": 0,
    "risk.max_order_quantity": 1000,
    "risk.max_order_notional": 100 * 189_9700,  # $18,997.00: 100 shares at up to $189.97
    "ouch.next_user_ref_num": 1,
    "ouch.time_in_force": ord("0"),           # day
    "ouch.display": ord("Y"),                 # visible
    "ouch.capacity": ord("A"),                # agency
    "ouch.intermarket_sweep_eligibility": ord("N"),
    "ouch.cross_type": ord("N"),              # continuous market
    "ouch.cl_ord_id_prefix": int.from_bytes(b"TW01", "big"),
    "net_tx.src_mac": CARD_MAC,
    "net_tx.dst_mac": mac_to_int("02:00:00:00:00:fe"),
    "net_tx.src_ip": ip_to_int("10.0.1.2"),
    "net_tx.dst_ip": ip_to_int("10.0.1.1"),
    "net_tx.src_port": 40000,
    "net_tx.dst_port": 15000,
    "symbols.filter_enable": 0,               # pass every symbol until the host tracks some
    "symbols.track_locate": 0,
    **{f"symbols.track_name_{k}": 0 for k in range(8)},
    "symbols.lookup_locate": 0,
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
