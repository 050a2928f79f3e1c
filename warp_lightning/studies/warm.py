"""The verdicts of the `warm` study (conf/study/warm.yaml): does WARM narrow the gap between the proxy reward RL
optimises and the held-out judge?

Two RL arms run the same WARP (equal RL compute) against the single reward model (`single RM`) and against WARM
(the weight average of 4 members); every front point is scored by both reward models (front_prompts.csv's
`reward/single`, `reward/warm`; `reward` is the arm's own proxy) and by the judge, on the same prompts and random
numbers. The arms are independent (seeds of their own), so the comparisons pair prompts, not seeds: the two-level
bootstrap with the KL matching re-estimated in every resample, and Welch's t over the seeds' own means beside it;
every verdict takes the wider of the two (`eval.stats.wider_interval`). The curves compared are each arm's last
iteration's front, ExPO points included (the highest KL reached, where a proxy is hacked most), theta_sft left out.

- **WARM narrows the proxy-judge gap at matched KL**: the per-prompt gap is the growth since SFT of own proxy -
  judge, (proxy - proxy at theta_sft) - (judge - judge at theta_sft), the same job's theta_sft point (iteration 1,
  eta 0) on the same prompt and random numbers: RL's proxy gain not matched by the judge. The growth, not the level:
  the two reward models score the same SFT completions at different levels (0.31 against 0.27 at commit c6a80c7),
  an offset that a level gap would count as WARM's doing before any RL. WARM's front is interpolated at the KL of
  each point of the single arm's front, and d = gap(WARM) - gap(single) averaged over those points. *helps* when
  the interval lies below 0; *does not narrow* when it excludes every narrowing of `MARGIN` or more (its low end
  above -MARGIN; *widens* when above 0); otherwise *unresolved* with the smallest effect the interval judged could
  detect (`stats.judged_mde`). The second reading scores both arms with one common proxy, the single reward model
  (a WARM proxy that is merely less confident, a smaller scale, would narrow the own-proxy gap without any less
  hacking; the common proxy cannot).
- **WARM's policy scores higher on the held-out judge**: the judge alone, at matched KL (holds / contradicted /
  unresolved, as the paper's claims) and, second reading, at eta = 1 of the last iteration (the policies equal RL
  compute gives, whatever their KL).
"""

from __future__ import annotations

import math

import numpy as np

from warp_lightning.eval.report import (
    _comparison_text,
    by_seed,
    claim_record,
    endpoint_difference,
    matched_kl_difference,
    point_key,
)
from warp_lightning.eval.stats import (
    NOT_MEASURED,
    fmt_interval,
    judged_mde,
    markdown_table,
    seed_t_interval,
    seed_t_mde,
    wider_interval,
)

SINGLE, WARM = "single_RM", "WARM"  # the arms' names in front.csv (`name=`: the study's labels, spaces as _)
MARGIN = 0.02  # the smallest narrowing of the proxy-judge gap worth having (both are probabilities in [0, 1])
HELPS, WIDENS, NOT_NARROWED = "helps", "does not narrow (widens)", f"does not narrow (by {MARGIN:g} or more)"
GAP_CLAIM = "WARM narrows the proxy-judge gap at matched KL"
JUDGE_CLAIM = "WARM's policy scores higher on the held-out judge"


def last_fronts(rows: list[dict]) -> dict[str, tuple[str, dict[int, list[dict]]]]:
    """{arm: (curve name, {seed: points})} of each arm's last iteration's LITI front (ExPO points included)."""
    fronts = [r for r in rows if r["kind"] == "liti" and not r.get("runs")]
    out = {}
    for arm in (SINGLE, WARM):
        mine = [r for r in fronts if r["arm"] == arm]
        if mine:
            last = max(int(r["iteration"]) for r in mine)
            points = [r for r in mine if int(r["iteration"]) == last]
            out[arm] = (points[0]["curve"], by_seed(points))
    return out


def sft_keys(rows: list[dict]) -> dict[tuple[str, int], tuple]:
    """{(arm, seed): the point key of that job's theta_sft}: its first iteration's front at eta 0."""
    found: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["kind"] != "liti" or r.get("runs") or r["eta"] != 0.0:
            continue
        key = (r.get("arm", ""), int(float(r.get("seed") or 0)))
        if key not in found or int(r["iteration"]) < int(found[key]["iteration"]):
            found[key] = r
    return {k: point_key(r) for k, r in found.items()}


