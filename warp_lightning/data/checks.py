"""The checks of the data a command reads (`data.*`, the text sets it names) and of the `assets` command (its record:
commands.py beside this file); `check_prompt_lengths` is also the rule `data/prompts.py`'s loaders apply to
their arguments."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.data.assets import ASSETS
from warp_lightning.data.prompt_datasets import check_prompt_data
from warp_lightning.data.prompts import TEXT_PROMPT_COLUMNS
from warp_lightning.data.texts import TEXT_SETS
from warp_lightning.utils.validate import check, check_prompt_lengths, plain, writable

PROMPT_DATASET = "prompts"  # data=prompts: the user's prompt dataset (data/prompt_datasets.py), not a text set


def data_source(data) -> str:
    """What a refusal of the data's columns names: `data.path='FILE'`, or `data=NAME` for a built-in text set."""
    return f"data.path={str(data.path)!r}" if data.get("path") else f"data={data.name}"


def check_data(cfg) -> set[str]:
    """data.name, the prompt lengths, and for data=file the file itself (exists, readable, a .csv with a `text`
    column). Returns the columns that travel with the prompts to the reward: for data=prompts, the source's
    (it loads, its columns are there); for a text set, `TEXT_PROMPT_COLUMNS`."""
    d = cfg.data
    check(d.name in (*TEXT_SETS, PROMPT_DATASET), "data.name", d.name,
          f"choose one of {', '.join((*TEXT_SETS, PROMPT_DATASET))}")
    check_prompt_lengths(d.min_prompt_tokens, d.max_prompt_tokens)
    if d.name == PROMPT_DATASET:  # a file, a folder or a dataset name: it loads, the columns are there
        return check_prompt_data(d, cfg.paths.cache_dir)
    if d.name != "file":
        return set(TEXT_PROMPT_COLUMNS)
    path = Path(str(d.path)).expanduser()
    hint = "point it to a .csv with a `text` column, a .jsonl with `text` fields, or a text file (one text per line)"
    check(path.is_file(), "data.path", str(d.path), f"no such file: {hint}")
    check(os.access(path, os.R_OK), "data.path", str(d.path), "cannot be read (permissions)")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            header = [h.strip().lower() for h in next(csv.reader([f.readline()]), [])]
        check("text" in header, "data.path", str(d.path), f"a .csv needs a `text` column (header: {','.join(header)})")
    return set(TEXT_PROMPT_COLUMNS)


def check_text_sets(value, key: str) -> None:
    """`value` names built-in text sets (`file` needs data.path, which these keys do not take)."""
    allowed = [n for n in TEXT_SETS if n != "file"]
    for name in [value] if isinstance(value, str) else list(value):
        check(name in allowed, key, plain(value), f"choose from {', '.join(allowed)}")


def check_assets(cfg) -> None:
    """`assets`: the names it fetches are assets of ASSETS.md, and the cache folder can be written."""
    names = plain(cfg.assets.names)
    names = [names] if isinstance(names, str) else names
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise UserError(f"assets.names: unknown asset {unknown[0]!r}; choose from {', '.join(ASSETS)}")
    writable(str(cfg.paths.cache_dir), "paths.cache_dir", "the assets are fetched there")
