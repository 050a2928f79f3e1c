"""WARM (reward/warm.py): the weight average, the members' settings, the label flips, the linear probe, and the
`reward reward_training.ensemble=M` command on tiny settings (members, average, metrics)."""

import json

import pytest
import torch
from conftest import TINY_REWARD, cli
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from warp_lightning.algo.merging import linear
from warp_lightning.cli import CONF_DIR
from warp_lightning.reward import training, warm

# the ensemble command's tiny settings: TINY_REWARD, shorter, and one eval set of a few texts
TINY_WARM = [*TINY_REWARD, "reward_training.max_steps=2", "reward_training.max_train_texts=32",
             "reward_training.max_val_texts=16", "reward_training.max_eval_texts=8",
             "reward_training.eval_sets=[sentences]", "reward_training.eval_max_length=64",
             "reward_training.probe_steps=1"]


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("reward", overrides=list(overrides))


# ---- pure parts ----------------------------------------------------------------------------------------------

def test_the_weight_average_of_identical_members_is_that_member():
    torch.manual_seed(0)
    theta = {"w": torch.randn(4, 3), "b": torch.randn(3), "steps": torch.tensor(7)}
    init = {"w": torch.zeros(4, 3), "b": torch.ones(3), "steps": torch.tensor(0)}
    for m in (2, 3, 4):
        average = warm.weight_average(init, [theta] * m)
        torch.testing.assert_close(average["w"], theta["w"])
        torch.testing.assert_close(average["b"], theta["b"])
    # a hand computation: the uniform mean, whatever theta_init
    other = {"w": torch.full((4, 3), 2.0), "b": torch.zeros(3), "steps": torch.tensor(0)}
    average = warm.weight_average(init, [theta, other])
    torch.testing.assert_close(average["w"], (theta["w"] + 2.0) / 2)
    torch.testing.assert_close(average["b"], theta["b"] / 2)


def test_members_seeds_are_derived_from_the_seed_and_settings_cycle():
    cfg = composed("reward_training.seed=3", "reward_training.ensemble_lrs=[1e-5,4e-5,1e-4]",
                   "reward_training.ensemble_dropouts=[0.05,0.1]").reward_training
    members = [warm.member_settings(cfg, k) for k in range(4)]
    assert [m.seed for m in members] == [3, 1003, 2003, 3003]
    assert [m.lr for m in members] == [1e-5, 4e-5, 1e-4, 1e-5]
    assert [m.dropout for m in members] == [0.05, 0.1, 0.05, 0.1]
    plain = warm.member_settings(composed().reward_training, 1)
    assert (plain.lr, plain.dropout) == (5e-5, None)


def test_probe_steps_are_steps_or_a_fraction_of_the_fine_tuning():
    assert warm.probe_steps(5, 100) == 5
    assert warm.probe_steps(0, 100) == 0
    assert warm.probe_steps(0.1, 100) == 10
    assert warm.probe_steps(0.1, 3) == 1  # at least one step when asked for some
    assert warm.probe_steps(0.0, 100) == 0


def test_label_flips_swap_exactly_the_chosen_fraction():
    from datasets import Dataset

    pairs = Dataset.from_dict({"chosen": [f"good {i}" for i in range(20)], "rejected": [f"bad {i}" for i in range(20)]})
    noisy, flipped = warm.flip_pairs(pairs, 0.25, seed=0)
    swapped = [i for i in range(20) if noisy[i]["chosen"].startswith("bad")]
    assert len(swapped) == 5 and len(flipped) == 5
    assert all(noisy[i]["chosen"] == f"bad {i}" and noisy[i]["rejected"] == f"good {i}" for i in swapped)
    assert list(flipped["chosen"]) == [f"bad {i}" for i in swapped]
    assert warm.flip_pairs(pairs, 0.25, seed=0)[1]["chosen"] == flipped["chosen"]  # seeded
    assert warm.flip_pairs(pairs, 0.25, seed=1)[1]["chosen"] != flipped["chosen"]


class LengthScorer:
    """Scores a text by its length times `scale`, cut at `max_length` characters; counts its calls."""

    def __init__(self, scale: float):
        self.scale, self.max_length, self.calls = scale, 100, 0

    def __call__(self, texts):
        self.calls += 1
        return torch.tensor([self.scale * len(t[:self.max_length]) for t in texts])


