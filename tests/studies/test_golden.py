"""The numerics of a study's jobs: what a job computes, on a fixed tiny case, against the figures recorded for the
code's `NUMERICS` (tests/studies/golden_numerics.json).

A change that makes training or evaluation compute other numbers fails here: then bump `NUMERICS` in
warp_lightning/studies/results.py (the report stops pooling the results computed before, and `study` lists them as
stale) and record the new figures with `python tests/studies/test_golden.py`. The case: two runs of 3 RLOO steps
with the EMA anchor (eager kernels, fp32, one thread) from one random tiny GPT-2 with the real GPT-2 tokenizer, their
SLERP and LITI merge, and the evaluation protocol's scores of the merged policy against the initial one.
"""

import copy
import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo import merging
from warp_lightning.data.prompts import PromptBatches
from warp_lightning.eval.protocol import score_completions
from warp_lightning.reward.rewards import RewardScores
from warp_lightning.studies.results import NUMERICS
from warp_lightning.train.callbacks import EMAAnchor
from warp_lightning.train.module import RLOOModule

GOLDEN = Path(__file__).with_name("golden_numerics.json")
CONF = Path(__file__).resolve().parents[2] / "conf" / "warp" / "default.yaml"


class Reward:
    """The share of even character codes in the text's last 8 characters: a reward with no model to train."""

    def __call__(self, prompts, completions, columns):
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return RewardScores(torch.tensor([sum(ord(c) % 2 == 0 for c in t[-8:]) / 8 for t in texts]))


def figures(tokenizer) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    theta_init = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64)).eval()
    w = OmegaConf.merge(OmegaConf.load(CONF), {"samples_per_prompt": 2, "max_new_tokens": 4, "lr": 1e-2,
                                               "warmup_steps": 1, "kl_to_init_every": 0, "compile": False})
    prompts = [tokenizer(t)["input_ids"] for t in ("a fine film about", "the plot", "this movie is", "I watched")]
    runs = []
    for seed in (1, 2):
        policy = copy.deepcopy(theta_init)
        module = RLOOModule(policy, copy.deepcopy(policy), Reward(), tokenizer, w, sample_seed=seed)
        trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[EMAAnchor(w.ema_rate)], accelerator="cpu")
        trainer.fit(module, PromptBatches(prompts, 3, 2, seed, tokenizer.pad_token_id))
        runs.append({k: v.detach().clone() for k, v in policy.state_dict().items()})
    init = theta_init.state_dict()
    slerp = merging.slerp(init, runs, 0.5)
    merged = copy.deepcopy(theta_init)
    merged.load_state_dict(merging.liti(init, slerp, 0.5))
    scores = score_completions(merged, theta_init, tokenizer, Reward(), prompts, 2, 6, 1.0, seed=7)
    weights = [float(sum(t.double().abs().sum() for t in sd.values())) for sd in (*runs, slerp)]
    return {"abs_sum_run_1": weights[0], "abs_sum_run_2": weights[1], "abs_sum_slerp": weights[2],
            "reward_mean": sum(scores["reward"]) / len(scores["reward"]),
            "kl_mean": sum(scores["kl"]) / len(scores["kl"]), "kl_k1_mean": sum(scores["kl_k1"]) / len(scores["kl_k1"])}


def test_a_job_computes_the_golden_figures_of_its_numerics(gpt2_tokenizer):
    from warp_lightning.policy.models import load_tokenizer

    golden = json.loads(GOLDEN.read_text())
    got = figures(load_tokenizer(gpt2_tokenizer.name_or_path))
    assert golden["numerics"] == NUMERICS, (
        f"NUMERICS is {NUMERICS} but the golden figures are those of {golden['numerics']}: record them with "
        "`python tests/studies/test_golden.py`")
    changed = {k: (golden["figures"][k], v) for k, v in got.items() if v != pytest.approx(golden["figures"][k], rel=1e-4, abs=1e-6)}
    assert not changed, (f"a job computes other numbers than numerics {NUMERICS} did: {changed}; bump NUMERICS in "
                         "warp_lightning/studies/results.py and record the figures with `python tests/studies/test_golden.py`")


if __name__ == "__main__":  # record the figures of the code's NUMERICS
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from warp_lightning.data.assets import fetch
    from warp_lightning.policy.models import load_tokenizer

    found = figures(load_tokenizer(str(fetch("gpt2_tokenizer"))))
    GOLDEN.write_text(json.dumps({"numerics": NUMERICS, "figures": found}, indent=2) + "\n")
    print(json.dumps(found, indent=2))
