"""The risk reference model (sim/risk_model.py) on its own: check order, bounds, throttle."""

import pytest

from tickwire.protocols.risk import Action, CHECK_ORDER, ExposureUpdateKind, RejectReason, VERDICT_COUNTERS
from tickwire.sim.risk_model import BookTop, RiskModel


def ready_model(**params) -> RiskModel:
    model = RiskModel(slots=2, sessions=2, **params)
    for name, value in {"symbol_enabled": 1, "max_order_quantity": 1000, "max_order_notional": 10**9,
                        "reference_price": 10_000, "price_collar": 100, "max_long_position": 1000,
                        "max_short_position": 1000, "max_open_orders": 5}.items():
        model.write(name, value, slot=0)
    for name, value in {"max_open_notional": 10**10, "throttle_interval": 4, "throttle_burst": 2}.items():
        model.write(name, value, session=0)
    return model


def order(**fields):
    return {"action": Action.ENTER, "session": 0, "slot": 0, "side": ord("B"), "quantity": 10,
            "price": 10_000, "user_ref_num": 1, **fields}


def test_every_reason_has_a_counter_and_a_place():
    assert set(VERDICT_COUNTERS) == set(RejectReason)
    assert set(CHECK_ORDER) == set(RejectReason) - {RejectReason.NONE}
    assert len(set(VERDICT_COUNTERS.values())) == len(VERDICT_COUNTERS)


def test_first_failing_check_is_the_reason():
    model = ready_model()
    model.kill = 1
    assert model.check(order(session=9, quantity=0)) is RejectReason.KILL
    model.kill = 0
    assert model.check(order(session=9, quantity=0)) is RejectReason.UNKNOWN_SESSION
    assert model.check(order(quantity=0, price=1)) is RejectReason.ZERO_QUANTITY
    assert model.check(order(quantity=1001, price=1)) is RejectReason.MAX_QUANTITY
    # A cancel skips every limit after the slot check.
    assert model.check(order(action=Action.CANCEL, quantity=0, user_ref_num=0)) is RejectReason.NONE
    assert model.check(order(action=Action.CANCEL, slot=2)) is RejectReason.UNKNOWN_SLOT


def test_collar_against_the_book_midpoint():
    model = ready_model()
    model.write("reference_price", 0, slot=0)
    assert model.check(order()) is RejectReason.NO_REFERENCE_PRICE
    assert model.check(order(), BookTop(9_990, 10_010, 0)) is RejectReason.NO_REFERENCE_PRICE
    assert model.check(order(), BookTop(0, 10_010, 1)) is RejectReason.NO_REFERENCE_PRICE
    assert model.check(order(price=10_100), BookTop(9_990, 10_010, 1)) is RejectReason.NONE
    assert model.check(order(price=10_101), BookTop(9_990, 10_010, 1)) is RejectReason.PRICE_COLLAR
    # Midpoint 10000.5: 10100 is 99.5 away, 9900 is 100.5 away.
    assert model.check(order(price=9_900), BookTop(9_990, 10_011, 1)) is RejectReason.PRICE_COLLAR


def test_throttle_refills_one_token_per_interval():
    model = ready_model()
    verdicts = []
    for k in range(12):
        verdicts.append(model.order(order(user_ref_num=k + 1))[1])
        model.tick()
    # Two in the bucket, then a token on the 4th, 8th, ... tick.
    accepted = [k for k, v in enumerate(verdicts) if v is RejectReason.NONE]
    assert accepted == [0, 1, 4, 8]
    assert set(verdicts) == {RejectReason.NONE, RejectReason.THROTTLE}


def test_exposure_saturates_and_refuses():
    model = ready_model()
    assert model.order(order(quantity=100))[0]
    assert model.exposure({"kind": ExposureUpdateKind.EXECUTION, "session": 0, "slot": 0,
                           "side": ord("B"), "quantity": 300, "price": 10_000})
    exp = model.slot_exposure[0]
    assert (exp.position, exp.open_buy_quantity) == (300, 0)
    assert model.counters["exposure_saturated"] == 1
    assert model.session_state[0].open_notional == 0
    assert not model.exposure({"kind": 7, "session": 0, "slot": 0, "side": ord("B"), "quantity": 1, "price": 1})
    assert model.counters["exposure_refused"] == 1


def test_position_saturates_at_its_width():
    model = ready_model(quantity_width=4)
    for _ in range(3):
        model.exposure({"kind": ExposureUpdateKind.EXECUTION, "session": 0, "slot": 0,
                        "side": ord("S"), "quantity": 15, "price": 0})
    assert model.slot_exposure[0].position == -16


def test_indexed_writes_need_their_index():
    model = RiskModel(slots=2, sessions=2)
    with pytest.raises(ValueError, match="per slot"):
        model.write("max_order_quantity", 5)
    with pytest.raises(KeyError):
        model.write("open_orders", 5, slot=0)
    model.write("max_order_quantity", 5, slot=7)  # out of range: dropped, like the gateware
    assert all(lim.max_order_quantity == 0 for lim in model.slot_limits)
