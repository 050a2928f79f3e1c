"""Experiments of WARP.md (issue 4): the T sweep, the fronts, the report and its claims, `make reproduce` on the
smoke settings, the analysis notebook, and W&B's offline record of each run's reward and KL curves."""

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli

from warp_lightning.algo import merging
from warp_lightning.eval.report import claims, matched_kl_gap, read_front, sweep_table
from warp_lightning.eval.stats import fmt_ci, markdown_table

REPO = Path(__file__).resolve().parent.parent


# ---- pure functions: no models ------------------------------------------------------------------------------

def point(curve, kind, kl, reward, merge="slerp", anchor="ema", iteration=1, eta="", step=""):
    return {"curve": curve, "kind": kind, "merge": merge, "anchor": anchor, "kl_coef": 0.1, "iteration": iteration,
            "eta": eta, "step": step, "reward_mean": reward, "reward_ci95": 0.01, "kl_mean": kl, "kl_ci95": 0.1}


def front(name, merge, iteration, slope, top_kl=10.0):
    """A LITI front from (0, 0.3): reward rises by `slope` per nat of KL, KL linear in eta."""
    return [point(name, "liti", eta * top_kl, 0.3 + slope * eta * top_kl, merge=merge, iteration=iteration, eta=eta)
            for eta in (0.0, 0.5, 1.0)]


def training(name, anchor, slope, kls=(2.0, 4.0, 8.0)):
    return [point(name, "training", 0.0, 0.3, merge="none", anchor=anchor, step=0.0)] + [
        point(name, "training", kl, 0.3 + slope * kl, merge="none", anchor=anchor, step=float(50 * (j + 1)))
        for j, kl in enumerate(kls)]


def test_matched_kl_gap_interpolates_the_front_in_kl_and_skips_sft_and_outside_points():
    f = front("f", "slerp", 1, 0.05)  # (0, .3), (5, .55), (10, .8)
    pts = training("c", "ema", 0.02, kls=(2.5, 7.5, 12.0))  # 12.0 lies beyond the front's KL range
    gap = matched_kl_gap(f, pts)
    assert gap["compared"] == 2 and gap["outside"] == 1 and gap["above"] == 2
    assert gap["mean_gap"] == pytest.approx(((0.425 - 0.35) + (0.675 - 0.45)) / 2)


def test_claims_verdicts_follow_their_criteria():
    rows = (front("WARP i1", "slerp", 1, 0.04) + front("WARP i2", "slerp", 2, 0.05, top_kl=12)
            + front("WARP linear i1", "linear", 1, 0.035) + front("WARP linear i2", "linear", 2, 0.06, top_kl=8)
            + training("EMA", "ema", 0.03) + training("SFT b0.1", "sft", 0.02) + training("SFT b0.01", "sft", 0.01))
    verdicts = {c["claim"]: c["verdict"] for c in claims(rows)}
    assert verdicts == {
        "EMA anchor beats the fixed SFT anchor": "holds",
        "SLERP beats linear merging in reward": "holds",  # eta = 1: .70 > .65 (i1), .90 > .78 (i2)
        "the LITI front lies above the RL training curve": "holds",
        "iteration 2 improves on iteration 1": "holds",
    }
    worse = [r | {"reward_mean": 0.95} if r["curve"] == "WARP linear i1" and r["eta"] == 1.0 else r for r in rows]
    assert {c["claim"]: c["verdict"] for c in claims(worse)}["SLERP beats linear merging in reward"] == "does not hold"
    only_warp = front("WARP i1", "slerp", 1, 0.04)
    assert {c["verdict"] for c in claims(only_warp)} == {"not measured"}


