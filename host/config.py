"""Register settings from a TOML file, checked against the register map.

The file's tables are stages and their keys are register names::

    [risk]
    max_order_quantity = 500
    max_order_notional = 1_000_000_0000   # price units of 1/10000

    [net_tx]
    dst_mac = "02:00:00:00:00:01"
    dst_ip = "192.168.10.2"

    [ouch]
    cl_ord_id_prefix = "TWIR"

A value is an integer (``true``/``false`` count as 1/0) or a string, which is converted:
six colon-separated hex bytes (``"aa:bb:cc:dd:ee:ff"``) are a MAC address, a dotted quad
(``"10.0.0.1"``) is an IPv4 address, and anything else must be 1 to 8 ASCII characters, taken as
bytes, most significant first (``"B"`` is 0x42, ``"TWIR"`` is 0x54574952; no padding is added).
Every value must then fit its register's width.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from typing import Any

from .errors import TickwireError
from .regmap import Register, RegisterMap, RegisterValueError

__all__ = ["ConfigError", "load_register_overrides", "convert_string"]

_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}\Z")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
#: Longest ASCII string a register value may be given as (a 64-bit register).
MAX_ASCII = 8


class ConfigError(TickwireError):
    """A register settings file that cannot be read, or a setting the register map refuses."""


def convert_string(text: str) -> int:
    """A string register value as an int: MAC address, dotted-quad IPv4 address, or ASCII bytes."""
    if _MAC.match(text):
        return int(text.replace(":", ""), 16)
    if _DOTTED_QUAD.match(text):
        try:
            return int(ipaddress.IPv4Address(text))
        except ipaddress.AddressValueError as e:
            raise ValueError(f"{text!r} is not an IPv4 address: {e}") from None
    if not 1 <= len(text) <= MAX_ASCII:
        raise ValueError(f"{text!r} is not a MAC address, an IPv4 address, or 1 to {MAX_ASCII} "
                         f"ASCII characters")
    if not text.isascii():
        raise ValueError(f"{text!r} is not ASCII")
    return int.from_bytes(text.encode("ascii"), "big")


def load_register_overrides(path: str | os.PathLike[str], regmap: RegisterMap) -> dict[str, int]:
    """``{"stage.register": value}`` from the TOML file at ``path``, in file order.

    Raises :class:`ConfigError` naming the file, the table and the key for an unknown stage or
    register, a read-only register, or a value that is not an integer (or convertible string) or
    does not fit the register; TOML syntax errors give the line and column.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {source} not found") from None
    except OSError as e:
        raise ConfigError(f"config {source} cannot be read: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {source} is not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"config {source} is not valid TOML: {e}") from None

    overrides: dict[str, int] = {}
    stages = regmap.stages()
    for stage, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config {source}: key {stage!r} is not in a table; put register "
                              f"values under a [stage] table ({', '.join(stages)})")
        if stage not in stages:
            raise ConfigError(f"config {source}: table [{stage}] is not a stage of the register "
                              f"map (stages: {', '.join(stages)})")
        registers = {r.name: r for r in regmap.stage(stage)}
        for name, value in table.items():
            where = f"config {source}: [{stage}] {name}"
            register = registers.get(name)
            if register is None:
                raise ConfigError(f"{where}: no such register in stage {stage!r} "
                                  f"(registers: {', '.join(registers)})")
            if not register.writable:
                raise ConfigError(f"{where}: register {register.qualified_name} is read-only")
            if register.indexed_by:
                # One value per slot (or session): a table of index = value.
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: register {register.qualified_name} is set per "
                                      f"{register.indexed_by.rpartition('.')[2].removeprefix('limit_')}: "
                                      f"give a table of index = value, e.g. {name} = {{ 0 = 500 }}")
                selector = register.indexed_by if "." in register.indexed_by else f"{stage}.{register.indexed_by}"
                select = regmap.get(selector)
                for index, item in value.items():
                    if not index.isdigit() or select is None or int(index) > select.max_value:
                        raise ConfigError(f"{where}: index {index!r} must be a number the selector "
                                          f"{stage}.{register.indexed_by} can hold")
                    overrides[f"{register.qualified_name}[{int(index)}]"] = _convert(f"{where}[{index}]", register, item)
                continue
            overrides[register.qualified_name] = _convert(where, register, value)
    return overrides


def _convert(where: str, register: Register, value: Any) -> int:
    given = ""
    if isinstance(value, str):
        try:
            given = f"{value!r} is "
            value = convert_string(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    elif isinstance(value, bool):
        value = int(value)
    elif not isinstance(value, int):
        raise ConfigError(f"{where}: value must be an integer or a string, not "
                          f"{type(value).__name__} {value!r}")
    try:
        return register.check_value(value)
    except RegisterValueError:
        if value < 0:
            problem = f"{value} is negative; registers are unsigned"
        else:
            problem = (f"{given}{value} (0x{value:x}){', which' if given else ''} does not fit "
                       f"{register.width} bits (0 to 0x{register.max_value:x})")
        raise ConfigError(f"{where}: {problem}") from None
