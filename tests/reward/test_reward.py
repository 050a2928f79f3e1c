"""Bradley-Terry loss by hand, and the RL-time reward scorer."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warp_lightning import UserError
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.reward.training import bradley_terry_loss, center_scores


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5) + math.log(1 / (1 + math.exp(2)))) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # only the difference matters
    assert bradley_terry_loss(chosen + 5, rejected + 5).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def minilm(asset_cache):
    from warp_lightning.data.assets import fetch

    folder = fetch("minilm", cache=asset_cache)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    return model, AutoTokenizer.from_pretrained(folder)


def test_reward_model_scores_one_float_per_text_in_batches(minilm):
    model, tok = minilm
    texts = ["a wonderful film", "dull and lifeless", "", "x " * 500, "fine"]
    raw = RewardModel(model, tok, sigmoid=False, batch_size=2)(texts)
    assert raw.shape == (5,) and raw.dtype == torch.float32
    # batching and padding do not change a text's score
    alone = torch.cat([RewardModel(model, tok, sigmoid=False)([t]) for t in texts])
    assert torch.allclose(raw, alone, atol=1e-5)
    probs = RewardModel(model, tok, sigmoid=True, batch_size=4)(texts)
    assert torch.allclose(probs, torch.sigmoid(raw), atol=1e-6)


def test_centering_makes_balanced_texts_score_zero_on_average(minilm):
    model, tok = minilm
    texts = ["a wonderful film", "dull and lifeless", "a masterpiece", "a mess"]
    before = model.classifier.bias.clone()
    center_scores(model, tok, texts, max_length=32)
    assert abs(RewardModel(model, tok, sigmoid=False)(texts).mean().item()) < 1e-5
    model.classifier.bias.data.copy_(before)


def test_a_bradley_terry_score_of_several_outputs_is_a_clear_error(asset_cache):
    from warp_lightning.data.assets import fetch

    folder = fetch("minilm", cache=asset_cache)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    with pytest.raises(UserError, match=r"score=bradley_terry needs one output per text \(num_labels=1\), this "
                                        "model has 2: use score=logit or score=probability"):
        RewardModel(model, AutoTokenizer.from_pretrained(folder))
    assert RewardModel(model, AutoTokenizer.from_pretrained(folder), score="logit", label=1)(["a film"]).shape == (1,)
