"""Prompts: the first 5-20 tokens of a text, the train/validation/test prompt splits, left-padded batches,
and the seeded stream of prompt batches a run trains on."""

from __future__ import annotations

import bisect
import collections
import functools
import hashlib
import html
import json
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from warp_lightning import UserError
from warp_lightning.data.assets import ASSETS, cache_dir
from warp_lightning.data.prompt_datasets import prompt_dataset_splits
from warp_lightning.data.texts import load_texts, normalize_text, split_indices
from warp_lightning.utils.io import atomic_write_bytes
from warp_lightning.utils.validate import check_prompt_lengths

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
    data-parallel run takes every world_size-th prompt of a batch (with all its k samples). With `columns`
    ({name: one value per prompt}), a batch is (input_ids, mask, {name: the values of its rows}): what the
    reward reads beside the completions; without, (input_ids, mask).
    """
    def __init__(self, prompts: list[list[int]], steps: int, per_step: int, seed: int, pad_id: int,
                 start: int = 0, shard: bool = False, columns: dict[str, list] | None = None):
        g = torch.Generator().manual_seed(seed)
        need, order = steps * per_step, []
        while len(order) < need:
            order += torch.randperm(len(prompts), generator=g).tolist()
        self.prompts, self.order, self.per_step, self.pad_id = prompts, order[:need], per_step, pad_id
        self.start, self.shard, self.columns = start, shard, columns

    def __len__(self) -> int:
        return len(self.order) // self.per_step

    def __getitem__(self, t: int):
        if not 0 <= t < len(self):
            raise IndexError(t)
        rows = self.order[t * self.per_step : (t + 1) * self.per_step]
        if self.shard and torch.distributed.is_initialized():  # data parallel: this process's prompts
            rows = rows[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        batch = left_pad([self.prompts[r] for r in rows], self.pad_id)
        return batch if self.columns is None else (*batch, {k: [v[r] for r in rows] for k, v in self.columns.items()})

    def __iter__(self):
        return (self[t] for t in range(self.start, len(self)))

    # Lightning treats an iterable with these two methods as resumable (no mid-epoch warning); the
    # position itself is set from the run checkpoint's step before `fit`.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# the columns of a built-in text set's prompts (every split): what travels with each prompt to the reward
TEXT_PROMPT_COLUMNS = ("prompt", "label", "source_index", "sentence_index")


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(before, after): the token ids the tokenizer puts around a text's own tokens when it adds its special tokens
    (`add_special_tokens=True`, as TRL tokenizes a standard prompt): a Llama tokenizer's BOS before, nothing for
    GPT-2's. Read from one text encoded both ways."""
    probe = "A prompt, and the words of its text."
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise UserError(f"the policy tokenizer ({type(tokenizer).__name__}) encodes a text with its special tokens into "
                    "other tokens than without them: its prompts cannot be cut to a number of tokens")


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

    Returns a `datasets.Dataset` with `prompt` (the decoded tokens), `input_ids` (the n token ids between the
    special tokens the tokenizer adds, `special_tokens`: none for GPT-2), `label`, `source_index` (the row of
    `texts`) and `sentence_index` (0: the start of the text; the held-out prompts' columns). n is drawn for every
    row from a numpy Generator seeded with `seed` (the same rows and seed give the same prompts); a text with
    fewer than n tokens gives all of them; texts that are empty or have fewer than `min_tokens` tokens are
    skipped and counted in a log line.
    """
    check_prompt_lengths(min_tokens, max_tokens)
    rng = np.random.default_rng(seed)
    raw = list(texts["text"])
    labels = list(texts["label"]) if "label" in texts.column_names else [-1] * len(raw)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=len(raw)).tolist()
    rows = [i for i, t in enumerate(raw) if isinstance(t, str) and t.strip()]
    empty = len(raw) - len(rows)
    token_ids = _first_tokens(tokenizer, [raw[i].strip() for i in rows], [lengths[i] for i in rows])
    before, after = special_tokens(tokenizer)
    columns = {"prompt": [], "input_ids": [], "label": [], "source_index": [], "sentence_index": []}
    short = 0
    for i, ids in zip(rows, token_ids, strict=True):
        if len(ids) < min_tokens:
            short += 1
            continue
        ids = ids[: lengths[i]]
        columns["prompt"].append(tokenizer.decode(ids, clean_up_tokenization_spaces=False))
        columns["input_ids"].append(before + ids + after)
        columns["label"].append(int(labels[i]))
        columns["source_index"].append(i)
        columns["sentence_index"].append(0)
    if empty or short:
        log.warning("make_prompts: %d of %d texts skipped (%d empty, %d with fewer than %d tokens)",
                    empty + short, len(raw), empty, short, min_tokens)
    return _dataset(columns)


# ---- the three prompt splits -------------------------------------------------------------------------------

SPLIT_NAMES = ("train", "validation", "test")
VALIDATION_FRACTION = 1 / 3  # of the held-out texts: validation prompts; the rest give the test prompts
HELDOUT_SEED = 20240608      # held-out prompts do not depend on a run's seed: every run is judged on the same ones
SHINGLE = 8                  # a held-out sentence sharing this many consecutive words with a seen text is dropped
_WORD = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"\n+|<br\s*/?>|(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


class PromptSplits(NamedTuple):
    """Prompts for RL (`train`), for any selection (`validation`) and for final figures only (`test`)."""
    train: object
    validation: object
    test: object

    def get(self, split: str):
        if split not in SPLIT_NAMES:
            raise UserError(f"eval.split={split!r} is invalid: choose one of {', '.join(SPLIT_NAMES)}")
        if not len(getattr(self, split)):
            raise UserError(f"the {split} split holds no prompt: give more texts, or change "
                            "data.validation_fraction (the held-out texts' share of validation prompts)")
        return getattr(self, split)


def words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of a text, accents and HTML entities removed: the unit of the
    seen-text check (Pang & Lee's tokenised "it 's" and a critic's "it's" give the same words)."""
    text = html.unescape(text).casefold()
    if not text.isascii():
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return _WORD.findall(text)


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: its lines (Pang & Lee reviews hold one sentence per line), each also cut after
    . ! ? followed by a capitalised word (raw text such as IMDB's); HTML line breaks count as line ends."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class SeenText:
    """What a held-out sentence must not share with the texts a model trained on: any run of `SHINGLE`
    consecutive words, or, for a sentence shorter than that, the whole sentence as one of their sentences."""

    def __init__(self, sentences: Sequence[str]):
        self.words = [tuple(words(s)) for s in sentences]
        self.shingles = {w[i : i + SHINGLE] for w in self.words for i in range(len(w) - SHINGLE + 1)}
        self.short = {w for w in self.words if len(w) < SHINGLE}
        self.seen = [False] * len(sentences)

    def scan(self, texts: Sequence[str]) -> None:
        """Mark the sentences found in `texts` (one pass over their words)."""
        hits: set = set()
        for text in texts:
            sentences = [tuple(words(s)) for s in split_sentences(text)]
            w = tuple(x for s in sentences for x in s)
            hits.update(g for g in (w[i : i + SHINGLE] for i in range(len(w) - SHINGLE + 1)) if g in self.shingles)
            hits.update(s for s in sentences if s in self.short)
        for i, w in enumerate(self.words):
            if not self.seen[i]:
                self.seen[i] = (w in hits) if len(w) < SHINGLE else any(
                    w[j : j + SHINGLE] in hits for j in range(len(w) - SHINGLE + 1))


def _heldout_rows(texts: list[str], labels: list[int], heldout: str, per_text: int, tokenizer, min_tokens: int,
                  max_tokens: int, seen_texts: Sequence[str], train_texts: Sequence[str]) -> tuple[dict, dict]:
    """Prompt columns cut from held-out texts (the start of each text, or of up to `per_text` of its sentences
    picked at random), and the counts of what was dropped and why."""
    rng = np.random.default_rng(HELDOUT_SEED)
    candidates = []  # (text index, sentence index, where the prompt starts, the sentence checked against seen texts)
    for i, text in enumerate(texts):
        sentences = split_sentences(text) or [text.strip()]
        if heldout == "first":
            candidates.append((i, 0, text.strip(), sentences[0]))
        else:
            candidates += [(i, j, sentences[j], sentences[j]) for j in rng.permutation(len(sentences)).tolist()]
    seen = SeenText([c[3] for c in candidates])
    seen.scan(seen_texts)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=len(candidates)).tolist()
    ids = _first_tokens(tokenizer, [c[2] for c in candidates], lengths)
    before, after = special_tokens(tokenizer)
    # a held-out prompt equal to a train prompt (the start of a train text) for some prompt length is dropped
    train_starts = sorted(normalize_text(t[: 8 * max_tokens + 64]) for t in train_texts)
    columns = {"prompt": [], "input_ids": [], "label": [], "source_index": [], "sentence_index": []}
    taken, keys = collections.Counter(), set()
    dropped = collections.Counter()
    for k, (i, j, _, _) in enumerate(candidates):
        if taken[i] >= per_text:
            continue
        if len(ids[k]) < min_tokens:
            dropped[f"with fewer than {min_tokens} tokens"] += 1
            continue
        if seen.seen[k]:
            dropped[f"sentence shares {SHINGLE} words with a seen text"] += 1
            continue
        tok = ids[k][: lengths[k]]
        prompt = tokenizer.decode(tok, clean_up_tokenization_spaces=False)
        key = normalize_text(prompt)
        at = bisect.bisect_left(train_starts, key)
        if at < len(train_starts) and train_starts[at].startswith(key):
            dropped["equal to the start of a train text"] += 1
            continue
        if key in keys:
            dropped["repeated prompt"] += 1
            continue
        keys.add(key)
        taken[i] += 1
        for name, value in (("prompt", prompt), ("input_ids", before + tok + after), ("label", int(labels[i])),
                            ("source_index", i), ("sentence_index", j)):
            columns[name].append(value)
    return columns, dict(dropped)


def _dataset(columns: dict):
    from datasets import Dataset, Features, List, Value

    features = Features({"prompt": Value("string"), "input_ids": List(Value("int64")), "label": Value("int64"),
                         "source_index": Value("int64"), "sentence_index": Value("int64")})
    return Dataset.from_dict(columns, features=features)


def _heldout_splits(name: str, train_texts, tokenizer, cache, path, *, min_tokens: int, max_tokens: int,
                    heldout: str, per_text: int, validation_fraction: float,
                    exclude_seen: list[str]) -> tuple[dict, dict, dict]:
    """The validation and test prompt columns of `prompt_splits`, and the counts of what was dropped and why."""
    held = load_texts(name, "test", cache, path)
    texts, labels = list(held["text"]), list(held["label"])
    seen_texts = [t for s in exclude_seen
                  for t in (train_texts if s == "train" else load_texts(s, None, cache))["text"]]
    columns, dropped = _heldout_rows(texts, labels, heldout, per_text, tokenizer, min_tokens, max_tokens,
                                     seen_texts, list(train_texts["text"]))
    test_rows, validation_rows = split_indices(labels, validation_fraction, HELDOUT_SEED)
    in_validation = set(validation_rows)
    parts = {"validation": [k for k, i in enumerate(columns["source_index"]) if i in in_validation]}
    validation_keys = {normalize_text(columns["prompt"][k]) for k in parts["validation"]}
    parts["test"] = [k for k, i in enumerate(columns["source_index"]) if i not in in_validation
                     and normalize_text(columns["prompt"][k]) not in validation_keys]
    dropped_test = sum(i not in in_validation for i in columns["source_index"]) - len(parts["test"])
    if dropped_test:
        dropped["test prompt equal to a validation prompt"] = dropped_test
    validation, test = ({c: [v[k] for k in parts[split]] for c, v in columns.items()}
                        for split in ("validation", "test"))
    return validation, test, dropped


# ---- the held-out prompts' disk cache ----------------------------------------------------------------------

PROMPT_CACHE_ENV = "WARP_LIGHTNING_PROMPT_CACHE"  # "0" turns the cache of held-out prompts off


def prompt_cache_dir(cache: str | Path | None) -> Path:
    """The folder of cached held-out prompts: `<assets cache>/prompts` (`cache`, else `assets.cache_dir()`)."""
    return (Path(str(cache)).expanduser() if cache else cache_dir()) / "prompts"


@functools.cache
def _code_digest() -> str:
    """sha256 of the source of this module and of data/texts.py: an edit to either invalidates the cache."""
    here = Path(__file__)
    return hashlib.sha256(here.read_bytes() + here.with_name("texts.py").read_bytes()).hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    """sha256 of what a tokenizer encodes and decodes with: its whole definition (vocabulary, merges, normaliser,
    pre-tokeniser) where it is a fast one, else its vocabulary; and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(json.dumps([spec, tokenizer.special_tokens_map], sort_keys=True).encode()).hexdigest()


def _files(path) -> list:
    """[resolved path, size, mtime_ns] of the file `path`, or of every file under the folder `path`."""
    root = Path(path).expanduser().resolve()
    found = sorted(root.rglob("*")) if root.is_dir() else [root]
    return [[str(p), s.st_size, s.st_mtime_ns] for p in found if p.is_file() for s in [p.stat()]]


def _heldout_cache_entry(settings: dict, tokenizer, cache, path) -> tuple[Path, dict] | tuple[None, None]:
    """The cache file and the key (everything the held-out prompts depend on) of `settings`; (None, None) when
    the cache is off or cannot tell when its entry is stale (the hub's `imdb`, online)."""
    online = "imdb" in settings["exclude_seen"] or (settings["name"] == "imdb" and not path)
    if os.environ.get(PROMPT_CACHE_ENV, "1").strip().lower() in ("0", "false", "no", "off") or online:
        return None, None
    from importlib.metadata import version

    # the special tokens it adds around a prompt too: a slow tokenizer's add_bos_token is not in its vocabulary
    key = {"settings": settings, "tokenizer": [type(tokenizer).__name__, _tokenizer_digest(tokenizer),
                                               list(special_tokens(tokenizer))],
           # the user's texts (stat before they are read: an edit meanwhile misses next time); fetched assets
           # never change in place, their checksums name their content
           "files": _files(path) if path and settings["name"] in ("file", "imdb") else None,
           "assets": {a: ASSETS[a].sha256 for a in ("pang_lee", "rt_snippets")},  # what `load_texts` reads
           "code": _code_digest(), "libraries": {m: version(m) for m in ("numpy", "tokenizers", "transformers")}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return prompt_cache_dir(cache) / f"heldout-{key['code'][:8]}-{digest[:16]}.json", key


def _read_heldout(file: Path, key: dict):
    """The (validation, test, dropped) saved in `file` for `key`, or None: no such file, another key, or a file
    that cannot be read (logged; it is computed and written again)."""
    try:
        saved = json.loads(file.read_bytes())
        if saved["key"] != key:
            return None
        return _dataset(saved["validation"]), _dataset(saved["test"]), dict(saved["dropped"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.warning("ignoring the unreadable held-out prompt cache %s (%s: %s)", file, type(err).__name__, err)
        return None


def _write_heldout(file: Path, key: dict, validation: dict, test: dict, dropped: dict) -> None:
    """Write the entry, and remove those of another version of the code (named by their code digest: stale)."""
    data = {"key": key, "validation": validation, "test": test, "dropped": dropped}
    try:
        atomic_write_bytes(file, json.dumps(data, separators=(",", ":")).encode())
        for old in file.parent.glob("heldout-*.json"):
            if old.name.split("-")[1] != key["code"][:8]:
                old.unlink(missing_ok=True)
    except OSError as err:  # a read-only or full cache folder: the run goes on without the cache
        log.warning("could not write the held-out prompt cache %s (%s)", file, err)


def prompt_splits(name: str, tokenizer, min_tokens: int, max_tokens: int, seed: int,
                  cache: str | Path | None = None, path: str | Path | None = None, *, heldout: str = "first",
                  per_text: int = 1, validation_fraction: float = VALIDATION_FRACTION,
                  exclude_seen: Sequence[str] = ()) -> PromptSplits:
    """The train, validation and test prompts of text set `name`.

    - train: the first n tokens of each train text (`make_prompts`, lengths drawn with `seed`), between the
      special tokens the tokenizer adds (as every split's: a Llama tokenizer's BOS; none for GPT-2);
    - validation / test: the held-out texts (`load_texts(name, "test")`) divided, stratified by label, into
      `validation_fraction` and the rest (the same division for every run); `heldout="first"` cuts each one's
      first tokens, `heldout="sentences"` up to `per_text` of its sentences (picked at random), each cut to its
      first n tokens. Held-out prompts do not depend on `seed`.

    A held-out sentence that shares `SHINGLE` consecutive words with a text of the sets in `exclude_seen` (what
    the SFT policy and the reward model trained on: text set names, every row of each, or "train" for the train
    texts of `name`), a held-out prompt equal to the start of a train text (a train prompt for some length), and a
    repeated prompt are dropped; validation and test prompts come from different texts, and a test prompt equal to
    a validation prompt is dropped too. Each count is logged.

    The held-out prompts (seconds of work: the seen-text check) are computed once and kept in
    `<cache>/prompts/heldout-<code>-<key>.json` (`prompt_cache_dir`); the key covers the arguments, the
    tokenizer's definition and the special tokens it adds around a prompt (`special_tokens`), the size and
    modification time of the user's files (`file`, a local `imdb`), the assets' checksums and the source of this
    module and of data/texts.py, so a later call reads the same prompts and counts back. Writing an entry removes
    those of another version of the code. The hub's `imdb` is not cached; `WARP_LIGHTNING_PROMPT_CACHE=0` turns
    the cache off.
    """
    if heldout not in ("first", "sentences"):
        raise UserError(f"data.heldout_prompts={heldout!r} is invalid: choose first or sentences")
    if not (isinstance(per_text, int) and per_text >= 1):
        raise UserError(f"data.prompts_per_text={per_text!r} is invalid: must be an integer >= 1")
    if not 0 < validation_fraction < 1:
        raise UserError(f"data.validation_fraction={validation_fraction!r} is invalid: must be in (0, 1)")
    check_prompt_lengths(min_tokens, max_tokens)
    settings = {"min_tokens": int(min_tokens), "max_tokens": int(max_tokens), "heldout": heldout,
                "per_text": per_text, "validation_fraction": float(validation_fraction),
                "exclude_seen": [str(s) for s in exclude_seen]}
    file, key = _heldout_cache_entry({"name": name, **settings}, tokenizer, cache, path)
    train_texts = load_texts(name, "train", cache, path)
    train = make_prompts(train_texts, tokenizer, min_tokens, max_tokens, seed)
    held = _read_heldout(file, key) if file else None
    if held is not None:
        log.info("%s held-out prompts: read from the cache %s (computed once for these settings)", name, file)
    else:
        columns = _heldout_splits(name, train_texts, tokenizer, cache, path, **settings)
        if file:
            _write_heldout(file, key, *columns)
        held = _dataset(columns[0]), _dataset(columns[1]), columns[2]
    validation, test, dropped = held
    if dropped:
        log.info("%s held-out prompts dropped: %s", name, ", ".join(f"{n} {why}" for why, n in dropped.items()))
    log.info("%s prompts of %d-%d tokens: %d train, %d validation (from %d texts), %d test (from %d texts)", name,
             min_tokens, max_tokens, len(train), len(validation), len(set(validation["source_index"])),
             len(test), len(set(test["source_index"])))
    return PromptSplits(train, validation, test)


def splits_for(data, tokenizer, seed: int, cache: str | Path | None = None) -> PromptSplits:
    """`prompt_splits` of a `data` config (conf/data/*.yaml); data=prompts: `prompt_dataset_splits`."""
    if data.name == "prompts":
        return PromptSplits(*prompt_dataset_splits(data, tokenizer, cache))
    return prompt_splits(data.name, tokenizer, data.min_prompt_tokens, data.max_prompt_tokens, seed, cache=cache,
                         path=data.get("path"), heldout=data.get("heldout_prompts", "first"),
                         per_text=data.get("prompts_per_text", 1),
                         validation_fraction=float(data.get("validation_fraction", VALIDATION_FRACTION)),
                         exclude_seen=list(data.get("exclude_seen") or ()))
