"""``dpdk`` driver: the card's management channel and the host's own packet I/O through DPDK.

The kernel-bypass path: DPDK's Environment Abstraction Layer (EAL) takes a port (a NIC by its PCI
address, or a virtual device such as ``net_af_packet`` on a kernel interface, ``net_tap``), and a
poll loop of our own C shim (``drivers/dpdk_shim/tw_dpdk.c``, built on first use against
Debian's ``libdpdk-dev`` 22.11 and loaded with ctypes) busy-polls it on its own lcore:
``rte_eth_rx_burst`` into a receive ring, a transmit ring into ``rte_eth_tx_burst``. The rings
are single-producer / single-consumer rings in memory this process maps and the loop shares; the
host reads and writes them directly (no call into C, no syscall per frame).

Frames of EtherType 0x88B5 addressed to this host are the card's management protocol
(:mod:`tickwire.protocols.management`, run by :class:`tickwire.drivers.ethmgmt.ManagementClient`:
register reads and writes with retries, event frames); every other frame received is the host's
(:meth:`DpdkDriver.receive_frames`: MoldUDP64 retransmission answers, drop copy), and
:meth:`DpdkDriver.send_frame` sends the host's own (retransmission requests).

Ring layout (both directions; the C shim's header comment says the same)::

    offset  size  field
    0       8     producer    frames written since set-up
    64      8     consumer    frames read since set-up
    128     4     slots       a power of two
    132     4     slot_bytes  bytes per slot, its 16-byte header included
    136     8     dropped     frames the producer could not store (ring full, too long)
    256     slots * slot_bytes: u32 length, u32 reserved, u64 timestamp (ns), the frame

DPDK initialises its EAL once per process: one ``dpdk`` driver per process (tests run each in a
subprocess). Needs root (or the capabilities DPDK asks for); where the library, the compiler or
the permissions are missing the driver raises :class:`DriverUnavailable` saying which.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..protocols.events import Event
from ..protocols.management import MANAGEMENT_ETHERTYPE, READ, WRITE
from ..protocols.net import MIN_FRAME_LENGTH, int_to_mac
from .base import (DEFAULT_TIMEOUT, EVENTS, FRAMES, REGISTERS, Driver, DriverError,
                   DriverUnavailable, Frame)
from .ethmgmt import DEFAULT_RETRY_INTERVAL, ManagementClient, interface_mac, parse_mac

__all__ = ["DpdkDriver", "build_shim", "dpdk_available", "eal_arguments", "FrameRing",
           "SHIM_SOURCE", "call_in_process"]

logger = logging.getLogger(__name__)

SHIM_SOURCE = Path(__file__).resolve().parent / "dpdk_shim" / "tw_dpdk.c"
_PRODUCER, _CONSUMER, _SLOTS, _SLOT_BYTES, _DROPPED, _HEADER = 0, 64, 128, 132, 136, 256
_SLOT_HEADER = struct.Struct("<IIQ")
_MANAGEMENT = MANAGEMENT_ETHERTYPE.to_bytes(2, "big")
#: Frames received that are not management frames, kept for receive_frames.
_FRAME_BACKLOG = 1 << 16


# -- the shim -------------------------------------------------------------------------------------

def _pkg_config(*args: str) -> str:
    try:
        done = subprocess.run(["pkg-config", *args, "libdpdk"], capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        raise DriverUnavailable("dpdk driver: no pkg-config; install DPDK with "
                                "'make dpdk' (apt-get install dpdk libdpdk-dev)") from None
    if done.returncode != 0:
        raise DriverUnavailable("dpdk driver: DPDK's development files are not installed "
                                "(pkg-config libdpdk failed); install them with 'make dpdk' "
                                "(apt-get install dpdk libdpdk-dev)")
    return done.stdout.strip()


def dpdk_available() -> str | None:
    """None when the shim can be built here, else why not (for tests that skip)."""
    try:
        _pkg_config("--modversion")
    except DriverUnavailable as e:
        return str(e)
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "dpdk driver: no C compiler (cc) to build the shim"
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tickwire" / "dpdk"


def build_shim() -> Path:
    """The shim's shared library, compiled unless a build of the same source against the same
    DPDK exists in the cache (``~/.cache/tickwire/dpdk``)."""
    version = _pkg_config("--modversion")
    cflags, libs = _pkg_config("--cflags").split(), _pkg_config("--libs").split()
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(SHIM_SOURCE.read_bytes() + " ".join([version, compiler, *cflags, *libs])
                         .encode()).hexdigest()[:16]
    root = _cache_root()
    library = root / f"libtw_dpdk-{key}.so"
    if library.exists():
        return library
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # one build at a time across processes
        if library.exists():
            return library
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        command = [compiler, "-O2", "-fPIC", "-shared", "-Wall", *cflags, str(SHIM_SOURCE), "-o",
                   str(partial), *libs, "-lpthread"]
        logger.info("dpdk: building the shim against DPDK %s: %s", version, " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            raise DriverUnavailable(f"dpdk driver: no C compiler {compiler!r} to build the shim") from None
        if done.returncode != 0:
            raise DriverUnavailable(f"dpdk driver: building the shim failed:\n{done.stderr[-2000:]}")
        partial.replace(library)
    return library


def _load_shim() -> ctypes.CDLL:
    library = ctypes.CDLL(str(build_shim()), mode=ctypes.RTLD_GLOBAL)
    library.tw_error.restype = ctypes.c_char_p
    library.tw_eal_init.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    library.tw_port_open.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_char_p]
    library.tw_start.argtypes = [ctypes.c_uint16, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.c_uint]
    library.tw_stop.argtypes = [ctypes.c_uint16]
    library.tw_stop.restype = None
    library.tw_stats.argtypes = [ctypes.c_uint16, ctypes.POINTER(ctypes.c_uint64)]
    library.tw_stats.restype = None
    return library


# -- the rings ------------------------------------------------------------------------------------

class FrameRing:
    """One ring of frames in anonymous shared memory (layout in the module docstring)."""

    def __init__(self, slots: int, slot_bytes: int = 2048) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 2 or slots & (slots - 1):
            raise DriverError(f"dpdk driver: ring slots must be a power of two of at least 2, "
                              f"not {slots!r}")
        self.slots, self.slot_bytes = slots, slot_bytes
        self.mtu = slot_bytes - _SLOT_HEADER.size
        self._map = mmap.mmap(-1, _HEADER + slots * slot_bytes)
        struct.pack_into("<II", self._map, _SLOTS, slots, slot_bytes)
        self._view = memoryview(self._map)
        self._c_buffer = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(self._c_buffer)
        # The indices as aligned 64-bit words, read and written whole by ctypes (one load, one
        # store): struct's "<Q" goes byte by byte, and the poll loop would see a torn index.
        self._indices = {offset: ctypes.c_uint64.from_buffer(self._map, offset)
                         for offset in (_PRODUCER, _CONSUMER, _DROPPED)}
        # Our own index, cached: only this side writes it.
        self.consumer = self.producer = 0

    def _index(self, offset: int) -> int:
        return self._indices[offset].value

    def _publish(self, offset: int, value: int) -> None:
        self._indices[offset].value = value

    @property
    def dropped(self) -> int:
        return self._index(_DROPPED)

    # consumer side (the receive ring)
    def pending(self) -> int:
        return self._index(_PRODUCER) - self.consumer

    def take(self, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` frames and their timestamps; then publishes the consumer index."""
        available = min(self._index(_PRODUCER) - self.consumer, limit)
        out = []
        view, mask, size = self._view, self.slots - 1, self.slot_bytes
        for index in range(self.consumer, self.consumer + available):
            base = _HEADER + (index & mask) * size
            length, _, stamp = _SLOT_HEADER.unpack_from(view, base)
            start = base + _SLOT_HEADER.size
            out.append((bytes(view[start:start + length]), stamp))
        if available:
            self.consumer += available
            self._publish(_CONSUMER, self.consumer)
        return out

    # producer side (the transmit ring)
    def space(self) -> int:
        return self.slots - (self.producer - self._index(_CONSUMER))

    def put(self, frames: Sequence[bytes]) -> int:
        """Stores as many of ``frames`` as fit, then publishes the producer index; how many."""
        consumer = self._index(_CONSUMER)
        if consumer > self.producer:
            raise DriverError(f"dpdk driver: transmit ring consumer {consumer} is ahead of the "
                              f"producer {self.producer}")
        count = min(len(frames), self.space())
        view, mask, size = self._view, self.slots - 1, self.slot_bytes
        for k in range(count):
            frame = frames[k]
            base = _HEADER + ((self.producer + k) & mask) * size
            _SLOT_HEADER.pack_into(view, base, len(frame), 0, 0)
            view[base + _SLOT_HEADER.size:base + _SLOT_HEADER.size + len(frame)] = frame
        if count:
            self.producer += count
            self._publish(_PRODUCER, self.producer)
        return count

    def close(self) -> None:
        # The mapping stays: the poll loop may have been stopped but DPDK cannot be unloaded,
        # and ctypes keeps a buffer export on it.
        self._view.release()


