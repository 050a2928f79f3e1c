"""Prompt datasets (`data=prompts data.path=FILE_OR_NAME`): a prompt column of strings or chat messages, read
from JSONL, CSV or Parquet files, a `datasets` folder, a built-in set or a dataset name (`datasets.load_dataset`),
rendered through the policy tokenizer's chat template and divided into train / validation / test.

Every split is a `datasets.Dataset` that keeps all the columns of its source rows, plus four:

- `prompt_text`: the text the policy continues: the messages rendered by
  `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`, or the string itself;
- `input_ids`: a rendered template tokenized with `add_special_tokens=False` (the template writes its own BOS; a
  second would change the prompt), a plain string with the special tokens the tokenizer adds
  (`add_special_tokens=True`: a Llama tokenizer's BOS; GPT-2's adds none), as TRL tokenizes prompts;
- `source_index`: the row of the source split it came from (the dataset's own split, or its only split when
  the division is seeded);
- `prompt_messages` (`MESSAGES`): the prompt's chat messages where it is a conversation, else None: what a
  Python reward function receives as its prompt (TRL's conversational convention, `reward/rewards.py`).

`prompt_columns(split)` gives those columns as lists, for the reward (`PromptBatches(..., columns=...)`).
"""

from __future__ import annotations

import bz2
import collections
import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from warp_lightning import UserError
from warp_lightning.data.assets import ASSETS, cache_dir, fetch
from warp_lightning.data.texts import normalize_text
from warp_lightning.utils.io import atomic_dir, file_lock
from warp_lightning.utils.validate import check_prompt_lengths

log = logging.getLogger(__name__)

CHAT_MODES = ("auto", "always", "never")  # auto: messages templated, strings as they are
MESSAGES = "prompt_messages"  # a prompt's chat messages (None for a string): the prompts a reward function gets
RESERVED = ("prompt_text", "input_ids", "source_index", MESSAGES)  # the columns added to every split
SPLITS = ("train", "validation", "test")
# a source's split names (lower-cased) and ours; those of `datasets`' folder loader, which maps them already
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_SEED = 20240609  # the seeded division does not depend on a run's seed: every run is judged on the same


def _cache_root(cache) -> Path:
    return Path(str(cache)).expanduser() if cache else cache_dir()


# ---- reading a source ----------------------------------------------------------------------------------------

def load_source(path, cache=None, subset: str | None = None) -> dict:
    """The splits of a prompt source, by their names in it: a file (one split, `train`), a folder saved with
    `save_to_disk`, a folder of data files (split names from the file names, as `load_dataset` reads them), a
    built-in set (`BUILTIN_SETS`), or a dataset name for `datasets.load_dataset` (the hub, online)."""
    from datasets import Dataset, load_dataset, load_from_disk

    text = str(path)
    local = Path(text).expanduser()
    if text in BUILTIN_SETS and not local.exists():
        local = BUILTIN_SETS[text](cache)
    hf_cache = str(_cache_root(cache) / "datasets")
    if local.is_file():
        builder = FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise UserError(f"data.path={text!r} is invalid: a {local.suffix or 'suffix-less'} file; give a .jsonl, "
                            ".csv or .parquet file, or a folder of them")
        loader, args, kwargs = load_dataset, (builder,), {"data_files": str(local), "cache_dir": hf_cache}
    elif local.is_dir() and any((local / f).exists() for f in ("dataset_dict.json", "state.json")):
        loader, args, kwargs = load_from_disk, (str(local),), {}
    elif local.is_dir():
        loader, args, kwargs = load_dataset, (str(local),), {"cache_dir": hf_cache}
    elif local.suffix.lower() in FILE_BUILDERS or text.startswith((".", "/", "~")):
        raise UserError(f"data.path={text!r} is invalid: no such file or folder; give a .jsonl, .csv or .parquet "
                        "file, a folder of them, or a dataset name")
    else:
        loader, args, kwargs = load_dataset, (text, subset), {"cache_dir": hf_cache}
    try:
        loaded = loader(*args, **kwargs)
    except Exception as err:  # datasets raises many kinds (no data files, offline hub, bad JSON): one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"data.path={text!r} is invalid: datasets could not load it ({type(err).__name__}: "
                        f"{first[:300]}); give a .jsonl, .csv or .parquet file, a folder of them, or a dataset "
                        "name on a machine online") from err
    return {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)


