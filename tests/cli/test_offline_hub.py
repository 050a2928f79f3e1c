"""The classic assignment on a machine without the Hugging Face hub (issue 25): what a command needs from the hub
is named before anything is built or written, in one line with the two ways out; the run from local copies; a
failed build's own cause in its parent's line; third-party records printed once."""

import json
import logging
import sys

import pytest
from conftest import TINY_REWARD, cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_pipeline import imdb_stand_in, tiny_distilbert

from warp_lightning import UserError, builds
from warp_lightning.cli import CONF_DIR
from warp_lightning.data import hub
from warp_lightning.data.hub import Need
from warp_lightning.utils.console import single_handler

IMDB_BUILD = "for the build of reward_model"


def composed(command, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(command, overrides=list(overrides))


def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache for the CLI children (read when huggingface_hub is imported)."""
    hf = tmp_path / "hf"
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", hf), ("HF_HUB_CACHE", hf / "hub"),
                        ("HF_DATASETS_CACHE", hf / "datasets")):
        monkeypatch.setenv(name, str(value))
    return hf


# ---- what a command needs from the hub -----------------------------------------------------------------------

def test_the_imdb_experiment_needs_its_three_hub_names_and_none_with_local_copies(tmp_path):
    models = f"paths.models_dir={tmp_path / 'models'}"
    assert hub.hub_needs("train", composed("train", "+experiment=imdb", models)) == [
        Need("policy.name_or_path", "lvwerra/gpt2-imdb", "model"),
        Need("reward_model.base", "distilbert-base-cased", "model", IMDB_BUILD),
        Need("reward_model.train_data_path", "stanfordnlp/imdb", "dataset", IMDB_BUILD),
        Need("data.path", "stanfordnlp/imdb", "dataset")]
    assert hub.hub_needs("reward", composed("reward", "+experiment=imdb")) == [
        Need("reward_model.base", "distilbert-base-cased", "model"),
        Need("reward_model.train_data_path", "stanfordnlp/imdb", "dataset")]
    (tmp_path / "models" / "reward_distilbert_imdb").mkdir(parents=True)  # built: its base is not needed
    assert hub.hub_needs("evaluate", composed("evaluate", "+experiment=imdb", "model=x", models)) == [
        Need("data.path", "stanfordnlp/imdb", "dataset")]
    local = [f"{key}={tmp_path}" for key in ("policy.name_or_path", "reward_model.base", "data.path",
                                              "reward_model.train_data_path")]
    assert hub.hub_needs("train", composed("train", "+experiment=imdb", *local)) == []
    # the offline default, its assets and built-in sets, and paths of files: never the hub
    for command in ("train", "reward", "sft", "evaluate"):
        assert hub.hub_needs(command, composed(command, *(["model=x"] if command == "evaluate" else []))) == []
    for path in ("film_reviews", "missing.jsonl", "./missing"):
        assert hub.hub_needs("train", composed("train", "data=prompts", f"data.path={path}")) == []
    assert hub.hub_needs("train", composed("train", "data=prompts", "data.path=trl-lib/tldr")) == [
        Need("data.path", "trl-lib/tldr", "dataset")]


class Session:
    """The hub client's HTTP session, answering or failing, with the timeouts it was given."""

    def __init__(self, error=None):
        self.error, self.timeouts = error, []

    def head(self, url, timeout):
        self.timeouts.append(timeout)
        if self.error:
            raise self.error
        return object()


def test_the_offline_default_and_local_copies_make_no_network_call(monkeypatch, tmp_path):
    session = Session()
    monkeypatch.setattr("huggingface_hub.utils.get_session", lambda: session)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    hub.check_hub("train", composed("train"))
    hub.check_hub("reward", composed("reward", "+experiment=imdb", f"reward_model.base={tmp_path}",
                                     f"reward_model.train_data_path={tmp_path}"))
    assert session.timeouts == []
    hub.check_hub("reward", composed("reward", "+experiment=imdb"))  # the hub answers: the run goes on
    assert session.timeouts == [hub.PROBE_TIMEOUT_S]


def test_a_cached_model_or_dataset_is_found_where_the_libraries_look_offline(tmp_path):
    snapshot = tmp_path / "hub" / "models--lvwerra--gpt2-imdb" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--lvwerra--gpt2-imdb" / "refs").mkdir()
    (tmp_path / "hub" / "models--lvwerra--gpt2-imdb" / "refs" / "main").write_text("abc123")
    model = Need("policy.name_or_path", "lvwerra/gpt2-imdb", "model")
    assert hub.cached(model, hub_cache=str(tmp_path / "hub"))
    assert not hub.cached(Need("reward_model.base", "distilbert-base-cased", "model"), str(tmp_path / "hub"))
    imdb = Need("data.path", "stanfordnlp/imdb", "dataset")
    assert not hub.cached(imdb, datasets_caches=[tmp_path / "datasets"])
    (tmp_path / "datasets" / "stanfordnlp___imdb" / "plain_text" / "0.0.0" / "e6281661").mkdir(parents=True)
    assert hub.cached(imdb, datasets_caches=[tmp_path / "other", tmp_path / "datasets"])


def test_the_probe_reports_no_answer_and_any_answer_is_reachable(monkeypatch):
    import httpx2

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    down = Session(httpx2.ConnectError("Name or service not known"))
    monkeypatch.setattr("huggingface_hub.utils.get_session", lambda: down)
    assert hub.unreachable() == "no answer from https://huggingface.co: ConnectError, waited at most 2 s"
    assert down.timeouts == [hub.PROBE_TIMEOUT_S]
    monkeypatch.setattr("huggingface_hub.utils.get_session", lambda: Session())
    assert hub.unreachable() is None
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert hub.unreachable() == "HF_HUB_OFFLINE=1 is set"


KEYS = {"train": ("policy.name_or_path", "reward_model.base", "reward_model.train_data_path", "data.path"),
        "reward": ("reward_model.base", "reward_model.train_data_path"),
        "evaluate": ("reward_model.base", "reward_model.train_data_path", "data.path")}


@pytest.mark.slow  # second tier: three whole commands
@pytest.mark.parametrize("command", ["train", "reward", "evaluate"])
def test_an_unreachable_hub_stops_the_imdb_experiment_at_once_in_one_line(command, tmp_path, monkeypatch):
    """"At once": before anything is built or fetched (no model folder, no run folder, nothing in the hub cache),
    not a wall-clock limit."""
    hf = offline_hub(monkeypatch, tmp_path)
    models, run = tmp_path / "models", tmp_path / "run"
    args = ["+experiment=imdb", f"paths.models_dir={models}", f"hydra.run.dir={run}"]
    if command == "evaluate":
        (tmp_path / "final").mkdir()
        args += [f"model={tmp_path / 'final'}", f"sft={tmp_path / 'final'}"]
    proc = cli(command, *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "the hub cannot be reached (HF_HUB_OFFLINE=1 is set)" in line
    assert "the model distilbert-base-cased" in line and "the dataset stanfordnlp/imdb" in line
    assert ("the model lvwerra/gpt2-imdb" in line) == (command == "train")
    ways_out = " ".join(f"{key}=DIR" for key in KEYS[command])
    assert f"run it once where the hub is reachable (the files are then cached), or point the config at local " \
           f"copies: {ways_out} (docs/experiments.md" in line
    assert not models.exists() and not run.exists() and not any(hf.rglob("*"))


def test_printing_the_config_needs_no_hub(tmp_path, monkeypatch):
    """`--cfg job` shows the keys to point at local copies: it must work where the hub cannot be reached."""
    offline_hub(monkeypatch, tmp_path)
    proc = cli("train", "+experiment=imdb", "--cfg", "job", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lvwerra/gpt2-imdb" in proc.stdout and "distilbert-base-cased" in proc.stdout


# ---- the run from local copies ---------------------------------------------------------------------------------

def test_a_local_imdb_copy_is_read_from_its_parquet_files_or_a_save_to_disk_folder(tmp_path):
    from datasets import load_dataset

    from warp_lightning.data.texts import load_texts

    parquet = imdb_stand_in(tmp_path / "imdb", reviews=6)
    load_dataset(str(parquet)).save_to_disk(str(tmp_path / "saved"))  # as `load_dataset("stanfordnlp/imdb")` would
    for split in ("train", "test", None):
        ours, saved = load_texts("imdb", split, path=parquet), load_texts("imdb", split, path=tmp_path / "saved")
        assert ours["text"] == saved["text"] and ours["label"] == saved["label"]
        assert len(ours) == (12 if split is None else 6)


@pytest.mark.slow
def test_the_imdb_experiment_runs_from_local_copies_without_the_hub(tiny_models, asset_cache, tmp_path, monkeypatch):
    """The documented way out, on stand-ins of the same formats (a GPT-2 folder for lvwerra/gpt2-imdb, a DistilBERT
    for distilbert-base-cased, IMDB's parquet files): `train` builds the reward model itself (its `reward` child
    reads the base and the pairs from the local copies) and runs to the end, the hub offline and its cache empty."""
    hf = offline_hub(monkeypatch, tmp_path)
    imdb, models, run_dir = imdb_stand_in(tmp_path / "imdb"), tmp_path / "models", tmp_path / "run"
    reward = "[" + ",".join(f'"{o}"' for o in TINY_REWARD) + "]"
    cli("train", "+experiment=imdb", f"policy.name_or_path={tiny_models / 'models' / 'sft_gpt2'}",
        f"reward_model.base={tiny_distilbert(tmp_path / 'distilbert', asset_cache)}", f"data.path={imdb}",
        f"reward_model.train_data_path={imdb}", f"paths.models_dir={models}", f"reward_model.build_overrides={reward}",
        "warp.iterations=1", "warp.steps=2", "warp.prompts_per_step=2", "warp.samples_per_prompt=2",
        "warp.max_new_tokens=4", "eval.prompts=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    build = json.loads(next(models.glob(".reward_distilbert_imdb.build-*/metrics.json")).read_text())
    assert 0 < build["train_pairs"] <= 24  # pairs of the 48 train reviews of the local copy
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["train_prompts"] == 48 and (run_dir / "final" / "config.json").exists()
    assert manifest["config"]["experiment_name"] == "imdb" and manifest["config"]["data"]["name"] == "imdb"
    assert not any(hf.rglob("models--*"))  # nothing came from the hub


# ---- a failed build says why -------------------------------------------------------------------------------------

def test_build_command_passes_on_where_the_reward_build_reads_from(tmp_path):
    reward = OmegaConf.create({"name_or_path": str(tmp_path / "r"), "build": "reward", "base": "/copies/distilbert",
                               "train_data": "imdb", "train_data_path": None, "build_overrides": ["a.b=1"]})
    cmd = builds.build_command("reward_model", reward, tmp_path / "r", None)
    assert cmd[3:9] == ["reward", f"save_to={tmp_path / 'r'}", "reward_model.base=/copies/distilbert",
                        "reward_model.train_data=imdb", "reward_model.train_data_path=null", "a.b=1"]
    policy = OmegaConf.create({"name_or_path": str(tmp_path / "p"), "build": "sft"})
    assert builds.build_command("policy", policy, tmp_path / "p", None)[3:5] == ["sft", f"save_to={tmp_path / 'p'}"]


def test_last_error_is_the_childs_own_line():
    crash = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad shape\n"
    assert builds.last_error("[INFO] loading\nerror: reward_model.base: no such folder; fix it\n" + crash[:20]) == (
        "reward_model.base: no such folder; fix it")
    assert builds.last_error(crash) == "ValueError: bad shape"
    assert builds.last_error("progress 10%\rprogress 20%\r\n") == "progress 20%" and builds.last_error("") == ""


def test_a_failed_build_gives_its_cause_in_the_parents_line_and_streams_its_stderr(tmp_path, monkeypatch, capfd):
    child = "import sys; print('working', file=sys.stderr); print('error: x.y: the cause; the fix', file=sys.stderr)" \
            "; sys.exit(2)"
    monkeypatch.setattr(builds, "build_command", lambda kind, cfg, path, cache, choice=None: [sys.executable, "-c", child])
    cfg = OmegaConf.create({"name_or_path": str(tmp_path / "models" / "m"), "build": "reward"})
    with pytest.raises(UserError) as err:
        builds.ensure_model("reward_model", cfg)
    assert str(err.value).startswith(f"reward_model.name_or_path: building {tmp_path / 'models' / 'm'} failed: "
                                     "x.y: the cause; the fix (the build: `python -c ")
    assert capfd.readouterr().err == "working\nerror: x.y: the cause; the fix\n"


# ---- third-party records once ------------------------------------------------------------------------------------

def test_hub_and_datasets_records_reach_the_console_once(capfd):
    """Each library's own console handler (added when it is imported, as here) is dropped; the root's prints."""
    for name in ("huggingface_hub", "datasets"):
        logging.getLogger(name).addHandler(logging.StreamHandler())
    seen = []
    root = logging.getLogger()
    handler = logging.Handler()
    handler.emit = seen.append
    root.addHandler(handler)
    try:
        single_handler()
        for name in ("huggingface_hub.utils._http", "datasets.load"):
            logging.getLogger(name).warning("Retrying in 1s [Retry 1/5].")
    finally:
        root.removeHandler(handler)
    assert [r.name for r in seen] == ["huggingface_hub.utils._http", "datasets.load"]
    assert "Retrying" not in capfd.readouterr().err  # no second copy from the libraries' own handlers
