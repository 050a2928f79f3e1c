"""Text datasets (`text`, `label` columns), prompts cut from them, and preference pairs.

Offline sets come from the assets of ASSETS.md (`warp_lightning.assets`):

- `reviews`: Pang & Lee polarity v2.0, 1,500 full movie reviews (750 positive, 750 negative).
- `sentences`: Pang & Lee sentence polarity v1.0, 4,000 snippets (2,000 / 2,000).
- `rt_snippets`: Rotten Tomatoes critic snippets, fresh -> 1, rotten -> 0, plot synopses dropped, HTML
  entities unescaped, de-duplicated within itself and against `sentences` (most of `sentences` is in it).

`imdb` is the hub's `stanfordnlp/imdb`, or a local copy of it (`data.path`, `reward_model.train_data_path`).
Splits are deterministic and stratified by label: 80/20 for `reviews` and `sentences`, 90/10 for `rt_snippets`;
`split=None` gives every row.
"""

from __future__ import annotations

import bz2
import csv
import functools
import html
import io
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from warp_lightning import UserError
from warp_lightning.data.assets import fetch

log = logging.getLogger(__name__)

TEXT_SETS = ("reviews", "sentences", "rt_snippets", "imdb", "file")
SPLITS = ("train", "test")
IMDB_HUB_ID = "stanfordnlp/imdb"
SPLIT_SEED = 20240607
TEST_FRACTION = {"reviews": 0.2, "sentences": 0.2, "rt_snippets": 0.1, "file": 0.2}
MAX_TEXT_CHARS = 20_000  # longer texts (a few reviews run to 100k characters) are truncated
POLARITY_LABELS = {"1": 1, "-1": 0}
RT_LABELS = {"fresh": 1, "rotten": 0}


def _features():
    from datasets import Features, Value

    return Features({"text": Value("string"), "label": Value("int64")})


def normalize_text(text: str) -> str:
    """A key that ignores case, spacing, punctuation, accents and HTML entities (for de-duplication).

    Pang & Lee's sentences are lower-cased and tokenised ("it's alarmingly current . ") while the Rotten
    Tomatoes snippets are not ("it's alarmingly current."): only letters and digits are compared.
    """
    decomposed = unicodedata.normalize("NFKD", html.unescape(text).casefold())
    key = "".join(ch for ch in decomposed if ch.isalnum() and not unicodedata.combining(ch))
    return key or " ".join(text.casefold().split())


def _decode(raw: bytes, what: str) -> str:
    text = raw.decode("utf-8-sig", errors="replace")
    if "\ufffd" in text:
        log.warning("%s: %d undecodable bytes replaced by U+FFFD", what, text.count("\ufffd"))
    return text


def _csv_rows(text: str, what: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise UserError(f"{what} is not a readable CSV file ({err}); delete its asset folder and fetch it "
                        "again") from err


def _labelled(rows, label_col: int, text_col: int, labels_map: dict[str, int], what: str,
              dropped: str | None = None) -> tuple[list[str], list[int]]:
    """Keep rows with a known label and a non-empty text; count (and log) the rest by reason.

    Rows whose label is `dropped` (RT plot synopses) are removed on purpose and logged apart.
    """
    texts, labels, n_dropped = [], [], 0
    skipped = {"empty text": 0, "unknown label": 0, "malformed row": 0}
    for row in rows:
        if not row:
            continue  # blank line
        if len(row) <= max(label_col, text_col):
            skipped["malformed row"] += 1
            continue
        label, text = row[label_col].strip(), html.unescape(row[text_col]).strip()
        if label == dropped:
            n_dropped += 1
        elif label not in labels_map:
            skipped["unknown label"] += 1
        elif not text:
            skipped["empty text"] += 1
        else:
            texts.append(text)
            labels.append(labels_map[label])
    if dropped:
        log.info("%s: %d %s rows dropped", what, n_dropped, dropped)
    _log_skipped(what, skipped, len(texts))
    return texts, labels


def read_polarity_csv(path: str | Path) -> tuple[list[str], list[int]]:
    """Rows `"1"|"-1",text` of Pang & Lee (UTF-8 BOM, quoted multi-line fields) -> texts, labels 1/0.

    Rows with an empty text, an unknown label or a wrong number of fields are skipped and counted.
    """
    path = Path(path)
    rows = _csv_rows(_decode(path.read_bytes(), path.name), path.name)
    return _labelled(rows, 0, 1, POLARITY_LABELS, path.name)


def read_rt_snippets(path: str | Path) -> tuple[list[str], list[int]]:
    """Rotten Tomatoes critic snippets (`category,text,...`, bz2) -> texts, labels (fresh 1 / rotten 0).

    Plot synopses are dropped; HTML entities (`&amp;`) are unescaped; empty texts are skipped and counted.
    """
    path = Path(path)
    try:
        raw = bz2.decompress(path.read_bytes())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable bz2 file ({err}); delete its asset folder and fetch it "
                        "again") from err
    rows = _csv_rows(_decode(raw, path.name), path.name)
    header = [h.strip() for h in rows[0]] if rows else []
    if "category" not in header or "text" not in header:
        raise UserError(f"{path} lacks the columns category,text (header: {','.join(header)})")
    return _labelled(rows[1:], header.index("category"), header.index("text"), RT_LABELS, path.name,
                     dropped="plot")


