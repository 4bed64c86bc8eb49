"""Paired statistics: the bootstrap equals a hand computation, McNemar and MDD equal known values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trajgym.experiments import paired
from trajgym.experiments.paired import (
    flip_rate,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_difference,
    unpaired_mdd,
    wilson_interval,
)

T, F = True, False
A = [T, T, F, F, T, F, T, F, F, T]
B = [T, T, T, F, T, T, F, T, F, T]


def hand_bootstrap(
    a: list[float], b: list[float], resamples: int, seed: int
) -> tuple[float, float]:
    """The paired bootstrap written out: the same task indices for both methods, then percentiles."""
    n = len(a)
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diffs = []
    for row in indices:
        total_a = total_b = 0.0
        for i in row:
            total_a += a[int(i)]
            total_b += b[int(i)]
        diffs.append(total_b / n - total_a / n)
    diffs.sort()

    def percentile(q: float) -> float:  # linear interpolation between order statistics
        h = (resamples - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, resamples - 1)
        return diffs[lo] + (h - lo) * (diffs[hi] - diffs[lo])

    return (percentile(0.025), percentile(0.975))


def test_interval_is_the_paired_bootstrap_computed_by_hand() -> None:
    result = paired_difference(A, B, resamples=500, seed=3)
    lo, hi = hand_bootstrap([float(x) for x in A], [float(x) for x in B], 500, 3)
    assert result.ci95 == pytest.approx((lo, hi), abs=1e-12)
    assert result.n == 10
    assert result.rate_a == pytest.approx(0.5) and result.rate_b == pytest.approx(0.7)
    assert result.difference == pytest.approx(0.2)
    assert (result.a_wins, result.b_wins) == (1, 3)
    assert lo < result.difference < hi


def test_several_samples_per_task_count_as_the_task_mean() -> None:
    a = [[T, F], [T, T, T], [F, F], T, [F, T, F, F]]
    b = [[T, T], [T, F, T], [F, F], F, [T, T, F, F]]
    rates_a, rates_b = [0.5, 1.0, 0.0, 1.0, 0.25], [1.0, 2 / 3, 0.0, 0.0, 0.5]
    result = paired_difference(a, b, resamples=300, seed=1)
    assert result.rate_a == pytest.approx(sum(rates_a) / 5)
    assert result.rate_b == pytest.approx(sum(rates_b) / 5)
    assert (result.a_wins, result.b_wins) == (2, 2)  # tasks 1, 3 vs tasks 0, 4
    assert result.ci95 == pytest.approx(hand_bootstrap(rates_a, rates_b, 300, 1), abs=1e-12)


def test_mcnemar_exact_on_ten_against_two() -> None:
    # 12 discordant tasks, 2 of them won by a: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12.
    assert mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(0.03857421875)
    a = [F] * 10 + [T] * 2 + [T] * 4 + [F] * 3
    b = [T] * 10 + [F] * 2 + [T] * 4 + [F] * 3
    result = paired_difference(a, b, resamples=100)
    assert (result.a_wins, result.b_wins, result.n) == (2, 10, 19)
    assert result.p_value == pytest.approx(0.03857421875)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1000) > 0.0  # exact integers: no underflow to a bogus zero


def test_identical_methods_differ_by_zero() -> None:
    result = paired_difference(A, list(A))
    assert result.difference == 0.0
    assert result.ci95 == (0.0, 0.0)
    assert (result.a_wins, result.b_wins, result.p_value) == (0, 0, 1.0)


def test_chunked_draws_give_the_same_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = paired_difference(A, B, resamples=1000, seed=7)
    monkeypatch.setattr(paired, "_INDICES_PER_CHUNK", 25)  # 2 resamples a chunk
    assert paired_difference(A, B, resamples=1000, seed=7) == whole


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="a has 10, b has 9"):
        paired_difference(A, B[:-1])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="no samples"):
        paired_difference([[T], []], [T, F])
    with pytest.raises(ValueError, match="same tasks"):
        flip_rate([T, F], [T])


def test_result_is_json() -> None:
    result = paired_difference(A, B, resamples=200)
    data = json.loads(json.dumps(result.as_json()))
    assert data["difference"] == pytest.approx(0.2) and len(data["ci95"]) == 2
    assert "+0.200" in result.summary() and "3 vs 1" in result.summary()


def test_minimum_detectable_difference_matches_connor() -> None:
    # By hand: z_a = 1.959964, z_b = 0.841621, n = 100, psi = 0.2:
    # sqrt(0.2) * (1.959964 * 10 + 0.841621 * sqrt(100 - 3.841459 + 0.708326)) / 100.708326
    # = 0.447214 * (19.59964 + 8.283326) / 100.708326 = 0.12382
    mdd = minimum_detectable_difference(100, 0.2)
    assert mdd == pytest.approx(0.12382, abs=2e-5)
    # Put back into Connor's sample-size formula, it needs exactly n = 100 tasks.
    z_a, z_b = 1.959963984540054, 0.8416212335729143
    n = (z_a * math.sqrt(0.2) + z_b * math.sqrt(0.2 - mdd**2)) ** 2 / mdd**2
    assert n == pytest.approx(100)
    # Large n: (z_a + z_b) sqrt(psi / n).
    big = minimum_detectable_difference(10**6, 0.2)
    assert big == pytest.approx((z_a + z_b) * math.sqrt(0.2 / 10**6), rel=1e-3)


def test_minimum_detectable_difference_shrinks_with_n_and_beats_unpaired() -> None:
    values = [minimum_detectable_difference(n, 0.3) for n in (10, 30, 100, 300, 1000)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 5
    assert minimum_detectable_difference(100, 0.1) < minimum_detectable_difference(100, 0.4)
    assert minimum_detectable_difference(5, 0.05) <= 0.05  # never above the discordance
    # Unpaired, two groups of 100 at p = 0.5: 2.801585 * sqrt(0.005) = 0.19810.
    assert unpaired_mdd(100) == pytest.approx(0.19810, abs=1e-5)
    assert minimum_detectable_difference(100, 0.2) < unpaired_mdd(100)
    with pytest.raises(ValueError):
        minimum_detectable_difference(3, 0.2)
    with pytest.raises(ValueError):
        minimum_detectable_difference(100, 0.0)


def test_flip_rate_with_wilson_interval() -> None:
    run1 = [T] * 10 + [F] * 10
    run2 = [T] * 8 + [F] * 2 + [F] * 9 + [T]
    result = flip_rate(run1, run2)
    assert (result.n, result.flips, result.rate) == (20, 3, 0.15)
    # Wilson, 3 of 20, z = 1.959964: centre 0.206394, half-width 0.154025.
    assert result.ci95 == pytest.approx((0.05237, 0.36042), abs=1e-5)
    assert json.loads(json.dumps(result.as_json()))["flips"] == 3
    same = flip_rate(run1, run1)
    assert same.rate == 0.0 and same.ci95[0] == 0.0
    assert same.ci95[1] == pytest.approx(1.959964**2 / (20 + 1.959964**2), abs=1e-6)


def test_wilson_interval_stays_in_bounds() -> None:
    assert wilson_interval(5, 5)[1] == 1.0 and wilson_interval(5, 5)[0] < 1.0
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
