"""The statistics of a study's verdicts against hand computations: the matched-KL gap with the KL matching
re-estimated in every resample, and the Student-t interval over the seeds' own means."""

import math

import numpy as np
import pytest
from scipy import stats

from warp_lightning.eval.stats import (
    CONTRADICTED,
    HOLDS,
    UNRESOLVED,
    Difference,
    _interp_rows,
    combined_verdict,
    judged_mde,
    matched_kl_difference_bootstrap,
    matched_kl_values,
    seed_t_interval,
)


def test_interp_rows_is_np_interp_row_by_row():
    rng = np.random.default_rng(0)
    xp = np.sort(rng.uniform(0, 10, (4, 3, 6)), -1)
    fp = rng.normal(size=(4, 3, 6))
    x = rng.uniform(-1, 11, (4, 3, 5))  # outside the range too: clamped as np.interp
    got = _interp_rows(x, xp, fp)
    want = np.array([[np.interp(x[i, j], xp[i, j], fp[i, j]) for j in range(3)] for i in range(4)])
    assert np.allclose(got, want)


def test_matched_kl_values_by_hand():
    """A: points at KL 0 and 10 with values 0 and 1; B: one point at KL 4 with value 0.3 -> A there is 0.4: gap 0.1.
    Two B seeds at KL 2 and 6 (values 0.1, 0.5): matched at their mean KL 4 -> 0.4 - 0.3 = 0.1 again."""
    p = 3
    a_kl = np.array([[[0.0] * p, [10.0] * p]])
    a_vals = np.array([[[0.0] * p, [1.0] * p]])
    full = np.full((1, p), 1 / p)
    gap = matched_kl_values(a_vals, a_kl, np.full((1, 1, p), 0.3), np.full((1, 1, p), 4.0), full, [[0]], [[0]])
    assert gap[0] == pytest.approx(0.1)
    b_vals = np.array([[[0.1] * p], [[0.5] * p]])
    b_kl = np.array([[[2.0] * p], [[6.0] * p]])
    assert matched_kl_values(a_vals, a_kl, b_vals, b_kl, full, [[0]], [[0, 1]])[0] == pytest.approx(0.1)
    # per prompt KL 2, 4, 6 at B: the point's KL is their mean, 4, not each prompt's own
    b_kl = np.array([[[2.0, 4.0, 6.0]]])
    assert matched_kl_values(a_vals, a_kl, np.full((1, 1, p), 0.3), b_kl, full, [[0]], [[0]])[0] == pytest.approx(0.1)


def test_the_matching_is_re_estimated_in_every_resample():
    """B's KL varies a lot from prompt to prompt while its reward does not: with the matching held fixed the
    interval would only see the rewards' noise; re-estimated, the uncertainty of B's KL moves A's matched value
    (A's reward rises 0.05 per nat), and the interval is wider than the fixed-KL one."""
    rng = np.random.default_rng(1)
    p = 200
    a_kl = np.stack([np.full(p, 0.0), np.full(p, 5.0), np.full(p, 10.0)])[None]
    a_vals = 0.3 + 0.05 * a_kl + rng.normal(0, 0.01, (1, 3, p))
    b_kl_noisy = rng.exponential(5.0, (1, 1, p))
    b_vals = np.full((1, 1, p), 0.5) + rng.normal(0, 0.01, (1, 1, p))
    noisy = matched_kl_difference_bootstrap(a_vals, a_kl, b_vals, b_kl_noisy, n_resamples=2000)
    fixed = matched_kl_difference_bootstrap(a_vals, a_kl, b_vals, np.full((1, 1, p), b_kl_noisy.mean()),
                                            n_resamples=2000)
    assert noisy.mean == pytest.approx(fixed.mean)
    assert (noisy.high - noisy.low) > 3 * (fixed.high - fixed.low)
    # the spread the KL's own standard error implies: 0.05 per nat x SE(mean KL)
    se_kl = b_kl_noisy.std(ddof=1) / math.sqrt(p)
    assert noisy.se == pytest.approx(math.hypot(0.05 * se_kl, fixed.se), rel=0.2)


def test_seed_t_interval_by_hand():
    # Welch: a = 1, 2, 3; b = 0, 0, 1: difference 5/3, SE^2 = 1/3 + 1/9 = 4/9, df = (4/9)^2 / ((1/9)/2 + (1/81)/2) = 3.2
    t = seed_t_interval([1, 2, 3], [0, 0, 1])
    assert t["mean"] == pytest.approx(5 / 3) and t["df"] == pytest.approx(3.2)
    assert t["high"] - t["mean"] == pytest.approx(stats.t.ppf(0.975, 3.2) * 2 / 3)
    # paired: differences 1, 1, 2: mean 4/3, sd sqrt(1/3), SE 1/3, t_{0.975, 2} = 4.302653
    t = seed_t_interval([1, 2, 4], [0, 1, 2], paired=True)
    assert t["mean"] == pytest.approx(4 / 3) and t["df"] == 2
    assert t["high"] - t["mean"] == pytest.approx(4.302653 / 3, rel=1e-6)
    assert math.isnan(seed_t_interval([1.0], [0.0, 1.0])["low"])  # one seed: the spread between seeds is unknown


def test_the_verdict_takes_the_wider_interval():
    d = Difference(0.1, 0.05, 0.15, 0.02, 100, (3, 3))
    assert combined_verdict(d, None) == HOLDS
    assert combined_verdict(d, {"mean": 0.1, "low": -0.02, "high": 0.22, "df": 4}) == UNRESOLVED
    assert combined_verdict(d, {"mean": 0.1, "low": math.nan, "high": math.nan, "df": 0}) == HOLDS
    below = Difference(-0.1, -0.15, -0.05, 0.02, 100, (3, 3))
    assert combined_verdict(below, {"mean": -0.1, "low": -0.2, "high": -0.01, "df": 4}) == CONTRADICTED


def test_the_smallest_detectable_effect_is_that_of_the_interval_judged():
    """MDE = (z_0.975 + z_0.80) x SE for the bootstrap; where the seeds' t interval is there, (t_0.975 + t_0.80) x its
    SE with its degrees of freedom, the larger of the two (the verdict judges by the wider interval)."""
    d = Difference(0.0, -0.02, 0.02, 0.01, 100, (3, 3))
    assert judged_mde(d, None) == pytest.approx(0.028016, rel=1e-4) and d.mde == pytest.approx(0.028016, rel=1e-4)
    # df 2, half-width 0.1: SE = 0.1 / 4.302653 = 0.023241, MDE = (4.302653 + 1.060660) x SE = 0.124652
    assert judged_mde(d, {"mean": 0.0, "low": -0.1, "high": 0.1, "df": 2.0}) == pytest.approx(0.124652, rel=1e-5)
    # a t interval narrower than the bootstrap's leaves the bootstrap's MDE; none (one seed) leaves it too
    assert judged_mde(d, {"mean": 0.0, "low": -0.001, "high": 0.001, "df": 4.0}) == pytest.approx(d.mde)
    assert judged_mde(d, {"mean": 0.0, "low": math.nan, "high": math.nan, "df": 0.0}) == pytest.approx(d.mde)
    assert math.isnan(judged_mde(None, None))
