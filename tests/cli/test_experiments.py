"""Experiments of WARP.md (issue 4): the T sweep, the fronts, the report and its claims, `make reproduce` on the
smoke settings, the analysis notebook, and W&B's offline record of each run's reward and KL curves."""

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

from warp_lightning.algo import merging
from warp_lightning.eval.report import (
    NOT_COMPARABLE,
    by_seed,
    claims,
    is_sft_point,
    matched_kl_difference,
    point_key,
    read_front,
    read_front_prompts,
    sweep_selection,
    sweep_table,
)
from warp_lightning.eval.stats import CONTRADICTED, HOLDS, NOT_MEASURED, UNRESOLVED, fmt_ci, markdown_table

REPO = Path(__file__).resolve().parents[2]


# ---- pure functions: no models ------------------------------------------------------------------------------

def point(curve, kind, kl, reward, merge="slerp", anchor="ema", iteration=1, eta="", step="", seed=0.0):
    return {"curve": curve, "arm": curve.split(" i")[0], "seed": seed, "kind": kind, "merge": merge,
            "anchor": anchor, "kl_coef": 0.1, "iteration": iteration, "eta": eta, "step": step, "reward_mean": reward,
            "reward_ci95": 0.01, "judge_mean": reward / 2, "judge_ci95": 0.01, "kl_mean": kl, "kl_ci95": 0.1}


def front(name, merge, iteration, slope, top_kl=10.0, seed=0.0):
    """A LITI front from (0, 0.3): reward rises by `slope` per nat of KL, KL linear in eta."""
    return [point(name, "liti", eta * top_kl, 0.3 + slope * eta * top_kl, merge=merge, iteration=iteration, eta=eta,
                  seed=seed) for eta in (0.0, 0.5, 1.0)]


def training(name, anchor, slope, kls=(2.0, 4.0, 8.0)):
    return [point(name, "training", 0.0, 0.3, merge="none", anchor=anchor, step=0.0)] + [
        point(name, "training", kl, 0.3 + slope * kl, merge="none", anchor=anchor, step=float(50 * (j + 1)))
        for j, kl in enumerate(kls)]


def scores_of(rows, noise=0.02, prompts=200, seed=0):
    """Per-prompt scores whose means are the rows' means: a prompt effect shared by every point (what pairing
    removes) plus `noise` of each point's own."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.2, prompts)
    out = {}
    for r in rows:
        values = {}
        for metric in ("reward", "judge"):
            own = rng.normal(0, noise, prompts)
            values[metric] = r[f"{metric}_mean"] + shared - shared.mean() + own - own.mean()
        out[point_key(r)] = {"ids": np.arange(prompts), **values}
    return out


def matched_kl_gap(front: list[dict], points: list[dict]) -> dict:
    """(A hand computation to check `matched_kl_difference` against.) How far `front` lies above `points` at the same KL, on the means: front reward, interpolated linearly in
    KL, minus the point's reward, for every point (but theta_sft, shared by all) inside the front's KL range."""
    ref = sorted(front, key=lambda r: r["kl_mean"])
    kl, reward = np.array([r["kl_mean"] for r in ref]), np.array([r["reward_mean"] for r in ref])
    inside = [p for p in points if not is_sft_point(p) and kl[0] <= p["kl_mean"] <= kl[-1]]
    gaps = [float(np.interp(p["kl_mean"], kl, reward)) - p["reward_mean"] for p in inside]
    return {"mean_gap": sum(gaps) / len(gaps) if gaps else float("nan"), "above": sum(g > 0 for g in gaps),
            "compared": len(gaps), "outside": len([p for p in points if not is_sft_point(p)]) - len(gaps)}


def test_matched_kl_gap_interpolates_the_front_in_kl_and_skips_sft_and_outside_points():
    f = front("f", "slerp", 1, 0.05)  # (0, .3), (5, .55), (10, .8)
    pts = training("c", "ema", 0.02, kls=(2.5, 7.5, 12.0))  # 12.0 lies beyond the front's KL range
    gap = matched_kl_gap(f, pts)
    assert gap["compared"] == 2 and gap["outside"] == 1 and gap["above"] == 2
    assert gap["mean_gap"] == pytest.approx(((0.425 - 0.35) + (0.675 - 0.45)) / 2)
    # the paired version: per prompt, the same gap (the prompt effect cancels), and one point beyond the range
    found = matched_kl_difference(by_seed(f), by_seed(pts), "reward", scores_of(f + pts, noise=0.0))
    assert found["diff"].mean == pytest.approx(gap["mean_gap"]) and (found["points"], found["outside"]) == (2, 1)
    assert found["diff"].low == pytest.approx(gap["mean_gap"]) == pytest.approx(found["diff"].high)


def test_matched_kl_gap_refuses_curves_scored_on_other_prompts():
    """The pairing is by prompt: a curve scored on other prompts (as many of them) gives no interval, as the end
    points' comparison does, rather than pairing prompt 0 of one with prompt 10 of the other."""
    f = front("f", "slerp", 1, 0.05)
    pts = training("c", "ema", 0.02, kls=(2.5, 7.5))
    scores = scores_of(f + pts, noise=0.0, prompts=4)
    for r in pts:
        scores[point_key(r)]["ids"] = np.arange(10, 14)
    found = matched_kl_difference(by_seed(f), by_seed(pts), "reward", scores)
    assert found["diff"] is None and "shared prompts" in found["why"] and found["points"] == 2
    # and across the seeds of one curve: its second seed on other prompts
    two = front("f", "slerp", 1, 0.05) + front("f", "slerp", 1, 0.05, seed=1.0)
    scores = scores_of(two + pts, noise=0.0, prompts=4)
    for r in two[3:]:
        scores[point_key(r)]["ids"] = np.arange(10, 14)
    assert matched_kl_difference(by_seed(two), by_seed(pts), "reward", scores)["diff"] is None


