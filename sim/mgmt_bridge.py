"""The simulated card on an Ethernet link: its management port (protocol version 2,
:mod:`tickwire.protocols.management`) on a Linux interface, for the ``ethmgmt`` and ``dpdk``
drivers.

A bridge takes a running simulated card (``tickwire sim serve``, reached through the ``sim``
driver) and an interface (one end of a veth pair, say), answers the management frames that come
in on the interface with the card's register reads and writes, as the gateware's
``ManagementPort`` would (the reference model :class:`tickwire.sim.management_model.ManagementModel`:
the one-request window, duplicates answered from it), and sends the card's event records out as
event frames (up to :data:`EVENTS_PER_FRAME` records each) to the last requester.

It owns the sim driver's event ring (the simulated card writes events into the ring attached
last). ``python -m tickwire.sim.mgmt_bridge --socket PATH --interface IF`` runs one until SIGINT or
SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import select
import signal
import socket
import threading
import time
from typing import Any, Callable

from tickwire.drivers.base import Driver
from tickwire.protocols import events as ev
from tickwire.protocols.management import EVENTS_PER_FRAME, MANAGEMENT_ETHERTYPE
from tickwire.protocols.net import int_to_mac, mac_to_int

from .management_model import ManagementModel

__all__ = ["ManagementBridge", "DEFAULT_CARD_MAC", "main"]

logger = logging.getLogger(__name__)

#: The ECPIX-5 build's management MAC address, used by the simulated card too.
DEFAULT_CARD_MAC = "02:74:77:69:72:01"
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23
#: How long the loop waits for a frame before it looks at the event ring again.
_EVENT_POLL_S = 0.001


class ManagementBridge:
    """The card behind ``driver`` (registers, events) answering on interface ``interface`` as
    MAC address ``card_mac``.

    ``drop(direction, frame)``, when given, is asked about every frame in (``"in"``) and out
    (``"out"``); True loses it (tests use it to lose requests and replies on purpose).
    :meth:`start` runs the bridge in a thread, :meth:`stop` ends it; :meth:`run` runs it in the
    caller's thread until :meth:`stop`. Counters: ``frames_in``, ``frames_out``,
    ``dropped_in``, ``dropped_out``, and the model's ``requests``, ``duplicates``,
    ``event_frames``.
    """

    def __init__(self, driver: Driver, interface: str, *, card_mac: str = DEFAULT_CARD_MAC,
                 drop: Callable[[str, bytes], bool] | None = None) -> None:
        self.driver = driver
        self.interface = interface
        self.card_mac = mac_to_int(card_mac).to_bytes(6, "big")
        self.model = ManagementModel(self.card_mac, driver.read, driver.write, addr_width=16)
        self.drop = drop
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                   socket.htons(MANAGEMENT_ETHERTYPE))
        try:
            self._sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            self._sock.bind((interface, MANAGEMENT_ETHERTYPE))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_in = self.frames_out = self.dropped_in = self.dropped_out = 0
        self.error: BaseException | None = None

    def _send(self, frame: bytes) -> None:
        if self.drop is not None and self.drop("out", frame):
            self.dropped_out += 1
            logger.info("bridge %s: lost a frame out on purpose: %s", self.interface, frame.hex())
            return
        self._sock.send(frame)
        self.frames_out += 1

    def _answer(self) -> None:
        while True:
            try:
                frame = self._sock.recv(65535)
            except BlockingIOError:
                return
            self.frames_in += 1
            if self.drop is not None and self.drop("in", frame):
                self.dropped_in += 1
                logger.info("bridge %s: lost a frame in on purpose: %s", self.interface, frame.hex())
                continue
            reply = self.model.receive(frame)
            if reply is not None:
                self._send(reply)

    def _forward_events(self) -> None:
        events = self.driver.events(limit=EVENTS_PER_FRAME * 16)
        for start in range(0, len(events), EVENTS_PER_FRAME):
            chunk = events[start:start + EVENTS_PER_FRAME]
            self._send(self.model.events([ev.pack(e) for e in chunk]))

    def run(self) -> None:
        logger.info("bridge: card %s answers on %s", int_to_mac(int.from_bytes(self.card_mac, "big")),
                    self.interface)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self._sock], [], [], _EVENT_POLL_S)
                if readable:
                    self._answer()
                self._forward_events()
        except BaseException as e:
            self.error = e
            logger.error("bridge %s stopped: %s", self.interface, e)
            raise

    def start(self) -> ManagementBridge:
        self._thread = threading.Thread(target=self.run, name=f"mgmt-bridge-{self.interface}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> ManagementBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    from tickwire.drivers import open_driver
    parser = argparse.ArgumentParser(
        prog="python -m tickwire.sim.mgmt_bridge",
        description="Answer management frames on an interface with a simulated card.")
    parser.add_argument("--socket", metavar="PATH", required=True,
                        help="the simulated card's socket (tickwire sim serve --socket)")
    parser.add_argument("--interface", metavar="IF", required=True,
                        help="the interface to answer on (one end of a veth pair)")
    parser.add_argument("--mac", metavar="MAC", default=DEFAULT_CARD_MAC,
                        help="the card's MAC address (default: %(default)s)")
    parser.add_argument("--netns", metavar="NAME", default=None,
                        help="network namespace of the interface (default: this one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    driver = open_driver({"driver": "sim", "socket": args.socket, "timeout": 30})
    if args.netns:
        from .netns import inside
        with inside(args.netns):
            bridge = ManagementBridge(driver, args.interface, card_mac=args.mac)
    else:
        bridge = ManagementBridge(driver, args.interface, card_mac=args.mac)

    def stop(signum: int, frame: Any) -> None:
        bridge._stop.set()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    try:
        bridge.run()
    finally:
        bridge._sock.close()
        driver.close()
        time.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
