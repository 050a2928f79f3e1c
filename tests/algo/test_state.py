"""The WARP loop's bookkeeping: seeds per (seed, i, m), WarpState merges, prompt batches, EMA callback."""

import pytest
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


def test_warp_state_merges_once_its_m_runs_are_in_then_applies_liti():
    sft = clone_state(tiny_gpt2(0).state_dict())
    runs = [clone_state(tiny_gpt2(s).state_dict()) for s in (1, 2)]
    state = WarpState(sft, runs_per_iteration=2, merge_method="slerp", slerp_lambda=0.5, liti_eta=0.5)
    state.add_run(runs[0])
    assert not state.ready_to_merge and state.finished(1, 1) and not state.finished(1, 2)
    with pytest.raises(RuntimeError, match="1 of its 2 runs"):
        state.merge()  # nothing merges before the M-th run
    assert state.theta_slerp is None and not state.merged(1)
    state.add_run(runs[1])
    stats = state.merge()
    expected = merging.slerp(sft, runs, 0.5)
    assert all(torch.equal(state.theta_slerp[k], expected[k]) for k in expected)
    init = merging.liti(sft, expected, 0.5)
    assert all(torch.equal(state.theta_init[k], init[k]) for k in init)
    assert state.merged(1) and not state.merged(2) and state.finished(1, 2) and not state.finished(2, 1)
    assert state.runs == [] and state.merge_stats == [stats] and stats["iteration"] == 1
    assert all(torch.equal(state.theta_sft[k], sft[k]) for k in sft)  # theta_sft never changes
    with pytest.raises(RuntimeError, match="0 of its 2 runs"):
        state.merge()


def test_warp_state_refuses_a_run_beyond_m():
    sft = clone_state(tiny_gpt2(0).state_dict())
    state = WarpState(sft, runs_per_iteration=1)
    state.add_run(sft)
    with pytest.raises(RuntimeError, match="already holds"):
        state.add_run(sft)


def test_warp_state_dict_round_trip_continues_identically():
    sft = clone_state(tiny_gpt2(0).state_dict())
    runs = [clone_state(tiny_gpt2(s).state_dict()) for s in (1, 2, 3)]
    a = WarpState(sft, runs_per_iteration=2)
    a.add_run(runs[0])
    a.add_run(runs[1])
    a.merge()
    a.add_run(runs[2])  # interrupted after run 1 of iteration 2
    b = WarpState(sft, runs_per_iteration=2)
    b.load_state_dict(a.state_dict())
    assert b.iteration == 2 and b.finished(2, 1) and not b.finished(2, 2) and b.merge_stats == a.merge_stats
    for s in (a, b):
        s.add_run(runs[0])
        s.merge()
    assert all(torch.equal(a.theta_slerp[k], b.theta_slerp[k]) and torch.equal(a.theta_init[k], b.theta_init[k])
               for k in sft)


def test_linear_merge_baseline():
    sft = clone_state(tiny_gpt2(0).state_dict())
    runs = [clone_state(tiny_gpt2(s).state_dict()) for s in (1, 2)]
    state = WarpState(sft, runs_per_iteration=2, merge_method="linear", slerp_lambda=0.5, liti_eta=1.0)
    for r in runs:
        state.add_run(r)
    state.merge()
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