def _log_skipped(what: str, skipped: dict[str, int], kept: int) -> None:
    if any(skipped.values()):
        detail = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
        log.warning("%s: %d rows skipped (%s), %d kept", what, sum(skipped.values()), detail, kept)


def deduplicate(texts: Sequence[str], labels: Sequence[int],
                against: Sequence[str] = ()) -> tuple[list[str], list[int], int, int]:
    """Drop texts whose `normalize_text` key is in `against` or appeared earlier (the first one is kept).

    Returns the texts, their labels, the number dropped as in `against` and the number of repeats.
    """
    external = {normalize_text(t) for t in against}
    seen: set[str] = set()
    out_t, out_l, overlap, repeats = [], [], 0, 0
    for text, label in zip(texts, labels, strict=True):
        key = normalize_text(text)
        if key in external:
            overlap += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            out_t.append(text)
            out_l.append(label)
    return out_t, out_l, overlap, repeats


def _asset_folder(name: str, cache) -> Path:
    return fetch(name, cache=Path(str(cache)) if cache else None)


@functools.lru_cache(maxsize=16)
def _load_rows(name: str, pang_lee: str, rt: str | None = None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """All rows of an offline set, parsed once per process (the files never change once fetched)."""
    if name == "reviews":
        texts, labels = read_polarity_csv(Path(pang_lee) / "reviews.csv")
    elif name == "sentences":
        texts, labels = read_polarity_csv(Path(pang_lee) / "sentences.csv")
    else:
        sentences, _ = read_polarity_csv(Path(pang_lee) / "sentences.csv")
        texts, labels = read_rt_snippets(Path(rt) / "rotten_tomatoes_corpus_full.csv.bz2")
        n = len(texts)
        texts, labels, overlap, repeats = deduplicate(texts, labels, against=sentences)
        log.info("rt_snippets: %d snippets, %d dropped as in `sentences`, %d repeats dropped, %d kept",
                 n, overlap, repeats, len(texts))
    return tuple(texts), tuple(labels)


def split_indices(labels: Sequence[int], test_fraction: float, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """Stratified train/test row indices (each in increasing order), deterministic for a seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return sorted(train), sorted(test)


def _clean(texts, labels, what: str) -> tuple[list[str], list[int]]:
    """Drop rows whose text is not a non-empty string (counted in a log line)."""
    out_t, out_l = [], []
    for text, label in zip(texts, labels, strict=True):
        if isinstance(text, str) and text.strip():
            out_t.append(text)
            out_l.append(int(label))
    if len(out_t) != len(texts):
        log.warning("%s: %d empty or whitespace-only texts skipped", what, len(texts) - len(out_t))
    return out_t, out_l


def read_text_file(path: str | Path) -> tuple[list[str], list[int]]:
    """A user's own texts: `.csv` with a `text` column (and optionally `label`: 1/0 or pos/neg), `.jsonl`
    with a `text` field (and optionally `label`), or any other file as one text per line (label 0).

    Undecodable bytes are replaced, empty or whitespace-only texts skipped, texts over `MAX_TEXT_CHARS`
    truncated; each count is logged.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.path={str(path)!r} is not a file: point it to a .csv, .jsonl or .txt of texts")
    text = _decode(path.read_bytes(), path.name)
    labels_map = {"1": 1, "0": 0, "pos": 1, "neg": 0, "positive": 1, "negative": 0}
    if path.suffix == ".csv":
        rows = _csv_rows(text, path.name)
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "text" not in header:
            raise UserError(f"data.path={str(path)!r}: a .csv needs a `text` column (header: {','.join(header)})")
        t_col, l_col = header.index("text"), header.index("label") if "label" in header else None
        pairs = [(r[t_col], r[l_col] if l_col is not None and len(r) > l_col else "0")
                 for r in rows[1:] if len(r) > t_col]
    elif path.suffix == ".jsonl":
        pairs = []
        for line in text.splitlines():
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                row = {}
            pairs.append((row.get("text", "") if isinstance(row, dict) else "",
                          str(row.get("label", 0)) if isinstance(row, dict) else "0"))
    else:
        pairs = [(line, "0") for line in text.splitlines()]
    texts, labels, long = [], [], 0
    skipped = {"empty text": 0, "unknown label": 0}
    for raw, label in pairs:
        raw = raw.strip() if isinstance(raw, str) else ""
        if not raw:
            skipped["empty text"] += 1
        elif str(label).strip().lower() not in labels_map:
            skipped["unknown label"] += 1
        else:
            long += len(raw) > MAX_TEXT_CHARS
            texts.append(raw[:MAX_TEXT_CHARS])
            labels.append(labels_map[str(label).strip().lower()])
    _log_skipped(path.name, skipped, len(texts))
    if long:
        log.warning("%s: %d texts longer than %d characters truncated", path.name, long, MAX_TEXT_CHARS)
    if not texts:
        raise UserError(f"data.path={str(path)!r} holds no usable text")
    return texts, labels


def load_texts(name: str, split: str | None = None, cache: str | Path | None = None,
               path: str | Path | None = None):
    """A `datasets.Dataset` with columns `text` (str) and `label` (int: 1 positive, 0 negative).

    `name` is one of `TEXT_SETS` (`file`: the user's file at `path`, see `read_text_file`); `split` is
    "train", "test" or None (every row). `cache` is the assets cache (default `assets.cache_dir()`);
    offline sets are fetched into it on first use.
    """
    from datasets import Dataset, concatenate_datasets, load_dataset, load_from_disk

    if name not in TEXT_SETS:
        raise UserError(f"unknown text set {name!r}; choose one of {', '.join(TEXT_SETS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}")
    if name == "imdb":  # the hub dataset, or a local copy: its parquet files per split, or a `save_to_disk` folder
        source = str(path) if path else IMDB_HUB_ID
        saved = path is not None and (Path(source).expanduser() / "dataset_dict.json").exists()
        splits = load_from_disk(str(Path(source).expanduser())) if saved else None
        parts = [splits[s] if saved else load_dataset(source, split=s) for s in ([split] if split else SPLITS)]
        ds = parts[0] if split else concatenate_datasets(parts)
        texts, labels = _clean(list(ds["text"]), list(ds["label"]), f"imdb/{split or 'all'}")
        return Dataset.from_dict({"text": texts, "label": labels}, features=_features())

    if name == "file":
        if path is None:
            raise UserError("data.path is missing: `data=file data.path=FILE` reads your own texts")
        texts, labels = read_text_file(path)
    else:
        rt = str(_asset_folder("rt_snippets", cache)) if name == "rt_snippets" else None
        texts, labels = _load_rows(name, str(_asset_folder("pang_lee", cache)), rt)
    if split is not None:
        train, test = split_indices(labels, TEST_FRACTION[name])
        rows = train if split == "train" else test
        texts, labels = [texts[i] for i in rows], [labels[i] for i in rows]
    return Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=_features())


def preference_pairs(texts, seed: int = 0):
    """Pairs `chosen` (a text with label 1) / `rejected` (label 0): both sides shuffled with `seed`,
    zipped to the shorter length."""
    from datasets import Dataset, Features, Value

    rng = np.random.default_rng(seed)
    raw, labels = list(texts["text"]), list(texts["label"])
    pos = [t for t, y in zip(raw, labels, strict=True) if y == 1]
    neg = [t for t, y in zip(raw, labels, strict=True) if y == 0]
    if not pos or not neg:
        raise ValueError(f"preference pairs need texts of both labels: {len(pos)} positive, {len(neg)} negative")
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    n = min(len(pos), len(neg))
    return Dataset.from_dict({"chosen": pos[:n], "rejected": neg[:n]},
                             features=Features({"chosen": Value("string"), "rejected": Value("string")}))