ROWS = (front("WARP i1", "slerp", 1, 0.04) + front("WARP i2", "slerp", 2, 0.05, top_kl=12)
        + front("WARP linear i1", "linear", 1, 0.035) + front("WARP linear i2", "linear", 2, 0.06, top_kl=8)
        + training("EMA", "ema", 0.03) + training("SFT b0.1", "sft", 0.02) + training("SFT b0.01", "sft", 0.01))
CLAIMS = ("EMA anchor beats the fixed SFT anchor", "SLERP beats linear merging in reward",
          "the LITI front lies above the RL training curve", "iteration 2 improves on iteration 1")


def verdicts(rows, scores):
    return {c["claim"]: (c["verdict"], c["verdict_judge"]) for c in claims(rows, scores)}


def test_claims_hold_when_every_paired_interval_lies_above_zero():
    found = claims(ROWS, scores_of(ROWS))
    assert {c["claim"]: (c["verdict"], c["verdict_judge"]) for c in found if c["claim"] in CLAIMS} == \
        {c: (HOLDS, HOLDS) for c in CLAIMS}
    expo = next(c for c in found if "ExPO" in c["claim"])
    assert expo["verdict"] == NOT_MEASURED and "etas above 1" in expo["evidence"]  # no eta > 1 on these fronts
    slerp = next(c for c in found if c["claim"] == CLAIMS[1])
    # eta = 1: .70 - .65 at iteration 1, .90 - .78 at iteration 2, with intervals and the detectable difference
    assert [c["reward"]["mean"] for c in slerp["comparisons"]] == pytest.approx([0.05, 0.12])
    assert "reward +0.050 [" in slerp["evidence"] and "MDE" in slerp["evidence"] and "200 prompts" in slerp["evidence"]


def test_claims_are_contradicted_when_an_interval_lies_below_zero():
    worse = [r | {"reward_mean": 0.95} if r["curve"] == "WARP linear i1" and r["eta"] == 1.0 else r for r in ROWS]
    assert verdicts(worse, scores_of(worse))[CLAIMS[1]] == (CONTRADICTED, HOLDS)  # the judge still prefers SLERP
    flipped = [r | {"reward_mean": 0.3 + 0.04 * r["kl_mean"]} if r["curve"] == "SFT b0.1" else r for r in ROWS]
    assert verdicts(flipped, scores_of(flipped))[CLAIMS[0]][0] == CONTRADICTED  # SFT b0.1 above EMA (0.03 / nat)


