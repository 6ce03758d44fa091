"""The formal proof of the risk gate (sim/formal.py): it holds for the design, and it fails for
copies with a check removed."""

import pytest

from tickwire.protocols.risk import RejectReason
from tickwire.sim.formal import FormalToolsMissing, prove_risk, tools

try:
    tools()
except FormalToolsMissing as exc:  # pragma: no cover - the dev extras install them
    pytest.fail(str(exc))


def test_risk_proof_holds():
    result = prove_risk()
    assert result.passed, f"risk proof failed: {result.failed}\n{result.log[-2000:]}"
    assert result.seconds < 120, f"proof took {result.seconds:.0f} s"


@pytest.mark.parametrize("check, messages", [
    (RejectReason.KILL, ("an order accepted while killed", "an accepted order violates a limit")),
    # Without the short check the solver finds either the limit or the counter it protects.
    (RejectReason.POSITION_SHORT, ("an accepted order violates a limit", "open sell overflow on accept")),
])
def test_weakened_copy_fails_the_proof(check, messages):
    result = prove_risk(omit_checks=(check,))
    assert not result.passed, f"the proof holds without the {check.name} check"
    assert result.failed and all(any(m in failure for m in messages) for failure in result.failed), \
        result.failed
