"""The RL step and its callbacks prove the loop: the RLOO objective's sign and grouping, the EMA anchor moving by
exactly mu per step (and the fixed anchor not at all), data-parallel processes on disjoint prompts, and the
compiled kernels of the default config inside a whole step."""

import copy

import lightning as L
import pytest
import torch
from conftest import warp_cfg
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo import rl
from warp_lightning.data.prompts import PromptBatches, left_pad
from warp_lightning.policy import vocab_ops as kernels
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import sample
from warp_lightning.reward.rewards import RewardScores
from warp_lightning.train.callbacks import EMAAnchor
from warp_lightning.train.module import RLOOModule, rloo_objective


def tiny_policy(seed: int = 0, vocab: int = 11) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2, n_positions=32, eos_token_id=vocab - 1)
    return GPT2LMHeadModel(config).eval()


def rollout_of(model, prompts, k: int, new_tokens: int = 3, seed: int = 0):
    ids, mask = left_pad([p for p in prompts for _ in range(k)], pad_id=0)
    return sample(model, ids, mask, new_tokens, stop_at_eos=False, generator=torch.Generator().manual_seed(seed))


def sequence_logprobs(model, rollout) -> torch.Tensor:
    with torch.no_grad():
        return rl.sequence_logprob(completion_logprobs(model, rollout)[0], rollout.completion_mask.float())


def test_one_rloo_step_raises_the_better_samples_and_lowers_the_others():
    """A sign error in the objective (or advantages not centred per prompt) fails this."""
    policy, k = tiny_policy(), 4
    anchor = copy.deepcopy(policy).requires_grad_(False)
    rollout = rollout_of(policy, [[1, 2, 3], [4, 5]], k)
    reward = torch.tensor([1.0, 0, 0, 0, 0, 0, 1.0, 0])  # one better sample per prompt
    before = sequence_logprobs(policy, rollout)
    rloo_objective(policy, anchor, rollout, reward, kl_coef=0.0, k=k)["loss"].backward()
    torch.optim.SGD(policy.parameters(), lr=0.1).step()
    change = sequence_logprobs(policy, rollout) - before
    better = reward.bool()
    assert (change[better] > 0).all(), change
    assert change[~better].mean() < 0, change


def test_rloo_advantages_stay_within_each_prompts_samples():
    """A prompt whose k samples score alike contributes nothing: its rewards may be any constant."""
    policy, k = tiny_policy(), 2
    anchor = copy.deepcopy(policy).requires_grad_(False)
    rollout = rollout_of(policy, [[1, 2], [3, 4, 5], [6]], k)
    grads = []
    for constant in (0.0, 7.0):
        policy.zero_grad()
        reward = torch.tensor([1.0, 0.0, constant, constant, 0.0, 0.5])
        terms = rloo_objective(policy, anchor, rollout, reward, kl_coef=0.0, k=k)
        assert torch.equal(terms["advantages"][2:4], torch.zeros(2))
        terms["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


class _Reward:
    """A reward model stand-in: the share of even token ids in the text's last characters (no training needed)."""

    def __call__(self, prompts, completions, columns):
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return RewardScores(torch.tensor([sum(ord(c) % 2 == 0 for c in t[-8:]) / 8 for t in texts]))


def fit_module(gpt2_tokenizer, anchor: str, steps: int = 3):
    from warp_lightning.policy.models import load_tokenizer

    tokenizer = load_tokenizer(gpt2_tokenizer.name_or_path)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    theta_init = copy.deepcopy(policy.state_dict())
    w = warp_cfg(samples_per_prompt=2, max_new_tokens=4, lr=1e-2, warmup_steps=0, kl_to_init_every=0,
                 anchor=anchor, compile=False)
    module = RLOOModule(policy, copy.deepcopy(policy), _Reward(), tokenizer, w, sample_seed=1)
    trail = []

    class Record(L.Callback):  # after EMAAnchor: theta_m and theta_ema after each step
        def on_train_batch_end(self, trainer, module, *args):
            trail.append((copy.deepcopy(module.policy.state_dict()), copy.deepcopy(module.anchor.state_dict())))

    callbacks = ([EMAAnchor(w.ema_rate)] if anchor == "ema" else []) + [Record()]
    prompts = [tokenizer("a fine film about")["input_ids"], tokenizer("the plot")["input_ids"]]
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, PromptBatches(prompts, steps, 2, 0, tokenizer.pad_token_id))
    return theta_init, trail, w.ema_rate


def test_ema_anchor_moves_by_exactly_mu_per_step(gpt2_tokenizer):
    theta_init, trail, mu = fit_module(gpt2_tokenizer, "ema")
    previous = theta_init
    for theta_m, anchor in trail:
        assert any(not torch.equal(theta_m[k], theta_init[k]) for k in theta_m)  # the policy did train
        for key, value in anchor.items():
            expected = torch.lerp(previous[key], theta_m[key], mu)
            assert torch.equal(value, expected), key
        previous = anchor


def test_fixed_anchor_never_moves(gpt2_tokenizer):
    theta_init, trail, _ = fit_module(gpt2_tokenizer, "sft")
    for _, anchor in trail:
        assert all(torch.equal(anchor[k], theta_init[k]) for k in anchor)


def test_data_parallel_processes_take_disjoint_prompts(monkeypatch):
    prompts = [[i] for i in range(40)]
    world, per_step, steps = 2, 8, 5
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: world)
    shards = []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, r=rank: r)
        batches = PromptBatches(prompts, steps, per_step, seed=3, pad_id=0, shard=True)
        shards.append([set(ids[:, -1].tolist()) for ids, _ in batches])
    whole = PromptBatches(prompts, steps, per_step, seed=3, pad_id=0)
    for t, (ids, _) in enumerate(whole):
        assert shards[0][t].isdisjoint(shards[1][t])
        assert shards[0][t] | shards[1][t] == set(ids[:, -1].tolist())
        assert len(shards[0][t]) == len(shards[1][t]) == per_step // world


@pytest.mark.slow
def test_the_default_configs_compiled_kernels_run_a_whole_step_like_eager():
    """warp.compile=true (the default): sampling with kept logits, the fused log-probs and their backward,
    compiled, in bf16 autocast as on a bf16 machine, against the eager kernels."""
    assert warp_cfg().compile is True and warp_cfg().keep_sampling_logits is True
    results = []
    try:
        for compiled in (False, True):
            kernels.use_compiled_kernels(compiled)
            policy = tiny_policy(vocab=50)
            anchor = copy.deepcopy(policy).requires_grad_(False)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ids, mask = left_pad([p for p in ([1, 2, 3], [4, 5]) for _ in range(2)], pad_id=0)
                rollout = sample(policy, ids, mask, 5, generator=torch.Generator().manual_seed(0),
                                 keep_logits=True)
                terms = rloo_objective(policy, anchor, rollout, torch.tensor([1.0, 0.0, 0.5, 0.2]), 0.1, 2)
                terms["loss"].backward()
            results.append((rollout.completion_ids, terms["logprob"].detach(),
                            torch.cat([p.grad.flatten() for p in policy.parameters()])))
    finally:
        kernels.use_compiled_kernels(False)
    (ids_e, lp_e, g_e), (ids_c, lp_c, g_c) = results
    assert torch.equal(ids_e, ids_c)
    assert torch.allclose(lp_e, lp_c, atol=5e-2, rtol=2e-2)
    assert torch.allclose(g_e, g_c, atol=5e-2, rtol=5e-2)
