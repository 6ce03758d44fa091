"""Order actions inside the card: what the trigger and the host hand to risk, and risk to OUCH."""

from amaranth.lib import data

__all__ = ["order_layout", "OrderSource", "APPENDAGE_FIELDS"]


class OrderSource:
    """Where an order action came from (``order_layout.source``)."""

    TRIGGER = 0  #: the gateware strategy trigger
    HOST = 1     #: submitted by the host through the order queue registers


#: Optional OUCH 5.0 TagValue appendages an action may carry: field -> width in bits. The bit of
#: ``appendage_mask`` with the field's index here says the appendage is present.
APPENDAGE_FIELDS = {
    "min_qty": 32,
    "max_floor": 32,
    "price_type": 8,
    "peg_offset": 32,              # signed, price units of 1/10000
    "discretion_price": 32,
    "discretion_price_type": 8,
    "discretion_peg_offset": 32,   # signed
    "post_only": 8,
}

#: One order action: Enter ('O'), Replace ('U'), Cancel ('X') or Modify ('M') of OUCH 5.0.
#: ASCII fields are single characters; ``stock`` and ``cl_ord_id`` are in wire order (first
#: character in the low byte). ``price`` has 4 implied decimals. ``slot`` is the tracked-symbol
#: slot (symbol directory / book) that per-symbol limits are indexed by; ``session`` the order
#: session (SoupBinTCP/TCP connection). ``timestamp`` and ``sequence_number`` say which
#: market-data message caused a trigger order (0 for host orders).
order_layout = data.StructLayout({
    "action": 8,
    "source": 1,
    "session": 8,
    "slot": 16,
    "stock_locate": 16,
    "stock": 64,
    "side": 8,
    "quantity": 32,
    "price": 32,
    "user_ref_num": 32,
    "orig_user_ref_num": 32,
    "time_in_force": 8,
    "display": 8,
    "capacity": 8,
    "intermarket_sweep_eligibility": 8,
    "cross_type": 8,
    "cl_ord_id": 112,
    "appendage_mask": len(APPENDAGE_FIELDS),
    **APPENDAGE_FIELDS,
    "timestamp": 48,
    "sequence_number": 64,
})
