"""The loop on torch.distributed with 2 CPU processes (gloo), started by Lightning's launcher."""

import json

import pytest
import torch
from conftest import cli
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def smoke(tiny_models, run_dir, *extra):
    return ["train", "+experiment=smoke", "eval.prompts=4", f"paths.models_dir={tiny_models / 'models'}",
            f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture
def one_thread(monkeypatch):
    # the same matmul thread count in every process, so that floating-point sums run in the same order
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_ddp_runs_trains_the_m_runs_in_parallel_and_merges_bit_identically(tiny_models, tmp_path, one_thread):
    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    cli(*smoke(tiny_models, sequential), cwd=tmp_path)
    cli(*smoke(tiny_models, parallel, "trainer=ddp_runs"), cwd=tmp_path)
    for folder in ("iter_1/slerp", "iter_1/init", "iter_2/slerp", "final"):
        a = load_file(sequential / folder / "model.safetensors")
        b = load_file(parallel / folder / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), folder
    manifest = json.loads((parallel / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert [(r["iteration"], r["run"]) for r in manifest["runs"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    seq_seeds = [r["seed"] for r in json.loads((sequential / "manifest.json").read_text())["runs"]]
    assert [r["seed"] for r in manifest["runs"]] == seq_seeds
    for run in ("i1_m1", "i1_m2", "i2_m1", "i2_m2"):  # each process logs its own run
        assert (parallel / "logs" / run / "metrics.csv").read_text().count("\n") >= 4, run


def test_ddp_splits_each_step_over_two_processes(tiny_models, tmp_path, one_thread):
    run_dir = tmp_path / "ddp"
    cli(*smoke(tiny_models, run_dir, "trainer=ddp", "warp.iterations=1"), cwd=tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["processes"] == 2 and [r["steps"] for r in manifest["runs"]] == [3, 3]
    assert (run_dir / "train_ddp_process_1.log").exists()  # the second process ran the same job
    final = load_file(run_dir / "final" / "model.safetensors")
    sft = load_file(tiny_models / "models" / "sft_gpt2" / "model.safetensors")
    assert any(not torch.equal(final[k], sft[k]) for k in final if k in sft)
