"""Builds the slow Verilator targets ahead of the tests that need them.

``make test`` starts ``python -m tickwire.sim.prebuild`` in the background (niced) when pytest
starts: while the suite runs its single-threaded tests on one core, the whole-appliance builds
compile on the other. Each build holds its lock (:func:`tickwire.sim.runner.build_lock`), so a
test that needs a build still in progress waits for it and then reuses it; nothing is built
twice, and a test that runs before its build started builds it itself as before.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)

__all__ = ["TARGETS", "main"]


def _card() -> None:
    from .card import build_card_harness
    build_card_harness()


def _top() -> None:
    from .runner import build_top
    build_top()


def _book() -> None:
    from .book_replay import BOOK_DUT
    from .replay import build_harness
    build_harness(dut=BOOK_DUT)


def _replay() -> None:
    from .replay import build_harness
    build_harness()


#: What can be built, in the order the suite first needs them (tests/drivers needs the card
#: harness first, tests/hdl/test_top the cocotb build of the appliance, tests/sim the book's
#: and the market-data replay harnesses).
TARGETS: dict[str, Callable[[], None]] = {
    "card": _card, "top": _top, "book": _book, "replay": _replay,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.sim.prebuild", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET", default=list(TARGETS),
                        help=f"what to build, in order (default: all of {', '.join(TARGETS)})")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    failed = 0
    for target in args.targets:
        start = time.monotonic()
        try:
            TARGETS[target]()
        except Exception:   # the test that needs it builds it again and reports the error
            logger.exception("prebuild of %s failed", target)
            failed += 1
            continue
        logger.info("%s ready after %.0f s", target, time.monotonic() - start)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
