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


@pytest.mark.parametrize("check, message", [
    (RejectReason.KILL, "an order accepted while killed"),
    (RejectReason.POSITION_SHORT, "an accepted order violates a limit"),
])
def test_weakened_copy_fails_the_proof(check, message):
    result = prove_risk(omit_checks=(check,))
    assert not result.passed, f"the proof holds without the {check.name} check"
    assert any(message in failure for failure in result.failed), result.failed
