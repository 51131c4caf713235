"""Confidence intervals for accuracies that match the study's design: seeds, then samples.

A cell's results come from S training seeds; seed s has its own true accuracy p_s (seeds of one
configuration learn differently), and its n scored samples are independent draws with mean p_s.
Accuracies are fractions in [0, 1] everywhere. Every function is vectorised: counts may carry
leading axes (for example one per simulated study), with the seeds on the last axis, and the
bounds come back with the leading axes (a plain float when there are none).

There are two things a "model accuracy" can mean, and they need different intervals:

(i)  **these seeds** -- the mean of p_s over the seeds that were trained. Only sample noise
     matters. Interval: `these_seeds_interval`.
(ii) **the seed population** -- the mean accuracy of a new training seed, E[p_s]. Seed-to-seed
     spread matters too, and with three seeds it dominates. Interval: `seed_population_interval`.

The intervals, and why each one (95% coverages measured by exact binomial sums and by the
simulations in tests/test_intervals.py, averaged over true accuracies from 0.02 to 1.0):

* `binomial_interval(k, n)`: the **Jeffreys interval**, the central interval of the
  Beta(k + 1/2, n - k + 1/2) posterior, with the upper bound set to 1 when k = n and the lower
  bound to 0 when k = 0 (Brown, Cai & DasGupta 2001). Its exact coverage, averaged over p in
  (0, 1), is 95.2% at n = 16, 95.0% at n = 48 and 144; within 0.1 of the ceiling or floor it
  averages 95-97%; its worst case is 88-90%, for p within about 1/n of 0 or 1 (every
  interval for a discrete count oscillates so). The alternatives: Clopper-Pearson, the exact
  interval, never undercovers but averages 96-98% (48/48 gives [0.926, 1]); Wilson also
  averages 95% but falls to 85% at p = 0.99, n = 16; mid-p averages 95.2-96.3% with a better
  worst case (92%) but has no closed form. Jeffreys is also a plain function of a real-valued
  k, which the effective counts below need. At the ceiling: 16/16 -> [0.857, 1],
  48/48 -> [0.949, 1], 144/144 -> [0.983, 1]; never zero width while n > 0.

* `these_seeds_interval(k, n)`: the Jeffreys interval for the mean of the seed accuracies, with
  the counts pooled over seeds. With unequal samples per seed it uses the effective counts
  n_eff = S^2 / sum(1 / n_s) and k_eff = mean(k_s / n_s) * n_eff, which give the binomial
  variance of the mean of seed means; with equal n these are the pooled counts. When the p_s
  differ the pooled binomial variance is slightly too large (a sum of binomials with unequal p
  varies less), so the interval errs on the safe side. Simulated coverage 95.5-96.5%.

* `seed_population_interval(k, n)`: the union of two intervals: the t-interval over the S
  seed means (S - 1 degrees of freedom; exact for normal seed means whatever the size of the
  seed-to-seed spread), and `these_seeds_interval` (the mean of the population of seeds cannot
  be known better than these seeds' mean). The union removes the t-interval's zero width when
  every seed scores the same (at the ceiling above all). Needs two seeds; with one the seed
  spread is unknown and the bounds are nan. With three seeds it is conservative when the
  seeds differ by no more than their sample noise (98.5-99% with no spread), nominal when they
  differ a lot (93.8-94.7%): an interval that is never narrower than `these_seeds_interval` and
  stays valid when seeds differ cannot be nominal in both. What three seeds cannot do: cover
  the mean of a population in which seeds rarely but badly fail (one in ten does not learn),
  since three seeds mostly miss such a failure altogether.

* `these_seeds_difference` and `seed_population_difference`: the same two estimands for the
  difference a - b of two groups measured on the same seeds (accuracy at length A minus at
  length B, model X minus model Y). For these seeds: Newcombe's MOVER combination of the two
  groups' `these_seeds_interval`s, which needs the groups' samples to be independent given the
  seeds (if they share samples and their scores go together, it is conservative). Two
  perfect groups of one seed of 48 give [-0.051, 0.051], of three seeds [-0.017, 0.017], not
  [0, 0]. For the seed population: the t-interval over the per-seed differences (pairing
  removes the seed effect the groups share), united with the these-seeds interval as for a
  single group; conservative (96.5-99%), since the shared seed effect cancels and the
  sample-noise floor then weighs more.

Scores are 0/1 for single-answer tasks. A task scoring several items per sample gives
fractional scores; `counts` then sums them (k need not be whole). Any score in [0, 1] with mean
p has variance at most p(1 - p), so the binomial intervals are then wide enough (simulated with
four items per sample: 97.8-99.9%, conservative).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95

Bounds = tuple["np.ndarray | float", "np.ndarray | float"]


# --------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------
def counts(per_seed: Mapping[int, Sequence[float]] | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(k, n) per seed from per-sample scores: one array of scores per seed (a `Cell.per_seed`
    mapping, in seed order, or a list). k is the sum of the scores (the number correct for 0/1
    scores), n their number. Raises ValueError for a score outside [0, 1]."""
    groups = [per_seed[s] for s in sorted(per_seed)] if isinstance(per_seed, Mapping) else list(per_seed)
    arrays = [np.asarray(g, dtype=float).ravel() for g in groups]
    for scores in arrays:
        if np.any((scores < 0) | (scores > 1)) or np.any(np.isnan(scores)):
            raise ValueError("scores must be fractions in [0, 1]")
    return np.array([a.sum() for a in arrays]), np.array([a.size for a in arrays], dtype=float)


