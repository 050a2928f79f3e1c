"""Statistics and tables of the evaluation (no torch: `report` imports it).

- `mean_ci95`: the Student-t interval of a mean (scipy.stats.t), for a handful of independent values (seeds);
- `bootstrap_mean`, `paired_difference`: percentile bootstrap intervals over prompts (scipy.stats.bootstrap),
  and over the training seeds of an arm when it has several (two-level resampling, `hierarchical_bootstrap`);
- `verdict`: holds / contradicted / unresolved at this sample size, with the smallest difference the design
  could have detected (`Difference.mde`; `judged_mde` for the interval a verdict judges by, the seeds' t included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
POWER = 0.80
N_RESAMPLES = 9999
HOLDS, CONTRADICTED, UNRESOLVED = "holds", "contradicted", "unresolved at this sample size"
NOT_MEASURED = "not measured"


def t975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mde_factor(level: float = LEVEL, power: float = POWER) -> float:
    """z_{1 - alpha/2} + z_{power}: 1.96 + 0.84 = 2.80 for a two-sided 95% test with 80% power."""
    from scipy import stats

    return float(stats.norm.ppf(1 - (1 - level) / 2) + stats.norm.ppf(power))


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of the mean (Student t over the values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t975(n - 1) * (var / n) ** 0.5


@dataclass
class Difference:
    """A mean (or a difference of means) with its 95% percentile-bootstrap interval.

    `se` is the bootstrap standard error; `mde = (z_0.975 + z_0.80) * se`, the smallest true difference a
    two-sided 5% test on this design detects with 80% power (about 1.43 half-widths for a symmetric interval).
    `n` is the number of prompts, `seeds` the number of training seeds of each side.
    """
    mean: float
    low: float
    high: float
    se: float
    n: int
    seeds: tuple[int, int] = (1, 1)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def mde(self) -> float:
        return mde_factor() * self.se

    def as_dict(self, prefix: str = "") -> dict:
        out = {**asdict(self), "half_width": self.half_width, "mde": self.mde}
        out["seeds"] = list(self.seeds)
        return {f"{prefix}{k}": v for k, v in out.items()}


def _nan_difference(mean: float, n: int, seeds=(1, 1)) -> Difference:
    return Difference(mean, float("nan"), float("nan"), float("nan"), n, tuple(seeds))


def bootstrap_mean(values, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Difference:
    """The mean of per-prompt values with its 95% percentile-bootstrap interval over prompts."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return _nan_difference(float(x.mean()) if len(x) else float("nan"), len(x))
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=LEVEL, method="percentile",
                          rng=np.random.default_rng(seed))
    return Difference(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                      float(res.standard_error), len(x))


