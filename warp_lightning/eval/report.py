"""`python -m warp_lightning report`: `reports/` from the outputs of the experiments of WARP.md.

- experiment 1 (`evaluation=`, an `evaluate` run): `sft_vs_warp.md`, model | mean reward | mean KL;
- experiment 2 (`sweep=`, the multirun folder of `train -m hparams_search=steps`): `sweep_T.{md,csv,png}`,
  reward and KL of the final model against T, mean over seeds with 95% intervals;
- experiment 3 (`front=`, a `front` run): `front.{md,csv,png}` and `claims.md`, the paper's claims checked
  on the fronts, each with its numbers;
- `run=` (a train run): `warp_curves.png`, its reward and KL per RL step;
- `README.md`: all of it on one page.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.eval.plots import plot_front, plot_run_curves, plot_sweep
from warp_lightning.eval.protocol import results_table
from warp_lightning.eval.stats import fmt_ci, markdown_table, mean_ci95
from warp_lightning.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


def _write(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, (text.rstrip("\n") + "\n").encode())


# ---- experiment 1: SFT vs aligned ------------------------------------------------------------------------

def experiment1(evaluation_dir: Path) -> str:
    """The table of an `evaluate` run (its metrics.json, every model it evaluated)."""
    path = Path(evaluation_dir) / "metrics.json"
    if not path.exists():
        raise UserError(f"evaluation={evaluation_dir} has no metrics.json: pass an `evaluate` run folder")
    metrics = json.loads(path.read_text())
    models = metrics.get("models") or {metrics["model"]: metrics}
    first = next(iter(models.values()))
    return (f"{results_table(models)}\n\nMean over {first['subsamples']} seeded subsamples of "
            f"{first['prompts_per_subsample']} held-out prompts (one completion each), with the half-width of "
            f"the 95% interval (Student t over subsamples). KL: {first['kl_estimator']}.")


# ---- experiment 2: the T sweep ---------------------------------------------------------------------------

def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """One record per finished job of a `train -m` sweep: T, seed and its final evaluation (metrics.json)."""
    from omegaconf import OmegaConf

    jobs = []
    for config in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        job = config.parent.parent
        if not (job / "metrics.json").exists():
            log.warning("%s: no metrics.json (unfinished job), left out", job)
            continue
        w = OmegaConf.load(config).warp
        metrics = json.loads((job / "metrics.json").read_text())
        jobs.append({"steps": int(w.steps), "seed": int(w.seed), "iterations": int(w.iterations),
                     "runs": int(w.runs), "reward": metrics["final_reward_mean"], "kl": metrics["final_kl_to_sft"],
                     "sft_reward": metrics["sft_reward_mean"], "seconds": metrics["seconds"], "dir": str(job)})
    if not jobs:
        raise UserError(f"sweep={sweep_dir} holds no finished job (*/metrics.json): pass the multirun folder of "
                        "`python -m warp_lightning train -m hparams_search=steps`")
    return jobs


def sweep_table(jobs: list[dict]) -> list[dict]:
    """Per T: mean over seeds and the 95% interval (Student t over seeds) of the final reward and KL."""
    table = []
    for steps in sorted({j["steps"] for j in jobs}):
        group = sorted((j for j in jobs if j["steps"] == steps), key=lambda j: j["seed"])
        row = {"steps": steps, "seeds": [j["seed"] for j in group], "iterations": group[0]["iterations"],
               "runs": group[0]["runs"], "minutes_per_job": sum(j["seconds"] for j in group) / len(group) / 60}
        for key in ("reward", "kl", "sft_reward"):
            row[f"{key}_per_seed"] = [j[key] for j in group]
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean_ci95(row[f"{key}_per_seed"])
        table.append(row)
    return table


def sweep_markdown(table: list[dict]) -> str:
    rows = [[r["steps"], ", ".join(map(str, r["seeds"])), fmt_ci(r["reward_mean"], r["reward_ci95"]),
             fmt_ci(r["kl_mean"], r["kl_ci95"], 2), fmt_ci(r["sft_reward_mean"], r["sft_reward_ci95"]),
             f"{r['minutes_per_job']:.1f}"] for r in table]
    first = table[0]
    return (markdown_table(["T", "seeds", "mean reward (final)", "KL(final || SFT)", "SFT reward (same prompts)",
                            "minutes per job"], rows) +
            f"\n\nI={first['iterations']}, M={first['runs']}; each job's final model is evaluated at the end of "
            "`train` (held-out prompts, one completion each, exact KL). Mean over seeds with the half-width of the "
            "95% interval (Student t over seeds).")


def write_sweep(sweep_dir: Path, out: Path) -> list[Path]:
    table = sweep_table(sweep_jobs(sweep_dir))
    with (out / "sweep_T.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["steps", "seed", "reward", "kl", "sft_reward"])
        for r in table:
            for seed, reward, kl, sft in zip(r["seeds"], r["reward_per_seed"], r["kl_per_seed"],
                                             r["sft_reward_per_seed"], strict=True):
                writer.writerow([r["steps"], seed, reward, kl, sft])
    return [_write(out / "sweep_T.md", sweep_markdown(table)), out / "sweep_T.csv",
            plot_sweep(table, out / "sweep_T.png")]


# ---- experiment 3: fronts and the paper's claims ---------------------------------------------------------

NUMERIC = ("kl_coef", "iteration", "eta", "step", "reward_mean", "reward_ci95", "kl_mean", "kl_ci95",
           "kl_k1_mean", "completion_length_mean")


def read_front(front_dir: Path) -> list[dict]:
    path = Path(front_dir) / "front.csv"
    if not path.exists():
        raise UserError(f"front={front_dir} has no front.csv: pass a `front` run folder")
    with path.open() as f:
        return [{k: (float(v) if k in NUMERIC and v != "" else v) for k, v in r.items()} for r in csv.DictReader(f)]


def curves(rows: list[dict], **where) -> dict[str, list[dict]]:
    """{curve name: its points} for the curves whose fields equal `where`."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if all(r[k] == v for k, v in where.items()):
            out.setdefault(r["curve"], []).append(r)
    return out


