"""Evaluation: mean reward and KL(pi || pi_sft) on held-out prompts (WARP.md, evaluation protocol).

One KL estimator everywhere in reports: the exact per-token form, summed over completion tokens,
sum_t KL(pi(.|x,y<t) || pi_sft(.|x,y<t)) over the full vocabulary, on completions sampled from pi.
The sampled k1 estimate (what training uses) is reported beside it.

One schema for every evaluation (`train`'s end-of-run check and `evaluate`), per model: `FIGURES` through
`stats.summarize` (`reward_mean`, `judge_mean`, `kl_mean`, `kl_k1_mean`, `kl_k3_mean`, `completion_length_mean`,
each with `_ci95`, `_low`, `_high`, `_per_subsample`), and against a reference model on the same prompts and random
numbers (`paired_gains`): `reward_diff_mean`, `reward_diff_low`, ... and the same for `judge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from warp_lightning import UserError
from warp_lightning.algo import rl
from warp_lightning.builds import ensure_reward
from warp_lightning.data.checks import data_source
from warp_lightning.data.prompt_datasets import prompt_columns
from warp_lightning.data.prompts import left_pad, splits_for
from warp_lightning.eval.judge import load_judge
from warp_lightning.eval.stats import compare_rows, distinct_n, summarize
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.models import load_causal_lm, load_tokenizer, model_from_state
from warp_lightning.policy.sampling import decode_prompts_completions, sample
from warp_lightning.reward.rewards import check_reward_columns, checked_scores, load_reward
from warp_lightning.utils.io import atomic_write_bytes
from warp_lightning.utils.precision import autocast
from warp_lightning.utils.trainer import log_device, trainer_device, trainer_precision


@torch.no_grad()
def score_completions(model, sft_model, tokenizer, reward_model, prompt_ids: list[list[int]], n_per_prompt: int,
                      max_new_tokens: int, temperature: float, seed: int, batch_size: int = 64,
                      min_new_tokens: int = 0, columns: dict[str, list] | None = None) -> dict:
    """Sample n completions per prompt from `model`; per completion: reward (and each term of a sum as
    `reward/NAME`), exact and sampled KL, length. Both models' log-probs are those of the distribution sampled
    (temperature, no EOS before min_new_tokens). `columns`: the dataset's other columns (its chat messages among
    them), one value per prompt, for the reward; the rewards checked as train checks them (`checked_scores`)."""

    device = next(model.parameters()).device
    rows = [p for p in prompt_ids for _ in range(n_per_prompt)]
    row_columns = {k: [v for v in values for _ in range(n_per_prompt)] for k, values in (columns or {}).items()}
    out = {"reward": [], "kl": [], "kl_k1": [], "kl_k3": [], "length": [], "text": [], "completion": []}
    for start in range(0, len(rows), batch_size):
        ids, mask = (t.to(device) for t in left_pad(rows[start : start + batch_size], tokenizer.pad_token_id))
        # a generator per batch: row r of every model draws the same uniforms (a batch ends at its last EOS);
        # in CPU memory on any device, so a seed gives the same stream on CPU and GPU
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        rollout = sample(model, ids, mask, max_new_tokens, temperature, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=g, min_new_tokens=min_new_tokens)
        cmask = rollout.completion_mask.bool()
        lp_tok, _, lp_full = completion_logprobs(model, rollout, full=True)
        ref_tok, _, ref_full = completion_logprobs(sft_model, rollout, full=True)
        per_token_kl = torch.zeros(cmask.shape, device=device)
        per_token_kl[cmask] = rl.exact_kl_from_logprobs(lp_full, ref_full)
        log_ratio = (ref_tok - lp_tok) * cmask  # log pi_sft/pi at the sampled tokens
        prompts, completions = decode_prompts_completions(tokenizer, rollout)
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]  # = decode_texts
        batch_columns = {k: v[start : start + batch_size] for k, v in row_columns.items()}
        scores = checked_scores(reward_model, prompts, completions, batch_columns)  # as train checks a step's
        out["reward"] += scores.total.tolist()
        for name, term in scores.terms.items():
            out.setdefault(f"reward/{name}", []).extend(term.tolist())
        out["kl"] += per_token_kl.sum(-1).tolist()
        out["kl_k1"] += (-log_ratio.sum(-1)).tolist()
        out["kl_k3"] += ((log_ratio.exp() - 1 - log_ratio) * cmask).sum(-1).tolist()
        out["length"] += cmask.sum(-1).tolist()
        out["text"] += texts
        out["completion"] += completions
    return out


# per-completion score -> the name of its figures (`{name}_mean`, `{name}_low`, ...)
FIGURES = {"reward": "reward", "judge": "judge", "kl": "kl", "kl_k1": "kl_k1", "kl_k3": "kl_k3",
           "length": "completion_length"}
PAIRED = ("reward", "judge")  # the scores whose paired differences to the reference model are reported


def figures_of(rows: list[dict]) -> dict[str, str]:
    """`FIGURES`, and `reward/NAME` for each term of a sum reward (reported beside the total)."""
    return {**FIGURES, **{k: k for k in (rows[0] if rows else {}) if k.startswith("reward/")}}


def completion_rows(model, sft_model, tokenizer, reward_model, prompt_ids: list[list[int]], prompt_index: list[int],
                    ecfg, seed: int, subsample: int = 0, judge=None, columns: dict[str, list] | None = None) -> list[dict]:
    """One row per sampled completion of `model` on `prompt_ids` (`eval.samples_per_prompt` each): its prompt's
    index, its subsample, the scores of `score_completions` and the judge's."""
    n = ecfg.samples_per_prompt
    scores = score_completions(model, sft_model, tokenizer, reward_model, prompt_ids, n, ecfg.max_new_tokens,
                               ecfg.temperature, seed, ecfg.batch_size, ecfg.get("min_new_tokens", 0), columns)
    if judge is not None:  # on prompt + completion, or (judge.reads: completion) on the answer alone
        scores["judge"] = judge(scores["completion" if judge.reads == "completion" else "text"]).tolist()
    return [{"subsample": subsample, "prompt_index": prompt_index[j // n], "sample": j % n,
             **{k: v[j] for k, v in scores.items()}} for j in range(len(scores["text"]))]


def paired_gains(rows: dict[str, list[dict]], reference: str, seed: int) -> dict[str, dict]:
    """For each model but `reference`: the paired difference model - reference of each `PAIRED` score (per prompt,
    95% bootstrap interval over prompts), as `{score}_diff_mean`, `_low`, `_high`, ..."""
    gains = {}
    for name, model_rows in rows.items():
        if name == reference or len({r["prompt_index"] for r in model_rows}) < 2:
            continue
        gains[name] = {}
        for key in PAIRED:
            if key in model_rows[0]:
                gains[name].update(compare_rows(model_rows, rows[reference], key, seed).as_dict(f"{key}_diff_"))
    return gains


def quick_eval(states: dict[str, dict], skeleton, tokenizer, reward_model, prompts, eval_cfg,
               device: str | torch.device = "cpu", judge=None) -> dict:
    """`train`'s end-of-run check: the figures of each named state (the first is the SFT policy, the reference of
    the KL and of the paired gains) on `eval.prompts` prompts of `prompts` (seeded), one subsample, the same
    sampling random numbers for every state; `eval.examples` completions of each."""
    order = prompts.shuffle(seed=eval_cfg.seed)
    ids = list(order["input_ids"][: eval_cfg.prompts])
    columns = {k: v[: len(ids)] for k, v in prompt_columns(order).items()}
    sft = model_from_state(skeleton, next(iter(states.values()))).to(device)
    rows = {name: completion_rows(model_from_state(skeleton, state).to(device), sft, tokenizer, reward_model, ids,
                                  list(range(len(ids))), eval_cfg, eval_cfg.seed, judge=judge, columns=columns)
            for name, state in states.items()}
    results = {name: {**summarize(r, figures_of(r), eval_cfg.seed), "examples": [x["text"] for x in r[: eval_cfg.examples]]}
               for name, r in rows.items()}
    for name, gains in paired_gains(rows, next(iter(states)), eval_cfg.seed).items():
        results[name].update(gains)
    return results


def subsample_indices(n_prompts: int, subsamples: int, size: int | None, seed: int) -> list[list[int]]:
    """S disjoint seeded subsamples of N held-out prompts (N = None: all of them, in S parts as equal as can
    be); the same for every model compared."""
    if size is not None and (size < 1 or subsamples * size > n_prompts) or subsamples > n_prompts:
        raise UserError(f"eval.subsamples={subsamples} x eval.prompts={size} is invalid: the split holds "
                        f"{n_prompts} prompts, and the subsamples are disjoint")
    order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed)).tolist()
    total = subsamples * size if size is not None else n_prompts
    bounds = [s * total // subsamples for s in range(subsamples + 1)]
    return [order[bounds[s] : bounds[s + 1]] for s in range(subsamples)]


def evaluate_policy(model, sft_model, tokenizer, reward_model, test_prompts, ecfg,
                    judge=None) -> tuple[dict, list[dict]]:
    """The protocol of WARP.md on S disjoint subsamples (each with its own sampling seed): means with their 95%
    bootstrap intervals over prompts, the per-subsample means, and one row per completion."""
    ids, columns = list(test_prompts["input_ids"]), prompt_columns(test_prompts)
    rows = []
    for s, idx in enumerate(subsample_indices(len(ids), ecfg.subsamples, ecfg.get("prompts"), ecfg.seed)):
        rows += completion_rows(model, sft_model, tokenizer, reward_model, [ids[i] for i in idx], idx, ecfg,
                                ecfg.seed + 1000 + s, subsample=s, judge=judge,
                                columns={k: [v[i] for i in idx] for k, v in columns.items()})
    metrics = summarize(rows, figures_of(rows), ecfg.seed)
    texts = [r["text"] for r in rows]
    metrics.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2), subsamples=ecfg.subsamples,
                   prompts_per_subsample=round(len(rows) / ecfg.samples_per_prompt / ecfg.subsamples, 1),
                   prompts=len(rows) // ecfg.samples_per_prompt, split=ecfg.get("split", "test"),
                   kl_estimator="exact per-token KL over the vocabulary, summed over completion tokens, on "
                   "completions sampled from the model",
                   interval="95% percentile bootstrap over prompts (scipy.stats.bootstrap, 9999 resamples)")
    if judge is not None:
        metrics.update(judge=judge.describe(), judge_accuracy=judge.accuracy)
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
    device: torch.device = torch.device("cpu")  # where the models compute
    precision: str = "32-true"  # bf16-mixed: matmuls in bf16 (trainer.precision); KL, rewards in fp32
    judge: object = None  # the held-out sentiment judge (eval.judge), scored beside the reward

    def evaluate(self, model) -> tuple[dict, list[dict]]:
        """The protocol's figures and per-completion rows for `model` (moved to the protocol's device)."""
        with autocast(self.precision, self.device):
            return evaluate_policy(model.to(self.device), self.sft, self.tokenizer, self.reward_model,
                                   self.test_prompts, self.ecfg, judge=self.judge)


