"""``rawpacket`` driver: the host's own packet I/O on a network interface.

An ``AF_PACKET`` socket bound to one interface, with a ``TPACKET_V3`` receive ring mapped into
this process (the kernel fills blocks of frames; the host walks them and hands each block back),
and sends through the same socket. For MoldUDP64 retransmission requests and answers, drop copy
and tests; it has no registers and no card events. Needs CAP_NET_RAW (root).

The ring's layouts are the kernel's (``linux/if_packet.h``): ``tpacket_req3``,
``tpacket_block_desc`` with ``tpacket_hdr_v1``, ``tpacket3_hdr`` then ``sockaddr_ll``.
"""

from __future__ import annotations

import errno
import logging
import mmap
import select
import socket
import struct
import time

from .base import FRAMES, DEFAULT_TIMEOUT, Driver, DriverError, DriverUnavailable, Frame

__all__ = ["RawPacketDriver", "ETH_P_ALL"]

logger = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
PACKET_OUTGOING = 4
#: struct tpacket_req3: block size, block count, frame size, frame count, retire timeout (ms),
#: private area size, feature request word.
_REQ3 = struct.Struct("=IIIIIII")
#: struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
#: num_pkts, offset_to_first_pkt (blk_len, seq_num and timestamps follow, unused here).
_BLOCK = struct.Struct("=IIIII")
_BLOCK_STATUS_OFFSET = 8
#: struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac,
#: tp_net.
_PACKET = struct.Struct("=IIIIIIHH")
#: sockaddr_ll follows the header at TPACKET_ALIGN(sizeof(struct tpacket3_hdr)); its
#: sll_pkttype is byte 10.
_SOCKADDR_LL_OFFSET = 48
_PKTTYPE_OFFSET = _SOCKADDR_LL_OFFSET + 10
_MIN_FRAME = 14
_MAX_FRAME = 65535


