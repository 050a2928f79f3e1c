"""A study's declaration: its jobs, their independence, their state, what `action=run` starts."""

import json
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.algo.state import derive_seed
from warp_lightning.cli import CONF_DIR
from warp_lightning.runtime.lock import claim_run_dir, holder, release_run_dir
from warp_lightning.studies import command
from warp_lightning.studies.command import listing, states, to_run
from warp_lightning.studies.jobs import (
    DONE,
    MISSING,
    RUNNING,
    STALE,
    check_declaration,
    expected_minutes,
    job_state,
    merge_experiments,
    study_jobs,
)
from warp_lightning.studies.results import git_commit
from warp_lightning.utils.paths import RunLayout


def load(name: str):
    return OmegaConf.load(CONF_DIR / "study" / f"{name}.yaml")


@pytest.mark.parametrize("name", ["default", "smoke", "smollm2", "chat", "merges", "warm"])
def test_arms_are_independent(name):
    """No two jobs of a study share a seed of any run (derive_seed(warp.seed, i, m), which also orders the run's
    prompts and seeds its sampling): the EMA-anchor baseline is not WARP's run (1, 1) continued."""
    study = load(name)
    check_declaration(study)
    seen = {}
    for job in study_jobs(study):
        cfg = OmegaConf.from_dotlist([o for o in job.train if not o.startswith("+")])
        iterations = int(cfg.get("warp", {}).get("iterations", 5 if job.arm == "warp" else 1))
        for i in range(1, iterations + 1):
            for m in range(1, int(cfg.get("warp", {}).get("runs", 2)) + 1):
                seed = derive_seed(job.warp_seed, i, m)
                assert seen.setdefault(seed, job.name) == job.name, f"{job.name} and {seen[seed]} share run seed {seed}"
    names = [j.name for j in study_jobs(study)]
    assert len(set(names)) == len(names)


def test_overlapping_seed_ranges_are_refused():
    study = load("default")
    study.arms.ema_anchor.seed_base = 3
    with pytest.raises(UserError, match=r"study.arms.ema_anchor.seed_base=3 is invalid: its seeds overlap those of arm warp"):
        check_declaration(study)


def test_jobs_go_seed_by_seed_and_declare_the_default_claims():
    jobs = study_jobs(load("default"))
    assert [j.name for j in jobs[:4]] == ["warp-s0", "ema_anchor-s0", "sft_anchor-s0", "T50-s0"]
    arms = {j.arm: 0 for j in jobs}
    for j in jobs:
        arms[j.arm] += 1
    assert arms == {"warp": 5, "ema_anchor": 5, "sft_anchor": 5, "T50": 3, "T100": 3, "T150": 3}
    warp = jobs[0]
    assert "warp.iterations=5" in warp.train and warp.train[0] == "+experiment=study"
    ema = jobs[1]
    assert ema.train[0] == "+experiment=[study,baseline_ema_nomerge]" and "warp.snapshot_every=20" in ema.train
    assert ema.front is not None and jobs[3].front is None  # the sweep reads the end-of-train check


def test_merge_experiments():
    assert merge_experiments(["+experiment=a", "x=1", "+experiment=b"]) == ["+experiment=[a,b]", "x=1"]
    assert merge_experiments(["+experiment=[a,b]", "+experiment=c"]) == ["+experiment=[a,b,c]"]
    assert merge_experiments(["+experiment=a"]) == ["+experiment=a"]
    assert merge_experiments(["x=1"]) == ["x=1"]


def test_state_done_missing_stale():
    jobs = study_jobs(load("smoke"))
    job = jobs[0]
    header = {"numerics": 1, "definition": job.definition()}
    assert job_state(job, {}, 1) == (MISSING, "")
    assert job_state(job, {job.name: header}, 1) == (DONE, "")
    assert job_state(job, {job.name: header}, 2)[0] == STALE
    assert job_state(job, {job.name: {**header, "definition": {"train": [], "front": None}}}, 1)[0] == STALE
    # the label names its front's curves: results under another label would not pool with the arm's
    assert job_state(job, {job.name: {**header, "label": job.label}}, 1) == (DONE, "")
    assert job_state(job, {job.name: {**header, "label": "WARP5"}}, 1) == (
        STALE, f"its arm's label changed ('WARP5' then, {job.label!r} now)")


