"""Bradley-Terry loss by hand, and the RL-time reward scorer."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warp_lightning import UserError
from warp_lightning.reward.rewards import ClassifierReward
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.reward.training import bradley_terry_loss, center_scores, length_ordered


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


def test_length_ordered_scores_shortest_first_and_returns_the_scores_in_the_texts_order(minilm):
    seen = []

    def scorer(texts):
        seen.extend(texts)
        return torch.tensor([float(len(t)) + 0.001 * ord(t[0]) for t in texts])

    texts = ["a rather longer text", "short", "mid length", "s", "a rather longer text!"]
    assert torch.equal(length_ordered(scorer, texts), torch.tensor([float(len(t)) + 0.001 * ord(t[0]) for t in texts]))
    assert seen == sorted(texts, key=len)
    model, tok = minilm  # a real model: the same scores as in the given order, up to float rounding
    real = RewardModel(model, tok, sigmoid=False, batch_size=2)
    assert torch.allclose(length_ordered(real, texts), real(texts), atol=1e-5)


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


# --- prompt + completion longer than max_length: the prompt is cut from the left ---------------------------------

GOOD, BAD = " a wonderful, moving film", " a dull and lifeless mess"
LONG_PROMPT = " ".join(f"word{i % 10}" for i in range(155)) + " review:"  # 156 words, far over 128 tokens


def test_a_prompt_and_completion_that_fit_encode_as_before_bit_for_bit(minilm):
    """Inputs that fit max_length get the token ids (and every other input) the tokenizer gives prompt +
    completion, as before; so do the rows that fit in a batch beside a row that is cut."""
    model, tok = minilm
    scorer = RewardModel(model, tok, sigmoid=False, max_length=32, batch_size=8)
    prompts, completions = ["the film was", "i thought it ", "", "a wonderful"], [" great", "dull", "fine", ""]
    joined = [p + c for p, c in zip(prompts, completions, strict=True)]
    before = tok(joined, padding=True, truncation=True, max_length=32, return_tensors="pt")
    after = scorer.encode(completions, prompts)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(scorer(completions, prompts), scorer(joined))
    mixed = scorer.encode([*completions, GOOD], [*prompts, LONG_PROMPT])
    old = tok([*joined, LONG_PROMPT + GOOD], padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert all(torch.equal(mixed[k][:4], old[k][:4]) for k in old)


def test_a_long_prompt_is_cut_from_the_left_so_that_the_completion_is_read(minilm):
    """reads: prompt_completion with a 156-word prompt and max_length 128: cut from the right (before), a good and
    a bad completion were the same tokens; now the prompt's first tokens go, each completion ends the input whole
    after the prompt's last tokens, and the rewards differ."""
    model, tok = minilm
    scorer = RewardModel(model, tok, sigmoid=False, max_length=128)
    before = tok([LONG_PROMPT + GOOD, LONG_PROMPT + BAD], truncation=True, max_length=128, return_tensors="pt")
    assert torch.equal(before["input_ids"][0], before["input_ids"][1])  # the silent failure
    after = scorer.encode([GOOD, BAD], [LONG_PROMPT] * 2)
    assert after["input_ids"].shape == (2, 128) and bool(after["attention_mask"].all())
    assert not torch.equal(after["input_ids"][0], after["input_ids"][1])
    for row, completion in enumerate((GOOD, BAD)):
        content = tok(LONG_PROMPT + completion, add_special_tokens=False)["input_ids"]
        assert after["input_ids"][row].tolist() == [tok.cls_token_id, *content[-126:], tok.sep_token_id]
        own = tok(completion, add_special_tokens=False)["input_ids"]
        assert after["input_ids"][row, -1 - len(own):-1].tolist() == own  # the completion's tokens, last
    scores = ClassifierReward(scorer, "prompt_completion")([LONG_PROMPT] * 2, [GOOD, BAD]).total
    assert torch.equal(scores, scorer([GOOD, BAD], [LONG_PROMPT] * 2)) and scores[0] != scores[1]


def test_a_completion_longer_than_max_length_keeps_its_first_tokens_and_no_prompt(minilm):
    model, tok = minilm
    scorer = RewardModel(model, tok, sigmoid=False, max_length=16)
    completion = " " + " ".join(["great"] * 40)
    ids = scorer.encode([completion], ["the film was"])["input_ids"][0].tolist()
    assert ids == [tok.cls_token_id, *tok(completion, add_special_tokens=False)["input_ids"][:14], tok.sep_token_id]


def test_a_slow_tokenizer_cuts_at_the_same_place_where_prompt_and_completion_meet_between_words(minilm):
    """Without offsets (a slow tokenizer) the prompt's own token count places the boundary: the same cut."""
    model, tok = minilm
    scorer = RewardModel(model, tok, sigmoid=False, max_length=64)
    full = tok([LONG_PROMPT + BAD], return_special_tokens_mask=True, return_offsets_mapping=True)
    assert scorer._kept_positions(full, 0, LONG_PROMPT, fast=False) == scorer._kept_positions(full, 0, LONG_PROMPT,
                                                                                              fast=True)


def test_a_decoder_classifier_without_a_pad_token_gets_its_eos_as_pad_token_at_load(gpt2_tokenizer, tmp_path):
    """A GPT-2 (or Llama) `ForSequenceClassification` has no pad token: without one it can pad no batch and cannot
    find the last token it scores. Loaded as a reward model, its EOS pads (tokenizer and config), and a padded
    batch scores each text as the text alone does, through both reads."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, num_labels=1)
    GPT2ForSequenceClassification(config).eval().save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    assert gpt2_tokenizer.pad_token is None and config.pad_token_id is None
    scorer = RewardModel.from_pretrained(tmp_path, sigmoid=False, batch_size=8)
    assert scorer.tokenizer.pad_token == scorer.tokenizer.eos_token == "<|endoftext|>"
    assert scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    texts, prompts = ["a wonderful film", "dull", "it was fine, i guess, in the end"], ["the film: ", "", "so "]
    batch = scorer(texts)
    assert batch.shape == (3,) and torch.isfinite(batch).all()
    assert torch.allclose(batch, torch.cat([scorer([t]) for t in texts]), atol=1e-5)
    after = ClassifierReward(scorer, "prompt_completion")(prompts, texts).total
    assert torch.allclose(after, torch.cat([scorer([p + t]) for p, t in zip(prompts, texts, strict=True)]), atol=1e-5)
