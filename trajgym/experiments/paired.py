"""Paired statistics: telling two methods apart when both were evaluated on the same tasks.

Two students scored on the same tasks differ mostly on the tasks they disagree on; the
tasks both solve or both fail carry no information about which is better. Pairing removes
the between-task variance that an unpaired comparison (two independent intervals that
overlap) leaves in, so it separates methods with far fewer tasks:

- :func:`paired_difference`: the difference of success rates (b - a) with a paired-bootstrap
  95% interval, the discordant tasks and an exact McNemar / sign-test p-value.
- :func:`minimum_detectable_difference` and :func:`unpaired_mdd`: how large a true difference
  an evaluation of ``n`` tasks can detect, paired and unpaired, to size an experiment.
- :func:`flip_rate`: the noise floor, how often the *same* method's outcome on a task flips
  between two runs (sampling seeds, or training seeds). Discordance between two methods near
  this floor, with balanced wins, means they cannot be told apart.

Outcomes are given per task, in the same task order for both methods: either one bool per
task, or a sequence of bools per task (k samples each), which counts as the task's mean.
Tasks weigh equally, whatever their k: the task is the unit resampled and tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

TaskOutcomes: TypeAlias = Sequence[bool] | Sequence[Sequence[bool]]
"""Per task, in a fixed task order: one outcome, or the outcomes of its k samples."""

# Resample rows drawn per numpy call: bounds memory at ~8 MB of indices whatever n is. The
# Generator's stream does not depend on how the draws are chunked, so neither does the result.
_INDICES_PER_CHUNK = 1_000_000


class PairedDifference(BaseModel):
    """Method b against method a on the same tasks: b's success rate minus a's.

    ``a_wins`` / ``b_wins`` count the discordant tasks (one method's rate above the other's);
    with one sample per task these are McNemar's off-diagonal cells.
    """

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="Tasks, each evaluated under both methods.")
    rate_a: float = Field(description="Method a's success rate: the mean over tasks.")
    rate_b: float = Field(description="Method b's success rate: the mean over tasks.")
    difference: float = Field(description="rate_b - rate_a.")
    ci95: tuple[float, float] = Field(
        description="Paired-bootstrap 95% percentile interval of the difference (tasks "
        "resampled with replacement, the same indices for both methods)."
    )
    a_wins: int = Field(description="Tasks where a's rate is above b's.")
    b_wins: int = Field(description="Tasks where b's rate is above a's.")
    p_value: float = Field(
        description="Exact two-sided sign test on the discordant tasks (McNemar's exact "
        "test when each task has one sample)."
    )
    resamples: int = Field(description="Bootstrap resamples behind ci95.")
    seed: int = Field(description="Seed of the bootstrap's numpy Generator.")

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready form (plain floats, ints and lists)."""
        return self.model_dump(mode="json")

    def summary(self) -> str:
        """One line for a report, e.g. ``+0.120 [+0.040, +0.200], 14 vs 2, p=0.0042, n=100``."""
        lo, hi = self.ci95
        return (
            f"{self.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"{self.b_wins} vs {self.a_wins}, p={self.p_value:.2g}, n={self.n}"
        )


class FlipRate(BaseModel):
    """How often one task's outcome differs between two runs of the same method."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="Tasks run twice.")
    flips: int = Field(description="Tasks whose outcome differs between the two runs.")
    rate: float = Field(description="flips / n.")
    ci95: tuple[float, float] = Field(description="Wilson score 95% interval of the rate.")

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return self.model_dump(mode="json")


def paired_difference(
    a: TaskOutcomes, b: TaskOutcomes, resamples: int = 10_000, seed: int = 0
) -> PairedDifference:
    """Compare method b with method a, both evaluated on the same tasks in the same order.

    Args:
        a: Method a's outcomes per task: a bool, or a sequence of bools (k samples, its mean).
        b: Method b's outcomes, the same tasks in the same order (its k may differ from a's).
        resamples: Bootstrap resamples. Resample r takes ``n`` task indices drawn uniformly
            with replacement (row r of ``default_rng(seed).integers(0, n, size=(resamples,
            n))``), and the difference of the two methods' mean rates over those indices.
            The interval is ``numpy.quantile`` (linear) at 0.025 and 0.975 of these.
        seed: Seed of the numpy Generator; the same inputs and seed give the same interval.

    Returns:
        The difference ``rate_b - rate_a``, its interval, the discordant counts and p-value.

    Raises:
        ValueError: If a and b differ in length, are empty, or a task has no samples.
    """
    rate_a, rate_b = _task_rates(a, "a"), _task_rates(b, "b")
    if len(rate_a) != len(rate_b):
        raise ValueError(
            f"Paired outcomes need the same tasks: a has {len(rate_a)}, b has {len(rate_b)}."
        )
    if len(rate_a) == 0:
        raise ValueError("Paired outcomes are empty: no task to compare on.")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}.")
    a_wins, b_wins = int(np.sum(rate_a > rate_b)), int(np.sum(rate_b > rate_a))
    return PairedDifference(
        n=len(rate_a),
        rate_a=float(rate_a.mean()),
        rate_b=float(rate_b.mean()),
        difference=float(rate_b.mean() - rate_a.mean()),
        ci95=_paired_bootstrap(rate_b - rate_a, resamples, seed),
        a_wins=a_wins,
        b_wins=b_wins,
        p_value=mcnemar_exact(a_wins, b_wins),
        resamples=resamples,
        seed=seed,
    )


def mcnemar_exact(a_wins: int, b_wins: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    Under no difference each discordant task is a fair coin: p is twice the smaller
    binomial(a_wins + b_wins, 1/2) tail, capped at 1 (1 when nothing is discordant).
    """
    discordant = a_wins + b_wins
    tail = sum(math.comb(discordant, i) for i in range(min(a_wins, b_wins) + 1))
    # Exact integer arithmetic until the one division: no underflow for large counts.
    return min(1.0, 2 * tail / 2**discordant)


