"""The register map exported by the gateware generator, and register access over a transport."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

from .errors import TickwireError

__all__ = [
    "RegisterMapError", "RegisterAccessError", "RegisterValueError", "IdentityError",
    "Register", "RegisterMap", "Transport", "MemoryTransport", "Registers", "check_identity",
]

logger = logging.getLogger(__name__)

#: The ``format`` and ``version`` of the map files this module reads.
FORMAT = "tickwire-regmap"
FORMAT_VERSION = 1
#: Register bus word: 32 bits, word addresses (docs/pipeline-contract.md, "Register bus").
WORD_BITS = 32
WORD_BYTES = WORD_BITS // 8
WORD_MASK = (1 << WORD_BITS) - 1
#: The packaged map: ``registers.json`` in package ``tickwire.host``, written by the generator.
PACKAGE = "tickwire.host"
PACKAGED_MAP = "registers.json"

ACCESS = ("rw", "ro")
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class RegisterMapError(TickwireError):
    """The register map file is missing or malformed, or a register name is not in it."""


class RegisterAccessError(TickwireError):
    """A write to a read-only register."""


class RegisterValueError(TickwireError, ValueError):
    """A value that does not fit its register, or a word that does not fit the bus."""


class IdentityError(TickwireError):
    """The card's ``id.magic`` or ``id.regmap_version`` differs from the register map's."""


@dataclass(frozen=True)
class Register:
    """One register: ``size`` 32-bit words from word ``address``, holding ``width`` bits.

    A register wider than 32 bits takes ``ceil(width / 32)`` consecutive words, least significant
    word first.
    """

    name: str
    stage: str
    address: int
    size: int
    width: int
    access: str
    reset: int
    description: str = ""
    #: ``stage.name`` of the register that selects which table entry this one reads and writes
    #: (hdl/csr.py ``Register.indexed_by``); empty for a plain register.
    indexed_by: str = ""

    @property
    def qualified_name(self) -> str:
        """``stage.name``, the register's name in the map and in the pipeline contract."""
        return f"{self.stage}.{self.name}"

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1

    @property
    def addresses(self) -> range:
        """Word addresses of the register, least significant word first."""
        return range(self.address, self.address + self.size)

    def check_value(self, value: Any) -> int:
        """``value`` as an int, or :class:`RegisterValueError` if it does not fit ``width`` bits."""
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int):
            raise RegisterValueError(
                f"register {self.qualified_name}: value must be an integer, not {value!r}")
        if value < 0:
            raise RegisterValueError(
                f"register {self.qualified_name}: {value} is negative; registers are unsigned")
        if value > self.max_value:
            raise RegisterValueError(
                f"register {self.qualified_name}: {value} (0x{value:x}) does not fit {self.width} "
                f"bits (0 to 0x{self.max_value:x})")
        return value

    def to_words(self, value: Any) -> list[int]:
        """``value`` split into ``size`` 32-bit words, least significant word first."""
        value = self.check_value(value)
        return [(value >> (WORD_BITS * i)) & WORD_MASK for i in range(self.size)]

    def from_words(self, words: list[int]) -> int:
        """The value of words read least significant first; bits above ``width`` are ignored."""
        if len(words) != self.size:
            raise ValueError(f"register {self.qualified_name}: {self.size} words expected, "
                             f"not {len(words)}")
        value = 0
        for i, word in enumerate(words):
            value |= word << (WORD_BITS * i)
        return value & self.max_value

    def to_dict(self) -> dict[str, Any]:
        d = {"stage": self.stage, "name": self.name, "address": self.address,
             "size": self.size, "width": self.width, "access": self.access,
             "reset": self.reset, "description": self.description}
        if self.indexed_by:
            d["indexed_by"] = self.indexed_by
        return d