def test_claims_stay_unresolved_when_the_interval_straddles_zero_with_the_detectable_difference():
    close = [r | {"reward_mean": r["reward_mean"] - 0.04} if r["curve"] == "WARP i1" and r["eta"] == 1.0 else r
             for r in ROWS]  # .66 against .65: a 0.01 gain, under noise of 0.5 per prompt and point
    found = {c["claim"]: c for c in claims(close, scores_of(close, noise=0.5))}
    slerp = found[CLAIMS[1]]
    assert slerp["verdict"] == UNRESOLVED
    d = slerp["comparisons"][0]["reward"]
    assert d["low"] < 0 < d["high"] and d["mde"] == pytest.approx(2.8016 * d["se"], rel=1e-3) and d["mde"] > 0.01


def test_claims_without_overlapping_kl_range_are_not_comparable():
    """Curves with no KL in common: no sample size resolves that, so the claim is not comparable, not unresolved."""
    far = [r for r in ROWS if not r["curve"].startswith("SFT")] + training("SFT far", "sft", 0.001, kls=(20, 30, 40))
    found = {c["claim"]: c for c in claims(far, scores_of(far))}
    assert (found[CLAIMS[0]]["verdict"], found[CLAIMS[0]]["verdict_judge"]) == (NOT_COMPARABLE, NOT_COMPARABLE)
    assert "no overlapping KL range" in found[CLAIMS[0]]["evidence"]
    # a claim with another comparison is judged by it: the front against the EMA curve (the SFT curve out of range)
    liti = found[CLAIMS[2]]
    said = f"{HOLDS} (1 of 2 comparisons; 1 with no overlapping KL range)"
    assert (liti["verdict"], liti["verdict_judge"]) == (said, said) and "no overlapping KL range" in liti["evidence"]


def test_claims_need_their_runs_and_per_prompt_scores():
    only_warp = front("WARP i1", "slerp", 1, 0.04)
    assert {c["verdict"] for c in claims(only_warp, scores_of(only_warp))} == {NOT_MEASURED}
    no_scores = [c for c in claims(ROWS, None) if c["claim"] in CLAIMS]  # (no eta > 1: ExPO's is not measured)
    assert {c["verdict"] for c in no_scores} == {UNRESOLVED}
    assert all("front_prompts.csv" in c["evidence"] for c in no_scores)


def test_claims_read_each_iterations_own_merge_not_a_fronts_other_merges_of_the_same_runs():
    """`front merges=[...]` adds curves of the same iteration (with `runs`, the merge order): the claims read the
    iteration's own merge, whatever comes after it in the rows."""
    other = [r | {"curve": "WARP slerp M2 reversed i2", "runs": "2-1", "reward_mean": r["reward_mean"] - 0.3}
             for r in front("x", "slerp", 2, 0.05, top_kl=12)]
    found = {c["claim"]: c for c in claims(ROWS + other, scores_of(ROWS + other))}
    assert found[CLAIMS[2]]["comparisons"][0]["what"].startswith("WARP i2 over")
    assert (found[CLAIMS[2]]["verdict"], found[CLAIMS[3]]["verdict"]) == (HOLDS, HOLDS)


def test_claims_resample_the_seeds_of_an_arm_with_several():
    rows = [r for r in ROWS if not r["curve"].startswith("WARP")]
    for seed, slope in ((0.0, 0.04), (1.0, 0.045), (2.0, 0.035)):
        rows += front("WARP i1", "slerp", 1, slope, seed=seed) + front("WARP i2", "slerp", 2, slope + 0.01, 12, seed)
        rows += front("WARP linear i1", "linear", 1, slope - 0.005, seed=seed)
    found = {c["claim"]: c for c in claims(rows, scores_of(rows))}
    liti = found[CLAIMS[2]]["comparisons"][0]["reward"]
    assert liti["seeds"] == [3, 1] and liti["low"] < liti["mean"] < liti["high"]
    slerp = found[CLAIMS[1]]["comparisons"][0]["reward"]
    assert slerp["seeds"] == [3, 3] and slerp["mean"] == pytest.approx(0.05)  # same runs: seeds paired
    assert found[CLAIMS[3]]["verdict"] == HOLDS