def with_gaps(scores: dict, rows: list[dict]) -> dict:
    """Every point's per-prompt values with the derived ones: `common` = the single reward model's score
    (`reward/single`); `gap` = the growth since the same job's theta_sft of own proxy - judge, prompt by prompt,
    and `gap_common` the same with the common proxy (see the module: a growth, so that the reward models' levels
    at SFT do not count). A point whose job has no theta_sft point on the same prompts gets no gap."""
    sfts = sft_keys(rows)
    sft_of = {point_key(r): sfts.get((r.get("arm", ""), int(float(r.get("seed") or 0)))) for r in rows}
    out = {}
    for key, s in scores.items():
        extra = {}
        if "reward/single" in s:
            extra["common"] = s["reward/single"]
        base = scores.get(sft_of.get(key))
        if base is not None and np.array_equal(base["ids"], s["ids"]) and "judge" in s:
            for name, proxy in (("gap", "reward"), ("gap_common", "reward/single")):
                if proxy in s and proxy in base:
                    extra[name] = (s[proxy] - base[proxy]) - (s["judge"] - base["judge"])
        out[key] = {**s, **extra}
    return out


def gap_verdict(found: dict | None) -> str:
    """helps / does not narrow / unresolved (with the MDE) from d = gap(WARM) - gap(single) (see the module)."""
    if found is None:
        return NOT_MEASURED
    d = wider_interval(found["diff"], found.get("seed_t"))
    if d is None or math.isnan(d.low) or math.isnan(d.high):
        return f"unresolved ({found.get('why', 'no interval')})"
    if d.high < 0:
        return HELPS
    if d.low > 0:
        return WIDENS
    if d.low > -MARGIN:
        return NOT_NARROWED
    mde = judged_mde(found["diff"], found.get("seed_t"))
    return f"unresolved (smallest detectable effect {mde:.3f})"


def up_to_eta_1(points: dict[int, list[dict]]) -> dict[int, list[dict]]:
    return {s: [r for r in pts if r["eta"] <= 1] for s, pts in points.items()}


def claims(rows: list[dict], scores: dict | None = None) -> list[dict]:
    """The warm study's claims, in the format of `eval.report.claims` (WARM's front as A, the single arm's as B)."""
    fronts = last_fronts(rows)
    scores = with_gaps(scores or {}, rows)
    both = SINGLE in fronts and WARM in fronts
    missing = "needs the fronts of both arms (single RM and WARM)"
    what = f"{fronts[WARM][0]} over {fronts[SINGLE][0]}" if both else ""
    a, b = (fronts[WARM][1], fronts[SINGLE][1]) if both else ({}, {})

    gap = ({"reward": matched_kl_difference(a, b, "gap", scores),
            "judge": matched_kl_difference(a, b, "gap_common", scores)} if both else {})
    record = claim_record(GAP_CLAIM, "d = gap(WARM) - gap(single) at matched KL, gap = the growth of proxy - judge "
                          "since the job's theta_sft, per prompt: "
                          f"helps when the interval lies below 0, does not narrow when it excludes a narrowing of "
                          f"{MARGIN:g} or more; first the arm's own proxy, then the common proxy (the single RM)",
                          [(f"{what} (gap: own proxy | common proxy)", gap)] if both else [], missing)
    # what its two verdicts are (not proxy / judge); the own proxies score on scales of their own (WARM flatter)
    record["readings"] = ["gap, own proxy (each its own scale)", "gap, common proxy (one scale)"]
    if both:
        record["verdict"], record["verdict_judge"] = gap_verdict(gap["reward"]), gap_verdict(gap["judge"])
        record["evidence"] = _comparison_text(what, {"gap (own proxy)": gap["reward"],
                                                     "gap (common proxy)": gap["judge"]})

    judge = ({"reward": matched_kl_difference(a, b, "judge", scores),
              "judge": endpoint_difference(up_to_eta_1(a), up_to_eta_1(b), "judge", scores)} if both else {})
    judged = claim_record(JUDGE_CLAIM, "WARM's front lies above the single arm's on the held-out judge at matched KL; "
                          "second reading: at eta = 1 (equal RL compute)",
                          [(f"{what} (judge: matched KL | eta = 1)", judge)] if both else [], missing)
    judged["readings"] = ["judge at matched KL", "judge at eta = 1"]
    if both:
        judged["evidence"] = _comparison_text(what, {"judge at matched KL": judge["reward"],
                                                     "judge at eta = 1": judge["judge"]})
    return [record, judged]


