"""open_driver: selection by name and the one clear error for each way it can fail."""

import pytest

from tickwire.drivers import (DRIVERS, CardTimeout, DriverError, DriverUnavailable, driver_class,
                              open_driver)
from tickwire.drivers.base import Driver
from tickwire.host.errors import TickwireError


def test_every_listed_driver_is_a_driver():
    for name in ("sim", "pcie", "rawpacket"):
        cls = driver_class(name)
        assert issubclass(cls, Driver) and cls.name == name
    assert set(DRIVERS) == {"sim", "pcie", "rdma", "rawpacket", "ethmgmt", "dpdk"}


def test_errors_are_tickwire_errors():
    for cls in (DriverError, DriverUnavailable, CardTimeout):
        assert issubclass(cls, TickwireError)


@pytest.mark.parametrize("config, error, message", [
    ({"driver": "ef_vi"}, DriverUnavailable, "no driver 'ef_vi' \\(drivers: sim, pcie, rdma, "
                                             "rawpacket, ethmgmt, dpdk\\)"),
    ({}, DriverError, "no 'driver' key"),
    ("sim", DriverError, "must be a mapping"),
    ({"driver": "pcie", "resource": "/nonexistent/resource0"}, DriverUnavailable,
     "cannot open /nonexistent/resource0"),
    ({"driver": "pcie", "resource": "/x", "timeout": 0}, DriverError,
     "timeout must be a positive number"),
    ({"driver": "sim", "socket": "/nonexistent/card.sock"}, CardTimeout,
     "no simulated card answers at /nonexistent/card.sock"),
    ({"driver": "sim", "port": 1, "timeout": 1}, CardTimeout, "127.0.0.1:1"),
])
def test_one_clear_error(config, error, message):
    with pytest.raises(error, match=message):
        open_driver(config)


def test_a_driver_whose_module_cannot_be_imported(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tickwire.drivers.pcie", None)
    with pytest.raises(DriverUnavailable, match="the pcie driver is not available"):
        open_driver({"driver": "pcie", "resource": "/x"})
