"""SLERP / linear / LITI merging (WARP.md "SLERP of task vectors") against properties and hand computations."""

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo import merging


def task_vector(theta_init, theta):
    """delta = theta - theta_init per floating tensor (the others from theta_init): what the merges combine."""
    return {k: theta[k] - v if v.is_floating_point() else v for k, v in theta_init.items()}


def _random_sds(n_models, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    base = {"w": rand(4, 3), "b": rand(3), "steps": torch.tensor([7, 8])}
    models = [
        {"w": base["w"] + rand(4, 3), "b": base["b"] + rand(3), "steps": torch.tensor([100 + m, 0])}
        for m in range(n_models)
    ]
    return base, models


def _assert_sd_close(a, b, **kw):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **kw)


def _angle_sds():
    """Tensor `a`: task vectors at 60 degrees; tensor `b`: orthogonal, norm 3. Base is nonzero."""
    r3 = math.sqrt(3.0)
    base = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([-1.0, 2.0, 0.5])}
    m1 = {"a": base["a"] + torch.tensor([1.0, 0.0]), "b": base["b"] + torch.tensor([3.0, 0.0, 0.0])}
    m2 = {"a": base["a"] + torch.tensor([0.5, r3 / 2]), "b": base["b"] + torch.tensor([0.0, 3.0, 0.0])}
    return base, m1, m2


@pytest.mark.parametrize("merge", [merging.slerp, merging.linear])
def test_lam_endpoints_give_the_models(merge):
    base, (m1, m2) = _random_sds(2)
    _assert_sd_close(merge(base, [m1, m2], lam=0.0), {**m1, "steps": base["steps"]})
    _assert_sd_close(merge(base, [m1, m2], lam=1.0), {**m2, "steps": base["steps"]})


def test_slerp_hand_computation_60_degrees():
    base, m1, m2 = _angle_sds()
    # lam = 0.5, Omega = 60 deg: sin(30)/sin(60) = 1/sqrt(3) on both task vectors -> the unit vector at 30 deg
    out = merging.slerp(base, [m1, m2], lam=0.5)
    torch.testing.assert_close(out["a"], base["a"] + torch.tensor([math.sqrt(3) / 2, 0.5]))
    # lam = 0.25: sin(45)/sin(60) * delta_1 + sin(15)/sin(60) * delta_2 -> the unit vector at 15 deg
    out = merging.slerp(base, [m1, m2], lam=0.25)
    c = 1 / math.sin(math.pi / 3)
    expected = c * math.sin(math.pi / 4) * torch.tensor([1.0, 0.0]) + c * math.sin(
        math.pi / 12
    ) * torch.tensor([0.5, math.sqrt(3) / 2])
    torch.testing.assert_close(expected, torch.tensor([math.cos(math.pi / 12), math.sin(math.pi / 12)]))
    torch.testing.assert_close(out["a"], base["a"] + expected)
    # each tensor has its own angle: `b` (90 deg) at lam = 0.25 is 3 * (cos 22.5, sin 22.5, 0)
    expected_b = 3 * torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8), 0.0])
    torch.testing.assert_close(out["b"], base["b"] + expected_b)