def is_sft_point(r: dict) -> bool:
    return r["eta"] == 0.0 or r["step"] == 0.0


def matched_kl_gap(front: list[dict], points: list[dict]) -> dict:
    """How far `front` lies above `points` at the same KL: front reward, interpolated linearly in KL, minus the
    point's reward, for every point (but theta_sft, shared by all) inside the front's KL range."""
    import numpy as np

    ref = sorted(front, key=lambda r: r["kl_mean"])
    kl, reward = np.array([r["kl_mean"] for r in ref]), np.array([r["reward_mean"] for r in ref])
    inside = [p for p in points if not is_sft_point(p) and kl[0] <= p["kl_mean"] <= kl[-1]]
    gaps = [float(np.interp(p["kl_mean"], kl, reward)) - p["reward_mean"] for p in inside]
    return {"mean_gap": sum(gaps) / len(gaps) if gaps else float("nan"), "above": sum(g > 0 for g in gaps),
            "compared": len(gaps), "outside": len([p for p in points if not is_sft_point(p)]) - len(gaps)}


def _gap_text(gap: dict, what: str) -> str:
    if not gap["compared"]:
        return f"{what}: no point inside the front's KL range"
    return (f"{what}: {gap['mean_gap']:+.3f} reward on average at matched KL, above at {gap['above']} of "
            f"{gap['compared']} points" + (f" ({gap['outside']} beyond its KL range)" if gap["outside"] else ""))


def _end(points: list[dict]) -> dict:
    """The last point of a curve: eta = 1 of a front, the last snapshot of a training curve."""
    return max(points, key=lambda r: r["eta"] if r["kind"] == "liti" else r["step"])


def _point_text(r: dict) -> str:
    return f"reward {fmt_ci(r['reward_mean'], r['reward_ci95'])}, KL {fmt_ci(r['kl_mean'], r['kl_ci95'], 2)}"


