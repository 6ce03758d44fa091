"""Open orders: the card's orders the exchange has not finished, and the exposure updates for risk
that the exchange's answers about them make."""

from enum import IntEnum

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from ..protocols.ouch import ExposureKind
from ..protocols.risk import Action, ExposureUpdateKind
from .csr import Register, registers_signature
from .order import order_layout
from .risk import exposure_update_layout

__all__ = ["OpenOrders", "Anomaly", "feedback_layout", "anomaly_layout", "ORDER_STATE_DEAD",
           "LATENCY"]

#: OUCH 5.0 Order State of an order the exchange accepted (or replaced) already dead: no further
#: message will come for it.
ORDER_STATE_DEAD = ord("D")

#: Cycles from an exchange message taken (Order Replaced: its first operation issued) to its first
#: exposure update valid on ``o_exposure`` (tests/hdl/test_open_orders.py ``test_latency``).
LATENCY = 2

#: What an exchange message says about one of the card's orders (``OpenOrders.i_feedback``): the
#: inbound parser's :data:`tickwire.hdl.ouch_inbound.exposure_layout` and the two fields of the
#: message that layout leaves out: ``order_state`` (Order Accepted / Order Replaced, ASCII) and
#: ``match_number`` (Order Executed / Broken Trade; a Broken Trade carries no quantity, so the
#: execution it breaks is found by its match number). ``kind`` is an
#: :class:`~tickwire.protocols.ouch.ExposureKind`.
feedback_layout = data.StructLayout({
    "kind": 3,
    "session": 8,
    "user_ref_num": 32,
    "orig_user_ref_num": 32,
    "quantity": 32,
    "price": 32,
    "order_state": 8,
    "match_number": 64,
})


class Anomaly(IntEnum):
    """Why the table could not do what an input asked (``o_anomaly.reason``,
    ``last_anomaly_reason``); each has its counter register."""

    NONE = 0
    UNKNOWN_SESSION = 1  #: session >= the stage's ``sessions`` (accepted order or message)
    COLLISION = 2        #: an accepted order's entry holds an open order (this one or another)
    MISS = 3             #: the message names an order not in the table
    QUANTITY = 4         #: the message's quantity is above the order's open quantity
    BROKEN_MISS = 5      #: a Broken Trade whose match number has no execution on record


#: Counter register of each anomaly.
ANOMALY_COUNTERS = {
    Anomaly.UNKNOWN_SESSION: "unknown_session",
    Anomaly.COLLISION: "insert_collisions",
    Anomaly.MISS: "misses",
    Anomaly.QUANTITY: "quantity_mismatches",
    Anomaly.BROKEN_MISS: "broken_misses",
}

#: One anomaly for the host (``OpenOrders.o_anomaly``). ``kind`` is the message's
#: :class:`~tickwire.protocols.ouch.ExposureKind`, ``NONE`` for an accepted order; ``quantity``
#: the message's (or the accepted order's) quantity, ``open_quantity`` the table's before it.
anomaly_layout = data.StructLayout({
    "reason": 3,
    "kind": 3,
    "session": 8,
    "user_ref_num": 32,
    "quantity": 32,
    "open_quantity": 32,
})


class _Op(IntEnum):
    """The operations the table runs, one per issue: a message is one, Order Replaced two."""

    NONE = 0
    INSERT = 1     # an accepted Enter or Replace
    CAP = 2        # open quantity := min(open, quantity), 0 if dead (Accepted, Modified, Replaced new)
    DECREMENT = 3  # open quantity -= quantity (Canceled, AIQ Canceled)
    EXECUTE = 4    # as DECREMENT, and the execution is kept for a Broken Trade
    REJECT = 5     # the order never rested (Rejected)
    REMOVE = 6     # the order is gone, replaced (Replaced, original order)
    BREAK = 7      # a kept execution is undone (Broken Trade)


_op_layout = data.StructLayout({
    "op": 3, "kind": 3, "session": 8, "session_ok": 1, "user_ref_num": 32, "quantity": 32,
    "price": 32, "slot": 16, "side": 8, "dead": 1, "match_number": 64,
})

