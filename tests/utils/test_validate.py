"""Bad configs are refused at start with one line naming the key, the value and what is allowed."""

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from warp_lightning import UserError
from warp_lightning.algo import merging
from warp_lightning.cli import CONF_DIR
from warp_lightning.train.checks import check_train_config
from warp_lightning.utils.validate import CLUSTER_ENV

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
    ("warp.merge=average", "warp.merge"),
    ("warp.merge=ties +warp.merge_options={density:1.5}", "warp.merge_options.density=1.5 is invalid"),
    ("warp.merge=slerp +warp.merge_options.density=0.2", "warp.merge_options.density=0.2 is invalid"),
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
        check_train_config(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(key), message


def test_defaults_are_valid(tmp_path):
    check_train_config(compose_train("+experiment=smoke", f"paths.models_dir={tmp_path}"))


def test_the_merge_methods_allowed_are_those_of_the_registry(tmp_path, monkeypatch):
    """warp.merge takes the names of `merging.MERGES`: a method registered there is accepted at once, and the
    refusal lists the registry's names."""
    cfg = compose_train("+experiment=smoke", "warp.merge=average", f"paths.models_dir={tmp_path}")
    with pytest.raises(UserError) as err:
        check_train_config(cfg)
    message = str(err.value)
    assert message.startswith("warp.merge='average' is invalid: choose ") and "slerp" in message, message
    assert all(name in message for name in merging.MERGES), message
    monkeypatch.setitem(merging.MERGES, "average", merging.MERGES["linear"])
    check_train_config(cfg)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "train", "warp.samples_per_prompt=1",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: warp.samples_per_prompt=1 is invalid")
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob("iter_*"))


@pytest.mark.parametrize(("options", "line"), [
    ("+warp.merge_options={density: 1.5}", "error: warp.merge_options.density=1.5 is invalid: warp.merge=ties takes "
                                           "a number in (0, 1] (the fraction of each task vector's entries kept)"),
    # the mapping's keys are not in the defaults ({}): Hydra adds them with +, and the line says so
    ("warp.merge_options={density: 1.5}", "error: warp.merge_options.density is not a key of the train config: check "
                                          "its spelling (`python -m warp_lightning train --cfg job` prints them all) "
                                          "or add it with +warp.merge_options={density: 1.5}"),
])
def test_bad_merge_options_exit_2_with_one_line_before_any_run_trains(options, line, tmp_path):
    """warp.merge_options is checked against the merge method's declared options at start, not when the merge
    runs after the iteration's M runs trained."""
    run_dir, models = tmp_path / "run", tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "train", "warp.merge=ties", options,
                           f"paths.models_dir={models}", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [line], proc.stderr[-2000:]
    assert not run_dir.exists() and not models.exists()


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "trian"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


HYDRA_BAD = [
    (["warp.stpes=3"], "error: warp.stpes is not a key of the train config"),
    (["policy=gpt3"], "error: policy=gpt3: no such config; choose one of gpt2_imdb, sft_gpt2, sft_smollm2, smollm2"),
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


# --- validate first: bad input through the CLI with a fresh model cache, refused before anything happens ---------

def _gpu_case():
    """A GPU asked for where there is none (or more GPUs than this machine has)."""
    import torch

    if not torch.cuda.is_available():
        return ["train", "trainer.accelerator=gpu"], "error: trainer.accelerator='gpu' is invalid: no CUDA GPU"
    return (["train", "trainer.accelerator=gpu", f"trainer.devices={torch.cuda.device_count() + 1}",
             "trainer=ddp_runs", f"warp.runs={torch.cuda.device_count() + 1}"], "error: trainer.devices=")


BAD_INPUTS = [
    (["train", "data=file", "data.path=/nonexistent.csv"], "error: data.path='/nonexistent.csv' is invalid: no such file"),
    _gpu_case(),
    (["train", "warp.lr=abc"], "error: warp.lr='abc' is invalid: must be a number, like its default 0.0005"),
    (["train", "warp.steps=1.5"], "error: warp.steps=1.5 is invalid: must be an integer"),
    (["train", "trainer.devices=two"], "error: trainer.devices='two' is invalid: must be an integer, a list"),
    (["train", "trainer=ddp_runs", "trainer.devices=3"], "error: trainer.devices=3 is invalid: ddp_runs trains one run "
     "per process: devices * num_nodes must equal warp.runs=2"),
    *([(["train", "trainer=ddp", "trainer.num_nodes=2"], "error: trainer.num_nodes=2 is invalid: several nodes need")]
      if not any(v in os.environ for v in CLUSTER_ENV) else []),  # under a cluster launcher it is allowed
    (["train", "warp.stpes=3"], "error: warp.stpes is not a key of the train config"),
    (["train", "trainer.devices=2"], "error: trainer.devices=2 is invalid: with trainer.strategy=auto train runs in "
     "one process"),
    (["train", "+experiment=smoke", "warp.steps=2,abc", "-m"], "error: warp.steps='abc' is invalid: must be an integer"),
    (["evaluate"], "error: model is missing: pass model=..."),
    (["sft", "sft.n_head=3"], "error: sft.n_head=3 is invalid: must divide sft.n_embd=256"),
    (["reward", "reward_training.max_steps=0"], "error: reward_training.max_steps=0 is invalid"),
    (["front", "run=/nonexistent/run"], "error: run='/nonexistent/run' is invalid: no such folder"),
    (["front", "run=/"], "error: / is not a finished train run (no manifest.json)"),
    (["evaluate", "model=/"], "error: sft="),  # the SFT policy is not built yet
    (["report"], "error: nothing to report"),
    (["assets", "assets.names=[nope]"], "error: assets.names: unknown asset 'nope'"),
]


@pytest.mark.slow  # second tier: about 25 whole commands
def test_bad_input_is_refused_at_once_with_nothing_built_or_written(tmp_path):
    """Each command line of BAD_INPUTS, with an empty model cache: exit status 2, one line, and nothing created (no
    model folder, no lock, no run folder, no Hydra output folder in the working directory). "At once" is that
    nothing was built or loaded before the refusal (an empty model cache stays empty), not a wall-clock limit."""
    from concurrent.futures import ThreadPoolExecutor

    models, run_dir, cwd = tmp_path / "models", tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()

    def refuse(case):
        args, message = case
        proc = subprocess.run([sys.executable, "-m", "warp_lightning", *args, f"paths.models_dir={models}",
                               f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, "WANDB_MODE": "offline"})
        return args, message, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(refuse, BAD_INPUTS))
    for args, message, proc in results:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), (args, proc.stderr[-2000:])
    assert not models.exists() and not run_dir.exists() and not list(cwd.iterdir())


