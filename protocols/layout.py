"""Byte-layout description shared by gateware generators, reference models and host code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: Field types. ``integer`` is unsigned big-endian; ``signed`` is two's complement big-endian;
#: ``alpha`` is ASCII, left justified, padded on the right with spaces; ``price4``/``price8`` are
#: unsigned integers with 4/8 implied decimal places; ``signed_price4`` is a signed price;
#: ``timestamp`` is nanoseconds since midnight.
FIELD_TYPES = ("integer", "signed", "alpha", "price4", "price8", "signed_price4", "timestamp")


class LayoutError(ValueError):
    """Raised for bytes that do not fit a layout, or values that do not fit a field."""


@dataclass(frozen=True)
class Field:
    """One field of a fixed-layout message: ``name`` at byte ``offset``, ``width`` bytes long."""

    name: str
    offset: int
    width: int
    type: str

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name!r}: type must be one of {FIELD_TYPES}, not {self.type!r}")
        if self.offset < 0 or self.width <= 0:
            raise ValueError(f"field {self.name!r}: bad offset/width {self.offset}/{self.width}")

    @property
    def end(self) -> int:
        return self.offset + self.width

    def encode(self, value: Any) -> bytes:
        if self.type == "alpha":
            if isinstance(value, str):
                value = value.encode("ascii")
            if not isinstance(value, (bytes, bytearray)):
                raise LayoutError(f"field {self.name!r}: alpha value must be str or bytes, not {value!r}")
            if len(value) > self.width:
                raise LayoutError(f"field {self.name!r}: {value!r} is longer than {self.width} bytes")
            return bytes(value).ljust(self.width, b" ")
        if not isinstance(value, int):
            raise LayoutError(f"field {self.name!r}: integer value expected, not {value!r}")
        signed = self.type in ("signed", "signed_price4")
        try:
            return value.to_bytes(self.width, "big", signed=signed)
        except OverflowError:
            raise LayoutError(f"field {self.name!r}: {value} does not fit {self.width} bytes") from None

    def decode(self, data: bytes) -> Any:
        raw = data[self.offset:self.end]
        if self.type == "alpha":
            return raw.decode("ascii", errors="replace")
        return int.from_bytes(raw, "big", signed=self.type in ("signed", "signed_price4"))


@dataclass(frozen=True)
class Message:
    """A fixed-length message (its variable tail, if any, follows ``length`` bytes)."""

    name: str
    type: str  # the one-character message/packet type, '' when the layout has none
    fields: tuple[Field, ...]
    length: int = field(default=-1)

    def __post_init__(self) -> None:
        end = 0
        for f in self.fields:
            if f.offset != end:
                raise ValueError(f"{self.name}: field {f.name!r} at {f.offset}, expected {end} (gap or overlap)")
            end = f.end
        if self.length == -1:
            object.__setattr__(self, "length", end)
        elif self.length != end:
            raise ValueError(f"{self.name}: declared length {self.length} but fields end at {end}")

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def pack(self, **values: Any) -> bytes:
        """Encode ``values``; the type field is filled in, missing alpha fields are spaces and
        missing integer fields zero. Unknown names are an error."""
        unknown = set(values) - set(self.field_names)
        if unknown:
            raise LayoutError(f"{self.name}: unknown fields {sorted(unknown)}")
        out = bytearray()
        for f in self.fields:
            if f.name == "message_type" or f.name == "packet_type":
                v = values.get(f.name, self.type)
            else:
                v = values.get(f.name, "" if f.type == "alpha" else 0)
            out += f.encode(v)
        return bytes(out)

    def unpack(self, data: bytes) -> dict[str, Any]:
        if len(data) < self.length:
            raise LayoutError(f"{self.name}: {len(data)} bytes, need {self.length}")
        return {f.name: f.decode(data) for f in self.fields}


def message_table(messages: Mapping[str, Message]) -> dict[str, Any]:
    """A JSON-friendly view of a set of layouts, for docs and for tools in other languages."""
    return {
        t: {"name": m.name, "length": m.length,
            "fields": [{"name": f.name, "offset": f.offset, "width": f.width, "type": f.type} for f in m.fields]}
        for t, m in messages.items()
    }


def F(name: str, offset: int, width: int, type: str = "integer") -> Field:
    """Shorthand used by the protocol tables."""
    return Field(name, offset, width, type)