def _tail(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return (1 - level) / 2


def _out(low: np.ndarray, high: np.ndarray) -> Bounds:
    """Bounds as floats when they are scalars, arrays otherwise."""
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


# --------------------------------------------------------------------------------------------
# one cell: k of n
# --------------------------------------------------------------------------------------------
def binomial_interval(k, n, level: float = LEVEL) -> Bounds:
    """Jeffreys interval for a proportion from k of n correct (k may be fractional).

    The central `level` interval of Beta(k + 1/2, n - k + 1/2), with the upper bound 1 when
    k = n and the lower bound 0 when k = 0. (nan, nan) where n = 0. Broadcasts k and n.
    """
    tail = _tail(level)
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= k <= n")
    a, b = k + 0.5, np.maximum(n - k, 0.0) + 0.5
    low = np.where(k <= 0, 0.0, stats.beta.ppf(tail, a, b))
    high = np.where(k >= n, 1.0, stats.beta.ppf(1 - tail, a, b))
    empty = n <= 0
    return _out(np.where(empty, np.nan, low), np.where(empty, np.nan, high))


def _seed_means(k, n) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed accuracies (..., S), their mean (...), and the effective number of samples
    (...) whose binomial variance is that of the mean of seed means. With no seeds the mean
    is nan and the effective number 0."""
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    if k.ndim == 0:
        k, n = k[None], n[None]
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("every seed needs n > 0 samples and 0 <= k <= n")
    seeds = k.shape[-1]
    means = k / n
    if seeds == 0:
        return means, np.full(k.shape[:-1], np.nan), np.zeros(k.shape[:-1])
    n_eff = seeds ** 2 / (1 / n).sum(axis=-1)
    return means, means.mean(axis=-1), n_eff


# --------------------------------------------------------------------------------------------
# over seeds
# --------------------------------------------------------------------------------------------
def these_seeds_interval(k, n, level: float = LEVEL) -> Bounds:
    """Interval for the mean true accuracy of the seeds that were trained (estimand (i)).

    k, n: counts per seed, seeds on the last axis (n broadcasts; a scalar is one seed). The
    Jeffreys interval of the effective counts (the pooled counts when n is the same for every
    seed). Only sample noise is in it: it says nothing about seeds not trained.
    """
    _, mean, n_eff = _seed_means(k, n)
    k_eff = np.clip(np.nan_to_num(mean) * n_eff, 0.0, n_eff)
    return binomial_interval(k_eff, n_eff, level)


def _t_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Student t interval for the mean of `values` over the last axis (at least 2 of them)."""
    seeds = values.shape[-1]
    half = stats.t.ppf(1 - _tail(level), seeds - 1) * values.std(axis=-1, ddof=1) / np.sqrt(seeds)
    centre = values.mean(axis=-1)
    return centre - half, centre + half


def seed_population_interval(k, n, level: float = LEVEL) -> Bounds:
    """Interval for the mean accuracy over the population of training seeds (estimand (ii)).

    k, n: counts per seed, seeds on the last axis. The union of the t-interval over the seed
    means (S - 1 degrees of freedom) and `these_seeds_interval`, clipped to [0, 1]; (nan, nan)
    with fewer than two seeds, where the seed-to-seed spread cannot be estimated.
    """
    means, _, _ = _seed_means(k, n)
    if means.shape[-1] < 2:
        nan = np.full(means.shape[:-1], np.nan)
        return _out(nan, nan)
    t_low, t_high = _t_interval(means, level)
    b_low, b_high = these_seeds_interval(k, n, level)
    low = np.clip(np.minimum(t_low, b_low), 0.0, 1.0)
    high = np.clip(np.maximum(t_high, b_high), 0.0, 1.0)
    return _out(low, high)


# --------------------------------------------------------------------------------------------
# paired differences: group a minus group b on the same seeds
# --------------------------------------------------------------------------------------------
def these_seeds_difference(k_a, n_a, k_b, n_b, level: float = LEVEL) -> Bounds:
    """Interval for mean(p_a) - mean(p_b) over the seeds that were trained.

    Counts per seed, seeds on the last axis, for each group. Newcombe's MOVER: the difference
    of the two estimates, minus (plus) the root sum of squares of the distances from each
    estimate to the bound of its `these_seeds_interval` that pulls the difference down (up).
    Assumes the groups' samples are independent given the seeds.
    """
    _, a, _ = _seed_means(k_a, n_a)
    _, b, _ = _seed_means(k_b, n_b)
    a_low, a_high = these_seeds_interval(k_a, n_a, level)
    b_low, b_high = these_seeds_interval(k_b, n_b, level)
    low = a - b - np.sqrt((a - a_low) ** 2 + (b_high - b) ** 2)
    high = a - b + np.sqrt((a_high - a) ** 2 + (b - b_low) ** 2)
    return _out(low, high)


def seed_population_difference(k_a, n_a, k_b, n_b, level: float = LEVEL) -> Bounds:
    """Interval for E[p_a - p_b] over the population of training seeds.

    The union of the t-interval over the per-seed differences of accuracy (S - 1 degrees of
    freedom) and `these_seeds_difference`, clipped to [-1, 1]; (nan, nan) with fewer than two
    seeds.
    """
    means_a, _, _ = _seed_means(k_a, n_a)
    means_b, _, _ = _seed_means(k_b, n_b)
    if means_a.shape[-1] != means_b.shape[-1]:
        raise ValueError("the two groups must be measured on the same seeds")
    diffs = means_a - means_b
    if diffs.shape[-1] < 2:
        nan = np.full(diffs.shape[:-1], np.nan)
        return _out(nan, nan)
    t_low, t_high = _t_interval(diffs, level)
    m_low, m_high = these_seeds_difference(k_a, n_a, k_b, n_b, level)
    return _out(np.clip(np.minimum(t_low, m_low), -1.0, 1.0), np.clip(np.maximum(t_high, m_high), -1.0, 1.0))
