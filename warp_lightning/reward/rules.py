"""Rewards written as plain Python functions (`kind: function` in conf/reward_model/): examples of the interface,
`fn(completions=..., prompts=..., <dataset columns>=...) -> one float per completion`, usable as they are, e.g.
`reward_model.function=warp_lightning.reward.rules:length_rule`."""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def length_rule(completions: list[str], target_words: int = 12) -> list[float]:
    """1 at `target_words` words, falling linearly to 0 at none and at twice as many: a length target."""
    return [max(0.0, 1.0 - abs(len(c.split()) - target_words) / target_words) for c in completions]


def sentence_rule(completions: list[str]) -> list[float]:
    """1 for one finished sentence (one end mark, at the end), else 0: a format rule."""
    return [float(bool(SENTENCE_END.search(c.strip())) and len(re.findall(r"[.!?]+", c.strip())) == 1)
            for c in completions]
