"""`WarpRecipe` itself, in this process (no CLI): `setup` finds nothing done, `loop` trains the I x M runs and merges
each iteration, `write_final` writes final/ and manifest.json; a second recipe on the same folder finds the loop
done and the same merged weights (what `train` run again does)."""

import json

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from warp_lightning.cli import CONF_DIR
from warp_lightning.policy.models import load_state
from warp_lightning.train.loop import WarpRecipe


def recipe(run_dir, models) -> WarpRecipe:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["+experiment=smoke", "warp.iterations=1", "warp.steps=2", "eval.prompts=2",
                                 f"paths.models_dir={models}"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)  # what a Hydra app sets at start (`cfg_output_dir` reads it)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]  # as the app's own config: without the hydra node
    return WarpRecipe(cfg)


def test_the_recipe_trains_merges_writes_final_and_a_second_one_finds_it_done(tiny_models, tmp_path):
    run_dir = tmp_path / "run"
    first = recipe(run_dir, tiny_models / "models")
    first.setup()
    assert first.runs_to_train(1) == [1, 2] and first.state.iteration == 1
    theta_sft = {k: v.clone() for k, v in first.state.theta_sft.items()}
    first.loop()
    assert [(r["iteration"], r["run"]) for r in first.run_records] == [(1, 1), (1, 2)]
    merged = first.state.theta_slerp
    assert any(not torch.equal(merged[k], theta_sft[k]) for k in theta_sft)  # RL moved the weights
    metrics = first.write_final(started=0.0)
    assert set(metrics) >= {"final_reward_mean", "sft_reward_mean", "reward_gain", "final_kl_mean", "rl_steps"}
    assert metrics["rl_steps"] == 1 * 2 * 2
    final = load_state(run_dir / "final")
    assert all(torch.equal(final[k], merged[k].to(final[k].dtype)) for k in final)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2 and manifest["metrics"]["reward_gain"] == metrics["reward_gain"]

    again = recipe(run_dir, tiny_models / "models")
    again.setup()  # loop.pt says iteration 1 merged: nothing left to train
    assert again.runs_to_train(1) == []
    again.loop()
    assert all(torch.equal(again.state.theta_slerp[k], merged[k]) for k in merged)
