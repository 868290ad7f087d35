"""The statistics behind ``rdv compare``: intervals, the latency sketch, drift and the
off-policy estimates, on data whose true values are known."""

from __future__ import annotations

import math
import random

import pytest

from services.compare.drift import drift, fitted_bins, ks, psi
from services.compare.intervals import mean_interval, wilson
from services.compare.offpolicy import Logged, estimate
from services.compare.sketch import LatencySketch


def test_wilson_matches_a_textbook_value_and_stays_within_0_1() -> None:
    interval = wilson(8, 10)  # Wilson 95% for 8/10: 0.4902 .. 0.9433
    assert interval.value == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 50).low == pytest.approx(0.0, abs=1e-12)
    assert wilson(50, 50).high == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(wilson(0, 0).value)
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)


def test_the_mean_interval_covers_the_true_mean() -> None:
    rng = random.Random(1)
    interval = mean_interval([rng.gauss(10.0, 2.0) for _ in range(2000)])
    assert interval.low < 10.0 < interval.high
    assert interval.high - interval.low < 0.5


def test_sketch_quantiles_are_within_one_percent_and_sketches_merge() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.0, 0.8) for _ in range(20_000)]
    first, second = LatencySketch(values[:10_000]), LatencySketch(values[10_000:])
    first.merge(second)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert first.quantile(q) == pytest.approx(exact, rel=0.02)
    assert first.count == 20_000
    assert LatencySketch().quantile(0.5) is None
    assert set(first.quantiles()) == {"p50", "p90", "p99"}


def test_drift_is_quiet_on_the_same_distribution_and_loud_on_a_shift() -> None:
    rng = random.Random(3)
    reference = [rng.gauss(0.0, 1.0) for _ in range(5000)]
    same = [rng.gauss(0.0, 1.0) for _ in range(5000)]
    shifted = [rng.gauss(1.5, 1.0) for _ in range(5000)]
    assert psi(reference, same) < 0.05
    assert ks(reference, same) < 0.05
    assert drift(reference, shifted).alert
    assert ks(reference, shifted) > 0.4
    assert ks([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert ks([0.0], [1.0]) == 1.0


def test_psi_bins_shrink_with_small_samples_so_no_drift_stays_quiet() -> None:
    assert [fitted_bins(n, 5000) for n in (10, 60, 199, 200, 5000)] == [2, 3, 9, 10, 10]
    rng = random.Random(5)
    false_alarms = {"fitted": 0, "ten": 0}
    for _ in range(200):  # two windows of 60 values from one distribution
        reference = [rng.gauss(0.0, 1.0) for _ in range(60)]
        current = [rng.gauss(0.0, 1.0) for _ in range(60)]
        fitted, ten = drift(reference, current), drift(reference, current, bins=10)
        assert fitted.ks == ten.ks
        false_alarms["fitted"] += fitted.alert
        false_alarms["ten"] += ten.alert
    assert false_alarms["fitted"] <= 10  # 5%
    assert false_alarms["ten"] > 100  # ten bins on 60 values: mostly alarms


def _logged_run(n: int, share: float, true: dict[str, float], seed: int) -> list[Logged]:
    """A canary share: the canary answers with probability ``share``, else the champion;
    rewards are Bernoulli with each model's true mean."""
    rng = random.Random(seed)
    log = []
    for _ in range(n):
        canary = rng.random() < share
        model = "canary" if canary else "champ"
        reward = 1.0 if rng.random() < true[model] else 0.0
        log.append(Logged(model, share if canary else 1 - share, reward))
    return log


def test_off_policy_estimates_recover_each_models_true_reward() -> None:
    true = {"champ": 0.55, "canary": 0.7}
    log = _logged_run(20_000, 0.1, true, seed=11)
    for model, value in true.items():
        result = estimate(model, log)
        assert result.ips.low <= value <= result.ips.high, result
        assert result.snips.low <= value <= result.snips.high, result
    canary = estimate("canary", log)
    assert 1500 < canary.matched < 2500  # ~10% of the traffic
    assert canary.effective_sample_size == pytest.approx(canary.matched)  # equal weights
    # the canary is judged on ~2,000 answers, so its interval is wider than the champion's
    champ = estimate("champ", log)
    assert canary.ips.high - canary.ips.low > champ.ips.high - champ.ips.low


def test_intervals_cover_the_truth_at_about_the_stated_rate() -> None:
    runs = [
        estimate("canary", _logged_run(2000, 0.2, {"champ": 0.5, "canary": 0.7}, seed))
        for seed in range(100)
    ]
    covered = sum(r.snips.low <= 0.7 <= r.snips.high for r in runs)
    assert 88 <= covered <= 100  # 95% nominal


def test_off_policy_refuses_bad_propensities_and_handles_no_data() -> None:
    with pytest.raises(ValueError, match="propensity"):
        estimate("m", [Logged("m", 0.0, 1.0)])
    empty = estimate("m", [Logged("other", 0.5, 1.0)])
    assert empty.matched == 0
    assert math.isnan(empty.ips.value)