# -- EAL arguments --------------------------------------------------------------------------------

def _hugepages_free() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def eal_arguments(*, port: str, vdev: str | None, pci: str | None, lcores: Sequence[int],
                  huge: bool | None, memory_mb: int, extra: Sequence[str] = ()) -> list[str]:
    """The EAL command line for one port (``vdev`` or ``pci``), its lcores and memory."""
    args = ["tickwire", "-l", ",".join(str(c) for c in lcores), "--main-lcore", str(lcores[0]),
            f"--file-prefix=tickwire{os.getpid()}", "--no-telemetry",
            "--log-level=lib.eal:error", "--log-level=pmd.net.af_packet:warning",
            "-m", str(memory_mb)]
    if huge is None:
        huge = _hugepages_free() > 0
    # --in-memory (no files in /dev/hugepages or /var/run/dpdk) does not combine with --no-huge,
    # which is legacy memory and needs --no-shconf for the same.
    args += ["--in-memory"] if huge else ["--no-huge", "--no-shconf"]
    if pci is not None:
        args += ["-a", pci]
    else:
        args += ["--no-pci", f"--vdev={vdev}"]
    return [*args, *extra]


def _default_lcores() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2]


# -- the driver -----------------------------------------------------------------------------------

class DpdkDriver(Driver):
    """The card behind DPDK port ``interface`` (a kernel interface, through the
    ``net_af_packet`` virtual device), ``pci`` (a NIC's PCI address) or ``vdev`` (any virtual
    device, e.g. ``net_tap0,iface=tw0``).

    Options: ``card_mac`` (the card's management MAC address; without it the driver offers
    frames only), ``source_mac`` (default: the port's), ``lcores`` (``[main, poll]``; default
    the first two CPUs this process may use; one lcore: the poll loop runs in a thread),
    ``huge`` (hugepages: default when some are free), ``memory_mb``, ``mbufs``,
    ``rx_slots``/``tx_slots`` (ring sizes), ``idle_us`` (after 1024 empty polls the loop sleeps
    this long; 0, the default, polls without a break), ``spin_us`` (how long a waiting host call
    spins on the ring before it sleeps in 50 us steps), ``retry_interval``, ``eal_args`` (more
    EAL arguments).
    """

    name = "dpdk"
    capabilities = frozenset({REGISTERS, EVENTS, FRAMES})
    options = ("interface", "pci", "vdev", "card_mac", "source_mac", "lcores", "huge",
               "memory_mb", "mbufs", "rx_slots", "tx_slots", "idle_us", "spin_us",
               "retry_interval", "eal_args")
    #: The EAL arguments of this process's one initialisation (DPDK cannot initialise twice).
    _eal: ClassVar[list[str] | None] = None
    _shim: ClassVar[ctypes.CDLL | None] = None

    def __init__(self, interface: str | None = None, *, pci: str | None = None,
                 vdev: str | None = None, card_mac: str | bytes | int | None = None,
                 source_mac: str | bytes | int | None = None,
                 lcores: Sequence[int] | int | None = None, huge: bool | None = None,
                 memory_mb: int = 256, mbufs: int = 8191, rx_slots: int = 8192,
                 tx_slots: int = 2048, idle_us: int = 0, spin_us: int = 200,
                 retry_interval: float = DEFAULT_RETRY_INTERVAL,
                 eal_args: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self._started = False
        self._port_id = -1
        label = "dpdk driver"
        if sum(x is not None for x in (interface, pci, vdev)) != 1:
            raise DriverError(f"{label}: give one of 'interface' (a kernel interface, through "
                              f"net_af_packet), 'pci' (a NIC's PCI address) or 'vdev'")
        if interface is not None:
            if not isinstance(interface, str) or not interface or "," in interface:
                raise DriverError(f"{label}: interface must be an interface name, not {interface!r}")
            vdev = f"net_af_packet0,iface={interface},qpairs=1"
        port = pci if pci is not None else str(vdev).split(",")[0]
        self.port_name = port
        self.interface = interface or port
        self.send_ports = (self.interface,)
        lcore_list = ([lcores] if isinstance(lcores, int) and not isinstance(lcores, bool)
                      else list(lcores) if lcores is not None else _default_lcores())
        if not 1 <= len(lcore_list) <= 2 or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in lcore_list):
            raise DriverError(f"{label}: lcores must be [main] or [main, poll] CPU numbers, "
                              f"not {lcores!r}")
        for name, value, low in (("memory_mb", memory_mb, 16), ("mbufs", mbufs, 512),
                                 ("idle_us", idle_us, 0), ("spin_us", spin_us, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DriverError(f"{label}: {name} must be an integer of at least {low}, "
                                  f"not {value!r}")
        self.spin = spin_us / 1e6
        self.card_mac = None if card_mac is None else parse_mac(card_mac, "card_mac", label)
        source = None if source_mac is None else parse_mac(source_mac, "source_mac", label)
        self._rx = FrameRing(rx_slots)
        self._tx = FrameRing(tx_slots)
        self._management: list[bytes] = []
        self._frames: list[Frame] = []
        args = eal_arguments(port=port, vdev=vdev, pci=pci, lcores=lcore_list, huge=huge,
                             memory_mb=memory_mb, extra=list(eal_args))
        shim = self._init_eal(args)
        self._shim = shim
        mac = ctypes.create_string_buffer(6)
        port_id = shim.tw_port_open(port.encode(), mbufs, 1024, mac)
        if port_id < 0:
            raise DriverUnavailable(f"{label}: {shim.tw_error().decode()}")
        self._port_id = port_id
        self.port_mac = mac.raw
        poll_lcore = lcore_list[1] if len(lcore_list) == 2 else -1
        if shim.tw_start(port_id, self._rx.address, self._tx.address, poll_lcore, idle_us) != 0:
            raise DriverError(f"{label}: {shim.tw_error().decode()}")
        self._started = True
        self.source_mac = source or self.port_mac
        if self.source_mac == bytes(6) and interface is not None:
            self.source_mac = interface_mac(interface, label)
        self.client: ManagementClient | None = None
        if self.card_mac is not None:
            self.client = ManagementClient(
                self._transmit, self._receive_management, card_mac=self.card_mac,
                source_mac=self.source_mac, label=f"dpdk {self.interface}", timeout=timeout,
                retry_interval=retry_interval)
        logger.info("dpdk: port %s (%s) MAC %s, poll loop on %s, EAL %s", port, port_id,
                    int_to_mac(int.from_bytes(self.source_mac, "big")),
                    f"lcore {poll_lcore}" if poll_lcore >= 0 else "a thread", " ".join(args))

    @classmethod
    def _init_eal(cls, args: list[str]) -> ctypes.CDLL:
        if cls._eal is not None:
            raise DriverUnavailable(f"dpdk driver: DPDK's EAL is initialised once per process and "
                                    f"this one already did ({' '.join(cls._eal)}): open one dpdk "
                                    f"driver per process")
        if os.geteuid() != 0:
            raise DriverUnavailable("dpdk driver: DPDK needs root here (memory, AF_PACKET, lcores)")
        shim = cls._shim or _load_shim()
        cls._shim = shim
        affinity = os.sched_getaffinity(0)
        argv = (ctypes.c_char_p * len(args))(*[a.encode() for a in args])
        ret = shim.tw_eal_init(len(args), argv)
        os.sched_setaffinity(0, affinity)   # EAL pins this thread to the main lcore: undo
        if ret < 0:
            raise DriverUnavailable(f"dpdk driver: {shim.tw_error().decode()} (EAL arguments: "
                                    f"{' '.join(args)})")
        cls._eal = args
        return shim

    # -- the rings --------------------------------------------------------------------------------

    def _pump(self) -> int:
        """Frames from the receive ring, sorted: management frames to us, and the rest."""
        taken = self._rx.take(1 << 16)
        for data, stamp in taken:
            if data[12:14] == _MANAGEMENT and self.client is not None:
                self._management.append(data)
            else:
                self._frames.append(Frame(self.interface, data, stamp))
        if len(self._frames) > _FRAME_BACKLOG:
            dropped = len(self._frames) - _FRAME_BACKLOG
            del self._frames[:dropped]
            logger.warning("dpdk %s: %d received frames dropped: receive_frames is not called "
                           "often enough", self.interface, dropped)
        return len(taken)

    def _wait(self, ready: Any, timeout: float) -> None:
        """Pump until ``ready()`` or ``timeout`` seconds: spin first, then sleep in 50 us steps."""
        start = time.monotonic()
        while True:
            self._pump()
            if ready():
                return
            elapsed = time.monotonic() - start
            if elapsed >= timeout:
                return
            if elapsed >= self.spin:
                time.sleep(min(5e-5, timeout - elapsed))

    def _receive_management(self, timeout: float) -> list[bytes]:
        self._wait(lambda: self._management, timeout)
        out, self._management = self._management, []
        return out

    def _transmit(self, frame: bytes) -> None:
        if len(frame) > self._tx.mtu:
            raise DriverError(f"dpdk driver: a frame of {len(frame)} bytes does not fit a ring "
                              f"slot ({self._tx.mtu})")
        frame = bytes(frame).ljust(MIN_FRAME_LENGTH, b"\0")
        deadline = time.monotonic() + self.timeout
        while not self._tx.put([frame]):
            if time.monotonic() > deadline:
                raise DriverError(f"dpdk driver: the transmit ring stayed full for "
                                  f"{self.timeout:g} s (is the poll loop running?)")
            time.sleep(1e-5)

    # -- registers and events ---------------------------------------------------------------------

    def _management_client(self) -> ManagementClient:
        self._check_open()
        if self.client is None:
            raise DriverError("dpdk driver: no card_mac configured: this port carries frames "
                              "only (set card_mac for registers and events)")
        return self.client

    def read(self, address: int) -> int:
        return self._management_client().access(READ, address, 0)

    def write(self, address: int, value: int) -> None:
        self._management_client().access(WRITE, address, value)

    def events(self, timeout: float = 0.0, limit: int | None = None) -> list[Event]:
        self._check_wait(timeout, limit)
        return self._management_client().events(timeout, limit)

    # -- frames -----------------------------------------------------------------------------------

    def send_frame(self, port: str, frame: bytes) -> None:
        self._check_open()
        self._check_port(port)
        if not isinstance(frame, (bytes, bytearray, memoryview)) or len(frame) < 14:
            raise DriverError(f"dpdk driver: a frame is an Ethernet frame of at least 14 bytes "
                              f"(no FCS), not {frame!r:.60}")
        self._transmit(bytes(frame))

    def send_frames(self, port: str, frames: Sequence[bytes]) -> int:
        """Queue many frames at once (as many as the transmit ring takes); how many it took."""
        self._check_open()
        self._check_port(port)
        return self._tx.put([bytes(f).ljust(MIN_FRAME_LENGTH, b"\0") for f in frames])

    def receive_frames(self, timeout: float = 0.0, limit: int | None = None) -> list[Frame]:
        self._check_wait(timeout, limit)
        self._check_open()
        self._wait(lambda: self._frames, timeout)
        count = len(self._frames) if limit is None else min(limit, len(self._frames))
        out, self._frames = self._frames[:count], self._frames[count:]
        return out

    def stats(self) -> dict[str, int]:
        """The poll loop's counters and the port's."""
        values = (ctypes.c_uint64 * 9)()
        if self._shim is not None and self._port_id >= 0:
            self._shim.tw_stats(self._port_id, values)
        names = ("rx", "tx", "tx_failed", "polls", "idle_sleeps", "port_ipackets",
                 "port_opackets", "port_imissed", "tx_index_errors")
        return {**dict(zip(names, values)), "rx_ring_dropped": self._rx.dropped,
                "tx_ring_dropped": self._tx.dropped}

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_started", False):
            self._shim.tw_stop(self._port_id)
            self._started = False
        super().close()

    def __repr__(self) -> str:
        return f"<DpdkDriver {getattr(self, 'port_name', '?')}{' closed' if self.closed else ''}>"


# -- one EAL per process ---------------------------------------------------------------------------

def _call_child(function: Any, netns: str | None, options: dict[str, Any], args: tuple,
                results: Any) -> None:
    import traceback
    try:
        if netns is not None:
            from tickwire.sim.netns import inside
            with inside(netns):
                driver = DpdkDriver(**options)
        else:
            driver = DpdkDriver(**options)
        try:
            results.put(("ok", function(driver, *args)))
        finally:
            driver.close()
    except BaseException:
        results.put(("error", traceback.format_exc()))


def call_in_process(function: Any, *args: Any, options: dict[str, Any], netns: str | None = None,
                    timeout: float = 120.0) -> Any:
    """``function(driver, *args)`` in a new process (``multiprocessing`` spawn) that opens a
    ``dpdk`` driver of ``options`` (inside network namespace ``netns`` when given): DPDK's EAL
    initialises once per process, so tests and benchmarks open each driver this way. Returns what
    ``function`` returned (it and its result must pickle); :class:`DriverError` with the child's
    traceback if it failed, died or took longer than ``timeout`` seconds."""
    import multiprocessing
    import queue
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_call_child, args=(function, netns, options, args, results))
    child.start()
    deadline = time.monotonic() + timeout
    try:
        while True:  # bounded by the deadline
            try:
                status, value = results.get(timeout=0.5)
                break
            except queue.Empty:
                if not child.is_alive() and results.empty():
                    raise DriverError(f"dpdk driver: the DPDK process died (exit code "
                                      f"{child.exitcode}) without a result") from None
                if time.monotonic() > deadline:
                    raise DriverError(f"dpdk driver: the DPDK process gave no result within "
                                      f"{timeout:g} s") from None
    finally:
        child.join(20)
        if child.is_alive():
            child.kill()
            child.join()
    if status != "ok":
        raise DriverError(f"dpdk driver: in the DPDK process:\n{value}")
    return value
