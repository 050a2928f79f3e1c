"""The verdicts of the `merges` study (conf/study/merges.yaml): how many runs to merge, how, and in what order.

Each job trains one WARP iteration of 4 runs and `front` merges those same 4 runs (their last weights) in every way
the study compares: the recursive SLERP (WARP.md's), the symmetric spherical mean (`multislerp`) and TIES of runs
1..M for M = 2, 3, 4, and the recursive SLERP of runs M..1. Every merge of a job reads the same runs, so the
comparisons are paired by seed (and by prompt), and M is compared at equal RL compute per run. The curves are found
by front.csv's `merge` (the method) and `runs` (the order merged: "1-2-3", "3-2-1"), at the last iteration, LITI
proper (eta <= 1).

- **larger M helps** (one claim per method): M = 3 above M = 2, M = 4 above M = 3 and above M = 2, at matched KL;
- **the merge order does not matter** (the recursive SLERP, M = 3 and 4; at M = 2, SLERP at lambda = 1/2 is
  symmetric: the same merge): a null hypothesis, judged by its interval, not by "holds". *order matters* when an
  interval (the wider of the bootstrap's and the seeds' t, as every verdict) excludes 0; *no difference shown*
  when each includes 0, with X, the largest bound in absolute value (every interval lies within +-X: an effect
  beyond X is ruled out, not one below it), and the largest MDE; unresolved when a comparison could not be made.
  Four comparisons (M = 3 and 4, matched KL and eta = 1), both signs, no correction for multiplicity: an *order
  matters* from one of them would need a confirming run;
- **the methods at each M**, pairwise at matched KL (the spherical mean against SLERP from M = 3: at M = 2 it is
  WARP's SLERP at lambda = 1/2), as claims and as one table (`methods_table`).
"""

from __future__ import annotations

import math

import numpy as np

from warp_lightning.eval.report import (
    METRICS,
    by_seed,
    claim_record,
    compare_metrics,
    curves,
    endpoint_difference,
    matched_kl_difference,
)
from warp_lightning.eval.stats import (
    NOT_MEASURED,
    UNRESOLVED,
    fmt_interval,
    judged_mde,
    markdown_table,
    wider_interval,
)

SIZES = (2, 3, 4)
NAMES = {"slerp": "the recursive SLERP", "multislerp": "the symmetric spherical mean", "ties": "TIES"}
ORDER_MATTERS = "order matters"
ORDER_CLAIM = "the merge order of the recursive SLERP does not matter"
# pairwise method claims (A beats B) and the sizes at which A and B are different merges
PAIRS = (("multislerp", "slerp", (3, 4)), ("ties", "slerp", SIZES), ("ties", "multislerp", SIZES))


def forward(size: int) -> str:
    return "-".join(map(str, range(1, size + 1)))


def reversed_order(size: int) -> str:
    return "-".join(map(str, range(size, 0, -1)))


def merge_curves(rows: list[dict]) -> dict[tuple[str, str], tuple[str, dict[int, list[dict]]]]:
    """{(method, runs in order): (curve name, {seed: points})} of front's `merges` curves at the last iteration,
    eta <= 1 (the iteration's own merges, with no `runs`, are left out)."""
    found = [r for r in rows if r.get("runs") and r["kind"] == "liti" and r["eta"] <= 1]
    last = max((int(r["iteration"]) for r in found), default=0)
    return {(pts[0]["merge"], str(pts[0]["runs"])): (name, by_seed(pts))
            for name, pts in curves([r for r in found if int(r["iteration"]) == last]).items()}


def order_verdict(comparisons: list[tuple[str, dict[str, dict]]], metric: str) -> str:
    """The verdict of a null hypothesis (no difference) from its comparisons' intervals (see the module)."""
    bounds, unmeasured = [], False
    for _, found in comparisons:
        c = found.get(metric)
        if c is None:
            continue
        d = wider_interval(c["diff"], c.get("seed_t"))
        if d is None or math.isnan(d.low) or math.isnan(d.high):
            unmeasured = True
            continue
        bounds.append((d.low, d.high, judged_mde(c["diff"], c.get("seed_t"))))
    if any(low > 0 or high < 0 for low, high, _ in bounds):
        return ORDER_MATTERS
    if unmeasured:
        return UNRESOLVED
    if not bounds:
        return NOT_MEASURED
    largest = max(max(-low, high) for low, high, _ in bounds)
    return f"no difference shown: every interval within +-{largest:.3f} (MDE {max(m for _, _, m in bounds):.3f})"


