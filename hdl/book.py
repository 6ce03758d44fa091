"""Order book: every live order of the tracked symbols, price levels, best bid and offer."""

from amaranth.hdl import Module, Signal, Mux, Cat, Const
from amaranth.lib import wiring, stream, data, memory, fifo
from amaranth.lib.wiring import In, Out

from .itch import record_layout
from .csr import Register, registers_signature

__all__ = ["Book", "BookQuerySignature", "bbo_layout", "book_event_layout", "level_layout", "EVENT_KINDS"]

#: ``o_event.kind`` values (the same numbers as ``tickwire.sim.book_model.EventKind``).
EVENT_KINDS = {"collision": 1, "unknown_reference": 2, "outside_window": 3, "depth_exhausted": 4}

#: The top of one symbol's book after a message; every field of an empty side is 0. ``stock`` is
#: the symbol as the last Add Order carried it (first character in bits 7:0); ``timestamp``,
#: ``sequence_number`` and ``recovered`` are those of the message that changed the top.
bbo_layout = data.StructLayout({
    "slot": 16,
    "stock_locate": 16,
    "stock": 64,
    "timestamp": 48,
    "sequence_number": 64,
    "recovered": 1,
    "trusted": 1,
    "bid_price": 32,
    "bid_shares": 32,
    "bid_orders": 16,
    "ask_price": 32,
    "ask_shares": 32,
    "ask_orders": 16,
})

#: What the book reports to the host: ``kind`` from :data:`EVENT_KINDS`.
book_event_layout = data.StructLayout({
    "kind": 3,
    "slot": 16,
    "stock_locate": 16,
    "order_reference_number": 64,
    "sequence_number": 64,
})

#: One price level: aggregate shares and number of orders.
level_layout = data.StructLayout({"price": 32, "shares": 32, "orders": 16})

_BOOK_TYPES = tuple(ord(c) for c in "AFECXDU")


class BookQuerySignature(wiring.Signature):
    """A read port into the book's top of book, seen from the side that asks (risk's price collar).

    Present ``slot`` (tracked-symbol slot); ``bid_price``, ``ask_price`` (0: that side is empty)
    and ``trusted`` (0: the book cannot vouch for this symbol) answer for it the next cycle, like
    a synchronous memory read port.
    """

    def __init__(self):
        super().__init__({
            "slot": Out(16),
            "bid_price": In(32),
            "ask_price": In(32),
            "trusted": In(1),
        })


def _fold(value, bits):
    """XOR of ``value``'s bits taken ``bits`` at a time (the order store's set index)."""
    if bits == 0:
        return Const(0, 1)
    out = value[:bits]
    for start in range(bits, len(value), bits):
        out = out ^ value[start:start + bits]
    return out[:bits]


