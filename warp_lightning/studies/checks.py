"""The check of `study`, run once before it starts (its record: commands.py)."""

from __future__ import annotations

from warp_lightning.studies.jobs import check_declaration, find_job, study_jobs
from warp_lightning.studies.verdicts import CLAIMS
from warp_lightning.utils.validate import check, one_of

ACTIONS = ("list", "run", "report", "build")
LAUNCHERS = ("basic", "submitit_local", "submitit_slurm", "joblib")


def check_study(cfg) -> None:
    """The study's declaration and the claims it is judged by, the action, the job named, the launcher and the
    budget."""
    check_declaration(cfg.study)
    claims = str(cfg.study.get("claims") or "paper")
    check(claims in CLAIMS, "study.claims", claims, f"choose {one_of(CLAIMS)} (the claims its report judges by)")
    check(cfg.action in ACTIONS, "action", cfg.action, f"choose {one_of(ACTIONS)}")
    check(cfg.launcher in LAUNCHERS, "launcher", cfg.launcher, f"choose {one_of(LAUNCHERS)}")
    check(cfg.budget_minutes is None or float(cfg.budget_minutes) > 0, "budget_minutes", cfg.budget_minutes,
          "must be a positive number of minutes, or null for no budget")
    jobs = study_jobs(cfg.study)
    for name in ([cfg.job] if cfg.job is not None else []) + list(cfg.jobs or []):
        find_job(jobs, str(name))
