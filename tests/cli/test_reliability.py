"""Crash, resume, numerical guards, atomic writes, bad data and secrets (issue: reliability)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import cli, warp_cfg
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning import NonFiniteError, UserError
from warp_lightning.data.prompts import PromptBatches
from warp_lightning.reward.rewards import RewardScores
from warp_lightning.train.checkpoint import RunCheckpoint, run_path
from warp_lightning.train.module import RLOOModule, check_finite_weights

SMOKE = ["+experiment=smoke", "warp.checkpoint_every=1", "eval.prompts=4"]


def train_args(tiny_models, run_dir, *extra):
    return ["train", *SMOKE, f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}", *extra]


def kill_when(args, marker: str, cwd: Path) -> str:
    """Start the CLI, SIGKILL it as soon as `marker` appears in its output; return that output."""
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "WANDB_MODE": "offline"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return "".join(seen)


def output(proc) -> str:
    return proc.stdout + proc.stderr  # Hydra's job log goes to stdout


def safetensors_bytes(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def whole(tiny_models, tmp_path_factory):
    """An uninterrupted smoke run, against which the interrupted ones are compared."""
    root = tmp_path_factory.mktemp("whole")
    cli(*train_args(tiny_models, root / "run"), cwd=root)
    return root / "run"


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical_and_another_config_is_refused(tiny_models, whole, tmp_path):
    broken = tmp_path / "broken"
    kill_when(train_args(tiny_models, broken), "checkpoint: iteration 1 run 2 step 2", tmp_path)
    assert run_path(broken / "checkpoints", 2).exists() and not (broken / "final").exists()

    # resuming with another config is refused, and leaves the folder as it was (the resume below is bit-identical)
    refused = cli(*train_args(tiny_models, broken, "warp.kl_coef=0.5"), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: warp.kl_coef (0.1 then, 0.5 now) differs")

    resumed = output(cli(*train_args(tiny_models, broken), cwd=tmp_path))
    assert "resuming iteration 1 run 2 at step 2" in resumed
    assert "iteration 1 run 1:" not in resumed  # the finished run is not redone
    assert safetensors_bytes(broken / "final") == safetensors_bytes(whole / "final")
    for i in (1, 2):
        assert safetensors_bytes(broken / f"iter_{i}" / "init") == safetensors_bytes(whole / f"iter_{i}" / "init")
    # the per-step logs of the interrupted run hold each step once, as in the uninterrupted one
    for run in ("i1_m1", "i1_m2", "i2_m2"):
        assert (broken / "logs" / run / "metrics.csv").read_text() == (whole / "logs" / run / "metrics.csv").read_text()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, broken))
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    runs = json.loads((broken / "manifest.json").read_text())["runs"]
    assert [r["resumed_at_step"] for r in runs] == [0, 2, 0, 0]

    again = output(cli(*train_args(tiny_models, broken), cwd=tmp_path))  # a finished run directory
    assert "up to (2, 2) are done" in again and " steps in " not in again
    assert safetensors_bytes(broken / "final") == safetensors_bytes(whole / "final")


@pytest.mark.slow
def test_sigterm_mid_run_is_a_checkpoint_and_a_clean_exit_then_resume_is_bit_identical(tiny_models, whole, tmp_path):
    """SIGTERM during a run: the step finishes, its checkpoint is written (no other checkpoint is asked for:
    checkpoint_every=0), the command exits 143 within seconds with one line naming how to resume, and that
    command ends with the weights of the uninterrupted run."""
    stopped = tmp_path / "stopped"
    args = train_args(tiny_models, stopped, "warp.checkpoint_every=0", "warp.log_every=1")
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "WANDB_MODE": "offline"})
    seen, signalled = [], None
    for line in proc.stdout:
        seen.append(line)
        if "iteration 1 run 2 step 1/3" in line:
            proc.send_signal(signal.SIGTERM)
            signalled = time.time()
            break
    out, err = proc.communicate(timeout=120)
    assert signalled and proc.returncode == 143, "".join(seen) + out + err[-3000:]
    assert time.time() - signalled < 20
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at iteration 1 run 2 step ") and "(checkpoint written)" in last, last
    same = " ".join(a for a in args if not a.startswith("hydra.run.dir="))
    assert last.endswith(f"resume with python -m warp_lightning {same} hydra.run.dir={stopped}"), last
    step = int(last.split(" step ")[1].split()[0])
    assert 1 <= step < 3 and "Traceback" not in err
    assert torch.load(run_path(stopped / "checkpoints", 2), weights_only=False)["warp"]["step"] == step

    resumed = output(cli(*args, cwd=tmp_path))
    assert f"resuming iteration 1 run 2 at step {step}" in resumed
    assert safetensors_bytes(stopped / "final") == safetensors_bytes(whole / "final")
    for run in ("i1_m1", "i1_m2", "i2_m2"):
        assert (stopped / "logs" / run / "metrics.csv").read_text() == (whole / "logs" / run / "metrics.csv").read_text()


# the CLI with a merge that fails (a bug in it, found after the iteration's M runs trained)
FAILING_MERGE = ("import sys; from warp_lightning.algo import merging\n"
                 "def broken(*args, **kwargs): raise RuntimeError('a bug in the merge')\n"
                 "merging.merge_runs = broken\n"
                 "from warp_lightning.cli import main; main(sys.argv[1:])")


@pytest.mark.slow
def test_a_failing_merge_loses_no_run_and_the_command_run_again_merges_them_bit_identically(tiny_models, whole,
                                                                                           tmp_path):
    """The M finished runs are in loop.pt before the merge is tried: after a merge that fails, the same command
    trains no run of that iteration again, merges them, logs the merge in run M's log, and ends with the weights,
    logs and figures of the uninterrupted run."""
    broken = tmp_path / "broken"
    proc = subprocess.run([sys.executable, "-c", FAILING_MERGE, *train_args(tiny_models, broken)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode != 0 and "a bug in the merge" in output(proc), output(proc)[-3000:]
    saved = torch.load(broken / "checkpoints" / "loop.pt", weights_only=False)
    assert saved["done"] == [1, 2] and len(saved["finished"]) == 2 and saved["iteration"] == 1
    assert [r["run"] for r in saved["runs"]] == [1, 2] and not (broken / "iter_1").exists()
    assert not list((broken / "checkpoints").glob("run_*.ckpt"))

    resumed = output(cli(*train_args(tiny_models, broken), cwd=tmp_path))
    assert "iteration 1: its 2 runs are done; merging them" in resumed
    assert "iteration 1 run 1:" not in resumed and "iteration 1 run 2:" not in resumed  # no run trained again
    for folder in ("final", "iter_1/slerp", "iter_1/init", "iter_2/init"):
        assert safetensors_bytes(broken / folder) == safetensors_bytes(whole / folder), folder
    for run in ("i1_m1", "i1_m2", "i2_m1", "i2_m2"):  # i1_m2 holds its merge row, written by the second command
        assert (broken / "logs" / run / "metrics.csv").read_text() == (whole / "logs" / run / "metrics.csv").read_text()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, broken))
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, broken))
    assert a["merges"] == b["merges"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a["runs"]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in b["runs"]]


def test_kill_during_a_checkpoint_write_leaves_the_previous_file(tmp_path):
    """A real SIGKILL while `atomic_torch_save` writes 400 MB: the target keeps its old content."""
    target = tmp_path / "run.ckpt"
    torch.save({"step": 1}, target)
    code = ("import sys, torch; from warp_lightning.utils.io import atomic_torch_save; "
            "atomic_torch_save({'step': 2, 'w': torch.ones(100_000_000)}, sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".run.ckpt.*.tmp")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".run.ckpt.*.tmp")), "the kill did not land during the write"
    assert torch.load(target)["step"] == 1


def tiny_module(gpt2_tokenizer, reward, steps=4):
    from warp_lightning.policy.models import load_tokenizer

    gpt2_tokenizer = load_tokenizer(gpt2_tokenizer.name_or_path)  # with the pad token the project adds
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    warp = warp_cfg(samples_per_prompt=2, max_new_tokens=4, temperature=1.0, kl_coef=0.1, kl_to_init_every=0,
                    lr=1e-3, warmup_steps=0, keep_sampling_logits=True)
    module = RLOOModule(policy, GPT2LMHeadModel(policy.config).requires_grad_(False), reward, gpt2_tokenizer,
                        warp, sample_seed=1, tags={"iteration": 1, "run": 1})
    prompts = [gpt2_tokenizer("a fine film about")["input_ids"], gpt2_tokenizer("the plot")["input_ids"]]
    return module, PromptBatches(prompts, steps, 2, 0, gpt2_tokenizer.pad_token_id)


def test_non_finite_reward_stops_at_its_step_and_keeps_the_last_checkpoint(gpt2_tokenizer, tmp_path):
    calls = []

    def reward(prompts, completions, columns):  # a reward model that breaks on its third batch
        calls.append(len(completions))
        return RewardScores(torch.full((len(completions),), float("nan") if len(calls) == 3 else 0.5))

    module, prompts = tiny_module(gpt2_tokenizer, reward)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[RunCheckpoint(run_path(tmp_path, 1), 1, 1, 1)], enable_model_summary=False)
    with pytest.raises(NonFiniteError, match=r"non-finite reward at iteration 1 run 1 step 3 \(4 of 4"):
        trainer.fit(module, prompts)
    assert torch.load(run_path(tmp_path, 1), weights_only=False)["warp"]["step"] == 2


def test_reward_of_the_wrong_shape_is_a_clear_error_at_the_first_batch(gpt2_tokenizer):
    module, prompts = tiny_module(gpt2_tokenizer, lambda p, c, columns: RewardScores(torch.zeros(len(c), 2)))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(UserError, match=r"reward model returned shape \(4, 2\) at iteration 1 run 1 step 1"):
        trainer.fit(module, prompts)


@pytest.mark.slow
def test_diverging_run_exits_3_with_one_line_and_keeps_its_checkpoint(tiny_models, tmp_path):
    """lr 1e30 throws the weights to ~1e30 at step 1: step 2's log-probs are NaN and the run stops there."""
    run_dir = tmp_path / "run"
    proc = cli(*train_args(tiny_models, run_dir, "warp.lr=1e30", "warp.warmup_steps=0"), cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: non-finite loss at iteration 1 run 1 step 2")
    assert torch.load(run_path(run_dir / "checkpoints", 1), weights_only=False)["warp"]["step"] == 1


def test_non_finite_weights_are_named():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8))
    check_finite_weights(model, "at start")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights at start \(first: transformer.h.0.mlp.c_fc.weight\)"):
        check_finite_weights(model, "at start")


