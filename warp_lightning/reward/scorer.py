"""The sequence-classifier scorer, the reward model kind of `conf/reward_model/` (rewards.py wraps it): decoded
texts in, one float per text out (the Bradley-Terry output, a label's logit or its probability)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warp_lightning import UserError
from warp_lightning.data import assets

# what one text's score is: the single output of a Bradley-Terry model (through a sigmoid unless sigmoid=False),
# the logit of a label, or its probability (softmax over the labels; sigmoid of a single output)
SCORES = ("bradley_terry", "logit", "probability")


def resolve_pretrained(name: str, cache: str | Path | None = None) -> str:
    """An asset name of ASSETS.md (fetched on first use), a local folder, or a hub name."""
    if name in assets.ASSETS:
        return str(assets.fetch(name, cache=Path(cache) if cache else None))
    return name


def resolve_label(label: int | str, id2label: dict, key: str = "reward_model") -> int:
    """The output index of `label`: an index, or a name of the model's `id2label` (one line listing them if not)."""
    names = {int(i): str(n) for i, n in id2label.items()}
    listed = ", ".join(f"{i} {n}" for i, n in sorted(names.items()))
    if isinstance(label, int) and not isinstance(label, bool):
        if label in names:
            return label
    elif isinstance(label, str):
        index = {n: i for i, n in names.items()}.get(label)
        if index is not None:
            return index
    raise UserError(f"{key}.label={label!r} is invalid: the model's labels are {listed}; pass an index or a name")


def check_score(score: str, num_labels: int, key: str = "reward_model") -> None:
    if score not in SCORES:
        raise UserError(f"{key}.score={score!r} is invalid: choose {', '.join(SCORES)}")
    if score == "bradley_terry" and num_labels != 1:
        raise UserError(f"{key}.score=bradley_terry needs one output per text (num_labels=1), this model has "
                        f"{num_labels}: use score=logit or score=probability with the label to score")


def give_pad_token(model, tokenizer) -> None:
    """A decoder (causal-LM) sequence classifier without a pad token (a Llama or GPT-2 `ForSequenceClassification`)
    can pad no batch, and finds the token it scores, the last one that is not padding, by
    `model.config.pad_token_id`: its tokenizer's EOS becomes its pad token, and the config gets the tokenizer's pad
    id (the one that pads its batches), as TRL's GRPOTrainer prepares a reward model. An encoder's pad token (BERT,
    MiniLM) is the same on both already: nothing changes."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


class RewardModel:
    """Scores decoded texts with its own tokenizer; one float per text.

    `score`: `bradley_terry` (the single output, `sigmoid` applied or not), `logit` or `probability` of `label`.
    """

    def __init__(self, model, tokenizer, sigmoid: bool = True, max_length: int = 128, batch_size: int = 64,
                 label: int | str = 0, score: str = "bradley_terry", key: str = "reward_model"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.sigmoid, self.max_length, self.batch_size = sigmoid, max_length, batch_size
        check_score(score, model.config.num_labels, key)
        self.label, self.score = resolve_label(label, model.config.id2label, key), score

    @classmethod
    def from_pretrained(cls, name_or_path, device: str | torch.device = "cpu", key: str = "reward_model",
                        **kwargs) -> RewardModel:
        if not Path(str(name_or_path)).exists() and str(name_or_path).startswith(("/", ".", "~")):
            raise UserError(f"{key}.name_or_path: {name_or_path} does not exist; train it with "
                            "`python -m warp_lightning reward` or point to a folder")
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path))
        give_pad_token(model, tokenizer)
        return cls(model.to(device).requires_grad_(False), tokenizer, key=key, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str], prompts: list[str] | None = None):
        """The padded model inputs of `texts`, each read after its prompt when `prompts` are given.

        A text that fits `max_length` with its prompt is encoded as the tokenizer encodes `prompt + text` (with
        its own special tokens, truncated from the right). One that does not keeps the text whole and cuts the
        prompt from the LEFT, since the text is what is judged and the end of the prompt, just before it, is the
        context that matters most; if the text alone exceeds `max_length`, no prompt token is kept and the text
        is cut from the right, keeping as much of it as fits. The cut is taken in the tokens of `prompt + text`
        (a token across the boundary belongs to the text): a fast tokenizer's offsets place the boundary; a slow
        one counts the prompt's own tokens, which may differ by one where prompt and text join inside a word.
        """
        if prompts is None:
            return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        joined = [p + t for p, t in zip(prompts, texts, strict=True)]
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        full = self.tokenizer(joined, return_special_tokens_mask=True, return_offsets_mapping=fast, verbose=False)
        if all(len(ids) <= self.max_length for ids in full["input_ids"]):  # as ever: nothing to cut
            return self.tokenizer(joined, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        names = [n for n in self.tokenizer.model_input_names if n in full]
        rows = []
        for r, ids in enumerate(full["input_ids"]):
            kept = self._kept_positions(full, r, prompts[r], fast) if len(ids) > self.max_length else range(len(ids))
            rows.append({n: [full[n][r][j] for j in kept] for n in names})
        return self.tokenizer.pad(rows, padding=True, return_tensors="pt")

    def _kept_positions(self, full, r: int, prompt: str, fast: bool) -> list[int]:
        """The positions of row `r` of the untruncated `full` encoding that fit `max_length`: its special tokens,
        then as many of the text's tokens as fit (the first ones), then the prompt's last tokens in what is left."""
        special = full["special_tokens_mask"][r]
        content = [j for j, s in enumerate(special) if not s]
        if fast:  # a token ending after the prompt's last character holds some of the text
            offsets = full["offset_mapping"][r]
            n_prompt = sum(offsets[j][1] <= len(prompt) for j in content)
        else:
            n_prompt = min(len(self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]),
                           len(content))
        prompt_part, text_part = content[:n_prompt], content[n_prompt:]
        room = max(self.max_length - (len(special) - len(content)), 0)
        if len(text_part) >= room:
            chosen = text_part[:room]
        else:
            chosen = prompt_part[len(prompt_part) - (room - len(text_part)):] + text_part
        return sorted([j for j, s in enumerate(special) if s] + chosen)

    @torch.no_grad()
    def __call__(self, texts: list[str], prompts: list[str] | None = None) -> torch.Tensor:
        """One score per text; with `prompts`, each text is read after its prompt (`encode`: the prompt is cut
        from the left when the two exceed `max_length`)."""
        scores = []
        for start in range(0, len(texts), self.batch_size):
            end = start + self.batch_size
            batch = self.encode(texts[start:end], None if prompts is None else prompts[start:end]).to(self.device)
            logits = self.model(**batch).logits.float()
            if self.score == "probability" and logits.shape[-1] > 1:
                scores.append(torch.softmax(logits, -1)[:, self.label])
            else:
                scores.append(logits[:, self.label])
        out = torch.cat(scores).cpu()
        single = self.score == "probability" and self.model.config.num_labels == 1
        return torch.sigmoid(out) if single or (self.score == "bradley_terry" and self.sigmoid) else out