def hierarchical_bootstrap(a, b, paired_seeds: bool = False, seed: int = 0,
                           n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """Bootstrap distribution of mean(a) - mean(b) for `a` [Sa, P], `b` [Sb, P]: per-prompt values of each
    training seed of two arms, on the same P prompts (with the same sampling random numbers).

    Each resample draws P prompts with replacement, shared by both arms (the comparison is paired over prompts),
    then the seeds of each arm with replacement: independently per arm, or, with `paired_seeds` (the same runs
    seen two ways, e.g. SLERP and linear merges of the same theta_m; Sa == Sb), the same seeds for both.
    scipy.stats.bootstrap resamples one level only, hence this loop over the two.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    (sa, p), (sb, pb) = a.shape, b.shape
    if p != pb or (paired_seeds and sa != sb):
        raise ValueError(f"arms of shapes {a.shape} and {b.shape} cannot be compared")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, 1000):
        size = min(1000, n_resamples - start)
        weights = rng.multinomial(p, np.full(p, 1 / p), size=size) / p  # how often each prompt is drawn
        mean_a, mean_b = a @ weights.T, b @ weights.T  # [S, size]: each seed's mean over the drawn prompts
        cols = np.arange(size)
        pick_a = rng.integers(0, sa, (sa, size))
        pick_b = pick_a if paired_seeds else rng.integers(0, sb, (sb, size))
        out.append(mean_a[pick_a, cols].mean(0) - mean_b[pick_b, cols].mean(0))
    return np.concatenate(out)


def paired_difference(a, b, paired_seeds: bool = False, seed: int = 0,
                      n_resamples: int = N_RESAMPLES) -> Difference:
    """mean(a) - mean(b) with its 95% percentile-bootstrap interval.

    `a`, `b`: per-prompt values on the same prompts (1-d, one training seed), or [seeds, prompts] matrices. With
    one seed on each side (or `paired_seeds` and one seed) the interval is scipy.stats.bootstrap's over prompts of
    the per-prompt differences; with several, `hierarchical_bootstrap` resamples seeds too.
    """
    from scipy import stats

    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired values need the same prompts: {a.shape[1]} vs {b.shape[1]}")
    mean, n, seeds = float(a.mean() - b.mean()), a.shape[1], (a.shape[0], b.shape[0])
    if n < 2:
        return _nan_difference(mean, n, seeds)
    if seeds == (1, 1):
        res = stats.bootstrap((a[0] - b[0],), np.mean, n_resamples=n_resamples, confidence_level=LEVEL,
                              method="percentile", rng=np.random.default_rng(seed))
        low, high, se = res.confidence_interval.low, res.confidence_interval.high, res.standard_error
    else:
        dist = hierarchical_bootstrap(a, b, paired_seeds, seed, n_resamples)
        alpha = (1 - LEVEL) / 2
        low, high = np.quantile(dist, [alpha, 1 - alpha])
        se = dist.std(ddof=1)
    return Difference(mean, float(low), float(high), float(se), n, seeds)


def verdict(diff: Difference | None) -> str:
    """"A beats B" from the interval of mean(A) - mean(B): holds when the whole 95% interval is above 0,
    contradicted when it is below 0, unresolved at this sample size otherwise (or without an interval)."""
    if diff is None or math.isnan(diff.low) or math.isnan(diff.high):
        return UNRESOLVED
    if diff.low > 0:
        return HOLDS
    if diff.high < 0:
        return CONTRADICTED
    return UNRESOLVED


def combine_verdicts(verdicts: list[str]) -> str:
    """A claim made of several comparisons (e.g. one per baseline or per iteration) holds when each of them
    holds, is contradicted when one is, and is unresolved otherwise."""
    if not verdicts:
        return NOT_MEASURED
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else UNRESOLVED


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the completions (word level)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def _missing(x) -> bool:
    """No value: None, NaN, or a string (metrics.json writes a NaN as "nan")."""
    return x is None or isinstance(x, str) or (isinstance(x, float) and math.isnan(x))


def fmt_ci(mean: float, ci: float, digits: int = 3) -> str:
    """`mean ± half-width` (the half-width of the 95% interval), or the mean alone without an interval."""
    if _missing(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def fmt_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """`+0.123 [+0.100, +0.150]`: a difference and its 95% interval (signed)."""
    if _missing(low) or _missing(high):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])


def results_table(results: dict[str, dict]) -> str:
    """Experiment 1's table: model | proxy reward | judge | both minus SFT (paired, 95% interval) | KL | length |
    distinct-1/2. Means carry the half-width of their 95% interval; the SFT row has no difference."""
    def diff(m: dict, key: str) -> str:
        if f"{key}_diff_mean" not in m:
            return "—"
        return fmt_interval(m[f"{key}_diff_mean"], m[f"{key}_diff_low"], m[f"{key}_diff_high"])

    # a sum reward: each term's mean beside the total, in the order of the first model's figures
    terms = [k[: -len("_mean")] for k in next(iter(results.values()), {}) if k.startswith("reward/") and k.endswith("_mean")]
    rows = [[name, fmt_ci(m["reward_mean"], m["reward_ci95"]),
             *(fmt_ci(m[f"{t}_mean"], m[f"{t}_ci95"]) if f"{t}_mean" in m else "—" for t in terms),
             fmt_ci(m["judge_mean"], m["judge_ci95"]) if "judge_mean" in m else "—",
             diff(m, "reward"), diff(m, "judge"), fmt_ci(m["kl_mean"], m["kl_ci95"], 2),
             fmt_ci(m["completion_length_mean"], m["completion_length_ci95"], 1),
             f"{m['distinct_1']:.3f} / {m['distinct_2']:.3f}"] for name, m in results.items()]
    return markdown_table(["model", "mean reward (proxy)", *(f"mean {t}" for t in terms), "mean judge",
                           "reward - SFT (paired)", "judge - SFT (paired)", "mean KL(pi || pi_sft)",
                           "completion length", "distinct-1 / distinct-2"], rows)


# ---- per-prompt rows of the protocol -----------------------------------------------------------------------

def per_prompt(rows: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """(prompt indices in increasing order, the mean of `key` over each prompt's completions): the unit that
    is resampled, and that lines up across models evaluated on the same prompts."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        sums.setdefault(int(r["prompt_index"]), []).append(float(r[key]))
    ids = sorted(sums)
    return ids, np.array([sum(sums[i]) / len(sums[i]) for i in ids])


def summarize(rows: list[dict], keys: dict[str, str], seed: int = 0) -> dict:
    """`{name}_mean`, `{name}_ci95` (half-width of the 95% percentile-bootstrap interval over prompts),
    `{name}_low`, `{name}_high` and `{name}_per_subsample` (the spread of WARP.md) for each `key: name`."""
    out = {}
    subsamples = sorted({r.get("subsample", 0) for r in rows})
    for key, name in keys.items():
        if not rows or key not in rows[0]:
            continue
        est = bootstrap_mean(per_prompt(rows, key)[1], seed)
        out.update({f"{name}_mean": est.mean, f"{name}_ci95": est.half_width, f"{name}_low": est.low,
                    f"{name}_high": est.high})
        out[f"{name}_per_subsample"] = [float(np.mean([r[key] for r in rows if r.get("subsample", 0) == s]))
                                        for s in subsamples]
    return out


def compare_rows(rows_a: list[dict], rows_b: list[dict], key: str, seed: int = 0) -> Difference:
    """The paired difference mean(a) - mean(b) of `key` for two models evaluated on the same prompts."""
    ids_a, a = per_prompt(rows_a, key)
    ids_b, b = per_prompt(rows_b, key)
    if ids_a != ids_b:
        raise ValueError("paired comparison of models evaluated on different prompts")
    return paired_difference(a, b, seed=seed)


# ---- comparisons at matched KL and over few seeds ---------------------------------------------------------

def _interp_rows(x, xp, fp):
    """np.interp for many rows at once: x [..., X] targets, xp and fp [..., K] (xp increasing); clamped at the ends
    as np.interp is."""
    k = xp.shape[-1]
    idx = np.clip((xp[..., None, :] <= x[..., :, None]).sum(-1) - 1, 0, k - 2)
    x0, x1 = np.take_along_axis(xp, idx, -1), np.take_along_axis(xp, idx + 1, -1)
    f0, f1 = np.take_along_axis(fp, idx, -1), np.take_along_axis(fp, idx + 1, -1)
    width = np.where(x1 > x0, x1 - x0, 1.0)
    frac = np.clip(np.where(x1 > x0, (x - x0) / width, 0.0), 0.0, 1.0)
    return f0 + frac * (f1 - f0)


def matched_kl_values(a_vals, a_kl, b_vals, b_kl, prompt_w, pick_a, pick_b) -> np.ndarray:
    """mean(A at B's KL) - mean(B) for R resamples at once.

    a_vals, a_kl [Sa, Ka, P]: per-prompt value and KL of each point of curve A, per seed; b_vals, b_kl [Sb, Kb, P]:
    the points of B to match (the same positions for every B seed). prompt_w [R, P]: each resample's prompt weights
    (summing to 1); pick_a [R, Sa], pick_b [R, Sb]: its seeds. Every mean is taken on the resample, the KL of each
    point too: B's KL at each position (mean over its seeds), A's curve (its points ordered by their KL), and A
    interpolated linearly in KL at B's KLs, so that the matching is estimated anew in every resample."""
    ma_kl, ma_v = np.einsum("skp,rp->rsk", a_kl, prompt_w), np.einsum("skp,rp->rsk", a_vals, prompt_w)
    mb_kl, mb_v = np.einsum("skp,rp->rsk", b_kl, prompt_w), np.einsum("skp,rp->rsk", b_vals, prompt_w)
    rows = np.arange(len(prompt_w))[:, None]
    ma_kl, ma_v = ma_kl[rows, pick_a], ma_v[rows, pick_a]  # [R, Sa, Ka]
    target = mb_kl[rows, pick_b].mean(1)  # [R, Kb]: B's KL at each of its positions
    b_mean = mb_v[rows, pick_b].mean((1, 2))
    order = np.argsort(ma_kl, -1)
    kl_sorted, v_sorted = np.take_along_axis(ma_kl, order, -1), np.take_along_axis(ma_v, order, -1)
    at = _interp_rows(np.broadcast_to(target[:, None, :], (*ma_kl.shape[:2], target.shape[-1])), kl_sorted, v_sorted)
    return at.mean((1, 2)) - b_mean


def matched_kl_difference_bootstrap(a_vals, a_kl, b_vals, b_kl, paired_seeds: bool = False, seed: int = 0,
                                    n_resamples: int = N_RESAMPLES) -> Difference:
    """Curve A above the points of B at matched KL (the inputs of `matched_kl_values`): the estimate on the data,
    and its 95% percentile interval from a two-level bootstrap (prompts shared by both arms, then each arm's seeds;
    the same seeds for both with `paired_seeds`), the KL matching re-estimated in every resample."""
    a_vals, a_kl, b_vals, b_kl = (np.asarray(x, float) for x in (a_vals, a_kl, b_vals, b_kl))
    sa, sb, p = a_vals.shape[0], b_vals.shape[0], a_vals.shape[-1]
    if paired_seeds and sa != sb:
        raise ValueError(f"paired seeds need as many seeds on both sides: {sa} vs {sb}")
    full = np.full((1, p), 1 / p)
    mean = float(matched_kl_values(a_vals, a_kl, b_vals, b_kl, full, np.arange(sa)[None], np.arange(sb)[None])[0])
    if p < 2:
        return _nan_difference(mean, p, (sa, sb))
    rng = np.random.default_rng(seed)
    dist = []
    for start in range(0, n_resamples, 500):
        size = min(500, n_resamples - start)
        w = rng.multinomial(p, np.full(p, 1 / p), size=size) / p
        pick_a = rng.integers(0, sa, (size, sa))
        pick_b = pick_a if paired_seeds else rng.integers(0, sb, (size, sb))
        dist.append(matched_kl_values(a_vals, a_kl, b_vals, b_kl, w, pick_a, pick_b))
    dist = np.concatenate(dist)
    low, high = np.quantile(dist, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return Difference(mean, float(low), float(high), float(dist.std(ddof=1)), p, (sa, sb))


def seed_t_interval(per_seed_a, per_seed_b, paired: bool = False) -> dict:
    """mean(A) - mean(B) over the arms' seeds (each seed's mean over the prompts) with a 95% Student-t interval:
    a paired t over per-seed differences when both sides are the same runs seen two ways (`paired`), else Welch's
    (independent arms). NaN bounds with fewer than 2 seeds on a side: between-seed spread unknown.

    Why beside the bootstrap: with 3-5 seeds, resampling the seeds draws from those few values only and its interval
    is too narrow; the t quantile with its few degrees of freedom pays for them."""
    from scipy import stats

    a, b = np.asarray(per_seed_a, float), np.asarray(per_seed_b, float)
    diff = float(a.mean() - b.mean())
    nan = {"mean": diff, "low": math.nan, "high": math.nan, "df": 0.0}
    if paired:
        d = a - b
        if len(d) < 2:
            return nan
        half = float(stats.t.ppf(0.975, len(d) - 1)) * d.std(ddof=1) / math.sqrt(len(d))
        return {"mean": diff, "low": diff - half, "high": diff + half, "df": float(len(d) - 1)}
    if len(a) < 2 or len(b) < 2:
        return nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return {"mean": diff, "low": diff, "high": diff, "df": float(len(a) + len(b) - 2)}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(va + vb)
    return {"mean": diff, "low": diff - half, "high": diff + half, "df": float(df)}


def wider_interval(diff: Difference | None, seed_t: dict | None) -> Difference | None:
    """The bootstrap interval widened to the seeds' t interval where that exists (what the verdicts judge by)."""
    if diff is None or seed_t is None or math.isnan(seed_t["low"]):
        return diff
    return Difference(diff.mean, min(diff.low, seed_t["low"]), max(diff.high, seed_t["high"]), diff.se, diff.n,
                      diff.seeds)


def judged_mde(diff: Difference | None, seed_t: dict | None) -> float:
    """The smallest true difference the interval a verdict judges by (`wider_interval`) detects with 80% power in a
    two-sided 5% test: the larger of the bootstrap's (`Difference.mde`, z quantiles) and the seeds' t interval's,
    (t_0.975 + t_0.80 with its degrees of freedom) x its standard error (half-width / t_0.975). With 3 seeds a side
    the t interval is often the wider, and its MDE with 2-4 degrees of freedom is far above the bootstrap's."""
    if diff is None:
        return math.nan
    t_mde = seed_t_mde(seed_t)
    return float(diff.mde if math.isnan(t_mde) else max(diff.mde, t_mde))


def seed_t_mde(seed_t: dict | None) -> float:
    """The smallest true difference `seed_t_interval`'s interval detects with 80% power in a two-sided 5% test:
    (t_0.975 + t_0.80, with its degrees of freedom) x its standard error (half-width / t_0.975). NaN without an
    interval (fewer than 2 seeds a side)."""
    from scipy import stats

    if seed_t is None or math.isnan(seed_t["low"]) or seed_t.get("df", 0) <= 0:
        return math.nan
    df, half = float(seed_t["df"]), (seed_t["high"] - seed_t["low"]) / 2
    crit = float(stats.t.ppf(1 - (1 - LEVEL) / 2, df))
    return float((crit + float(stats.t.ppf(POWER, df))) * half / crit)


def combined_verdict(diff: Difference | None, seed_t: dict | None) -> str:
    """The verdict of the wider of the bootstrap interval and the seeds' t interval (where the t interval exists)."""
    return verdict(wider_interval(diff, seed_t))