_row_layout = data.StructLayout({
    "valid": 1, "user_ref_num": 32, "slot": 16, "side": 8, "price": 32, "open_quantity": 32,
})

_execution_layout = data.StructLayout({
    "valid": 1, "match_number": 64, "session": 8, "user_ref_num": 32, "slot": 16, "side": 8,
    "price": 32, "quantity": 32,
})

_insert_layout = data.StructLayout({
    "session": 8, "user_ref_num": 32, "slot": 16, "side": 8, "price": 32, "quantity": 32,
})

_K = ExposureUpdateKind


def _power_of_two(name, value, high):
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high \
            or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in 1..{high}, not {value!r}")


class OpenOrders(wiring.Component):
    """Keeps the card's open orders and turns the exchange's answers about them into exposure
    updates for risk, merged with the host's updates into risk's one exposure stream.

    The table is on-chip memory directly indexed by (session, the low ``log2(entries)`` bits of
    the UserRefNum); an entry stores the full UserRefNum, which every message must match, so a
    message never acts on another order. Risk requires UserRefNums to rise in each session, so an
    entry is reused only after ``entries`` later orders of its session. Each entry is one booking
    of risk (an accepted Enter or Replace: its slot, side, price and the quantity risk still holds
    open for it); every update subtracts from what that booking added, at the price it was booked
    at, so risk's open quantity, open notional and open orders return exactly to what the other
    bookings hold.

    Accepted orders (``i_accepted``): Enter and Replace insert an entry with the order's quantity;
    Cancel and Modify change nothing (the exchange's answer does). A Replace gets its own entry:
    risk books it as a new order when it accepts it, while the original stays open (and may still
    fill) until the exchange answers.

    Exchange messages (``i_feedback``), by :class:`~tickwire.protocols.ouch.ExposureKind`:

    * Order Executed (q): EXECUTION of min(q, open) (position moves, open quantity and notional
      fall), then DONE if nothing is left open. The execution is kept, by match number, for a
      Broken Trade.
    * Order Canceled / AIQ Canceled (q shares taken off): CANCEL of min(q, open), DONE if nothing
      is left.
    * Order Rejected: REJECT of the whole open quantity (REJECT also ends the order in risk).
    * Broken Trade: BROKEN of the kept execution's quantity (position moves back), found by match
      number and checked against session and UserRefNum; an execution breaks once.
    * Order Accepted (q) and Order Modified (q, the shares now open): the open quantity becomes
      min(open, q), a CANCEL of the difference; an accepted order in Order State 'D' (dead) is
      cancelled whole. DONE when nothing is left.
    * Order Replaced (original -> new, q): the original order's booking is taken off whole
      (CANCEL of its open quantity, DONE), then the new order's booking is treated like Order
      Accepted with q and the message's Order State. Risk booked the Replace when it accepted it
      (quantity and price of the Replace), so after the two steps risk holds exactly the new
      order's q at the Replace's price: the sum is exact whatever filled in between.
    * Order Priority Update (no exposure kind; the parser sends none): no change; open notional
      stays at the price the order was booked at, which is what keeps the subtractions exact.

    Updates carry the entry's slot, side and booked price. A quantity above the open quantity
    (``QUANTITY``) takes off only what is open; a message for an order not in the table
    (``MISS``), an accepted order whose entry is held (``COLLISION``), a Broken Trade without its
    execution (``BROKEN_MISS``), a session out of range (``UNKNOWN_SESSION``) change nothing else:
    each is counted, kept in ``last_anomaly_*`` and sent on ``o_anomaly`` for the host, which
    corrects risk with host updates. Accepted orders that find the insert queue full are counted
    in ``inserts_dropped``. Writing ``clear`` empties both tables (one entry a cycle).

    Host updates (``i_host``, always taken) wait in a queue and go to ``o_exposure`` in cycles
    the table sends nothing; one arriving with the queue full is counted in ``host_dropped``.

    Parameters
    ----------
    sessions : int
        Order sessions (1..64).
    entries : int
        Table entries per session (power of two, 1..65536).
    executions : int
        Executions kept for Broken Trades (power of two, indexed by the low match number bits).
    insert_queue_depth, host_queue_depth : int
        Accepted orders and host updates that can wait.

    Members
    -------
    i_accepted : In(stream.Signature(order_layout, always_ready=True))
        Order actions risk accepted.
    i_feedback : In(stream.Signature(feedback_layout))
        Exchange messages about the card's orders.
    i_host : In(stream.Signature(tickwire.hdl.risk.exposure_update_layout))
        The host's exposure updates; ``ready`` is always 1.
    o_exposure : Out(stream.Signature(tickwire.hdl.risk.exposure_update_layout))
        To ``Risk.i_exposure``.
    o_anomaly : Out(stream.Signature(anomaly_layout, always_ready=True))
        A pulse per anomaly.
    regs : Out(registers_signature(OpenOrders(...).registers))

    Latency
    -------
    :data:`LATENCY` = 2 cycles, fixed: a message taken on edge E (for Order Replaced: its first
    operation issued on edge E, the message taken two edges later) has its entry read on edge E,
    its first update registered on edge E + 1 and valid on ``o_exposure`` from then on; further
    updates follow one per edge while ``o_exposure`` is ready (risk's always is). The table takes
    a message or an accepted order only when it is free: accepted orders go first, and an
    operation with two updates (e.g. EXECUTION and DONE) keeps it from taking anything on the
    edge its first update is registered. An accepted order arriving on edge A (insert queue empty)
    is inserted on edge A + 2 and found by every message offered after edge A: the message waits
    for the insert (tests/hdl/test_open_orders.py ``test_latency``,
    ``test_accepted_order_found_by_every_later_message``).
    """

    def __init__(self, *, sessions: int = 4, entries: int = 256, executions: int = 256,
                 insert_queue_depth: int = 16, host_queue_depth: int = 4, counter_width: int = 32):
        if not isinstance(sessions, int) or isinstance(sessions, bool) or not 1 <= sessions <= 64:
            raise ValueError(f"sessions must be an integer in 1..64, not {sessions!r}")
        _power_of_two("entries", entries, 1 << 16)
        _power_of_two("executions", executions, 1 << 16)
        for name, value in (("insert_queue_depth", insert_queue_depth),
                            ("host_queue_depth", host_queue_depth)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
                raise ValueError(f"{name} must be an integer in 1..1024, not {value!r}")
        if not isinstance(counter_width, int) or not 1 <= counter_width <= 64:
            raise ValueError(f"counter_width must be an integer in 1..64, not {counter_width!r}")
        self.sessions, self.entries, self.executions = sessions, entries, executions
        self.insert_queue_depth, self.host_queue_depth = insert_queue_depth, host_queue_depth
        self.counter_width = counter_width
        self.depth = sessions * entries
        cw = counter_width
        self.registers = (
            Register("inserts", cw, "ro", "Accepted orders entered in the table."),
            Register("inserts_dropped", cw, "ro", "Accepted orders lost: the insert queue was full."),
            Register("messages", cw, "ro", "Exchange messages taken."),
            Register("updates", cw, "ro", "Exposure updates the table sent to risk."),
            Register("host_updates", cw, "ro", "Host exposure updates sent to risk."),
            Register("host_dropped", cw, "ro", "Host exposure updates lost: the host queue was full."),
            *(Register(name, cw, "ro", f"Anomalies {reason.name}.")
              for reason, name in ANOMALY_COUNTERS.items()),
            Register("execution_overwrites", cw, "ro",
                     "Kept executions replaced by a newer one before any Broken Trade."),
            Register("open_entries", ceil_log2(self.depth + 1), "ro", "Orders in the table."),
            Register("last_anomaly_reason", 3, "ro", "Reason of the latest anomaly (0: none yet)."),
            Register("last_anomaly_user_ref_num", 32, "ro", "UserRefNum of the latest anomaly."),
            Register("clear", 1, "rw", "Write 1: empty the table and the kept executions.", strobe=True),
            Register("clearing", 1, "ro", "1 while the tables are being emptied."),
        )
        super().__init__({
            "i_accepted": In(stream.Signature(order_layout, always_ready=True)),
            "i_feedback": In(stream.Signature(feedback_layout)),
            "i_host": In(stream.Signature(exposure_update_layout)),
            "o_exposure": Out(stream.Signature(exposure_update_layout)),
            "o_anomaly": Out(stream.Signature(anomaly_layout, always_ready=True)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        r, o, fb_in, acc = self.regs, self.o_exposure, self.i_feedback, self.i_accepted
        k = exact_log2(self.entries)
        sbits = ceil_log2(self.sessions)
        mk = exact_log2(self.executions)
        counter_max = (1 << self.counter_width) - 1

        counter_names = ("inserts", "inserts_dropped", "messages", "updates", "host_updates",
                         "host_dropped", *ANOMALY_COUNTERS.values(), "execution_overwrites")
        counters = {name: Signal(self.counter_width, name=name) for name in counter_names}
        for name, sig in counters.items():
            m.d.comb += getattr(r, name).eq(sig)

        def bump(name, cond):
            with m.If(cond & (counters[name] != counter_max)):
                m.d.sync += counters[name].eq(counters[name] + 1)

        def address(session, user_ref_num):
            return Cat(user_ref_num[:k], session[:sbits]) if sbits else user_ref_num[:k]

        table = m.submodules.table = Memory(shape=_row_layout, depth=self.depth, init=[])
        t_w = table.write_port()
        t_r = table.read_port(transparent_for=(t_w,))
        kept = m.submodules.executions = Memory(shape=_execution_layout, depth=self.executions, init=[])
        x_w = kept.write_port()
        x_r = kept.read_port(transparent_for=(x_w,))

        # -- accepted orders: Enter and Replace wait in the insert queue ----------------------------
        inserts = m.submodules.insert_queue = fifo.SyncFIFO(width=_insert_layout.size,
                                                            depth=self.insert_queue_depth)
        ins = Signal(_insert_layout)
        books = Signal()
        a = acc.payload
        m.d.comb += [
            ins.session.eq(a.session), ins.user_ref_num.eq(a.user_ref_num), ins.slot.eq(a.slot),
            ins.side.eq(a.side), ins.price.eq(a.price), ins.quantity.eq(a.quantity),
            books.eq(acc.valid & ((a.action == Action.ENTER) | (a.action == Action.REPLACE))),
            inserts.w_en.eq(books), inserts.w_data.eq(ins),
        ]
        bump("inserts_dropped", books & ~inserts.w_rdy)

        # -- host updates wait in the host queue -----------------------------------------------------
        host = m.submodules.host_queue = fifo.SyncFIFO(width=exposure_update_layout.size,
                                                       depth=self.host_queue_depth)
        m.d.comb += [self.i_host.ready.eq(1), host.w_en.eq(self.i_host.valid),
                     host.w_data.eq(self.i_host.payload)]
        bump("host_dropped", self.i_host.valid & ~host.w_rdy)

        # -- output registers: the table's updates, then the host's ----------------------------------
        out_valid = Signal()
        out = Signal(exposure_update_layout)
        pending_valid = Signal()   # the second update of an operation, sent on the next edge
        pending = Signal(exposure_update_layout)
        out_taken = Signal()
        out_free = Signal()
        m.d.comb += [
            o.valid.eq(out_valid | host.r_rdy),
            o.payload.eq(Mux(out_valid, out, host.r_data)),
            host.r_en.eq(o.ready & ~out_valid),
            out_taken.eq(out_valid & o.ready),
            out_free.eq(~out_valid | out_taken),
        ]
        bump("updates", out_taken)
        bump("host_updates", o.ready & ~out_valid & host.r_rdy)

        # -- stage B: the operation issued on the last edge, with its entry and kept execution -------
        b_valid = Signal()
        b = Signal(_op_layout)
        b_done = Signal()          # B's operation completes (writes, updates) on this edge
        b_two = Signal()           # ... with two updates
        m.d.comb += b_done.eq(b_valid & out_free & ~pending_valid)

        clearing = Signal()
        clear_addr = Signal(max(ceil_log2(self.depth), mk, 1) + 1)
        can_issue = Signal()
        m.d.comb += can_issue.eq((~b_valid | b_done) & ~(b_done & b_two) & ~clearing)

        # -- stage A: issue one operation: an insert, else the next operation of a message -----------
        issue = Signal()
        op = Signal(_op_layout)
        second = Signal()          # Order Replaced: its first operation (the original) is issued
        f = fb_in.payload
        qi = _insert_layout(inserts.r_data)
        with m.If(can_issue):
            with m.If(inserts.r_rdy):
                m.d.comb += [
                    issue.eq(1), inserts.r_en.eq(1),
                    op.op.eq(_Op.INSERT), op.kind.eq(ExposureKind.NONE), op.session.eq(qi.session),
                    op.user_ref_num.eq(qi.user_ref_num), op.quantity.eq(qi.quantity),
                    op.price.eq(qi.price), op.slot.eq(qi.slot), op.side.eq(qi.side),
                ]
            with m.Elif(fb_in.valid):
                m.d.comb += [
                    issue.eq(1), op.kind.eq(f.kind), op.session.eq(f.session),
                    op.user_ref_num.eq(f.user_ref_num), op.quantity.eq(f.quantity),
                    op.price.eq(f.price), op.match_number.eq(f.match_number),
                    op.dead.eq(f.order_state == ORDER_STATE_DEAD),
                    fb_in.ready.eq(1),
                ]
                with m.Switch(f.kind):
                    with m.Case(ExposureKind.ACCEPTED, ExposureKind.MODIFIED):
                        m.d.comb += op.op.eq(_Op.CAP)
                    with m.Case(ExposureKind.REPLACED):
                        with m.If(~second):
                            m.d.comb += [op.op.eq(_Op.REMOVE), op.user_ref_num.eq(f.orig_user_ref_num),
                                         op.dead.eq(0), fb_in.ready.eq(0)]
                            m.d.sync += second.eq(1)
                        with m.Else():
                            m.d.comb += op.op.eq(_Op.CAP)
                            m.d.sync += second.eq(0)
                    with m.Case(ExposureKind.CANCELED):
                        m.d.comb += op.op.eq(_Op.DECREMENT)
                    with m.Case(ExposureKind.EXECUTED):
                        m.d.comb += op.op.eq(_Op.EXECUTE)
                    with m.Case(ExposureKind.REJECTED):
                        m.d.comb += op.op.eq(_Op.REJECT)
                    with m.Case(ExposureKind.BROKEN):
                        m.d.comb += op.op.eq(_Op.BREAK)
                    with m.Default():
                        m.d.comb += op.op.eq(_Op.NONE)
        m.d.comb += op.session_ok.eq(op.session < self.sessions)
        bump("messages", fb_in.valid & fb_in.ready)
        m.d.comb += [
            t_r.addr.eq(address(op.session, op.user_ref_num)), t_r.en.eq(issue),
            x_r.addr.eq(op.match_number[:mk]), x_r.en.eq(issue),
        ]
        with m.If(issue):
            m.d.sync += [b_valid.eq(1), b.eq(op)]
        with m.Elif(b_done):
            m.d.sync += b_valid.eq(0)

        # -- stage B: what the operation does ---------------------------------------------------------
        row = t_r.data
        kept_row = x_r.data
        hit = Signal()
        m.d.comb += hit.eq(row.valid & (row.user_ref_num == b.user_ref_num) & b.session_ok)
        open_quantity = row.open_quantity
        over = Signal()
        clipped = Signal(32)       # min(quantity, open)
        m.d.comb += [over.eq(b.quantity > open_quantity),
                     clipped.eq(Mux(over, open_quantity, b.quantity))]
        on_table = Signal()        # an operation on an existing entry
        m.d.comb += on_table.eq((b.op == _Op.CAP) | (b.op == _Op.DECREMENT) | (b.op == _Op.EXECUTE)
                                | (b.op == _Op.REJECT) | (b.op == _Op.REMOVE))
        act = Signal()             # ... that found its entry
        m.d.comb += act.eq(on_table & hit)
        new_open = Signal(32)
        first_kind = Signal(3)
        first_quantity = Signal(32)
        ends = Signal()            # a DONE follows the first update
        with m.Switch(b.op):
            with m.Case(_Op.CAP):
                m.d.comb += [new_open.eq(Mux(b.dead, 0, clipped)), first_kind.eq(_K.CANCEL),
                             first_quantity.eq(open_quantity - new_open), ends.eq(new_open == 0)]
            with m.Case(_Op.DECREMENT, _Op.EXECUTE):
                m.d.comb += [new_open.eq(open_quantity - clipped),
                             first_kind.eq(Mux(b.op == _Op.EXECUTE, _K.EXECUTION, _K.CANCEL)),
                             first_quantity.eq(clipped), ends.eq(new_open == 0)]
            with m.Case(_Op.REJECT):
                m.d.comb += [new_open.eq(0), first_kind.eq(_K.REJECT),
                             first_quantity.eq(open_quantity), ends.eq(0)]
            with m.Case(_Op.REMOVE):
                m.d.comb += [new_open.eq(0), first_kind.eq(_K.CANCEL),
                             first_quantity.eq(open_quantity), ends.eq(1)]
        kept_hit = Signal()
        m.d.comb += kept_hit.eq((b.op == _Op.BREAK) & b.session_ok & kept_row.valid
                                & (kept_row.match_number == b.match_number)
                                & (kept_row.session == b.session)
                                & (kept_row.user_ref_num == b.user_ref_num))
        insert_ok = Signal()
        m.d.comb += insert_ok.eq((b.op == _Op.INSERT) & b.session_ok & ~row.valid)

        emit1 = Signal()
        emit2 = Signal()
        m.d.comb += [
            emit1.eq((act & ((first_quantity != 0) | (b.op == _Op.REJECT))) | kept_hit),
            emit2.eq(act & ends),
            b_two.eq(b_valid & emit1 & emit2),
        ]
        first = Signal(exposure_update_layout)
        done = Signal(exposure_update_layout)
        m.d.comb += [
            done.kind.eq(_K.DONE), done.session.eq(b.session), done.slot.eq(row.slot),
            done.side.eq(row.side), done.quantity.eq(0), done.price.eq(row.price),
            done.user_ref_num.eq(b.user_ref_num),
        ]
        with m.If(b.op == _Op.BREAK):
            m.d.comb += [
                first.kind.eq(_K.BROKEN), first.session.eq(b.session), first.slot.eq(kept_row.slot),
                first.side.eq(kept_row.side), first.quantity.eq(kept_row.quantity),
                first.price.eq(kept_row.price), first.user_ref_num.eq(b.user_ref_num),
            ]
        with m.Else():
            m.d.comb += [
                first.eq(done), first.kind.eq(first_kind), first.quantity.eq(first_quantity),
            ]

        with m.If(out_free):
            with m.If(pending_valid):
                m.d.sync += [out.eq(pending), out_valid.eq(1), pending_valid.eq(0)]
            with m.Elif(b_done & (emit1 | emit2)):
                m.d.sync += [out.eq(Mux(emit1, first, done)), out_valid.eq(1),
                             pending.eq(done), pending_valid.eq(emit1 & emit2)]
            with m.Else():
                m.d.sync += out_valid.eq(0)

        # -- writes -----------------------------------------------------------------------------------
        new_row = Signal(_row_layout)
        with m.If(b.op == _Op.INSERT):
            m.d.comb += [new_row.valid.eq(1), new_row.user_ref_num.eq(b.user_ref_num),
                         new_row.slot.eq(b.slot), new_row.side.eq(b.side), new_row.price.eq(b.price),
                         new_row.open_quantity.eq(b.quantity)]
        with m.Else():
            m.d.comb += [new_row.eq(row), new_row.valid.eq(new_open != 0),
                         new_row.open_quantity.eq(new_open)]
        new_kept = Signal(_execution_layout)
        with m.If(b.op == _Op.EXECUTE):
            m.d.comb += [new_kept.valid.eq(1), new_kept.match_number.eq(b.match_number),
                         new_kept.session.eq(b.session), new_kept.user_ref_num.eq(b.user_ref_num),
                         new_kept.slot.eq(row.slot), new_kept.side.eq(row.side),
                         new_kept.price.eq(row.price), new_kept.quantity.eq(clipped)]
        keeps = Signal()
        m.d.comb += keeps.eq((b.op == _Op.EXECUTE) & act)
        clear_table = Signal()
        clear_kept = Signal()
        m.d.comb += [clear_table.eq(clearing & ~b_valid & (clear_addr < self.depth)),
                     clear_kept.eq(clearing & ~b_valid & (clear_addr < self.executions))]
        with m.If(clearing & ~b_valid):
            m.d.comb += [t_w.addr.eq(clear_addr), t_w.data.eq(0), t_w.en.eq(clear_table),
                         x_w.addr.eq(clear_addr), x_w.data.eq(0), x_w.en.eq(clear_kept)]
        with m.Else():
            m.d.comb += [
                t_w.addr.eq(address(b.session, b.user_ref_num)), t_w.data.eq(new_row),
                t_w.en.eq(b_done & (act | insert_ok)),
                x_w.addr.eq(b.match_number[:mk]), x_w.data.eq(new_kept),
                x_w.en.eq(b_done & (keeps | kept_hit)),
            ]
        bump("inserts", b_done & insert_ok)
        bump("execution_overwrites", b_done & keeps & kept_row.valid)

        open_entries = Signal(ceil_log2(self.depth + 1))
        m.d.comb += r.open_entries.eq(open_entries)
        with m.If(clearing):
            m.d.sync += open_entries.eq(0)
        with m.Elif(b_done & insert_ok):
            m.d.sync += open_entries.eq(open_entries + 1)
        with m.Elif(b_done & act & (new_open == 0)):
            m.d.sync += open_entries.eq(open_entries - 1)

        last = max(self.depth, self.executions) - 1
        m.d.comb += r.clearing.eq(clearing)
        with m.If(r.clear_stb):
            m.d.sync += [clearing.eq(1), clear_addr.eq(0)]
        with m.Elif(clearing & ~b_valid):
            m.d.sync += clear_addr.eq(clear_addr + 1)
            with m.If(clear_addr == last):
                m.d.sync += clearing.eq(0)

        # -- anomalies --------------------------------------------------------------------------------
        reason = Signal(3)
        feedback_op = on_table | (b.op == _Op.BREAK)
        with m.If(((b.op == _Op.INSERT) | feedback_op) & ~b.session_ok):
            m.d.comb += reason.eq(Anomaly.UNKNOWN_SESSION)
        with m.Elif((b.op == _Op.INSERT) & row.valid):
            m.d.comb += reason.eq(Anomaly.COLLISION)
        with m.Elif(on_table & ~hit):
            m.d.comb += reason.eq(Anomaly.MISS)
        with m.Elif(act & over & ((b.op == _Op.CAP) | (b.op == _Op.DECREMENT) | (b.op == _Op.EXECUTE))):
            m.d.comb += reason.eq(Anomaly.QUANTITY)
        with m.Elif((b.op == _Op.BREAK) & ~kept_hit):
            m.d.comb += reason.eq(Anomaly.BROKEN_MISS)
        report = Signal()
        m.d.comb += report.eq(b_done & (reason != Anomaly.NONE))
        an = self.o_anomaly
        last_reason = Signal(3)
        last_urn = Signal(32)
        m.d.comb += [r.last_anomaly_reason.eq(last_reason), r.last_anomaly_user_ref_num.eq(last_urn)]
        m.d.sync += an.valid.eq(report)
        with m.If(report):
            m.d.sync += [
                an.payload.reason.eq(reason), an.payload.kind.eq(b.kind),
                an.payload.session.eq(b.session), an.payload.user_ref_num.eq(b.user_ref_num),
                an.payload.quantity.eq(b.quantity),
                an.payload.open_quantity.eq(Mux(hit & (b.op != _Op.BREAK), open_quantity, 0)),
                last_reason.eq(reason), last_urn.eq(b.user_ref_num),
            ]
        for code, name in ANOMALY_COUNTERS.items():
            bump(name, report & (reason == code))
        return m