@pytest.mark.slow
def test_crafted_bad_data_file_is_cleaned_not_a_crash(tiny_models, tmp_path):
    lines = ["", "   ", "\t", "too short", "great " * 10_000 + "film"]
    lines += [f"review {i}: the acting was wonderful and the story kept me watching until the very end" for i in range(30)]
    data = tmp_path / "texts.txt"
    data.write_bytes("\n".join(lines).encode() + b"\nbroken \xff\xfe bytes in a review that is long enough to prompt\n")
    run_dir = tmp_path / "run"
    proc = cli(*train_args(tiny_models, run_dir, "data=file", f"data.path={data}", "warp.iterations=1"), cwd=tmp_path)
    log = output(proc)
    assert "2 undecodable bytes replaced" in log
    assert "rows skipped (3 empty text)" in log
    assert "texts longer than 20000 characters truncated" in log
    assert "with fewer than 5 tokens" in log
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_secrets_never_reach_outputs(tiny_models, tmp_path):
    secrets = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef0123fake", "HF_TOKEN": "hf_FakeTokenNeverWritten42"}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", *train_args(tiny_models, run_dir, "logger=wandb",
                                                                               "warp.iterations=1")],
                          cwd=tmp_path, capture_output=True, env={**os.environ, **secrets, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "manifest.json" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name} found in {path}"
    for value in secrets.values():
        assert value.encode() not in proc.stdout + proc.stderr
