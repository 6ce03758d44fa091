"""Symbol directory: Stock Directory messages fill a locate -> symbol table; tracked symbols filter."""

from amaranth.hdl import Module, Signal, Mux
from amaranth.lib import wiring, stream, memory, data
from amaranth.lib.wiring import In, Out

from .itch import record_layout
from .csr import Register, registers_signature

__all__ = ["SymbolDirectory"]


class SymbolDirectory(wiring.Component):
    """Keeps the day's locate -> symbol table and passes on only the tracked symbols' records.

    Every Stock Directory (R) record with a locate below ``max_locates`` stores its stock in the
    table (``directory_entries`` counts them); if the stock equals one of the ``track_name_*``
    registers, its locate becomes tracked, in slot ``k`` of the order book for ``track_name_k``.
    The host can also track a locate in any slot, or untrack it, directly (``track_locate``).
    Every record leaves with ``tracked`` and ``tracked_slot`` set from the table. With ``filter_enable`` set, a record passes when its locate is 0 (not
    stock related) or tracked; the others are counted in ``filtered`` and dropped (``out_of_range``
    counts locates the table cannot hold). ``lookup_locate`` selects the entry ``lookup_stock``
    shows (0 when none), the cycle after it is written.

    Parameters
    ----------
    max_locates : int
        Table size (a power of two); NASDAQ assigns locates from 1 up, about 12,000 a day.
    track_names : int
        How many symbols can be tracked by name.
    slots : int
        Order-book slots a tracked locate can be given (a power of two, at least ``track_names``).

    Members
    -------
    i_stream : In(stream.Signature(record_layout))
    o_stream : Out(stream.Signature(record_layout))
    regs : Out(registers_signature(SymbolDirectory(...).registers))

    Latency
    -------
    1 cycle (tests/hdl/test_symbols.py).
    """

    def __init__(self, *, max_locates: int = 16384, track_names: int = 8, slots: int = 256):
        if max_locates < 2 or max_locates & (max_locates - 1) or max_locates > 65536:
            raise ValueError(f"max_locates must be a power of two up to 65536, not {max_locates!r}")
        if not 1 <= track_names <= 32:
            raise ValueError(f"track_names must be 1..32, not {track_names!r}")
        if slots < track_names or slots & (slots - 1) or slots > 1 << 15:
            raise ValueError(f"slots must be a power of two from track_names ({track_names}) to 32768, not {slots!r}")
        self.max_locates = max_locates
        self.track_names = track_names
        self.slots = slots
        self.registers = (
            Register("filter_enable", 1, "rw", "1: pass only records of tracked locates (and locate 0)."),
            Register("track_locate", 32, "rw", "Write (slot << 17 | flag << 16 | locate): flag 1 tracks the locate "
                     "in the book slot, 0 untracks it; a slot beyond the book is ignored.", strobe=True),
            *(Register(f"track_name_{k}", 64, "rw", f"Symbol {k} to track by name: ASCII, first character in "
                       "bits 7:0, padded with spaces (0: unused).") for k in range(track_names)),
            Register("lookup_locate", 16, "rw", "Locate whose directory entry lookup_stock shows."),
            Register("lookup_stock", 64, "ro", "Stock of the looked-up locate (first character in bits 7:0; 0: none)."),
            Register("lookup_tracked", 1, "ro", "1: the looked-up locate is tracked."),
            Register("directory_entries", 32, "ro", "Stock Directory messages stored."),
            Register("passed", 32, "ro", "Records passed on."),
            Register("filtered", 32, "ro", "Records dropped: locate not tracked."),
            Register("out_of_range", 32, "ro", "Records whose locate is beyond the table."),
        )
        super().__init__({
            "i_stream": In(stream.Signature(record_layout)),
            "o_stream": Out(stream.Signature(record_layout)),
            "regs": Out(registers_signature(self.registers)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i_stream, self.o_stream, self.regs
        abits = (self.max_locates - 1).bit_length()
        names = m.submodules.names = memory.Memory(shape=64, depth=self.max_locates, init=[])
        slot_bits = max(1, (self.slots - 1).bit_length())
        entry = data.StructLayout({"tracked": 1, "slot": slot_bits})
        tracked = m.submodules.tracked = memory.Memory(shape=entry, depth=self.max_locates, init=[])
        name_w = names.write_port()
        name_lookup = names.read_port()
        track_w = tracked.write_port()
        track_rd = tracked.read_port(transparent_for=(track_w,))
        track_lookup = tracked.read_port(transparent_for=(track_w,))

        counters = {n: Signal(32, name=n) for n in ("directory_entries", "passed", "filtered", "out_of_range")}
        for n, sig in counters.items():
            m.d.comb += getattr(r, n).eq(sig)

        def bump(n):
            m.d.sync += counters[n].eq(counters[n] + 1)

        # Host lookup: the entry shows the cycle after lookup_locate is written.
        m.d.comb += [name_lookup.addr.eq(r.lookup_locate[:abits]), track_lookup.addr.eq(r.lookup_locate[:abits])]
        lookup_fits = Signal()
        m.d.sync += lookup_fits.eq(r.lookup_locate < self.max_locates)
        m.d.comb += [r.lookup_stock.eq(Mux(lookup_fits, name_lookup.data, 0)),
                     r.lookup_tracked.eq(lookup_fits & track_lookup.data.tracked)]

        # Stage: the record taken last cycle, with its locate's tracked bit read meanwhile.
        s_valid = Signal()
        s_rec = Signal(record_layout)
        s_fits = Signal()
        s_directory_named = Signal()
        s_named_slot = Signal(slot_bits)
        tracked_now = Signal()
        slot_now = Signal(slot_bits)
        m.d.comb += [tracked_now.eq(s_fits & (track_rd.data.tracked | s_directory_named)),
                     slot_now.eq(Mux(s_directory_named, s_named_slot, track_rd.data.slot))]
        passes = Signal()
        m.d.comb += passes.eq(~r.filter_enable | (s_rec.stock_locate == 0) | tracked_now)
        out_rec = Signal(record_layout)
        m.d.comb += [out_rec.eq(s_rec), out_rec.tracked.eq(tracked_now),
                     out_rec.tracked_slot.eq(Mux(tracked_now, slot_now, 0))]
        advance = Signal()
        m.d.comb += [advance.eq(~s_valid | ~passes | o.ready),
                     o.valid.eq(s_valid & passes), o.payload.eq(out_rec), i.ready.eq(advance),
                     track_rd.en.eq(advance), track_rd.addr.eq(i.payload.stock_locate[:abits])]

        rec = i.payload
        locate = rec.stock_locate
        fits = locate < self.max_locates
        take = i.valid & advance
        is_directory = (rec.message_type == ord("R")) & fits
        named = Signal()
        named_slot = Signal(slot_bits)
        m.d.comb += named.eq(0)
        for k in reversed(range(self.track_names)):   # the lowest matching name wins
            name = getattr(r, f"track_name_{k}")
            with m.If((name != 0) & (rec.stock == name)):
                m.d.comb += [named.eq(1), named_slot.eq(k)]

        # A host write waits while a Stock Directory message is updating the same memory.
        pending = Signal()
        pending_value = Signal(32)
        with m.If(r.track_locate_stb):
            m.d.sync += [pending.eq(1), pending_value.eq(r.track_locate)]

        with m.If(take & is_directory):
            m.d.comb += [name_w.addr.eq(locate[:abits]), name_w.data.eq(rec.stock), name_w.en.eq(1)]
            bump("directory_entries")
            with m.If(named):
                m.d.comb += [track_w.addr.eq(locate[:abits]), track_w.data.tracked.eq(1),
                             track_w.data.slot.eq(named_slot), track_w.en.eq(1)]
        with m.Elif(pending & ~r.track_locate_stb):
            with m.If((pending_value[:16] < self.max_locates) & (pending_value[17:] < self.slots)):
                m.d.comb += [track_w.addr.eq(pending_value[:abits]), track_w.data.tracked.eq(pending_value[16]),
                             track_w.data.slot.eq(pending_value[17:]), track_w.en.eq(1)]
            m.d.sync += pending.eq(0)

        with m.If(advance):
            m.d.sync += [s_valid.eq(i.valid), s_rec.eq(rec), s_fits.eq(fits),
                         s_directory_named.eq(is_directory & named), s_named_slot.eq(named_slot)]
            with m.If(take & ~fits):
                bump("out_of_range")
            with m.If(s_valid):
                with m.If(passes):
                    bump("passed")
                with m.Else():
                    bump("filtered")
        return m
