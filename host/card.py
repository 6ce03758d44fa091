"""The card as the host sees it: typed registers from the register map, kill switch, host orders,
events; over any driver (:mod:`tickwire.drivers`).

``card.risk.max_order_quantity = 500`` writes a register, ``card.risk.accepted`` reads one (an
int); a register the map marks ``indexed_by`` another (a table entry chosen by a slot or session
register) is used with an index: ``card.risk.max_order_quantity[slot] = 500`` writes the
selecting register, then the value. Writes to read-only registers and values that do not fit
raise before anything is written.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator, Mapping

from tickwire.protocols.events import Event

from .errors import TickwireError
from .regmap import (Register, RegisterAccessError, RegisterMap, Registers,
                     check_identity as _check_identity)

__all__ = ["Card", "CardFeatureError", "OrderQueueFull", "ORDER_ENTRY_STAGE", "EVENTS_STAGE",
           "ORDER_ENTRY_REQUIRED"]

logger = logging.getLogger(__name__)

#: The event stage's registers: where the event ring is (see Card._program_event_ring).
EVENTS_STAGE = "event_ring"
#: The host order registers (``order_entry.host_<field>``, hdl/order_entry.py).
ORDER_ENTRY_STAGE = "order_entry"
ORDER_ENTRY_REQUIRED = ("action", "session", "slot", "side", "quantity", "price", "user_ref_num",
                        "submit", "dropped")
_ACTIONS = {"O": "enter", "U": "replace", "X": "cancel", "M": "modify"}


class CardFeatureError(TickwireError):
    """The card's register map lacks the registers a feature needs."""


class OrderQueueFull(TickwireError):
    """The card's host order queue has no free entry."""


