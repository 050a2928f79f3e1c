"""Evaluation: mean reward and KL(pi || pi_sft) on held-out prompts (WARP.md, evaluation protocol).

One KL estimator everywhere in reports: the exact per-token form, summed over completion tokens,
sum_t KL(pi(.|x,y<t) || pi_sft(.|x,y<t)) over the full vocabulary, on completions sampled from pi.
The sampled k1 estimate (what training uses) is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from warp_lightning import UserError
from warp_lightning.algo import rl
from warp_lightning.builds import ensure_model
from warp_lightning.data.prompts import left_pad, prompt_splits
from warp_lightning.eval.stats import distinct_n, fmt_ci, markdown_table, mean_ci95
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.models import load_causal_lm, load_tokenizer, model_from_state
from warp_lightning.policy.sampling import decode_texts, sample
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.utils.io import atomic_write_bytes
from warp_lightning.utils.validate import check_min_new_tokens


@torch.no_grad()
def score_completions(model, sft_model, tokenizer, reward_model, prompt_ids: list[list[int]], n_per_prompt: int,
                      max_new_tokens: int, temperature: float, seed: int, batch_size: int = 64,
                      min_new_tokens: int = 0) -> dict:
    """Sample n completions per prompt from `model`; per completion: reward, exact and sampled KL, length.
    Both models' log-probs are those of the distribution sampled (temperature, no EOS before min_new_tokens)."""

    g = torch.Generator().manual_seed(seed)
    rows = [p for p in prompt_ids for _ in range(n_per_prompt)]
    out = {"reward": [], "kl": [], "kl_k1": [], "kl_k3": [], "length": [], "text": []}
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start : start + batch_size], tokenizer.pad_token_id)
        rollout = sample(model, ids, mask, max_new_tokens, temperature, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=g, min_new_tokens=min_new_tokens)
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
                                   eval_cfg.seed, eval_cfg.batch_size, eval_cfg.get("min_new_tokens", 0))
        results[name] = {"reward_mean": sum(scores["reward"]) / len(scores["reward"]),
                         "kl_to_sft": sum(scores["kl"]) / len(scores["kl"]),
                         "completion_length": sum(scores["length"]) / len(scores["length"]),
                         "examples": scores["text"][: eval_cfg.examples]}
    return results


def subsample_indices(n_prompts: int, subsamples: int, size: int, seed: int) -> list[list[int]]:
    """S seeded subsamples of N held-out prompts; the same for every model compared."""
    if size > n_prompts:

        raise UserError(f"eval.prompts={size} is invalid: only {n_prompts} held-out prompts exist")
    return [torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + s))[:size].tolist()
            for s in range(subsamples)]


def evaluate_policy(model, sft_model, tokenizer, reward_model, test_prompts, ecfg) -> tuple[dict, list[dict]]:
    """The protocol of WARP.md: per-subsample means, then their mean and 95% interval."""
    ids = list(test_prompts["input_ids"])
    per_sub, rows = [], []
    for s, idx in enumerate(subsample_indices(len(ids), ecfg.subsamples, ecfg.prompts, ecfg.seed)):
        scores = score_completions(model, sft_model, tokenizer, reward_model, [ids[i] for i in idx],
                                   ecfg.samples_per_prompt, ecfg.max_new_tokens, ecfg.temperature,
                                   ecfg.seed + 1000 + s, ecfg.batch_size, ecfg.get("min_new_tokens", 0))
        per_sub.append({k: sum(v) / len(v) for k, v in scores.items() if k != "text"})
        prompts = [i for i in idx for _ in range(ecfg.samples_per_prompt)]
        rows += [{"subsample": s, "prompt_index": p, **{k: scores[k][j] for k in scores}}
                 for j, p in enumerate(prompts)]
    metrics = {}
    for key, name in (("reward", "reward"), ("kl", "kl"), ("kl_k1", "kl_k1"), ("kl_k3", "kl_k3"),
                      ("length", "completion_length")):
        metrics[f"{name}_mean"], metrics[f"{name}_ci95"] = mean_ci95([p[key] for p in per_sub])
    texts = [r["text"] for r in rows]
    metrics.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2), subsamples=ecfg.subsamples,
                   prompts_per_subsample=ecfg.prompts, kl_estimator="exact per-token KL over the vocabulary, "
                   "summed over completion tokens, on completions sampled from the model")
    return metrics, rows


@dataclass
class Protocol:
    """What every model is judged with: the SFT reference, the reward model, the held-out prompts, `eval`.

    Every model evaluated through one Protocol sees the same subsamples and sampling seeds, so that
    differences between models are not differences between prompts.
    """
    tokenizer: object
    sft: torch.nn.Module
    reward_model: object
    test_prompts: object
    ecfg: object
    bf16: bool = False  # matmuls in bf16 (as training with trainer.precision=bf16-mixed); KL, rewards in fp32

    def evaluate(self, model) -> tuple[dict, list[dict]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return evaluate_policy(model, self.sft, self.tokenizer, self.reward_model, self.test_prompts, self.ecfg)


def load_protocol(cfg) -> Protocol:
    """The Protocol of an `evaluate`-like config (`sft`, `reward_model`, `data`, `eval`, `trainer.precision`)."""
    check_min_new_tokens(cfg.eval, "eval")
    if not Path(str(cfg.sft)).exists():
        raise UserError(f"sft={cfg.sft} does not exist: pass the SFT policy's Hugging Face folder")
    ensure_model("reward_model", cfg.reward_model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(cfg.sft)
    reward_model = RewardModel.from_pretrained(cfg.reward_model.name_or_path, sigmoid=cfg.reward_model.sigmoid,
                                               max_length=cfg.reward_model.max_length,
                                               batch_size=cfg.reward_model.batch_size)
    _, test_prompts = prompt_splits(cfg.data.name, tokenizer, cfg.data.min_prompt_tokens,
                                    cfg.data.max_prompt_tokens, cfg.eval.prompt_seed, cache=cfg.paths.cache_dir,
                                    path=cfg.data.get("path"))
    return Protocol(tokenizer, load_causal_lm(cfg.sft).eval(), reward_model, test_prompts, cfg.eval,
                    bf16=str(cfg.trainer.precision).startswith("bf16"))


def named_models(value) -> dict[str, str]:
    """`model=PATH`, `model=[PATH, ...]` or `model={name: PATH, ...}` as {name: path}."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, DictConfig | dict):
        return {str(k): str(v) for k, v in value.items()}
    paths = [str(v) for v in value] if isinstance(value, ListConfig | list | tuple) else [str(value)]
    return {"/".join(Path(p).parts[-2:]): p for p in paths}


def results_table(results: dict[str, dict]) -> str:
    """Experiment 1's table: model | mean reward | mean KL (with 95% intervals) | length | distinct-1/2."""
    rows = [[name, fmt_ci(m["reward_mean"], m["reward_ci95"]), fmt_ci(m["kl_mean"], m["kl_ci95"], 2),
             fmt_ci(m["completion_length_mean"], m["completion_length_ci95"], 1),
             f"{m['distinct_1']:.3f} / {m['distinct_2']:.3f}"] for name, m in results.items()]
    return markdown_table(["model", "mean reward", "mean KL(pi || pi_sft)", "completion length",
                           "distinct-1 / distinct-2"], rows)


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv
    import io


    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