def named_splits(raw: dict, mapping=None) -> dict:
    """Our split names -> the source's splits: `mapping` ({ours: theirs}, data.splits) where given, else the
    usual names (`SPLIT_ALIASES`); a source with one split of another name is its train split."""
    if mapping:
        for ours, theirs in mapping.items():
            if ours not in SPLITS or theirs not in raw:
                raise UserError(f"data.splits={dict(mapping)!r} is invalid: map {', '.join(SPLITS)} to splits of "
                                f"the dataset ({', '.join(raw)})")
        return {ours: raw[theirs] for ours, theirs in mapping.items()}
    out = {}
    for name, split in raw.items():
        ours = SPLIT_ALIASES.get(str(name).lower())
        if ours and ours not in out:
            out[ours] = split
    if "train" not in out and len(raw) == 1:
        out = {"train": next(iter(raw.values()))}
    if "train" not in out:
        raise UserError(f"data.splits=null is invalid: the dataset's splits ({', '.join(raw)}) include no train "
                        "split; name it, e.g. data.splits={train: NAME, test: NAME}")
    unused = [str(n) for n in raw if not any(raw[n] is v for v in out.values())]
    if unused:
        log.info("prompts: the dataset's splits %s are not used (data.splits can map them)", ", ".join(unused))
    return out


# ---- rendering -----------------------------------------------------------------------------------------------

def _messages(prompt, where: str):
    """The prompt as a list of messages (dicts with role and content, their null fields removed), or None for a
    string; anything else is refused."""
    if isinstance(prompt, str):
        return None
    if isinstance(prompt, list | tuple) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and m.get("content") is not None for m in prompt):
        return [{k: v for k, v in m.items() if v is not None} for m in prompt]
    raise UserError(f"data.prompt_column: {where} holds {str(prompt)[:80]!r} ({type(prompt).__name__}); a prompt is "
                    "a string or a list of {role, content} messages")


def render_prompts(prompts, tokenizer, mode: str = "auto", where: str = "the prompts") -> list[str]:
    """The text the policy continues for each prompt: messages through the tokenizer's chat template with the
    generation prompt; strings as they are (`auto`, `never`) or as one user message (`always`). `never`
    refuses messages; a tokenizer without a chat template refuses anything to template."""
    texts = []
    for row, prompt in enumerate(prompts):
        messages = _messages(prompt, f"row {row} of {where}")
        if messages is None and mode == "always":
            messages = [{"role": "user", "content": prompt}]
        if messages is None:
            texts.append(prompt)
            continue
        if mode == "never":
            raise UserError(f"data.chat_template=never is invalid: row {row} of {where} is a list of messages; set "
                            "data.chat_template=auto to render messages through the tokenizer's chat template")
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"data.chat_template={mode} is invalid: the policy tokenizer has no chat template, and "
                            f"row {row} of {where} needs one; use an instruct policy whose tokenizer has one, give "
                            "plain-string prompts with data.chat_template=auto, or set the tokenizer's "
                            "`chat_template` (tokenizer_config.json)")
        texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return texts


def templated(prompts, mode: str = "auto") -> list[bool]:
    """Which prompts `render_prompts` renders through the chat template (messages; strings too with `always`)."""
    return [mode == "always" or not isinstance(p, str) for p in prompts]


def prompt_messages(prompts) -> list[list[dict] | None]:
    """Each prompt's messages (their null fields removed, as a table column fills them), or None for a string."""
    return [None if p is None else _messages(p, f"row {row} of the prompts") for row, p in enumerate(prompts)]


def tokenize_prompts(texts: list[str], tokenizer, templates: list[bool] | None = None) -> list[list[int]]:
    """Token ids of rendered prompts: a chat template's text with no special token added (it writes its own), a
    plain string (`templates[i]` False) with those the tokenizer adds, as TRL tokenizes a standard prompt (GPT-2's
    tokenizer adds none). `templates=None`: every text is a template's."""
    templates = [True] * len(texts) if templates is None else templates
    ids: list[list[int] | None] = [None] * len(texts)
    for special in (False, True):
        rows = [r for r, t in enumerate(templates) if t != special]
        if rows:
            for r, tokens in zip(rows, tokenizer([texts[r] for r in rows], add_special_tokens=special)["input_ids"],
                                 strict=True):
                ids[r] = list(tokens)
    return ids


