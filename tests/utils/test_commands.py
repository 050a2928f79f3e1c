"""Each command declared once, by its record beside it (utils/commands.py): the CLI lists the records, runs each
check once, and a resume may change what the record says and nothing else (issue 33, item 3)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from warp_lightning import UserError, cli
from warp_lightning.utils.commands import commands, without

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def test_every_command_has_one_record_with_its_config_its_check_and_its_run():
    records = commands()
    assert list(records) == ["assets", "sft", "train", "reward", "evaluate", "front", "report", "study"]
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == set(records)  # one primary config per command, no other
    for name, record in records.items():
        package = record.module.rpartition(".")[0]
        assert record.name == name and callable(record.checker()) and callable(record.body().run), name
        assert record.check.startswith(f"{package}.checks:"), name  # its check beside it, in its package
    assert {n for n, r in records.items() if r.resumable} == {"sft", "train", "reward"}
    usage = cli.usage()
    assert all(f"  {name:<10}{record.summary}" in usage for name, record in records.items())


def test_a_record_called_from_python_checks_then_runs(tmp_path):
    report = commands()["report"]
    cfg = OmegaConf.create({"evaluation": None, "sweep": None, "front": None, "run": None, "out": str(tmp_path / "r"),
                            "paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(UserError, match="^nothing to report: pass evaluation=DIR"):
        report(cfg)  # the rule lives in check_report only: report's body no longer repeats it
    assert not (tmp_path / "r").exists()


def test_listing_the_commands_imports_neither_torch_nor_a_models_library():
    listed = subprocess.run([sys.executable, "-c", "import sys; from warp_lightning import cli; cli.usage(); "
                             "print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))"],
                            capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == "[]"


def test_the_cli_runs_a_commands_check_once(tmp_path, monkeypatch):
    from warp_lightning.studies import checks

    calls = []
    real = checks.check_study

    def counted(cfg):
        calls.append(cfg.action)
        real(cfg)

    monkeypatch.setattr(checks, "check_study", counted)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    cli.main(["study", f"hydra.run.dir={run_dir}", f"results_dir={tmp_path / 'results'}", "readme=null"])
    assert calls == ["list"]
    assert json.loads((run_dir / "metrics.json").read_text())["jobs"] == 24


def test_without_drops_dotted_keys_and_keeps_the_rest():
    config = {"hydra": {"x": 1}, "warp": {"checkpoint_every": 5, "steps": 3}, "data": {"name": "reviews"}}
    assert without(config, {"hydra", "warp.checkpoint_every", "absent.key"}) == {"warp": {"steps": 3},
                                                                                 "data": {"name": "reviews"}}
    assert config["warp"] == {"checkpoint_every": 5, "steps": 3}  # a copy: the given config is kept
