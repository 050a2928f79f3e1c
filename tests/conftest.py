"""Shared fixtures: one asset cache per machine (each registry file is downloaded at most once), and a
tiny SFT policy and reward model trained through the CLI once per test session.

Two tiers: `make test` (the README's test command) runs the tests not marked `slow`; `make test-slow` the second
tier (whole commands that train, several processes, kills and resumes: `SECOND_TIER_FIXTURES` and the marks in the
files); `.ci/run` runs both. Each tier runs in parallel (pytest-xdist, one process per core, whole files per process, the
longest files first: `LONGEST_FIRST`). The session fixtures that build something (`tiny_models`, `smoke_run`,
`smoke_run_i2`) build it once for all the processes: the first takes a lock and builds into the session's common
folder, the others wait and reuse it. Every process computes with one thread (its CLI children too): tiny models
gain nothing from a second one, the processes already share the cores, and runs compared bit for bit (DDP
against sequential) need the same thread count in every process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest -n; None in a plain run
os.environ["OMP_NUM_THREADS"] = "1"

# Files that take the longest (CLI runs), handed out first so that the xdist processes finish together (with
# `--dist loadfile --no-loadscope-reorder`; xdist would otherwise start with the files holding the most tests).
# The second one needs no tiny model: it runs while the first one's process builds them.
LONGEST_FIRST = ("train/test_distributed.py", "studies/test_study_cli.py", "cli/test_stops.py", "policy/test_smollm2.py", "cli/test_experiments.py",
                 "cli/test_reliability.py", "cli/test_offline_hub.py", "cli/test_pipeline.py", "reward/test_rewards.py",
                 "reward/test_warm.py", "cli/test_smollm2_experiment.py")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


# The second tier (marker `slow`, `make test-slow`; `.ci/run` runs both tiers): whole commands in subprocesses that
# train or build, several processes, kills and resumes. Every test that needs the tiny models (trained through the
# CLI on first use, `tiny_models`) is second tier by that alone; the others are marked in their files.
SECOND_TIER_FIXTURES = ("tiny_models",)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in item.fixturenames for name in SECOND_TIER_FIXTURES):
            item.add_marker(pytest.mark.slow)

    def rank(item) -> int:
        path = item.path.as_posix()
        return next((k for k, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order inside a file, and of the other files, is kept


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


def given_models() -> Path | None:
    """The folder named by `WARP_LIGHTNING_TEST_MODELS` when it holds both tiny models (`make gpu-check`), else None."""
    given = os.environ.get("WARP_LIGHTNING_TEST_MODELS")
    if given and all((Path(given) / "models" / m / "model.safetensors").exists() for m in ("sft_gpt2", "reward_minilm_rt")):
        return Path(given)
    return None


SMOKE_RUN = ["train", "+experiment=smoke", "warp.iterations=1", "eval.prompts=2"]


def first_use_train(root: Path) -> None:
    """`SMOKE_RUN` on an empty models folder: `train` builds the tiny SFT policy and reward model itself (its
    `sft` and `reward` children, with `TINY_SFT` and `TINY_REWARD`), then runs the loop into `root / "run"`."""
    sft = "[" + ",".join(f'"{o}"' for o in TINY_SFT) + "]"
    reward = "[" + ",".join(f'"{o}"' for o in TINY_REWARD) + "]"
    cli(*SMOKE_RUN, f"paths.models_dir={root / 'models'}", f"policy.build_overrides={sft}",
        f"reward_model.build_overrides={reward}", f"hydra.run.dir={root / 'run'}", cwd=root)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, asset_cache):
    """A folder whose `models/` holds a tiny SFT policy and a tiny reward model, built by the first `train` on an
    empty models folder (`first_use_train`: the main job on a fresh machine), whose run is also `smoke_run`.
    `WARP_LIGHTNING_TEST_MODELS` names models built with the same settings instead (`make gpu-check`)."""
    return given_models() or built_once(tmp_path_factory, "tiny", first_use_train)


def shared_run(tmp_path_factory, name: str, tiny_models: Path, args) -> Path:
    """The CLI `args` on the tiny models, run once per test session for all processes: its run folder."""
    def build(root: Path) -> None:
        cli(*args, f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={root / 'run'}", cwd=root)

    return built_once(tmp_path_factory, name, build) / "run"


@pytest.fixture(scope="session")
def smoke_run(tiny_models, tmp_path_factory):
    """One `SMOKE_RUN` (`train +experiment=smoke warp.iterations=1`) on the tiny models, shared by the tests that
    only read a finished run (the run folder; tests that run the same command again use `SMOKE_RUN`)."""
    if given_models() is None:
        return tiny_models / "run"  # the first-use train
    return shared_run(tmp_path_factory, "smoke_run", tiny_models, SMOKE_RUN)


SMOKE_RUN_I2 = ["train", "+experiment=smoke", "eval.prompts=4"]


@pytest.fixture(scope="session")
def smoke_run_i2(tiny_models, tmp_path_factory):
    """The whole smoke loop (I=2, M=2) sequentially: read by the pipeline test, compared with `trainer=ddp_runs`."""
    return shared_run(tmp_path_factory, "smoke_run_i2", tiny_models, SMOKE_RUN_I2)


def warp_cfg(**overrides):
    """conf/warp/default.yaml (the real defaults, optimizer included) with `overrides`."""
    from omegaconf import OmegaConf

    from warp_lightning.cli import CONF_DIR

    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "warp" / "default.yaml"), overrides)
