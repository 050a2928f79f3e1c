"""The WARP loop's bookkeeping: seeds per (seed, i, m), WarpState merges, prompt batches, EMA callback."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo import merging
from warp_lightning.algo.state import WarpState, clone_state, derive_seed
from warp_lightning.data.prompts import PromptBatches


def tiny_gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8,
                                      bos_token_id=0, eos_token_id=0))


def test_derived_seeds_are_stable_and_distinct():
    seeds = {derive_seed(0, i, m) for i in (1, 2) for m in (1, 2, 3)}
    assert len(seeds) == 6 and derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(1, 1, 2)


def test_clone_state_keeps_tied_weights_tied():
    state = clone_state(tiny_gpt2(0).state_dict())
    assert state["lm_head.weight"] is state["transformer.wte.weight"]


def test_warp_state_merges_after_the_mth_run_then_applies_liti():
    sft = clone_state(tiny_gpt2(0).state_dict())
    runs = [clone_state(tiny_gpt2(s).state_dict()) for s in (1, 2)]
    state = WarpState(sft, runs_per_iteration=2, merge="slerp", slerp_lambda=0.5, liti_eta=0.5)
    state.finish_run(runs[0])
    assert state.theta_slerp is None and state.iteration == 1  # nothing merged after run 1 of 2
    state.finish_run(runs[1])
    expected = merging.slerp(sft, runs, 0.5)
    assert all(torch.equal(state.theta_slerp[k], expected[k]) for k in expected)
    init = merging.liti(sft, expected, 0.5)
    assert all(torch.equal(state.theta_init[k], init[k]) for k in init)
    assert state.iteration == 2 and state.runs == [] and len(state.merge_stats) == 1
    assert all(torch.equal(state.theta_sft[k], sft[k]) for k in sft)  # theta_sft never changes


def test_linear_merge_baseline():
    sft = clone_state(tiny_gpt2(0).state_dict())
    runs = [clone_state(tiny_gpt2(s).state_dict()) for s in (1, 2)]
    state = WarpState(sft, runs_per_iteration=2, merge="linear", slerp_lambda=0.5, liti_eta=1.0)
    for r in runs:
        state.finish_run(r)
    key = "transformer.h.0.mlp.c_fc.weight"
    assert torch.allclose(state.theta_slerp[key], (runs[0][key] + runs[1][key]) / 2, atol=1e-6)


def test_prompt_batches_cover_prompts_in_seeded_order():
    prompts = [[i + 1] * (1 + i % 3) for i in range(10)]
    a = PromptBatches(prompts, steps=5, per_step=4, seed=7, pad_id=0)
    b = PromptBatches(prompts, steps=5, per_step=4, seed=7, pad_id=0)
    c = PromptBatches(prompts, steps=5, per_step=4, seed=8, pad_id=0)
    assert len(a) == 5 and a.order == b.order != c.order
    assert sorted(a.order[:10]) == list(range(10))  # a whole pass before any repeat
    ids, mask = a[0]
    assert ids.shape == mask.shape and ids.shape[0] == 4 and (mask[:, -1] == 1).all()  # left padded
