"""Suite-wide hooks: with ``TICKWIRE_PREBUILD=1`` (``make test``) the slow Verilator builds start
in the background when the session starts (``tickwire.sim.prebuild``); tests that need one wait
for it on its build lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

_PREBUILD = pytest.StashKey[subprocess.Popen]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("TICKWIRE_PREBUILD") != "1" or hasattr(session.config, "workerinput"):
        return
    from tickwire.sim.runner import build_root
    log = build_root() / "prebuild.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        session.config.stash[_PREBUILD] = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "tickwire.sim.prebuild"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    process = session.config.stash.get(_PREBUILD, None)
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)   # the builds the selected tests did not need
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
