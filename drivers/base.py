"""The one interface every card driver offers: register words, card events, packet I/O.

Like LiteX's ``comm_*`` transports, a driver has two verbs, ``read(address)`` and
``write(address, value)``, on 32-bit words at word addresses
(:class:`tickwire.host.regmap.Transport`);
everything above it (:class:`tickwire.host.card.Card`) is transport-blind. A driver may also
carry the card's event stream (:meth:`Driver.events`) and frames (:meth:`Driver.send_frame`,
:meth:`Driver.receive_frames`); :attr:`Driver.capabilities` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from tickwire.host.errors import TickwireError
from tickwire.protocols.events import Event

__all__ = ["Driver", "Frame", "DriverError", "DriverUnavailable", "CardTimeout",
           "REGISTERS", "EVENTS", "FRAMES", "WORD_MASK", "DEFAULT_TIMEOUT", "config_options",
           "check_word"]

#: Capabilities.
REGISTERS = "registers"
EVENTS = "events"
FRAMES = "frames"
WORD_MASK = 0xFFFF_FFFF
#: Seconds any blocking call waits for the card before :class:`CardTimeout`.
DEFAULT_TIMEOUT = 2.0


class DriverError(TickwireError):
    """A driver failed: bad options, an operation it does not offer, the card misbehaving."""


class DriverUnavailable(DriverError):
    """The driver cannot be used here: unknown name, missing library, no device, no permission."""


class CardTimeout(DriverError):
    """The card (or the process standing in for it) did not answer in time."""


@dataclass(frozen=True)
class Frame:
    """A frame that left (or entered) the card or an interface: ``port`` name, the bytes, and a
    timestamp (core clock cycles for the card, nanoseconds for host interfaces)."""

    port: str
    data: bytes
    timestamp: int = 0


def check_word(address: Any, value: Any | None = None) -> None:
    """:class:`DriverError` unless ``address`` (and ``value``, when given) is a 32-bit word."""
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= WORD_MASK:
        raise DriverError(f"register address {address!r} is not a 32-bit word address")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value <= WORD_MASK):
        raise DriverError(f"value {value!r} written to word 0x{address:x} is not a 32-bit word")


class Driver:
    """Base of the drivers. Subclasses set :attr:`name` and :attr:`capabilities`, implement what
    they offer, and build themselves from a configuration mapping in :meth:`from_config`.

    Every blocking call waits at most :attr:`timeout` seconds, then raises :class:`CardTimeout`.
    Operations a driver does not offer raise :class:`DriverError` saying so.
    """

    name: ClassVar[str] = "driver"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Options :meth:`from_config` accepts besides ``driver`` and ``timeout``.
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout < math.inf:
            raise DriverError(f"{self.name} driver: timeout must be a positive number of "
                              f"seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.closed = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Driver:
        """The driver for ``config`` (its options as keyword arguments)."""
        return cls(**config_options(cls, config))

    # -- registers --------------------------------------------------------------------------------

    def read(self, address: int) -> int:
        """The 32-bit word at word ``address``."""
        raise self._unsupported("register reads")

    def write(self, address: int, value: int) -> None:
        """Write the 32-bit ``value`` to word ``address``."""
        raise self._unsupported("register writes")

    # -- events -----------------------------------------------------------------------------------

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[Event]:
        """The card events written since the last call, waiting up to ``timeout`` seconds for the
        first one (0: do not wait); an empty list when none came."""
        raise self._unsupported("card events")

    def event_ring_registers(self) -> dict[str, int]:
        """What the card must be told about the event ring in host memory, as values of the
        ``event_ring.<name>`` registers (``address``, ``entries``, ``rkey``);
        :class:`tickwire.host.card.Card` writes them on connect. Empty when the transport sets
        the ring up itself (``sim``) or has none."""
        return {}

    # -- frames -----------------------------------------------------------------------------------

    #: Ports :meth:`send_frame` accepts.
    send_ports: tuple[str, ...] = ()

    def send_frame(self, port: str, frame: bytes) -> None:
        """Send ``frame`` (an Ethernet frame without FCS, or a datagram for an injection port)."""
        raise self._unsupported("sending frames")

    def receive_frames(self, timeout: float = 0.0, limit: int | None = None) -> list[Frame]:
        """Frames received since the last call, waiting up to ``timeout`` seconds for the first."""
        raise self._unsupported("receiving frames")

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise DriverError(f"{self.name} driver is closed")

    def _unsupported(self, what: str) -> DriverError:
        offered = ", ".join(sorted(self.capabilities)) or "nothing"
        return DriverError(f"the {self.name} driver does not offer {what} (it offers: {offered})")

    def _check_port(self, port: str) -> None:
        if port not in self.send_ports:
            raise DriverError(f"{self.name} driver: no port {port!r} to send to "
                              f"(ports: {', '.join(self.send_ports) or 'none'})")

    @staticmethod
    def _check_wait(timeout: Any, limit: Any) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 <= timeout < math.inf:
            raise DriverError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise DriverError(f"limit must be a positive integer or None, not {limit!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{' closed' if self.closed else ''}>"


def config_options(cls: type[Driver], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` minus the ``driver`` key, after checking every key is an option of ``cls``."""
    options = {k: v for k, v in config.items() if k != "driver"}
    unknown = sorted(set(options) - {"timeout", *cls.options})
    if unknown:
        raise DriverError(f"{cls.name} driver: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))} (options: "
                          f"{', '.join(('timeout', *cls.options))})")
    return options
