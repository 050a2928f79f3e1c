"""A study's report from its result files alone (no model folder): the claims of WARP.md with their verdicts, the
T sweep, the fronts' plot, and what is provisional.

- Pooling: every result must have the code's `NUMERICS` and its job's current definition; otherwise the report
  refuses, naming the jobs to re-run. bf16 and fp32 results pool (independent seeds); the report states the mix.
- Each claim is judged by `eval.report.claims` (a study with `claims: merges`: `studies/merges.py`) on the pooled
  points (the same test prompts and sampling random numbers in every job): paired over prompts, a two-level
  bootstrap over prompts and seeds with the KL matching re-estimated in every resample, and beside it a Student-t
  interval over the seeds' own means (`eval.stats.seed_t_interval`, why there); the verdict takes the wider of the
  two.
- A verdict is *provisional (n of N seeds)* until every arm its comparisons pool has the seeds its study declares
  (the report's headline: until every arm with a front has them).
- Every study's verdicts in one table (`verdicts_table`): the README's block `<!-- study:verdicts -->` and
  `reports/studies/verdicts.md`, rebuilt from each study's claims.json whenever one study's report is written; the
  README's own study blocks say which studies it lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from warp_lightning import UserError
from warp_lightning.eval.plots import plot_front, plot_lines, plot_sweep
from warp_lightning.eval.report import MULTIPLICITY, claims, endpoint_difference, main_curves, point_key
from warp_lightning.eval.stats import (
    NOT_MEASURED,
    fmt_ci,
    fmt_interval,
    judged_mde,
    markdown_table,
    mean_ci95,
    seed_t_interval,
)
from warp_lightning.studies import merges, sft, warm
from warp_lightning.studies.jobs import DONE, job_state, study_jobs
from warp_lightning.studies.results import NUMERICS, measured
from warp_lightning.utils.commands import first_difference, without
from warp_lightning.utils.io import atomic_write_bytes, atomic_write_json

# the settings an arm's jobs may run with different values: their seeds, their folders, the machine (bf16 and fp32
# machines pool) and the logger; any other difference between two of its results' resolved configs refuses pooling
MAY_DIFFER = ("warp.seed", "reward_training.seed", "save_to", "paths", "hydra", "trainer", "logger")


def check_settings(study, results: dict[str, dict]) -> None:
    """Refuse to pool the results of an arm whose jobs ran other settings (`MAY_DIFFER` aside): an edited config file
    or the machine's `extra` overrides change what a job computes without changing its definition."""
    first: dict[str, tuple[str, dict]] = {}
    for name, r in sorted(results.items()):
        if not r.get("config"):
            continue
        config = without(r["config"], MAY_DIFFER)
        other, theirs = first.setdefault(r["arm"], (name, config))
        found = first_difference(theirs, config, "", shared_only=True, says="{a!r} against {b!r}")
        if found:
            raise UserError(f"cannot pool the results of study {study.name}: {other} and {name} (arm {r['arm']}) ran "
                            f"other settings: {found}; re-run the one that does not run the arm's settings now "
                            f"(delete its result file, then `python -m warp_lightning study study={study.name} "
                            f"action=run jobs=[...]`)")


def check_pooling(study, results: dict[str, dict]) -> None:
    """Refuse results that cannot pool with the code's: another numerics, another job definition, unknown job, an
    arm's jobs run with other settings (`check_settings`)."""
    jobs = {j.name: j for j in study_jobs(study)}
    unknown = sorted(set(results) - set(jobs))
    stale = {}
    for name in results:
        if name in jobs:
            state, why = job_state(jobs[name], results, NUMERICS)
            if state != DONE:
                stale[name] = why
    if stale:
        whys = sorted(set(stale.values()))
        raise UserError(f"cannot pool the results of study {study.name}: {', '.join(sorted(stale))} "
                        f"({'; '.join(whys)}); re-run them with `python -m warp_lightning study study={study.name} "
                        f"action=run jobs=[{','.join(sorted(stale))}]`")
    if unknown:
        raise UserError(f"results {', '.join(unknown)} belong to no job of study {study.name}: remove them or "
                        "declare their arm again")
    check_settings(study, results)


