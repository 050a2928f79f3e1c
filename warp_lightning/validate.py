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
    _check(float(w.lr) > 0, "warp.lr", w.lr, "must be > 0")
    _check(w.anchor in ("ema", "sft"), "warp.anchor", w.anchor, "choose ema or sft")
    _check(w.merge in ("slerp", "linear"), "warp.merge", w.merge, "choose slerp or linear")
    d = cfg.data
    _check(1 <= d.min_prompt_tokens <= d.max_prompt_tokens, "data.min_prompt_tokens", d.min_prompt_tokens,
           f"must be between 1 and data.max_prompt_tokens={d.max_prompt_tokens}")