def _mean(points: dict[int, list[dict]], eta: float, key: str, scores: dict) -> float:
    """The mean over seeds and prompts of `key` at the points at `eta`."""
    values = [scores.get(point_key(r), {}).get(key) for pts in points.values() for r in pts if r["eta"] == eta]
    return float(np.mean(values)) if values and all(v is not None for v in values) else math.nan


def _interval(found: dict) -> str:
    d = wider_interval(found["diff"], found.get("seed_t"))
    return found.get("why", "—") if d is None else fmt_interval(d.mean, d.low, d.high)


def gap_table(rows: list[dict], scores: dict) -> str:
    """The proxy, the judge and their gap as KL grows: per eta of the last fronts, each arm's means (KL, own proxy,
    the common proxy, judge, gap), and WARM - single at the single arm's KL of that eta (matched, 95%: the wider of
    the bootstrap and Welch's t)."""
    fronts = last_fronts(rows)
    if SINGLE not in fronts or WARM not in fronts:
        return ""
    scores = with_gaps(scores, rows)
    (_, single), (_, warm) = fronts[SINGLE], fronts[WARM]
    etas = sorted({r["eta"] for pts in single.values() for r in pts if r["eta"] > 0})
    table = []
    for eta in etas:
        at = {s: [r for r in pts if r["eta"] == eta] for s, pts in single.items()}
        cells = [f"{eta:g}"]
        for key, digits in (("kl", 2), ("reward", 3), ("common", 3), ("judge", 3), ("gap", 3)):
            cells.append(" / ".join(f"{_mean(p, eta, key, scores):.{digits}f}" for p in (single, warm)))
        for metric in ("gap", "gap_common", "judge"):
            cells.append(_interval(matched_kl_difference(warm, at, metric, scores)))
        table.append(cells)
    return (markdown_table(["eta", "KL: single / WARM", "own proxy: single / WARM", "common proxy (single RM)",
                            "judge", "gap growth since SFT (own proxy - judge)", "WARM - single: gap (own), matched KL",
                            "gap (common proxy)", "judge"], table)
            + "\n\nEach arm's last front (eta > 1: ExPO), means over seeds and the same test prompts; the gap is the "
            "growth of proxy - judge since the job's own theta_sft, prompt by prompt (the reward models' levels at SFT "
            "differ: 0 at theta_sft for both arms); the differences "
            "interpolate WARM's front (each seed's means over the prompts) at the single arm's KL of that eta, on the "
            "same resampled prompts for both arms (95%: "
            "the wider of the two-level bootstrap and Welch's t over seeds).")


GAP_PANELS = (("proxy reward (own) and held-out judge", "mean score", (("reward", "own proxy"), ("judge", "judge"))),
              ("growth of the proxy-judge gap since SFT", "mean of (proxy - judge) minus its value at theta_sft",
               (("gap", "own proxy - judge"), ("gap_common", "common proxy (single RM) - judge"))))


def gap_panels(rows: list[dict], scores: dict) -> list[tuple[str, str, dict]]:
    """The figure of `gap_table`: per arm with a front, its last front's points (eta 0 to the last ExPO eta) as
    (mean KL, mean value) over seeds and prompts; left the own proxy and the judge, right the gaps (WARM's to the
    common proxy too: the single arm's common proxy is its own)."""
    fronts = last_fronts(rows)
    if not fronts:
        return []
    scores = with_gaps(scores, rows)
    panels = []
    for title, ylabel, keys in GAP_PANELS:
        lines = {}
        for arm, (_, points) in fronts.items():
            etas = sorted({r["eta"] for pts in points.values() for r in pts})
            for key, what in keys:
                if key == "gap_common" and arm == SINGLE:  # the single arm's common proxy is its own
                    continue
                ys = [_mean(points, eta, key, scores) for eta in etas]
                if not all(math.isnan(y) for y in ys):
                    xs = [_mean(points, eta, "kl", scores) for eta in etas]
                    lines[f"{arm.replace('_', ' ')}: {what}"] = (xs, ys)
        panels.append((f"{title} vs KL, each arm's last front", ylabel, lines))
    return panels


ACCURACY_KEYS = ("val_pair_accuracy", "sentences_accuracy", "memorised")


def _accuracy_cells(models: list[dict]) -> list[str]:
    cells = []
    for key in ACCURACY_KEYS:
        values = [m[key] for m in models if m.get(key) is not None]
        cells.append(f"{np.mean(values):.3f}" if values else "—")
    return cells


