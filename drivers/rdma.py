"""``rdma`` driver: a card reached over RoCE, its registers by RDMA READ and WRITE (pyverbs).

The card publishes its register window as a remote memory region (``window_address``,
``window_rkey``, ``window_bytes``: from the card's configuration); word ``n`` is at
``window_address + 4 * n``, little-endian. The driver connects an RC queue pair to the card with
RDMA CM (``address``, ``port``), reads a word with one 4-byte RDMA READ and writes one with one
4-byte RDMA WRITE, polling the completion queue until ``timeout``.

The event ring is host memory registered for remote writes (``ring_address``, ``ring_rkey``: the
card writes records and the producer index there with RDMA WRITE, as a PCIe card does by DMA);
the host reads it locally like the ``pcie`` driver does.

pyverbs comes from rdma-core (Debian ``python3-pyverbs``, made importable in the virtual
environment by ``make rdma``); without it, or without an RDMA device, the driver is unavailable
and says why.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from tickwire.protocols import events as ev

from .base import (EVENTS, REGISTERS, CardTimeout, Driver, DriverError, DriverUnavailable,
                   check_word, DEFAULT_TIMEOUT)
from .ring import RingReader, init_ring

__all__ = ["RdmaDriver", "RegisterWindow", "list_devices", "import_pyverbs", "DEFAULT_PORT"]

logger = logging.getLogger(__name__)

#: RDMA CM port of the card's register endpoint.
DEFAULT_PORT = 7471
_WORD = struct.Struct("<I")


def import_pyverbs() -> Any:
    """The ``pyverbs`` modules the driver uses, or :class:`DriverUnavailable` saying how to get
    them."""
    try:
        import pyverbs.cmid
        import pyverbs.cq
        import pyverbs.device
        import pyverbs.enums
        import pyverbs.mr
        import pyverbs.pd
        import pyverbs.qp
        import pyverbs.wr
    except ImportError as e:
        raise DriverUnavailable(f"rdma driver: pyverbs is not importable ({e}); install "
                                f"rdma-core's python3-pyverbs and run 'make rdma'") from None
    return pyverbs


def list_devices() -> list[str]:
    """Names of the RDMA devices pyverbs' device list finds; :class:`DriverUnavailable` when it
    finds none (the message says what the list said)."""
    pyverbs = import_pyverbs()
    try:
        devices = pyverbs.device.get_device_list()
    except pyverbs.pyverbs_error.PyverbsError as e:
        raise DriverUnavailable(f"rdma driver: no RDMA device found by pyverbs' device list "
                                f"({e}): this host has no RDMA NIC or soft-RoCE device") from None
    names = [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices]
    if not names:
        raise DriverUnavailable("rdma driver: no RDMA device found by pyverbs' device list "
                                "(it is empty): this host has no RDMA NIC or soft-RoCE device")
    return names


@dataclass(frozen=True)
class RegisterWindow:
    """The card's register window as a remote memory region."""

    address: int
    rkey: int
    size: int

    def __post_init__(self) -> None:
        for name, value, limit in (("window_address", self.address, 1 << 64),
                                   ("window_rkey", self.rkey, 1 << 32),
                                   ("window_bytes", self.size, 1 << 32)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
                raise DriverError(f"rdma driver: {name} {value!r} is out of range")
        if self.address % 4 or self.size % 4 or self.size == 0:
            raise DriverError(f"rdma driver: the register window must be whole 32-bit words, "
                              f"not {self.size} bytes at 0x{self.address:x}")
        if self.address + self.size > 1 << 64:
            raise DriverError("rdma driver: the register window wraps the 64-bit address space")

    @property
    def words(self) -> int:
        return self.size // 4

    def remote_address(self, word: int) -> int:
        """Where word address ``word`` is in the card's memory."""
        check_word(word)
        if word >= self.words:
            raise DriverError(f"rdma driver: word 0x{word:x} is beyond the {self.size}-byte "
                              f"register window")
        return self.address + 4 * word

    @staticmethod
    def pack(value: int) -> bytes:
        return _WORD.pack(value)

    @staticmethod
    def unpack(data: bytes) -> int:
        return _WORD.unpack(data[:4])[0]


class RdmaDriver(Driver):
    """A card at RDMA CM ``address``:``port`` with its register window at ``window_address``
    (``window_rkey``, ``window_bytes``)."""

    name = "rdma"
    capabilities = frozenset({REGISTERS, EVENTS})
    options = ("address", "port", "device", "window_address", "window_rkey", "window_bytes",
               "ring_entries")

    def __init__(self, address: str, port: int = DEFAULT_PORT, *, window_address: int,
                 window_rkey: int, window_bytes: int, device: str | None = None,
                 ring_entries: int = 4096, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self.window = RegisterWindow(window_address, window_rkey, window_bytes)
        try:
            self._ring_bytes = ev.ring_bytes(ring_entries)
            self._ring_entries = ring_entries
        except ev.EventError as e:
            raise DriverError(f"rdma driver: {e}") from None
        self.where = f"{address}:{port}"
        self._pv = import_pyverbs()
        devices = list_devices()
        if device is not None and device not in devices:
            raise DriverUnavailable(f"rdma driver: no RDMA device {device!r} (devices: "
                                    f"{', '.join(devices)})")
        self._lock = threading.Lock()
        self._resources: list[Any] = []
        self._ring_map: mmap.mmap | None = None
        self._ring: RingReader | None = None
        self._ring_anchor: Any = None
        try:
            self._connect(address, port)
            self._setup_memory()
        except BaseException:
            self.close()
            raise

    def _connect(self, address: str, port: int) -> None:
        pv = self._pv
        e = pv.enums
        result: dict[str, Any] = {}

        def connect() -> None:
            try:
                info = pv.cmid.AddrInfo(dst=address, dst_service=str(port),
                                        port_space=e.RDMA_PS_TCP)
                cmid = pv.cmid.CMID(creator=info)
                pd = pv.pd.PD(cmid)
                cq = pv.cq.CQ(cmid.context, 16)
                cap = pv.qp.QPCap(max_send_wr=16, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
                cmid.create_qp(pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
                cmid.connect(pv.cmid.ConnParam(resources=1, depth=1))
                result.update(cmid=cmid, pd=pd, cq=cq)
            except Exception as exc:  # reported below, in the caller's thread
                result["error"] = exc

        thread = threading.Thread(target=connect, name="rdma-connect", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise CardTimeout(f"rdma driver: the card at {self.where} did not accept a "
                              f"connection in {self.timeout:g} s")
        if "error" in result:
            raise CardTimeout(f"rdma driver: cannot connect to the card at {self.where}: "
                              f"{result['error']}")
        self._cmid, self._pd, self._cq = result["cmid"], result["pd"], result["cq"]
        self._resources += [self._cmid, self._cq, self._pd]

    def _setup_memory(self) -> None:
        pv, e = self._pv, self._pv.enums
        self._word = pv.mr.MR(self._pd, 8, e.IBV_ACCESS_LOCAL_WRITE)
        self._ring_map = mmap.mmap(-1, self._ring_bytes)
        init_ring(self._ring_map, self._ring_entries)
        self._ring_anchor = ctypes.c_char.from_buffer(self._ring_map)  # released in close()
        address = ctypes.addressof(self._ring_anchor)
        self._ring_mr = pv.mr.MR(self._pd, self._ring_bytes,
                                 e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE,
                                 address=address)
        self._resources[:0] = [self._ring_mr, self._word]
        self._ring = RingReader(self._ring_map)
        #: Where the card writes events: program these into the card (event ring registers).
        self.ring_address, self.ring_rkey = address, self._ring_mr.rkey

    def event_ring_registers(self) -> dict[str, int]:
        return {"address": self.ring_address, "rkey": self.ring_rkey,
                "entries": self._ring_entries}

    # -- registers --------------------------------------------------------------------------------

    def _post(self, opcode: int, word: int) -> None:
        pv = self._pv
        remote = self.window.remote_address(word)
        sge = pv.wr.SGE(self._word.buf, 4, self._word.lkey)
        wr = pv.wr.SendWR(opcode=opcode, num_sge=1, sg=[sge],
                          send_flags=pv.enums.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(self.window.rkey, remote)
        self._cmid.qp.post_send(wr)
        deadline = time.monotonic() + self.timeout
        while True:  # bounded by the timeout
            count, completions = self._cq.poll()
            if count:
                status = completions[0].status
                if status != pv.enums.IBV_WC_SUCCESS:
                    raise DriverError(f"rdma driver: {'read' if opcode else 'write'} of word "
                                      f"0x{word:x} failed: completion status {status}")
                return
            if time.monotonic() > deadline:
                self.closed = True  # the queue pair is in an unknown state now
                raise CardTimeout(f"rdma driver: the card at {self.where} did not complete an "
                                  f"RDMA operation in {self.timeout:g} s")

    def read(self, address: int) -> int:
        self._check_open()
        with self._lock:
            self._post(self._pv.enums.IBV_WR_RDMA_READ, address)
            return RegisterWindow.unpack(self._word.read(4, 0))

    def write(self, address: int, value: int) -> None:
        self._check_open()
        check_word(address, value)
        with self._lock:
            self._word.write(RegisterWindow.pack(value), 4)
            self._post(self._pv.enums.IBV_WR_RDMA_WRITE, address)

    # -- events -----------------------------------------------------------------------------------

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[ev.Event]:
        self._check_wait(timeout, limit)
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            out = self._ring.poll(limit)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.0005)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.release()
            self._ring = None
        for resource in self._resources:
            try:
                resource.close()
            except Exception as e:  # closing must go on with the rest
                logger.debug("rdma: closing %r: %s", resource, e)
        self._resources = []
        self._ring_anchor = None
        if self._ring_map is not None:
            self._ring_map.close()
            self._ring_map = None
        super().close()
