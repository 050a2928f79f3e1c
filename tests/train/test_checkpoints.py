"""loop.pt through `WarpState.state_dict`, in the layout earlier versions wrote; the one checkpoint reader; the
config comparison of a resume (train/checkpoint.py, runtime/resume.py)."""

import pytest
import torch

from warp_lightning import UserError
from warp_lightning.algo.state import WarpState
from warp_lightning.runtime.resume import FORMAT, StopCheckpoint, read_checkpoint
from warp_lightning.train.checkpoint import LOOP, RunCheckpoint, load_loop, run_path, save_loop
from warp_lightning.train.commands import SFT, TRAIN

CONFIG = {"warp": {"kl_coef": 0.1, "steps": 3}, "paths": {"output_dir": "a"}}


def state(value: float) -> WarpState:
    s = WarpState({"w": torch.zeros(2)}, 2)
    s.theta_init, s.theta_slerp = {"w": torch.full((2,), value)}, {"w": torch.full((2,), value + 1)}
    s.runs, s.iteration, s.merge_stats = [{"w": torch.full((2,), value + 2)}], 2, [{"angle": value}]
    return s


def test_loop_pt_round_trips_the_warp_state_and_removes_the_recorded_runs_checkpoints(tmp_path):
    run_path(tmp_path, 1).write_bytes(b"done")
    run_path(tmp_path, 2).write_bytes(b"in progress")
    save_loop(tmp_path, state(3.0), (2, 1), [{"run": 1}], CONFIG)
    assert not run_path(tmp_path, 1).exists() and run_path(tmp_path, 2).exists()
    restored = WarpState({"w": torch.zeros(2)}, 2)
    other_paths = {**CONFIG, "paths": {"output_dir": "b"}}  # where outputs go does not change the result
    assert load_loop(tmp_path, restored, other_paths, TRAIN.resume) == ((2, 1), [{"run": 1}])
    assert torch.equal(restored.theta_init["w"], torch.full((2,), 3.0))
    assert torch.equal(restored.theta_slerp["w"], torch.full((2,), 4.0))
    assert torch.equal(restored.runs[0]["w"], torch.full((2,), 5.0))
    assert (restored.iteration, restored.merge_stats) == (2, [{"angle": 3.0}])


def test_a_loop_pt_of_the_earlier_layout_still_resumes(tmp_path):
    """The keys save_loop wrote by hand before `WarpState.state_dict`."""
    old = state(1.0)
    torch.save({"format": 1, "done": [1, 2], "config": CONFIG, "runs": [], "theta_init": old.theta_init,
                "theta_slerp": old.theta_slerp, "finished": old.runs, "iteration": 2,
                "merge_stats": old.merge_stats}, tmp_path / LOOP)
    restored = WarpState({"w": torch.zeros(2)}, 2)
    assert load_loop(tmp_path, restored, CONFIG) == ((1, 2), [])
    assert torch.equal(restored.theta_init["w"], old.theta_init["w"]) and restored.merge_stats == old.merge_stats


def test_another_config_is_refused_naming_the_first_difference(tmp_path):
    save_loop(tmp_path, state(0.0), (1, 1), [], CONFIG)
    changed = {**CONFIG, "warp": {"kl_coef": 0.5, "steps": 3}}
    with pytest.raises(UserError, match=r"^warp.kl_coef \(0.1 then, 0.5 now\) differs from the run being resumed"):
        load_loop(tmp_path, WarpState({"w": torch.zeros(2)}, 2), changed)


def test_a_resume_may_change_the_keys_of_the_commands_record_and_no_other(tmp_path):
    """train's record: where outputs go, how it logs and evaluates, and the checkpoint cadence (a dotted key)."""
    config = {**CONFIG, "warp": {**CONFIG["warp"], "checkpoint_every": 10}}
    save_loop(tmp_path, state(0.0), (1, 1), [], config)
    cadence = {**config, "warp": {**config["warp"], "checkpoint_every": 3}, "logger": {"name": "wandb"}}
    assert load_loop(tmp_path, WarpState({"w": torch.zeros(2)}, 2), cadence, TRAIN.resume) == ((1, 1), [])
    with pytest.raises(UserError, match=r"^warp.checkpoint_every \(10 then, 3 now\) differs"):  # sft's record: no
        load_loop(tmp_path, WarpState({"w": torch.zeros(2)}, 2), cadence, SFT.resume)
    with pytest.raises(UserError, match=r"^warp.steps \(3 then, 4 now\) differs"):
        load_loop(tmp_path, WarpState({"w": torch.zeros(2)}, 2), {**config, "warp": {**config["warp"], "steps": 4}},
                  TRAIN.resume)


def test_the_reader_names_a_file_it_cannot_read(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"checkpoint .*x.ckpt cannot be read .*; delete it to start that run again"):
        read_checkpoint(tmp_path / "x.ckpt")
    torch.save({"format": FORMAT + 1}, tmp_path / "y.ckpt")
    with pytest.raises(UserError, match="has an unknown format"):
        read_checkpoint(tmp_path / "y.ckpt")


def test_an_sft_checkpoint_of_the_earlier_layout_resumes_and_its_config_is_compared(tmp_path):
    path = tmp_path / "checkpoints" / "resume.ckpt"
    path.parent.mkdir()
    torch.save({"global_step": 4, "warp_resume": {"config": {"sft": {"lr": 1}}}}, path)
    assert StopCheckpoint(path, config={"sft": {"lr": 1}, "save_to": "elsewhere"},
                          may_change=SFT.resume).resume_from() == path
    resumed = StopCheckpoint(path, config={"sft": {"lr": 1}})
    resumed.resume_from()
    assert resumed.resumed_at == 4
    with pytest.raises(UserError, match=r"^sft.lr \(1 then, 2 now\) differs"):
        StopCheckpoint(path, config={"sft": {"lr": 2}}).resume_from()


def test_a_run_checkpoint_of_another_run_is_not_resumed(tmp_path):
    path = run_path(tmp_path, 2)
    torch.save({"warp": {"format": FORMAT, "iteration": 1, "run": 2, "step": 2}}, path)
    stale = StopCheckpoint(path, tags={"iteration": 2, "run": 2})  # iteration 2's run 2: the file is iteration 1's
    assert stale.resume_from() is None and stale.resumed_at == 0
    ours = StopCheckpoint(path, tags={"iteration": 1, "run": 2})
    assert ours.resume_from() == path and ours.resumed_at == 2


def test_a_run_checkpoint_compares_its_config_before_loop_pt_exists(tmp_path):
    """Iteration 1's first run has no loop.pt to compare against: its own checkpoint keeps the config, and a resume
    with another one (but for TRAIN.resume's keys) is refused instead of mixing the two."""
    config = {"warp": {"kl_coef": 0.1, "checkpoint_every": 10}, "paths": {"root": "a"}}
    path = run_path(tmp_path, 1)
    torch.save({"warp": {"format": FORMAT, "iteration": 1, "run": 1, "step": 50, "config": config}}, path)
    same = {**config, "paths": {"root": "b"}, "warp": {**config["warp"], "checkpoint_every": 5}}
    assert RunCheckpoint(path, 10, 1, 1, config=same, may_change=TRAIN.resume).resume_from() == path
    with pytest.raises(UserError, match=r"^warp.kl_coef \(0.1 then, 0.5 now\) differs"):
        RunCheckpoint(path, 10, 1, 1, config={**config, "warp": {"kl_coef": 0.5, "checkpoint_every": 10}},
                      may_change=TRAIN.resume).resume_from()