def sft_fingerprint(result: dict) -> str | None:
    """What a job's theta_sft point scored, prompt by prompt: its prompts, the judge and the proxy (each term of a sum
    reward, or the reward; `reward` alone differs between arms trained against different reward models by design),
    rounded to 4 decimals and hashed. Every job of a study samples theta_sft with the same prompts and random numbers,
    so equal fingerprints mean one SFT policy, one build of the reward models and judge, and the same sampled tokens;
    None without a front."""
    front = result.get("front") or {}
    sft_rows = [r for r in front.get("rows", []) if (r["kind"] == "liti" and not r.get("runs") and r["eta"] == 0.0)
                or (r["kind"] == "training" and r.get("step") == 0.0)]
    if not sft_rows:
        return None
    first = min(sft_rows, key=lambda r: float(r.get("iteration") or 0))
    found = next((p for p in front.get("prompts", []) if p["curve"] == first["curve"] and p["eta"] == first["eta"]
                  and p["step"] == first["step"]), None)
    if found is None:
        return None
    keys = sorted(k for k in found if k.startswith("reward/")) or ["reward"]
    values = [found["prompt_index"], *([round(float(v), 4) for v in found.get(k, [])] for k in ("judge", *keys))]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]


def sft_agreement(results: dict[str, dict]) -> str:
    """A sentence on whether every job's theta_sft scored the same (`sft_fingerprint`): the jobs' reward models and
    SFT policy are built per machine (the models cache), so jobs run elsewhere, or on a machine computing other
    arithmetic, can pair prompts while their scorers or samples differ; said, naming the groups."""
    groups: dict[str, list[str]] = {}
    for name, result in results.items():
        fingerprint = sft_fingerprint(result)
        if fingerprint is not None:
            groups.setdefault(fingerprint, []).append(name)
    if sum(map(len, groups.values())) < 2:  # nothing to compare yet
        return ""
    if len(groups) == 1:
        return (f"theta_sft scores the same in all {len(next(iter(groups.values())))} jobs with a front (prompt by "
                "prompt, judge and proxy): one SFT policy, one build of the reward models and the same samples.")
    listed = "; ".join(", ".join(sorted(g)) for g in sorted(groups.values()))
    return (f"**theta_sft scores differently between jobs** ({len(groups)} groups: {listed}): their SFT policy, reward "
            "models or judge are different builds, or their machines sampled other tokens; comparisons across the "
            "groups pair prompts, not scorers.")


def pooled_front(results: dict[str, dict]) -> tuple[list[dict], dict]:
    """Every job's front points, and their per-prompt values keyed as `eval.report.point_key`."""
    rows, scores = [], {}
    for result in results.values():
        front = result.get("front")
        if not front:
            continue
        rows += front["rows"]
        for p in front["prompts"]:
            order = np.argsort(p["prompt_index"])
            scores[point_key(p)] = {"ids": np.asarray(p["prompt_index"])[order],
                                    **{m: np.asarray(p[m], float)[order] for m in measured(p)}}
    return rows, scores


def first_arm(study, rows: list[dict]) -> list[dict]:
    """The points of the study's first arm with a front (SFT against WARP reads that arm's fronts alone: a study of
    several WARP arms, e.g. `warm`'s, does not pool them)."""
    first = next((study.arms[arm].get("label") or arm for arm in front_arms(study)), "")
    return [r for r in rows if r.get("arm", "") in ("", str(first).replace(" ", "_"))]


# the claims a study is judged by (its file's `claims`; the paper's when absent), and the tables each set adds:
# (title, fn(claims found, front rows, per-prompt scores, results)); a table with nothing to show returns ""
CLAIMS = {"paper": claims, "merges": merges.claims,
          "warm": warm.claims, "sft": sft.claims}
TABLES = {"merges": [("The merge methods at each M", lambda found, rows, scores, results: merges.methods_table(found, rows))],
          "warm": [("The proxy-judge gap as KL grows", lambda found, rows, scores, results: warm.gap_table(rows, scores)),
                   ("The reward models' accuracies", lambda found, rows, scores, results: warm.accuracy_table(results))]}

# the figures each set adds beside front.png: (file name, title, fn(front rows, per-prompt scores) -> plot_lines's
# panels; [] when nothing has landed to draw)
FIGURES = {"warm": [("gap.png", "The proxy-judge gap as KL grows", warm.gap_panels)]}

# the two verdict columns of each set of claims (the warm study's: its claims' two readings, see studies/warm.py)
HEADERS = {"paper": ("proxy reward", "held-out judge"),
           "warm": ("at matched KL (the gap: own proxy)", "second reading (the gap: common proxy; the judge: eta = 1)")}


