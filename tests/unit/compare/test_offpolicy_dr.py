"""IPS, SNIPS and doubly robust estimates of a target policy, on a log small enough to
compute by hand."""

from __future__ import annotations

import math

import pytest

from services.compare.offpolicy import (
    Logged,
    Replayed,
    doubly_robust,
    estimate,
    evaluate_policy,
    reward_model,
)

Z = 1.959963984540054

# chosen, logged propensity, reward, the target's answer distribution, fold
LOG = [
    Replayed("a", 0.5, 1.0, {"a": 1.0}, 0),  # w = 2
    Replayed("b", 0.5, 0.0, {"a": 1.0}, 1),  # w = 0: the target would not answer b
    Replayed("a", 0.25, 1.0, {"a": 0.5, "b": 0.5}, 0),  # w = 0.5 / 0.25 = 2
    Replayed("b", 1.0, 1.0, {"b": 1.0}, 1),  # w = 1
]


def test_ips_snips_and_ess_by_hand() -> None:
    est = evaluate_policy(LOG)
    # w*r = 2, 0, 2, 1: IPS 5/4; sample variance ((.75)^2 + (1.25)^2 + (.75)^2 + (.25)^2)/3
    assert est.ips.value == pytest.approx(1.25)
    half = Z * math.sqrt((0.5625 + 1.5625 + 0.5625 + 0.0625) / 3 / 4)
    assert (est.ips.low, est.ips.high) == pytest.approx((1.25 - half, 1.25 + half))
    assert est.snips.value == pytest.approx(5 / 5)  # sum w r / sum w
    assert est.effective_sample_size == pytest.approx(25 / 9)  # (2+2+1)^2 / (4+4+1)
    assert est.matched == 3
    assert est.ips.n == 4


def test_doubly_robust_by_hand_with_cross_fitting() -> None:
    # fold 0 is scored with q fitted on fold 1 (b: 0.5, anything else: 0.5);
    # fold 1 with q fitted on fold 0 (a: 1.0, anything else: 1.0)
    # row 1: q(a)=.5 + 2*(1-.5) = 1.5; row 2: q(a)=1 + 0 = 1; row 3: .5 + 2*(1-.5) = 1.5;
    # row 4: q(b)=1 + 1*(1-1) = 1
    dr = doubly_robust(LOG)
    assert dr.value == pytest.approx(1.25)
    half = Z * math.sqrt(4 * 0.0625 / 3 / 4)
    assert (dr.low, dr.high) == pytest.approx((1.25 - half, 1.25 + half))
    assert reward_model(LOG) == ({"a": 1.0, "b": 0.5}, 0.75)


def test_dr_leans_on_the_reward_model_where_the_log_never_shows_the_target() -> None:
    log = [Replayed("a", 1.0, r, {"c": 1.0}, i % 2) for i, r in enumerate([1.0, 0.0] * 10)]
    est = evaluate_policy(log)
    assert est.matched == 0
    assert math.isnan(est.ips.value)  # no weight: IPS is undefined
    assert est.dr.value == pytest.approx(0.5)  # q's fallback: the mean logged reward


def test_the_general_form_matches_the_always_model_estimate() -> None:
    logged = [Logged("a", 0.2, 1.0), Logged("b", 0.8, 0.0), Logged("a", 0.2, 0.0)]
    logged += [Logged("b", 0.8, 1.0), Logged("a", 0.2, 1.0)]
    old = estimate("a", logged)
    new = evaluate_policy([Replayed(x.chosen, x.propensity, x.reward, {"a": 1.0}) for x in logged])
    assert new.ips == old.ips
    assert new.snips == old.snips
    assert new.effective_sample_size == old.effective_sample_size
    assert new.matched == old.matched == 3


def test_bad_propensities_are_refused() -> None:
    with pytest.raises(ValueError, match="propensity"):
        evaluate_policy([Replayed("a", 0.0, 1.0, {"a": 1.0})])
    with pytest.raises(ValueError, match="propensity"):
        evaluate_policy([Replayed("a", 1.5, 1.0, {"a": 1.0})])
