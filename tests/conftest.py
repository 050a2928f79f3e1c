"""Shared fixtures: one asset cache per machine (each registry file is downloaded at most once), and a
tiny SFT policy and reward model trained through the CLI once per test session.

`make test` runs the suite in parallel (pytest-xdist, one process per core, whole files per process). The
session fixtures that build something (`tiny_models`, `smoke_run`) build it once for all the processes: the
first takes a lock and builds into the session's common folder, the others wait and reuse it. Each process
computes with one thread (its CLI children too): the processes already share the cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest -n; None in a plain run
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config):
    if WORKER:
        import torch

        torch.set_num_threads(1)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test session, shared by the xdist processes (each waits for the one building)."""
    from warp_lightning.utils.io import file_lock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if WORKER else base  # the workers' temp folders are siblings in the session's folder
    folder, done = root / name, root / f".{name}.done"
    with file_lock(root / f".{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def asset_cache():
    """The shared cache (`$WARP_LIGHTNING_CACHE`, else `~/.cache/warp_lightning`) with the assets fetched.

    The env var is set for the session, so subprocesses (the CLI) use the same cache.
    """
    from warp_lightning.data import assets

    path = Path(os.environ.get(assets.CACHE_ENV) or Path.home() / ".cache" / "warp_lightning")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(assets.CACHE_ENV, str(path))
        for name in assets.ASSETS:
            if name != "smollm2":  # 98 MB, for tests/policy/test_smollm2.py alone, which fetches it itself
                assets.fetch(name, cache=path)
        yield path


@pytest.fixture(scope="session")
def gpt2_tokenizer(asset_cache):
    from transformers import AutoTokenizer

    from warp_lightning.data.assets import fetch

    return AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache))


TINY_SFT = ["sft.max_steps=3", "sft.n_layer=1", "sft.n_embd=32", "sft.n_head=2", "sft.context=32",
            "sft.corpus=[sentences]", "sft.val_every=2", "sft.max_val_blocks=8", "sft.warmup_steps=1"]
TINY_REWARD = ["reward_training.max_steps=3", "reward_training.max_train_texts=64",
               "reward_training.max_val_texts=32", "reward_training.max_eval_texts=32",
               "reward_training.batch_size=8", "reward_training.warmup_steps=1"]


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", *args], cwd=cwd, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, asset_cache):
    """A tiny SFT policy and a tiny reward model, trained through the CLI into one models folder (or those of
    `WARP_LIGHTNING_TEST_MODELS`, built with the same settings: `make gpu-check` builds them once)."""
    given = os.environ.get("WARP_LIGHTNING_TEST_MODELS")
    if given and all((Path(given) / "models" / m / "model.safetensors").exists()
                     for m in ("sft_gpt2", "reward_minilm_rt")):
        return Path(given)

    def build(root: Path) -> None:
        models = root / "models"
        cli("sft", *TINY_SFT, f"paths.models_dir={models}", f"hydra.run.dir={root / 'sft'}", cwd=root)
        cli("reward", *TINY_REWARD, f"paths.models_dir={models}", f"hydra.run.dir={root / 'reward'}", cwd=root)

    return built_once(tmp_path_factory, "tiny", build)


def warp_cfg(**overrides):
    """conf/warp/default.yaml (the real defaults, optimizer included) with `overrides`."""
    from omegaconf import OmegaConf

    from warp_lightning.cli import CONF_DIR

    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "warp" / "default.yaml"), overrides)


SMOKE_RUN = ["train", "+experiment=smoke", "warp.iterations=1", "eval.prompts=2"]


@pytest.fixture(scope="session")
def smoke_run(tiny_models, tmp_path_factory):
    """One `train +experiment=smoke warp.iterations=1` on the tiny models, shared by the tests that only read a
    finished run (the run folder; `SMOKE_RUN` are its arguments, for tests that run the same command again)."""
    def build(root: Path) -> None:
        cli(*SMOKE_RUN, f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={root / 'run'}", cwd=root)

    return built_once(tmp_path_factory, "smoke_run", build) / "run"