def seeds_per_arm(study, results: dict[str, dict]) -> dict[str, int]:
    return {arm: sum(r["arm"] == arm for r in results.values()) for arm in study.arms}


def front_arms(study, warp_only: bool = False) -> list[str]:
    """The study's arms with a front, in its file's order (`warp_only`: those whose front has LITI points, WARP's,
    not an RL curve's empty `front: []`)."""
    return [a for a, spec in study.arms.items()
            if spec.get("front") is not None and (not warp_only or spec.get("front"))]


def front_seeds(study, results: dict[str, dict]) -> int:
    """The fewest seeds landed among the study's arms with a front."""
    counts = seeds_per_arm(study, results)
    return min((counts[a] for a in front_arms(study)), default=0)


def provisional(study, results: dict[str, dict]) -> str:
    """'' when every arm with a front has the seeds the study needs, else 'provisional (n of N seeds)'."""
    n, need = front_seeds(study, results), int(study.seeds_needed)
    return "" if n >= need else f"provisional ({n} of {need} seeds)"


def claim_status(claim: dict, need: int, landed: int) -> str:
    """A claim's own mark: 'provisional (n of N seeds)' while the arm with the fewest seeds among those its
    comparisons pool has fewer than N ('' once each has N); a claim none of whose comparisons gave an interval (no
    overlapping KL range, say) is marked by `landed`, the fewest seeds of the study's arms with a front. While an
    arm with a front has no result at all (`landed` 0) no claim is final: a claim against "the RL curves" would
    otherwise be judged on the baselines that happen to have landed."""
    seeds = [min(c["reward"]["seeds"]) for c in claim["comparisons"] if "seeds" in c.get("reward", {})]
    n = min(seeds, default=landed)
    if n < need:
        return f"provisional ({n} of {need} seeds)"
    return "provisional (an arm has no result yet)" if landed == 0 else ""


def sweep_rows(study, results: dict[str, dict]) -> list[dict]:
    """The T sweep from the sweep arms' end-of-train checks (validation prompts): per T, the mean over seeds of the
    final reward, judge, KL, and of the objective reward - beta x KL(final || SFT), with 95% t intervals."""
    beta = float((study.get("sweep_objective") or {}).get("beta", 0.0))
    by_t: dict[int, list[dict]] = {}
    for r in results.values():
        if r.get("sweep"):
            by_t.setdefault(int(r["sweep"]["steps"]), []).append(r)
    table = []
    for steps, group in sorted(by_t.items()):
        group.sort(key=lambda r: r["seed"])
        m = [r["train_metrics"] for r in group]
        row = {"steps": steps, "seeds": [r["warp_seed"] for r in group], "iterations": group[0]["config"]["warp"]["iterations"],
               "runs": group[0]["config"]["warp"]["runs"],
               "minutes_per_job": float(np.mean([sum(r["seconds"].values()) for r in group])) / 60}
        values = {"reward": [x["final_reward_mean"] for x in m], "kl": [x["final_kl_mean"] for x in m],
                  "judge": [x.get("final_judge_mean", math.nan) for x in m],
                  "sft_reward": [x["sft_reward_mean"] for x in m],
                  "objective_value": [x["final_reward_mean"] - beta * x["final_kl_mean"] for x in m]}
        for key, vals in values.items():
            row[f"{key}_per_seed"] = vals
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean_ci95(vals)
        table.append(row)
    return table


def sweep_markdown(study, table: list[dict]) -> str:
    beta = float((study.get("sweep_objective") or {}).get("beta", 0.0))
    rows = [[r["steps"], len(r["seeds"]), fmt_ci(r["objective_value_mean"], r["objective_value_ci95"]),
             fmt_ci(r["reward_mean"], r["reward_ci95"]), fmt_ci(r["judge_mean"], r["judge_ci95"]),
             fmt_ci(r["kl_mean"], r["kl_ci95"], 2), f"{r['minutes_per_job']:.1f}"] for r in table]
    ranked = sorted(table, key=lambda r: r["objective_value_mean"], reverse=True)
    best = ranked[0]
    return (markdown_table(["T", "seeds", f"objective: reward - {beta:g} x KL", "validation reward",
                            "validation judge", "KL(final || SFT)", "minutes per job"], rows)
            + f"\n\nI={table[0]['iterations']}, M={table[0]['runs']}; the end-of-train check of each job (validation "
            f"prompts, one completion each, exact KL). The sweep selects by reward - {beta:g} x KL(final || SFT), "
            "the KL-regularised objective RL optimises (the validation reward alone grows with T by construction): "
            f"**T = {best['steps']}** ({best['objective_value_mean']:.3f}){runner_up(ranked)}. Means over seeds with "
            "the half-width of the 95% Student-t interval.")