def test_an_arm_with_no_seeds_is_refused():
    study = load("default")
    study.arms.T50.seeds = 0
    with pytest.raises(UserError, match=r"study.arms.T50.seeds=0 is invalid: must be at least 1"):
        check_declaration(study)


def job_cfg(tmp_path, study="smoke"):
    return OmegaConf.create({"study": load(study), "results_dir": str(tmp_path / "results"),
                             "work_dir": str(tmp_path / "work"), "jobs": [], "budget_minutes": None, "extra": [],
                             "keep_models": False})


def test_a_job_holds_its_folder_keeps_each_steps_minutes_and_refuses_outputs_of_another_definition(
        tmp_path, monkeypatch):
    """The job's own lock (listed running, whichever step it is in), its finished steps' seconds written as each
    ends (a later step's failure does not lose them), and a folder of another definition refused, not reused."""
    cfg = job_cfg(tmp_path)
    job = study_jobs(cfg.study)[0]  # warp-s0: train, then front
    folder = tmp_path / "work" / "smoke" / job.name
    seen = []

    def step(name, cmd):
        seen.append((name, states(cfg)[0][0][1:]))
        if name.endswith("front"):
            raise UserError("front failed")
        RunLayout(folder / "train").manifest.parent.mkdir(parents=True, exist_ok=True)
        RunLayout(folder / "train").manifest.write_text("{}")
        return 12.0

    monkeypatch.setattr(command, "run_step", step)
    with pytest.raises(UserError, match="front failed"):
        command.run_job(cfg, job)
    pid = os.getpid()
    assert seen == [(f"{job.name} train", (RUNNING, f"pid {pid}, 0 min so far")),
                    (f"{job.name} front", (RUNNING, f"pid {pid}, 0 min so far"))]
    assert json.loads((folder / "seconds.json").read_text()) == {"train": 12.0}
    assert holder(folder) is None and states(cfg)[0][0][1] == MISSING  # let go: cut in the middle
    changed = job_cfg(tmp_path)
    changed.study.arms.warp.front = ["etas=[0,1]"]
    other = study_jobs(changed.study)[0]
    with pytest.raises(UserError, match=rf"job=warp-s0: {folder} holds outputs of this job with another definition "
                                        r"\(definition .* there, .* now\).*rm -r"):
        command.run_job(changed, other)
    assert (folder / "train" / "manifest.json").exists() and holder(folder) is None  # nothing deleted, let go
    cfg.extra = ["trainer.precision=32-true"]
    with pytest.raises(UserError, match="with another extra"):
        command.run_job(cfg, job)