class RegisterMap:
    """The registers and constants of one gateware build, read from the generator's JSON.

    Look a register up by ``"stage.name"`` (``regmap["risk.max_order_quantity"]``); iterating
    gives the registers in address order, :meth:`stages` and :meth:`stage` group them by stage.
    """

    def __init__(self, registers: list[Register], constants: Mapping[str, Any], *,
                 source: str = "<register map>") -> None:
        self.source = source
        self.constants: Mapping[str, Any] = MappingProxyType(dict(constants))
        ordered = sorted(registers, key=lambda r: r.address)
        self._registers: dict[str, Register] = {r.qualified_name: r for r in ordered}
        self._stages: dict[str, tuple[Register, ...]] = {}
        for r in ordered:
            self._stages[r.stage] = self._stages.get(r.stage, ()) + (r,)

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> RegisterMap:
        """Read a map file; ``None`` reads the packaged ``tickwire/host/registers.json``."""
        if path is None:
            resource = resources.files(PACKAGE).joinpath(PACKAGED_MAP)
            source = f"{resource} (packaged register map {PACKAGE}/{PACKAGED_MAP})"
            try:
                text = resource.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise RegisterMapError(
                    f"register map {source} not found: it is written by the gateware generator; "
                    f"generate it or pass a map file") from None
        else:
            source = os.fspath(path)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                raise RegisterMapError(f"register map {source} not found") from None
            except (OSError, UnicodeDecodeError) as e:
                raise RegisterMapError(f"register map {source} cannot be read: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RegisterMapError(f"register map {source} is not valid JSON: {e.msg} "
                                   f"(line {e.lineno}, column {e.colno})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<register map>") -> RegisterMap:
        """Build a map from the decoded JSON; :class:`RegisterMapError` names what is wrong."""
        def fail(message: str) -> RegisterMapError:
            return RegisterMapError(f"register map {source}: {message}")

        if not isinstance(d, Mapping):
            raise fail(f"top level must be an object, not {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise fail(f"format must be {FORMAT!r}, not {d.get('format')!r}")
        if d.get("version") != FORMAT_VERSION:
            raise fail(f"version {d.get('version')!r} is not supported (this host reads version "
                       f"{FORMAT_VERSION})")
        if d.get("word_bytes") != WORD_BYTES:
            raise fail(f"word_bytes must be {WORD_BYTES}, not {d.get('word_bytes')!r}")
        constants = d.get("constants")
        if not isinstance(constants, Mapping):
            raise fail("'constants' must be an object")
        for key in ("regmap_version", "magic"):
            if not _is_int(constants.get(key)):
                raise fail(f"constant {key!r} must be an integer, not {constants.get(key)!r}")
        entries = d.get("registers")
        if not isinstance(entries, Mapping):
            raise fail("'registers' must be an object")

        registers: list[Register] = []
        owner: dict[int, str] = {}
        for key, entry in entries.items():
            where = f"register {key!r}"
            if not isinstance(entry, Mapping):
                raise fail(f"{where} must be an object")
            for field, kind in (("stage", str), ("name", str), ("address", int), ("size", int),
                                ("width", int), ("access", str), ("reset", int)):
                value = entry.get(field)
                if not (_is_int(value) if kind is int else isinstance(value, kind)):
                    expected = "an integer" if kind is int else "a string"
                    raise fail(f"{where}: {field!r} must be {expected}, not {value!r}")
            description = entry.get("description", "")
            if not isinstance(description, str):
                raise fail(f"{where}: 'description' must be a string, not {description!r}")
            indexed_by = entry.get("indexed_by", "")
            if not isinstance(indexed_by, str):
                raise fail(f"{where}: 'indexed_by' must be a string, not {indexed_by!r}")
            stage, name = entry["stage"], entry["name"]
            for part in (stage, name):
                if not _NAME.match(part):
                    raise fail(f"{where}: {part!r} is not a lower-case identifier")
            if key != f"{stage}.{name}":
                raise fail(f"{where}: key must be 'stage.name', i.e. {stage + '.' + name!r}")
            if entry["access"] not in ACCESS:
                raise fail(f"{where}: access must be one of {ACCESS}, not {entry['access']!r}")
            if entry["address"] < 0:
                raise fail(f"{where}: negative address {entry['address']}")
            if entry["width"] < 1:
                raise fail(f"{where}: width must be at least 1, not {entry['width']}")
            words = -(-entry["width"] // WORD_BITS)
            if entry["size"] != words:
                raise fail(f"{where}: {entry['width']} bits take {words} words, not size "
                           f"{entry['size']}")
            if not 0 <= entry["reset"] < (1 << entry["width"]):
                raise fail(f"{where}: reset {entry['reset']} does not fit {entry['width']} bits")
            register = Register(name=name, stage=stage, address=entry["address"],
                                size=entry["size"], width=entry["width"], access=entry["access"],
                                reset=entry["reset"], description=description,
                                indexed_by=indexed_by)
            for address in register.addresses:
                if address in owner:
                    raise fail(f"{where}: word 0x{address:x} is also used by {owner[address]!r}")
                owner[address] = key
            registers.append(register)
        for register in registers:
            if register.indexed_by and register.indexed_by not in entries:
                raise fail(f"register {register.qualified_name!r}: indexed by "
                           f"{register.indexed_by!r}, which is not in the map")
        return cls(registers, constants, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The map in the generator's JSON format; ``from_dict(m.to_dict())`` is a copy of ``m``."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "word_bytes": WORD_BYTES,
                "constants": dict(self.constants),
                "registers": {key: r.to_dict() for key, r in self._registers.items()}}

    # -- lookup -----------------------------------------------------------------------------------

    @property
    def regmap_version(self) -> int:
        return self.constants["regmap_version"]

    @property
    def magic(self) -> int:
        return self.constants["magic"]

    def __getitem__(self, qualified_name: str) -> Register:
        try:
            return self._registers[qualified_name]
        except KeyError:
            stage = qualified_name.partition(".")[0]
            if stage in self._stages:
                known = ", ".join(r.name for r in self._stages[stage])
                hint = f"stage {stage!r} has: {known}"
            else:
                hint = f"stages: {', '.join(self._stages)}"
            raise RegisterMapError(f"no register {qualified_name!r} in register map "
                                   f"{self.source} ({hint})") from None

    def get(self, qualified_name: str) -> Register | None:
        return self._registers.get(qualified_name)

    def __contains__(self, qualified_name: object) -> bool:
        return qualified_name in self._registers

    def __iter__(self) -> Iterator[Register]:
        return iter(self._registers.values())

    def __len__(self) -> int:
        return len(self._registers)

    def stages(self) -> tuple[str, ...]:
        """Stage names, in the order of their first register's address."""
        return tuple(self._stages)

    def stage(self, stage: str) -> tuple[Register, ...]:
        """The registers of ``stage`` in address order."""
        try:
            return self._stages[stage]
        except KeyError:
            raise RegisterMapError(f"no stage {stage!r} in register map {self.source} "
                                   f"(stages: {', '.join(self._stages)})") from None

    def by_stage(self) -> dict[str, tuple[Register, ...]]:
        """``{stage: registers}`` in address order."""
        return dict(self._stages)

    def __repr__(self) -> str:
        return (f"<RegisterMap {self.source}: {len(self)} registers in {len(self._stages)} stages, "
                f"regmap_version {self.constants['regmap_version']}>")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- transports ------------------------------------------------------------------------------------

@runtime_checkable
class Transport(Protocol):
    """The two verbs every transport offers: 32-bit words at word addresses."""

    def read(self, address: int) -> int: ...

    def write(self, address: int, value: int) -> None: ...


class MemoryTransport:
    """A transport backed by a dict of words, for tests; unwritten words read as 0."""

    def __init__(self, words: Mapping[int, int] | None = None) -> None:
        self.words: dict[int, int] = {}
        for address, value in (words or {}).items():
            self.write(address, value)

    @classmethod
    def with_resets(cls, regmap: RegisterMap) -> MemoryTransport:
        """Memory holding every register's reset value, like a card just out of reset."""
        transport = cls()
        for register in regmap:
            for address, word in zip(register.addresses, register.to_words(register.reset)):
                transport.write(address, word)
        return transport

    def read(self, address: int) -> int:
        return self.words.get(address, 0)

    def write(self, address: int, value: int) -> None:
        if not _is_int(value) or not 0 <= value <= WORD_MASK:
            raise RegisterValueError(f"word {value!r} written to 0x{address:x} is not 32 bits")
        self.words[address] = value


# -- register access -------------------------------------------------------------------------------

class Registers:
    """Attribute access to a card's registers: ``regs.risk.max_order_quantity = 500``.

    Reads and writes go through ``transport`` one word at a time, least significant word first;
    a register wider than 32 bits is therefore not read or written atomically. Writes to ``ro``
    registers raise :class:`RegisterAccessError`, values that do not fit raise
    :class:`RegisterValueError`.
    """

    def __init__(self, regmap: RegisterMap, transport: Transport) -> None:
        for stage in regmap.stages():
            if stage in ("regmap", "transport") or hasattr(type(self), stage):
                raise RegisterMapError(f"register map {regmap.source}: stage {stage!r} clashes "
                                       f"with Registers.{stage}")
        self.regmap = regmap
        self.transport = transport
        self._stages = {stage: _StageRegisters(self, stage) for stage in regmap.stages()}

    def read(self, qualified_name: str) -> int:
        register = self.regmap[qualified_name]
        words = []
        for address in register.addresses:
            word = self.transport.read(address)
            if not isinstance(word, int) or not 0 <= word <= WORD_MASK:
                raise RegisterValueError(f"register {qualified_name}: transport returned "
                                         f"{word!r} for word 0x{address:x}, not a 32-bit word")
            words.append(word)
        value = register.from_words(words)
        logger.debug("read %s @ 0x%04x: 0x%x", qualified_name, register.address, value)
        return value

    def write(self, qualified_name: str, value: int) -> None:
        register = self.regmap[qualified_name]
        if not register.writable:
            raise RegisterAccessError(f"register {qualified_name} is read-only")
        words = register.to_words(value)
        logger.debug("write %s @ 0x%04x: 0x%x", qualified_name, register.address, int(value))
        for address, word in zip(register.addresses, words):
            self.transport.write(address, word)

    def __getattr__(self, stage: str) -> _StageRegisters:
        stages = self.__dict__.get("_stages")
        if stages is None or stage not in stages:
            known = ", ".join(stages) if stages else "none"
            raise AttributeError(f"no stage {stage!r} in the register map (stages: {known})")
        return stages[stage]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._stages))

    def __repr__(self) -> str:
        return f"<Registers {self.regmap.source} over {self.transport!r}>"