def runner_up(ranked: list[dict]) -> str:
    """`; against T = X (the runner-up): d [low, high] (Welch's t over the seeds), resolved / not resolved`: whether
    the sweep's choice is told apart from the next best T (jobs of different T have seeds of their own: unpaired)."""
    if len(ranked) < 2:
        return ""
    best, second = ranked[0], ranked[1]
    t = seed_t_interval(best["objective_value_per_seed"], second["objective_value_per_seed"])
    if math.isnan(t["low"]):
        return f"; against T = {second['steps']} (the runner-up): {t['mean']:+.3f}, not resolved (one seed on a side)"
    told = ("told apart" if t["low"] > 0 else
            f"not told apart at these seeds (an interval of half-width {(t['high'] - t['low']) / 2:.3f})")
    return (f"; against T = {second['steps']} (the runner-up): {fmt_interval(t['mean'], t['low'], t['high'])} (Welch's t "
            f"over seeds), {told}")


def _mean_point(points: list[dict], where) -> tuple[float, float]:
    """(KL, proxy reward) of one position of a curve, mean over its seeds."""
    at = [r for r in points if where(r)]
    return float(np.mean([r["kl_mean"] for r in at])), float(np.mean([r["reward_mean"] for r in at]))


def reach_sentence(rows: list[dict]) -> str:
    """Whether, and at what KL, WARP's last front reaches the region the RL curves reach (means over seeds)."""
    fronts = [r for r in rows if r["kind"] == "liti" and r["merge"] == "slerp"]
    training = [r for r in rows if r["kind"] == "training"]
    if not fronts or not training:
        return ""
    last = max(int(r["iteration"]) for r in fronts)
    front = [r for r in fronts if int(r["iteration"]) == last]
    top_eta = max(float(r["eta"]) for r in front)
    kl_w, reward_w = _mean_point(front, lambda r: float(r["eta"]) == top_eta)
    kl_1, reward_1 = _mean_point(front, lambda r: float(r["eta"]) == 1.0) if any(
        float(r["eta"]) == 1.0 for r in front) else (math.nan, math.nan)
    parts = []
    for name in dict.fromkeys(r["curve"] for r in training):
        pts = [r for r in training if r["curve"] == name]
        last_step = max(float(r["step"]) for r in pts)
        kl_rl, reward_rl = _mean_point(pts, lambda r, s=last_step: float(r["step"]) == s)
        if kl_1 >= kl_rl:
            reaches = "WARP's front (eta <= 1) reaches that KL"
        elif top_eta > 1 and kl_w >= kl_rl:
            reaches = f"WARP's front (eta <= 1) does not reach that KL; only its ExPO extrapolation (eta = {top_eta:g}) does"
        else:
            reaches = "WARP's front does not reach that KL" + (", nor its ExPO extrapolation" if top_eta > 1 else "")
        parts.append(f"{name} ends at KL {kl_rl:.1f} (proxy {reward_rl:.3f}, step {last_step:g}): {reaches}")
    return (f"WARP's last front (iteration {last}) reaches KL {kl_1:.1f} (proxy {reward_1:.3f}) at eta = 1 and KL "
            f"{kl_w:.1f} (proxy {reward_w:.3f}) at eta = {top_eta:g}" + (" (ExPO)" if top_eta > 1 else "")
            + "; " + "; ".join(parts) + " (means over seeds).")


