"""The fast memory-init emitter (hdl/_rtlil_speed.py) writes exactly what Amaranth's own does."""

import random

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from tickwire.hdl import _rtlil_speed


def _component(width: int, depth: int, init: list[int]):
    abits = max(1, (depth - 1).bit_length())

    class Mem(wiring.Component):
        addr: In(abits)
        data: Out(width)

        def elaborate(self, platform):
            m = Module()
            mem = m.submodules.mem = memory.Memory(shape=width, depth=depth, init=init)
            port = mem.read_port()
            m.d.comb += [port.addr.eq(self.addr), self.data.eq(port.data)]
            return m
    return Mem()


@pytest.mark.parametrize("width, depth, filled", [(1, 2, 2), (8, 16, 5), (33, 7, 7), (64, 256, 0), (100, 64, 64)])
def test_same_rtlil(width, depth, filled, monkeypatch):
    rng = random.Random(width * depth)
    init = [rng.getrandbits(width) for _ in range(filled)]
    fast = rtlil.convert(_component(width, depth, init))
    monkeypatch.setattr(rtlil.ModuleEmitter, "emit_memory", _rtlil_speed.original())
    slow = rtlil.convert(_component(width, depth, init))
    assert fast == slow


def test_installed():
    assert rtlil.ModuleEmitter.emit_memory is _rtlil_speed.emit_memory
