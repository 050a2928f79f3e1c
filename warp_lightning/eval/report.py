"""`python -m warp_lightning report`: `reports/` from the outputs of the experiments of WARP.md.

- experiment 1 (`evaluation=`, an `evaluate` run): `sft_vs_warp.md`, model | reward | judge | model - SFT
  (paired, 95% interval) | KL;
- experiment 2 (`sweep=`, the multirun folder of `train -m hparams_search=steps`): `sweep_T.{md,csv,png}`,
  reward, judge and KL of the final model against T (validation prompts), mean over seeds with 95% intervals,
  and the T the sweep's objective selects;
- experiment 3 (`front=`, a `front` run): `front.{md,csv,png}` and `claims.md`, the paper's claims checked
  on the fronts with paired comparisons (same prompts, same sampling random numbers; seeds too where an arm has
  several), each *holds*, *contradicted* or *unresolved at this sample size* with the smallest difference the
  design could detect, on the proxy reward and on the held-out judge;
- `run=` (a train run): `warp_curves.png`, its reward and KL per RL step;
- `README.md`: all of it on one page.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from warp_lightning import UserError
from warp_lightning.eval.plots import plot_front, plot_run_curves, plot_sweep
from warp_lightning.eval.stats import (
    NOT_MEASURED,
    Difference,
    combine_verdicts,
    combined_verdict,
    fmt_ci,
    fmt_interval,
    judged_mde,
    markdown_table,
    matched_kl_difference_bootstrap,
    matched_kl_values,
    mde_factor,
    mean_ci95,
    paired_difference,
    results_table,
    seed_t_interval,
)
from warp_lightning.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

METRICS = ("reward", "judge")  # every claim is checked on the proxy reward and on the held-out judge
NO_OVERLAP = "no overlapping KL range"
# a claim whose every comparison is of curves with no KL in common: more prompts or seeds could not resolve it
NOT_COMPARABLE = "not comparable (no overlapping KL range)"
MULTIPLICITY = (
    "A claim made of several comparisons (per baseline, per iteration, per M) holds when every one holds and is "
    "contradicted when any one is, with no correction for multiplicity: each comparison is a 5% test, so of k "
    "comparisons with no true effect one lands outside 0 up to k x 5% of the time; a *contradicted* (or *order "
    "matters*) that rests on one comparison of several is a lead for more seeds, not a finding.")
DESIGN_NOTE = (
    "Each difference is mean(A) - mean(B) on the same test prompts with the same sampling random numbers "
    "(paired), with its 95% percentile-bootstrap interval over prompts (scipy.stats.bootstrap, 9999 resamples), "
    "and over the training seeds of each arm where an arm has several (two-level resampling). **holds**: the "
    "interval lies above 0; **contradicted**: below 0; **unresolved at this sample size** otherwise. MDE is the "
    "smallest true difference this design detects with 80% power in a two-sided 5% test: "
    f"(z_0.975 + z_0.80) x the bootstrap standard error = {mde_factor():.2f} x SE (about 1.43 half-widths), or, where "
    "the seeds' t interval is there (the verdicts judge by the wider of the two), (t_0.975 + t_0.80) x its standard "
    "error with its degrees of freedom, whichever is larger. At "
    "matched KL, each seed's curve of A (its means over the prompts) is interpolated linearly in KL at the KL of each "
    "point of B (mean over B's seeds; theta_sft excluded) inside A's KL range, and the gaps averaged; a comparison without such a "
    "point (no overlapping KL range) does not count towards its claim's verdict, which the others give, and a claim "
    "with no other comparison is *not comparable*: more prompts or seeds could not resolve it. *not measured*: the "
    "runs the claim needs are missing. " + MULTIPLICITY)


def _write(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, (text.rstrip("\n") + "\n").encode())


# ---- experiment 1: SFT vs aligned ------------------------------------------------------------------------

def experiment1(evaluation_dir: Path) -> str:
    """The table of an `evaluate` run (its metrics.json, every model it evaluated)."""
    metrics = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    models = metrics.get("models") or {metrics["model"]: metrics}
    first = next(iter(models.values()))
    judge = first.get("judge")
    judge_text = (f" Judge: {judge['name']}, fitted on the train split of `{judge['train_data']}` ({judge['n_train']} "
                  f"texts), accuracy {judge['accuracy']:.3f} on its {judge['n_test']} held-out texts; the policy "
                  "never trains against it." if judge else "")
    prompts = first.get("prompts", first["subsamples"] * first["prompts_per_subsample"])
    return (f"{results_table(models)}\n\n{prompts} {first.get('split', 'held-out')} prompts in {first['subsamples']} "
            "disjoint seeded subsamples (each with its own sampling seed; one completion per prompt), the same prompts "
            "and sampling random numbers for every model. Means with the half-width of their 95% interval; "
            "differences to SFT are paired (per prompt) with their 95% interval "
            f"({first.get('interval', 'Student t over subsamples')}).{judge_text} KL: {first['kl_estimator']}."
            + completions_table(Path(evaluation_dir) / "completions.csv"))


def _one_line(text: str) -> str:
    """`text` with each run of whitespace (newlines too) as one space: a markdown table cell."""
    return " ".join(text.split())


def completions_table(path: Path, n: int = 6) -> str:
    """The completions of the first `n` prompts of the first subsample (the evaluation's order, not a choice), one
    column per model, each with its proxy reward and judge score; empty without `completions.csv`."""
    if not path.exists():
        return ""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["subsample"] == "0" and r["sample"] == "0"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_prompt: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_index"], {})[r["model"]] = r
    table = []
    for cells in list(by_prompt.values())[:n]:
        texts = [cells[m]["text"] for m in models if m in cells]
        prompt = os.path.commonprefix(texts)
        prompt = prompt[: prompt.rfind(" ") + 1] if " " in prompt else prompt  # back to a word boundary
        table.append([_one_line(prompt)] + [
            f"{_one_line(cells[m]['text'][len(prompt):])} ({float(cells[m]['reward']):.2f} / "
            f"{float(cells[m]['judge']):.2f})" if m in cells else "" for m in models])
    header = ["prompt", *[f"{m} continuation (proxy / judge)" for m in models]]
    return ("\n\nCompletions of the first prompts of the first subsample (in the evaluation's order, not selected), "
            "the same sampling random numbers for every model:\n\n" + markdown_table(header, table))


# ---- experiment 2: the T sweep ---------------------------------------------------------------------------

def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """One record per finished job of a `train -m` sweep: T, seed, its final evaluation (metrics.json: the
    validation prompts) and the sweep's objective (`sweep_objective` of its config)."""
    from omegaconf import OmegaConf

    jobs = []
    for config in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        job = config.parent.parent
        if not (job / "metrics.json").exists():
            log.warning("%s: no metrics.json (unfinished job), left out", job)
            continue
        cfg = OmegaConf.load(config)
        w = cfg.warp
        metrics = json.loads((job / "metrics.json").read_text())
        objective = cfg.get("sweep_objective") or {}
        jobs.append({"steps": int(w.steps), "seed": int(w.seed), "iterations": int(w.iterations),
                     "runs": int(w.runs), "reward": metrics["final_reward_mean"], "kl": metrics["final_kl_mean"],
                     "judge": metrics.get("final_judge_mean", float("nan")),
                     "sft_reward": metrics["sft_reward_mean"], "seconds": metrics["seconds"],
                     "split": metrics.get("eval_split", "test"),
                     "objective": str(objective.get("metric", "final_reward_mean")),
                     "mode": str(objective.get("mode", "max")),
                     "objective_value": metrics.get(str(objective.get("metric", "final_reward_mean"))),
                     "dir": str(job)})
    if not jobs:
        raise UserError(f"sweep={sweep_dir} holds no finished job (*/metrics.json): pass the multirun folder of "
                        "`python -m warp_lightning train -m hparams_search=steps`")
    return jobs


def sweep_table(jobs: list[dict]) -> list[dict]:
    """Per T: mean over seeds and the 95% interval (Student t over seeds) of the final reward, judge, KL and
    of the sweep's objective."""
    table = []
    for steps in sorted({j["steps"] for j in jobs}):
        group = sorted((j for j in jobs if j["steps"] == steps), key=lambda j: j["seed"])
        row = {"steps": steps, "seeds": [j["seed"] for j in group], "iterations": group[0]["iterations"],
               "runs": group[0]["runs"], "minutes_per_job": sum(j["seconds"] for j in group) / len(group) / 60}
        for key in ("reward", "kl", "sft_reward", "judge", "objective_value"):
            row[f"{key}_per_seed"] = [float(j.get(key, float("nan")) if j.get(key) is not None else float("nan"))
                                      for j in group]
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean_ci95(row[f"{key}_per_seed"])
        table.append(row)
    return table


def sweep_selection(jobs: list[dict], table: list[dict]) -> dict:
    """The T the sweep's objective selects (mean over seeds), only when every job measured it on validation
    prompts: a choice made on test prompts would bias the final figures."""
    objective, mode = jobs[0]["objective"], jobs[0]["mode"]
    splits = sorted({j["split"] for j in jobs})
    if splits != ["validation"]:
        return {"objective": objective, "mode": mode, "steps": None,
                "why": f"no selection: the jobs were evaluated on {', '.join(splits)} prompts, not validation ones"}
    scored = [r for r in table if not np.isnan(r["objective_value_mean"])]
    if not scored:
        return {"objective": objective, "mode": mode, "steps": None, "why": f"no job reports {objective}"}
    best = (max if mode == "max" else min)(scored, key=lambda r: r["objective_value_mean"])
    return {"objective": objective, "mode": mode, "steps": best["steps"], "value": best["objective_value_mean"],
            "why": f"{mode} of the mean over seeds of {objective} (validation prompts)"}


def sweep_markdown(table: list[dict], selection: dict | None = None) -> str:
    rows = [[r["steps"], ", ".join(map(str, r["seeds"])), fmt_ci(r["reward_mean"], r["reward_ci95"]),
             fmt_ci(r["judge_mean"], r["judge_ci95"]), fmt_ci(r["kl_mean"], r["kl_ci95"], 2),
             fmt_ci(r["sft_reward_mean"], r["sft_reward_ci95"]), f"{r['minutes_per_job']:.1f}"] for r in table]
    first = table[0]
    text = (markdown_table(["T", "seeds", "mean reward (final)", "mean judge (final)", "KL(final || SFT)",
                            "SFT reward (same prompts)", "minutes per job"], rows) +
            f"\n\nI={first['iterations']}, M={first['runs']}; each job's final model is evaluated at the end of "
            "`train` on the validation prompts (one completion each, exact KL; the test prompts are kept for "
            "final figures). Mean over seeds with the half-width of the 95% interval (Student t over seeds).")
    if selection is not None:
        chosen = (f"**T = {selection['steps']}** ({selection['why']}: {selection['value']:.3f})"
                  if selection["steps"] is not None else selection["why"])
        text += f"\n\nSelected by the sweep's objective `{selection['objective']}`: {chosen}."
    return text


def write_sweep(sweep_dir: Path, out: Path) -> list[Path]:
    jobs = sweep_jobs(sweep_dir)
    table = sweep_table(jobs)
    with (out / "sweep_T.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["steps", "seed", "reward", "kl", "sft_reward", "judge"])
        for r in table:
            for row in zip(r["seeds"], r["reward_per_seed"], r["kl_per_seed"], r["sft_reward_per_seed"],
                           r["judge_per_seed"], strict=True):
                writer.writerow([r["steps"], *row])
    return [_write(out / "sweep_T.md", sweep_markdown(table, sweep_selection(jobs, table))), out / "sweep_T.csv",
            plot_sweep(table, out / "sweep_T.png")]


# ---- experiment 3: fronts and the paper's claims ---------------------------------------------------------

NUMERIC = ("seed", "kl_coef", "iteration", "eta", "step", "reward_mean", "reward_ci95", "judge_mean", "judge_ci95",
           "kl_mean", "kl_ci95", "kl_k1_mean", "completion_length_mean")


def read_front(front_dir: Path) -> list[dict]:
    with (Path(front_dir) / "front.csv").open() as f:
        rows = [{k: (float(v) if k in NUMERIC and v != "" else v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:  # a front.csv written before arms of several seeds
        r.setdefault("seed", 0.0)
        r.setdefault("arm", r["curve"])
    return rows


def point_key(r: dict) -> tuple:
    """(curve, seed, eta, step) of a point of front.csv or of a row of front_prompts.csv."""
    def num(v):
        return None if v in ("", None) else float(v)

    return r["curve"], int(float(r.get("seed") or 0)), num(r.get("eta")), num(r.get("step"))


def read_front_prompts(front_dir: Path) -> dict[tuple, dict[str, np.ndarray]] | None:
    """{point_key: {"ids": prompt indices, "reward": ..., "judge": ..., "kl": ...}} from front_prompts.csv (the
    per-prompt scores of every point), or None for a front run that did not write it."""
    path = Path(front_dir) / "front_prompts.csv"
    if not path.exists():
        return None
    grouped: dict[tuple, list[dict]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            grouped.setdefault(point_key(r), []).append(r)
    out = {}
    for key, rs in grouped.items():
        rs.sort(key=lambda r: int(r["prompt_index"]))
        out[key] = {"ids": np.array([int(r["prompt_index"]) for r in rs]),
                    **{m: np.array([float(r[m]) for r in rs]) for m in ("reward", "judge", "kl")
                       if rs[0].get(m) not in ("", None)}}
    return out


def curves(rows: list[dict], **where) -> dict[str, list[dict]]:
    """{curve name: its points (of every seed)} for the curves whose fields equal `where`."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if all(r[k] == v for k, v in where.items()):
            out.setdefault(r["curve"], []).append(r)
    return out


def by_seed(points: list[dict]) -> dict[int, list[dict]]:
    """The points of one curve, per seed of its arm."""
    out: dict[int, list[dict]] = {}
    for r in points:
        out.setdefault(int(r.get("seed") or 0), []).append(r)
    return dict(sorted(out.items()))


def is_sft_point(r: dict) -> bool:
    return r["eta"] == 0.0 or r["step"] == 0.0


def _position(r: dict):
    return r["eta"] if r["kind"] == "liti" else r["step"]


def _scores(scores: dict | None, r: dict, metric: str) -> np.ndarray | None:
    found = (scores or {}).get(point_key(r))
    return None if found is None or metric not in found else found[metric]


def _same_prompts(scores: dict, points: list[dict]) -> bool:
    ids = [scores[point_key(r)]["ids"] for r in points]
    return all(np.array_equal(ids[0], i) for i in ids[1:])


def _seed_means(values: list[np.ndarray]) -> list[float]:
    return [float(np.mean(v)) for v in values]


def endpoint_difference(a: dict[int, list[dict]], b: dict[int, list[dict]], metric: str, scores: dict | None,
                        paired_seeds: bool = False) -> dict:
    """The last points (eta = 1, or the last snapshot) of two curves: mean(A) - mean(B) with its interval, and the
    Student t over the seeds' means (`seed_t`)."""
    ends_a = [max(p, key=_position) for p in a.values()]
    ends_b = [max(p, key=_position) for p in b.values()]
    xa, xb = [_scores(scores, r, metric) for r in ends_a], [_scores(scores, r, metric) for r in ends_b]
    if any(x is None for x in xa + xb) or not _same_prompts(scores, ends_a + ends_b):
        return {"diff": None, "why": "no per-prompt scores on shared prompts (front_prompts.csv)"}
    paired = paired_seeds and list(a) == list(b)
    return {"diff": paired_difference(np.stack(xa), np.stack(xb), paired_seeds=paired), "points": 1,
            "seed_t": seed_t_interval(_seed_means(xa), _seed_means(xb), paired)}


def _per_prompt_kl(scores: dict, r: dict, n: int) -> np.ndarray:
    """A point's per-prompt KL, or its mean KL for every prompt where front_prompts.csv has no KL column."""
    found = _scores(scores, r, "kl")
    return found if found is not None else np.full(n, float(r["kl_mean"]))


def matched_kl_difference(a: dict[int, list[dict]], b: dict[int, list[dict]], metric: str, scores: dict | None,
                          paired_seeds: bool = False) -> dict:
    """Curve A above the points of B at matched KL: each seed's curve of A (its means over the prompts, in every
    resample) interpolated linearly in KL at the KL of each point of B (its mean over B's seeds; theta_sft
    excluded) that lies inside every A seed's KL range; the gaps averaged over those points
    (`stats.matched_kl_difference_bootstrap`: the KL matching is estimated anew in every resample), with the
    Student t over the seeds' own gaps (`seed_t`). Unresolved when no point of B lies in A's KL range, and when the
    points of A and B were not all scored on the same prompts (the pairing is by prompt)."""
    positions = set.intersection(*({_position(r) for r in pts if not is_sft_point(r)} for pts in b.values()))
    kl_at = {x: float(np.mean([r["kl_mean"] for pts in b.values() for r in pts if _position(r) == x]))
             for x in positions}
    ranges = [(min(r["kl_mean"] for r in pts), max(r["kl_mean"] for r in pts)) for pts in a.values()]
    inside = sorted(x for x in positions if all(lo <= kl_at[x] <= hi for lo, hi in ranges))
    info = {"points": len(inside), "outside": len(positions) - len(inside)}
    if not inside:
        return {"diff": None, "why": NO_OVERLAP, **info}
    sides, both = [], ([sorted(pts, key=lambda r: r["kl_mean"]) for pts in a.values()],
                       [sorted((r for r in pts if _position(r) in inside), key=_position) for pts in b.values()])
    # every point of both curves, every seed, on the same prompts in the same order: the pairing is by position
    if (any(_scores(scores, r, metric) is None for points in both for pts in points for r in pts)
            or not _same_prompts(scores, [r for points in both for pts in points for r in pts])):
        return {"diff": None, "why": "no per-prompt scores on shared prompts (front_prompts.csv)", **info}
    for points in both:
        vals = [[_scores(scores, r, metric) for r in pts] for pts in points]
        if len({len(pts) for pts in points}) != 1:
            return {"diff": None, "why": "the seeds of a curve were evaluated at different points", **info}
        n = len(vals[0][0])
        sides.append((np.array(vals), np.array([[_per_prompt_kl(scores, r, n) for r in pts] for pts in points])))
    (a_vals, a_kl), (b_vals, b_kl) = sides
    paired = paired_seeds and list(a) == list(b)
    full = np.full((1, a_vals.shape[-1]), 1 / a_vals.shape[-1])
    # each A seed's value at B's KLs (its gap to all of B, plus B's mean), and each B seed's mean, for the t interval
    per_seed_a = [float(matched_kl_values(a_vals[[s]], a_kl[[s]], b_vals, b_kl, full, [[0]], [list(range(len(b_vals)))])[0]
                        + b_vals.mean()) for s in range(len(a_vals))]
    per_seed_b = [float(b_vals[s].mean()) for s in range(len(b_vals))]
    return {"diff": matched_kl_difference_bootstrap(a_vals, a_kl, b_vals, b_kl, paired_seeds=paired), **info,
            "seed_t": seed_t_interval(per_seed_a, per_seed_b, paired)}


def _comparison_text(what: str, found: dict[str, dict]) -> str:
    """`A over B: reward +0.05 [+0.01, +0.09] (MDE 0.06), judge ...; 250 prompts, seeds 1 vs 1, 3 points`."""
    parts = []
    for metric, c in found.items():
        d: Difference | None = c["diff"]
        if d is None:
            parts.append(f"{metric}: {c['why']}")
        else:
            t = c.get("seed_t") or {}
            t_text = (f", t over seeds [{t['low']:+.3f}, {t['high']:+.3f}]" if t and not np.isnan(t["low"]) else "")
            parts.append(f"{metric} {fmt_interval(d.mean, d.low, d.high)} (MDE {judged_mde(d, t):.3f}{t_text})")
    c = next(iter(found.values()))
    d = c["diff"]
    design = [f"{d.n} prompts", f"seeds {d.seeds[0]} vs {d.seeds[1]}"] if d is not None else []
    if "outside" in c:
        design.append(f"{c['points']} point{'s' * (c['points'] != 1)} of B at matched KL"
                      + (f", {c['outside']} beyond A's KL range" if c["outside"] else ""))
    return f"{what}: " + ", ".join(parts) + (f" ({', '.join(design)})" if design else "")


def _claim_verdict(found: list[dict]) -> str:
    """The verdicts of a claim's comparisons on one metric, combined (`combine_verdicts`), leaving out those of
    curves with no KL in common, and saying so ("holds (1 of 2 comparisons; 1 with no overlapping KL range)");
    *not comparable* when every one is such."""
    compared = [c for c in found if c["diff"] is not None or c.get("why") != NO_OVERLAP]
    if found and not compared:
        return NOT_COMPARABLE
    verdict = combine_verdicts([combined_verdict(c["diff"], c.get("seed_t")) for c in compared])
    left_out = len(found) - len(compared)
    return verdict + (f" ({len(compared)} of {len(found)} comparisons; {left_out} with {NO_OVERLAP})" if left_out else "")


def claim_record(claim: str, criterion: str, comparisons: list[tuple[str, dict[str, dict]]], missing: str = "") -> dict:
    """A claim: its criterion, a verdict per metric (every comparison's, combined: `combine_verdicts`), the evidence
    in words and each comparison's differences; *not measured* (with `missing`: why) without a comparison."""
    if not comparisons:
        return {"claim": claim, "criterion": criterion, "verdict": NOT_MEASURED, "verdict_judge": NOT_MEASURED,
                "evidence": missing, "comparisons": []}
    verdicts = {m: _claim_verdict([found[m] for _, found in comparisons if m in found]) for m in METRICS}
    return {"claim": claim, "criterion": criterion, "verdict": verdicts["reward"], "verdict_judge": verdicts["judge"],
            "evidence": "; ".join(_comparison_text(what, found) for what, found in comparisons),
            "comparisons": [{"what": what, "points": next(iter(found.values())).get("points"),
                             **{m: {**c["diff"].as_dict(), "mde_bootstrap": c["diff"].mde,
                                    "mde": judged_mde(c["diff"], c.get("seed_t")), "seed_t": c.get("seed_t")}
                                if c["diff"] else {"why": c["why"]}
                                for m, c in found.items()}} for what, found in comparisons]}


def compare_metrics(fn, a: dict[int, list[dict]], b: dict[int, list[dict]], rows: list[dict], scores: dict | None,
                    paired: bool = False) -> dict[str, dict]:
    """`fn` (`matched_kl_difference`, `endpoint_difference`) of A over B on each metric the rows have."""
    return {m: fn(a, b, m, scores, paired) for m in METRICS
            if m == "reward" or any(r.get("judge_mean") not in ("", None) for r in rows)}


def main_curves(rows: list[dict]) -> list[dict]:
    """Every curve but front's `merges` ones (those with `runs`: other merges of the same runs, at the same
    iteration): the iterations' own merges and the RL curves, which the paper's claims, SFT against WARP and the
    reach sentence read."""
    return [r for r in rows if not r.get("runs")]


def claims(rows: list[dict], scores: dict | None = None) -> list[dict]:
    """The paper's claims (WARP.md), each with its criterion, a verdict on the proxy reward and one on the judge
    (holds / contradicted / unresolved at this sample size / not measured) and the paired differences behind it.

    `scores`: per-prompt scores of every point (`read_front_prompts`); without them every comparison is
    unresolved."""
    rows = main_curves(rows)  # a front's `merges` curves share WARP's iterations: they would stand in for its own
    # LITI proper is eta <= 1; the points beyond (ExPO) are judged apart, by the last claim
    liti_rows = [r for r in rows if r["kind"] != "liti" or r["eta"] <= 1]
    warp = curves(liti_rows, kind="liti", merge="slerp")
    warp_by_iteration = {int(p[0]["iteration"]): (name, by_seed(p)) for name, p in warp.items()}
    linear = curves(liti_rows, kind="liti", merge="linear")
    ema, sft = curves(rows, kind="training", anchor="ema"), curves(rows, kind="training", anchor="sft")
    out = []

    def add(claim: str, criterion: str, comparisons: list[tuple[str, dict[str, dict]]], missing: str = "") -> None:
        out.append(claim_record(claim, criterion, comparisons, missing))

    def compare(fn, a, b, paired=False) -> dict[str, dict]:
        return compare_metrics(fn, a, b, rows, scores, paired)

    criterion = "the EMA-anchor RL curve lies above each fixed-anchor RL curve at matched KL"
    comparisons = []
    if ema and sft:
        ema_name, ema_pts = next(iter(ema.items()))
        comparisons = [(f"{ema_name} over {name}", compare(matched_kl_difference, by_seed(ema_pts), by_seed(pts)))
                       for name, pts in sft.items()]
    add("EMA anchor beats the fixed SFT anchor", criterion, comparisons, "needs EMA- and SFT-anchor baselines")

    def slerp_over_linear(fn, where: str) -> list:
        """SLERP's front of each iteration against the linear merge of the same runs (paired seeds)."""
        return [(f"{warp_by_iteration[i][0]} over {name} ({where})",
                 compare(fn, warp_by_iteration[i][1], by_seed(pts), paired=True))
                for name, pts in linear.items() if (i := int(pts[0]["iteration"])) in warp_by_iteration]

    missing = "needs the linear-merge fronts (train with warp.snapshot_every > 0)"
    criterion = "the SLERP merge (eta = 1) has a higher mean reward than the linear merge of the same runs, at every iteration"
    add("SLERP beats linear merging in reward", criterion, slerp_over_linear(endpoint_difference, "eta = 1"), missing)
    criterion = ("the SLERP front lies above the linear merge's front of the same runs at matched KL (SLERP's larger "
                 "KL at eta = 1 is not counted as a gain), at every iteration")
    add("SLERP beats linear merging at matched KL", criterion, slerp_over_linear(matched_kl_difference, "matched KL"),
        missing)

    criterion = "the last iteration's LITI front lies above every RL training curve at matched KL"
    comparisons = []
    training = {**ema, **sft}
    if warp_by_iteration and training:
        name, front = warp_by_iteration[max(warp_by_iteration)]
        comparisons = [(f"{name} over {n}", compare(matched_kl_difference, front, by_seed(pts)))
                       for n, pts in training.items()]
    add("the LITI front lies above the RL training curve", criterion, comparisons, "needs a front and RL baselines")

    criterion = "the iteration-2 LITI front lies above the iteration-1 front at matched KL (the same runs)"
    comparisons = []
    if {1, 2} <= warp_by_iteration.keys():
        (n1, f1), (n2, f2) = warp_by_iteration[1], warp_by_iteration[2]
        comparisons = [(f"{n2} over {n1}", compare(matched_kl_difference, f2, f1, paired=True))]
    add("iteration 2 improves on iteration 1", criterion, comparisons, "needs a run with I >= 2")

    if len(warp_by_iteration) > 2:  # I > 2: every further iteration, and the last against the first
        last = max(warp_by_iteration)
        pairs = [(i + 1, i) for i in range(2, last)] + [(last, 1)]
        criterion = (f"each LITI front from iteration 3 to {last} lies above the one before, and iteration {last}'s "
                     "above iteration 1's, at matched KL (the same runs)")
        comparisons = [(f"{warp_by_iteration[a][0]} over {warp_by_iteration[b][0]}",
                        compare(matched_kl_difference, warp_by_iteration[a][1], warp_by_iteration[b][1], paired=True))
                       for a, b in pairs if a in warp_by_iteration and b in warp_by_iteration]
        add("more iterations keep improving the front", criterion, comparisons)

    criterion = ("the last theta_slerp extrapolated (ExPO: eta from 1 up to the largest eta > 1 evaluated) lies above "
                 "every RL training curve at matched KL")
    comparisons = []
    name = warp_by_iteration[max(warp_by_iteration)][0] if warp_by_iteration else None
    beyond = [r for r in curves(rows, kind="liti", merge="slerp").get(name, []) if r["eta"] >= 1]
    if training and any(r["eta"] > 1 for r in beyond):
        comparisons = [(f"{name} extrapolated over {n}", compare(matched_kl_difference, by_seed(beyond), by_seed(pts)))
                       for n, pts in training.items()]
    add("extrapolation (ExPO) of the last merge beats RL at matched KL", criterion, comparisons,
        "needs front etas above 1 (e.g. etas=[0,0.5,1,1.5,2]) and RL baselines")
    return out


def chosen_eta(rows: list[dict], metric: str = "reward") -> dict | None:
    """The eta of the last iteration's SLERP front with the highest mean `metric` (over seeds): the selection rule
    of ExPO, to apply to a front evaluated on the validation split (`front eval.split=validation`)."""
    warp = curves(rows, kind="liti", merge="slerp")
    if not warp:
        return None
    last = max(warp.values(), key=lambda pts: int(pts[0]["iteration"]))
    means: dict[float, list[float]] = {}
    for r in last:
        if r.get(f"{metric}_mean") not in ("", None):
            means.setdefault(r["eta"], []).append(float(r[f"{metric}_mean"]))
    if not means:
        return None
    eta = max(means, key=lambda e: np.mean(means[e]))
    return {"curve": last[0]["curve"], "eta": eta, f"{metric}_mean": float(np.mean(means[eta])),
            "extrapolation": eta > 1}


def claims_markdown(found: list[dict]) -> str:
    table = markdown_table(["claim (WARP.md)", "verdict (proxy reward)", "verdict (held-out judge)", "criterion",
                            "paired differences, 95% intervals"],
                           [[c["claim"], f"**{c['verdict']}**", f"**{c['verdict_judge']}**", c["criterion"],
                             c["evidence"]] for c in found])
    return f"{table}\n\n{DESIGN_NOTE}"


def front_markdown(rows: list[dict]) -> str:
    seeds = len({r.get("seed") for r in rows}) > 1
    table = [[r["curve"], *([int(r["seed"])] if seeds else []),
              (f"{r['eta']:g}" + (" (extrapolation)" if r["eta"] > 1 else "")) if r["kind"] == "liti"  # as given
              else f"step {int(r['step'])}",
              fmt_ci(r["reward_mean"], r["reward_ci95"]),
              fmt_ci(r["judge_mean"], r["judge_ci95"]) if r.get("judge_mean") not in ("", None) else "—",
              fmt_ci(r["kl_mean"], r["kl_ci95"], 2)] for r in rows]
    return markdown_table(["curve", *(["seed"] if seeds else []), "eta / step", "mean reward (proxy)",
                           "mean judge", "KL(pi || pi_sft)"], table)


def write_front(front_dir: Path, out: Path) -> tuple[list[Path], list[dict]]:
    rows = read_front(front_dir)
    scores = read_front_prompts(front_dir)
    if scores is None:
        log.warning("%s has no front_prompts.csv (a front run of an older version): the claims cannot be "
                    "compared paired and stay unresolved; run `front` again", front_dir)
    shutil.copyfile(Path(front_dir) / "front.csv", out / "front.csv")
    found = claims(rows, scores)
    atomic_write_json(out / "claims.json", found)
    choice = chosen_eta(rows)
    table = front_markdown(rows) + ("" if choice is None else (
        f"\n\nExPO's selection rule (the eta of highest mean proxy reward on the last iteration's front, "
        f"{choice['curve']}): eta = {choice['eta']:g}" + (" (an extrapolation)" if choice["extrapolation"] else "")
        + f", mean reward {choice['reward_mean']:.3f}; a choice only when this front was evaluated on the "
        "validation split (`front eval.split=validation`)."))
    return [_write(out / "front.md", table), out / "front.csv", plot_front(rows, out / "front.png"),
            _write(out / "claims.md", claims_markdown(found)), out / "claims.json"], found


# ---- the command -----------------------------------------------------------------------------------------

def summary(out: Path, sections: dict[str, str]) -> Path:
    """reports/README.md: every table, figure and claim on one page."""
    titles = {"sft_vs_warp": "Experiment 1: SFT vs aligned", "sweep_T": "Experiment 2: the T sweep",
              "front": "Experiment 3: reward-KL fronts", "claims": "The paper's claims on this setup",
              "warp_curves": "Training curves of the WARP run"}
    figures = {"sweep_T": "sweep_T.png", "front": "front.png", "warp_curves": "warp_curves.png"}
    text = ["# Results", ""]
    for key, body in sections.items():
        text += [f"## {titles[key]}", ""]
        if key in figures:
            text += [f"![{titles[key]}]({figures[key]})", ""]
        text += [body, ""] if body else []
    return _write(out / "README.md", "\n".join(text))


def run(cfg) -> dict:
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    written, sections, verdicts = [], {}, {}
    if cfg.evaluation:
        sections["sft_vs_warp"] = experiment1(Path(str(cfg.evaluation)))
        written.append(_write(out / "sft_vs_warp.md", sections["sft_vs_warp"]))
    if cfg.sweep:
        written += write_sweep(Path(str(cfg.sweep)), out)
        sections["sweep_T"] = (out / "sweep_T.md").read_text()
    if cfg.front:
        paths, found = write_front(Path(str(cfg.front)), out)
        written += paths
        sections["front"] = "Points: [front.md](front.md) (and front.csv)."
        sections["claims"] = (out / "claims.md").read_text()
        verdicts = {c["claim"]: {"reward": c["verdict"], "judge": c["verdict_judge"]} for c in found}
    if cfg.run:
        written.append(plot_run_curves(Path(str(cfg.run)), out / "warp_curves.png"))
        sections["warp_curves"] = ""
    written.append(summary(out, sections))
    for name, found in verdicts.items():
        log.info("claim: %s: %s (proxy reward), %s (judge)", name, found["reward"], found["judge"])
    return {"reports": str(out), "written": [str(p) for p in written], "claims": verdicts}