def test_sweep_table_means_and_t_intervals_over_seeds():
    jobs = [{"steps": t, "seed": s, "iterations": 2, "runs": 2, "reward": r, "kl": 2 * r, "sft_reward": 0.3,
             "seconds": 60.0} for t, s, r in ((50, 0, 0.5), (50, 1, 0.6), (50, 2, 0.7), (100, 0, 0.8), (100, 1, 0.8))]
    table = sweep_table(jobs)
    assert [r["steps"] for r in table] == [50, 100] and table[0]["seeds"] == [0, 1, 2]
    assert table[0]["reward_mean"] == pytest.approx(0.6)
    assert table[0]["reward_ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)  # sd 0.1, t_{.975,2}
    assert table[1]["reward_ci95"] == pytest.approx(0.0, abs=1e-12) and table[0]["kl_mean"] == pytest.approx(1.2)


def test_markdown_helpers():
    assert fmt_ci(0.51234, 0.0213) == "0.512 ± 0.021" and fmt_ci(1.0, float("nan"), 2) == "1.00"
    assert markdown_table(["a", "KL(p || q)"], [[1, 2]]).splitlines() == [
        "| a | KL(p \\|\\| q) |", "|---|---|", "| 1 | 2 |"]


# ---- the chain of `make reproduce REPRO=smoke` on tiny models -----------------------------------------------

@pytest.fixture(scope="module")
def reproduced(tiny_models, tmp_path_factory):
    """`make reproduce REPRO=smoke`: sweep, baselines, evaluate, front, report, into a temporary folder."""
    root = tmp_path_factory.mktemp("reproduce")
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "reproduce", "REPRO=smoke", f"REPRO_DIR={root}",
                           f"REPORTS={root / 'reports'}", f"BIN={Path(sys.executable).parent}",
                           f"REPRO_ARGS=paths.models_dir={tiny_models / 'models'}"],
                          capture_output=True, text=True,
                          # one thread: tiny models gain nothing from two, and two OpenMP threads spin-wait for
                          # minutes when other processes share the 2 cores
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root


EXPECTED_CURVES = {"WARP i1", "WARP linear i1", "WARP i2", "WARP linear i2", "SFT anchor beta 0.01",
                   "SFT anchor beta 0.1", "EMA anchor no merge"}


@pytest.mark.slow
def test_reproduce_smoke_writes_every_report(reproduced):
    reports = reproduced / "reports"
    for name in ("README.md", "sft_vs_warp.md", "sweep_T.md", "sweep_T.csv", "front.md", "front.csv", "claims.md"):
        assert (reports / name).stat().st_size > 100, name
    for name in ("sweep_T.png", "front.png", "warp_curves.png"):
        assert (reports / name).stat().st_size > 10_000, name
    claims_md = (reports / "claims.md").read_text().splitlines()[2:]
    assert len(claims_md) == 4
    assert all(("**holds**" in line) != ("**does not hold**" in line) for line in claims_md)
    readme = (reports / "README.md").read_text()
    assert "![" in readme and "Experiment 1" in readme and "claims" in readme


