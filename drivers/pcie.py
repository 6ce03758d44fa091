"""``pcie`` driver: MMIO through a PCI BAR resource file in sysfs, the event ring in host memory.

Registers are 32-bit words of BAR ``bar`` (word address = byte offset / 4), mapped from
``/sys/bus/pci/devices/<BDF>/resource<bar>`` and accessed through a ``memoryview`` cast to 32-bit
words, so each access is one aligned 32-bit load or store (as LiteX's ``comm_pcie`` does with
its BAR). A read that returns all ones where the card's identity word (word 0, ``id.magic``) also
reads all ones means the card is gone (link down, reset): that raises :class:`CardTimeout`.

The event ring is a file mapped shared (``ring_path``; by default a fresh file in ``/dev/shm``),
standing in for the DMA buffer the card writes: with a real card it must be memory the card can
reach (a udmabuf or hugepage buffer, or an IOMMU mapping through VFIO) whose bus address the host
programs into the card (``ring_bus_address``).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import tempfile
import time

from tickwire.protocols import events as ev

from .base import (EVENTS, REGISTERS, CardTimeout, Driver, DriverError, DriverUnavailable,
                   check_word, DEFAULT_TIMEOUT)
from .ring import RingReader, init_ring

__all__ = ["PcieDriver", "resource_path", "SYSFS_PCI_DEVICES"]

logger = logging.getLogger(__name__)

SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"
_BDF = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\Z")
_ALL_ONES = 0xFFFF_FFFF


def resource_path(bdf: str, bar: int = 0) -> str:
    """The sysfs resource file of BAR ``bar`` of PCI function ``bdf`` ("0000:01:00.0")."""
    if not isinstance(bdf, str) or not _BDF.match(bdf):
        raise DriverError(f"pcie driver: {bdf!r} is not a PCI address like 0000:01:00.0")
    if isinstance(bar, bool) or not isinstance(bar, int) or not 0 <= bar <= 5:
        raise DriverError(f"pcie driver: BAR must be 0..5, not {bar!r}")
    return os.path.join(SYSFS_PCI_DEVICES, bdf.lower(), f"resource{bar}")


class PcieDriver(Driver):
    """A card on PCIe function ``bdf`` (or any file standing in for its BAR: ``resource``)."""

    name = "pcie"
    capabilities = frozenset({REGISTERS, EVENTS})
    options = ("bdf", "bar", "resource", "ring_path", "ring_entries", "ring_bus_address")

    def __init__(self, bdf: str | None = None, bar: int = 0, *, resource: str | None = None,
                 ring_path: str | None = None, ring_entries: int = 4096,
                 ring_bus_address: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        if (bdf is None) == (resource is None):
            raise DriverError("pcie driver: give the card's PCI address 'bdf' or a BAR "
                              "'resource' file, not both or neither")
        path = resource if resource is not None else resource_path(bdf, bar)
        self.resource = path
        self.ring_bus_address = ring_bus_address
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._ring_map: mmap.mmap | None = None
        self._ring: RingReader | None = None
        self._own_ring_file: str | None = None
        self._open_bar(path, bdf)
        try:
            self._open_ring(ring_path, ring_entries)
        except BaseException:
            self.close()
            raise

    def _open_bar(self, path: str, bdf: str | None) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_SYNC)
        except FileNotFoundError:
            hint = (f"no PCI function {bdf} with that BAR (see lspci -D)" if bdf
                    else "no such file")
            raise DriverUnavailable(f"pcie driver: cannot open {path}: {hint}") from None
        except PermissionError:
            raise DriverUnavailable(f"pcie driver: no permission to map {path} (run as root, "
                                    f"or give the user access to the resource file)") from None
        try:
            size = os.fstat(fd).st_size
            if size < 4:
                raise DriverUnavailable(f"pcie driver: {path} is {size} bytes: no BAR to map")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise DriverUnavailable(f"pcie driver: cannot map {path}: {e}") from None
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("I")
        logger.info("pcie: mapped %s, %d bytes", path, size)

    def _open_ring(self, ring_path: str | None, entries: int) -> None:
        try:
            size = ev.ring_bytes(entries)
        except ev.EventError as e:
            raise DriverError(f"pcie driver: {e}") from None
        if ring_path is None:
            directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, ring_path = tempfile.mkstemp(prefix="tickwire-events-", suffix=".ring",
                                             dir=directory)
            self._own_ring_file = ring_path
        else:
            fd = os.open(ring_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._ring_map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.ring_path = ring_path
        init_ring(self._ring_map, entries)
        self._ring = RingReader(self._ring_map)

    def event_ring_registers(self) -> dict[str, int]:
        if self.ring_bus_address is None:
            return {}
        return {"address": self.ring_bus_address, "entries": self._ring.entries}

    @property
    def words(self) -> int:
        """32-bit words in the BAR."""
        return len(self._words) if self._words is not None else 0

    def read(self, address: int) -> int:
        self._check_open()
        check_word(address)
        if address >= len(self._words):
            raise DriverError(f"pcie driver: word 0x{address:x} is beyond the "
                              f"{len(self._words) * 4}-byte BAR")
        value = self._words[address]
        if value == _ALL_ONES and (address == 0 or self._words[0] == _ALL_ONES):
            raise CardTimeout(f"the card at {self.resource} does not answer: reads return "
                              f"0xffffffff (link down, card in reset, or bitstream not loaded)")
        return value

    def write(self, address: int, value: int) -> None:
        self._check_open()
        check_word(address, value)
        if address >= len(self._words):
            raise DriverError(f"pcie driver: word 0x{address:x} is beyond the "
                              f"{len(self._words) * 4}-byte BAR")
        self._words[address] = value

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[ev.Event]:
        self._check_wait(timeout, limit)
        self._check_open()
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while True:
            out = self._ring.poll(limit)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.005)

    def close(self) -> None:
        for view in (self._ring, self._words):
            if view is not None:
                view.release()
        self._ring = self._words = None
        for m in (self._ring_map, self._map):
            if m is not None:
                m.close()
        self._ring_map = self._map = None
        if self._own_ring_file is not None:
            try:
                os.unlink(self._own_ring_file)
            except FileNotFoundError:
                pass
            self._own_ring_file = None
        super().close()

    def __repr__(self) -> str:
        return f"<PcieDriver {self.resource}{' closed' if self.closed else ''}>"