def minimum_detectable_difference(
    n: int, discordance: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest true paired difference ``delta = p01 - p10`` detectable with ``n`` paired tasks.

    Connor's sample size for McNemar's test (R. J. Connor, "Sample size for testing
    differences in proportions for the paired-sample design", Biometrics 43(1):207-211,
    1987), with ``psi`` the share of discordant tasks and ``z_x`` the normal quantiles::

        n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2

    solved for delta (the root of the quadratic it gives)::

        delta = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)

    For large n this is ``(z_a + z_b) sqrt(psi / n)``. Capped at ``psi`` (no difference can
    exceed the discordant share). One sample per task; estimate ``psi`` from a pilot, or
    use the :func:`flip_rate` of the same method as its floor.

    Args:
        n: Paired tasks.
        discordance: Expected share of tasks on which the two methods disagree (0 < psi <= 1).
        alpha: Two-sided significance level.
        power: Chance of rejecting when the true difference is the returned one.

    Raises:
        ValueError: If a parameter is out of range, or n is too small for the formula.
    """
    z_a, z_b = _z(alpha, power)
    if not 0 < discordance <= 1:
        raise ValueError(f"discordance must be in (0, 1], not {discordance}.")
    if n - z_a**2 + z_b**2 <= 0:
        raise ValueError(f"n={n} paired tasks are too few for alpha={alpha}, power={power}.")
    root = z_a * math.sqrt(n) + z_b * math.sqrt(n - z_a**2 + z_b**2)
    return min(discordance, math.sqrt(discordance) * root / (n + z_b**2))


def unpaired_mdd(n: int, p: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference detectable between two independent groups of ``n`` tasks.

    The two-proportion z-test's normal approximation with both rates near ``p``
    (e.g. Fleiss, Levin & Paik, *Statistical Methods for Rates and Proportions*, 3rd ed.,
    2003, ch. 4)::

        delta = (z_{1-alpha/2} + z_{power}) sqrt(2 p (1 - p) / n)

    What a comparison that ignores the pairing can detect, for contrast with
    :func:`minimum_detectable_difference` (p = 0.5 is the worst case).

    Raises:
        ValueError: If a parameter is out of range.
    """
    z_a, z_b = _z(alpha, power)
    if n < 1 or not 0 < p < 1:
        raise ValueError(f"unpaired_mdd needs n >= 1 and 0 < p < 1, not n={n}, p={p}.")
    return (z_a + z_b) * math.sqrt(2 * p * (1 - p) / n)


def flip_rate(a: Sequence[bool], b: Sequence[bool]) -> FlipRate:
    """The share of tasks whose outcome differs between two runs of the same method.

    The noise floor of a comparison: run one checkpoint twice with different sampling seeds,
    or train the same method at two seeds, and pass the two runs' outcomes (one per task, the
    same task order). Two methods whose discordance is near this rate are as different as a
    method is from itself. The interval is Wilson's (:func:`wilson_interval`).

    Raises:
        ValueError: If the runs differ in length or are empty.
    """
    if len(a) != len(b):
        raise ValueError(f"Flip rate needs the same tasks: a has {len(a)}, b has {len(b)}.")
    if not a:
        raise ValueError("Flip rate of no tasks: both runs are empty.")
    flips = sum(bool(x) != bool(y) for x, y in zip(a, b, strict=True))
    return FlipRate(n=len(a), flips=flips, rate=flips / len(a), ci95=wilson_interval(flips, len(a)))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (E. B. Wilson, JASA 22:209-212, 1927).

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point
    at 0 or n successes, which matters for flip rates near zero.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1: {successes}/{n}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _task_rates(outcomes: TaskOutcomes, name: str) -> np.ndarray:
    rates = []
    for i, task in enumerate(outcomes):
        if isinstance(task, (str, bytes)):
            raise ValueError(f"Task {i} of {name} is text ({task!r}), not an outcome.")
        if isinstance(task, (Sequence, np.ndarray)):
            if len(task) == 0:
                raise ValueError(f"Task {i} of {name} has no samples.")
            rates.append(sum(bool(x) for x in task) / len(task))
        else:
            rates.append(float(bool(task)))
    return np.asarray(rates, dtype=np.float64)


def _paired_bootstrap(diff: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    # The mean of per-task differences over a resample is exactly the difference of the two
    # methods' means over the same indices: resampling the pairs is resampling the diffs.
    n = len(diff)
    rng = np.random.default_rng(seed)
    rows = max(1, _INDICES_PER_CHUNK // n)
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return (float(lo), float(hi))


def _z(alpha: float, power: float) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), not {alpha} and {power}.")
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2), normal.inv_cdf(power)
