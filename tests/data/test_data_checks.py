"""The prompt-length rule is written once (data/checks.py): the config check, `prompt_splits` and `make_prompts`
refuse the same lengths with the same line."""

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.data.checks import check_data
from warp_lightning.data.prompts import make_prompts, prompt_splits
from warp_lightning.utils.validate import check_prompt_lengths


@pytest.mark.parametrize(("low", "high"), [(1, 1), (5, 20), (20, 20)])
def test_lengths_from_1_to_max_pass(low, high):
    check_prompt_lengths(low, high)


@pytest.mark.parametrize(("low", "high", "line"), [
    (0, 5, "data.min_prompt_tokens=0 is invalid: must be between 1 and data.max_prompt_tokens=5"),
    (6, 5, "data.min_prompt_tokens=6 is invalid: must be between 1 and data.max_prompt_tokens=5"),
    (1.5, 5, "data.min_prompt_tokens=1.5 is invalid: must be an integer"),
    (5, True, "data.max_prompt_tokens=True is invalid: must be an integer"),
])
def test_every_caller_refuses_bad_lengths_with_the_same_line(low, high, line):
    config = OmegaConf.create({"data": {"name": "reviews", "min_prompt_tokens": low, "max_prompt_tokens": high}})
    texts = Dataset.from_dict({"text": ["one two three"], "label": [1]})
    for call in (lambda: check_prompt_lengths(low, high), lambda: check_data(config),
                 lambda: prompt_splits("reviews", None, low, high, seed=0),
                 lambda: make_prompts(texts, None, low, high)):
        with pytest.raises(UserError) as err:
            call()
        assert str(err.value) == line
