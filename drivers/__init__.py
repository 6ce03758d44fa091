"""Card drivers behind one interface (:class:`tickwire.drivers.base.Driver`), chosen by name.

``open_driver({"driver": "sim", "socket": "/run/tickwire-sim.sock"})`` opens one. The drivers:

``sim``
    a running ``tickwire sim serve`` process (the Verilated appliance) over a local socket;
``pcie``
    MMIO through a PCI BAR resource file in sysfs, event ring in host memory;
``rdma``
    RDMA READ/WRITE over an RC queue pair (pyverbs) into the card's register window;
``rawpacket``
    an AF_PACKET socket with a TPACKET_V3 receive ring, for the host's own packet I/O;
``ethmgmt``
    the card's management protocol (registers, events) over an AF_PACKET socket;
``dpdk``
    the management protocol and the host's packet I/O through DPDK poll-mode drivers.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from .base import (CardTimeout, Driver, DriverError, DriverUnavailable, Frame)

__all__ = ["open_driver", "driver_class", "DRIVERS", "Driver", "Frame", "DriverError",
           "DriverUnavailable", "CardTimeout"]

#: Driver name -> module (in this package) and class.
DRIVERS: Mapping[str, tuple[str, str]] = {
    "sim": ("sim", "SimDriver"),
    "pcie": ("pcie", "PcieDriver"),
    "rdma": ("rdma", "RdmaDriver"),
    "rawpacket": ("rawpacket", "RawPacketDriver"),
    "ethmgmt": ("ethmgmt", "EthManagementDriver"),
    "dpdk": ("dpdk", "DpdkDriver"),
}


def driver_class(name: Any) -> type[Driver]:
    """The class of driver ``name``; :class:`DriverUnavailable` for an unknown name or a driver
    whose module cannot be imported here (say, pyverbs missing for ``rdma``)."""
    if name not in DRIVERS:
        raise DriverUnavailable(f"no driver {name!r} (drivers: {', '.join(DRIVERS)})")
    module_name, class_name = DRIVERS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as e:
        raise DriverUnavailable(f"the {name} driver is not available: {e}") from None
    return getattr(module, class_name)


def open_driver(config: Mapping[str, Any]) -> Driver:
    """Open the driver ``config["driver"]`` with the rest of ``config`` as its options.

    Raises one :class:`DriverError`: :class:`DriverUnavailable` when the driver cannot run here,
    :class:`CardTimeout` when the card does not answer, :class:`DriverError` for bad options.
    """
    if not isinstance(config, Mapping):
        raise DriverError(f"driver configuration must be a mapping, not {type(config).__name__}")
    if "driver" not in config:
        raise DriverError(f"driver configuration has no 'driver' key (one of "
                          f"{', '.join(DRIVERS)})")
    cls = driver_class(config["driver"])
    try:
        return cls.from_config(config)
    except TypeError as e:  # a missing required option
        raise DriverError(f"{config['driver']} driver: {e}") from None