def sft_against_final(rows: list[dict], scores: dict, arm: str = "") -> str:
    """Experiment 1 from the fronts: theta_sft (eta = 0) against WARP's final policy (the last iteration's
    theta_slerp, eta = 1) of each seed, on the same prompts and random numbers: means over seeds and prompts, and the
    paired gains with their 95% interval (bootstrap over prompts and seeds, the seed's own SFT point paired with it);
    a sum reward's terms (`reward/NAME`) each beside the total. `arm`: the arm read, named where a study has several."""
    last, finals, sft_points = sft.final_and_sft(rows)
    final = list(finals.values())
    if not final:
        return ""
    terms = [k[: -len("_mean")] for k in final[0] if k.startswith("reward/") and k.endswith("_mean")]  # a sum's
    table, gains = [], []
    for name, points in (("SFT", [sft_points[int(r["seed"])] for r in final]), (f"WARP final ({arm + ', ' if arm else ''}iteration {last})", final)):
        cells = [name]
        for key, digits in (("reward", 3), *((t, 3) for t in terms), ("judge", 3), ("kl", 2), ("completion_length", 1)):
            values = [r.get(f"{key}_mean") for r in points]
            cells.append("—" if any(v in ("", None) for v in values) else f"{np.mean(values):.{digits}f}")
        table.append(cells)
    for metric in ("reward", *terms, "judge"):  # what the claim (studies/sft.py) computes, and each term
        found = endpoint_difference({s: [r] for s, r in finals.items()}, {s: [r] for s, r in sft_points.items()},
                                    metric, scores, paired_seeds=True)
        d, t = found["diff"], found.get("seed_t")
        if d is None:
            continue
        t_text = f", t over seeds [{t['low']:+.3f}, {t['high']:+.3f}]" if not math.isnan(t["low"]) else ""
        gains.append(f"{metric} {fmt_interval(d.mean, d.low, d.high)} (MDE {judged_mde(d, t):.3f}{t_text})")
    n = len(next(iter(scores.values()))["ids"]) if scores else 0
    return (markdown_table(["model", "proxy reward", *(f"`{t}`" for t in terms), "held-out judge", "KL(pi || pi_sft)",
                            "length"], table)
            + f"\n\nWARP final - SFT, paired (the same {n} test prompts and random numbers; {len(final)} seed"
            + ("s" if len(final) != 1 else "") + "): " + "; ".join(gains) + ".")


def shown_prompt(prompt: str) -> str:
    """What a reader needs of a prompt: for a chat prompt decoded without its special tokens ("system\\n...\\nuser\\n
    ...\\nassistant\\n", as a chat template renders it), the text of its last user turn; any other prompt as it is."""
    lines = [line.strip() for line in prompt.strip().split("\n")]
    if len(lines) < 3 or lines[-1] != "assistant" or "user" not in lines[:-1]:
        return prompt
    last_user = max(i for i, line in enumerate(lines[:-1]) if line == "user")
    return "\n".join(lines[last_user + 1:-1]).strip() or prompt


def side_by_side(results: dict[str, dict], n: int = 4, arm: str | None = None) -> str:
    """The SFT policy's and WARP's final completions of the same first test prompts (the same random numbers), from
    the first WARP job of `arm` (any arm when None) that kept examples: the prompt, then each model's
    continuation."""
    for result in results.values():
        if arm is not None and result.get("arm") != arm:
            continue
        examples = (result.get("front") or {}).get("examples") or []
        liti = [r for r in result["front"]["rows"] if r["kind"] == "liti" and r["merge"] == "slerp"] if examples else []
        if not liti:
            continue
        last = max(int(r["iteration"]) for r in liti)
        curve = next(r["curve"] for r in liti if int(r["iteration"]) == last)
        by = {(e["eta"], e["prompt_index"]): e for e in examples if e["curve"] == curve and e.get("sample", 0) == 0}
        prompts = sorted({i for eta, i in by if eta == 0.0 and (1.0, i) in by})[:n]
        if not prompts:
            continue
        rows = []
        for i in prompts:
            before, final = by[(0.0, i)], by[(1.0, i)]
            prompt = before["text"][: len(before["text"]) - len(before["completion"])]
            rows.append([" ".join(shown_prompt(prompt).split()), " ".join(before["completion"].split()),
                         " ".join(final["completion"].split())])
        return (f"Completions of the first test prompts (not chosen), job {result['job']}, the same random numbers for "
                "both:\n\n" + markdown_table(["prompt", "SFT", f"WARP final (iteration {last})"], rows))
    return ""


def mix(results: dict[str, dict]) -> str:
    """Which devices and precisions the pooled results come from, and their commits."""
    devices: dict[str, int] = {}
    for r in results.values():
        devices[r["compute"]] = devices.get(r["compute"], 0) + 1
    return ("; ".join(f"{n} job{'s' * (n != 1)} on {d}" for d, n in devices.items())
            + f"; commits {', '.join(commits(results))}")


def commits(results: dict[str, dict]) -> list[str]:
    """The commits the results were measured at (short; `+`: with uncommitted changes)."""
    return sorted({r["commit"][:7] + ("+" if r.get("dirty") else "") for r in results.values()})


