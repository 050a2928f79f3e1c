"""The checks of `sft` and `train`, run once before they start (their records: commands.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from warp_lightning.algo.merging import MERGES
from warp_lightning.data.checks import check_text_sets
from warp_lightning.eval.checks import check_judge, check_reward_data
from warp_lightning.reward.rewards import check_reward_config, classifier_configs
from warp_lightning.utils.validate import (
    check,
    check_min_new_tokens,
    check_prompt_lengths,
    int_at_least,
    is_int,
    is_number,
    one_of,
    plain,
    positive,
    validate_model_paths,
    validate_models,
    validate_one_process,
    writable,
)

ANCHORS = ("ema", "sft")
PARALLEL = ("ddp", "ddp_runs", "fsdp")


def check_train(cfg) -> None:
    """`train`: its config, then the data it reads (and its columns against the reward)."""
    check_train_config(cfg)
    check_reward_data(cfg)


def check_train_config(cfg) -> None:
    """warp.*, the prompt lengths, eval.*, the Trainer layout, the adapters and the model folders of `train`."""
    w = cfg.warp
    int_at_least(w, "warp", ("iterations", "runs", "steps", "prompts_per_step", "max_new_tokens"), 1)
    check(is_int(w.samples_per_prompt) and w.samples_per_prompt >= 2, "warp.samples_per_prompt",
          w.samples_per_prompt, "must be an integer >= 2 (RLOO needs a baseline)")
    for key in ("slerp_lambda", "liti_eta", "ema_rate"):
        check(is_number(w[key]) and 0.0 <= w[key] <= 1.0, f"warp.{key}", w[key], "must be in [0, 1]")
    check(is_number(w.kl_coef) and w.kl_coef >= 0, "warp.kl_coef", w.kl_coef, "must be >= 0")
    positive(w, "warp", ("temperature", "lr"))
    check_min_new_tokens(w, "warp")
    check(w.anchor in ANCHORS, "warp.anchor", w.anchor, f"choose {one_of(ANCHORS)}")
    check(w.merge in MERGES, "warp.merge", w.merge, f"choose {one_of(MERGES)}")  # the registry of algo/merging.py
    check_merge_options(w.merge, w.get("merge_options"))
    int_at_least(w, "warp", ("warmup_steps", "log_every", "kl_to_init_every", "checkpoint_every", "snapshot_every"), 0)
    check(w.grad_clip is None or (is_number(w.grad_clip) and w.grad_clip >= 0), "warp.grad_clip", w.grad_clip,
          "must be >= 0 or null")
    check_prompt_lengths(cfg.data.min_prompt_tokens, cfg.data.max_prompt_tokens)
    if cfg.get("eval") is not None:
        int_at_least(cfg.eval, "eval", ("prompts", "samples_per_prompt", "max_new_tokens", "batch_size"), 1)
        int_at_least(cfg.eval, "eval", ("examples",), 0)
        check_min_new_tokens(cfg.eval, "eval")
    check_trainer(cfg)
    check_lora(cfg)
    check_reward_config(cfg.reward_model)  # kind, label, score, functions that import, weights
    check_judge(cfg)
    validate_models({"policy": cfg.policy, **classifier_configs(cfg.reward_model)}, cfg.paths)


def check_merge_options(method: str, options) -> None:
    """`warp.merge_options` against the options that `MERGES[method]` declares: each name one of them, each value
    in its range (else the merge would fail after the iteration's M runs trained)."""
    options = plain(options)
    if options is None:
        return
    check(isinstance(options, dict), "warp.merge_options", options, "must be a mapping {name: value}, e.g. "
          "{density: 0.2} with warp.merge=ties")
    declared = MERGES[method].options
    for name, value in options.items():
        option = declared.get(name)
        check(option is not None, f"warp.merge_options.{name}", value, f"warp.merge={method} takes no option {name} "
              f"(it takes {', '.join(declared) if declared else 'none'})")
        check(option.accepts(value), f"warp.merge_options.{name}", value, f"warp.merge={method} takes "
              f"{option.describe()}")


def check_trainer(cfg) -> None:
    """trainer.* of `train`: the strategy against devices, nodes and runs."""
    t = cfg.trainer
    # one batch of prompts is one RL step: the EMA anchor moves once per batch (EMAAnchor), which is once per
    # optimizer step only without gradient accumulation
    check(t.get("accumulate_grad_batches", 1) == 1, "trainer.accumulate_grad_batches", t.get("accumulate_grad_batches"),
          "must be 1: each step's prompts are one batch and one optimizer step (the EMA anchor moves once per "
          "step); raise warp.prompts_per_step for more completions per step")
    strategy = t.get("strategy", "auto")
    check(strategy in ("auto", *PARALLEL), "trainer.strategy", strategy, f"choose {one_of(('auto', *PARALLEL))}")
    if strategy == "auto":
        for key in ("devices", "num_nodes"):
            value = t.get(key, 1)
            check(value == 1 or (isinstance(value, ListConfig | list) and len(value) == 1), f"trainer.{key}", value,
                  "with trainer.strategy=auto train runs in one process: use trainer=ddp_runs (one run per "
                  "process), trainer=ddp or trainer=fsdp for several")
        return
    for key in ("devices", "num_nodes"):
        value = t.get(key, 1)
        check(is_int(value) and value >= 1, f"trainer.{key}", value,
              f"must be an integer >= 1 with trainer.strategy={strategy}")
    world = t.devices * t.get("num_nodes", 1)
    if strategy == "ddp_runs":
        check(world == cfg.warp.runs, "trainer.devices", t.devices,
              f"ddp_runs trains one run per process: devices * num_nodes must equal warp.runs={cfg.warp.runs}")
    if strategy in ("ddp", "fsdp"):
        check(cfg.warp.prompts_per_step % world == 0, "warp.prompts_per_step", cfg.warp.prompts_per_step,
              f"{strategy} splits each step's prompts over {world} processes: use a multiple of {world}")


def check_lora(cfg) -> None:
    """policy.lora of `train`: rank 0 (off) or more, alpha > 0, target modules named, no FSDP with adapters."""
    lora = cfg.policy.get("lora")
    if lora is None:
        return
    int_at_least(lora, "policy.lora", ("rank",), 0)
    if lora.rank == 0:
        return
    positive(lora, "policy.lora", ("alpha",))
    targets = lora.target_modules
    check((isinstance(targets, str) and targets != "") or (isinstance(targets, ListConfig | list) and len(targets) > 0
          and all(isinstance(t, str) for t in targets)), "policy.lora.target_modules", targets,
          "name the adapted modules: all-linear, or a list such as [q_proj, v_proj]")
    check(cfg.trainer.get("strategy", "auto") != "fsdp", "trainer.strategy", "fsdp",
          "LoRA adapters are not sharded: use trainer=ddp or ddp_runs with policy.lora.rank > 0, or rank 0")


def check_sft(cfg) -> None:
    """sft.*: the GPT-2 shape, the schedule, the corpus, where the policy is saved and the model to adapt."""
    validate_one_process(cfg, "sft")
    s = cfg.sft
    int_at_least(s, "sft", ("n_layer", "n_embd", "n_head", "context", "n_positions", "batch_size", "max_steps",
                            "val_every", "limit_val_batches", "max_val_blocks"), 1)
    int_at_least(s, "sft", ("warmup_steps", "log_every"), 0)
    check(s.n_embd % s.n_head == 0, "sft.n_head", s.n_head, f"must divide sft.n_embd={s.n_embd}")
    check(is_number(s.dropout) and 0 <= s.dropout < 1, "sft.dropout", s.dropout, "must be in [0, 1)")
    positive(s, "sft", ("lr",))
    check_text_sets(s.corpus, "sft.corpus")
    writable(str(Path(str(cfg.save_to)).parent), "save_to", "the trained policy is saved there")
    if s.get("init") is not None:  # the pretrained model to adapt: a folder, a hub name or an offline build
        validate_model_paths(OmegaConf.create({"sft.init": OmegaConf.to_container(s.init, resolve=True),
                                               "paths": OmegaConf.to_container(cfg.paths, resolve=True)}),
                             keys=("sft.init",))