def accuracy_table(results: dict[str, dict]) -> str:
    """The reward jobs' figures: per arm (clean labels, 25% flipped), every member (its learning rate and dropout),
    the weight average and the prediction average: held-out pair accuracy, sign accuracy on Pang & Lee's sentences
    and (flipped labels) the fraction of the flipped training pairs scored as flipped (memorised); means over the
    seeds landed."""
    by_arm: dict[str, list[dict]] = {}
    for r in results.values():
        if r.get("reward"):
            by_arm.setdefault(r["label"], []).append(r["reward"])
    table = []
    for label, runs in by_arm.items():
        for k, member in enumerate(runs[0]["members"]):
            table.append([label, len(runs), f"member {k + 1} (lr {member['lr']:g}, dropout {member['dropout']})",
                          *_accuracy_cells([run["members"][k] for run in runs])])
        for key, name in (("weight_average", "weight average (WARM)"), ("prediction_average", "prediction average")):
            table.append([label, len(runs), f"**{name}**", *_accuracy_cells([run[key] for run in runs])])
    if not table:
        return ""
    return (markdown_table(["training labels", "seeds", "model", "held-out pair accuracy", "sentences accuracy",
                            "flipped pairs memorised"], table)
            + "\n\nMeans over the reward jobs landed (WARM's recipe, reward_training.seed of each job's own; `—`: not "
            "measured). Memorised: the fraction of the flipped training pairs that the model orders as the flipped "
            "labels say (lower: less memorisation of the noise).\n\n" + accuracy_differences(by_arm))


def _members_mean(run: dict) -> dict:
    """The members' mean figure of each key (what a member gives on average: the weight average's first peer)."""
    return {key: float(np.mean([m[key] for m in run["members"]])) if all(m.get(key) is not None
                                                                          for m in run["members"]) else None
            for key in ACCURACY_KEYS}


# the weight average against its two peers, within each reward job (the same members, data and seed)
CONTRASTS = (("weight average - prediction average", lambda run: run["weight_average"],
              lambda run: run["prediction_average"]),
             ("weight average - the members' mean", lambda run: run["weight_average"], _members_mean))


def _t_cell(a: list, b: list, paired: bool) -> str:
    """mean(a) - mean(b) with its 95% Student-t interval over seeds and the smallest effect it could see; `—` when a
    side has no figure."""
    if not a or not b or any(v is None for v in (*a, *b)):
        return "—"
    t = seed_t_interval(a, b, paired=paired)
    if math.isnan(t["low"]):
        return f"{fmt_interval(t['mean'], t['low'], t['high'])} (1 seed: no interval)"
    return f"{fmt_interval(t['mean'], t['low'], t['high'])} (MDE {seed_t_mde(t):.3f})"


def accuracy_differences(by_arm: dict[str, list[dict]]) -> str:
    """The weight average against the prediction average and against the members' mean, paired within each reward
    job (a paired t over its seeds: the members, data and seed are the job's), and 25% flipped - clean for each
    average (Welch's t: the two arms' jobs have seeds of their own). Intervals over seeds, not over texts: the
    question is what WARM's recipe gives from one training seed to the next."""
    rows = []
    for label, runs in by_arm.items():
        for name, a, b in CONTRASTS:
            rows.append([label, len(runs), name, *(_t_cell([a(r).get(k) for r in runs], [b(r).get(k) for r in runs],
                                                           paired=True) for k in ACCURACY_KEYS)])
    if len(by_arm) == 2:
        clean, noisy = sorted(by_arm.values(), key=lambda runs: runs[0]["weight_average"].get("memorised") is not None)
        for key, name in (("weight_average", "weight average"), ("prediction_average", "prediction average")):
            rows.append(["flipped - clean", f"{len(noisy)} vs {len(clean)}", f"{name}: 25% flipped - clean labels",
                         *(_t_cell([r[key].get(k) for r in noisy], [r[key].get(k) for r in clean], paired=False)
                           for k in ACCURACY_KEYS[:2]), "—"])
    return (markdown_table(["training labels", "seeds", "difference", "held-out pair accuracy", "sentences accuracy",
                            "flipped pairs memorised"], rows)
            + "\n\nDifferences of accuracy (memorised: lower is better) with 95% Student-t intervals over the reward "
            "jobs' seeds (paired within a job; Welch's t between the clean and the flipped arms) and the smallest "
            "effect each could see (MDE, 80% power). WARM's paper expects the weight average about as accurate as "
            "the prediction average on clean labels and above it, memorising fewer flipped pairs, under label noise.")
