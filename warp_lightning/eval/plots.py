"""Figures: training curves of a `train` run (`python -m warp_lightning.plots RUN_DIR [OUT.png]`: reward and
KL to the anchor per RL step for every run (i, m), on one global step axis), the reward-KL fronts of `front`,
the T sweep of `report`, and plain line panels (`plot_lines`) for the studies' own figures.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_run_curves(run_dir: str | Path) -> dict[str, list[dict[str, float]]]:
    """{"i1_m1": [{"step": ..., "reward_mean": ..., ...}, ...], ...} from the CSV logs."""
    curves = {}
    for path in sorted(Path(run_dir).glob("logs/i*_m*/metrics.csv")):
        with path.open() as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        curves[path.parent.name] = [r for r in rows if "reward_mean" in r]
    return curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_run_curves(run_dir: str | Path, out: str | Path) -> Path:
    plt = _pyplot()
    curves = read_run_curves(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0.0
    for name, rows in curves.items():
        steps = [offset + r["step"] for r in rows]
        for ax, key in zip(axes, ("reward_mean", "kl_anchor"), strict=True):
            ax.plot(steps, [r[key] for r in rows], label=name.replace("_", " "), lw=1.2)
        offset = steps[-1] + 1 if steps else offset
    axes[0].set(xlabel="RL step (runs one after another)", ylabel="mean reward (sigmoid)",
                title="reward per step")
    axes[1].set(xlabel="RL step (runs one after another)", ylabel="KL(pi || anchor), nats per completion",
                title="KL to the EMA anchor")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def _num(value) -> float:
    return float(value) if value not in ("", None) else float("nan")


METRIC_LABELS = {"reward": "mean reward (proxy: what RL maximised)",
                 "judge": "mean judge score (held-out judge, P(positive))"}


def _seed_means(pts: list[dict], metric: str) -> list[dict]:
    """One point per eta (or step) of a curve: the mean over its seeds (a curve of one run is itself)."""
    groups: dict = {}
    for r in pts:
        groups.setdefault(r["eta"] if r["kind"] == "liti" else r["step"], []).append(r)
    out = []
    for key, group in groups.items():
        mean = {k: sum(_num(r.get(k)) for r in group) / len(group)
                for k in ("kl_mean", "kl_ci95", f"{metric}_mean", f"{metric}_ci95")}
        out.append({"x": _num(key), "seeds": len(group), **mean})
    return sorted(out, key=lambda r: r["x"])


def draw_front(ax, rows: list[dict], title: str = "reward vs KL: LITI fronts (eta from 0; > 1 extrapolates) and RL training curves",
               metric: str = "reward"):
    """Mean `metric` (reward or judge) against KL(pi || pi_sft), with 95% intervals both ways, one line per
    curve of `front` (averaged over the seeds of its arm; the intervals are then the seeds' mean half-width).

    LITI fronts of SLERP merges are solid, of linear merges dashed; training curves of single RL runs dotted;
    points beyond theta_slerp (eta > 1, extrapolation) are hollow.
    """
    names = list(dict.fromkeys(r["curve"] for r in rows))
    if len(names) > 10:  # the default cycle has 10 colours: beyond, two curves would share one
        ax.set_prop_cycle(color=list(_pyplot().get_cmap("tab20").colors))
    for name in names:
        pts = [r for r in rows if r["curve"] == name]
        if f"{metric}_mean" not in pts[0] or pts[0][f"{metric}_mean"] in ("", None):
            continue
        kind, merge = pts[0]["kind"], pts[0]["merge"]
        means = _seed_means(pts, metric)
        style = {"liti": ("-", "o") if merge != "linear" else ("--", "s"), "training": (":", "^")}[kind]
        seeds = max(r["seeds"] for r in means)
        line = ax.errorbar([r["kl_mean"] for r in means], [r[f"{metric}_mean"] for r in means],
                           xerr=[r["kl_ci95"] for r in means], yerr=[r[f"{metric}_ci95"] for r in means],
                           ls=style[0], marker=style[1], ms=4, lw=1.3, elinewidth=0.7, capsize=2,
                           label=name if seeds == 1 else f"{name} (mean of {seeds} seeds)")
        beyond = [r for r in means if kind == "liti" and r["x"] > 1]  # ExPO: eta > 1, hollow markers
        if beyond:
            ax.plot([r["kl_mean"] for r in beyond], [r[f"{metric}_mean"] for r in beyond], ls="none",
                    marker=style[1], ms=8, mfc="white", mec=line[0].get_color(), zorder=4,
                    label=f"{name}: extrapolation (eta > 1)")
    ax.set(xlabel="KL(pi || pi_sft), exact, nats per completion", ylabel=METRIC_LABELS[metric], title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_front(rows: list[dict], out: str | Path) -> Path:
    """Two panels: the proxy reward (what training maximised) and the held-out judge's score against KL."""
    has_judge = any(r.get("judge_mean") not in ("", None) for r in rows)
    fig, axes = _pyplot().subplots(1, 2 if has_judge else 1, figsize=(15, 5.2) if has_judge else (7.5, 5.2),
                                   squeeze=False)
    draw_front(axes[0][0], rows, "proxy reward vs KL: LITI fronts (eta > 1 hollow), RL training curves")
    if has_judge:
        draw_front(axes[0][1], rows, "held-out judge vs KL: the same models", metric="judge")
    return _save(fig, out)


def plot_lines(panels: list[tuple[str, str, dict[str, tuple[list[float], list[float]]]]], xlabel: str,
               out: str | Path) -> Path:
    """One panel per (title, ylabel, {label: (xs, ys)}), side by side, a line with markers per label."""
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", ms=4, lw=1.3, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_sweep(table: list[dict], out: str | Path) -> Path:
    """Reward and KL of the final model against T: the mean over seeds with its 95% interval, and each seed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["steps"] for r in table]
    for ax, key, label in zip(axes, ("reward", "kl"), ("mean reward of the final model (sigmoid)",
                                                       "KL(final || SFT), exact, nats per completion"), strict=True):
        for r in table:
            ax.scatter([r["steps"]] * len(r[f"{key}_per_seed"]), r[f"{key}_per_seed"], color="grey", s=12,
                       zorder=3, label="one seed" if r is table[0] else None)
        ax.errorbar(steps, [r[f"{key}_mean"] for r in table], yerr=[r[f"{key}_ci95"] for r in table], marker="o",
                    capsize=4, lw=1.5, label="mean over seeds, 95% interval")
        ax.set(xlabel="T (RL steps per run)", ylabel=label, xticks=steps)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("reward against T")
    axes[1].set_title("KL to the SFT policy against T")
    return _save(fig, out)


if __name__ == "__main__":
    run = Path(sys.argv[1])
    print(plot_run_curves(run, sys.argv[2] if len(sys.argv) > 2 else run / "curves.png"))
