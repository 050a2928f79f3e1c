"""`python -m warp_lightning study`: list a study's jobs, run the missing ones (through Hydra's multirun, so that
any Hydra launcher spreads them), run one job, or build the study's report from its result files alone.

    action=list     each job, its state (done / missing / stale / running) and expected minutes
    action=run      `python -m warp_lightning study -m job=A,B,... hydra/launcher=LAUNCHER`: the missing and stale
                    jobs (or `jobs`), as many as fit in `budget_minutes`; each job resumes where it stopped
    job=NAME        one job: its train, its front, its result file (what each job of that multirun runs)
    action=report   REPORT_DIR/STUDY/ from RESULTS_DIR/STUDY/*.json.gz (studies/verdicts.py); no model needed
    action=build    build ahead the models the jobs build on first use (studies/models.py)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from warp_lightning import Preempted, UserError
from warp_lightning.builds import last_error, run_build
from warp_lightning.runtime import signals
from warp_lightning.runtime.lock import RUN_LOCK, claim_run_dir, holder, release_run_dir
from warp_lightning.studies import models, verdicts
from warp_lightning.studies.jobs import (
    DONE,
    RUNNING,
    Job,
    commands,
    expected_minutes,
    find_job,
    job_dir,
    job_state,
    measured_minutes,
    result_path,
    study_jobs,
)
from warp_lightning.studies.results import NUMERICS, front_data, git_commit, read_results, write_result
from warp_lightning.utils.io import atomic_write_json
from warp_lightning.utils.paths import RunLayout
from warp_lightning.utils.precision import describe
from warp_lightning.utils.trainer import trainer_device, trainer_precision

log = logging.getLogger(__name__)

LAUNCHERS = ("basic", "submitit_local", "submitit_slurm", "joblib")
JOB_FILE = "job.json"  # in a job's folder: the definition, numerics and `extra` its outputs were computed for


def states(cfg) -> tuple[list[tuple[Job, str, str]], dict[str, dict]]:
    """(each job with its state and why, the study's results). A job without a current result whose folder under
    `work_dir` a live command holds is *running* (another launch, another node of the cluster); one whose folder is
    there and free was cut in the middle: it resumes from that folder."""
    results = read_results(cfg.results_dir, str(cfg.study.name))
    rows = []
    for job in study_jobs(cfg.study):
        state, why = job_state(job, results, NUMERICS)
        folder = job_dir(cfg.work_dir, job)
        if state != DONE and folder.is_dir():
            steps = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]  # the job's own lock, its commands'
            held = [(step, pid) for step in steps if (pid := holder(step)) is not None]
            if held:  # the lock file is written when its command claims the folder: how long it has run
                since = (time.time() - (held[0][0] / RUN_LOCK).stat().st_mtime) / 60
                now = [step.name for step, _ in held if step != folder]
                state, why = RUNNING, (f"pid {held[0][1]}, {since:.0f} min so far"
                                       + (f", in its {now[-1]}" if now else ""))
            else:
                why = "; ".join(w for w in (why, f"cut in the middle: resumes from {folder}") if w)
        rows.append((job, state, why))
    return rows, results


def listing(rows: list[tuple[Job, str, str]], results: dict[str, dict] | None = None) -> str:
    """The jobs, their state, declared minutes (2 cores, native bf16) and, once results have landed, the minutes
    each took or is expected to take at their pace (`expected_minutes`), with the devices they ran on."""
    results = results or {}
    measured, cut = measured_minutes(results), measured_minutes(results, resumed=True)
    expected = expected_minutes([j for j, _, _ in rows], measured)
    width = max(len(j.name) for j, _, _ in rows)
    lines = [f"{'job':<{width}}  {'state':<7}  {'minutes':>7}  {'measured':>8}  warp.seed"]
    for j, s, why in rows:
        pace = (f"{measured[j.name]:.0f}" if j.name in measured else f">={cut[j.name]:.0f}" if j.name in cut
                else f"~{expected[j.name]:.0f}" if measured else "—")
        lines.append(f"{j.name:<{width}}  {s:<7}  {j.minutes:>7g}  {pace:>8}  {j.warp_seed}"
                     + (f"  ({why})" if why else ""))
    todo = [j for j, s, _ in rows if s != DONE]
    running = sum(s == RUNNING for _, s, _ in rows)
    lines.append(f"{len(rows) - len(todo)} of {len(rows)} done; {len(todo)} to run"
                 + (f" ({running} running)" if running else "") + ", about "
                 f"{sum(j.minutes for j in todo):g} minutes on 2 cores with native bf16 (twice that in fp32)")
    if cut:
        lines.append(f">=: a job stopped and resumed ({', '.join(cut)}): the attempt cut in the middle is not counted")
    if measured:
        devices = sorted({str(r.get("compute")) + (f", {r['threads']} thread{'s' * (r['threads'] != 1)}"
                                                     if r.get("threads") else "")
                          for name, r in results.items() if name in measured})
        lines.append(f"at the pace of the {len(measured)} landed job{'s' * (len(measured) != 1)} (measured: each its "
                     f"own; ~: its arm's median, or the declared minutes x the landed median ratio; on "
                     f"{'; '.join(devices)}): about {sum(expected[j.name] for j in todo):.0f} minutes to run")
    return "\n".join(lines)


def to_run(cfg, rows, results: dict[str, dict] | None = None) -> list[Job]:
    """The jobs `action=run` starts: the missing and stale ones, not those running elsewhere (or those named),
    within the budget (each job's minutes at the pace of the landed results, `expected_minutes`; the declared
    minutes before any has landed)."""
    names = [str(n) for n in cfg.jobs or []]
    jobs = [j for j, s, _ in rows if (j.name in names if names else s not in (DONE, RUNNING))]
    for name in names:
        find_job([j for j, _, _ in rows], name)
    if cfg.budget_minutes is not None:
        expected = expected_minutes([j for j, _, _ in rows], measured_minutes(results or {}))
        chosen, total = [], 0.0
        for job in jobs:
            if total + expected[job.name] <= float(cfg.budget_minutes):
                chosen.append(job)
                total += expected[job.name]
        jobs = chosen
    return jobs


def multirun_command(cfg, jobs: list[Job]) -> list[str]:
    """The `study -m job=...` command of `action=run`: this command's overrides, the jobs, the launcher."""
    given = [a for a in sys.argv[1:] if not a.startswith(("action=", "jobs=", "budget_minutes=", "launcher=",
                                                          "launcher_overrides=", "job=", "hydra.run.dir="))]
    launcher = [] if cfg.launcher == "basic" else [f"hydra/launcher={cfg.launcher}"]
    return [sys.executable, "-m", "warp_lightning", "study", "-m", *given, f"job={','.join(j.name for j in jobs)}",
            *launcher, *map(str, cfg.launcher_overrides or [])]


def run_step(name: str, cmd: list[str]) -> float:
    """Run one command of a job to its end; its seconds. A failure: one line naming the command."""
    started = time.time()
    log.info("%s: %s", name, " ".join(cmd[2:]))
    code, stderr = run_build(cmd)
    if code in (128 + s for s in signals.STOP_SIGNALS):
        raise Preempted(code - 128, f"in {name} (run the job again: it resumes from its checkpoint)")
    if code != 0:
        raise UserError(f"{name} failed: {last_error(stderr) or f'exit status {code}'} (the command: "
                        f"`python {' '.join(cmd[1:])}`)")
    return time.time() - started


def train_record(folder: Path, with_front: bool) -> dict:
    """What a train job's result keeps of its `train` run (manifest.json) and of its `front`."""
    manifest = json.loads(RunLayout(folder / "train").manifest.read_text())
    return {"compute": manifest["compute"], "precision": manifest["config"]["trainer"].get("precision"),
            "bf16": "bf16-mixed" in manifest["compute"], "config": manifest["config"], "runs": manifest["runs"],
            "merges": manifest["merges"], "train_metrics": manifest["metrics"],
            "front": front_data(folder / "front") if with_front else None}


def reward_record(run_dir: Path) -> dict:
    """What a reward job's result keeps of its `reward` run: its metrics.json (WARM: every member's, the weight
    average's and the prediction average's figures) and resolved config, its device and precision."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    compute = describe(trainer_device(config.trainer), trainer_precision(config.trainer))  # as the run logged it
    return {"compute": compute, "precision": config.trainer.get("precision"), "bf16": "bf16-mixed" in compute,
            "config": OmegaConf.to_container(config), "reward": json.loads((run_dir / "metrics.json").read_text()),
            "front": None}


def claim_job(folder: Path, job: Job, extra: list[str]) -> None:
    """Hold the job's folder while the job runs (another launch, or another node, lists it running and is refused),
    and make sure what is already there was computed for the job as declared now (`JOB_FILE`): outputs of another
    definition, numerics or `extra` would otherwise be skipped over as done and land under the current header."""
    claim_run_dir(folder, key=f"job={job.name}")
    here = {"definition": job.definition(), "numerics": NUMERICS, "extra": extra}
    path = folder / JOB_FILE
    if not path.exists():
        atomic_write_json(path, here)
        return
    was = json.loads(path.read_text())
    if was != here:
        what = [k for k in ("definition", "numerics", "extra") if was.get(k) != here[k]]
        release_run_dir(folder)
        raise UserError(f"job={job.name}: {folder} holds outputs of this job with another {' and '.join(what)} "
                        f"({', '.join(f'{k} {was.get(k)} there, {here[k]} now' for k in what)}); they cannot be "
                        f"reused: delete the folder (`rm -r {folder}`) and run the job again")


def run_job(cfg, job: Job) -> dict:
    """One job: train (skipped when finished, resumed when cut), front (skipped when written), the result."""
    folder = job_dir(cfg.work_dir, job)
    extra = [str(e) for e in cfg.extra or []]
    cmds = commands(job, cfg.work_dir, extra)
    claim_job(folder, job, extra)
    try:
        start, dirty_at_start = git_commit()
        earlier = folder / "seconds.json"  # the seconds of each finished step, this attempt's and earlier ones'
        seconds = json.loads(earlier.read_text()) if earlier.exists() else {}
        done = {"reward": folder / "reward" / "metrics.json", "train": RunLayout(folder / "train").manifest,
                "front": folder / "front" / "front_examples.csv"}  # each step's last output
        for step, cmd in cmds.items():
            if cmd is not None and not done[step].exists():
                seconds[step] = run_step(f"{job.name} {step}", cmd)
                atomic_write_json(earlier, seconds)  # a later step that fails does not lose this one's minutes
        commit, dirty = git_commit()
        record = {"study": job.study, "job": job.name, "arm": job.arm, "label": job.label, "seed": job.seed,
                  "warp_seed": job.warp_seed, "sweep": job.sweep, "definition": job.definition(),
                  "numerics": NUMERICS, "commit": start,
                  "dirty": dirty or dirty_at_start or commit != start,  # edited, or committed to, while it ran
                  "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "threads": torch.get_num_threads(),  # what the job's commands inherit (OMP_NUM_THREADS, or the cores)
                  **(reward_record(folder / "reward") if job.reward is not None
                     else train_record(folder, cmds["front"] is not None))}
        path = write_result(result_path(cfg.results_dir, job), record)
    finally:
        release_run_dir(folder)
    log.info("%s: result written to %s (%.0f s)", job.name, path, sum(seconds.values()))
    if not cfg.keep_models:
        shutil.rmtree(folder, ignore_errors=True)
    return {"job": job.name, "result": str(path), "seconds": round(sum(seconds.values()), 1)}


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg) -> dict:
    rows, results = states(cfg)
    if cfg.job is not None:
        job = find_job([j for j, _, _ in rows], str(cfg.job))
        if next(s for j, s, _ in rows if j is job) == DONE:  # landed meanwhile (another launch ran it): not again
            print(f"study: job {job.name} has landed (its result file is current): nothing to run; delete "
                  f"{Path(str(cfg.results_dir)) / str(cfg.study.name) / (job.name + '.json.gz')} to run it again",
                  flush=True)
            return {"job": job.name, "landed": True}
        if not in_multirun():
            return run_job(cfg, job)
        try:  # one job of `action=run`: a failure is told, and the launcher goes on with the other jobs
            return run_job(cfg, job)
        except UserError as err:
            print(f"error: job {job.name}: {err}", file=sys.stderr, flush=True)
            return {"job": job.name, "failed": str(err)}
    if cfg.action == "build":
        return models.build(cfg)
    if cfg.action == "report":
        return verdicts.write_report(cfg.study, results,
                                     Path(str(cfg.report_dir)) / str(cfg.study.name),
                                     readme=Path(str(cfg.readme)) if cfg.get("readme") else None)
    print(listing(rows, results), flush=True)
    if cfg.action == "list":
        return {"jobs": len(rows), "done": sum(s == DONE for _, s, _ in rows)}
    jobs = to_run(cfg, rows, results)
    if not jobs:
        print("nothing to run", flush=True)
        return {"started": []}
    cmd = multirun_command(cfg, jobs)
    print("running: python " + " ".join(cmd[1:]), flush=True)
    code = signals.run_child(cmd)
    after = {j.name: s for j, s, _ in states(cfg)[0]}
    failed = [j.name for j in jobs if after[j.name] != DONE]
    if code != 0 or failed:
        raise UserError(f"{len(failed)} of {len(jobs)} jobs did not land ({', '.join(failed)}; exit status {code}): "
                        "their errors are above; run the same command again to go on (finished jobs are skipped, a "
                        "job cut in the middle resumes)")
    return {"started": [j.name for j in jobs], **{"config": OmegaConf.to_container(cfg.study, resolve=True)}}