def claims(rows: list[dict], scores: dict | None = None) -> list[dict]:
    """The merges study's claims, in the format of `eval.report.claims` (each comparison with its `M`)."""
    found = merge_curves(rows)
    out = []

    def compare(fn, a: tuple, b: tuple) -> dict[str, dict]:
        return compare_metrics(fn, found[a][1], found[b][1], rows, scores, paired=True)  # the same runs

    def add(claim: str, criterion: str, comparisons: list[tuple[int, str, dict]], missing: str) -> dict:
        record = claim_record(claim, criterion, [(what, f) for _, what, f in comparisons], missing)
        for entry, (size, _, _) in zip(record["comparisons"], comparisons, strict=True):
            entry["M"] = size
        out.append(record)
        return record

    for method, name in NAMES.items():
        comparisons = [(a, f"{found[(method, forward(a))][0]} over {found[(method, forward(b))][0]}",
                        compare(matched_kl_difference, (method, forward(a)), (method, forward(b))))
                       for a, b in ((3, 2), (4, 3), (4, 2)) if {(method, forward(a)), (method, forward(b))} <= found.keys()]
        add(f"larger M helps {name} at matched KL", f"the front of {name} of runs 1..M lies above that of fewer runs "
            "at matched KL: M = 3 over M = 2, M = 4 over M = 3 and over M = 2 (the same runs, paired by seed)",
            comparisons, f"needs the `merges` curves {method}:{forward(2)}, {method}:{forward(3)}, {method}:{forward(4)}")

    comparisons = []
    for size in SIZES[1:]:
        a, b = ("slerp", forward(size)), ("slerp", reversed_order(size))
        if {a, b} <= found.keys():
            what = f"{found[a][0]} over {found[b][0]}"
            comparisons += [(size, f"{what} (matched KL)", compare(matched_kl_difference, a, b)),
                            (size, f"{what} (eta = 1)", compare(endpoint_difference, a, b))]
    record = add(ORDER_CLAIM, "runs 1..M merged by the recursive SLERP against runs M..1 (M = 3, 4; at M = 2 SLERP at "
                 "lambda = 1/2 is symmetric) at matched KL and at eta = 1: 'order matters' when an interval excludes 0, "
                 "else no difference shown, every interval within +- its largest bound (4 comparisons, no "
                 "correction for multiplicity)", comparisons,
                 "needs the `merges` curves slerp:1-2-3 and slerp:3-2-1 (or of 4 runs)")
    if comparisons:
        pairs = [(what, f) for _, what, f in comparisons]
        record["verdict"], record["verdict_judge"] = (order_verdict(pairs, m) for m in METRICS)

    for a, b, sizes in PAIRS:
        comparisons = [(size, f"{found[(a, forward(size))][0]} over {found[(b, forward(size))][0]}",
                        compare(matched_kl_difference, (a, forward(size)), (b, forward(size))))
                       for size in sizes if {(a, forward(size)), (b, forward(size))} <= found.keys()]
        add(f"{NAMES[a]} beats {NAMES[b]} at matched KL",
            f"{NAMES[a]} of runs 1..M lies above {NAMES[b]} of the same runs at matched KL, at M = "
            f"{', '.join(map(str, sizes))}", comparisons, f"needs the `merges` curves of {a} and {b}")
    return out


def _at_eta_1(points: dict[int, list[dict]]) -> str:
    """`reward / KL` at eta = 1, means over seeds."""
    ends = [r for pts in points.values() for r in pts if r["eta"] == 1.0]
    if not ends:
        return "—"
    return f"{np.mean([r['reward_mean'] for r in ends]):.3f} / {np.mean([r['kl_mean'] for r in ends]):.2f}"


def methods_table(found: list[dict], rows: list[dict]) -> str:
    """Per M: each method's merge at eta = 1 (proxy reward / KL, means over seeds), and each pair of methods at
    matched KL (the paired difference of the proxy reward with its 95% interval, from the claims `found`)."""
    merges = merge_curves(rows)
    if not merges:
        return ""
    by_claim = {c["claim"]: c for c in found}
    table = []
    for size in SIZES:
        cells = [size, *(_at_eta_1(merges[(m, forward(size))][1]) if (m, forward(size)) in merges else "—"
                         for m in NAMES)]
        for a, b, _ in PAIRS:
            entry = next((c["reward"] for c in by_claim.get(f"{NAMES[a]} beats {NAMES[b]} at matched KL",
                                                             {}).get("comparisons", []) if c["M"] == size), None)
            cells.append("same merge" if a == "multislerp" and b == "slerp" and size == 2 else "—" if entry is None
                         else fmt_interval(entry["mean"], entry["low"], entry["high"]) if "mean" in entry
                         else entry["why"])
        table.append(cells)
    return (markdown_table(["M", *(f"{m} at eta = 1: reward / KL" for m in NAMES),
                            *(f"{a} - {b} at matched KL (reward)" for a, b, _ in PAIRS)], table)
            + "\n\nThe same runs 1..M of each job merged three ways; the differences are paired over seeds and prompts "
            "(95% bootstrap intervals; the verdicts above take the wider of these and the seeds' t intervals, the "
            "held-out judge's differences are in the claims). At M = 2 the symmetric spherical mean is WARP's SLERP "
            "at lambda = 1/2.")
