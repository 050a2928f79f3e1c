"""A smoke study end to end through the CLI: two jobs spread by Hydra's submitit_local launcher (2 processes), a job
killed in the middle and run again (it resumes), the report from the result files alone once every model folder is
deleted (provisional verdicts), and the report's refusal to pool results of other numerics."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_REWARD, cli

pytestmark = pytest.mark.slow


def study_args(root: Path, tiny_models: Path, *extra: str) -> list[str]:
    return ["study", "study=smoke", f"results_dir={root / 'results'}", f"work_dir={root / 'work'}",
            f"report_dir={root / 'reports'}", f'extra=["paths.models_dir={tiny_models / "models"}"]',
            f"hydra.run.dir={root / 'study'}", *extra]


@pytest.fixture(scope="module")
def landed(tiny_models, tmp_path_factory):
    """`study action=run` of two jobs through submitit_local (both at once), keeping their model folders."""
    root = tmp_path_factory.mktemp("study")
    proc = cli(*study_args(root, tiny_models, "action=run", "jobs=[warp-s0,ema_anchor-s0]", "launcher=submitit_local",
                           "keep_models=true", "hydra.sweep.dir=" + str(root / "multirun")), cwd=root)
    return root, proc


def test_jobs_land_as_small_result_files_with_what_the_report_needs(landed, tiny_models):
    root, proc = landed
    assert "running: python -m warp_lightning study -m" in proc.stdout and "hydra/launcher=submitit_local" in proc.stdout
    files = sorted((root / "results" / "smoke").glob("*.json.gz"))
    assert [f.name for f in files] == ["ema_anchor-s0.json.gz", "warp-s0.json.gz"]
    assert all(f.stat().st_size < 100_000 for f in files)
    warp = json.loads(gzip.decompress(files[1].read_bytes()))
    assert warp["numerics"] >= 1 and len(warp["commit"]) == 40 and "cpu" in warp["compute"]
    assert warp["config"]["warp"]["seed"] == 0 and warp["config"]["warp"]["iterations"] == 2
    assert set(warp["seconds"]) == {"train", "front"}
    points = {(p["curve"], p["eta"]) for p in warp["front"]["prompts"]}
    assert {("WARP i2", 1.5), ("WARP linear i1", 1.0), ("WARP i1", 0.0)} <= points  # ExPO and linear points
    examples = warp["front"]["examples"]
    assert {(e["curve"], e["eta"]) for e in examples} == points and all(e["text"].endswith(e["completion"]) for e in examples)
    per_prompt = warp["front"]["prompts"][0]
    assert len(per_prompt["prompt_index"]) == len(per_prompt["reward"]) == len(per_prompt["kl"]) == 6
    ema = json.loads(gzip.decompress(files[0].read_bytes()))
    assert ema["config"]["warp"]["seed"] == 1000 and {r["kind"] for r in ema["front"]["rows"]} == {"training"}
    listing = cli(*study_args(root, tiny_models), cwd=root).stdout
    assert "warp-s0        done" in listing and "sft_anchor-s0  missing" in listing


def test_a_job_killed_in_the_middle_resumes(landed, tiny_models):
    """SIGKILL the job once its train has a checkpoint; the same job run again finishes from it."""
    root, _ = landed
    args = study_args(root, tiny_models, "job=sft_anchor-s0", "keep_models=true")
    checkpoint = root / "work" / "smoke" / "sft_anchor-s0" / "train" / "checkpoints" / "run_1.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", *args], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "the job's train never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "results" / "smoke" / "sft_anchor-s0.json.gz").exists()
    listing = cli(*study_args(root, tiny_models), cwd=root).stdout  # no live command holds its folder now
    assert "sft_anchor-s0  missing" in listing and f"cut in the middle: resumes from {checkpoint.parents[2]}" in listing
    cli(*args, cwd=root)
    result = json.loads(gzip.decompress((root / "results" / "smoke" / "sft_anchor-s0.json.gz").read_bytes()))
    assert result["runs"][0]["resumed_at_step"] > 0 and result["runs"][0]["steps"] == 12


def test_report_from_the_results_alone_is_provisional_and_refuses_other_numerics(landed, tiny_models):
    root, _ = landed
    shutil.rmtree(root / "work")  # no model folder left
    cli(*study_args(root, tiny_models, "action=report"), cwd=root)
    report = (root / "reports" / "smoke" / "README.md").read_text()
    assert "provisional (1 of 3 seeds)" in report and "EMA anchor beats the fixed SFT anchor" in report
    assert (root / "reports" / "smoke" / "front.png").exists()
    claims = json.loads((root / "reports" / "smoke" / "claims.json").read_text())
    assert claims["status"] == "provisional (1 of 3 seeds)" and claims["seeds"]["warp"] == 1

    path = root / "results" / "smoke" / "warp-s0.json.gz"
    record = json.loads(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(json.dumps({**record, "numerics": record["numerics"] - 1}).encode()))
    proc = cli(*study_args(root, tiny_models, "action=report"), cwd=root, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot pool the results of study smoke: warp-s0 (numerics ") and "jobs=[warp-s0]" in line
    assert "warp-s0        stale" in cli(*study_args(root, tiny_models), cwd=root).stdout


def test_a_failing_job_is_told_and_the_others_still_run(tiny_models, tmp_path):
    """Under the multirun of `action=run`, a job that fails says why in one line and the launcher goes on with the
    next; the command then exits 2 naming the jobs that did not land."""
    args = study_args(tmp_path, tiny_models, "action=run", "jobs=[T2-s0,T2-s1]")
    args[5] = f'extra=["paths.models_dir={tiny_models / "models"}","warp.lr=-1"]'
    proc = cli(*args, f"hydra.sweep.dir={tmp_path / 'multirun'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "error: job T2-s0: T2-s0 train failed: warp.lr=-1 is invalid" in proc.stderr
    assert "error: job T2-s1: T2-s1 train failed: warp.lr=-1 is invalid" in proc.stderr  # the launcher went on
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 2 of 2 jobs did not land (T2-s0, T2-s1;")


def test_build_ahead_builds_what_the_jobs_would_build_on_first_use(tiny_models, tmp_path):
    """A models folder without the reward model: `action=build` names both models the jobs need, builds the missing
    one with the build command `train` would run (the tiny settings given by `extra`, as a machine's would be), and
    a second call finds both cached and builds nothing."""
    models = tmp_path / "models"
    models.mkdir()
    for folder in (tiny_models / "models").iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and not folder.name.startswith("reward"):
            shutil.copytree(folder, models / folder.name)
    tiny = ",".join(f'"{o}"' for o in TINY_REWARD)
    extra = f"extra=['paths.models_dir={models}','reward_model.build_overrides=[{tiny}]']"
    args = ["study", "study=smoke", "action=build", extra, f"hydra.run.dir={tmp_path / 'study'}"]
    first = cli(*args, cwd=tmp_path).stdout
    assert f"missing  reward_model                {models / 'reward_minilm_rt'}" in first
    assert "cached   policy" in first and "built 1 model;" in first
    assert (models / "reward_minilm_rt" / "config.json").exists()
    second = cli(*args, cwd=tmp_path).stdout
    assert "cached   reward_model" in second and "nothing to build" in second