def marked(verdict: str, status: str) -> str:
    """A measured verdict with its provisional mark ("not measured" needs none)."""
    return verdict + (f" ({status})" if status and verdict != NOT_MEASURED else "")


def verdict_rows(found: list[dict]) -> list[list]:
    """Every claim with its two verdicts and status, then one row per comparison behind it: the paired differences
    with their 95% intervals, the seeds of each side, the prompts and the matched points."""
    def interval(c: dict | None) -> str:
        """The bootstrap interval, and the seeds' t interval beside it where there is one (the verdict judges by the
        wider of the two, `eval.stats.combined_verdict`)."""
        if c is None or "mean" not in c:
            return "—" if c is None else c.get("why", "—")
        t = c.get("seed_t") or {}
        beside = (f" (t over seeds [{t['low']:+.3f}, {t['high']:+.3f}])"
                  if t and not (math.isnan(t["low"]) or math.isnan(t["high"])) else "")
        return fmt_interval(c["mean"], c["low"], c["high"]) + beside

    rows = []
    for claim in found:
        rows.append([f"**{claim['claim']}**", claim["verdict"], claim["verdict_judge"],
                     claim["status"] if claim["comparisons"] else claim["evidence"], "", ""])
        for c in claim["comparisons"]:
            d = c["reward"]
            rows.append([f"· {c['what']}", interval(d), interval(c.get("judge")),
                         " vs ".join(map(str, d.get("seeds", []))), d.get("n", "—"),
                         "—" if c.get("points") is None else c["points"]])
    return rows


def arms_table(study, counts: dict[str, int]) -> str:
    """Per arm: the seeds landed, the jobs it declares, and the seeds its verdicts need: the study's `seeds_needed`
    for an arm with a front (the claims compare those), none for the others (the T sweep's arms, the warm study's
    reward arms: tables of their own, read at whatever seeds have landed)."""
    declared = declared_jobs(study)
    with_front = set(front_arms(study))
    return markdown_table(["arm", "seeds landed", "jobs declared", "seeds the verdicts need"],
                          [[spec.get("label") or arm, counts[arm], declared.get(arm, 0),
                            study.seeds_needed if arm in with_front else "none (no claim compares it)"]
                           for arm, spec in study.arms.items()])


def declared_jobs(study) -> dict[str, int]:
    """The jobs each arm declares (its seeds), from the study's job list."""
    declared: dict[str, int] = {}
    for job in study_jobs(study):
        declared[job.arm] = declared.get(job.arm, 0) + 1
    return declared


def short_arms(study, results: dict[str, dict]) -> str:
    """'; still to land: ARM n of N, ...' for the arms with fewer results than the jobs they declare, '' when none
    is short: a study whose claims are final may still lack an arm they do not read (the warm study's reward
    arms)."""
    counts, declared = seeds_per_arm(study, results), declared_jobs(study)
    short = [f"{study.arms[arm].get('label') or arm} {counts[arm]} of {n}" for arm, n in declared.items()
             if counts[arm] < n]
    return f"; still to land: {', '.join(short)}" if short else ""


def readme_block(study, results: dict[str, dict], status: str, parts: list[str]) -> str:
    """The study's results as the README shows them, between its markers (`update_readme`): a line on what has
    landed, then `parts` (SFT against WARP, the verdicts, the reach sentence, the T sweep, the study's figures)."""
    head = (f"**Study `{study.name}`**: {len(results)} of {len(study_jobs(study))} jobs landed ({mix(results)}); "
            f"verdicts {status or 'final'}{short_arms(study, results)}; generated by `python -m warp_lightning study study={study.name} "
            f"action=report` (report: [reports/studies/{study.name}/README.md](reports/studies/{study.name}/README.md)). "
            f"{sft_agreement(results)}").rstrip()
    return "\n\n".join([head, *(x for x in parts if x)])


def update_readme(path: Path, name: str, block: str) -> bool:
    """Rewrite what lies between `<!-- study:NAME -->` and `<!-- /study:NAME -->` in `path` (False: no markers)."""
    begin, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text or end not in text.split(begin, 1)[1]:
        return False
    before, rest = text.split(begin, 1)
    after = rest.split(end, 1)[1]
    atomic_write_bytes(path, f"{before}{begin}\n{block}\n{end}{after}".encode())
    return True


