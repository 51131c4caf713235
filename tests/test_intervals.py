"""Coverage of the intervals in `longarch.analysis.intervals`, proved by simulation.

Each check draws synthetic studies with known truths from a fixed-seed generator: training seeds
whose true accuracies p_s spread around a median (on the logit scale: none, moderate sd 0.5,
strong sd 1.0), n = 16 or 48 samples per seed drawn Bernoulli(p_s), 1 or 3 seeds, and counts how
often the 95% interval contains the truth.

Why coverage is averaged over a grid of truths: the coverage of any interval for a binomial
count oscillates with p (the count is discrete, so the set of counts whose interval holds p
jumps as p moves), by several points from one p to the next. A single p therefore says little
about the interval; the average over a spread of truths is the quantity that should be near 95%.
The grid is the deciles 0.1-0.9 with the cells the study cares about most added: the floor
(0.02), just below the ceiling (0.99) and the ceiling itself (1.0). p = 1.0 is covered by every
draw of a sensible interval (its upper bound is 1 at k = n), so it is one point of twelve, and
each truth also gets its own looser check (90-99.5%, 100% at 1.0; wider where said below).
With a seed spread the grid value is the median seed's accuracy; the truth is then the mean of
this study's p_s (these seeds) or the population mean E[p_s] (by quadrature).

With 4,000 draws per truth the standard error of one coverage is about 0.35 points and that of
a grid average about 0.1 points; every check is deterministic (fixed seeds).
"""

from __future__ import annotations

import numpy as np
import pytest

from longarch.analysis import intervals as iv

DRAWS = 4000
GRID = np.array([0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0])
PAIRS = [(p, p) for p in GRID] + list(zip(GRID[1:], GRID[:-1]))  # equal truths, and neighbours
NONE, MODERATE, STRONG = 0.0, 0.5, 1.0  # seed-to-seed sd of the logit of p_s
SHARED = 0.7  # correlation of one seed's logit effects in the two groups of a difference
NOMINAL = (0.93, 0.97)  # the band a grid average must fall in
PER_TRUTH = (0.90, 0.995)  # the band each truth below 1.0 must fall in

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(60)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


# --------------------------------------------------------------------------------------------
# synthetic studies
# --------------------------------------------------------------------------------------------
def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _accuracy(median: np.ndarray, spread: float, z: np.ndarray) -> np.ndarray:
    """p = expit(logit(median) + spread * z); a median of 0 or 1 stays where it is."""
    return 1 / (1 + np.exp(-(_logit(median) + spread * z)))


def population_mean(median: np.ndarray, spread: float) -> np.ndarray:
    """E[p_s] over the population of seeds (Gauss-Hermite quadrature over z)."""
    median = np.asarray(median, dtype=float)
    return (_WEIGHTS * _accuracy(median[..., None], spread, _NODES)).sum(axis=-1)