class Card:
    """A tickwire card behind ``driver``, described by ``regmap`` (default: the packaged map).

    On construction the card's ``id.magic`` and ``id.regmap_version`` are checked against the
    map (:class:`tickwire.host.regmap.IdentityError` if they differ; ``check_identity=False``
    skips it). Register access is serialised by a lock, so an index and its value are written
    together even when several threads share the card.
    """

    def __init__(self, driver: Any, regmap: RegisterMap | None = None, *,
                 check_identity: bool = True) -> None:
        self.driver = driver
        self.regmap = regmap if regmap is not None else RegisterMap.load()
        self.registers = Registers(self.regmap, driver)
        self._lock = threading.RLock()
        self._stages: dict[str, _Stage] = {}
        for stage in self.regmap.stages():
            if hasattr(type(self), stage) or stage in ("driver", "regmap", "registers"):
                # e.g. the gateware's ``events`` stage and Card.events: its registers stay
                # reachable by name (card.read("events.dropped")), not as an attribute
                logger.debug("register map %s: stage %r clashes with Card.%s; use card.read()",
                             self.regmap.source, stage, stage)
                continue
            self._stages[stage] = _Stage(self, stage)
        if check_identity:
            with self._lock:
                _check_identity(self.registers)
        self._program_event_ring()

    def _program_event_ring(self) -> None:
        """Tell the card where the driver's event ring is: ``event_ring.<name>`` registers, then
        ``event_ring.enable`` when the map has it. A map without them is a card without an event
        stage yet, and the driver's ring stays empty."""
        values = getattr(self.driver, "event_ring_registers", dict)()
        if not values:
            return
        missing = [n for n in values if f"{EVENTS_STAGE}.{n}" not in self.regmap]
        if missing:
            logger.info("the card has no event ring registers (%s): no card events",
                        ", ".join(f"{EVENTS_STAGE}.{n}" for n in missing))
            return
        with self._lock:
            for name, value in values.items():
                self.registers.write(f"{EVENTS_STAGE}.{name}", value)
            if f"{EVENTS_STAGE}.enable" in self.regmap:
                self.registers.write(f"{EVENTS_STAGE}.enable", 1)

    @classmethod
    def open(cls, config: Mapping[str, Any], regmap: RegisterMap | None = None, *,
             check_identity: bool = True) -> Card:
        """Open the driver ``config`` names (:func:`tickwire.drivers.open_driver`) and the card
        behind it; the driver is closed again if the card does not check out."""
        from tickwire.drivers import open_driver
        driver = open_driver(config)
        try:
            return cls(driver, regmap, check_identity=check_identity)
        except BaseException:
            driver.close()
            raise

    # -- registers --------------------------------------------------------------------------------

    def __getattr__(self, stage: str) -> _Stage:
        stages = self.__dict__.get("_stages")
        if stages is None or stage not in stages:
            known = ", ".join(stages) if stages else "none"
            raise AttributeError(f"no stage {stage!r} in the register map (stages: {known})")
        return stages[stage]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._stages))

    def read(self, name: str, index: int | None = None) -> int:
        """Register ``stage.name``; ``index`` selects the entry of an indexed register."""
        register = self.regmap[name]
        with self._lock:
            self._select(register, index)
            return self.registers.read(name)

    def write(self, name: str, value: int, index: int | None = None) -> None:
        """Write ``value`` to ``stage.name`` (entry ``index`` of an indexed register). Checks the
        value, the access and the index before writing anything."""
        register = self.regmap[name]
        if not register.writable:
            raise RegisterAccessError(f"register {name} is read-only")
        register.check_value(value)
        with self._lock:
            self._select(register, index)
            self.registers.write(name, value)

    def _select(self, register: Register, index: int | None) -> None:
        selector = register.indexed_by
        if not selector:
            if index is not None:
                raise RegisterAccessError(f"register {register.qualified_name} is not indexed; "
                                          f"use it without [{index!r}]")
            return
        if index is None:
            raise RegisterAccessError(f"register {register.qualified_name} is indexed by "
                                      f"{selector}: give the entry, e.g. "
                                      f"card.{register.stage}.{register.name}[0]")
        self.regmap[selector].check_value(index)
        self.registers.write(selector, index)

    # -- kill switch ------------------------------------------------------------------------------

    def kill(self) -> None:
        """Set ``risk.kill``: the card rejects every order from now on."""
        self.write("risk.kill", 1)
        logger.warning("kill switch set")

    def unkill(self) -> None:
        """Clear ``risk.kill``."""
        self.write("risk.kill", 0)
        logger.warning("kill switch cleared")

    @property
    def killed(self) -> bool:
        return bool(self.read("risk.kill"))

    # -- host orders ------------------------------------------------------------------------------

    def submit_order(self, *, side: str, quantity: int, price: int, user_ref_num: int = 0,
                     session: int = 0, slot: int = 0, action: str = "O",
                     **optional: int) -> None:
        """Queue an order action from the host on the card; risk checks it like a trigger order.

        Uses the order entry stage's host order registers (``hdl/order_entry.py``): every
        ``order_entry.host_<field>`` is written (the fields given here and in ``optional``, the
        others 0, so nothing of an earlier order stays staged), then ``order_entry.host_submit``.
        ``action`` is the OUCH type ('O' enter, 'U' replace, 'X' cancel, 'M' modify); ``side``
        ASCII; ``price`` 4 implied decimals; ``user_ref_num`` 0 lets the card number an Enter or
        Replace. Raises :class:`CardFeatureError` when the map has no host order registers,
        :class:`OrderQueueFull` when the card dropped the order (``host_dropped`` went up), and
        checks every value before writing anything.
        """
        prefix = f"{ORDER_ENTRY_STAGE}.host_"
        missing = [n for n in ORDER_ENTRY_REQUIRED if f"{prefix}{n}" not in self.regmap]
        if missing:
            raise CardFeatureError(
                f"register map {self.regmap.source} has no host order queue: "
                f"{', '.join(prefix + n for n in missing)} missing")
        if action not in _ACTIONS:
            raise TickwireError(f"order action must be one of {', '.join(_ACTIONS)} "
                                f"({', '.join(_ACTIONS.values())}), not {action!r}")
        fields = [r.name[len("host_"):] for r in self.regmap.stage(ORDER_ENTRY_STAGE)
                  if r.name.startswith("host_") and r.writable and r.name != "host_submit"]
        unknown = sorted(set(optional) - set(fields))
        if unknown:
            raise CardFeatureError(f"the card's host orders have no {', '.join(unknown)} "
                                   f"(fields: {', '.join(fields)})")
        given = {"action": ord(action), "session": session, "slot": slot,
                 "side": _ascii(side, "side"), "quantity": quantity, "price": price,
                 "user_ref_num": user_ref_num, **optional}
        values = {name: given.get(name, 0) for name in fields}
        for name, value in values.items():
            self.regmap[f"{prefix}{name}"].check_value(value)
        with self._lock:
            dropped = self.registers.read(f"{prefix}dropped")
            for name, value in values.items():
                self.registers.write(f"{prefix}{name}", value)
            self.registers.write(f"{prefix}submit", 1)
            if self.registers.read(f"{prefix}dropped") != dropped:
                raise OrderQueueFull("the card's host order queue was full: the order was "
                                     "dropped (order_entry.host_dropped went up)")
        logger.info("host order %s: %s %d @ %d, user_ref_num %d, session %d, slot %d",
                    _ACTIONS[action], side, quantity, price, user_ref_num, session, slot)

    # -- events and life cycle --------------------------------------------------------------------

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[Event]:
        """Card events since the last call (:meth:`tickwire.drivers.base.Driver.events`)."""
        return self.driver.events(timeout=timeout, limit=limit)

    def iter_events(self, timeout: float = 0.0) -> Iterator[Event]:
        """Events as they come, until none came for ``timeout`` seconds."""
        while batch := self.events(timeout=timeout):
            yield from batch

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Card {self.regmap.source} over {self.driver!r}>"