def test_sweep_table_means_and_t_intervals_over_seeds_and_the_validation_selection():
    jobs = [{"steps": t, "seed": s, "iterations": 2, "runs": 2, "reward": r, "kl": 2 * r, "sft_reward": 0.3,
             "judge": r / 2, "seconds": 60.0, "split": "validation", "objective": "final_reward_mean", "mode": "max",
             "objective_value": r}
            for t, s, r in ((50, 0, 0.5), (50, 1, 0.6), (50, 2, 0.7), (100, 0, 0.8), (100, 1, 0.8))]
    table = sweep_table(jobs)
    assert [r["steps"] for r in table] == [50, 100] and table[0]["seeds"] == [0, 1, 2]
    assert table[0]["reward_mean"] == pytest.approx(0.6) and table[0]["judge_mean"] == pytest.approx(0.3)
    assert table[0]["reward_ci95"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)  # sd 0.1, t_{.975,2}
    assert table[1]["reward_ci95"] == pytest.approx(0.0, abs=1e-12) and table[0]["kl_mean"] == pytest.approx(1.2)
    assert sweep_selection(jobs, table)["steps"] == 100
    on_test = [j | {"split": "test"} for j in jobs]
    assert sweep_selection(on_test, table)["steps"] is None  # never select on test prompts


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
                          capture_output=True, text=True)  # one thread, as every test process (conftest)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root


EXPECTED_CURVES = {"WARP i1", "WARP linear i1", "WARP i2", "WARP linear i2", "SFT anchor beta 0.1",
                   "EMA anchor no merge"}


@pytest.mark.slow
def test_reproduce_smoke_writes_every_report(reproduced):
    reports = reproduced / "reports"
    for name in ("README.md", "sft_vs_warp.md", "sweep_T.md", "sweep_T.csv", "front.md", "front.csv", "claims.md",
                 "claims.json"):
        assert (reports / name).stat().st_size > 100, name
    for name in ("sweep_T.png", "front.png", "warp_curves.png"):
        assert (reports / name).stat().st_size > 10_000, name
    claims_md = [line for line in (reports / "claims.md").read_text().splitlines()[2:] if line.startswith("| ")]
    assert len(claims_md) == 6  # the four of WARP.md, SLERP vs linear at matched KL too, and ExPO's (not measured:
    # the smoke front stops at eta = 1)
    verdicts = ("**holds**", "**contradicted**", "**unresolved at this sample size**",
                "**not comparable (no overlapping KL range)**")
    for line in claims_md:  # every claim is measured by the smoke chain, on the proxy reward and on the judge
        cells = [c.strip() for c in line.split(" | ")]
        if "ExPO" in cells[0]:  # the smoke front stops at eta = 1: nothing to extrapolate
            assert cells[1] == cells[2] == "**not measured**", line
            continue
        for cell in cells[1:3]:  # a comparison of curves with no KL in common is left out, and said so
            assert re.sub(r" \(\d+ of \d+ comparisons; \d+ with no overlapping KL range\)", "", cell) in verdicts, line
        # measured: its differences with their MDE on the shared prompts, or curves that share no KL range
        assert ("MDE" in line and "prompts" in line) or "no overlapping KL range" in line, line
    assert "MDE" in (reports / "claims.md").read_text().split("\n\n")[-1]
    readme = (reports / "README.md").read_text()
    assert "![" in readme and "Experiment 1" in readme and "claims" in readme
    completions = (reports / "sft_vs_warp.md").read_text().split("Completions of the first prompts")[1]
    rows = [line for line in completions.splitlines() if line.startswith("| ") and "prompt |" not in line]
    assert len(rows) == 4 and all(line.count(" / ") >= 2 for line in rows)  # 4 prompts in subsample 0; SFT, WARP