def load_protocol(cfg) -> Protocol:
    """The Protocol of an `evaluate`-like config (`sft`, `reward_model`, `data`, `eval`, `trainer`)."""
    ensure_reward(cfg.reward_model, cfg.paths.cache_dir)
    device = trainer_device(cfg.trainer)
    log_device(cfg.trainer)
    tokenizer = load_tokenizer(cfg.sft)
    reward_model = load_reward(cfg.reward_model, device)
    # held-out prompts do not depend on the seed; eval.split: test for final figures, validation for selection
    prompts = splits_for(cfg.data, tokenizer, 0, cache=cfg.paths.cache_dir).get(cfg.eval.get("split", "test"))
    # before any model is evaluated: the columns that reach the reward, a text set's as a data=prompts dataset's
    check_reward_columns(cfg.reward_model, set(prompt_columns(prompts)), source=data_source(cfg.data))
    return Protocol(tokenizer, load_causal_lm(cfg.sft).eval().to(device), reward_model, prompts, cfg.eval,
                    device, trainer_precision(cfg.trainer), judge=load_judge(cfg.get("judge"), cfg.paths.cache_dir))


def named_models(value) -> dict[str, str]:
    """`model=PATH`, `model=[PATH, ...]` or `model={name: PATH, ...}` as {name: path}: a path's name is its last two
    parts, or the whole path when two paths end alike (`x/run/final`, `y/run/final`: neither hides the other)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, DictConfig | dict):
        return {str(k): str(v) for k, v in value.items()}
    paths = [str(v) for v in value] if isinstance(value, ListConfig | list | tuple) else [str(value)]
    names = ["/".join(Path(p).parts[-2:]) for p in paths]
    return dict(zip(names if len(set(names)) == len(names) else paths, paths, strict=True))


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv
    import io


    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