class RawPacketDriver(Driver):
    """Frames on interface ``interface``: :meth:`send_frame` sends a whole Ethernet frame (no
    FCS; the port name is the interface's), :meth:`receive_frames` returns the frames the ring
    caught (timestamps in nanoseconds, the kernel's). Frames this host sends on the interface
    are not received (``PACKET_IGNORE_OUTGOING``, or filtered out on older kernels).

    Parameters: ``ethertype`` to catch (default all), ``block_size`` and ``blocks`` of the ring
    (the ring holds ``block_size * blocks`` bytes), ``block_timeout_ms``: how long the kernel
    keeps a partly filled block before handing it over.
    """

    name = "rawpacket"
    capabilities = frozenset({FRAMES})
    options = ("interface", "ethertype", "block_size", "blocks", "block_timeout_ms")

    def __init__(self, interface: str, *, ethertype: int = ETH_P_ALL, block_size: int = 1 << 18,
                 blocks: int = 16, block_timeout_ms: int = 2,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        if not isinstance(interface, str) or not interface:
            raise DriverError(f"rawpacket driver: interface must be a name, not {interface!r}")
        if block_size < mmap.PAGESIZE or block_size & (block_size - 1):
            raise DriverError(f"rawpacket driver: block_size must be a power of two of at least "
                              f"{mmap.PAGESIZE}, not {block_size!r}")
        if not 1 <= blocks <= 4096:
            raise DriverError(f"rawpacket driver: blocks must be 1..4096, not {blocks!r}")
        if not 0 < ethertype <= 0xFFFF:
            raise DriverError(f"rawpacket driver: ethertype must be 1..0xffff, not {ethertype!r}")
        self.interface = interface
        self.send_ports = (interface,)
        self.ethertype = ethertype
        self._ring: mmap.mmap | None = None
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        except PermissionError:
            raise DriverUnavailable("rawpacket driver: AF_PACKET sockets need CAP_NET_RAW "
                                    "(run as root)") from None
        except (AttributeError, OSError) as e:
            raise DriverUnavailable(f"rawpacket driver: no AF_PACKET sockets here: {e}") from None
        try:
            self._setup(block_size, blocks, block_timeout_ms)
        except BaseException:
            self.close()
            raise

    def _setup(self, block_size: int, blocks: int, block_timeout_ms: int) -> None:
        sock = self._sock
        try:
            socket.if_nametoindex(self.interface)
        except OSError:
            raise DriverUnavailable(f"rawpacket driver: no network interface "
                                    f"{self.interface!r} (see ip link)") from None
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._filter_outgoing = False
        except OSError:  # before Linux 4.20
            self._filter_outgoing = True
        frame_size = 2048  # only used by the kernel to check the request
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ3.pack(
            block_size, blocks, frame_size, block_size // frame_size * blocks, block_timeout_ms,
            0, 0))
        self._ring = mmap.mmap(sock.fileno(), block_size * blocks, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self.block_size, self.blocks = block_size, blocks
        self._block = self._left = self._offset = 0
        sock.bind((self.interface, self.ethertype))  # Python converts to network order
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self.received = self.sent = 0
        logger.info("rawpacket: %s, ring of %d x %d bytes", self.interface, blocks, block_size)

    # -- frames -----------------------------------------------------------------------------------

    def send_frame(self, port: str, frame: bytes) -> None:
        self._check_open()
        self._check_port(port)
        if not isinstance(frame, (bytes, bytearray, memoryview)) \
                or not _MIN_FRAME <= len(frame) <= _MAX_FRAME:
            raise DriverError(f"rawpacket driver: a frame is {_MIN_FRAME} to {_MAX_FRAME} bytes "
                              f"(Ethernet header first, no FCS), not {len(frame)!r}")
        deadline = time.monotonic() + self.timeout
        while True:  # bounded by the timeout
            try:
                self._sock.send(frame)
                self.sent += 1
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DriverError(f"rawpacket driver: {self.interface} did not take a frame "
                                      f"for {self.timeout:g} s (queue full, link down?)") from None
                select.select([], [self._sock], [], 0.01)
            except OSError as e:
                if e.errno in (errno.ENETDOWN, errno.ENXIO):
                    raise DriverError(f"rawpacket driver: {self.interface} is down") from None
                raise DriverError(f"rawpacket driver: sending on {self.interface}: {e}") from None

    def receive_frames(self, timeout: float = 0.0, limit: int | None = None) -> list[Frame]:
        """Frames from the ring (up to ``limit``), waiting up to ``timeout`` s for the first."""
        self._check_wait(timeout, limit)
        self._check_open()
        limit = limit or 1 << 30
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        while True:
            self._drain(out, limit)
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            self._poll.poll(max(1, int(left * 1000)))

    def _drain(self, out: list[Frame], limit: int) -> None:
        """Frames into ``out`` until ``limit`` or no full block is left; a block goes back to the
        kernel once every frame in it has been taken."""
        ring = self._ring
        while len(out) < limit:
            base = self._block * self.block_size
            if not self._left:
                _, _, status, count, first = _BLOCK.unpack_from(ring, base)
                if not status & TP_STATUS_USER:
                    return
                self._left, self._offset = count, base + first
            while self._left and len(out) < limit:
                offset = self._offset
                next_offset, sec, nsec, snaplen, _, _, mac, _ = _PACKET.unpack_from(ring, offset)
                if not (self._filter_outgoing
                        and ring[offset + _PKTTYPE_OFFSET] == PACKET_OUTGOING):
                    out.append(Frame(self.interface, ring[offset + mac:offset + mac + snaplen],
                                     sec * 1_000_000_000 + nsec))
                    self.received += 1
                self._offset += next_offset
                self._left -= 1
            if not self._left:
                struct.pack_into("=I", ring, base + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
                self._block = (self._block + 1) % self.blocks

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
        super().close()

    def __repr__(self) -> str:
        return f"<RawPacketDriver {self.interface}{' closed' if self.closed else ''}>"
