"""Pre-trade risk gate: every order action checked against per-slot and per-session limits and
exposure, in a fixed two cycles."""

from amaranth.hdl import Array, Assert, Assume, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring, stream, data
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..protocols.risk import (Action, BUY_SIDES, CHECK_ORDER, ExposureUpdateKind, REASON_BITS,
                              RejectReason, SELL_SIDES, VERDICT_COUNTERS)
from .book import BookQuerySignature
from .csr import Register, registers_signature
from .order import order_layout

__all__ = ["Risk", "reject_layout", "exposure_update_layout", "SLOT_LIMITS", "SESSION_LIMITS"]

#: A refused order action and why (``Risk.o_reject``).
reject_layout = data.StructLayout({"reason": REASON_BITS, "order": order_layout})

#: One change to the exposure of an order's slot and session (``Risk.i_exposure``), driven by the
#: inbound OUCH parser and by the host. ``kind`` is a
#: :class:`~tickwire.protocols.risk.ExposureUpdateKind`; ``side`` is the order's side (ASCII, as
#: in ``order_layout``); ``price`` the price the order was entered at (its open notional is
#: quantity x that price). ``user_ref_num`` names the order (for traces; risk does not use it).
exposure_update_layout = data.StructLayout({
    "kind": 3,
    "session": 8,
    "slot": 16,
    "side": 8,
    "quantity": 32,
    "price": 32,
    "user_ref_num": 32,
})

#: Per-slot limit registers (indexed by ``risk.limit_slot``), in register order.
SLOT_LIMITS = ("symbol_enabled", "symbol_restricted", "max_order_quantity", "max_order_notional",
               "reference_price", "price_collar", "max_long_position", "max_short_position",
               "max_open_orders")
#: Per-session limit registers (indexed by ``risk.limit_session``).
SESSION_LIMITS = ("max_open_notional", "throttle_burst", "throttle_interval")

_ENTER_ACTIONS = (Action.ENTER, Action.REPLACE)
_TAKE_OFF_ACTIONS = (Action.CANCEL, Action.MODIFY)
_K = ExposureUpdateKind


def _is_one_of(value, codes):
    result = Const(0)
    for code in codes:
        result = result | (value == code)
    return result


def _saturate(m, name, exact, low, high, width, *, is_signed=False):
    """``exact`` clamped to [low, high] as a ``width``-bit signal, and whether it was clamped."""
    out = Signal(signed(width) if is_signed else width, name=name)
    clamped = Signal(name=f"{name}_clamped")
    with m.If(exact < low):
        m.d.comb += [out.eq(low), clamped.eq(1)]
    with m.Elif(exact > high):
        m.d.comb += [out.eq(high), clamped.eq(1)]
    with m.Else():
        m.d.comb += out.eq(exact)
    return out, clamped