def draw_study(rng: np.random.Generator, medians: np.ndarray, spread: float, seeds: int,
               n: int, z: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(true p_s, counts k_s), each (truths, DRAWS, seeds): one study per draw and truth."""
    if z is None:
        z = rng.standard_normal((len(medians), DRAWS, seeds))
    p = _accuracy(np.asarray(medians, dtype=float)[:, None, None], spread, z)
    return p, rng.binomial(n, p)


def covered(bounds, truth) -> np.ndarray:
    """Share of draws whose interval holds the truth, per truth: bounds (truths, DRAWS), truth
    (truths,) or (truths, DRAWS)."""
    low, high = bounds
    truth = np.asarray(truth, dtype=float)
    truth = truth[:, None] if truth.ndim == 1 else truth
    eps = 1e-12  # a truth of exactly 1.0 and a bound of 1.0 computed through floats
    return ((low <= truth + eps) & (truth - eps <= high)).mean(axis=-1)


# --------------------------------------------------------------------------------------------
# the measured coverages (also what the report's table was made from)
# --------------------------------------------------------------------------------------------
def cell_coverage(n: int) -> np.ndarray:
    """`binomial_interval` for one cell of n samples, p on the grid."""
    rng = np.random.default_rng([1, n])
    p, k = draw_study(rng, GRID, NONE, 1, n)
    return covered(iv.binomial_interval(k[..., 0], n), p[..., 0])


def these_seeds_coverage(n: int, seeds: int, spread: float) -> np.ndarray:
    """`these_seeds_interval`, truth the mean of this study's p_s."""
    rng = np.random.default_rng([2, n, seeds, int(10 * spread)])
    p, k = draw_study(rng, GRID, spread, seeds, n)
    return covered(iv.these_seeds_interval(k, n), p.mean(axis=-1))


def population_coverage(n: int, spread: float, seeds: int = 3) -> np.ndarray:
    """`seed_population_interval`, truth the population mean E[p_s]."""
    rng = np.random.default_rng([3, n, seeds, int(10 * spread)])
    _, k = draw_study(rng, GRID, spread, seeds, n)
    return covered(iv.seed_population_interval(k, n), population_mean(GRID, spread))


def _paired_study(rng, n, seeds, spread):
    """Both groups of every pair in PAIRS on the same seeds: each seed's logit effect is shared
    by the two groups with correlation SHARED."""
    shape = (len(PAIRS), DRAWS, seeds)
    common = rng.standard_normal(shape)
    own = np.sqrt(1 - SHARED ** 2)
    a, b = (np.array(side) for side in zip(*PAIRS))
    p_a, k_a = draw_study(rng, a, spread, seeds, n, SHARED * common + own * rng.standard_normal(shape))
    p_b, k_b = draw_study(rng, b, spread, seeds, n, SHARED * common + own * rng.standard_normal(shape))
    return a, b, p_a, k_a, p_b, k_b


def difference_coverage(n: int, seeds: int, spread: float, population: bool) -> np.ndarray:
    """`these_seeds_difference` (truth: mean of p_a,s - p_b,s) or `seed_population_difference`
    (truth: E[p_a] - E[p_b]), over the pairs in PAIRS."""
    rng = np.random.default_rng([4, n, seeds, int(10 * spread), population])
    a, b, p_a, k_a, p_b, k_b = _paired_study(rng, n, seeds, spread)
    if population:
        truth = population_mean(a, spread) - population_mean(b, spread)
        return covered(iv.seed_population_difference(k_a, n, k_b, n), truth)
    return covered(iv.these_seeds_difference(k_a, n, k_b, n), (p_a - p_b).mean(axis=-1))


def check(coverage: np.ndarray, truths_at_ceiling: np.ndarray, band=NOMINAL, per_truth=PER_TRUTH):
    """The grid average in `band`; each truth in `per_truth`, a truth at the ceiling always."""
    assert band[0] <= coverage.mean() <= band[1], (coverage.mean(), np.round(coverage, 3))
    assert np.all(coverage[truths_at_ceiling] == 1.0), np.round(coverage, 3)
    rest = coverage[~truths_at_ceiling]
    assert np.all((per_truth[0] <= rest) & (rest <= per_truth[1])), np.round(coverage, 3)


AT_CEILING = GRID == 1.0
PAIRS_AT_CEILING = np.array([a == b == 1.0 for a, b in PAIRS])


# --------------------------------------------------------------------------------------------
# coverage
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [16, 48])
def test_binomial_interval_covers(n):
    check(cell_coverage(n), AT_CEILING)


@pytest.mark.parametrize("spread", [NONE, MODERATE, STRONG])
@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("n", [16, 48])
def test_these_seeds_interval_covers(n, seeds, spread):
    check(these_seeds_coverage(n, seeds, spread), AT_CEILING)


# The population interval is the union of the t-interval over 3 seed means and the these-seeds
# interval. The t-interval alone is exact for normal seed means whatever the seed spread; the
# union can only add coverage, and it does when the seeds differ by no more than their sample
# noise: with no spread, or the moderate spread at n = 16, it covers 98-99%. That is the price of
# never being narrower than the these-seeds interval while staying valid when seeds do differ
# (an interval built to be nominal with no spread undercovers with a strong one); those
# configurations get the honest band, 95-99.5%. With a strong spread the t-interval carries the
# width and the average is nominal. Per truth, a strong spread brings the t-interval's own
# weakness at three seeds: skewed seed accuracies near 0.1 and 0.9 (about 89-91%).
POPULATION_PER_TRUTH = (0.85, 1.0)
CONSERVATIVE = (0.95, 0.995)