class _StageRegisters:
    """``regs.<stage>``: its registers as attributes; reading one reads the card."""

    def __init__(self, registers: Registers, stage: str) -> None:
        object.__setattr__(self, "_registers", registers)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_names", {r.name for r in registers.regmap.stage(stage)})

    def _qualified(self, name: str) -> str:
        if name not in self._names:
            raise AttributeError(f"no register {name!r} in stage {self._stage!r} "
                                 f"(registers: {', '.join(sorted(self._names))})")
        return f"{self._stage}.{name}"

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._registers.read(self._qualified(name))

    def __setattr__(self, name: str, value: int) -> None:
        self._registers.write(self._qualified(name), value)

    def __dir__(self) -> list[str]:
        return sorted(self._names)

    def __repr__(self) -> str:
        return f"<registers of stage {self._stage}: {', '.join(sorted(self._names))}>"


def check_identity(regs: Registers) -> None:
    """Raise :class:`IdentityError` unless the card's ``id.magic`` and ``id.regmap_version`` match
    the map's constants (call it when connecting, before touching any other register)."""
    regmap = regs.regmap
    magic = regs.read("id.magic")
    if magic != regmap.magic:
        raise IdentityError(f"id.magic reads 0x{magic:08x}, not 0x{regmap.magic:08x}: "
                            f"this is not a tickwire card, or the transport is misconfigured")
    version = regs.read("id.regmap_version")
    if version != regmap.regmap_version:
        raise IdentityError(f"id.regmap_version reads {version}, but register map {regmap.source} "
                            f"is version {regmap.regmap_version}: load the map of the bitstream "
                            f"on the card")
    logger.info("card identity ok: magic 0x%08x, regmap_version %d", magic, version)
