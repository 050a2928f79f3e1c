"""Where things are: the output folder of the running Hydra job, and the layout of a `train` run's folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def cfg_output_dir() -> str:
    """`hydra.run.dir` of this job (or its sweep subfolder): where the command writes its outputs."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


@dataclass(frozen=True)
class RunLayout:
    """The folders of a `train` run, spelled once: `train` (train/loop.py, its Snapshots callback) writes them,
    `front`, `evaluate` and the studies read them.

        manifest.json              the finished run: resolved config, runs, merges, the end-of-run check
        final/                     theta_slerp of the last iteration (a Hugging Face folder)
        checkpoints/               loop.pt and run_M.ckpt (train/checkpoint.py)
        iter_I/slerp/, iter_I/init/   iteration I's merge and the next iteration's theta_init (LITI)
        iter_I/run_M/step_TTTT/    run M's snapshots along training (warp.snapshot_every > 0)
    """
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def merged(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration}" / "slerp"

    def init(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration}" / "init"

    def run(self, iteration: int, run: int) -> Path:
        return self.root / f"iter_{iteration}" / f"run_{run}"

    @staticmethod
    def snapshot(run_folder: Path, step: int) -> Path:
        """The snapshot of `step` inside a run's folder (`run(i, m)`)."""
        return Path(run_folder) / f"step_{step:04d}"

    def snapshots(self, iteration: int, run: int) -> dict[int, Path]:
        """{step: folder} of run m's complete snapshots in iteration i (those holding their config.json)."""
        return {int(p.name.removeprefix("step_")): p for p in sorted(self.run(iteration, run).glob("step_*"))
                if (p / "config.json").exists()}