def test_the_commit_counts_new_files_under_the_code_as_uncommitted(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text("a: 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert git_commit(tmp_path)[1] is False
    (tmp_path / "conf" / "experiment.yaml").write_text("b: 2\n")  # a new config a job may read: not committed
    assert git_commit(tmp_path)[1] is True


def test_run_takes_the_missing_jobs_within_the_budget():
    study = load("default")
    jobs = study_jobs(study)
    rows = [(j, DONE if j.name == "warp-s0" else MISSING, "") for j in jobs]
    cfg = OmegaConf.create({"jobs": [], "budget_minutes": 70})
    chosen = to_run(cfg, rows)
    assert [j.name for j in chosen] == ["ema_anchor-s0", "sft_anchor-s0", "T50-s0"]  # 30 + 30 + 8; the next (20) does not fit
    cfg = OmegaConf.create({"jobs": ["warp-s0", "T50-s1"], "budget_minutes": None})
    assert [j.name for j in to_run(cfg, rows)] == ["warp-s0", "T50-s1"]  # named: run again even if done
    assert "1 of 24 done; 23 to run" in listing(rows)


def test_a_job_another_command_is_running_is_listed_so_and_not_started_again(tmp_path):
    """A job's folder held by a live command (another launch, another node) is *running*: listed with its pid and
    left out of `action=run`; once let go, the folder says the job resumes from it."""
    cfg = OmegaConf.create({"study": load("smoke"), "results_dir": str(tmp_path / "results"),
                            "work_dir": str(tmp_path / "work"), "jobs": [], "budget_minutes": None})
    first = study_jobs(cfg.study)[0]
    step = tmp_path / "work" / "smoke" / first.name / "train"
    claim_run_dir(step)
    try:
        assert holder(step) is not None and holder(tmp_path) is None
        rows, _ = states(cfg)
        assert rows[0][1:] == (RUNNING, f"pid {holder(step)}, 0 min so far, in its train")
        assert first.name not in [j.name for j in to_run(cfg, rows)] and len(to_run(cfg, rows)) == len(rows) - 1
        assert "(1 running)" in listing(rows) and "warp-s0        running        1" in listing(rows)
    finally:
        release_run_dir(step)
    assert holder(step) is None  # the lock file stays; no live command holds it
    rows, _ = states(cfg)
    assert rows[0][1] == MISSING and rows[0][2] == f"cut in the middle: resumes from {step.parent}"
    assert first.name in [j.name for j in to_run(cfg, rows)]


def test_the_budget_and_the_listing_go_at_the_pace_of_the_landed_results():
    """Declared minutes are for 2 cores with native bf16; once jobs have landed, a job's expected minutes are its
    arm's measured median, or (an arm with none landed) its declared minutes x the landed median ratio."""
    jobs = study_jobs(load("default"))
    results = {"warp-s0": {"seconds": {"train": 3000, "front": 600}, "compute": "cpu (X), precision 32-true"},
               "ema_anchor-s0": {"seconds": {"train": 2400}, "compute": "cpu (X), precision 32-true"},
               "T50-s0": {"seconds": {"train": 960}, "compute": "cpu (X), precision 32-true", "threads": 1},
               "T50-s1": {"seconds": {"train": 60}, "runs": [{"resumed_at_step": 0}, {"resumed_at_step": 40}]}}
    # measured: warp-s0 60 min (30 declared: 2.0x), ema_anchor-s0 40 (30: 1.33x), T50-s0 16 (8: 2.0x); median 2.0
    expected = expected_minutes(jobs, {"warp-s0": 60.0, "ema_anchor-s0": 40.0, "T50-s0": 16.0})
    assert expected["warp-s0"] == 60 and expected["warp-s3"] == 60 and expected["ema_anchor-s4"] == 40
    assert expected["sft_anchor-s0"] == 30 * 2.0 and expected["T150-s1"] == 20 * 2.0 and expected["T50-s2"] == 16
    assert expected_minutes(jobs, {}) == {j.name: j.minutes for j in jobs}
    rows = [(j, DONE if j.name in results else MISSING, "") for j in jobs]
    chosen = to_run(OmegaConf.create({"jobs": [], "budget_minutes": 120}), rows, results)
    # 60 + 28, then T150-s0 (40) and the 60-minute jobs no longer fit, T100-s1 (28) does: 116 (T50-s1 has landed)
    assert [j.name for j in chosen] == ["sft_anchor-s0", "T100-s0", "T100-s1"]
    text = listing(rows, results)
    assert "warp-s1        missing       30       ~60" in text and "warp-s0        done          30        60" in text
    assert "on cpu (X), precision 32-true; cpu (X), precision 32-true, 1 thread): about" in text
    # T50-s1 resumed after a stop: its 1 minute is a lower bound, shown as such and left out of the pace
    assert "T50-s1         done           8       >=1" in text and "T50-s1): the attempt cut" in text


def test_a_job_whose_result_has_landed_is_not_run_again(tmp_path, monkeypatch, capsys):
    """Two launches that overlap (or `jobs=[...]` naming a landed job): the job sees its current result and stops."""
    from hydra import compose, initialize_config_dir

    from warp_lightning.studies import command
    from warp_lightning.studies.results import NUMERICS, write_result

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("study", overrides=["study=smoke", "job=T2-s0", f"results_dir={tmp_path}"])
    job = next(j for j in study_jobs(cfg.study) if j.name == "T2-s0")
    monkeypatch.setattr(command, "run_job", lambda cfg, job: pytest.fail(f"{job.name} ran again"))
    write_result(tmp_path / "smoke" / "T2-s0.json.gz", {"job": job.name, "numerics": NUMERICS,
                                                        "definition": job.definition()})
    assert command.run(cfg) == {"job": "T2-s0", "landed": True}
    assert "T2-s0 has landed" in capsys.readouterr().out
    write_result(tmp_path / "smoke" / "T2-s0.json.gz", {"job": job.name, "numerics": NUMERICS + 1,
                                                        "definition": job.definition()})
    with pytest.raises(pytest.fail.Exception, match="T2-s0 ran again"):  # stale: it runs
        command.run(cfg)
