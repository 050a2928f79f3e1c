"""Bad configs are refused at start with one line naming the key, the value and what is allowed."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from warp_lightning import UserError
from warp_lightning.cli import CONF_DIR
from warp_lightning.utils.validate import validate_train_config

BAD = [
    ("warp.iterations=0", "warp.iterations"),
    ("warp.runs=0", "warp.runs"),
    ("warp.steps=-3", "warp.steps"),
    ("warp.steps=1.5", "warp.steps"),
    ("warp.samples_per_prompt=1", "warp.samples_per_prompt"),
    ("warp.slerp_lambda=1.5", "warp.slerp_lambda"),
    ("warp.liti_eta=-0.1", "warp.liti_eta"),
    ("warp.ema_rate=2", "warp.ema_rate"),
    ("warp.kl_coef=-1", "warp.kl_coef"),
    ("warp.max_new_tokens=0", "warp.max_new_tokens"),
    ("warp.prompts_per_step=0", "warp.prompts_per_step"),
    ("warp.temperature=0", "warp.temperature"),
    ("warp.lr=0", "warp.lr"),
    ("warp.anchor=frozen", "warp.anchor"),
    ("warp.merge=ties", "warp.merge"),
    ("data.min_prompt_tokens=30", "data.min_prompt_tokens"),
    ("data.min_prompt_tokens=0", "data.min_prompt_tokens"),
    ("warp.warmup_steps=-1", "warp.warmup_steps"),
    ("warp.grad_clip=-1", "warp.grad_clip"),
    ("policy.name_or_path=/nonexistent/policy", "policy.name_or_path"),
    ("trainer.strategy=deepspeed", "trainer.strategy"),
    ("trainer=fsdp warp.prompts_per_step=3", "warp.prompts_per_step"),
    ("trainer=ddp_runs trainer.devices=3", "trainer.devices"),
    ("trainer=ddp warp.prompts_per_step=3", "warp.prompts_per_step"),
]


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(("override", "key"), BAD)
def test_bad_value_is_one_line_naming_the_key(override, key, tmp_path):
    cfg = compose_train(*override.split(), f"paths.models_dir={tmp_path}", "policy.build=null", "reward_model.build=null")
    with pytest.raises(UserError) as err:
        validate_train_config(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(key), message


def test_defaults_are_valid(tmp_path):
    validate_train_config(compose_train("+experiment=smoke", f"paths.models_dir={tmp_path}"))


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "train", "warp.samples_per_prompt=1",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: warp.samples_per_prompt=1 is invalid")
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob("iter_*"))


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "trian"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


HYDRA_BAD = [
    (["warp.stpes=3"], "error: warp.stpes is not a key of the train config"),
    (["policy=gpt3"], "error: policy=gpt3: no such config; choose one of gpt2_imdb, sft_gpt2, smollm2"),
    (["+experiment=nope"], "error: +experiment=nope: no such config; choose one of"),
    (["warp.steps=[1"], "error: cannot parse the overrides warp.steps=[1"),
    (["warp.steps=1,2"], "error: warp.steps=1,2 is a sweep: add -m (--multirun)"),
]


@pytest.mark.parametrize(("overrides", "message"), HYDRA_BAD)
def test_hydra_errors_are_one_line_exit_2(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "train", *overrides, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not run_dir.exists()
