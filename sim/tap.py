"""Linux TAP interfaces for the simulated card's order port: whole Ethernet frames in and out of a
network namespace the caller made, and a bridge that moves them to and from a card.

The TAP lives in the caller's namespace (``ip netns add``; :func:`tickwire.sim.netns.inside` puts
it there); the kernel in that namespace is the card's peer: give the TAP the peer's address
(e.g. 10.77.0.1/24) and the card answers for another one on the same subnet (10.77.0.2) with a
MAC of its own. The bridge is card-agnostic: it takes a callable that gives the frames the card
sent and one that hands the card a received frame, so the reference model, the Verilated card
and anything else with frames can sit behind it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import subprocess
from typing import Callable, Iterable

from tickwire.protocols.net import MIN_FRAME_LENGTH

from .netns import inside

__all__ = ["Tap", "TapBridge", "TapError", "configure", "TUNSETIFF", "IFF_TAP", "IFF_NO_PI"]

logger = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
#: Largest frame read from a TAP (MTU 1500 + Ethernet header, and room for a bigger MTU).
READ_SIZE = 65536


class TapError(OSError):
    """A TAP interface could not be made, configured, read or written."""


class Tap:
    """A TAP interface ``name`` (IFF_TAP | IFF_NO_PI: whole Ethernet frames, no FCS) in network
    namespace ``netns`` (None: this one). The fd is non-blocking; the interface goes away when
    :meth:`close` closes it."""

    def __init__(self, name: str, netns: str | None = None) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise TapError(errno.EINVAL, f"interface name must be 1..{IFNAMSIZ - 1} characters without "
                                         f"'/' or spaces, not {name!r}")
        if not os.path.exists("/dev/net/tun"):
            raise TapError(errno.ENOENT, "/dev/net/tun is missing (no TUN/TAP support)")
        self.name = name
        self.netns = netns
        self._fd = -1
        if netns is None:
            self._fd = self._open()
        else:
            with inside(netns):
                self._fd = self._open()
        self.counters = {"rx_frames": 0, "tx_frames": 0, "tx_dropped": 0}
        logger.info("TAP %s up in %s (fd %d)", name, netns or "this namespace", self._fd)

    def _open(self) -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", self.name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise TapError(e.errno, f"TAP {self.name}: TUNSETIFF failed: {e.strerror}") from None
        return fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise TapError(errno.EBADF, f"TAP {self.name} is closed")
        return self._fd

    def read_frames(self, limit: int = 256) -> list[bytes]:
        """Up to ``limit`` frames the kernel sent out of the interface, without waiting."""
        frames: list[bytes] = []
        fd = self.fileno()
        for _ in range(limit):
            try:
                frame = os.read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                raise TapError(e.errno, f"TAP {self.name}: read failed: {e.strerror}") from None
            if frame:
                frames.append(frame)
        self.counters["rx_frames"] += len(frames)
        return frames

    def write_frame(self, frame: bytes) -> bool:
        """Hand one frame to the kernel as if received on the interface; False when the kernel
        would block (the frame is dropped and counted, like a full queue on a wire)."""
        try:
            os.write(self.fileno(), frame)
        except BlockingIOError:
            self.counters["tx_dropped"] += 1
            return False
        except OSError as e:
            raise TapError(e.errno, f"TAP {self.name}: write of {len(frame)} bytes failed: {e.strerror}") from None
        self.counters["tx_frames"] += 1
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a frame to read; True when one is there."""
        ready, _, _ = select.select([self.fileno()], [], [], max(0.0, timeout))
        return bool(ready)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def configure(netns: str, name: str, address: str, *, mtu: int = 1500, ipv6: bool = False) -> None:
    """Give interface ``name`` in ``netns`` the kernel's ``address`` (CIDR, e.g. 10.77.0.1/24), bring
    it and the namespace's loopback up; IPv6 off on it unless asked (no router solicitations)."""
    commands = [["ip", "-n", netns, "link", "set", "lo", "up"],
                ["ip", "-n", netns, "link", "set", name, "mtu", str(mtu)],
                ["ip", "-n", netns, "addr", "add", address, "dev", name],
                ["ip", "-n", netns, "link", "set", name, "up"]]
    if not ipv6:
        commands.insert(0, ["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
                            f"net.ipv6.conf.{name}.disable_ipv6=1"])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise TapError(errno.EIO, f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")


class TapBridge:
    """Moves frames between a :class:`Tap` and a card.

    ``from_card()`` returns the frames the card sent since the last call (its ``o_tx``);
    ``to_card(frame)`` hands the card one frame received on the wire (its ``i_rx``). ``drop`` is
    an optional ``(direction, frame) -> bool`` that drops a frame on purpose (direction
    ``"to_card"`` or ``"from_card"``); ``pad`` pads the card's frames to 60 bytes as a MAC does.
    ``tap_frame`` (optional) sees every frame written to or read from the TAP, with direction.
    """

    def __init__(self, tap: Tap, *, to_card: Callable[[bytes], None], from_card: Callable[[], Iterable[bytes]],
                 drop: Callable[[str, bytes], bool] | None = None, pad: bool = True,
                 tap_frame: Callable[[str, bytes], None] | None = None) -> None:
        self.tap = tap
        self.to_card = to_card
        self.from_card = from_card
        self.drop = drop
        self.pad = pad
        self.tap_frame = tap_frame
        self.counters = {"to_card": 0, "from_card": 0, "dropped_to_card": 0, "dropped_from_card": 0}

    def pump(self, timeout: float = 0.0, *, limit: int = 256) -> int:
        """Card frames to the TAP, then wait up to ``timeout`` for the kernel's frames and hand up
        to ``limit`` of them to the card, then card frames again; returns the frames moved."""
        moved = self._out()
        if timeout > 0 and moved == 0:
            self.tap.wait(timeout)
        for frame in self.tap.read_frames(limit):
            if self.tap_frame is not None:
                self.tap_frame("to_card", frame)
            if self.drop is not None and self.drop("to_card", frame):
                self.counters["dropped_to_card"] += 1
                continue
            self.to_card(frame)
            self.counters["to_card"] += 1
            moved += 1
        return moved + self._out()

    def _out(self) -> int:
        moved = 0
        for frame in self.from_card():
            if self.drop is not None and self.drop("from_card", frame):
                self.counters["dropped_from_card"] += 1
                continue
            if self.pad and len(frame) < MIN_FRAME_LENGTH:
                frame = frame + bytes(MIN_FRAME_LENGTH - len(frame))
            if self.tap_frame is not None:
                self.tap_frame("from_card", frame)
            if self.tap.write_frame(frame):
                self.counters["from_card"] += 1
                moved += 1
        return moved
