"""Training curves of a `train` run: `python -m warp_lightning.plots RUN_DIR [OUT.png]`.

Reward and KL to the anchor per RL step for every run (i, m), on one global step axis.
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


def plot_run_curves(run_dir: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    run = Path(sys.argv[1])
    print(plot_run_curves(run, sys.argv[2] if len(sys.argv) > 2 else run / "curves.png"))