# ---- the three splits ----------------------------------------------------------------------------------------

def assign_parts(keys, shares, seed: int = SPLIT_SEED) -> list[int]:
    """Part of each row: the distinct keys, sorted then shuffled with `seed`, cut at round(cumulative share x
    number of keys); rows that share a key (a prompt text, a film) fall in one part. `shares` sum to 1."""
    distinct = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(distinct))
    bounds = np.round(np.cumsum(shares) / np.sum(shares) * len(distinct)).astype(int)
    part_of = {distinct[k]: int(np.searchsorted(bounds, rank, side="right")) for rank, k in enumerate(order)}
    return [part_of[k] for k in keys]


def _division(named: dict, heldout_fraction: float, validation_fraction: float):
    """{our split: (source split, share list index)}: how each of train/validation/test is taken, and the shares
    of each source split that is divided; plus how it was decided (for the log)."""
    held = [s for s in ("validation", "test") if s in named]
    if len(held) == 2:
        return {s: (s, None) for s in SPLITS}, {}, "the dataset's own splits"
    if held:
        shares = {held[0]: [validation_fraction, 1 - validation_fraction]}
        return ({"train": ("train", None), "validation": (held[0], 0), "test": (held[0], 1)}, shares,
                f"the dataset's train split, its {held[0]} split divided into validation and test")
    shares = {"train": [1 - heldout_fraction, heldout_fraction * validation_fraction,
                        heldout_fraction * (1 - validation_fraction)]}
    return {s: ("train", k) for k, s in enumerate(SPLITS)}, shares, "a seeded division of the dataset's rows"


def _settings(data) -> dict:
    """The keys of a data=prompts config, checked (the one-line errors of bad values)."""
    get = data.get
    s = {"path": get("path"), "column": get("prompt_column", "prompt"), "mode": get("chat_template", "auto"),
         "min_tokens": get("min_prompt_tokens", 1), "max_tokens": get("max_prompt_tokens", 256),
         "heldout_fraction": get("heldout_fraction", 0.2), "validation_fraction": get("validation_fraction", 0.333),
         "split_by": get("split_by"), "seed": get("split_seed", SPLIT_SEED), "subset": get("subset"),
         "splits": get("splits")}
    if s["path"] in (None, "", "???"):
        raise UserError("data.path is missing: `data=prompts data.path=FILE_OR_NAME` (a .jsonl, .csv or .parquet "
                        "file, a folder of them, or a dataset name)")
    if s["mode"] not in CHAT_MODES:
        raise UserError(f"data.chat_template={s['mode']!r} is invalid: choose {', '.join(CHAT_MODES)}")
    for key in ("heldout_fraction", "validation_fraction"):
        if not (isinstance(s[key], int | float) and 0 < s[key] < 1):
            raise UserError(f"data.{key}={s[key]!r} is invalid: must be in (0, 1)")
    check_prompt_lengths(s["min_tokens"], s["max_tokens"])
    return s


def _check_columns(named: dict, s: dict) -> None:
    for name, split in named.items():
        columns = list(split.column_names)
        if s["column"] not in columns:
            raise UserError(f"data.prompt_column={s['column']!r} is invalid: the {name} split has the columns "
                            f"{', '.join(columns)}; name the one holding the prompts")
        if s["split_by"] is not None and s["split_by"] not in columns:
            raise UserError(f"data.split_by={s['split_by']!r} is invalid: the {name} split has the columns "
                            f"{', '.join(columns)}")
        taken = [c for c in RESERVED if c in columns]
        if taken:
            raise UserError(f"data.path={str(s['path'])!r} is invalid: its column {taken[0]} is one the prompts add "
                            f"({', '.join(RESERVED)}); rename it")


def check_prompt_data(data, cache=None) -> set[str]:
    """The checks that need no tokenizer, before any work: the keys' values, the source loads, the columns.
    Returns the columns that travel with the prompts to the reward (`prompt_columns`), of every split. Quiet: a
    refusal is its one line, without the progress bars of `datasets` reading a file for the first time."""
    import datasets

    s = _settings(data)
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        named = named_splits(load_source(s["path"], cache, s["subset"]), s["splits"])
    finally:
        if shown:
            datasets.enable_progress_bars()
    _check_columns(named, s)
    return {c for split in named.values() for c in split.column_names} | {c for c in RESERVED if c != "input_ids"}


