"""`python -m warp_lightning front run=RUN`: the reward-KL Pareto fronts of WARP.md (experiment 3).

For each iteration i of a WARP run, the LITI front (1 - eta) * theta_sft + eta * theta_slerp_i over `etas`;
when the run saved its runs' last weights (`warp.snapshot_every > 0`), the same front for the linear merge
of the same runs, and for each of `merges` (METHOD:RUNS, e.g. `slerp:3-2-1`: any method of MERGES applied to a
subset of the iteration's runs in a given order; `merge_endpoint` makes each of these merges). Each baseline run
adds curves: a single RL run (I = M = 1) its training curve (theta_m at each snapshot along training), a merged
run the LITI fronts of its merges. `run` and each baseline may be a
list of runs that differ by their seed (an arm with several seeds): each run gives its own curves, with its
seed in the `seed` column. Every point is evaluated with the protocol of `evaluate` (the same prompts and
sampling random numbers for all) into front.csv (means with 95% intervals, reward and judge) and
front_prompts.csv (each point's per-prompt reward, judge score and KL: what `report` compares paired),
front_examples.csv (every point's completions of the first few prompts, for reading side by side);
front.png plots the proxy reward and the judge's score against KL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.algo import merging
from warp_lightning.algo.state import clone_state
from warp_lightning.eval.checks import NOT_A_RUN
from warp_lightning.eval.plots import plot_front
from warp_lightning.eval.protocol import load_protocol, write_csv
from warp_lightning.eval.stats import per_prompt
from warp_lightning.policy.models import load_state, model_from_state
from warp_lightning.utils.paths import RunLayout, cfg_output_dir
from warp_lightning.utils.validate import check

log = logging.getLogger(__name__)

StateDict = merging.StateDict
COLUMNS = ["curve", "arm", "seed", "kind", "merge", "runs", "anchor", "kl_coef", "iteration", "eta", "extrapolation",
           "step", "reward_mean",
           "reward_ci95", "judge_mean", "judge_ci95", "kl_mean", "kl_ci95", "kl_k1_mean", "completion_length_mean",
           "source"]
PROMPT_COLUMNS = ["curve", "seed", "eta", "step", "prompt_index", "reward", "judge", "kl"]
EXAMPLES = 4  # prompts whose completions front_examples.csv keeps, for every point


@dataclass
class Curve:
    """One line of the plot. `points()` yields (eta or step fields, state); a None state is theta_sft itself."""

    name: str
    kind: str  # "liti": interpolations towards theta_sft; "training": checkpoints along one RL run
    merge: str  # slerp | linear | none
    anchor: str
    kl_coef: float
    iteration: int
    source: str
    points: Callable[[], Iterator[tuple[dict, StateDict | None]]]
    arm: str = ""  # the run's name (`name` of the WARP run, or a baseline's key): its curves over seeds
    seed: int = 0  # the run's warp.seed
    runs: str = ""  # a `merges` curve: the runs merged, in their order ("3-2-1"); "" for the iteration's own merges


def read_run(run_dir: str | Path) -> dict:
    """The resolved config of a finished `train` run (its manifest.json)."""
    manifest = RunLayout(Path(run_dir)).manifest
    if not manifest.exists():
        raise UserError(NOT_A_RUN.format(path=run_dir))
    return json.loads(manifest.read_text())["config"]


def snapshots(run_dir: Path, iteration: int, run: int) -> dict[int, Path]:
    """{step: folder} of the theta_m snapshots `iter_i/run_m/step_TTTT/` (train with warp.snapshot_every > 0)."""
    return RunLayout(Path(run_dir)).snapshots(iteration, run)


def liti_points(theta_sft: StateDict, endpoint: Callable[[], StateDict], etas) -> Iterator:
    theta = None
    for eta in etas:
        if eta == 0:
            yield {"eta": 0.0}, None  # (1 - 0) * theta_sft: the SFT policy, evaluated once for every curve
            continue
        theta = theta if theta is not None else endpoint()
        yield {"eta": float(eta)}, merging.liti(theta_sft, theta, float(eta))


def training_points(steps: dict[int, Path]) -> Iterator:
    yield {"step": 0}, None  # a single run starts at theta_sft
    for step, folder in sorted(steps.items()):
        yield {"step": step}, load_state(folder)


def parse_merge(spec: str) -> tuple[str, tuple[int, ...]]:
    """`METHOD:RUNS` of front's `merges` (e.g. `slerp:3-2-1`): a method of MERGES and at least 2 distinct runs
    (1-based), in the order they are merged (it matters for the recursive SLERP, not for the symmetric means)."""
    method, _, runs = str(spec).partition(":")
    words = runs.split("-")
    ok = (method in merging.MERGES and all(w.isdigit() and int(w) >= 1 for w in words)
          and len({int(w) for w in words if w.isdigit()}) == len(words) >= 2)
    check(ok, "merges", spec, f"give METHOD:RUNS, e.g. slerp:3-2-1: a method of {', '.join(merging.MERGES)} and "
          "at least 2 distinct runs (1-based) joined by '-', in the order they are merged")
    return method, tuple(int(w) for w in words)


def merge_endpoint(run_dir: Path, w: dict, iteration: int, theta_sft: StateDict, method: str,
                   order) -> Callable[[], StateDict]:
    """Iteration i's runs `order` (their last snapshots, in that order) merged by MERGES[method] from that
    iteration's theta_init, as WarpState merges: lambda = warp.slerp_lambda between 2 runs for the pairwise
    methods; the options of warp.merge_options where warp.merge is `method`, else the method's defaults (TIES:
    density 0.2)."""
    def merge() -> StateDict:
        theta_init = theta_sft if iteration == 1 else load_state(RunLayout(run_dir).init(iteration - 1))
        runs = [load_state(snapshots(run_dir, iteration, m)[w["steps"]]) for m in order]
        options = dict(w.get("merge_options") or {}) if method == w["merge"] else {}
        return merging.merge_runs(method, theta_init, runs, w["slerp_lambda"], **options)

    return merge


def merge_name(method: str, order: tuple[int, ...]) -> str:
    """`slerp M3` (runs 1..M in order), `slerp M3 reversed` (M..1), else `slerp runs 2-4`."""
    size = len(order)
    if order == tuple(range(1, size + 1)):
        return f"{method} M{size}"
    if order == tuple(range(size, 0, -1)):
        return f"{method} M{size} reversed"
    return f"{method} runs {'-'.join(map(str, order))}"


def run_curves(name: str, run_dir: Path, theta_sft: StateDict, etas, linear_etas=None, merges=(),
               merge_etas=()) -> list[Curve]:
    """The curves of one train run: its training curve (I = M = 1) or the LITI front of each merge (and with
    `linear_etas`, of the linear merge of the same runs; with `merges`, [(method, runs in order)], of each of those
    merges of the same runs over `merge_etas`)."""
    w = read_run(run_dir)["warp"]
    meta = {"arm": name, "seed": int(w["seed"]), "anchor": w["anchor"], "kl_coef": float(w["kl_coef"]),
            "source": str(run_dir)}
    if w["iterations"] == 1 and w["runs"] == 1:
        steps = snapshots(run_dir, 1, 1)
        if not steps:
            raise UserError(f"{run_dir} has no snapshots (iter_1/run_1/step_*): train the baseline with "
                            "warp.snapshot_every=N to get its training curve")
        return [Curve(name, "training", "none", iteration=1, points=lambda: training_points(steps), **meta)]
    for method, order in merges:
        check(max(order) <= w["runs"], "merges", f"{method}:{'-'.join(map(str, order))}",
              f"{run_dir} has {w['runs']} runs per iteration (warp.runs)")
    everything = tuple(range(1, w["runs"] + 1))
    curves = []
    for i in range(1, w["iterations"] + 1):
        merged = RunLayout(run_dir).merged(i)
        curves.append(Curve(f"{name} i{i}", "liti", w["merge"], iteration=i, **meta,
                            points=lambda merged=merged: liti_points(theta_sft, lambda: load_state(merged), etas)))
        extra = [("linear", everything, "linear", "", linear_etas)] if linear_etas and w["merge"] == "slerp" else []
        extra += [(method, order, merge_name(method, order), "-".join(map(str, order)), merge_etas)
                  for method, order in merges if merge_etas]
        if extra and any(w["steps"] not in snapshots(run_dir, i, m) for m in range(1, w["runs"] + 1)):
            log.warning("%s: no snapshot of each run's last step in iter_%d: no front of %s (train with "
                        "warp.snapshot_every > 0)", run_dir, i, ", ".join(label for _, _, label, _, _ in extra))
            continue
        for method, order, label, runs, these in extra:
            endpoint = merge_endpoint(run_dir, w, i, theta_sft, method, order)
            curves.append(Curve(f"{name} {label} i{i}", "liti", method, iteration=i, runs=runs, **meta,
                                points=lambda endpoint=endpoint, these=these: liti_points(theta_sft, endpoint, these)))
    return curves


def check_same_sft(run_dir: Path, sft: str) -> None:
    policy = str(read_run(run_dir)["policy"]["name_or_path"])
    same = Path(policy).resolve() == Path(sft).resolve() if Path(policy).exists() else policy == sft
    if not same:
        raise UserError(f"{run_dir} started from policy {policy}, not sft={sft}: KL(pi || pi_sft) needs the "
                        "run's own SFT policy (pass sft=... or the run's paths.models_dir=...)")


def evaluate_curves(curves: list[Curve], protocol) -> tuple[list[dict], list[dict]]:
    """Evaluate every point with the protocol; theta_sft (eta = 0, step 0) once for all curves.

    Returns the points (means with intervals), their per-prompt rows (reward, judge, KL averaged over each
    prompt's completions), which line up across points: same prompts, same sampling random numbers, and the
    completions of the first `EXAMPLES` prompts of every point."""
    sft, rows, prompt_rows, example_rows = None, [], [], []
    for curve in curves:
        for where, state in curve.points():
            if state is None:
                sft = sft or protocol.evaluate(protocol.sft)
                metrics, completions = sft
            else:
                metrics, completions = protocol.evaluate(model_from_state(protocol.sft, state))
            point = {"curve": curve.name, "seed": curve.seed, "eta": where.get("eta", ""),
                     "step": where.get("step", "")}
            # eta > 1: beyond theta_slerp, theta_sft + eta (theta_slerp - theta_sft) (ExPO, alpha = eta - 1)
            extrapolated = curve.kind == "liti" and float(where.get("eta", 0)) > 1
            row = {**point, "extrapolation": extrapolated, "arm": curve.arm, "kind": curve.kind, "merge": curve.merge,
                   "runs": curve.runs, "anchor": curve.anchor,
                   "kl_coef": curve.kl_coef, "iteration": curve.iteration,
                   **{k: metrics[k] for k in COLUMNS if k in metrics}, "source": curve.source,
                   **{k: v for k, v in metrics.items() if k.startswith("reward/") and k.endswith(("_mean", "_ci95"))}}
            rows.append(row)
            ids = None
            measured = [k for k in completions[0] if k in ("reward", "judge", "kl") or k.startswith("reward/")]
            for key in measured:  # a sum reward's terms (`reward/NAME`) per prompt too
                ids, values = per_prompt(completions, key)
                point[key] = values
            prompt_rows += [{**{k: v for k, v in point.items() if k not in measured},
                             "prompt_index": i, **{k: float(point[k][j]) for k in measured}} for j, i in enumerate(ids)]
            # the first EXAMPLES prompts' completions (in the evaluation's order, not chosen), for side-by-side reading
            first = sorted({c["prompt_index"] for c in completions})[:EXAMPLES]
            example_rows += [{"curve": curve.name, "seed": curve.seed, "eta": where.get("eta", ""),
                              "step": where.get("step", ""), "prompt_index": c["prompt_index"], "sample": c["sample"],
                              "text": c["text"], "completion": c["completion"]}
                             for c in completions if c["prompt_index"] in first]
            log.info("front: %s (seed %d) %s: reward %.3f +- %.3f, judge %.3f, KL %.2f +- %.2f", curve.name,
                     curve.seed, " ".join(f"{k}={v}" for k, v in where.items()), row["reward_mean"],
                     row["reward_ci95"], row.get("judge_mean", float("nan")), row["kl_mean"], row["kl_ci95"])
    return rows, prompt_rows, example_rows


def run_dirs(value) -> list[Path]:
    """`run=DIR` or `run=[DIR, ...]` (the runs of one arm, differing by seed) as paths."""
    from omegaconf import ListConfig

    return [Path(str(v)) for v in value] if isinstance(value, ListConfig | list | tuple) else [Path(str(value))]


def run(cfg) -> dict:
    started = time.time()
    etas, linear_etas = [float(e) for e in cfg.etas], [float(e) for e in cfg.linear_etas or []]
    merges = [parse_merge(m) for m in cfg.get("merges") or []]
    merge_etas = [float(e) for e in cfg.get("merge_etas") or []]
    # curve names: "SFT_anchor_beta_0.1" (a Hydra dict key has no spaces) reads "SFT anchor beta 0.1"
    arms = {cfg.name: run_dirs(cfg.run),
            **{str(k).replace("_", " "): run_dirs(v) for k, v in (cfg.baselines or {}).items()}}
    for name, dirs in arms.items():
        for run_dir in dirs:
            check_same_sft(run_dir, str(cfg.sft))
        seeds = [int(read_run(d)["warp"]["seed"]) for d in dirs]
        if len(set(seeds)) < len(seeds):
            raise UserError(f"the runs of {name} share a seed ({seeds}): the runs of one arm differ by warp.seed")
    protocol = load_protocol(cfg)
    theta_sft = clone_state(protocol.sft.state_dict())  # in CPU memory, where the fronts interpolate
    curves = [c for name, dirs in arms.items() for run_dir in dirs
              for c in (run_curves(name, run_dir, theta_sft, etas, linear_etas, merges, merge_etas) if name == cfg.name
                        else run_curves(name, run_dir, theta_sft, etas))]
    rows, prompt_rows, example_rows = evaluate_curves(curves, protocol)
    out = Path(cfg_output_dir())
    terms = list(dict.fromkeys(k for r in rows for k in r if k.startswith("reward/")))  # a sum reward's terms
    write_csv(out / "front.csv", [{k: r.get(k, "") for k in COLUMNS + terms} for r in rows])
    per_term = list(dict.fromkeys(k for r in prompt_rows for k in r if k.startswith("reward/")))
    write_csv(out / "front_prompts.csv", [{k: r.get(k, "") for k in PROMPT_COLUMNS + per_term} for r in prompt_rows])
    write_csv(out / "front_examples.csv", example_rows)
    plot_front(rows, out / "front.png")
    best = {c.name: max((r for r in rows if r["curve"] == c.name), key=lambda r: r["reward_mean"]) for c in curves}
    return {"points": len(rows), "prompts": len({r["prompt_index"] for r in prompt_rows}),
            "curves": {name: {"max_reward": r["reward_mean"], "judge_at_max_reward": r.get("judge_mean"),
                              "kl_at_max_reward": r["kl_mean"]} for name, r in best.items()},
            "seconds": round(time.time() - started, 1)}