def write_report(study, results: dict[str, dict], out: Path, readme: Path | None = None) -> dict:
    """REPORT_DIR/STUDY/: README.md (verdicts, seeds, the mix of machines), claims.json, front.png, sweep_T.png and
    the figures of its claims (`FIGURES`: the warm study's gap.png)."""
    if not results:
        raise UserError(f"study {study.name} has no result yet (no file in the results folder): run some of its "
                        f"jobs first (`python -m warp_lightning study study={study.name} action=run`)")
    check_pooling(study, results)
    judged_by = str(study.get("claims") or "paper")  # checked before any work (studies/checks.py)
    out.mkdir(parents=True, exist_ok=True)
    counts = seeds_per_arm(study, results)
    status = provisional(study, results)
    text = [f"# Study `{study.name}`", "",
            f"Generated by `python -m warp_lightning study study={study.name} action=report` from "
            f"{len(results)} result files ({Path('reports/results') / str(study.name)}); numerics version {NUMERICS}. "
            f"Machines: {mix(results)}. {sft_agreement(results)}".rstrip(), "",
            arms_table(study, counts), ""]
    found: list[dict] = []
    parts: list[str] = []  # the README's block
    rows, scores = pooled_front(results)
    if rows:
        found = CLAIMS[judged_by](rows, scores)
        fronts = [study.arms[arm].get("label") or arm for arm in front_arms(study, warp_only=True)]
        first = sft_against_final(first_arm(study, main_curves(rows)), scores, fronts[0] if len(fronts) > 1 else "")
        if first:
            text += ["## SFT against WARP", "", first, "", side_by_side(results, arm=front_arms(study)[0]), ""]
            parts.append(first)
        label = f"**{status}** (each claim marked by the seeds its own arms have)" if status else "final"
        for c in found:
            c["status"] = ((claim_status(c, int(study.seeds_needed), front_seeds(study, results)) or "final")
                           if c["comparisons"] else NOT_MEASURED)
        first_column, second_column = HEADERS.get(judged_by, HEADERS["paper"])
        text += ["## Claims", "", f"Verdicts: {label}.", "",
                 markdown_table(["claim", first_column, second_column, "paired differences, 95% intervals"],
                                [[c["claim"], *(marked(c[v], "" if c["status"] == "final" else c["status"])
                                                for v in ("verdict", "verdict_judge")),
                                  c["evidence"]] for c in found]), "", MULTIPLICITY, ""]
        parts.append(markdown_table(["claim · its comparisons", f"{first_column} (paired, 95%)", second_column,
                                     "status · seeds per side", "prompts", "matched points"], verdict_rows(found)))
    for title, table in TABLES.get(judged_by, []):  # a reward arm's table shows before any front has landed
        extra = table(found, rows, scores, results)
        text += [f"## {title}", "", extra, ""] if extra else []
        parts.append(extra)
    figures: list[tuple[str, str]] = []  # (title, file name in `out`), shown in the README's block too
    if rows:
        plot_front(rows, out / "front.png")
        figures.append(("proxy reward and held-out judge vs KL", "front.png"))
        reach = reach_sentence(main_curves(rows))  # "" without RL curves to reach (the chat study)
        text += [*([reach, ""] if reach else []), "![fronts](front.png)", ""]
        parts.append(reach)
    for name, title, panels in FIGURES.get(judged_by, []):
        drawn = panels(rows, scores) if rows else []
        if drawn:
            plot_lines(drawn, "KL(pi || pi_sft), exact, nats per completion", out / name)
            text += [f"## {title}", "", f"![{title}]({name})", ""]
            figures.append((title[:1].lower() + title[1:], name))  # in the README's alt text, after "study NAME:"
    sweep = sweep_rows(study, results)
    if sweep:
        plot_sweep(sweep, out / "sweep_T.png")
        figures.append(("the T sweep", "sweep_T.png"))
        text += ["## The T sweep", "", sweep_markdown(study, sweep), "", "![T sweep](sweep_T.png)", ""]
        parts.append(sweep_markdown(study, sweep))
    shown = Path(os.path.relpath(out.resolve(), Path(readme).resolve().parent)) if readme is not None else out
    parts.append(" ".join(f"![study {study.name}: {title}]({(shown / name).as_posix()})" for title, name in figures))
    atomic_write_json(out / "claims.json", {"study": str(study.name), "status": status or "final",
                                            "seeds": counts, "claims": found, "landed": len(results),
                                            "jobs": len(study_jobs(study)), "machines": mix(results),
                                            "commits": commits(results)})
    readme_updated = readme is not None and update_readme(Path(readme), str(study.name),
                                                          readme_block(study, results, status, parts))
    write_verdicts(out.parent, Path(readme) if readme is not None else None)
    atomic_write_bytes(out / "README.md", ("\n".join(text).rstrip() + "\n").encode())
    return {"report": str(out), "results": len(results), "status": status or "final",
            "readme": str(readme) if readme_updated else None,
            "claims": {c["claim"]: {"reward": c["verdict"], "judge": c["verdict_judge"], "status": c["status"]}
                       for c in found}}