def test_orthogonal_equal_norm_slerp_keeps_norm_linear_shrinks():
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(8, 5, generator=g)}
    d1 = torch.randn(8, 5, generator=g)
    d2 = torch.randn(8, 5, generator=g)
    d2 = d2 - (d2 * d1).sum() / (d1 * d1).sum() * d1  # Gram-Schmidt
    d2 = d2 * d1.norm() / d2.norm()
    models = [{"w": base["w"] + d1}, {"w": base["w"] + d2}]
    slerp_norm = task_vector(base, merging.slerp(base, models, lam=0.5))["w"].norm()
    linear_norm = task_vector(base, merging.linear(base, models, lam=0.5))["w"].norm()
    torch.testing.assert_close(slerp_norm, d1.norm(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear_norm, d1.norm() / math.sqrt(2), rtol=1e-5, atol=1e-5)


def test_recursive_slerp_for_three_models_and_one_model():
    base, (m1, m2, m3) = _random_sds(3, dtype=torch.float64)
    by_hand = merging.slerp(base, [merging.slerp(base, [m1, m2], lam=1 / 2), m3], lam=1 / 3)
    _assert_sd_close(merging.slerp(base, [m1, m2, m3]), by_hand)
    # two models and lam=None is lam = 1/2
    _assert_sd_close(merging.slerp(base, [m1, m2]), merging.slerp(base, [m1, m2], lam=0.5))
    # one model: a copy of it (floating tensors), buffers from base
    out = merging.slerp(base, [m1])
    assert torch.equal(out["w"], m1["w"]) and out["w"] is not m1["w"]
    assert torch.equal(out["steps"], base["steps"])


def test_lam_needs_exactly_two_models():
    base, models = _random_sds(3)
    for merge in (merging.slerp, merging.linear):
        with pytest.raises(ValueError, match="exactly 2 models"):
            merge(base, models, lam=0.5)
    with pytest.raises(ValueError, match="at least one model"):
        merging.slerp(base, [])


def test_linear_uniform_average():
    base, models = _random_sds(3)
    out = merging.linear(base, models)
    torch.testing.assert_close(out["w"], (models[0]["w"] + models[1]["w"] + models[2]["w"]) / 3)


@pytest.mark.parametrize(
    "scale_2, expected_scale",
    [(2.0, 1.5), (0.0, 0.5), (-1.0, 0.0)],  # collinear, zero task vector, antipodal
    ids=["collinear", "zero", "antipodal"],
)
def test_degenerate_task_vectors_fall_back_to_linear(scale_2, expected_scale):
    base, (m1,) = _random_sds(1)
    d1 = task_vector(base, m1)
    m2 = {k: base[k] + scale_2 * d1[k] if v.is_floating_point() else v for k, v in base.items()}
    out = merging.slerp(base, [m1, m2], lam=0.5)
    for key in ("w", "b"):
        assert torch.isfinite(out[key]).all()
        torch.testing.assert_close(out[key], base[key] + expected_scale * d1[key])
        torch.testing.assert_close(out[key], merging.linear(base, [m1, m2], lam=0.5)[key])


def test_inputs_unchanged_and_outputs_never_alias_them():
    base, models = _random_sds(3)
    clones = [{k: v.clone() for k, v in sd.items()} for sd in [base, *models]]
    outputs = [
        merging.slerp(base, models),
        merging.slerp(base, models[:1]),
        merging.slerp(base, models[:2], lam=0.3),
        merging.linear(base, models),
        merging.linear(base, models[:2], lam=0.3),
        merging.liti(base, models[0], 1.0),
        merging.liti(base, models[0], 0.0),
    ]
    merging.merge_stats(base, models, outputs[1])
    for out in outputs:
        for t in out.values():
            t.add_(1)
    for sd, clone in zip([base, *models], clones, strict=True):
        for key in sd:
            assert torch.equal(sd[key], clone[key])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtype_preserved_and_int_buffer_from_base(dtype):
    base, models = _random_sds(3, dtype=dtype)
    for out in (
        merging.slerp(base, models),
        merging.slerp(base, models[:2], lam=0.3),
        merging.linear(base, models),
        merging.liti(base, models[0], 0.3),
    ):
        assert out["w"].dtype == dtype and out["b"].dtype == dtype
        assert out["steps"].dtype == torch.int64 and torch.equal(out["steps"], base["steps"])
    # the computation itself is done in float32 or better: compare with float64
    ref = merging.slerp(*_random_sds(3, dtype=torch.float64))
    tol = {"rtol": 1e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(merging.slerp(base, models)["w"].double(), ref["w"], **tol)


def _tiny_gpt2(seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )


def _perturbed(model, seed, scale=0.05):
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the tied wte / lm_head parameter is yielded once
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_tied_weights_gpt2():
    init = _tiny_gpt2(0)
    models = [_perturbed(init, s) for s in (1, 2, 3)]
    base_sd = init.state_dict()
    sds = [m.state_dict() for m in models]
    assert base_sd["lm_head.weight"].data_ptr() == base_sd["transformer.wte.weight"].data_ptr()

    for out in (
        merging.slerp(base_sd, sds),
        merging.linear(base_sd, sds[:2], lam=0.5),
        merging.liti(base_sd, sds[0], 0.3),
    ):
        assert out["lm_head.weight"] is out["transformer.wte.weight"]
        fresh = _tiny_gpt2(9)
        fresh.load_state_dict(out)
        assert fresh.lm_head.weight is fresh.transformer.wte.weight
        torch.testing.assert_close(fresh.transformer.wte.weight, out["transformer.wte.weight"])

    # merge_stats counts the tied tensor once: compare with the model's (deduplicated) parameters
    merged = merging.slerp(base_sd, sds)
    stats = merging.merge_stats(base_sd, sds, merged)
    for m, model in enumerate(models, start=1):
        expected = math.sqrt(
            sum(
                (p - p0).norm().item() ** 2
                for p, p0 in zip(model.parameters(), init.parameters(), strict=True)
            )
        )
        assert stats[f"task_vector_norm_{m}"] == pytest.approx(expected, rel=1e-5)
    assert 0 < stats["angle_deg_min"] <= stats["angle_deg_mean"] <= stats["angle_deg_max"] < 180

    # a state dict where the tied key appears only once
    drop = "lm_head.weight"
    untied_base, *untied = [{k: v for k, v in sd.items() if k != drop} for sd in (base_sd, *sds[:2])]
    out = merging.slerp(untied_base, untied, lam=0.5)
    assert drop not in out
    torch.testing.assert_close(out["transformer.wte.weight"], merging.slerp(base_sd, sds[:2])[drop])


def test_merge_stats_hand_computation():
    base, m1, m2 = _angle_sds()
    merged = merging.slerp(base, [m1, m2], lam=0.5)
    stats = merging.merge_stats(base, [m1, m2], merged)
    assert stats["angle_deg_min"] == pytest.approx(60.0)
    assert stats["angle_deg_max"] == pytest.approx(90.0)
    assert stats["angle_deg_mean"] == pytest.approx(75.0)
    assert stats["task_vector_norm_1"] == pytest.approx(math.sqrt(1 + 9))
    assert stats["task_vector_norm_2"] == pytest.approx(math.sqrt(1 + 9))
    # both tensors keep their norms under SLERP at lam = 0.5 (unit 2-D vector, and norm 3)
    assert stats["merged_task_vector_norm"] == pytest.approx(math.sqrt(1 + 9))
    # one model: no angle
    assert "angle_deg_mean" not in merging.merge_stats(base, [m1], m1)


def test_liti():
    base, (m1,) = _random_sds(1)
    _assert_sd_close(merging.liti(base, m1, 0.0), base)
    _assert_sd_close(merging.liti(base, m1, 1.0), {**m1, "steps": base["steps"]})
    mid = merging.liti(base, m1, 0.5)
    torch.testing.assert_close(mid["w"], (base["w"] + m1["w"]) / 2)
    for eta in (-0.1, float("nan")):  # eta > 1 extrapolates (ExPO: tests/algo/test_merge_family.py)
        with pytest.raises(ValueError, match="eta"):
            merging.liti(base, m1, eta)


def test_mismatched_keys_and_shapes_raise():
    base, (m1, m2) = _random_sds(2)
    missing = {k: v for k, v in m2.items() if k != "b"}
    with pytest.raises(ValueError, match="'b'"):
        merging.slerp(base, [m1, missing], lam=0.5)
    extra = {**m2, "extra": torch.zeros(1)}
    with pytest.raises(ValueError, match="'extra'"):
        merging.linear(base, [m1, extra])
    reshaped = {**m2, "w": m2["w"].reshape(3, 4)}
    with pytest.raises(ValueError, match="'w'"):
        merging.slerp(base, [m1, reshaped])
    with pytest.raises(ValueError, match="'w'"):
        merging.merge_stats(base, [m1, m2], reshaped)
