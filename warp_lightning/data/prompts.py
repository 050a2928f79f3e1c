"""Prompts: the first 5-20 tokens of a review, the train/test prompt splits, left-padded batches, and the
seeded stream of prompt batches a run trains on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from warp_lightning.data.texts import load_texts

log = logging.getLogger(__name__)



def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


class PromptBatches(torch.utils.data.Dataset):
    """T batches of P prompts in a seeded order (whole passes over the prompts, reshuffled per pass).

    Iterating starts at batch `start` (the prompt stream position of a resumed run); the length stays T so
    that Lightning's restored loop progress lines up with it. With `shard`, each process of a
    data-parallel run takes every world_size-th prompt of a batch (with all its k samples).
    """
    def __init__(self, prompts: list[list[int]], steps: int, per_step: int, seed: int, pad_id: int,
                 start: int = 0, shard: bool = False):
        g = torch.Generator().manual_seed(seed)
        need, order = steps * per_step, []
        while len(order) < need:
            order += torch.randperm(len(prompts), generator=g).tolist()
        self.prompts, self.order, self.per_step, self.pad_id = prompts, order[:need], per_step, pad_id
        self.start, self.shard = start, shard

    def __len__(self) -> int:
        return len(self.order) // self.per_step

    def __getitem__(self, t: int):
        if not 0 <= t < len(self):
            raise IndexError(t)
        rows = self.order[t * self.per_step : (t + 1) * self.per_step]
        if self.shard and torch.distributed.is_initialized():  # data parallel: this process's prompts
            rows = rows[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        return left_pad([self.prompts[r] for r in rows], self.pad_id)

    def __iter__(self):
        return (self[t] for t in range(self.start, len(self)))

    # Lightning treats an iterable with these two methods as resumable (no mid-epoch warning); the
    # position itself is set from the run checkpoint's step before `fit`.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _prefix(text: str, chars: int) -> tuple[str, bool]:
    """The text cut before a whitespace run at or before `chars` (so that no word is split); whole?"""
    if len(text) <= chars:
        return text, True
    cut = chars
    while cut > 0 and not (text[cut].isspace() and not text[cut - 1].isspace()):
        cut -= 1
    return (text[:cut], False) if cut > 0 else (text, True)


def _first_tokens(tokenizer, texts: list[str], need: Sequence[int]) -> list[list[int]]:
    """Token ids of the start of each text, at least `need[i]` of them where the text has that many.

    Only a prefix of each text is tokenised, cut between words so that its tokens are those of the full
    text; the prefix doubles until it holds enough tokens.
    """
    out: list[list[int]] = [[] for _ in texts]
    pending = list(range(len(texts)))
    chars = 8 * max(need, default=1) + 64
    while pending:
        prefixes = [_prefix(texts[i], chars) for i in pending]
        ids = tokenizer([p for p, _ in prefixes], add_special_tokens=False)["input_ids"]
        still = []
        for i, (_, whole), tok in zip(pending, prefixes, ids, strict=True):
            out[i] = list(tok)
            if not whole and len(tok) < need[i] + 1:
                still.append(i)
        pending, chars = still, chars * 2
    return out


def make_prompts(texts, tokenizer, min_tokens: int = 5, max_tokens: int = 20, seed: int = 0):
    """Prompts made of the first n tokens of each text, n uniform in [min_tokens, max_tokens].

    Returns a `datasets.Dataset` with `prompt` (the decoded tokens), `input_ids` (n token ids), `label`
    and `source_index` (the row of `texts`). n is drawn for every row from a numpy Generator seeded with
    `seed` (the same rows and seed give the same prompts); a text with fewer than n tokens gives all of
    them; texts that are empty or have fewer than `min_tokens` tokens are skipped and counted in a log line.
    """
    from datasets import Dataset, Features, List, Value

    if min_tokens < 1:
        raise ValueError(f"min_tokens must be at least 1, not {min_tokens}")
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})")
    rng = np.random.default_rng(seed)
    raw = list(texts["text"])
    labels = list(texts["label"]) if "label" in texts.column_names else [-1] * len(raw)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=len(raw)).tolist()
    rows = [i for i, t in enumerate(raw) if isinstance(t, str) and t.strip()]
    empty = len(raw) - len(rows)
    token_ids = _first_tokens(tokenizer, [raw[i].strip() for i in rows], [lengths[i] for i in rows])
    columns = {"prompt": [], "input_ids": [], "label": [], "source_index": []}
    short = 0
    for i, ids in zip(rows, token_ids, strict=True):
        if len(ids) < min_tokens:
            short += 1
            continue
        ids = ids[: lengths[i]]
        columns["prompt"].append(tokenizer.decode(ids, clean_up_tokenization_spaces=False))
        columns["input_ids"].append(ids)
        columns["label"].append(int(labels[i]))
        columns["source_index"].append(i)
    if empty or short:
        log.warning("make_prompts: %d of %d texts skipped (%d empty, %d with fewer than %d tokens)",
                    empty + short, len(raw), empty, short, min_tokens)
    features = Features({"prompt": Value("string"), "input_ids": List(Value("int64")),
                         "label": Value("int64"), "source_index": Value("int64")})
    return Dataset.from_dict(columns, features=features)


def prompt_splits(name: str, tokenizer, min_tokens: int, max_tokens: int, seed: int,
                  cache: str | Path | None = None, path: str | Path | None = None):
    """(train prompts, test prompts) from the train and test texts of `name` (disjoint texts)."""
    train = make_prompts(load_texts(name, "train", cache, path), tokenizer, min_tokens, max_tokens, seed)
    test = make_prompts(load_texts(name, "test", cache, path), tokenizer, min_tokens, max_tokens, seed)
    log.info("%s prompts of %d-%d tokens: %d train, %d test", name, min_tokens, max_tokens, len(train), len(test))
    return train, test