class Book(wiring.Component):
    """Keeps every live order of the tracked symbols and the best ``depth`` price levels per side.

    Records of tracked locates (``tracked``, ``tracked_slot`` from the symbol directory) of types
    A, F, E, C, X, D and U change the book; every other record is taken and dropped. Orders live in
    a set-associative order store: the set is the XOR fold of the order reference number, each
    entry holds the rest of the reference, so a lookup never returns another order. Per slot and
    side, the best ``depth`` levels are kept sorted, best first, in one memory row with the count
    of orders beyond them and their best price (the window's boundary), so the next level is at
    hand the cycle after the best one empties. After a message that changes a slot's top of book
    (either side's price, shares, orders, or trust) a :data:`bbo_layout` record leaves on
    ``o_stream``. Collisions, unknown references and a side whose tracked levels run out while
    orders beyond the window remain make the slot untrusted (``o_event``, counters) until the host
    writes the slot to ``clear_untrusted``; a level outside the window alone is counted and
    reported but leaves the top exact (docs/pipeline-contract.md, section "book").

    Parameters
    ----------
    slots : int
        Tracked symbols (a power of two).
    capacity : int
        Live orders the order store holds (``ways`` per set; capacity / ways a power of two).
    ways : int
        Entries per set.
    depth : int
        Price levels kept per side.

    Members
    -------
    i_stream : In(stream.Signature(record_layout))
    o_stream : Out(stream.Signature(bbo_layout))
    o_event : Out(stream.Signature(book_event_layout, always_ready=True))
    query : In(BookQuerySignature())
    regs : Out(registers_signature(Book(...).registers))

    Latency
    -------
    3 cycles from a book record taken to its top-of-book record valid (4 for a U whose original
    order is found: the new order goes in the cycle after the old one leaves); a book record is taken every 2 cycles (U: every
    3), others every cycle (tests/hdl/test_book.py).
    """

    def __init__(self, *, slots: int = 256, capacity: int = 65536, ways: int = 4, depth: int = 8):
        if slots < 1 or slots & (slots - 1) or slots > 1 << 15:
            raise ValueError(f"slots must be a power of two up to 32768, not {slots!r}")
        if ways < 1 or ways > 16:
            raise ValueError(f"ways must be 1..16, not {ways!r}")
        if capacity < ways or capacity % ways or (capacity // ways) & (capacity // ways - 1):
            raise ValueError(f"capacity must be ways ({ways}) times a power of two, not {capacity!r}")
        if not 1 <= depth <= 64:
            raise ValueError(f"depth must be 1..64, not {depth!r}")
        self.slots, self.capacity, self.ways, self.depth = slots, capacity, ways, depth
        self.sets = capacity // ways
        self.registers = (
            Register("clear_untrusted", 16, "rw", "Write a slot: its book is trusted again.", strobe=True),
            Register("lookup_slot", 16, "rw", "Slot the lookup_* registers show."),
            Register("lookup_trusted", 1, "ro", "1: the looked-up slot's book is trusted."),
            Register("lookup_bid_price", 32, "ro", "Best bid price of the looked-up slot (0: none)."),
            Register("lookup_ask_price", 32, "ro", "Best ask price of the looked-up slot (0: none)."),
            Register("messages", 32, "ro", "Book messages (A F E C X D U of tracked symbols) applied."),
            Register("bbo_updates", 32, "ro", "Top-of-book records sent."),
            Register("collisions", 32, "ro", "Adds dropped: set full, reference already held, or side not B/S."),
            Register("unknown_references", 32, "ro", "E C X D U of a reference the book does not hold, "
                     "or removing more shares than it has."),
            Register("outside_window", 32, "ro", "Orders whose level lies beyond the tracked levels."),
            Register("depth_exhausted", 32, "ro", "Sides whose tracked levels ran out with orders beyond them."),
            Register("live_orders", 32, "ro", "Orders in the order store now."),
        )
        super().__init__({
            "i_stream": In(stream.Signature(record_layout)),
            "o_stream": Out(stream.Signature(bbo_layout)),
            "o_event": Out(stream.Signature(book_event_layout, always_ready=True)),
            "query": In(BookQuerySignature()),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, r = self.i_stream, self.regs
        depth, ways = self.depth, self.ways
        set_bits = (self.sets - 1).bit_length()
        slot_bits = max(1, (self.slots - 1).bit_length())
        tag_bits = 64 - set_bits
        count_bits = self.capacity.bit_length() + 1

        entry_layout = data.StructLayout({"valid": 1, "tag": tag_bits, "slot": slot_bits, "sell": 1,
                                          "price": 32, "shares": 32})
        side_layout = data.StructLayout({"levels": data.ArrayLayout(level_layout, depth),
                                         "count": (depth).bit_length(), "untracked": count_bits,
                                         "boundary": 32})
        row_layout = data.StructLayout({"bid": side_layout, "ask": side_layout, "stock": 64})

        store = m.submodules.store = memory.Memory(
            shape=data.ArrayLayout(entry_layout, ways), depth=self.sets, init=[])
        store_w = store.write_port()
        store_r = store.read_port(transparent_for=(store_w,))
        rows = m.submodules.rows = memory.Memory(shape=row_layout, depth=self.slots, init=[])
        rows_w = rows.write_port()
        rows_r = rows.read_port(transparent_for=(rows_w,))
        tops = m.submodules.tops = memory.Memory(shape=64, depth=self.slots, init=[])
        tops_w = tops.write_port()
        tops_query = tops.read_port(transparent_for=(tops_w,))
        tops_lookup = tops.read_port(transparent_for=(tops_w,))
        untrusted = Signal(self.slots)

        counters = {n: Signal(32, name=n) for n in ("messages", "bbo_updates", "collisions", "unknown_references",
                                                     "outside_window", "depth_exhausted")}
        live = Signal(count_bits)
        for n, sig in counters.items():
            m.d.comb += getattr(r, n).eq(sig)
        m.d.comb += r.live_orders.eq(live)

        # Host and risk views of the top of book: a read port each, answers the next cycle.
        q_slot, l_slot = Signal(slot_bits), Signal(slot_bits)
        m.d.comb += [tops_query.addr.eq(self.query.slot[:slot_bits]), tops_lookup.addr.eq(r.lookup_slot[:slot_bits])]
        m.d.sync += [q_slot.eq(self.query.slot[:slot_bits]), l_slot.eq(r.lookup_slot[:slot_bits])]
        m.d.comb += [self.query.bid_price.eq(tops_query.data[:32]), self.query.ask_price.eq(tops_query.data[32:]),
                     self.query.trusted.eq(~untrusted.bit_select(q_slot, 1)),
                     r.lookup_bid_price.eq(tops_lookup.data[:32]), r.lookup_ask_price.eq(tops_lookup.data[32:]),
                     r.lookup_trusted.eq(~untrusted.bit_select(l_slot, 1))]

        # Top-of-book records wait here for the trigger.
        out = m.submodules.out = fifo.SyncFIFO(width=bbo_layout.size, depth=4)
        m.d.comb += [self.o_stream.valid.eq(out.r_rdy), self.o_stream.payload.eq(out.r_data),
                     out.r_en.eq(self.o_stream.ready)]

        # ---- stage 0: take a record ----------------------------------------------------------
        rec = i.payload
        is_book_type = Signal()
        m.d.comb += is_book_type.eq(0)
        for t in _BOOK_TYPES:
            with m.If(rec.message_type == t):
                m.d.comb += is_book_type.eq(1)
        is_book = Signal()
        m.d.comb += is_book.eq(rec.tracked & is_book_type & (rec.tracked_slot < self.slots))
        hold = Signal(2)           # cycles until the next book record may be taken
        with m.If(hold != 0):
            m.d.sync += hold.eq(hold - 1)
        # A record in flight makes at most one top-of-book record: keep room for it and this one.
        room = Signal()
        m.d.comb += room.eq(out.level <= out.depth - 2)
        m.d.comb += i.ready.eq(~is_book | ((hold == 0) & room))
        take = Signal()
        m.d.comb += take.eq(i.valid & i.ready & is_book)

        # Stage 1 registers.
        s1 = Signal()
        s1_type = Signal(8)
        s1_slot = Signal(slot_bits)
        s1_locate = Signal(16)
        s1_timestamp = Signal(48)
        s1_sequence = Signal(64)
        s1_recovered = Signal()
        s1_ref = Signal(64)
        s1_new_ref = Signal(64)
        s1_sell = Signal()
        s1_side_ok = Signal()
        s1_shares = Signal(32)
        s1_shares_fit = Signal()
        s1_price = Signal(32)
        s1_stock = Signal(64)
        m.d.sync += s1.eq(take)
        with m.If(take):
            m.d.sync += [
                s1_type.eq(rec.message_type), s1_slot.eq(rec.tracked_slot[:slot_bits]),
                s1_locate.eq(rec.stock_locate), s1_timestamp.eq(rec.timestamp),
                s1_sequence.eq(rec.sequence_number), s1_recovered.eq(rec.recovered),
                s1_ref.eq(rec.order_reference_number), s1_new_ref.eq(rec.new_order_reference_number),
                s1_sell.eq(rec.buy_sell_indicator == ord("S")),
                s1_side_ok.eq((rec.buy_sell_indicator == ord("S")) | (rec.buy_sell_indicator == ord("B"))),
                s1_shares.eq(rec.shares[:32]), s1_shares_fit.eq(rec.shares[32:] == 0),
                s1_price.eq(rec.price), s1_stock.eq(rec.stock),
                hold.eq(Mux(rec.message_type == ord("U"), 2, 1)),
            ]
            m.d.sync += counters["messages"].eq(counters["messages"] + 1)
        is_u1 = Signal()
        m.d.comb += is_u1.eq(s1 & (s1_type == ord("U")))

        # Phase 2 of a replace: the new order goes in the cycle after the old one left.
        s2u = Signal()
        s2u_ref = Signal(64)
        s2u_sell = Signal()
        s2u_price = Signal(32)
        s2u_shares = Signal(32)
        s2u_shares_fit = Signal()
        m.d.sync += s2u.eq(0)       # (stage 1 sets it for a replace whose old order was found)

        # Order store read: the record's reference at stage 0, a replace's new one at stage 1.
        m.d.comb += store_r.addr.eq(Mux(is_u1, _fold(s1_new_ref, set_bits), _fold(rec.order_reference_number, set_bits)))
        # Row read for the level stage: the slot of the record in stage 1.
        m.d.comb += rows_r.addr.eq(s1_slot)

        # ---- events: stage-1/2 order store events wait one cycle when a level event goes out ------
        store_event = Signal(book_event_layout)
        store_event_valid = Signal()
        level_event = Signal(book_event_layout)
        level_event_valid = Signal()
        pending = Signal(book_event_layout)
        pending_valid = Signal()
        m.d.comb += [store_event_valid.eq(0), level_event_valid.eq(0)]
        with m.If(level_event_valid):
            m.d.comb += [self.o_event.valid.eq(1), self.o_event.payload.eq(level_event)]
        with m.Elif(pending_valid):
            m.d.comb += [self.o_event.valid.eq(1), self.o_event.payload.eq(pending)]
        with m.Elif(store_event_valid):
            m.d.comb += [self.o_event.valid.eq(1), self.o_event.payload.eq(store_event)]
        with m.If(store_event_valid & (level_event_valid | pending_valid)):
            m.d.sync += [pending_valid.eq(1), pending.eq(store_event)]
        with m.Elif(pending_valid & ~level_event_valid):
            m.d.sync += pending_valid.eq(0)

        set_by_store = Signal(self.slots)
        set_by_level = Signal(self.slots)
        clear = Signal(self.slots)
        m.d.comb += clear.eq(Mux(r.clear_untrusted_stb & (r.clear_untrusted < self.slots),
                                 Const(1, self.slots) << r.clear_untrusted[:slot_bits], 0))
        m.d.sync += untrusted.eq((untrusted & ~clear) | set_by_store | set_by_level)

        # ---- level operation registers (stage 2 input) --------------------------------------
        op = Signal()               # a message (or its second half) reaches the level stage
        op_level = Signal()         # it changes a level
        op_add = Signal()
        op_sell = Signal()
        op_price = Signal(32)
        op_shares = Signal(32)
        op_leaves = Signal()
        op_final = Signal()         # last operation of the message: compare tops, send the record
        op_first = Signal()         # first operation of the message: remember the top before
        op_forward = Signal()       # the row comes from the previous operation, not the memory
        op_slot = Signal(slot_bits)
        op_ref = Signal(64)
        op_stock_valid = Signal()
        op_stock = Signal(64)
        op_meta = Signal(data.StructLayout({"locate": 16, "timestamp": 48, "sequence": 64, "recovered": 1,
                                            "trusted": 1}))
        m.d.sync += op.eq(0)

        def lookup(ways_data, ref, slot):
            """Hit flags per way for ``ref`` of ``slot``, and the first free way."""
            tag = ref[set_bits:]
            hits = Signal(ways)
            frees = Signal(ways)
            for w in range(ways):
                e = ways_data[w]
                m.d.comb += [hits[w].eq(e.valid & (e.tag == tag) & (e.slot == slot)),
                             frees[w].eq(~e.valid)]
            return hits, frees

        def first_one(bits, width):
            """Index of the lowest set bit of ``bits`` (0 when none)."""
            index = Signal(range(max(2, width)))
            for w in reversed(range(width)):
                with m.If(bits[w]):
                    m.d.comb += index.eq(w)
            return index

        def insert(ways_data, ref, slot, sell, price, shares, shares_fit, side_ok, meta_slot):
            """Put a new order in its set (stage 1 for A/F, phase 2 for U); returns whether it went in."""
            _, frees = lookup(ways_data, ref, slot)
            # A reference held for another slot is a collision as well.
            dup = Signal()
            for w in range(ways):
                with m.If(ways_data[w].valid & (ways_data[w].tag == ref[set_bits:])):
                    m.d.comb += dup.eq(1)
            ok = Signal()
            m.d.comb += ok.eq(~dup & (frees != 0) & side_ok & shares_fit)
            way = first_one(frees, ways)
            new = Signal(data.ArrayLayout(entry_layout, ways))
            m.d.comb += new.eq(ways_data)
            with m.Switch(way):
                for w in range(ways):
                    with m.Case(w):
                        m.d.comb += [new[w].valid.eq(1), new[w].tag.eq(ref[set_bits:]), new[w].slot.eq(slot),
                                     new[w].sell.eq(sell), new[w].price.eq(price), new[w].shares.eq(shares)]
            with m.If(ok):
                m.d.comb += [store_w.addr.eq(_fold(ref, set_bits)), store_w.data.eq(new), store_w.en.eq(1)]
                m.d.sync += live.eq(live + 1)
            with m.Else():
                m.d.comb += [store_event_valid.eq(1), store_event.kind.eq(EVENT_KINDS["collision"]),
                             store_event.slot.eq(meta_slot), store_event.order_reference_number.eq(ref),
                             store_event.stock_locate.eq(Mux(s2u, op_meta.locate, s1_locate)),
                             store_event.sequence_number.eq(s1_sequence)]
                m.d.comb += set_by_store.eq(Const(1, self.slots) << meta_slot)
                m.d.sync += counters["collisions"].eq(counters["collisions"] + 1)
            return ok

        # ---- stage 1: resolve the order ------------------------------------------------------
        with m.If(s1):
            m.d.sync += [op.eq(1), op_slot.eq(s1_slot), op_ref.eq(s1_ref), op_first.eq(1), op_forward.eq(0),
                         op_final.eq(~is_u1), op_level.eq(0), op_stock_valid.eq(0),
                         op_meta.locate.eq(s1_locate), op_meta.timestamp.eq(s1_timestamp),
                         op_meta.sequence.eq(s1_sequence), op_meta.recovered.eq(s1_recovered),
                         op_meta.trusted.eq(~untrusted.bit_select(s1_slot, 1))]
            is_add = (s1_type == ord("A")) | (s1_type == ord("F"))
            with m.If(is_add):
                ok = insert(store_r.data, s1_ref, s1_slot, s1_sell, s1_price, s1_shares, s1_shares_fit,
                            s1_side_ok, s1_slot)
                m.d.sync += [op_level.eq(ok), op_add.eq(1), op_sell.eq(s1_sell), op_price.eq(s1_price),
                             op_shares.eq(s1_shares), op_leaves.eq(0),
                             op_stock_valid.eq(1), op_stock.eq(s1_stock)]
            with m.Else():
                hits, _ = lookup(store_r.data, s1_ref, s1_slot)
                way = first_one(hits, ways)
                e = store_r.data[way]
                is_delete = (s1_type == ord("D")) | (s1_type == ord("U"))
                remove = Signal(32)
                m.d.comb += remove.eq(Mux(is_delete, e.shares, s1_shares))
                bad = Signal()
                m.d.comb += bad.eq((hits == 0) | ~(is_delete | s1_shares_fit) | (remove > e.shares))
                left = Signal(32)
                m.d.comb += left.eq(e.shares - remove)
                new = Signal(data.ArrayLayout(entry_layout, ways))
                m.d.comb += new.eq(store_r.data)
                with m.Switch(way):
                    for w in range(ways):
                        with m.Case(w):
                            m.d.comb += [new[w].shares.eq(left), new[w].valid.eq(left != 0)]
                with m.If(bad):
                    m.d.comb += [store_event_valid.eq(1), store_event.kind.eq(EVENT_KINDS["unknown_reference"]),
                                 store_event.slot.eq(s1_slot), store_event.order_reference_number.eq(s1_ref),
                                 store_event.stock_locate.eq(s1_locate),
                                 store_event.sequence_number.eq(s1_sequence)]
                    m.d.comb += set_by_store.eq(Const(1, self.slots) << s1_slot)
                    m.d.sync += [counters["unknown_references"].eq(counters["unknown_references"] + 1),
                                 op_final.eq(1)]
                with m.Else():
                    m.d.comb += [store_w.addr.eq(_fold(s1_ref, set_bits)), store_w.data.eq(new), store_w.en.eq(1)]
                    with m.If(left == 0):
                        m.d.sync += live.eq(live - 1)
                    m.d.sync += [op_level.eq(1), op_add.eq(0), op_sell.eq(e.sell), op_price.eq(e.price),
                                 op_shares.eq(remove), op_leaves.eq(left == 0)]
                    with m.If(is_u1):
                        m.d.sync += [s2u.eq(1), s2u_ref.eq(s1_new_ref), s2u_sell.eq(e.sell),
                                     s2u_price.eq(s1_price), s2u_shares.eq(s1_shares),
                                     s2u_shares_fit.eq(s1_shares_fit)]

        # ---- phase 2 of a replace: insert the new order ---------------------------------------
        with m.If(s2u):
            ok = insert(store_r.data, s2u_ref, op_slot, s2u_sell, s2u_price, s2u_shares, s2u_shares_fit,
                        Const(1), op_slot)
            m.d.sync += [op.eq(1), op_first.eq(0), op_final.eq(1), op_forward.eq(1), op_level.eq(ok),
                         op_add.eq(1), op_sell.eq(s2u_sell), op_price.eq(s2u_price), op_shares.eq(s2u_shares),
                         op_leaves.eq(0), op_ref.eq(s2u_ref), op_stock_valid.eq(0)]

        # ---- stage 2: apply the level operation to the slot's row ----------------------------
        last_row = Signal(row_layout)
        row_in = Signal(row_layout)
        m.d.comb += row_in.eq(Mux(op_forward, last_row, rows_r.data))
        side_in = Signal(side_layout)
        m.d.comb += side_in.eq(Mux(op_sell, row_in.ask, row_in.bid))
        side_out = Signal(side_layout)
        m.d.comb += side_out.eq(side_in)
        outside = Signal()
        exhausted = Signal()

        def better(a, b):
            return Mux(op_sell, a < b, a > b)

        levels = side_in.levels
        present = [Signal(name=f"present_{k}") for k in range(depth)]
        match = Signal(depth)
        ahead = Signal(depth)       # level k is better than the operation's price
        for k in range(depth):
            m.d.comb += [present[k].eq(k < side_in.count),
                         match[k].eq(present[k] & (levels[k].price == op_price)),
                         ahead[k].eq(present[k] & better(levels[k].price, op_price))]
        beyond = Signal()
        m.d.comb += beyond.eq((side_in.untracked != 0) & ~better(op_price, side_in.boundary))
        match_at = first_one(match, depth)
        position = Signal(range(depth + 1))     # levels ahead of the new price (they form a prefix)
        m.d.comb += position.eq(depth)
        for k in reversed(range(depth)):
            with m.If(~ahead[k]):
                m.d.comb += position.eq(k)

        with m.If(op & op_level):
            with m.If(op_add):
                with m.If(beyond):
                    m.d.comb += [side_out.untracked.eq(side_in.untracked + 1), outside.eq(1)]
                with m.Elif(match != 0):
                    with m.Switch(match_at):
                        for k in range(depth):
                            with m.Case(k):
                                m.d.comb += [side_out.levels[k].shares.eq(levels[k].shares + op_shares),
                                             side_out.levels[k].orders.eq(levels[k].orders + 1)]
                with m.Elif(position == depth):
                    m.d.comb += [side_out.untracked.eq(side_in.untracked + 1),
                                 side_out.boundary.eq(op_price), outside.eq(1)]
                with m.Else():
                    for k in range(depth):
                        with m.If(k == position):
                            m.d.comb += [side_out.levels[k].price.eq(op_price),
                                         side_out.levels[k].shares.eq(op_shares),
                                         side_out.levels[k].orders.eq(1)]
                        if k > 0:
                            with m.If(k > position):
                                m.d.comb += side_out.levels[k].eq(levels[k - 1])
                    with m.If(side_in.count == depth):
                        last = levels[depth - 1]
                        m.d.comb += [side_out.untracked.eq(side_in.untracked + last.orders),
                                     side_out.boundary.eq(last.price), outside.eq(1)]
                    with m.Else():
                        m.d.comb += side_out.count.eq(side_in.count + 1)
            with m.Else():
                with m.If(beyond):
                    with m.If(op_leaves):
                        m.d.comb += side_out.untracked.eq(side_in.untracked - 1)
                with m.Elif(match != 0):
                    lv = levels[match_at]
                    orders_left = Signal(16)
                    m.d.comb += orders_left.eq(lv.orders - op_leaves)
                    with m.If(orders_left == 0):
                        for k in range(depth):
                            with m.If(k >= match_at):
                                if k + 1 < depth:
                                    m.d.comb += side_out.levels[k].eq(levels[k + 1])
                                else:
                                    m.d.comb += side_out.levels[k].eq(0)
                        m.d.comb += side_out.count.eq(side_in.count - 1)
                        with m.If((side_in.count == 1) & (side_in.untracked != 0)):
                            m.d.comb += exhausted.eq(1)
                    with m.Else():
                        with m.Switch(match_at):
                            for k in range(depth):
                                with m.Case(k):
                                    m.d.comb += [side_out.levels[k].shares.eq(levels[k].shares - op_shares),
                                                 side_out.levels[k].orders.eq(orders_left)]

        row_out = Signal(row_layout)
        m.d.comb += [row_out.eq(row_in),
                     row_out.stock.eq(Mux(op_stock_valid, op_stock, row_in.stock))]
        with m.If(op_sell):
            m.d.comb += row_out.ask.eq(side_out)
        with m.Else():
            m.d.comb += row_out.bid.eq(side_out)

        def top(row):
            t = Signal(data.StructLayout({"bid_price": 32, "bid_shares": 32, "bid_orders": 16,
                                          "ask_price": 32, "ask_shares": 32, "ask_orders": 16}))
            with m.If(row.bid.count != 0):
                m.d.comb += [t.bid_price.eq(row.bid.levels[0].price), t.bid_shares.eq(row.bid.levels[0].shares),
                             t.bid_orders.eq(row.bid.levels[0].orders)]
            with m.If(row.ask.count != 0):
                m.d.comb += [t.ask_price.eq(row.ask.levels[0].price), t.ask_shares.eq(row.ask.levels[0].shares),
                             t.ask_orders.eq(row.ask.levels[0].orders)]
            return t

        top_in, top_out = top(row_in), top(row_out)
        before = Signal.like(top_in)
        before_trusted = Signal()
        with m.If(op & op_first):
            m.d.sync += [before.eq(top_in), before_trusted.eq(op_meta.trusted)]
        top_before = Signal.like(top_in)
        trusted_before = Signal()
        m.d.comb += [top_before.eq(Mux(op_first, top_in.as_value(), before.as_value())),
                     trusted_before.eq(Mux(op_first, op_meta.trusted, before_trusted))]
        trusted_after = Signal()
        m.d.comb += trusted_after.eq(~untrusted.bit_select(op_slot, 1) & ~exhausted)

        with m.If(op):
            m.d.comb += [rows_w.addr.eq(op_slot), rows_w.data.eq(row_out), rows_w.en.eq(1),
                         tops_w.addr.eq(op_slot), tops_w.data.eq(Cat(top_out.bid_price, top_out.ask_price)),
                         tops_w.en.eq(1)]
            m.d.sync += last_row.eq(row_out)
            with m.If(exhausted):
                m.d.comb += set_by_level.eq(Const(1, self.slots) << op_slot)
            with m.If(outside | exhausted):
                m.d.comb += [level_event_valid.eq(1), level_event.slot.eq(op_slot),
                             level_event.stock_locate.eq(op_meta.locate),
                             level_event.order_reference_number.eq(op_ref),
                             level_event.sequence_number.eq(op_meta.sequence),
                             level_event.kind.eq(Mux(exhausted, EVENT_KINDS["depth_exhausted"],
                                                     EVENT_KINDS["outside_window"]))]
            with m.If(outside):
                m.d.sync += counters["outside_window"].eq(counters["outside_window"] + 1)
            with m.If(exhausted):
                m.d.sync += counters["depth_exhausted"].eq(counters["depth_exhausted"] + 1)
            changed = Signal()
            m.d.comb += changed.eq((top_out.as_value() != top_before.as_value()) | (trusted_after != trusted_before))
            bbo = Signal(bbo_layout)
            m.d.comb += [bbo.slot.eq(op_slot), bbo.stock_locate.eq(op_meta.locate), bbo.stock.eq(row_out.stock),
                         bbo.timestamp.eq(op_meta.timestamp), bbo.sequence_number.eq(op_meta.sequence),
                         bbo.recovered.eq(op_meta.recovered), bbo.trusted.eq(trusted_after),
                         bbo.bid_price.eq(top_out.bid_price), bbo.bid_shares.eq(top_out.bid_shares),
                         bbo.bid_orders.eq(top_out.bid_orders), bbo.ask_price.eq(top_out.ask_price),
                         bbo.ask_shares.eq(top_out.ask_shares), bbo.ask_orders.eq(top_out.ask_orders)]
            with m.If(op_final & changed):
                m.d.comb += [out.w_en.eq(1), out.w_data.eq(bbo)]
                m.d.sync += counters["bbo_updates"].eq(counters["bbo_updates"] + 1)
        return m