class Risk(wiring.Component):
    """Checks every order action, passes it or rejects it with a reason code, and keeps the
    exposure those limits are measured against.

    Checks, in the order of :data:`tickwire.protocols.risk.CHECK_ORDER` (the first failing one
    is the reason, codes from :class:`~tickwire.protocols.risk.RejectReason`): global kill,
    session out of range, session kill, invalid action or side, slot out of range; Cancel and
    Modify stop there (they only take risk off). Enter and Replace go on: symbol enabled, symbol
    not restricted, quantity not 0, quantity <= max order quantity, quantity x price <= max order
    notional, a reference price exists (the slot's host-set ``reference_price`` if not 0, else the
    midpoint of a trusted two-sided book from ``book``), |price - reference| <= price collar,
    position + open same-side quantity + quantity <= the long (buy) or short (sell: -position)
    limit, open orders < max open orders, session open notional + notional <= max open notional,
    the session's token bucket is not empty, user_ref_num > the session's last accepted one.

    An accepted Enter or Replace adds its quantity to the slot's open buy or sell quantity, 1 to
    its open orders, its notional to the session's open notional, takes a token and becomes the
    session's last user_ref_num. Exposure updates (``i_exposure``) take them off again and move
    the position. Every exposure value saturates (an update that would go below 0 or above the
    range stops at the bound and counts in ``exposure_saturated``); accepted orders never need
    to, because the checks bound them.

    Registers: per-slot limits are written by selecting the slot in ``limit_slot`` and then
    writing the limit register, which stores the value into that slot (the write lands two
    cycles after the bus write); reading the register returns the selected slot's stored value.
    Per-session limits and state use ``limit_session`` the same way. The exposure state of the
    selected slot and session reads back through the ``ro`` registers ``position``,
    ``open_buy_quantity``, ``open_sell_quantity``, ``open_orders``, ``open_notional`` and
    ``throttle_tokens``. Limits reset to 0, so every order is rejected until the host configures
    the slot and session. A reset clears the per-session state and the counters but not the
    per-slot memories (limits and exposure), which keep their contents. Writing ``throttle_burst`` fills that session's bucket and restarts its
    refill timer; a token is added every ``throttle_interval`` cycles (0 and 1: every cycle), up
    to ``throttle_burst``.

    Parameters
    ----------
    slots : int
        Tracked-symbol slots with their own limits and exposure (1..65536).
    sessions : int
        Order sessions with their own kill bit, credit, throttle and user_ref_num (1..64).
    quantity_width, price_width : int
        Bits of quantity and price the stage computes with (1..32; below 32 only for the formal
        proof, which assumes the upper bits are 0).
    open_orders_width, token_width, counter_width : int
        Widths of the open-order counts, the token buckets and the verdict counters.
    formal : bool
        Add the formal properties (``Assert``/``Assume``, see :mod:`tickwire.sim.formal`).
    omit_checks : tuple of RejectReason
        Checks to leave out: only for proving that the proof catches a missing check.

    Members
    -------
    i_stream : In(stream.Signature(order_layout))
        Order actions from every source (trigger, host).
    o_stream : Out(stream.Signature(order_layout))
        Accepted order actions.
    o_reject : Out(stream.Signature(reject_layout, always_ready=True))
        Refused order actions with their reason (a pulse per reject; never back-pressures).
    i_exposure : In(stream.Signature(exposure_update_layout))
        Exposure updates; ``ready`` is always 1.
    book : Out(BookQuerySignature())
        Top of book of the order's slot, for the price collar.
    regs : Out(registers_signature(Risk.registers))

    Latency
    -------
    2 cycles, fixed, for accepts and rejects alike: the order is taken on edge E (its slot's
    limits, exposure and book read on that edge), its verdict is registered on edge E + 1 and
    valid from then on (tests/hdl/test_risk.py ``test_latency``, sim/tb_risk.py). The verdict on
    edge V sees: ``kill`` and ``kill_session`` as they were in the cycle before V (a write
    landing on edge W stops every verdict from W + 1 on), the exposure after every update and
    accept of edges up to V - 1, and slot limits stored up to edge V - 1. An exposure update
    taken on edge E is applied on edge E + 1; the update and an order's verdict on the same edge
    both apply (the verdict sees the state without that update).
    """

    def __init__(self, *, slots=256, sessions=4, quantity_width=32, price_width=32,
                 open_orders_width=16, token_width=16, counter_width=32, formal=False,
                 omit_checks=()):
        for name, value, low, high in (("slots", slots, 1, 1 << 16), ("sessions", sessions, 1, 64),
                                       ("quantity_width", quantity_width, 1, 32),
                                       ("price_width", price_width, 1, 32),
                                       ("open_orders_width", open_orders_width, 1, 32),
                                       ("token_width", token_width, 1, 32),
                                       ("counter_width", counter_width, 1, 64)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, not {value!r}")
        omit_checks = tuple(omit_checks)
        for reason in omit_checks:
            if reason not in CHECK_ORDER:
                raise ValueError(f"omit_checks must hold RejectReason checks, not {reason!r}")
        self.slots, self.sessions = slots, sessions
        self.quantity_width, self.price_width = quantity_width, price_width
        self.open_orders_width, self.token_width = open_orders_width, token_width
        self.counter_width = counter_width
        self.formal = bool(formal)
        self.omit_checks = omit_checks
        self.registers = self._registers()
        super().__init__({
            "i_stream": In(stream.Signature(order_layout)),
            "o_stream": Out(stream.Signature(order_layout)),
            "o_reject": Out(stream.Signature(reject_layout, always_ready=True)),
            "i_exposure": In(stream.Signature(exposure_update_layout)),
            "book": Out(BookQuerySignature()),
            "regs": Out(registers_signature(self.registers)),
        })

    def _registers(self):
        qw, pw, ow, tw = self.quantity_width, self.price_width, self.open_orders_width, self.token_width
        nw = qw + pw
        cw = self.counter_width

        def slot(name, width, description):
            return Register(name, width, "rw", description + " (per slot).", strobe=True,
                            indexed_by="limit_slot")

        def session(name, width, description, access="rw"):
            return Register(name, width, access, description + " (per session).",
                            strobe=access == "rw", indexed_by="limit_session")

        counters = tuple(Register(name, cw, "ro", f"Order actions with verdict {reason.name} "
                                  "(saturates).") for reason, name in VERDICT_COUNTERS.items())
        return (
            Register("kill", 1, "rw", "Kill switch: 1 rejects every order action from the next cycle."),
            Register("kill_session", self.sessions, "rw",
                     "Bit s set rejects every order action of session s from the next cycle."),
            Register("limit_slot", 16, "rw", "Selects the slot the per-slot registers read and write."),
            slot("symbol_enabled", 1, "1: the symbol may be traded"),
            slot("symbol_restricted", 1, "1: the symbol is on the restricted list"),
            slot("max_order_quantity", qw, "Largest quantity of one order"),
            slot("max_order_notional", nw, "Largest quantity x price (4 decimals) of one order"),
            slot("reference_price", pw, "Host-set collar reference price; 0: use the book midpoint"),
            slot("price_collar", pw, "Largest |price - reference price|"),
            slot("max_long_position", qw, "Largest position + open buy quantity + buy order"),
            slot("max_short_position", qw, "Largest -position + open sell quantity + sell order"),
            slot("max_open_orders", ow, "Open orders allowed"),
            Register("position", qw + 1, "ro", "Position in shares, two's complement (per slot).",
                     indexed_by="limit_slot"),
            Register("open_buy_quantity", qw + 1, "ro", "Open buy shares (per slot).",
                     indexed_by="limit_slot"),
            Register("open_sell_quantity", qw + 1, "ro", "Open sell shares (per slot).",
                     indexed_by="limit_slot"),
            Register("open_orders", ow, "ro", "Open orders (per slot).", indexed_by="limit_slot"),
            Register("limit_session", 8, "rw", "Selects the session the per-session registers read and write."),
            session("max_open_notional", nw, "Largest open notional (credit limit)"),
            session("throttle_burst", tw, "Token bucket size; a write fills the bucket"),
            session("throttle_interval", 32, "Cycles per token added to the bucket"),
            session("last_user_ref_num", 32, "Last accepted UserRefNum; orders need a larger one"),
            session("open_notional", nw, "Open notional", access="ro"),
            session("throttle_tokens", tw, "Tokens in the bucket", access="ro"),
            *counters,
            Register("exposure_updates", cw, "ro", "Exposure updates applied (saturates)."),
            Register("exposure_saturated", cw, "ro", "Exposure updates that hit a bound (saturates)."),
            Register("exposure_refused", cw, "ro",
                     "Exposure updates with unknown slot, session, side or kind (saturates)."),
            Register("last_reject_reason", REASON_BITS, "ro", "Reason code of the latest reject (0: none yet)."),
        )

    def elaborate(self, platform):
        m = Module()
        i, o, rej, ex, book, r = (self.i_stream, self.o_stream, self.o_reject, self.i_exposure,
                                  self.book, self.regs)
        qw, pw, ow, tw = self.quantity_width, self.price_width, self.open_orders_width, self.token_width
        nw = qw + pw
        slots, sessions = self.slots, self.sessions
        slot_bits, session_bits = ceil_log2(slots), ceil_log2(sessions)
        q_max, n_max, o_max = (1 << qw) - 1, (1 << nw) - 1, (1 << ow) - 1
        pos_low, pos_high = -(1 << qw), (1 << qw) - 1
        open_max = (1 << (qw + 1)) - 1

        def session_index(value):
            return value[:session_bits] if session_bits else Const(0)

        # -- configuration: per-slot limits in memories, per-session limits in registers ---------
        limit_slot_ok = r.limit_slot < slots
        limit_session_ok = r.limit_session < sessions
        slot_limit_shapes = {
            "symbol_enabled": 1, "symbol_restricted": 1, "max_order_quantity": qw,
            "max_order_notional": nw, "reference_price": pw, "price_collar": pw,
            "max_long_position": qw, "max_short_position": qw, "max_open_orders": ow,
        }
        advance = Signal()
        m.d.comb += [advance.eq(~o.valid | o.ready), i.ready.eq(advance)]
        s1_valid = Signal()
        s1 = Signal(order_layout)
        read_slot = Signal(16)
        m.d.comb += [read_slot.eq(Mux(advance, i.payload.slot, s1.slot)), book.slot.eq(read_slot)]

        readback_ok = Signal()
        m.d.sync += readback_ok.eq(limit_slot_ok)
        limit = {}
        for name, shape in slot_limit_shapes.items():
            mem = m.submodules[f"{name}_memory"] = Memory(shape=shape, depth=slots, init=[])
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=(wp,))
            back = mem.read_port(transparent_for=(wp,))
            m.d.comb += [
                wp.addr.eq(r.limit_slot), wp.data.eq(getattr(r, name)),
                wp.en.eq(getattr(r, f"{name}_stb") & limit_slot_ok),
                rp.addr.eq(read_slot), back.addr.eq(r.limit_slot),
                getattr(r, f"{name}_readback").eq(Mux(readback_ok, back.data, 0)),
            ]
            limit[name] = rp.data

        session_limit = {name: Array(Signal(getattr(r, name).shape(), name=f"{name}_{s}")
                                     for s in range(sessions)) for name in SESSION_LIMITS}
        limit_session_index = session_index(r.limit_session)
        for name in SESSION_LIMITS:
            with m.If(getattr(r, f"{name}_stb") & limit_session_ok):
                m.d.sync += session_limit[name][limit_session_index].eq(getattr(r, name))
            m.d.comb += getattr(r, f"{name}_readback").eq(
                Mux(limit_session_ok, session_limit[name][limit_session_index], 0))

        # -- exposure state: per-slot rows in one memory, per-session values in registers --------
        row_layout = data.StructLayout({"position": signed(qw + 1), "open_buy": qw + 1,
                                        "open_sell": qw + 1, "open_orders": ow})
        state = m.submodules.state_memory = Memory(shape=row_layout, depth=slots, init=[])
        order_write = state.write_port()
        update_write = state.write_port()
        writers = (order_write, update_write)
        order_row = state.read_port(transparent_for=writers)
        update_row = state.read_port(transparent_for=writers)
        state_back = state.read_port(transparent_for=writers)
        m.d.comb += [order_row.addr.eq(read_slot), update_row.addr.eq(ex.payload.slot),
                     state_back.addr.eq(r.limit_slot),
                     r.position.eq(Mux(readback_ok, state_back.data.position, 0)),
                     r.open_buy_quantity.eq(Mux(readback_ok, state_back.data.open_buy, 0)),
                     r.open_sell_quantity.eq(Mux(readback_ok, state_back.data.open_sell, 0)),
                     r.open_orders.eq(Mux(readback_ok, state_back.data.open_orders, 0))]

        open_notional = Array(Signal(nw, name=f"open_notional_{s}") for s in range(sessions))
        tokens = Array(Signal(tw, name=f"tokens_{s}") for s in range(sessions))
        timer = Array(Signal(32, name=f"throttle_timer_{s}") for s in range(sessions))
        last_urn = Array(Signal(32, name=f"last_user_ref_num_{s}") for s in range(sessions))
        m.d.comb += [
            r.open_notional.eq(Mux(limit_session_ok, open_notional[limit_session_index], 0)),
            r.throttle_tokens.eq(Mux(limit_session_ok, tokens[limit_session_index], 0)),
            r.last_user_ref_num_readback.eq(Mux(limit_session_ok, last_urn[limit_session_index], 0)),
        ]

        # -- order stage 1: the order, its notional and everything read for its slot -------------
        s1_notional = Signal(nw)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(i.valid), s1.eq(i.payload),
                         s1_notional.eq(i.payload.quantity[:qw] * i.payload.price[:pw])]
        quantity, price = s1.quantity[:qw], s1.price[:pw]
        session = session_index(s1.session)
        row = order_row.data
        enter = _is_one_of(s1.action, _ENTER_ACTIONS)
        take_off = _is_one_of(s1.action, _TAKE_OFF_ACTIONS)
        buy = _is_one_of(s1.side, BUY_SIDES)
        sell = _is_one_of(s1.side, SELL_SIDES)

        book_reference = Signal(33)  # twice the midpoint
        reference = Signal(34)       # twice the reference price
        has_reference = Signal()
        m.d.comb += [
            book_reference.eq(book.bid_price + book.ask_price),
            has_reference.eq((limit["reference_price"] != 0)
                             | (book.trusted & (book.bid_price != 0) & (book.ask_price != 0))),
            reference.eq(Mux(limit["reference_price"] != 0, limit["reference_price"] << 1, book_reference)),
        ]
        twice_price = price << 1
        collar_distance = Mux(twice_price >= reference, twice_price - reference, reference - twice_price)

        long_exposure = Signal(signed(qw + 4))
        short_exposure = Signal(signed(qw + 4))
        m.d.comb += [long_exposure.eq(row.position + row.open_buy + quantity),
                     short_exposure.eq(row.open_sell + quantity - row.position)]
        session_open_after = open_notional[session] + s1_notional

        fails = {
            RejectReason.KILL: r.kill,
            RejectReason.UNKNOWN_SESSION: s1.session >= sessions,
            RejectReason.KILL_SESSION: r.kill_session.bit_select(session, 1),
            RejectReason.INVALID_ORDER: ~(enter | take_off) | (enter & ~(buy | sell)),
            RejectReason.UNKNOWN_SLOT: s1.slot >= slots,
            RejectReason.SYMBOL_DISABLED: ~limit["symbol_enabled"],
            RejectReason.SYMBOL_RESTRICTED: limit["symbol_restricted"],
            RejectReason.ZERO_QUANTITY: quantity == 0,
            RejectReason.MAX_QUANTITY: quantity > limit["max_order_quantity"],
            RejectReason.MAX_NOTIONAL: s1_notional > limit["max_order_notional"],
            RejectReason.NO_REFERENCE_PRICE: ~has_reference,
            RejectReason.PRICE_COLLAR: collar_distance > (limit["price_collar"] << 1),
            RejectReason.POSITION_LONG: buy & (long_exposure > limit["max_long_position"]),
            RejectReason.POSITION_SHORT: sell & (short_exposure > limit["max_short_position"]),
            RejectReason.MAX_OPEN_ORDERS: row.open_orders >= limit["max_open_orders"],
            RejectReason.OPEN_NOTIONAL: session_open_after > session_limit["max_open_notional"][session],
            RejectReason.THROTTLE: tokens[session] == 0,
            RejectReason.USER_REF_NUM: s1.user_ref_num <= last_urn[session],
        }
        take_off_stop = CHECK_ORDER.index(RejectReason.UNKNOWN_SLOT)
        reason = Signal(REASON_BITS)
        choice = Const(RejectReason.NONE, REASON_BITS)
        for index in reversed(range(len(CHECK_ORDER))):
            check = CHECK_ORDER[index]
            if check in self.omit_checks:
                continue
            fail = fails[check]
            if index > take_off_stop:
                fail = enter & fail
            choice = Mux(fail, check, choice)
        m.d.comb += reason.eq(choice)
        accept = Signal()
        add_exposure = Signal()  # this edge books an accepted Enter/Replace
        m.d.comb += [accept.eq(s1_valid & (reason == RejectReason.NONE)),
                     add_exposure.eq(advance & accept & enter)]

        # -- verdict ------------------------------------------------------------------------------
        counters = {name: Signal(self.counter_width, name=name) for name in VERDICT_COUNTERS.values()}
        counter_max = (1 << self.counter_width) - 1
        last_reason = Signal(REASON_BITS)
        for name, sig in counters.items():
            m.d.comb += getattr(r, name).eq(sig)
        m.d.comb += r.last_reject_reason.eq(last_reason)
        m.d.sync += rej.valid.eq(0)
        with m.If(advance):
            m.d.sync += [o.valid.eq(accept), o.payload.eq(s1)]
            with m.If(s1_valid):
                with m.Switch(reason):
                    for code, name in VERDICT_COUNTERS.items():
                        with m.Case(code):
                            with m.If(counters[name] != counter_max):
                                m.d.sync += counters[name].eq(counters[name] + 1)
                with m.If(reason != RejectReason.NONE):
                    m.d.sync += [last_reason.eq(reason), rej.valid.eq(1),
                                 rej.payload.reason.eq(reason), rej.payload.order.eq(s1)]

        # -- exposure update stage: taken on edge E, applied on E + 1 ----------------------------
        m.d.comb += ex.ready.eq(1)
        e1_valid = Signal()
        e1 = Signal(exposure_update_layout)
        e1_notional = Signal(nw)
        m.d.sync += [e1_valid.eq(ex.valid), e1.eq(ex.payload),
                     e1_notional.eq(ex.payload.quantity[:qw] * ex.payload.price[:pw])]
        e_buy = _is_one_of(e1.side, BUY_SIDES)
        e_sell = _is_one_of(e1.side, SELL_SIDES)
        e_ok = ((e1.slot < slots) & (e1.session < sessions) & (e_buy | e_sell)
                & (e1.kind <= max(_K)))
        e_apply = Signal()
        m.d.comb += e_apply.eq(e1_valid & e_ok)
        e_quantity = e1.quantity[:qw]
        e_session = session_index(e1.session)
        kind = e1.kind
        takes_quantity = _is_one_of(kind, (_K.EXECUTION, _K.CANCEL, _K.REJECT))
        ends_order = _is_one_of(kind, (_K.REJECT, _K.DONE))
        position_up = ((kind == _K.EXECUTION) & e_buy) | ((kind == _K.BROKEN) & e_sell)
        position_down = ((kind == _K.EXECUTION) & e_sell) | ((kind == _K.BROKEN) & e_buy)

        merged = Signal()  # the accepted order and the update hit the same slot on this edge
        m.d.comb += merged.eq(add_exposure & e_apply & (e1.slot == s1.slot))

        def new_row(prefix, base, with_order, with_update):
            """The row after the order's and/or the update's changes, saturated."""
            order_on = add_exposure if with_order else Const(0)
            upd_on = (merged if with_order else e_apply) if with_update else Const(0)
            position_delta = Mux(upd_on & position_up, e_quantity, 0)
            position_minus = Mux(upd_on & position_down, e_quantity, 0)
            fields, clamps = {}, []
            fields["position"], c = _saturate(m, f"{prefix}_position",
                                              base.position + position_delta - position_minus,
                                              pos_low, pos_high, qw + 1, is_signed=True)
            clamps.append(c)
            for side_name, order_side, upd_side in (("open_buy", buy, e_buy), ("open_sell", sell, e_sell)):
                add = Mux(order_on & order_side, quantity, 0)
                take = Mux(upd_on & takes_quantity & upd_side, e_quantity, 0)
                fields[side_name], c = _saturate(m, f"{prefix}_{side_name}",
                                                 base[side_name] + add - take, 0, open_max, qw + 1)
                clamps.append(c)
            fields["open_orders"], c = _saturate(
                m, f"{prefix}_open_orders",
                base.open_orders + order_on - (upd_on & ends_order), 0, o_max, ow)
            clamps.append(c)
            value = Signal(row_layout, name=f"{prefix}_row")
            m.d.comb += [value[name].eq(v) for name, v in fields.items()]
            clamped = Signal(name=f"{prefix}_clamped")
            m.d.comb += clamped.eq(Cat(*clamps).any())
            return value, clamped

        order_new, order_clamped = new_row("order_new", row, True, True)
        update_new, update_clamped = new_row("update_new", update_row.data, False, True)
        m.d.comb += [
            order_write.addr.eq(s1.slot), order_write.en.eq(add_exposure),
            order_write.data.eq(order_new),
            update_write.addr.eq(e1.slot), update_write.en.eq(e_apply & ~merged),
            update_write.data.eq(update_new),
        ]

        # Per-session state: open notional, token bucket, last UserRefNum.
        session_clamped = []
        session_new = {}
        for s in range(sessions):
            mine = add_exposure & (session == s)
            upd_mine = e_apply & takes_quantity & (e_session == s)
            new_notional, c = _saturate(m, f"open_notional_new_{s}",
                                        open_notional[s] + Mux(mine, s1_notional, 0)
                                        - Mux(upd_mine, e1_notional, 0), 0, n_max, nw)
            session_new[s] = new_notional
            session_clamped.append(c & upd_mine)
            m.d.sync += open_notional[s].eq(new_notional)

            refill = Signal(name=f"refill_{s}")
            interval = session_limit["throttle_interval"][s]
            m.d.comb += refill.eq(timer[s] + 1 >= interval)
            burst = session_limit["throttle_burst"][s]
            level = tokens[s] - mine + refill
            filled = Signal(tw + 1, name=f"tokens_new_{s}")
            m.d.comb += filled.eq(Mux(level > burst, burst, level))
            written = r.throttle_burst_stb & limit_session_ok & (limit_session_index == s)
            with m.If(written):
                m.d.sync += [tokens[s].eq(r.throttle_burst), timer[s].eq(0)]
            with m.Else():
                m.d.sync += [tokens[s].eq(filled), timer[s].eq(Mux(refill, 0, timer[s] + 1))]
            with m.If(r.last_user_ref_num_stb & limit_session_ok & (limit_session_index == s)):
                m.d.sync += last_urn[s].eq(r.last_user_ref_num)
            with m.Elif(mine):
                m.d.sync += last_urn[s].eq(s1.user_ref_num)

        exposure_counters = {name: Signal(self.counter_width, name=name)
                             for name in ("exposure_updates", "exposure_saturated", "exposure_refused")}
        for name, sig in exposure_counters.items():
            m.d.comb += getattr(r, name).eq(sig)
        update_clamp = Signal()
        m.d.comb += update_clamp.eq(Mux(merged, order_clamped, update_clamped) | Cat(*session_clamped).any())
        for name, cond in (("exposure_updates", e_apply), ("exposure_saturated", e_apply & update_clamp),
                           ("exposure_refused", e1_valid & ~e_ok)):
            with m.If(cond & (exposure_counters[name] != counter_max)):
                m.d.sync += exposure_counters[name].eq(exposure_counters[name] + 1)

        if self.formal:
            self._properties(m, locals())
        return m

    def _properties(self, m, v):
        """The formal properties (see :mod:`tickwire.sim.formal`): written from the issue's
        definitions with wide arithmetic, separately from the checks above."""
        i, ex, r, s1, row, limit = v["i"], v["ex"], v["r"], v["s1"], v["row"], v["limit"]
        qw, pw, ow, nw = v["qw"], v["pw"], v["ow"], v["nw"]
        sessions, slots = self.sessions, self.slots
        # Inputs carry no bits above the proved widths.
        m.d.comb += [Assume(i.payload.quantity >> qw == 0), Assume(i.payload.price >> pw == 0),
                     Assume(ex.payload.quantity >> qw == 0), Assume(ex.payload.price >> pw == 0)]

        # 1. No accepted order violates a limit or the exposure it was checked against.
        # Invariants the proof needs (each follows from the stage's registers being loaded from
        # the inputs): no bits above the proved widths, the registered products are the products.
        e1 = v["e1"]
        m.d.comb += [
            Assert(s1.quantity >> qw == 0), Assert(s1.price >> pw == 0),
            Assert(e1.quantity >> qw == 0), Assert(e1.price >> pw == 0),
            Assert(v["s1_notional"] == s1.quantity[:qw] * s1.price[:pw], "order notional register"),
            Assert(v["e1_notional"] == e1.quantity[:qw] * e1.price[:pw], "update notional register"),
        ]
        q = Signal(signed(qw + 8))
        p = Signal(signed(pw + 8))
        m.d.comb += [q.eq(s1.quantity[:qw]), p.eq(s1.price[:pw])]
        notional = Signal(nw + 2)
        m.d.comb += notional.eq(q * p)
        session = v["session"]
        book = self.book
        mid2 = Signal(signed(40))
        ref2 = Signal(signed(40))
        m.d.comb += [mid2.eq(book.bid_price + book.ask_price),
                     ref2.eq(Mux(limit["reference_price"] != 0, 2 * limit["reference_price"], mid2))]
        no_reference = (limit["reference_price"] == 0) & ~(book.trusted & (book.bid_price > 0)
                                                           & (book.ask_price > 0))
        off = Signal(signed(40))
        m.d.comb += off.eq(2 * p - ref2)
        is_buy = s1.side == ord("B")
        is_sell = (s1.side == ord("S")) | (s1.side == ord("T")) | (s1.side == ord("E"))
        entering = (s1.action == ord("O")) | (s1.action == ord("U"))
        leaving = (s1.action == ord("X")) | (s1.action == ord("M"))
        killed = r.kill | ((s1.session < sessions) & (r.kill_session >> s1.session)[0])
        base_violation = (killed | (s1.session >= sessions) | (s1.slot >= slots)
                          | ~(entering | leaving) | (entering & ~(is_buy | is_sell)))
        limit_violation = (
            ~limit["symbol_enabled"] | limit["symbol_restricted"] | (q == 0)
            | (q > limit["max_order_quantity"]) | (notional > limit["max_order_notional"])
            | no_reference | (off > 2 * limit["price_collar"]) | (-off > 2 * limit["price_collar"])
            | (is_buy & (row.position + row.open_buy + q > limit["max_long_position"]))
            | (is_sell & (-row.position + row.open_sell + q > limit["max_short_position"]))
            | (row.open_orders + 1 > limit["max_open_orders"])
            | (v["open_notional"][session] + notional > v["session_limit"]["max_open_notional"][session])
            | (v["tokens"][session] < 1)
            | (s1.user_ref_num <= v["last_urn"][session]))
        violation = base_violation | (entering & limit_violation)
        out_violation = Signal()
        loaded_accept = Signal()
        kill_before = Signal()
        with m.If(v["advance"]):
            m.d.sync += out_violation.eq(v["s1_valid"] & violation)
        m.d.sync += [loaded_accept.eq(v["advance"] & v["accept"]), kill_before.eq(r.kill)]
        m.d.comb += Assert(~(self.o_stream.valid & out_violation),
                           "an accepted order violates a limit")
        # 2. The kill switch: nothing is accepted on the edge after a cycle with kill set.
        m.d.comb += Assert(~(loaded_accept & kill_before), "an order accepted while killed")

        # 3. Exposure values never wrap: every value stored is the exact update clamped to range.
        def exact_clamp(new, exact, low, high, what):
            m.d.comb += Assert(new == Mux(exact < low, low, Mux(exact > high, high, exact)),
                               f"{what} wrapped")

        eq_, e_apply = v["e_quantity"], v["e_apply"]
        e_is_buy = e1.side == ord("B")
        e_is_sell = (e1.side == ord("S")) | (e1.side == ord("T")) | (e1.side == ord("E"))
        for name, base, write, with_order in (("order", row, v["order_write"], True),
                                              ("update", v["update_row"].data, v["update_write"], False)):
            with_update = Const(1) if not with_order else v["merged"]
            order_on = v["add_exposure"] if with_order else Const(0)
            upd = e_apply & with_update
            moves = Signal(signed(qw + 8), name=f"spec_{name}_position_move")
            kind = e1.kind
            m.d.comb += moves.eq(Mux(upd & (kind == ExposureUpdateKind.EXECUTION),
                                     Mux(e_is_buy, eq_, -eq_), 0)
                                 + Mux(upd & (kind == ExposureUpdateKind.BROKEN),
                                       Mux(e_is_buy, -eq_, eq_), 0))
            takes = upd & ((kind == ExposureUpdateKind.EXECUTION) | (kind == ExposureUpdateKind.CANCEL)
                           | (kind == ExposureUpdateKind.REJECT))
            ends = upd & ((kind == ExposureUpdateKind.REJECT) | (kind == ExposureUpdateKind.DONE))
            with m.If(write.en):
                exact_clamp(write.data.position, base.position + moves, -(1 << qw), (1 << qw) - 1,
                            f"{name} position")
                exact_clamp(write.data.open_buy, base.open_buy + Mux(order_on & is_buy, q, 0)
                            - Mux(takes & e_is_buy, eq_, 0), 0, (1 << (qw + 1)) - 1, f"{name} open buy")
                exact_clamp(write.data.open_sell, base.open_sell + Mux(order_on & is_sell, q, 0)
                            - Mux(takes & e_is_sell, eq_, 0), 0, (1 << (qw + 1)) - 1, f"{name} open sell")
                exact_clamp(write.data.open_orders, base.open_orders + order_on - ends, 0,
                            (1 << ow) - 1, f"{name} open orders")
        for s in range(sessions):
            mine = v["add_exposure"] & (session == s)
            upd = e_apply & (v["e_session"] == s) & ((e1.kind == ExposureUpdateKind.EXECUTION)
                                                     | (e1.kind == ExposureUpdateKind.CANCEL)
                                                     | (e1.kind == ExposureUpdateKind.REJECT))
            exact_clamp(v["session_new"][s], v["open_notional"][s] + Mux(mine, notional, 0)
                        - Mux(upd, v["e1_notional"], 0), 0, (1 << nw) - 1, f"session {s} open notional")
            # An accepted order always fits: its own additions never need the clamp.
            m.d.comb += Assert(~(mine & (v["open_notional"][s] + notional > (1 << nw) - 1)),
                               f"session {s} open notional overflow on accept")
        with m.If(v["add_exposure"]):
            m.d.comb += [
                Assert(~is_buy | (row.open_buy + q <= (1 << (qw + 1)) - 1), "open buy overflow on accept"),
                Assert(~is_sell | (row.open_sell + q <= (1 << (qw + 1)) - 1), "open sell overflow on accept"),
                Assert(row.open_orders + 1 <= (1 << ow) - 1, "open orders overflow on accept"),
            ]