VERDICTS = "verdicts"  # the README block of every study's verdicts


def studies_in(readme: Path | None) -> list[str]:
    """The studies whose blocks the README has, in its order (the verdicts block aside)."""
    text = readme.read_text() if readme is not None and readme.exists() else ""
    return [n for n in dict.fromkeys(re.findall(r"<!-- study:([\w.-]+) -->", text)) if n != VERDICTS]


def verdicts_table(report_root: Path, names: list[str]) -> str:
    """One row per claim of every study in `names` (from REPORT_ROOT/NAME/claims.json): both verdicts, the smallest
    effect its comparisons could see (the largest of their minimum detectable effects: what "unresolved" could
    not have missed), its status, the seeds of each side of its comparisons, the prompts, the matched points, the study's jobs landed and
    their commits (its machines: the first line of its own block); a study without a report yet is one row saying
    so."""
    rows = []
    for name in names:
        path = report_root / name / "claims.json"
        if not path.exists():
            rows.append([f"`{name}`", "no job has landed yet", "—", "—", "—", "—", "—", "—", "—", "—"])
            continue
        data = json.loads(path.read_text())
        landed = f"{data['landed']} of {data['jobs']}; {', '.join(data['commits'])}" if "commits" in data else "—"
        for claim in data["claims"]:
            comparisons = claim["comparisons"]
            seeds = sorted({" vs ".join(map(str, c["reward"]["seeds"])) for c in comparisons
                            if c["reward"].get("seeds")}) or ["—"]
            prompts = sorted({c["reward"]["n"] for c in comparisons if "n" in c["reward"]})
            points = [c["points"] for c in comparisons if c.get("points") is not None]
            mde = [max((c[side]["mde"] for c in comparisons if isinstance(c.get(side), dict) and "mde" in c[side]),
                       default=None) for side in ("reward", "judge")]
            readings = claim.get("readings") or ("", "")  # a claim whose two verdicts are not proxy / judge
            verdicts = [f"{what}: {v}" if what else v for what, v in zip(readings, (claim["verdict"],
                                                                                      claim["verdict_judge"]), strict=True)]
            rows.append([f"`{name}`", claim["claim"], *verdicts,
                         " / ".join("—" if m is None else f"{m:.3f}" for m in mde), claim["status"],
                         ", ".join(seeds), ", ".join(map(str, prompts)) or "—",
                         f"{min(points)}-{max(points)}" if len(set(points)) > 1 else (str(points[0]) if points else "—"),
                         landed])
    return markdown_table(["study", "claim", "proxy reward (or the reading named)", "held-out judge (or the reading named)",
                           "smallest effect it could see (proxy / judge)", "status", "seeds per side",
                           "prompts", "matched points", "jobs landed; commits"], rows)


def is_study_report(path: Path) -> bool:
    """Whether `path` is the claims.json of a study's report (another tool's claims.json beside the studies', in a
    `report_dir` of the user's choosing, is not read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("study") == path.parent.name and isinstance(data.get("claims"), list)


def write_verdicts(report_root: Path, readme: Path | None) -> None:
    """Every study's verdicts in one table: REPORT_ROOT/verdicts.md and the README's verdicts block (if it has one)."""
    names = studies_in(readme) or sorted(p.parent.name for p in report_root.glob("*/claims.json") if is_study_report(p))
    table = verdicts_table(report_root, names)
    atomic_write_bytes(report_root / "verdicts.md", (
        "# Every study's verdicts\n\nGenerated by `python -m warp_lightning study study=NAME action=report` (each "
        "run rebuilds this table from every study's claims.json); each study's own report is in its folder.\n\n"
        + table + "\n").encode())
    if readme is not None:
        update_readme(readme, VERDICTS, table)
