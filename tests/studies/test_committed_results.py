"""The result files committed under reports/results/ pool with the studies as declared now: a change to a study's
arms, labels or settings, or a `NUMERICS` bump, that would leave its landed results stale (and its README figures
unreproducible by `study action=report`) fails here, naming the jobs, instead of at the next report."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from warp_lightning.cli import CONF_DIR
from warp_lightning.studies.jobs import DONE, job_state, study_jobs
from warp_lightning.studies.results import NUMERICS, read_results
from warp_lightning.studies.verdicts import check_pooling

RESULTS = Path(__file__).resolve().parents[2] / "reports" / "results"
STUDIES = sorted(p.name for p in RESULTS.iterdir() if p.is_dir()) if RESULTS.is_dir() else []


@pytest.mark.parametrize("name", STUDIES)
def test_committed_results_pool_with_the_study_as_declared(name):
    study = OmegaConf.load(CONF_DIR / "study" / f"{name}.yaml")
    results = read_results(RESULTS, name)
    assert results, f"reports/results/{name} holds no result file"
    check_pooling(study, results)  # numerics, definitions, labels, settings: one line naming the jobs otherwise
    jobs = {j.name: j for j in study_jobs(study)}
    assert all(job_state(jobs[n], results, NUMERICS) == (DONE, "") for n in results)
    for job, result in results.items():  # what every table and claim names beside its figures: committed code
        assert result["commit"] != "unknown" and result["compute"] and result["seconds"], job
        assert not result["dirty"], f"{job} ran uncommitted code: its commit does not say what computed it"
