"""Evaluation: mean reward and KL(pi || pi_sft) on held-out prompts (WARP.md, evaluation protocol).

One KL estimator everywhere in reports: the exact per-token form, summed over completion tokens,
sum_t KL(pi(.|x,y<t) || pi_sft(.|x,y<t)) over the full vocabulary, on completions sampled from pi.
The sampled k1 estimate (what training uses) is reported beside it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
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

    return save_hf_folder(path, model, tokenizer)


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


# two-sided 95% Student t critical values t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    below = [d for d in _T975 if d < df]
    return _T975[max(below)] if df <= 30 else 1.96


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of the mean (Student t over the values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t975(n - 1) * (var / n) ** 0.5


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the completions (word level)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def subsample_indices(n_prompts: int, subsamples: int, size: int, seed: int) -> list[list[int]]:
    """S seeded subsamples of N held-out prompts; the same for every model compared."""
    if size > n_prompts:
        from warp_lightning import UserError

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
                                   ecfg.seed + 1000 + s, ecfg.batch_size)
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
    from warp_lightning import UserError
    from warp_lightning.data import prompt_splits
    from warp_lightning.policy import load_causal_lm, load_tokenizer
    from warp_lightning.reward import RewardModel
    from warp_lightning.warp import ensure_model

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
    from warp_lightning.report import fmt_ci, markdown_table

    rows = [[name, fmt_ci(m["reward_mean"], m["reward_ci95"]), fmt_ci(m["kl_mean"], m["kl_ci95"], 2),
             fmt_ci(m["completion_length_mean"], m["completion_length_ci95"], 1),
             f"{m['distinct_1']:.3f} / {m['distinct_2']:.3f}"] for name, m in results.items()]
    return markdown_table(["model", "mean reward", "mean KL(pi || pi_sft)", "completion length",
                           "distinct-1 / distinct-2"], rows)


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv
    import io

    from warp_lightning.io import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


def run(cfg) -> dict:
    """`python -m warp_lightning evaluate model=PATH`: reward and KL(pi || pi_sft) with intervals.

    Experiment 1 of WARP.md: with `with_sft=true` (the default) the SFT policy is evaluated too, on the
    same subsamples, and the table `model | mean reward | mean KL` is printed and saved as `table.md`.
    """
    from warp_lightning import UserError
    from warp_lightning.cli import cfg_output_dir
    from warp_lightning.io import atomic_write_bytes
    from warp_lightning.policy import load_causal_lm

    sft_path = str(cfg.sft)

    def is_sft(path: str) -> bool:
        return Path(path).resolve() == Path(sft_path).resolve()

    models = {}
    for name, path in named_models(cfg.model).items():
        if not Path(path).exists():
            raise UserError(f"model={path} does not exist: pass a Hugging Face folder, e.g. "
                            "model=outputs/train/.../final")
        models["SFT" if is_sft(path) else name] = path
    protocol = load_protocol(cfg)
    if cfg.with_sft and not any(map(is_sft, models.values())):
        models = {"SFT": sft_path, **models}
    results, rows = {}, []
    for name, path in models.items():
        model = protocol.sft if is_sft(path) else load_causal_lm(path).eval()
        metrics, completions = protocol.evaluate(model)
        results[name] = {**metrics, "path": path}
        rows += [{"model": name, **r} for r in completions]
    out = Path(cfg_output_dir())
    write_csv(out / "completions.csv", rows)
    table = results_table(results)
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    print(table)
    name = next((n for n, p in models.items() if not is_sft(p)), next(iter(models)))  # the model asked for
    main = {k: v for k, v in results[name].items() if k != "path"}
    return {**main, "model": models[name], "sft": sft_path, "models": results}
