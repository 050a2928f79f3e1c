"""Rewards written as plain Python functions (`kind: function` in conf/reward_model/): examples of the interface,
`fn(completions=..., prompts=..., <dataset columns>=...) -> one float per completion`, usable as they are, e.g.
`reward_model.function=warp_lightning.reward.rules:length_rule`. As TRL passes them, a completion is a string, or,
after a conversational prompt, a list of one assistant message (`[{"role": "assistant", "content": TEXT}]`); these
rules read both (`completion_text`)."""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def completion_text(completion) -> str:
    """The text of a completion: the string itself, or the content of its messages (a conversational one)."""
    return completion if isinstance(completion, str) else "".join(str(m.get("content") or "") for m in completion)


def length_rule(completions: list, target_words: int = 12) -> list[float]:
    """1 at `target_words` words, falling linearly to 0 at none and at twice as many: a length target."""
    return [max(0.0, 1.0 - abs(len(completion_text(c).split()) - target_words) / target_words) for c in completions]


def sentence_rule(completions: list) -> list[float]:
    """1 for one finished sentence (one end mark, at the end), else 0: a format rule."""
    texts = [completion_text(c).strip() for c in completions]
    return [float(bool(SENTENCE_END.search(t)) and len(re.findall(r"[.!?]+", t)) == 1) for t in texts]