def test_the_prediction_average_is_the_mean_of_the_members_scores_computed_once():
    a, b = LengthScorer(1.0), LengthScorer(3.0)
    cached = [warm.CachedScores(a), warm.CachedScores(b)]
    mean = warm.PredictionAverage(cached)
    assert mean(["ab", "abcd"]).tolist() == [4.0, 8.0]
    assert cached[0](["ab", "abcd"]).tolist() == [2.0, 4.0] and a.calls == 1  # shared with the average
    mean.max_length = 3
    assert mean(["ab", "abcd"]).tolist() == [4.0, 6.0] and a.calls == 2


# ---- the linear probe ----------------------------------------------------------------------------------------

def test_the_linear_probe_trains_the_head_alone(asset_cache, tmp_path):
    cfg = composed(*TINY_WARM, "reward_training.probe_steps=2")
    model, tokenizer, _, train_pairs, val_pairs = training.prepare(cfg)
    encoder = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    head = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(model.base_model_prefix + ".")}
    steps = warm.linear_probe(cfg, training.WARM_STAGE, model, tokenizer, train_pairs, val_pairs, tmp_path, "m")
    assert steps == 2
    assert all(torch.equal(encoder[k], v) for k, v in model.base_model.state_dict().items())
    assert any(not torch.equal(head[k], model.state_dict()[k]) for k in head)
    assert all(p.requires_grad for p in model.parameters())  # fine-tuning then trains everything
    assert not (tmp_path / "checkpoints" / "m_probe.ckpt").exists()


# ---- the command ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, asset_cache):
    root = tmp_path_factory.mktemp("warm")
    cli("reward", *TINY_WARM, "reward_training.ensemble=2", "reward_training.noise_check=0.25",
        f"save_to={root / 'average'}", f"hydra.run.dir={root / 'run'}", cwd=root)
    return root


def test_the_ensemble_command_writes_members_average_and_metrics(ensemble_run):
    metrics = json.loads((ensemble_run / "run" / "metrics.json").read_text())
    figures = {"val_pair_accuracy", "sentences_accuracy"}
    assert metrics["ensemble"] == 2 and len(metrics["members"]) == 2
    for block in (metrics, metrics["label_noise"]):
        assert all(figures <= set(m) for m in block["members"])
        assert figures <= set(block["weight_average"]) and figures <= set(block["prediction_average"])
    noise = metrics["label_noise"]
    assert noise["fraction"] == 0.25 and noise["flipped_pairs"] == round(0.25 * metrics["train_pairs"])
    assert all(0 <= b["memorised"] <= 1 for b in [*noise["members"], noise["weight_average"],
                                                 noise["prediction_average"]])
    assert [m["probe_steps"] for m in metrics["members"]] == [1, 1]
    for folder in ("members/member_0", "members/member_1", "noise_check/member_0", "noise_check/member_1"):
        assert (ensemble_run / "run" / folder / "model.safetensors").exists(), folder
    assert not list((ensemble_run / "run" / "checkpoints").glob("*.ckpt"))  # removed once each member is saved


def test_the_saved_average_is_the_linear_merge_of_the_saved_members(ensemble_run):
    members = [load_file(ensemble_run / "run" / "members" / f"member_{k}" / "model.safetensors") for k in (0, 1)]
    average = load_file(ensemble_run / "average" / "model.safetensors")
    merged = linear(members[0], members, lam=None)  # lam=None: theta_init does not enter the uniform mean
    assert set(average) == set(merged)
    assert all(torch.equal(average[k], merged[k]) for k in merged)


def test_members_with_different_seeds_differ(ensemble_run):
    metrics = json.loads((ensemble_run / "run" / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [0, 1000]
    a, b = (load_file(ensemble_run / "run" / "members" / f"member_{k}" / "model.safetensors") for k in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_one_member_is_the_single_reward_model_as_before(tiny_models, tmp_path):
    """ensemble=1 (the default) trains what `reward` trained before WARM, bit for bit: the tiny reward model of
    the session (built by the default path, or given by WARP_LIGHTNING_TEST_MODELS)."""
    cli("reward", *TINY_REWARD, "reward_training.ensemble=1", f"save_to={tmp_path / 'model'}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    built = load_file(tiny_models / "models" / "reward_minilm_rt" / "model.safetensors")
    again = load_file(tmp_path / "model" / "model.safetensors")
    assert set(built) == set(again) and all(torch.equal(built[k], again[k]) for k in built)
    assert not (tmp_path / "run" / "members").exists()