def prompt_dataset_splits(data, tokenizer, cache=None) -> tuple:
    """(train, validation, test) `datasets.Dataset`s of a data=prompts config (module docstring: the columns).

    Splits: the dataset's own validation and test when it has both; one of them divided into validation
    (`validation_fraction`) and test when it has one; else its rows divided seeded (`heldout_fraction` held out,
    `validation_fraction` of those validation), by prompt text or by the `split_by` column, so that rows sharing
    it stay in one split. Prompts with more than `max_prompt_tokens` tokens (after templating) or fewer than
    `min_prompt_tokens` are dropped, never cut; a held-out prompt equal to a train prompt (`normalize_text`), a
    test prompt equal to a validation prompt and a held-out repeat are dropped too. Each count is logged; a split
    left empty stops with one line.
    """
    s = _settings(data)
    named = named_splits(load_source(s["path"], cache, s["subset"]), s["splits"])
    _check_columns(named, s)
    plan, shares, how = _division(named, s["heldout_fraction"], s["validation_fraction"])
    sources = {}
    for name in dict.fromkeys(src for src, _ in plan.values()):  # a fixed order: the same error first
        split = named[name]
        prompts = list(split[s["column"]])
        texts = render_prompts(prompts, tokenizer, s["mode"], f"the {name} split")
        keys = ([str(v) for v in split[s["split_by"]]] if s["split_by"] is not None
                else [normalize_text(t) for t in texts])
        parts = assign_parts(keys, shares[name], s["seed"]) if name in shares else None
        ids = tokenize_prompts(texts, tokenizer, templated(prompts, s["mode"]))
        sources[name] = (split, texts, ids, parts, prompt_messages(prompts))
    rows, dropped = {}, {split: collections.Counter() for split in SPLITS}
    seen: set[str] = set()
    for split in SPLITS:  # train first: held-out prompts are checked against the prompts before them
        name, part = plan[split]
        _, texts, ids, parts, _ = sources[name]
        keys, kept = set(), []
        for r in range(len(texts)):
            if part is not None and parts[r] != part:
                continue
            n, key = len(ids[r]), normalize_text(texts[r])
            if n > s["max_tokens"]:
                dropped[split][f"longer than data.max_prompt_tokens={s['max_tokens']}"] += 1
            elif n < s["min_tokens"]:
                dropped[split][f"shorter than data.min_prompt_tokens={s['min_tokens']}"] += 1
            elif split != "train" and key in seen:
                dropped[split]["equal to a prompt of an earlier split"] += 1
            elif split != "train" and key in keys:
                dropped[split]["repeated"] += 1
            else:
                keys.add(key)
                kept.append(r)
        seen |= keys
        rows[split] = kept
    for split in SPLITS:
        if dropped[split]:
            log.warning("prompts: %d %s prompts dropped (%s)", sum(dropped[split].values()), split,
                        ", ".join(f"{n} {why}" for why, n in dropped[split].items()))
        if not rows[split]:
            raise UserError(_empty_split(split, dropped[split], s, how))
    log.info("prompts from %s (%s): %d train, %d validation, %d test", s["path"], how,
             *(len(rows[split]) for split in SPLITS))
    return tuple(_split_dataset(sources[plan[split][0]], rows[split]) for split in SPLITS)


def _empty_split(split: str, dropped, s: dict, how: str) -> str:
    if any(why.startswith("longer") for why in dropped):
        fix = f"raise data.max_prompt_tokens={s['max_tokens']} (templated prompts are longer than their text)"
    elif how.startswith("a seeded"):
        fix = f"give more rows, or raise data.heldout_fraction={s['heldout_fraction']}"
    else:
        fix = f"give the dataset's {split} split more rows (different from the train prompts)"
    kept = ", ".join(f"{n} {why}" for why, n in dropped.items()) or "none in the source"
    return f"data.path={str(s['path'])!r} is invalid: the {split} split holds no prompt (dropped: {kept}); {fix}"