@pytest.mark.parametrize("n, spread, band", [
    (16, NONE, CONSERVATIVE), (48, NONE, CONSERVATIVE),
    (16, MODERATE, CONSERVATIVE), (48, MODERATE, NOMINAL),
    (16, STRONG, NOMINAL), (48, STRONG, NOMINAL),
])
def test_seed_population_interval_covers(n, spread, band):
    check(population_coverage(n, spread), AT_CEILING, band, per_truth=POPULATION_PER_TRUTH)


@pytest.mark.parametrize("spread", [NONE, MODERATE, STRONG])
@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("n", [16, 48])
def test_these_seeds_difference_covers(n, seeds, spread):
    # per truth up to 100%: a difference of two cells at or next to the ceiling is covered in
    # (nearly) every draw, as is a single cell at the ceiling
    check(difference_coverage(n, seeds, spread, population=False), PAIRS_AT_CEILING, per_truth=(0.90, 1.0))


# The same union for a difference is more conservative still: the effect a seed shares between
# the two groups cancels in the per-seed differences, so the sample noise (the these-seeds
# floor) weighs more. Only the strong spread at n = 48 is nominal.
@pytest.mark.parametrize("n, spread, band", [
    (16, NONE, CONSERVATIVE), (48, NONE, CONSERVATIVE),
    (16, MODERATE, CONSERVATIVE), (48, MODERATE, CONSERVATIVE),
    (16, STRONG, CONSERVATIVE), (48, STRONG, NOMINAL),
])
def test_seed_population_difference_covers(n, spread, band):
    check(difference_coverage(n, 3, spread, population=True), PAIRS_AT_CEILING, band,
          per_truth=POPULATION_PER_TRUTH)