def claims(rows: list[dict]) -> list[dict]:
    """The paper's claims (WARP.md), each with its criterion, a verdict and the numbers behind it."""
    warp = curves(rows, kind="liti", merge="slerp")
    warp_by_iteration = {int(p[0]["iteration"]): (name, p) for name, p in warp.items()}
    linear = curves(rows, kind="liti", merge="linear")
    ema, sft = curves(rows, kind="training", anchor="ema"), curves(rows, kind="training", anchor="sft")
    out = []

    def add(claim: str, criterion: str, holds: bool | None, evidence: list[str]) -> None:
        verdict = "not measured" if holds is None else ("holds" if holds else "does not hold")
        out.append({"claim": claim, "criterion": criterion, "verdict": verdict, "evidence": "; ".join(evidence)})

    criterion = "the EMA-anchor RL curve lies above each fixed-anchor RL curve at matched KL (mean gap > 0)"
    if ema and sft:
        (ema_name, ema_pts), evidence, holds = next(iter(ema.items())), [], True
        for name, pts in sft.items():
            gap = matched_kl_gap(ema_pts, pts)
            holds &= gap["mean_gap"] > 0
            evidence.append(_gap_text(gap, f"{ema_name} over {name}"))
        evidence += [f"last snapshot of {n}: {_point_text(_end(p))}" for n, p in {**ema, **sft}.items()]
        add("EMA anchor beats the fixed SFT anchor", criterion, holds, evidence)
    else:
        add("EMA anchor beats the fixed SFT anchor", criterion, None, ["needs EMA- and SFT-anchor baselines"])

    criterion = "the SLERP merge (eta = 1) has a higher mean reward than the linear merge, at every iteration"
    pairs = [(i, n, p) for n, p in linear.items() if (i := int(p[0]["iteration"])) in warp_by_iteration]
    evidence = [f"iteration {i}: SLERP {_point_text(_end(warp_by_iteration[i][1]))}; {n} {_point_text(_end(p))}"
                for i, n, p in pairs]
    holds = all(_end(warp_by_iteration[i][1])["reward_mean"] > _end(p)["reward_mean"] for i, _, p in pairs)
    add("SLERP beats linear merging in reward", criterion, holds if pairs else None,
        evidence or ["needs the linear-merge fronts (train with warp.snapshot_every > 0)"])

    criterion = "the last iteration's LITI front lies above every RL training curve at matched KL (mean gap > 0)"
    training = {**ema, **sft}
    if warp_by_iteration and training:
        name, front = warp_by_iteration[max(warp_by_iteration)]
        gaps = {n: matched_kl_gap(front, pts) for n, pts in training.items()}
        add("the LITI front lies above the RL training curve", criterion,
            all(g["mean_gap"] > 0 for g in gaps.values()), [_gap_text(g, f"{name} over {n}") for n, g in gaps.items()])
    else:
        add("the LITI front lies above the RL training curve", criterion, None, ["needs a front and RL baselines"])

    criterion = ("the iteration-2 merge has a higher mean reward than the iteration-1 merge, and the iteration-2 "
                 "front is not below the iteration-1 front at matched KL (mean gap >= 0)")
    if {1, 2} <= warp_by_iteration.keys():
        (n1, f1), (n2, f2) = warp_by_iteration[1], warp_by_iteration[2]
        gap = matched_kl_gap(f2, f1)
        higher = _end(f2)["reward_mean"] > _end(f1)["reward_mean"]
        add("iteration 2 improves on iteration 1", criterion, higher and not gap["mean_gap"] < 0,
            [f"{n1} merge: {_point_text(_end(f1))}", f"{n2} merge: {_point_text(_end(f2))}",
             _gap_text(gap, f"{n2} over {n1}")])
    else:
        add("iteration 2 improves on iteration 1", criterion, None, ["needs a run with I >= 2"])
    return out


def claims_markdown(found: list[dict]) -> str:
    return markdown_table(["claim (WARP.md)", "verdict", "criterion", "numbers"],
                          [[c["claim"], f"**{c['verdict']}**", c["criterion"], c["evidence"]] for c in found])


def front_markdown(rows: list[dict]) -> str:
    table = [[r["curve"], f"{r['eta']:.1f}" if r["kind"] == "liti" else f"step {int(r['step'])}",
              fmt_ci(r["reward_mean"], r["reward_ci95"]), fmt_ci(r["kl_mean"], r["kl_ci95"], 2)] for r in rows]
    return markdown_table(["curve", "eta / step", "mean reward", "KL(pi || pi_sft)"], table)


def write_front(front_dir: Path, out: Path) -> tuple[list[Path], list[dict]]:
    rows = read_front(front_dir)
    shutil.copyfile(Path(front_dir) / "front.csv", out / "front.csv")
    found = claims(rows)
    return [_write(out / "front.md", front_markdown(rows)), out / "front.csv", plot_front(rows, out / "front.png"),
            _write(out / "claims.md", claims_markdown(found))], found


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
        verdicts = {c["claim"]: c["verdict"] for c in found}
    if cfg.run:
        written.append(plot_run_curves(Path(str(cfg.run)), out / "warp_curves.png"))
        sections["warp_curves"] = ""
    if not sections:
        raise UserError("nothing to report: pass evaluation=DIR, sweep=DIR, front=DIR and/or run=DIR")
    written.append(summary(out, sections))
    for name, verdict in verdicts.items():
        log.info("claim: %s: %s", name, verdict)
    return {"reports": str(out), "written": [str(p) for p in written], "claims": verdicts}
