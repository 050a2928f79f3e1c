"""A study's jobs: what each one runs, where its folders are, and its state (done / missing / stale).

A job is one seed s of one arm: `train <common> <arm.train> warp.seed=<arm.seed_base + s>` into
WORK_DIR/STUDY/JOB/train, then `front <front_common> <arm.front>` on that run alone into WORK_DIR/STUDY/JOB/front
(an arm whose `front` is null has none: the T sweep reads the end-of-train check), then its result file. An arm with
`reward` overrides instead (a reward arm) runs `reward <arm.reward> reward_training.seed=<arm.seed_base + s>` into
WORK_DIR/STUDY/JOB/reward (its model saved there, never to the models cache), and its result keeps the run's
metrics.json (e.g. WARM's members', weight average's and prediction average's accuracies). Each
step is skipped when its output is complete and resumes from its checkpoint when it was cut in the middle, so a
job run again after a stop goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.utils.validate import check

DONE, MISSING, STALE, RUNNING = "done", "missing", "stale", "running"


@dataclass(frozen=True)
class Job:
    study: str
    arm: str
    seed: int  # s = 0 .. seeds - 1, the job's index in its arm
    warp_seed: int  # arm.seed_base + s: what `train` gets
    label: str  # the arm's name in tables and curves
    train: tuple[str, ...]  # the overrides of `train` that define the job (without the machine's `extra`)
    front: tuple[str, ...] | None  # the overrides of `front`, or None: no front
    minutes: float  # expected minutes on 2 cores with native bf16
    sweep: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"steps": 50}: a T-sweep point
    reward: tuple[str, ...] | None = None  # a reward arm: the overrides of `reward` (then no train, no front)

    @property
    def name(self) -> str:
        return f"{self.arm}-s{self.seed}"

    def definition(self) -> dict:
        """What defines the job's numbers (a result whose definition differs is stale)."""
        if self.reward is not None:
            return {"reward": list(self.reward)}
        return {"train": list(self.train), "front": None if self.front is None else list(self.front)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()[:12]


def _strings(value) -> list[str]:
    return [str(v) for v in (value or [])]


def merge_experiments(overrides: list[str]) -> list[str]:
    """Hydra takes one `+experiment=`: several (the study's, the arm's) become `+experiment=[a,b]`, in order."""
    names = [o.split("=", 1)[1].strip("[]") for o in overrides if o.startswith("+experiment=")]
    rest = [o for o in overrides if not o.startswith("+experiment=")]
    names = [n.strip() for group in names for n in group.split(",") if n.strip()]
    return ([f"+experiment=[{','.join(names)}]"] if len(names) > 1 else [f"+experiment={names[0]}"] if names
            else []) + rest


def study_jobs(study) -> list[Job]:
    """The jobs of a study config (conf/study/NAME.yaml), seed by seed, each seed's arms in the file's order: jobs
    run in this order, so that a study cut short has every arm at some seeds rather than some arms at all seeds."""
    jobs = []
    arms = [(arm, a, int(study.seeds if a.get("seeds") is None else a.seeds)) for arm, a in study.arms.items()]
    for s in range(max(n for _, _, n in arms)):
        for arm, a, seeds in arms:
            if s >= seeds:
                continue
            warp_seed = int(a.seed_base) + s
            if a.get("reward") is not None:  # a reward arm: its seed is reward_training.seed
                jobs.append(Job(str(study.name), str(arm), s, warp_seed, str(a.get("label") or arm), (), None,
                                float(a.minutes), reward=(*_strings(a.reward), f"reward_training.seed={warp_seed}")))
                continue
            train = tuple(merge_experiments([*_strings(study.common), *_strings(a.train)]) + [f"warp.seed={warp_seed}"])
            front = None if a.get("front") is None else tuple([*_strings(study.get("front_common")),
                                                               *_strings(a.front)])
            jobs.append(Job(str(study.name), str(arm), s, warp_seed, str(a.get("label") or arm), train, front,
                            float(a.minutes), dict(a.get("sweep") or {})))
    return jobs


def check_declaration(study) -> None:
    """The study's declaration: arms with disjoint seed ranges, positive seeds and minutes."""
    check(int(study.seeds) >= 1, "study.seeds", study.seeds, "must be at least 1")
    for arm, spec in study.arms.items():
        check(spec.get("seeds") is None or int(spec.seeds) >= 1, f"study.arms.{arm}.seeds", spec.get("seeds"),
              "must be at least 1 (or left out: the study's seeds)")
    check(int(study.seeds_needed) >= 1, "study.seeds_needed", study.seeds_needed, "must be at least 1")
    check(len(study.arms) >= 1, "study.arms", study.arms, "declare at least one arm")
    used: dict[int, str] = {}
    order = list(study.arms)
    for job in sorted(study_jobs(study), key=lambda j: order.index(j.arm)):  # the later arm is the one named
        check(job.minutes > 0, f"study.arms.{job.arm}.minutes", job.minutes, "must be positive")
        other = used.setdefault(job.warp_seed, job.arm)
        check(other == job.arm, f"study.arms.{job.arm}.seed_base", job.warp_seed - job.seed,
              f"its seeds overlap those of arm {other}: give every arm its own seed range (independent arms)")


def find_job(jobs: list[Job], name: str) -> Job:
    found = next((j for j in jobs if j.name == name), None)
    if found is None:
        raise UserError(f"job={name}: no such job in this study; choose one of {', '.join(j.name for j in jobs)}")
    return found


def result_path(results_dir: str | Path, job: Job) -> Path:
    return Path(results_dir) / job.study / f"{job.name}.json.gz"


def job_dir(work_dir: str | Path, job: Job) -> Path:
    return Path(work_dir) / job.study / job.name


def job_state(job: Job, results: dict[str, dict], numerics: int) -> tuple[str, str]:
    """(state, why) of a job given the result headers present ({job name: header})."""
    found = results.get(job.name)
    if found is None:
        return MISSING, ""
    if found.get("numerics") != numerics:
        return STALE, f"numerics {found.get('numerics')}, the code's is {numerics}"
    if found.get("definition") != job.definition():
        return STALE, "its arm's declaration changed"
    if found.get("label", job.label) != job.label:  # its front's curves are named by it: they would not pool
        return STALE, f"its arm's label changed ({found.get('label')!r} then, {job.label!r} now)"
    return DONE, ""


def measured_minutes(results: dict[str, dict], resumed: bool = False) -> dict[str, float]:
    """{job name: the minutes its landed result took (the seconds of its steps, as `run_job` recorded them)}: of the
    jobs that ran in one go, or (`resumed`) of those resumed after a stop, whose attempt cut in the middle is not
    counted (a lower bound, left out of the pace)."""
    return {name: sum(r["seconds"].values()) / 60 for name, r in results.items()
            if r.get("seconds") and was_resumed(r) == resumed}


def was_resumed(result: dict) -> bool:
    """Whether one of the job's RL runs resumed from a checkpoint (the job was stopped in the middle)."""
    return any(int(run.get("resumed_at_step") or 0) > 0 for run in result.get("runs") or [])


def expected_minutes(jobs: list[Job], measured: dict[str, float]) -> dict[str, float]:
    """Each job's expected minutes at the pace of the study's landed results: a landed job's own minutes; one of an
    arm with landed jobs, their median; one of an arm with none, its declared minutes times the median ratio
    measured / declared over the landed jobs; the declared minutes when nothing has landed."""
    declared = {j.name: j.minutes for j in jobs}
    landed = {name: m for name, m in measured.items() if name in declared}
    if not landed:
        return dict(declared)
    rate = statistics.median(m / declared[name] for name, m in landed.items())
    by_arm: dict[str, list[float]] = {}
    for j in jobs:
        if j.name in landed:
            by_arm.setdefault(j.arm, []).append(landed[j.name])
    return {j.name: landed.get(j.name, statistics.median(by_arm[j.arm]) if j.arm in by_arm else j.minutes * rate)
            for j in jobs}


def commands(job: Job, work_dir: str | Path, extra: list[str]) -> dict[str, list[str] | None]:
    """The two commands of a job (`front`: None for an arm without one), each with its fixed run folder; a reward
    arm's one command, `reward`, its model saved in its own folder."""
    folder = job_dir(work_dir, job)
    base = [sys.executable, "-m", "warp_lightning"]
    if job.reward is not None:
        return {"reward": [*base, "reward", *job.reward, *extra, f"save_to={folder / 'reward' / 'model'}",
                           f"hydra.run.dir={folder / 'reward'}"]}
    train = [*base, "train", *job.train, *extra, f"hydra.run.dir={folder / 'train'}"]
    front = None if job.front is None else [
        *base, "front", f"run={folder / 'train'}", f"name={job.label.replace(' ', '_')}", *job.front, *extra,
        f"hydra.run.dir={folder / 'front'}"]
    return {"train": train, "front": front}
