"""front's `merges`: any method of MERGES on any subset and order of an iteration's runs (their last snapshots), the
same function that makes the linear-merge front; on a tiny GPT-2 saved as a fake train run (no evaluation)."""

import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning import UserError
from warp_lightning.algo import merging
from warp_lightning.eval.front import merge_endpoint, parse_merge, run_curves
from warp_lightning.policy.models import load_state

STEPS = 3


def fake_run(tmp_path, runs=3, merge="slerp", merge_options=None):
    """A finished train run of one iteration: its manifest and each run's last snapshot iter_1/run_m/step_0003."""
    torch.manual_seed(0)
    sft = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16, vocab_size=32))
    run_dir = tmp_path / "run"
    for m in range(1, runs + 1):
        model = copy.deepcopy(sft)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(run_dir / "iter_1" / f"run_{m}" / f"step_{STEPS:04d}")
    w = {"seed": 7, "anchor": "ema", "kl_coef": 0.1, "iterations": 1, "runs": runs, "steps": STEPS, "merge": merge,
         "slerp_lambda": 0.5, "merge_options": merge_options or {}}
    (run_dir / "manifest.json").write_text(json.dumps({"config": {"warp": w, "policy": {"name_or_path": "sft"}}}))
    return run_dir, w, sft.state_dict()


def snapshot(run_dir, m):
    return load_state(run_dir / "iter_1" / f"run_{m}" / f"step_{STEPS:04d}")


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_each_merge_is_the_method_of_merges_on_those_runs_in_that_order(tmp_path):
    run_dir, w, theta_sft = fake_run(tmp_path)
    runs = {m: snapshot(run_dir, m) for m in (1, 2, 3)}
    for method, order in [("slerp", (1, 2, 3)), ("slerp", (3, 2, 1)), ("multislerp", (1, 3)), ("ties", (2, 3, 1)),
                          ("linear", (1, 2, 3))]:
        by_hand = merging.MERGES[method].fn(theta_sft, [runs[m] for m in order])
        assert same(merge_endpoint(run_dir, w, 1, theta_sft, method, order)(), by_hand), (method, order)
    # two runs: lambda = warp.slerp_lambda, as the run merged them (the linear front's merge of old)
    w = {**w, "slerp_lambda": 0.3}
    by_hand = merging.linear(theta_sft, [runs[1], runs[2]], 0.3)
    assert same(merge_endpoint(run_dir, w, 1, theta_sft, "linear", (1, 2))(), by_hand)


def test_the_order_matters_to_the_recursive_slerp_of_3_runs_not_of_2():
    """SLERP at lambda = 1/2 is symmetric (the same coefficient on both task vectors, the same angle): runs 2, 1 give
    runs 1, 2 to the bit; from 3 runs the recursion weighs them differently, and the symmetric means do not care."""
    torch.manual_seed(1)
    init = {"w": torch.randn(64), "b": torch.randn(8, 8)}
    runs = [{k: v + torch.randn_like(v) * (m + 1) for k, v in init.items()} for m in range(3)]
    slerp = merging.MERGES["slerp"].fn
    assert same(slerp(init, runs[:2], 0.5), slerp(init, runs[1::-1], 0.5))
    assert same(slerp(init, runs[:2]), slerp(init, runs[1::-1]))  # lam None: the recursion's 1/2 for 2 runs
    forward, backward = slerp(init, runs), slerp(init, runs[::-1])
    assert max((forward[k] - backward[k]).abs().max().item() for k in init) > 1e-3
    for method in ("multislerp", "ties"):
        a, b = merging.MERGES[method].fn(init, runs), merging.MERGES[method].fn(init, runs[::-1])
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in init), method


def test_options_come_from_the_run_where_it_merged_by_that_method(tmp_path):
    run_dir, w, theta_sft = fake_run(tmp_path, merge="ties", merge_options={"density": 0.5})
    runs = [snapshot(run_dir, m) for m in (1, 2)]
    ours = merge_endpoint(run_dir, w, 1, theta_sft, "ties", (1, 2))()
    assert same(ours, merging.ties(theta_sft, runs, density=0.5))
    assert not same(ours, merging.ties(theta_sft, runs))  # otherwise the method's default (density 0.2)
    w = {**w, "merge": "slerp", "merge_options": {"eps": 1e-3}}  # a slerp run's options are not TIES's
    assert same(merge_endpoint(run_dir, w, 1, theta_sft, "ties", (1, 2))(), merging.ties(theta_sft, runs))


def test_run_curves_names_each_merge_and_records_its_method_and_order(tmp_path):
    run_dir, _, theta_sft = fake_run(tmp_path)
    merges = [parse_merge(s) for s in ("slerp:3-2-1", "ties:1-2", "multislerp:1-3", "slerp:1-2-3")]
    curves = run_curves("WARP", run_dir, theta_sft, [0.0, 1.0], [1.0], merges, [0.0, 0.5, 1.0])
    assert [(c.name, c.merge, c.runs) for c in curves] == [
        ("WARP i1", "slerp", ""), ("WARP linear i1", "linear", ""), ("WARP slerp M3 reversed i1", "slerp", "3-2-1"),
        ("WARP ties M2 i1", "ties", "1-2"), ("WARP multislerp runs 1-3 i1", "multislerp", "1-3"),
        ("WARP slerp M3 i1", "slerp", "1-2-3")]
    points = list(curves[2].points())
    assert [where for where, _ in points] == [{"eta": 0.0}, {"eta": 0.5}, {"eta": 1.0}] and points[0][1] is None
    merged = merging.slerp(theta_sft, [snapshot(run_dir, m) for m in (3, 2, 1)])
    assert same(points[2][1], merging.liti(theta_sft, merged, 1.0))
    assert [c.name for c in run_curves("WARP", run_dir, theta_sft, [1.0], [], merges, [])] == ["WARP i1"]
    with pytest.raises(UserError, match=r"merges='slerp:1-4' is invalid: .* has 3 runs per iteration"):
        run_curves("WARP", run_dir, theta_sft, [1.0], [], [parse_merge("slerp:1-4")], [1.0])


@pytest.mark.parametrize("spec", ["slerp:1", "slerp:1-1", "foo:1-2", "slerp:1-x", "slerp", "ties:0-1"])
def test_a_merge_is_method_colon_runs(spec):
    with pytest.raises(UserError, match=rf"merges={spec!r} is invalid: give METHOD:RUNS, e.g. slerp:3-2-1"):
        parse_merge(spec)
    assert parse_merge("ties:4-1") == ("ties", (4, 1))
