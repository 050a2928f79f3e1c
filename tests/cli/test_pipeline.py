"""The CLI end to end on tiny settings: sft -> reward -> train (+experiment=smoke), outputs reload."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SMOKE_RUN, cli, first_use_train, given_models
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

pytestmark = pytest.mark.slow

def build_metrics(models: Path, name: str) -> dict:
    """metrics.json of the build of `name` that a first `train` ran (its run folder is next to the model)."""
    return json.loads(next(models.glob(f".{name}.build-*/metrics.json")).read_text())


def test_sft_writes_metrics_and_a_reloadable_policy(tiny_models):
    metrics = build_metrics(tiny_models / "models", "sft_gpt2")
    assert metrics["steps"] == 3 and metrics["val_perplexity"] > 1 and metrics["unigram_perplexity"] > 1
    assert len(metrics["samples"]) == 3
    folder = tiny_models / "models" / "sft_gpt2"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.n_layer == 1 and tok.eos_token_id == 50256
    with torch.no_grad():
        assert model(**tok("a fine film", return_tensors="pt")).logits.shape[-1] == 50257


def test_reward_writes_metrics_and_a_reloadable_scorer(tiny_models):
    metrics = build_metrics(tiny_models / "models", "reward_minilm_rt")
    for key in ("val_pair_accuracy", "sentences_accuracy", "reviews_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    folder = tiny_models / "models" / "reward_minilm_rt"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 1


def test_smoke_experiment_runs_the_whole_loop_and_final_reloads(tiny_models, smoke_run_i2):
    run_dir = smoke_run_i2
    for i in (1, 2):
        for kind in ("slerp", "init"):
            assert (run_dir / f"iter_{i}" / kind / "model.safetensors").exists()
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    AutoTokenizer.from_pretrained(run_dir / "final")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"final_reward_mean", "sft_reward_mean", "seconds"} <= metrics.keys()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [(r["iteration"], r["run"]) for r in manifest["runs"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert len({r["seed"] for r in manifest["runs"]}) == 4
    assert manifest["config"]["warp"]["steps"] == 3
    assert len(manifest["merges"]) == 2 and "angle_deg_mean" in manifest["merges"][0]
    # the final model is the merge: it differs from the SFT policy it started from
    sft = AutoModelForCausalLM.from_pretrained(tiny_models / "models" / "sft_gpt2")
    assert not torch.equal(final.transformer.wte.weight, sft.transformer.wte.weight)
    # per-step logs for each (i, m), with the metrics the issue names
    header = (run_dir / "logs" / "i2_m2" / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("reward_mean", "reward_std", "kl_anchor", "kl_init", "completion_length", "entropy", "loss",
                "grad_norm", "lr", "iteration", "run"):
        assert col in header, col


def test_tensorboard_logger_records_each_run(tiny_models, tmp_path):
    """The CSV logger is the default (every smoke test reads it); W&B: tests/cli/test_experiments.py."""
    run_dir = tmp_path / "run"
    cli("train", "+experiment=smoke", "logger=tensorboard", "warp.iterations=1", "warp.steps=2",
        f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    for run in ("i1_m1", "i1_m2"):
        assert list((run_dir / "tb" / run).glob("events.out.tfevents.*")), run


def test_imdb_experiment_composes_the_classic_recipe():
    from hydra import compose, initialize_config_dir

    from warp_lightning.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train = compose("train", overrides=["+experiment=imdb"])
        reward = compose("reward", overrides=["+experiment=imdb"])
    assert train.policy.name_or_path == "lvwerra/gpt2-imdb" and train.data.name == "imdb"
    assert train.reward_model.name_or_path == reward.save_to and reward.reward_model.base == "distilbert-base-cased"
    assert reward.reward_model.train_data == "imdb"
    w = train.warp
    assert (w.iterations, w.runs, w.steps, w.ema_rate, w.slerp_lambda, w.liti_eta) == (2, 2, 100, 0.01, 0.5, 0.5)


def imdb_stand_in(folder: Path, reviews: int = 48) -> Path:
    """A local copy in the hub IMDB dataset's format: parquet files per split (`text`, `label` 0/1), from
    Pang & Lee reviews, loaded by the same `load_dataset` call as `stanfordnlp/imdb`."""
    from datasets import ClassLabel, Dataset, Features, Value

    from warp_lightning.data.texts import load_texts

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    (folder / "plain_text").mkdir(parents=True)
    for split in ("train", "test"):
        rows = load_texts("reviews", split).shuffle(seed=0).select(range(reviews))
        Dataset.from_dict({"text": rows["text"], "label": rows["label"]}, features=features).to_parquet(
            folder / "plain_text" / f"{split}-00000-of-00001.parquet")
    return folder


def tiny_distilbert(folder: Path, asset_cache: Path) -> Path:
    """A stand-in for `distilbert-base-cased`: a 1-layer DistilBERT with a BERT WordPiece tokenizer (MiniLM's)."""
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    tokenizer = BertTokenizerFast.from_pretrained(asset_cache / "assets" / "minilm")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, hidden_dim=64, n_layers=1, n_heads=2)
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_same_config_and_seed_give_bit_identical_final_weights(tiny_models, smoke_run, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "b"
    cli(*SMOKE_RUN, f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    finals = [load_file(d / "final" / "model.safetensors") for d in (smoke_run, run_dir)]
    metrics = [{k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k != "seconds"}
               for d in (smoke_run, run_dir)]
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert metrics[0] == metrics[1]


def test_notebook_runs_against_smoke_outputs(smoke_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WARP_RUN_DIR", str(smoke_run))
    nb = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "warp_run.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert (smoke_run / "curves.png").stat().st_size > 10_000


def test_train_builds_missing_models_on_first_use(tiny_models, tmp_path):
    """The main job on a fresh machine: `train` runs `sft` and `reward` itself when their folders are missing
    (the suite's tiny models are built that way: conftest.first_use_train)."""
    root = tiny_models
    if given_models():  # models built beforehand: run the first use here
        root = tmp_path
        first_use_train(root)
    log = (root / "run" / "cli.log").read_text()
    for kind, name, command in (("policy", "sft_gpt2", "sft"), ("reward_model", "reward_minilm_rt", "reward")):
        assert (root / "models" / name / "model.safetensors").exists()
        assert f"building it with `python -m warp_lightning {command}` (first use only)" in log, kind
    assert (root / "run" / "final" / "model.safetensors").exists()