def _split_dataset(source, rows: list[int]):
    split, texts, ids, _, messages = source
    out = split.select(rows)
    for name, values in (("prompt_text", [texts[r] for r in rows]), ("input_ids", [ids[r] for r in rows]),
                         ("source_index", rows), (MESSAGES, [messages[r] for r in rows])):
        out = out.add_column(name, values)
    return out


def prompt_columns(split) -> dict[str, list]:
    """Every column of a prompt split but `input_ids`, as lists: what travels with each prompt to the reward, in
    train, evaluate and front alike (a built-in text set's `prompt`, `label`, ... as a data=prompts file's)."""
    columns = {c: list(split[c]) for c in split.column_names if c != "input_ids"}
    if MESSAGES in columns:  # a table column holds every key any message has: the absent ones read back as None
        columns[MESSAGES] = prompt_messages(columns[MESSAGES])
    return columns


# ---- the built-in film prompts -------------------------------------------------------------------------------

FILM_PROMPT = "Write a one-sentence review of the film {film}."
FILM_SHARES = (0.7, 0.1, 0.2)  # of the films: train, validation, test
FILM_VERSION = 1  # bump when the rows written change
_SMALL_WORDS = {"a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "by", "with", "from", "de"}


def film_title(slug: str) -> str:
    """`about_a_boy` -> `About a Boy`, `hard_word_the` -> `The Hard Word`: the Rotten Tomatoes snippets name films
    by such slugs (URL-escaped Latin-1 letters, a leading article moved to the end)."""
    words = [w for w in unquote(slug, encoding="latin-1").replace("-", "_").split("_") if w]
    if len(words) > 1 and words[-1] in ("a", "an", "the"):
        words = words[-1:] + words[:-1]
    return " ".join(w.capitalize() if i == 0 or w not in _SMALL_WORDS else w for i, w in enumerate(words))


def film_rows(csv_text: str) -> list[dict]:
    """One conversational prompt per film of the snippets (`category,text,movie_name`), and its columns: `film`
    (the title), `critics` (its fresh and rotten snippets) and `fresh_fraction` (null without a snippet)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in csv.DictReader(io.StringIO(csv_text, newline="")):
        slug = (row.get("movie_name") or "").strip()
        if slug:
            counts[film_title(slug)][(row.get("category") or "").strip()] += 1
    rows = []
    for film, c in sorted(counts.items()):
        critics = c["fresh"] + c["rotten"]
        rows.append({"prompt": [{"role": "user", "content": FILM_PROMPT.format(film=film)}], "film": film,
                     "critics": critics, "fresh_fraction": c["fresh"] / critics if critics else None})
    return rows


def write_film_prompts(folder: Path, csv_text: str, seed: int = SPLIT_SEED) -> dict[str, int]:
    """`folder/{train,validation,test}.jsonl`: the film prompts divided by film (`assign_parts` on the title, so no
    film is in two splits); the number of films of each."""
    rows = film_rows(csv_text)
    parts = assign_parts([r["film"] for r in rows], FILM_SHARES, seed)
    sizes = {}
    for k, split in enumerate(SPLITS):
        lines = [json.dumps(r, ensure_ascii=False) for r, p in zip(rows, parts, strict=True) if p == k]
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        sizes[split] = len(lines)
    return sizes


def film_reviews(cache=None) -> Path:
    """The folder of the film prompt set, `<cache>/prompts/film_reviews-<key>`, written on first use from the
    Rotten Tomatoes snippets asset (its checksum, `FILM_VERSION` and the division name the folder: never stale)."""
    spec = [ASSETS["rt_snippets"].sha256, FILM_VERSION, FILM_PROMPT, FILM_SHARES, SPLIT_SEED]
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    folder = _cache_root(cache) / "prompts" / f"film_reviews-{key}"
    if all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
            asset = fetch("rt_snippets", cache=_cache_root(cache) if cache else None)
            raw = bz2.decompress((asset / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
            with atomic_dir(folder) as tmp:
                sizes = write_film_prompts(tmp, raw.decode("utf-8-sig", errors="replace"))
            log.info("film_reviews: %s films (train, validation, test) written to %s",
                     ", ".join(str(n) for n in sizes.values()), folder)
    return folder


BUILTIN_SETS = {"film_reviews": film_reviews}  # data.path names that build their files on first use
