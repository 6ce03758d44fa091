"""Control and status registers: declared by each stage, decoded by one bank, exported as a map."""

from __future__ import annotations

import json
from dataclasses import dataclass

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Register", "registers_signature", "CsrBusSignature", "CsrBank", "WORD_BITS",
           "WINDOW_WORDS", "REGMAP_FORMAT", "REGMAP_VERSION", "MAGIC"]

WORD_BITS = 32
#: Each stage owns a window of this many 32-bit words.
WINDOW_WORDS = 64
REGMAP_FORMAT = "tickwire-regmap"
#: Bumped whenever the register layout changes incompatibly; checked by the host at connect.
REGMAP_VERSION = 4
MAGIC = int.from_bytes(b"TWIR", "big")


@dataclass(frozen=True)
class Register:
    """One register of a stage.

    ``rw`` registers are stored in the bank and are inputs of the stage; ``ro`` registers are
    outputs of the stage (counters, status). ``strobe`` gives an ``rw`` register a one-cycle
    ``<name>_stb`` input pulse on every host write (for values the stage loads into its own state).

    ``indexed_by`` names another register of the same stage that selects an entry of a table
    inside the stage (a slot, a session): the register reads and writes that entry. An indexed
    ``rw`` register must have ``strobe`` (the stage stores the bank's value into the selected
    entry on the strobe) and gets a ``<name>_readback`` output: the selected entry's stored value,
    which the bank returns on a host read instead of the last value written. An indexed ``ro``
    register is just an output the stage drives from the selected entry.
    """

    name: str
    width: int
    access: str
    description: str
    reset: int = 0
    strobe: bool = False
    indexed_by: str | None = None

    def __post_init__(self) -> None:
        if self.access not in ("rw", "ro"):
            raise ValueError(f"register {self.name!r}: access must be 'rw' or 'ro', not {self.access!r}")
        if not 1 <= self.width <= 64:
            raise ValueError(f"register {self.name!r}: width must be 1..64, not {self.width!r}")
        if self.strobe and self.access != "rw":
            raise ValueError(f"register {self.name!r}: only rw registers have a write strobe")
        if self.indexed_by is not None and self.access == "rw" and not self.strobe:
            raise ValueError(f"register {self.name!r}: an indexed rw register needs strobe=True")

    @property
    def words(self) -> int:
        return (self.width + WORD_BITS - 1) // WORD_BITS


def registers_signature(registers) -> wiring.Signature:
    """The stage-side signature of a register table: rw registers in, ro registers out."""
    members = {}
    for r in registers:
        members[r.name] = In(r.width) if r.access == "rw" else Out(r.width)
        if r.strobe:
            members[f"{r.name}_stb"] = In(1)
        if r.indexed_by is not None and r.access == "rw":
            members[f"{r.name}_readback"] = Out(r.width)
    return wiring.Signature(members)


class CsrBusSignature(wiring.Signature):
    """Host register bus, 32-bit words at word addresses.

    A write takes effect on the cycle ``w_stb`` is high. A read: ``r_stb`` with ``addr``;
    ``r_data`` holds the word from the next cycle on. Reading the least significant word of a
    register wider than 32 bits latches the upper words, so a 64-bit counter reads consistently.
    """

    def __init__(self, addr_width: int = 12):
        super().__init__({
            "addr": Out(addr_width),
            "w_stb": Out(1),
            "w_data": Out(WORD_BITS),
            "r_stb": Out(1),
            "r_data": In(WORD_BITS),
        })