@pytest.mark.slow
def test_sweep_report_aggregates_every_job_of_the_multirun(reproduced):
    jobs = sorted(p.parent for p in (reproduced / "sweep").glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["T2_seed0", "T3_seed0", "T3_seed1"]
    rows = (reproduced / "reports" / "sweep_T.csv").read_text().splitlines()[1:]
    assert len(rows) == 3
    for line in rows:
        steps, seed, reward, kl, _, judge = line.split(",")
        metrics = json.loads((reproduced / "sweep" / f"T{steps}_seed{seed}" / "metrics.json").read_text())
        assert float(reward) == metrics["final_reward_mean"] and float(kl) == metrics["final_kl_mean"]
        assert float(judge) == metrics["final_judge_mean"] and metrics["eval_split"] == "validation"
        assert metrics["judge_accuracy"] >= 0.70
        assert metrics["reward_gain_low"] <= metrics["reward_gain"] <= metrics["reward_gain_high"]
    table = (reproduced / "reports" / "sweep_T.md").read_text()
    assert "| 2 | 0 |" in table and "| 3 | 0, 1 |" in table and "±" in table
    assert "Selected by the sweep's objective `final_reward_mean`: **T = " in table


@pytest.mark.slow
def test_front_evaluates_each_curve_with_sft_once(reproduced):
    rows = read_front(reproduced / "front")
    assert {r["curve"] for r in rows} == EXPECTED_CURVES
    assert {(r["arm"], r["seed"]) for r in rows if r["arm"] == "WARP"} == {("WARP", 0), ("WARP", 1)}  # an arm of 2 seeds
    for name in ("WARP i1", "WARP i2", "WARP linear i1"):
        for seed in (0, 1):
            assert [r["eta"] for r in rows if r["curve"] == name and r["seed"] == seed] == [0.0, 0.5, 1.0]
    for name in ("SFT anchor beta 0.1", "EMA anchor no merge"):
        assert [r["step"] for r in rows if r["curve"] == name] == [0.0, 4.0, 8.0, 12.0]
    sft_points = [r for r in rows if r["eta"] == 0.0 or r["step"] == 0.0]
    assert len(sft_points) == len({(r["curve"], r["seed"]) for r in rows}) == 4 * 2 + 2
    assert len({(r["reward_mean"], r["kl_mean"]) for r in sft_points}) == 1 and sft_points[0]["kl_mean"] == 0.0
    anchors = {r["curve"]: (r["anchor"], r["kl_coef"]) for r in rows}
    assert anchors["SFT anchor beta 0.1"] == ("sft", 0.1) and anchors["EMA anchor no merge"] == ("ema", 0.1)
    assert all(0.0 <= r["judge_mean"] <= 1.0 for r in rows)
    scores = read_front_prompts(reproduced / "front")  # the same 8 test prompts for every point
    assert len(scores) == len(rows) and {len(s["ids"]) for s in scores.values()} == {8}
    assert len({tuple(s["ids"]) for s in scores.values()}) == 1
    sft = [scores[point_key(r)] for r in sft_points]
    assert all(np.array_equal(s["reward"], sft[0]["reward"]) for s in sft) and not sft[0]["kl"].any()


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
    assert table.splitlines()[0].startswith("| model | mean reward (proxy) | mean judge | reward - SFT (paired) |")
    sft_row, warp_row = table.splitlines()[2:4]
    assert sft_row.startswith("| SFT |") and "| 0.00 ± 0.00 |" in sft_row and warp_row.startswith("| WARP |")
    metrics = json.loads((reproduced / "evaluate" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["SFT", "WARP"] and metrics["model"].endswith("T3_seed0/final")
    assert metrics["reward_mean"] == metrics["models"]["WARP"]["reward_mean"]
    assert metrics["split"] == "test" and metrics["prompts"] == 8 and metrics["judge"]["accuracy"] >= 0.70
    assert 0 <= metrics["judge_mean"] <= 1 and metrics["judge_ci95"] >= 0
    for key in ("reward", "judge"):  # the paired difference WARP - SFT, same prompts and random numbers
        assert metrics[f"{key}_diff_low"] <= metrics[f"{key}_diff_mean"] <= metrics[f"{key}_diff_high"]
        assert metrics[f"{key}_diff_mean"] == pytest.approx(metrics[f"{key}_mean"]
                                                             - metrics["models"]["SFT"][f"{key}_mean"])
    assert "reward_diff_mean" not in metrics["models"]["SFT"]
    completions = (reproduced / "evaluate" / "completions.csv").read_text().splitlines()
    assert len(completions) >= 17 and "judge" in completions[0]
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
