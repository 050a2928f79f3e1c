"""The loop on torch.distributed with 2 CPU processes (gloo), started by Lightning's launcher."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import cli
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


ONE_ITERATION = ("warp.iterations=1", "warp.checkpoint_every=1")  # a checkpoint each step: the resume test


def smoke(tiny_models, run_dir, *extra):
    return ["train", "+experiment=smoke", "eval.prompts=4", f"paths.models_dir={tiny_models / 'models'}",
            f"hydra.run.dir={run_dir}", *extra]


# Every process computes with one thread (conftest): the same matmul thread count in every process, so that
# floating-point sums run in the same order.

@pytest.fixture(scope="module")
def ddp_run(tiny_models, tmp_path_factory):
    """One iteration of the smoke loop with `trainer=ddp` (each step split over 2 processes)."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    cli(*smoke(tiny_models, run_dir, "trainer=ddp", *ONE_ITERATION), cwd=run_dir.parent)
    return run_dir


@pytest.fixture(scope="module")
def fsdp_run(tiny_models, tmp_path_factory):
    """The same with `trainer=fsdp`: compared with `ddp_run`, and the uninterrupted run of the resume test."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    cli(*smoke(tiny_models, run_dir, "trainer=fsdp", *ONE_ITERATION), cwd=run_dir.parent)
    return run_dir


def test_ddp_runs_trains_the_m_runs_in_parallel_and_merges_bit_identically(tiny_models, smoke_run_i2, tmp_path):
    sequential, parallel = smoke_run_i2, tmp_path / "parallel"  # conftest.SMOKE_RUN_I2: the same run, sequential
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


def test_ddp_splits_each_step_over_two_processes(tiny_models, ddp_run):
    manifest = json.loads((ddp_run / "manifest.json").read_text())
    assert manifest["processes"] == 2 and [r["steps"] for r in manifest["runs"]] == [3, 3]
    assert (ddp_run / "train_ddp_process_1.log").exists()  # the second process ran the same job
    final = load_file(ddp_run / "final" / "model.safetensors")
    sft = load_file(tiny_models / "models" / "sft_gpt2" / "model.safetensors")
    assert any(not torch.equal(final[k], sft[k]) for k in final if k in sft)


def output(proc) -> str:
    return proc.stdout + proc.stderr  # Hydra's job log goes to stdout


def test_fsdp_shards_every_weight_and_trains_exactly_like_ddp(ddp_run, fsdp_run):
    ddp, fsdp = ddp_run, fsdp_run
    logs = (fsdp / "cli.log").read_text() + (fsdp / "train_ddp_process_1.log").read_text()
    held = {int(r): (int(n), int(total)) for r, n, total in
            re.findall(r"fsdp: process (\d) holds (\d+) of the (\d+) weights", logs)}
    assert set(held) == {0, 1}
    total = held[0][1]
    assert held[0][0] + held[1][0] == total and all(n < 0.51 * total for n, _ in held.values())
    # the same sums in the same order: with 2 processes, sharding changes where a weight lives, not its value
    for folder in ("iter_1/slerp", "iter_1/init", "final"):
        a, b = load_file(ddp / folder / "model.safetensors"), load_file(fsdp / folder / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    for run in ("i1_m1", "i1_m2"):
        a, b = (list(csv.DictReader(open(d / "logs" / run / "metrics.csv"))) for d in (ddp, fsdp))
        assert len(a) == len(b) and a[1]["reward_mean"] != ""
        for row_a, row_b in zip(a, b, strict=True):  # the norm of the shards' norms is summed in another order
            assert math.isclose(float(row_a.pop("grad_norm") or 0), float(row_b.pop("grad_norm") or 0), rel_tol=1e-6)
            assert row_a == row_b
    assert json.loads((fsdp / "manifest.json").read_text())["processes"] == 2


def test_fsdp_resumes_after_sigkill_bit_identically(tiny_models, fsdp_run, tmp_path):
    whole, broken = fsdp_run, tmp_path / "broken"
    args = ("trainer=fsdp", *ONE_ITERATION)
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", *smoke(tiny_models, broken, *args)],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    for line in proc.stdout:  # kill both processes (the launcher's child too) once run 2 has a checkpoint
        if "checkpoint: iteration 1 run 2 step 2" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL
    assert not (broken / "final").exists()
    resumed = output(cli(*smoke(tiny_models, broken, *args), cwd=tmp_path))
    assert "resuming iteration 1 run 2 at step 2" in resumed
    for folder in ("iter_1/slerp", "final"):
        assert (whole / folder / "model.safetensors").read_bytes() == (broken / folder / "model.safetensors").read_bytes()
    assert (whole / "logs/i1_m2/metrics.csv").read_text() == (broken / "logs/i1_m2/metrics.csv").read_text()


def _sharded_worker(rank: int, port: int) -> None:
    """One of 2 gloo processes: a sharded policy and anchor against unsharded copies of the same weights."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from transformers import GPT2Config, GPT2LMHeadModel

    from warp_lightning.algo.rl import ema_update_
    from warp_lightning.policy.logprobs import completion_logprobs
    from warp_lightning.policy.sampling import sample
    from warp_lightning.policy.sharding import full_state, shard_model, whole

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        policy = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=64)).eval()
        anchor, ref_policy, ref_anchor = (copy.deepcopy(policy) for _ in range(3))
        anchor.requires_grad_(False)
        ref_anchor.requires_grad_(False)
        mesh = init_device_mesh("cpu", (2,))
        shard_model(policy, mesh)
        shard_model(anchor, mesh)
        assert all(whole(p).numel() > p.to_local().numel() for p in policy.parameters() if p.numel() > 1)
        ids = torch.randint(0, 300, (4, 5))

        def rollout(model):
            return sample(model, ids, torch.ones_like(ids), 6, generator=torch.Generator().manual_seed(1),
                          keep_logits=True, stop_at_eos=False)

        r, r_ref = rollout(policy), rollout(ref_policy)
        assert torch.equal(r.input_ids, r_ref.input_ids)  # sampling sees the whole weights
        assert r.sampled_by(policy)  # the kept sampling logits stand for the head until the shards change
        lp, lp_ref = completion_logprobs(policy, r)[0], completion_logprobs(ref_policy, r_ref)[0]
        assert torch.equal(lp, lp_ref)
        lp.sum().backward()
        lp_ref.sum().backward()
        grads = dict(ref_policy.named_parameters())
        for name, p in policy.named_parameters():  # gradients reduce-scattered into each process's shard
            assert torch.allclose(whole(p.grad), grads[name].grad, atol=1e-6), name
        for model in (policy, ref_policy):
            torch.optim.SGD(model.parameters(), lr=1.0).step()
        assert not r.sampled_by(policy)
        r2, r2_ref = rollout(policy), rollout(ref_policy)  # no block stays gathered from the last sampling
        assert torch.allclose(r2.logits, r2_ref.logits, atol=1e-5) and not torch.allclose(r2.logits, r.logits)
        before = completion_logprobs(anchor, r)[0]
        ema_update_(list(anchor.parameters()), [p.detach() for p in policy.parameters()], 0.5)
        ema_update_(list(ref_anchor.parameters()), [p.detach() for p in ref_policy.parameters()], 0.5)
        after, after_ref = completion_logprobs(anchor, r)[0], completion_logprobs(ref_anchor, r)[0]
        assert not torch.equal(before, after)  # the anchor computes with its updated shards, not a stale copy
        assert torch.allclose(after, after_ref, atol=1e-5)
        state, ref_state = full_state(anchor), ref_anchor.state_dict()
        assert state.keys() == ref_state.keys() and state["lm_head.weight"] is state["transformer.wte.weight"]
        assert all(torch.allclose(state[k], ref_state[k], atol=1e-6) for k in state)
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_model_samples_scores_and_updates_like_the_whole_model():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_worker, args=(port,), nprocs=2)
