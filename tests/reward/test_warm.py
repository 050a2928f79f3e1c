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
    steps, stop = warm.linear_probe(cfg, training.WARM_STAGE, model, tokenizer, train_pairs, val_pairs, tmp_path, "m")
    assert steps == 2 and (tmp_path / "checkpoints" / "m_probe.ckpt").exists()  # kept until the probed model is saved
    stop.done()
    assert all(torch.equal(encoder[k], v) for k, v in model.base_model.state_dict().items())
    assert any(not torch.equal(head[k], model.state_dict()[k]) for k in head)
    assert all(p.requires_grad for p in model.parameters())  # fine-tuning then trains everything
    assert not (tmp_path / "checkpoints" / "m_probe.ckpt").exists()


class RecordingStage:
    """A Stage whose `fit` records the weights each fit starts from and then moves every weight by its call's
    number (as training would, differently per member); no data is read."""

    def __init__(self):
        self.starts: dict[str, dict] = {}

    def fit(self, cfg, model, tokenizer, train_pairs, val_pairs, out_dir, stop, name):
        self.starts[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * len(self.starts))

        class Done:
            global_step = 3

        return Done()

    def stage(self) -> warm.Stage:
        return warm.Stage(fit=self.fit, steps=lambda tcfg, n: 10, center=lambda *a: 0.0, evaluate=None,
                          pair_accuracy=None)


class NoTokenizer:
    def save_pretrained(self, path):
        pass


def test_every_member_fine_tunes_from_the_one_shared_probed_model(tmp_path):
    """WARM as the paper trains it: one linear probe, then every member starts from that probed model (not each
    from its own probe), with its own seed, learning rate and dropout."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    theta_init = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=16, num_labels=1))
    cfg = composed("reward_training.ensemble=3", "reward_training.probe_steps=2",
                   "reward_training.ensemble_lrs=[1e-5,4e-5,1e-4]", "reward_training.ensemble_dropouts=[0.05,0.1]")
    recorder = RecordingStage()
    from datasets import Dataset

    texts = Dataset.from_dict({"text": ["a", "b"]})
    members, probed = warm.train_ensemble(cfg, recorder.stage(), theta_init, NoTokenizer(), texts, [0] * 4, None,
                                          tmp_path / "members", tmp_path)
    assert probed == 3 and list(recorder.starts) == ["members_probed_probe", *(f"members_member_{k}" for k in range(3))]
    probed_model = warm.AutoModelForSequenceClassification.from_pretrained(tmp_path / "members" / "probed")
    probed_state = probed_model.state_dict()
    head = [k for k in probed_state if not k.startswith("bert.")]
    assert any(not torch.equal(probed_state[k], theta_init.state_dict()[k]) for k in head)  # the probe moved the head
    for k in range(3):  # each member's fit starts from the probed model, head included
        start = recorder.starts[f"members_member_{k}"]
        assert all(torch.equal(start[key], probed_state[key]) for key in head)
        assert all(torch.equal(start[key], probed_state[key]) for key in probed_state if key in start)
    assert [m["lr"] for m in members] == [1e-5, 4e-5, 1e-4] and [m["dropout"] for m in members] == [0.05, 0.1, 0.05]
    assert all(not torch.equal(members[0]["model"].state_dict()[k], members[1]["model"].state_dict()[k]) for k in head)


def test_saved_members_are_read_back_with_their_figures_and_refused_under_another_config(tmp_path):
    """An interrupted ensemble run again reads back the members it saved (with their steps and offsets, as an
    uninterrupted run reports them); run again with another config, it refuses them rather than average members of
    two configs."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from warp_lightning import UserError

    torch.manual_seed(0)
    theta_init = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=16, num_labels=1))
    args = ("reward_training.ensemble=2", "reward_training.probe_steps=2")
    texts = Dataset.from_dict({"text": ["a", "b"]})

    def train(cfg):
        return warm.train_ensemble(cfg, RecordingStage().stage(), theta_init, NoTokenizer(), texts, [0] * 4, None,
                                   tmp_path / "members", tmp_path)

    first, probed = train(composed(*args))
    again, probed_again = train(composed(*args))  # everything saved: read back, nothing trained
    assert probed == probed_again == 3
    assert [(m["steps"], m["bias_offset"]) for m in again] == [(m["steps"], m["bias_offset"]) for m in first]
    with pytest.raises(UserError, match=r"reward_training.lr \(.*then, .* now\) differs from the run being resumed "
                                        r"in .*members/probed"):
        train(composed(*args, "reward_training.lr=0.5"))


def test_minilm_rt_warm_varies_learning_rate_and_dropout_as_the_paper():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["reward_model=minilm_rt_warm"])
    overrides = list(cfg.reward_model.build_overrides)
    assert "reward_training.ensemble=4" in overrides
    assert "reward_training.ensemble_lrs=[1.0e-5,4.0e-5,1.0e-4]" in overrides
    assert "reward_training.ensemble_dropouts=[0.05,0.1]" in overrides


# ---- the command ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, asset_cache):
    root = tmp_path_factory.mktemp("warm")
    cli("reward", *TINY_WARM, "reward_training.ensemble=2", "reward_training.noise_check=0.25",
        f"save_to={root / 'average'}", f"hydra.run.dir={root / 'run'}", cwd=root)
    return root


@pytest.mark.slow  # second tier: reads a whole `reward` command's ensemble
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
    assert metrics["probe_steps"] == 1 and all("probe_steps" not in m for m in metrics["members"])  # one probe
    for folder in ("members/probed", "members/member_0", "members/member_1", "noise_check/probed",
                   "noise_check/member_0", "noise_check/member_1"):
        assert (ensemble_run / "run" / folder / "model.safetensors").exists(), folder
    assert not list((ensemble_run / "run" / "checkpoints").glob("*.ckpt"))  # removed once each member is saved


@pytest.mark.slow  # second tier: reads a whole `reward` command's ensemble
def test_the_saved_average_is_the_mean_of_the_saved_members_centred(ensemble_run):
    """Every weight is the members' mean; the head's bias too, less the offset that centred the average as a single
    reward model is (balanced texts score 0 on average), recorded in metrics.json."""
    members = [load_file(ensemble_run / "run" / "members" / f"member_{k}" / "model.safetensors") for k in (0, 1)]
    average = load_file(ensemble_run / "average" / "model.safetensors")
    merged = linear(members[0], members, lam=None)  # lam=None: theta_init does not enter the uniform mean
    assert set(average) == set(merged)
    torch.testing.assert_close(merged["classifier.weight"], (members[0]["classifier.weight"]
                                                              + members[1]["classifier.weight"]) / 2)
    bias = [k for k in merged if k.endswith("bias") and merged[k].numel() == 1]
    assert len(bias) == 1
    assert all(torch.equal(average[k], merged[k]) for k in merged if k not in bias)
    offset = json.loads((ensemble_run / "run" / "metrics.json").read_text())["weight_average"]["bias_offset"]
    torch.testing.assert_close(average[bias[0]], merged[bias[0]] - offset)


@pytest.mark.slow  # second tier: reads a whole `reward` command's ensemble
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
