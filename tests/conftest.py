"""Shared fixtures: one asset cache per machine, so each registry file is downloaded at most once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def asset_cache():
    """The shared cache (`$WARP_LIGHTNING_CACHE`, else `~/.cache/warp_lightning`) with every asset fetched.

    The env var is set for the session, so subprocesses (the CLI) use the same cache.
    """
    from warp_lightning import assets

    path = Path(os.environ.get(assets.CACHE_ENV) or Path.home() / ".cache" / "warp_lightning")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(assets.CACHE_ENV, str(path))
        for name in assets.ASSETS:
            assets.fetch(name, cache=path)
        yield path


@pytest.fixture(scope="session")
def gpt2_tokenizer(asset_cache):
    from transformers import AutoTokenizer

    from warp_lightning.assets import fetch

    return AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache))
