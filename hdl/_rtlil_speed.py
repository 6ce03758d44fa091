"""Fast memory initial contents in Amaranth 0.5's RTLIL back end.

``amaranth.back.rtlil.ModuleEmitter.emit_memory`` turns every bit of a memory's initial contents
into a netlist object before writing it as one constant: about 15 s per megabit on this kind of
machine, minutes for the order book's store. :func:`install` replaces it with a function that
writes the same ``$meminit_v2`` cell, bit for bit, from a Python integer (tests/hdl/test_rtlil_speed.py
compares both on several memories). Installed once when :mod:`tickwire.hdl` is imported.
"""

from __future__ import annotations

__all__ = ["install", "emit_memory"]


def emit_memory(self, cell_idx, cell):
    """Drop-in for ``ModuleEmitter.emit_memory`` (same cell, same parameters, same bits)."""
    from amaranth.hdl import _nir
    memory_info = self.memories[cell_idx]
    width, depth = cell.width, cell.depth
    mask = (1 << width) - 1
    value = 0
    for k, row in enumerate(cell.init):
        value |= (row & mask) << (k * width)
    total = width * len(cell.init)
    data = f"{total}'{value:0{total}b}" if total else "{}"
    self.builder.cell("$meminit_v2", ports={
        "ADDR": self.sigspec(),
        "DATA": data,
        "EN": self.sigspec(_nir.Value.ones(width)),
    }, parameters={
        "MEMID": memory_info.memid,
        "ABITS": 0,
        "WIDTH": width,
        "WORDS": depth,
        "PRIORITY": 0,
    }, src_loc=cell.src_loc)


_original = None


def install() -> None:
    """Use :func:`emit_memory` in ``amaranth.back.rtlil`` (idempotent)."""
    global _original
    from amaranth.back import rtlil
    if rtlil.ModuleEmitter.emit_memory is emit_memory:
        return
    _original = rtlil.ModuleEmitter.emit_memory
    rtlil.ModuleEmitter.emit_memory = emit_memory


def original():
    """Amaranth's own ``emit_memory`` (for the comparison test)."""
    from amaranth.back import rtlil
    return _original or rtlil.ModuleEmitter.emit_memory
