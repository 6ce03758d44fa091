"""Network namespaces for tests and tools that talk over interfaces of their own (veth pairs,
TAP devices): run a block of code inside one, from this thread only."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["inside", "CLONE_NEWNET"]

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block in network namespace ``netns`` (made by ``ip netns add``; this thread only).
    Sockets made inside stay in it after the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