# --- types: the YAML defaults are the schema --------------------------------------------------------------------

from warp_lightning.utils.commands import commands  # noqa: E402
from warp_lightning.utils.validate import check_value_type  # noqa: E402

# every command's declared types (its record's and the shared groups')
DECLARED = {key: kinds for record in commands().values() for key, kinds in record.declared_types().items()}


@pytest.mark.parametrize(("key", "value", "default"), [
    ("warp.lr", "abc", 5e-4), ("warp.steps", 1.5, 100), ("warp.steps", True, 100), ("warp.steps", None, 100),
    ("warp.compile", "yes", True), ("trainer.devices", "two", 1), ("warp.optimizer", "adam", {"lr": 1.0}),
    ("sft.corpus", "reviews", ["reviews"]), ("warp.optimizer.betas", [0.9, "x"], [0.9, 0.999]),
    ("reward_training.max_train_texts", "all", None),
])
def test_a_value_of_the_wrong_type_is_refused(key, value, default):
    with pytest.raises(UserError, match=rf"^{key}=.* is invalid: must be|^{key}=.* every element must be"):
        check_value_type(key, value, default, declared=DECLARED)


@pytest.mark.parametrize(("key", "value", "default"), [
    ("warp.lr", 1, 5e-4), ("warp.lr", 1e-3, 5e-4), ("warp.steps", 7, 100), ("trainer.devices", "auto", 1),
    ("trainer.devices", [0, 1], 1), ("warp.grad_clip", None, 1.0), ("experiment_name", 2024, "reviews"),
    ("reward_training.max_train_texts", 64, None), ("warp.optimizer.betas", [0, 1], [0.9, 0.999]),
    ("warp.new_key_added_later", "anything", None), ("warp.lr", "${warp.kl_coef}", 5e-4),
])
def test_a_value_of_the_right_type_passes(key, value, default):
    check_value_type(key, value, default, has_default=default is not None, declared=DECLARED)


def _leaves(node, prefix=""):
    from omegaconf import DictConfig, OmegaConf

    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield path, "???"
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            yield from _leaves(node[key], f"{path}.")
        elif child._is_none():
            yield path, None


def test_every_key_without_a_typed_default_has_a_declared_type():
    """A key whose default is null or ??? says nothing about its type: it needs a declared type, in its command's
    record (utils/commands.py) or, for the groups every command shares, in utils/validate.py's SHARED_TYPES; or a
    wrong value for it would pass the type check."""
    COMMANDS = commands()
    undeclared = set()
    groups = [d.name for d in CONF_DIR.iterdir() if d.is_dir()]
    # every command as it is, and train (which has every config group) with each option of each group
    variants = [(name, []) for name in COMMANDS]
    mounted = {"lora": "lora@policy.lora"}  # groups placed under another key by train.yaml's defaults
    command = {"study": "study"}  # groups of another command's config than train's
    variants += [(command.get(group, "train"), [f"+{group}={option}" if group == "experiment"
                                                else f"{mounted.get(group, group)}={option}"])
                 for group in groups for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, overrides in variants:
            cfg = compose(name, overrides=overrides)
            declared = COMMANDS[name].declared_types()
            undeclared |= {(name, key) for key, _ in _leaves(cfg) if key not in declared}
    assert not undeclared, f"declare the types of these keys in their command's record: {sorted(undeclared)}"