@pytest.mark.slow
def test_sweep_report_aggregates_every_job_of_the_multirun(reproduced):
    jobs = sorted(p.parent for p in (reproduced / "sweep").glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["T2_seed0", "T2_seed1", "T3_seed0", "T3_seed1"]
    rows = (reproduced / "reports" / "sweep_T.csv").read_text().splitlines()[1:]
    assert len(rows) == 4
    for line in rows:
        steps, seed, reward, kl, _ = line.split(",")
        metrics = json.loads((reproduced / "sweep" / f"T{steps}_seed{seed}" / "metrics.json").read_text())
        assert float(reward) == metrics["final_reward_mean"] and float(kl) == metrics["final_kl_to_sft"]
    table = (reproduced / "reports" / "sweep_T.md").read_text()
    assert "| 2 | 0, 1 |" in table and "| 3 | 0, 1 |" in table and "±" in table


@pytest.mark.slow
def test_front_evaluates_each_curve_with_sft_once(reproduced):
    rows = read_front(reproduced / "front")
    assert {r["curve"] for r in rows} == EXPECTED_CURVES
    for name in ("WARP i1", "WARP i2", "WARP linear i1"):
        assert [r["eta"] for r in rows if r["curve"] == name] == [0.0, 0.5, 1.0]
    for name in ("SFT anchor beta 0.01", "EMA anchor no merge"):
        assert [r["step"] for r in rows if r["curve"] == name] == [0.0, 4.0, 8.0, 12.0]
    sft_points = [r for r in rows if r["eta"] == 0.0 or r["step"] == 0.0]
    assert len(sft_points) == len(EXPECTED_CURVES)
    assert len({(r["reward_mean"], r["kl_mean"]) for r in sft_points}) == 1 and sft_points[0]["kl_mean"] == 0.0
    anchors = {r["curve"]: (r["anchor"], r["kl_coef"]) for r in rows}
    assert anchors["SFT anchor beta 0.01"] == ("sft", 0.01) and anchors["EMA anchor no merge"] == ("ema", 0.1)


@pytest.mark.slow
def test_snapshots_are_the_runs_last_weights_that_the_merge_used(reproduced):
    """The linear-merge front rests on iter_i/run_m/step_T being theta_m: SLERP of them gives iter_i/slerp."""
    from warp_lightning.eval.front import read_run, snapshots
    from warp_lightning.policy.models import load_state

    main = reproduced / "sweep" / "T3_seed0"
    w = read_run(main)["warp"]
    for i, init in ((1, Path(read_run(main)["policy"]["name_or_path"])), (2, main / "iter_1" / "init")):
        theta_init = load_state(init)
        runs = [load_state(snapshots(main, i, m)[w["steps"]]) for m in (1, 2)]
        merged = merging.slerp(theta_init, runs, w["slerp_lambda"])
        saved = load_state(main / f"iter_{i}" / "slerp")
        assert all(torch.allclose(merged[k], saved[k], atol=1e-6) for k in saved), i


@pytest.mark.slow
def test_experiment1_table_has_the_sft_row_and_the_aligned_model(reproduced):
    table = (reproduced / "evaluate" / "table.md").read_text()
    assert table.splitlines()[0].startswith("| model | mean reward | mean KL")
    sft_row, warp_row = table.splitlines()[2:4]
    assert sft_row.startswith("| SFT |") and "| 0.00 ± 0.00 |" in sft_row and warp_row.startswith("| WARP |")
    metrics = json.loads((reproduced / "evaluate" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["SFT", "WARP"] and metrics["model"].endswith("T3_seed0/final")
    assert metrics["reward_mean"] == metrics["models"]["WARP"]["reward_mean"]
    assert (reproduced / "reports" / "sft_vs_warp.md").read_text().startswith(table.splitlines()[0])


@pytest.mark.slow
def test_analysis_notebook_runs_against_the_smoke_reports(reproduced, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WARP_REPORTS_DIR", str(reproduced / "reports"))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert (reproduced / "reports" / "analysis_fronts.png").stat().st_size > 10_000


@pytest.mark.slow
def test_front_refuses_a_folder_that_is_not_a_train_run(tmp_path):
    proc = cli("front", f"run={tmp_path}", f"hydra.run.dir={tmp_path / 'front'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path} is not a finished train run (no manifest.json): "
                                                "pass a train run folder"]


# ---- W&B: the offline run files hold each run's reward and KL series ----------------------------------------

def wandb_records(path: Path):
    """The protobuf records of an offline `.wandb` file.

    The file is a LevelDB-style log (wandb 0.31 writes it from its Go core and ships no Python reader): a
    7-byte header `:W&B` + magic + version, then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a serialized `Record`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of a block
            pos += block - pos % block
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


@pytest.mark.slow
def test_wandb_offline_runs_hold_reward_and_kl_curves_grouped_by_experiment(tiny_models, tmp_path, monkeypatch):
    """Without an API key the W&B logger stays offline by itself (nothing in the harness forces it)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    cli("train", "+experiment=smoke", "logger=wandb", "warp.iterations=1", "warp.steps=3", "eval.prompts=2",
        f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    runs = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        records = list(wandb_records(path))
        info = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
                   for r in records if r.WhichOneof("record_type") == "history"]
        runs[info.display_name] = (info.run_group, history)
    assert sorted(runs) == ["i1_m1", "i1_m2"]
    for group, history in runs.values():
        assert group == "smoke"  # experiment_name
        steps = [h for h in history if "reward_mean" in h]
        assert len(steps) == 3
        assert all(0.0 <= h["reward_mean"] <= 1.0 and math.isfinite(h["kl_anchor"]) for h in steps)
