"""Evaluation: mean reward and KL(pi || pi_sft) on held-out prompts (WARP.md, evaluation protocol).

One KL estimator everywhere in reports: the exact per-token form, summed over completion tokens,
sum_t KL(pi(.|x,y<t) || pi_sft(.|x,y<t)) over the full vocabulary, on completions sampled from pi.
The sampled k1 estimate (what training uses) is reported beside it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from warp_lightning import rl
from warp_lightning.policy import completion_logprobs, left_pad, sample


def model_from_state(skeleton, state: dict[str, torch.Tensor]):
    model = copy.deepcopy(skeleton)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def save_policy(skeleton, state: dict[str, torch.Tensor], tokenizer, path: Path) -> Path:
    """A Hugging Face folder (weights + tokenizer), written atomically."""
    from warp_lightning.io import save_hf_folder

    model = model_from_state(skeleton, state)

    def save(tmp: Path):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return save_hf_folder(path, save)


@torch.no_grad()
def score_completions(model, sft_model, tokenizer, reward_model, prompt_ids: list[list[int]], n_per_prompt: int,
                      max_new_tokens: int, temperature: float, seed: int, batch_size: int = 64) -> dict:
    """Sample n completions per prompt from `model`; per completion: reward, exact and sampled KL, length."""
    from warp_lightning.module import decode_texts

    g = torch.Generator().manual_seed(seed)
    rows = [p for p in prompt_ids for _ in range(n_per_prompt)]
    out = {"reward": [], "kl": [], "kl_k1": [], "kl_k3": [], "length": [], "text": []}
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start : start + batch_size], tokenizer.pad_token_id)
        rollout = sample(model, ids, mask, max_new_tokens, temperature, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=g)
        cmask = rollout.completion_mask.bool()
        lp_tok, _, lp_full = completion_logprobs(model, rollout, full=True)
        ref_tok, _, ref_full = completion_logprobs(sft_model, rollout, full=True)
        per_token_kl = torch.zeros(cmask.shape)
        per_token_kl[cmask] = rl.exact_kl_from_logprobs(lp_full, ref_full)
        log_ratio = (ref_tok - lp_tok) * cmask  # log pi_sft/pi at the sampled tokens
        texts = decode_texts(tokenizer, rollout)
        out["reward"] += reward_model(texts).tolist()
        out["kl"] += per_token_kl.sum(-1).tolist()
        out["kl_k1"] += (-log_ratio.sum(-1)).tolist()
        out["kl_k3"] += ((log_ratio.exp() - 1 - log_ratio) * cmask).sum(-1).tolist()
        out["length"] += cmask.sum(-1).tolist()
        out["text"] += texts
    return out


def quick_eval(states: dict[str, dict], skeleton, tokenizer, reward_model, test_prompts, eval_cfg) -> dict:
    """Mean reward, exact KL to the first state (the SFT policy) and length, for each named state."""
    prompts = list(test_prompts.shuffle(seed=eval_cfg.seed)["input_ids"][: eval_cfg.prompts])
    sft = model_from_state(skeleton, next(iter(states.values())))
    results = {}
    for name, state in states.items():
        scores = score_completions(model_from_state(skeleton, state), sft, tokenizer, reward_model, prompts,
                                   eval_cfg.samples_per_prompt, eval_cfg.max_new_tokens, eval_cfg.temperature,
                                   eval_cfg.seed, eval_cfg.batch_size)
        results[name] = {"reward_mean": sum(scores["reward"]) / len(scores["reward"]),
                         "kl_to_sft": sum(scores["kl"]) / len(scores["kl"]),
                         "completion_length": sum(scores["length"]) / len(scores["length"]),
                         "examples": scores["text"][: eval_cfg.examples]}
    return results


def run(cfg) -> dict:
    from warp_lightning import UserError

    raise UserError("`evaluate` is not implemented yet; `train` reports final_reward_mean and sft_reward_mean")