class CsrBank(wiring.Component):
    """Decodes the host register bus for a list of stages.

    Parameters
    ----------
    stages : list of (stage name, register tuple)
        In address order; stage ``i`` owns words ``i * WINDOW_WORDS`` up.
    addr_width : int
        Width of the word address.

    Members
    -------
    bus : In(CsrBusSignature)
        The host side.
    <stage> : Out(registers_signature(...))
        One port per stage, flipped: connect it to the stage's ``regs``.

    Latency
    -------
    Writes land the cycle after ``w_stb``; read data is valid one cycle after ``r_stb``
    (tests/hdl/test_csr.py).
    """

    def __init__(self, stages, *, addr_width: int = 12):
        names = [name for name, _ in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, not {names!r}")
        if len(stages) * WINDOW_WORDS > (1 << addr_width):
            raise ValueError(f"{len(stages)} stages do not fit addr_width={addr_width!r}")
        self._stages = [(name, tuple(regs)) for name, regs in stages]
        self._addr_width = addr_width
        members = {"bus": In(CsrBusSignature(addr_width))}
        for name, regs in self._stages:
            members[name] = In(registers_signature(regs))
        super().__init__(members)

    def address_map(self) -> dict[str, dict]:
        """Register name -> address record (the contents of the exported map)."""
        out = {}
        for index, (stage, regs) in enumerate(self._stages):
            offset = 0
            for r in regs:
                if offset + r.words > WINDOW_WORDS:
                    raise ValueError(f"stage {stage!r} has more registers than its window holds")
                out[f"{stage}.{r.name}"] = {
                    "stage": stage, "name": r.name, "address": index * WINDOW_WORDS + offset,
                    "size": r.words, "width": r.width, "access": r.access, "reset": r.reset,
                    "description": r.description,
                }
                if r.indexed_by is not None:
                    names = {other.name for other in regs}
                    if r.indexed_by not in names:
                        raise ValueError(f"register {stage}.{r.name} is indexed by "
                                         f"{r.indexed_by!r}, which stage {stage!r} does not have")
                    out[f"{stage}.{r.name}"]["indexed_by"] = f"{stage}.{r.indexed_by}"
                offset += r.words
        return out

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        amap = self.address_map()
        read_cases = []  # (address, value expression)
        for stage, regs in self._stages:
            port = getattr(self, stage)
            for r in regs:
                info = amap[f"{stage}.{r.name}"]
                base = info["address"]
                if r.access == "rw":
                    store = Signal(r.width, init=r.reset, name=f"{stage}__{r.name}")
                    m.d.comb += getattr(port, r.name).eq(store)
                    for w in range(r.words):
                        lo = w * WORD_BITS
                        hi = min(r.width, lo + WORD_BITS)
                        with m.If(bus.w_stb & (bus.addr == base + w)):
                            m.d.sync += store[lo:hi].eq(bus.w_data[:hi - lo])
                        if r.indexed_by is not None:
                            read_cases.append((base + w, getattr(port, f"{r.name}_readback")[lo:hi]))
                        else:
                            read_cases.append((base + w, store[lo:hi]))
                    if r.strobe:
                        # High the cycle after a write to any word of the register, when
                        # ``store`` already holds the new value.
                        stb = Signal(name=f"{stage}__{r.name}__stb")
                        hit = bus.w_stb & (bus.addr >= base) & (bus.addr < base + r.words)
                        m.d.sync += stb.eq(hit)
                        m.d.comb += getattr(port, f"{r.name}_stb").eq(stb)
                else:
                    value = getattr(port, r.name)
                    if r.words == 1:
                        read_cases.append((base, value))
                    else:
                        shadow = Signal(r.width - WORD_BITS, name=f"{stage}__{r.name}__shadow")
                        with m.If(bus.r_stb & (bus.addr == base)):
                            m.d.sync += shadow.eq(value[WORD_BITS:])
                        read_cases.append((base, value[:WORD_BITS]))
                        for w in range(1, r.words):
                            lo = (w - 1) * WORD_BITS
                            hi = min(r.width - WORD_BITS, lo + WORD_BITS)
                            read_cases.append((base + w, shadow[lo:hi]))
        # The read multiplexer in two levels: on ``r_stb`` each stage registers the word its window
        # holds at the address (and the bank which stage was asked), so every stage's registers
        # meet in a 64-way multiplexer next to that stage; ``r_data`` then picks one of the
        # registered stage words. Still one cycle of latency, and only one 32-bit bus per stage
        # (not every register bit of the card) crosses the chip to the host's bus.
        window_bits = (WINDOW_WORDS - 1).bit_length()
        stage_words = []
        for index, (stage, _) in enumerate(self._stages):
            word = Signal(WORD_BITS, name=f"{stage}__read_word")
            cases = [(addr - index * WINDOW_WORDS, value) for addr, value in read_cases
                     if addr // WINDOW_WORDS == index]
            with m.If(bus.r_stb):
                with m.Switch(bus.addr[:window_bits]):
                    for offset, value in cases:
                        with m.Case(offset):
                            m.d.sync += word.eq(value)
                    with m.Default():
                        m.d.sync += word.eq(0)
            stage_words.append(word)
        read_stage = Signal(self._addr_width - window_bits, name="read_stage")
        with m.If(bus.r_stb):
            m.d.sync += read_stage.eq(bus.addr[window_bits:])
        with m.Switch(read_stage):
            for index, word in enumerate(stage_words):
                with m.Case(index):
                    m.d.comb += bus.r_data.eq(word)
            with m.Default():
                m.d.comb += bus.r_data.eq(0)
        return m


def regmap_document(bank: CsrBank, constants: dict[str, int]) -> dict:
    """The JSON-serialisable register map the host loads."""
    return {
        "format": REGMAP_FORMAT,
        "version": 1,
        "word_bytes": WORD_BITS // 8,
        "constants": {"regmap_version": REGMAP_VERSION, "magic": MAGIC, **constants},
        "registers": bank.address_map(),
    }


def regmap_markdown(doc: dict) -> str:
    """``docs/registers.md`` from the register map."""
    lines = ["# Register map", "",
             "Generated by `tickwire.hdl.build` from the register tables next to each stage; do not",
             "edit by hand (`python -m tickwire.hdl.build --regmap` rewrites it).", "",
             "32-bit words, word addresses; registers wider than 32 bits take consecutive words,",
             "least significant first; reading the low word of a wide read-only register latches",
             "the upper words.", "", "Constants:", ""]
    for k, v in doc["constants"].items():
        lines.append(f"- `{k}` = {v} (0x{v:X})")
    stage = None
    for name, r in doc["registers"].items():
        if r["stage"] != stage:
            stage = r["stage"]
            lines += ["", f"## {stage}", "", "| address | register | width | access | reset | description |",
                      "|---|---|---|---|---|---|"]
        lines.append(f"| 0x{r['address']:03X} | `{name}` | {r['width']} | {r['access']} | "
                     f"0x{r['reset']:X} | {r['description']}"
                     + (f" Indexed by `{r['indexed_by']}`." if r.get("indexed_by") else "") + " |")
    return "\n".join(lines) + "\n"


def regmap_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
