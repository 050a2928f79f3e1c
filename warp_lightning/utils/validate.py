"""Config checks at start, before anything is written: one line naming the key, the value, what is allowed."""

from __future__ import annotations

from warp_lightning import UserError


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: {allowed}")


def validate_train_config(cfg) -> None:
    w = cfg.warp
    for key in ("iterations", "runs", "steps", "prompts_per_step", "max_new_tokens"):
        _check(isinstance(w[key], int) and w[key] >= 1, f"warp.{key}", w[key], "must be an integer >= 1")
    _check(isinstance(w.samples_per_prompt, int) and w.samples_per_prompt >= 2, "warp.samples_per_prompt",
           w.samples_per_prompt, "must be an integer >= 2 (RLOO needs a baseline)")
    for key in ("slerp_lambda", "liti_eta", "ema_rate"):
        _check(0.0 <= float(w[key]) <= 1.0, f"warp.{key}", w[key], "must be in [0, 1]")
    _check(float(w.kl_coef) >= 0, "warp.kl_coef", w.kl_coef, "must be >= 0")
    _check(float(w.temperature) > 0, "warp.temperature", w.temperature, "must be > 0")
    check_min_new_tokens(w, "warp")
    _check(float(w.lr) > 0, "warp.lr", w.lr, "must be > 0")
    _check(w.anchor in ("ema", "sft"), "warp.anchor", w.anchor, "choose ema or sft")
    _check(w.merge in ("slerp", "linear"), "warp.merge", w.merge, "choose slerp or linear")
    d = cfg.data
    for key in ("min_prompt_tokens", "max_prompt_tokens"):
        _check(isinstance(d[key], int), f"data.{key}", d[key], "must be an integer")
    _check(1 <= d.min_prompt_tokens <= d.max_prompt_tokens, "data.min_prompt_tokens", d.min_prompt_tokens,
           f"must be between 1 and data.max_prompt_tokens={d.max_prompt_tokens}")
    _check(w.grad_clip is None or float(w.grad_clip) >= 0, "warp.grad_clip", w.grad_clip, "must be >= 0 or null")
    _check(isinstance(w.warmup_steps, int) and w.warmup_steps >= 0, "warp.warmup_steps", w.warmup_steps,
           "must be an integer >= 0")
    if cfg.get("eval") is not None:
        check_min_new_tokens(cfg.eval, "eval")
    validate_trainer(cfg)
    validate_model_paths(cfg)


def check_min_new_tokens(block, name: str) -> None:
    """`{name}.min_new_tokens` (absent: 0) is an integer between 0 and `{name}.max_new_tokens`."""
    value, top = block.get("min_new_tokens", 0), block.get("max_new_tokens")
    _check(isinstance(value, int) and 0 <= value and (not isinstance(top, int) or value <= top),
           f"{name}.min_new_tokens", value, f"must be an integer between 0 and {name}.max_new_tokens={top}")


def validate_trainer(cfg) -> None:
    t = cfg.trainer
    strategy = t.get("strategy", "auto")
    _check(strategy in ("auto", "ddp", "ddp_runs", "fsdp"), "trainer.strategy", strategy,
           "choose auto, ddp, ddp_runs or fsdp")
    for key in ("devices", "num_nodes"):
        value = t.get(key, 1)
        _check(strategy == "auto" or (isinstance(value, int) and value >= 1), f"trainer.{key}", value,
               f"must be an integer >= 1 with trainer.strategy={strategy}")
    world = t.devices * t.get("num_nodes", 1) if strategy != "auto" else 1
    if strategy == "ddp_runs":
        _check(world == cfg.warp.runs, "trainer.devices", t.devices,
               f"ddp_runs trains one run per process: devices * num_nodes must equal warp.runs={cfg.warp.runs}")
    if strategy in ("ddp", "fsdp"):
        _check(cfg.warp.prompts_per_step % world == 0, "warp.prompts_per_step", cfg.warp.prompts_per_step,
               f"{strategy} splits each step's prompts over {world} processes: use a multiple of {world}")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def validate_model_paths(cfg) -> None:
    """A local model folder must exist unless the project can build it (`build: sft|reward|smollm2`)."""
    from pathlib import Path

    for key in ("policy", "reward_model"):
        name = str(cfg[key].name_or_path)
        if _looks_local(name) and not Path(name).expanduser().exists() and not cfg[key].get("build"):
            raise UserError(f"{key}.name_or_path={name!r} does not exist: point it to a Hugging Face folder "
                            "or a hub name")