def two_stage_bootstrap(groups: list[np.ndarray], rng: np.random.Generator, resamples: int = 1000,
                        level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap the report used before these intervals: seeds resampled with
    replacement, then the samples within each drawn seed; the mean over all drawn samples.
    For 0/1 scores, resampling a seed's n samples is drawing Binomial(n, its accuracy)."""
    sizes = np.array([g.size for g in groups])
    accuracies = np.array([g.mean() for g in groups])
    drawn = rng.integers(len(groups), size=(resamples, len(groups)))  # (R, S) seed indices
    correct = rng.binomial(sizes[drawn], accuracies[drawn])           # (R, S)
    means = correct.sum(axis=1) / sizes[drawn].sum(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def test_bootstrap_undercovers():
    """Why this module exists: the two-stage bootstrap (seeds resampled, then samples) misses.

    At p = 0.99 with 3 seeds of 16 samples all 48 are correct in 62% of studies, and the
    bootstrap then returns [1, 1]; in the middle with a strong seed spread its interval is too
    narrow for the population of seeds. Small on purpose: 400 studies each (a standard error of
    about 2 points), far below 93% in both.
    """
    rng = np.random.default_rng(5)
    for median, spread, below in [(0.99, NONE, 0.6), (0.5, STRONG, 0.93)]:
        truth = float(population_mean(np.array(median), spread))
        hits = 0
        for _ in range(400):
            p = _accuracy(np.array(median), spread, rng.standard_normal(3))
            low, high = two_stage_bootstrap([(rng.random(16) < ps).astype(float) for ps in p], rng)
            hits += low <= truth <= high
        assert hits / 400 < below, (median, spread, hits / 400)


def test_fractional_scores_are_covered():
    """Several items per sample (four queries): the mean of four 0/1 items, the items of one
    sample going together (a per-sample difficulty drawn from Beta). The sum of such scores
    varies less than a binomial count, so the intervals are conservative, not short."""
    rng = np.random.default_rng(8)
    truths = np.array([0.02, 0.3, 0.5, 0.8, 0.99])  # the mean of each item
    difficulty = rng.beta(truths[:, None, None, None] * 0.5, (1 - truths[:, None, None, None]) * 0.5,
                          size=(len(truths), 1000, 3, 16))
    k = (rng.binomial(4, difficulty) / 4).sum(axis=-1)  # (truths, 1000, 3 seeds)
    coverage = covered(iv.these_seeds_interval(k, 16), truths)
    assert np.all(coverage >= 0.95), np.round(coverage, 3)


# --------------------------------------------------------------------------------------------
# the ceiling, widths and shapes
# --------------------------------------------------------------------------------------------
def test_ceiling_bounds():
    # Jeffreys: 48/48 -> [0.949, 1], 16/16 -> [0.857, 1]. Clopper-Pearson, for comparison, gives
    # 0.025 ** (1 / 48) = 0.926 for 48/48: exact but conservative (its coverage averages 97%).
    assert iv.binomial_interval(48, 48) == pytest.approx((0.9493, 1.0), abs=1e-4)
    assert iv.binomial_interval(16, 16) == pytest.approx((0.8568, 1.0), abs=1e-4)
    assert iv.binomial_interval(0, 48) == pytest.approx((0.0, 1 - 0.9493), abs=1e-4)
    assert 0.025 ** (1 / 48) == pytest.approx(0.926, abs=1e-3)
    # three seeds, every one perfect: the pooled 144 of 144 for these seeds, the same for the
    # population (the t-interval would be [1, 1]), and a difference of two perfect groups
    assert iv.these_seeds_interval([48, 48, 48], 48)[0] == pytest.approx(0.9827, abs=1e-4)
    assert iv.seed_population_interval([48, 48, 48], 48) == iv.these_seeds_interval([48, 48, 48], 48)
    assert iv.these_seeds_difference(48, 48, 48, 48) == pytest.approx((-0.0507, 0.0507), abs=1e-4)


def test_never_zero_width():
    for n in range(1, 61):
        low, high = iv.binomial_interval(np.arange(n + 1), n)
        assert np.all(high - low > 0.01)
    ties = np.repeat(np.arange(17)[:, None], 3, axis=1)  # (17, 3): every seed k of 16, k = 0..16
    for bounds in (iv.these_seeds_interval(ties, 16), iv.seed_population_interval(ties, 16),
                   iv.these_seeds_difference(ties, 16, ties, 16),
                   iv.seed_population_difference(ties, 16, ties[::-1], 16)):
        assert np.all(bounds[1] - bounds[0] > 0.01)
    assert all(np.isnan(iv.binomial_interval(0, 0)))
    assert all(np.isnan(iv.these_seeds_interval([], [])))


def width(bounds):
    return np.subtract(bounds[1], bounds[0])


def test_population_is_wider_than_these_seeds():
    # the population interval always contains the these-seeds one, and is wider when seeds differ
    rng = np.random.default_rng(6)
    _, k = draw_study(rng, np.array([0.5, 0.8, 0.99]), STRONG, 3, 48)
    these = iv.these_seeds_interval(k, 48)
    population = iv.seed_population_interval(k, 48)
    assert np.all(population[0] <= these[0]) and np.all(population[1] >= these[1])
    assert np.all(width(population).mean(axis=-1) > 1.5 * width(these).mean(axis=-1))
    a, b = [30, 40, 47], [20, 22, 41]  # counts of 48 on three seeds that differ
    assert width(iv.seed_population_interval(a, 48)) > width(iv.these_seeds_interval(a, 48)) + 0.1
    assert width(iv.seed_population_difference(a, 48, b, 48)) > width(iv.these_seeds_difference(a, 48, b, 48)) + 0.1


def test_shapes_and_inputs():
    assert all(np.isnan(iv.seed_population_interval([16], 16)))  # one seed: no seed spread to estimate
    assert iv.these_seeds_interval([12], 16) == iv.binomial_interval(12, 16)
    # pooled when n is equal; with unequal n the effective counts of the mean of seed means:
    # (8/16 + 48/48) / 2 = 0.75 of n_eff = 2^2 / (1/16 + 1/48) = 48
    assert iv.these_seeds_interval([12, 14], 16) == pytest.approx(iv.binomial_interval(26, 32))
    assert iv.these_seeds_interval([8, 48], [16, 48]) == pytest.approx(iv.binomial_interval(36, 48))
    k, n = iv.counts({2: [1.0, 0.0, 1.0], 1: [1.0, 1.0]})
    assert k.tolist() == [2.0, 2.0] and n.tolist() == [2.0, 3.0]  # in seed order
    with pytest.raises(ValueError):
        iv.counts([[0.5, 1.2]])
    with pytest.raises(ValueError):
        iv.binomial_interval(5, 4)
    with pytest.raises(ValueError):
        iv.binomial_interval(1, 4, level=95)
    with pytest.raises(ValueError):
        iv.seed_population_difference([1, 2, 3], 4, [1, 2], 4)