def _ascii(value: Any, name: str) -> int:
    if isinstance(value, str) and len(value) == 1 and value.isascii():
        return ord(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TickwireError(f"{name} must be one ASCII character, not {value!r}")


class _Stage:
    """``card.<stage>``: its registers as attributes."""

    def __init__(self, card: Card, stage: str) -> None:
        object.__setattr__(self, "_card", card)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_registers",
                           {r.name: r for r in card.regmap.stage(stage)})

    def _register(self, name: str) -> Register:
        try:
            return self._registers[name]
        except KeyError:
            raise AttributeError(f"no register {name!r} in stage {self._stage!r} "
                                 f"(registers: {', '.join(sorted(self._registers))})") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        register = self._register(name)
        if register.indexed_by:
            return _Indexed(self._card, register)
        return self._card.read(register.qualified_name)

    def __setattr__(self, name: str, value: Any) -> None:
        register = self._register(name)
        if register.indexed_by:
            raise RegisterAccessError(f"register {register.qualified_name} is indexed by "
                                      f"{register.indexed_by}: write card.{self._stage}.{name}"
                                      f"[index] = value")
        self._card.write(register.qualified_name, value)

    def __dir__(self) -> list[str]:
        return sorted(self._registers)

    def __repr__(self) -> str:
        return f"<card stage {self._stage}: {', '.join(sorted(self._registers))}>"


class _Indexed:
    """An indexed register: ``reg[index]`` reads entry ``index``, ``reg[index] = v`` writes it."""

    def __init__(self, card: Card, register: Register) -> None:
        self._card = card
        self.register = register

    def __getitem__(self, index: int) -> int:
        return self._card.read(self.register.qualified_name, index)

    def __setitem__(self, index: int, value: int) -> None:
        self._card.write(self.register.qualified_name, value, index)

    def __repr__(self) -> str:
        return f"<register {self.register.qualified_name}[{self.register.indexed_by}]>"
