"""LoRA adapters (policy/lora.py) on a tiny Llama: the dense view is W + (alpha / r) B A, the merge of LoRA runs is
the dense SLERP of their dW, and the EMA anchor is theta_init + EMA(dW), each against a hand computation."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from warp_lightning.algo import merging
from warp_lightning.algo.state import WarpState, clone_state
from warp_lightning.policy.lora import DenseEMA, add_lora, dense_state, has_lora, lora_enabled, lora_layers

LORA = OmegaConf.create({"rank": 4, "alpha": 8, "target_modules": "all-linear"})


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def adapted(model, seed: int, lora=LORA):
    """A LoRA copy of `model` whose adapters hold random values (as after some training): B != 0."""
    out = add_lora(copy.deepcopy(model), lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return out


def hand_delta(layer, lora=LORA) -> torch.Tensor:
    """(alpha / r) B A, written out from the adapter matrices (nn.Linear layout: out x in)."""
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (lora.alpha / lora.rank) * b @ a


def test_only_adapters_train_and_a_fresh_adapter_is_the_identity():
    model = tiny_llama()
    plain = clone_state(model.state_dict())
    lora_model = add_lora(copy.deepcopy(model), LORA)
    trained = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained)
    layers = lora_layers(lora_model)
    assert len(layers) == 2 * 7 and "lm_head" not in layers  # q k v o gate up down per layer, not the head
    dense = dense_state(lora_model)  # B = 0 at the start: exactly theta_init, under the plain keys
    assert dense.keys() == plain.keys()
    assert all(torch.equal(dense[k], plain[k]) for k in plain)
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        assert torch.equal(lora_model(ids).logits, model(ids).logits)
    assert has_lora(lora_model) and not has_lora(model)
    assert lora_enabled(LORA) and not lora_enabled(OmegaConf.create({"rank": 0})) and not lora_enabled(None)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dense_state_is_w_plus_scaled_ba_and_computes_what_the_adapted_model_computes(arch):
    if arch == "llama":
        model = tiny_llama()
    else:  # GPT-2's Conv1D stores W as in x out: dW must come in that layout
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()
    lora_model = adapted(model, seed=1)
    dense = dense_state(lora_model)
    plain = model.state_dict()
    for name, layer in lora_layers(lora_model).items():
        delta = hand_delta(layer)
        expected = plain[f"{name}.weight"] + (delta.T if arch == "gpt2" else delta)
        torch.testing.assert_close(dense[f"{name}.weight"], expected)
    untouched = {k for k in plain if k.removesuffix(".weight") not in lora_layers(lora_model)}
    assert untouched and all(torch.equal(dense[k], plain[k]) for k in untouched)
    reloaded = copy.deepcopy(model)
    reloaded.load_state_dict(dense)  # a plain model with the dense weights computes the same logits
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, lora_model(ids).logits, atol=1e-5, rtol=1e-5)


def test_merging_lora_runs_is_the_dense_slerp_of_their_delta_w_not_the_product_of_averaged_factors():
    model = tiny_llama()
    theta_init = clone_state(model.state_dict())
    runs = [adapted(model, seed) for seed in (1, 2)]
    state = WarpState(theta_init, runs_per_iteration=2, merge_method="slerp", slerp_lambda=0.5, liti_eta=0.5)
    for run in runs:
        state.add_run(dense_state(run))
    state.merge()
    layers = [lora_layers(r) for r in runs]
    for name in layers[0]:
        d1, d2 = hand_delta(layers[0][name]), hand_delta(layers[1][name])
        omega = torch.arccos(torch.dot(d1.flatten(), d2.flatten()) / (d1.norm() * d2.norm()))
        expected = theta_init[f"{name}.weight"] + (torch.sin(0.5 * omega) * (d1 + d2)) / torch.sin(omega)
        torch.testing.assert_close(state.theta_slerp[f"{name}.weight"], expected, atol=1e-6, rtol=1e-5)
        # the merge of factors (mean of A, mean of B) that PEFT's `linear` combination does is something else
        a = (layers[0][name].lora_A["default"].weight + layers[1][name].lora_A["default"].weight) / 2
        b = (layers[0][name].lora_B["default"].weight + layers[1][name].lora_B["default"].weight) / 2
        factors = theta_init[f"{name}.weight"] + (LORA.alpha / LORA.rank) * b @ a
        assert not torch.allclose(factors, (theta_init[f"{name}.weight"] + (d1 + d2) / 2), atol=1e-3)
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):  # not adapted: theta_init
        assert torch.equal(state.theta_slerp[key], theta_init[key])
    # LITI: theta_init <- theta_init + eta (theta_slerp - theta_init), on the dense weights
    name = next(iter(layers[0]))
    key = f"{name}.weight"
    torch.testing.assert_close(state.theta_init[key], theta_init[key] + 0.5 * (state.theta_slerp[key] - theta_init[key]))
    assert merging.slerp(theta_init, [dense_state(r) for r in runs], 0.5).keys() == theta_init.keys()


def test_the_lora_ema_anchor_is_theta_init_plus_the_ema_of_delta_w():
    mu, steps = 0.3, 4
    model = tiny_llama()
    theta_init = clone_state(model.state_dict())
    policy = adapted(model, seed=0)
    anchor = copy.deepcopy(model)  # dense, at theta_init
    ema = DenseEMA(anchor, policy)
    expected_ema = {name: torch.zeros_like(theta_init[f"{name}.weight"]) for name in lora_layers(policy)}
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):  # an "optimizer step" moves the adapters, then the callback updates the anchor
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if ".lora_" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        ema.update_(mu)
        for name, layer in lora_layers(policy).items():
            expected_ema[name] = (1 - mu) * expected_ema[name] + mu * hand_delta(layer)
    got = anchor.state_dict()
    for name, delta in expected_ema.items():
        torch.testing.assert_close(got[f"{name}.weight"], theta_init[f"{name}.weight"] + delta, atol=1e-6, rtol=1e-5)
    for key, t in theta_init.items():
        if key.removesuffix(".weight") not in expected_ema:
            assert torch.equal(got[key], t), key
