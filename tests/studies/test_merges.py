"""The `merges` study: its declaration (seeds of its own, runs shared by every merge of a job) and its verdicts on
synthetic result files (larger M, the merge order as a null hypothesis, the methods at each M)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.algo.state import derive_seed
from warp_lightning.cli import CONF_DIR
from warp_lightning.studies import merges
from warp_lightning.studies.jobs import study_jobs
from warp_lightning.studies.results import NUMERICS
from warp_lightning.studies.verdicts import write_report

P = 40  # prompts
ETAS = (0.0, 0.5, 0.75, 1.0)


def load(name="merges"):
    return OmegaConf.load(CONF_DIR / "study" / f"{name}.yaml")


def test_the_study_trains_4_runs_once_and_merges_them_every_way_compared():
    jobs = study_jobs(load())
    assert [j.name for j in jobs] == ["warp-s0", "warp-s1", "warp-s2"]
    job = jobs[0]
    assert {"warp.iterations=1", "warp.runs=4", "warp.snapshot_every=100"} <= set(job.train)
    specs = next(o for o in job.front if o.startswith("merges=")).removeprefix("merges=[").rstrip("]").split(",")
    wanted = {f"{m}:{merges.forward(n)}" for m in merges.NAMES for n in merges.SIZES}
    assert set(specs) == wanted | {"slerp:3-2-1", "slerp:4-3-2-1"}


def test_its_runs_share_no_seed_with_any_other_study():
    """Its warp.seed (and every run's derived seed) is none of any other study's arms."""
    ours = {derive_seed(j.warp_seed, 1, m) for j in study_jobs(load()) for m in range(1, 5)}
    for path in sorted((CONF_DIR / "study").glob("*.yaml")):
        if path.stem != "merges":
            theirs = {derive_seed(j.warp_seed, i, m) for j in study_jobs(load(path.stem)) for i in range(1, 6)
                      for m in range(1, 5)}
            assert not ours & theirs, path.stem


def per_prompt(key, mean):
    """Per-prompt values of mean `mean` with noise drawn from `key`: two curves with the same key are identical."""
    noise = np.random.default_rng(key).normal(0, 0.01, P)
    return list(mean + noise - noise.mean())


def curve(name, method, runs, seed, slope, key, top_kl=8.0):
    """A LITI curve with reward 0.3 + slope x KL; its points and their per-prompt values."""
    rows, prompts = [], []
    for eta in ETAS:
        kl, reward = eta * top_kl, 0.3 + slope * eta * top_kl
        rows.append({"curve": name, "arm": "WARP", "seed": seed, "kind": "liti", "merge": method, "runs": runs,
                     "anchor": "ema", "kl_coef": 0.1, "iteration": 1, "eta": eta, "step": None,
                     "extrapolation": False, "reward_mean": reward, "reward_ci95": 0.01, "judge_mean": reward / 2,
                     "judge_ci95": 0.01, "kl_mean": kl, "kl_ci95": 0.1, "completion_length_mean": 8.0})
        noise_key = [seed, int(eta * 100), *key]
        prompts.append({"curve": name, "seed": seed, "eta": eta, "step": None, "prompt_index": list(range(P)),
                        "reward": per_prompt(noise_key, reward), "judge": per_prompt(noise_key, reward / 2),
                        "kl": [kl] * P})
    return rows, prompts


def landed(seeds=3, reversed_slope=None):
    """Results of the merges study: SLERP's slope grows with M (0.040, 0.050, 0.060 per nat), the spherical mean's
    as SLERP's, TIES's below; the reversed SLERP the same as the forward one (the same per-prompt values) unless
    `reversed_slope`."""
    slopes = {"slerp": {2: 0.04, 3: 0.05, 4: 0.06}, "multislerp": {2: 0.04, 3: 0.05, 4: 0.06},
              "ties": {2: 0.03, 3: 0.03, 4: 0.03}}
    out = {}
    for job in study_jobs(load()):
        if job.seed >= seeds:
            continue
        s = job.warp_seed
        rows, prompts = curve("WARP i1", "slerp", "", s, 0.06, [0, 4])
        for method, by_m in slopes.items():
            for m, slope in by_m.items():
                key = [list(slopes).index(method), m]  # the same per-prompt noise for the same merge
                r, p = curve(f"WARP {method} M{m} i1", method, merges.forward(m), s, slope, key)
                rows, prompts = rows + r, prompts + p
                if method == "slerp" and m > 2:
                    r, p = curve(f"WARP slerp M{m} reversed i1", method, merges.reversed_order(m), s,
                                 reversed_slope or slope, key if reversed_slope is None else [9, m])
                    rows, prompts = rows + r, prompts + p
        out[job.name] = {"study": job.study, "job": job.name, "arm": job.arm, "label": job.label, "seed": job.seed,
                         "warp_seed": s, "sweep": job.sweep, "definition": job.definition(), "numerics": NUMERICS,
                         "commit": "0" * 40, "dirty": False, "compute": "cpu (Test CPU), precision 32-true",
                         "seconds": {"train": 60.0, "front": 60.0}, "config": {"warp": {"iterations": 1, "runs": 4}},
                         "runs": [], "merges": [], "train_metrics": {}, "front": {"rows": rows, "prompts": prompts}}
    return out


def test_larger_m_the_order_and_the_methods(tmp_path):
    found = write_report(load(), landed(), tmp_path)
    claims = found["claims"]
    assert found["status"] == "final"
    assert claims["larger M helps the recursive SLERP at matched KL"] == {"reward": "holds", "judge": "holds",
                                                                           "status": "final"}
    assert claims["larger M helps the symmetric spherical mean at matched KL"]["reward"] == "holds"
    assert claims["larger M helps TIES at matched KL"]["reward"] == "unresolved at this sample size"  # flat in M
    order = claims[merges.ORDER_CLAIM]
    assert order["reward"] == order["judge"] == "no difference shown: every interval within +-0.000 (MDE 0.000)"
    assert claims["TIES beats the recursive SLERP at matched KL"]["reward"] == "contradicted"
    assert claims["the symmetric spherical mean beats the recursive SLERP at matched KL"]["reward"].startswith("unres")
    assert "EMA anchor beats the fixed SFT anchor" not in claims  # the paper's claims are another study's
    text = (tmp_path / "README.md").read_text()
    table = text.split("## The merge methods at each M")[1].split("##")[0]
    assert "| 2 | 0.620 / 8.00 | 0.620 / 8.00 | 0.540 / 8.00 | same merge |" in table
    assert "WARP slerp M4 i1 over WARP slerp M2 i1: reward +0.120 [" in text and "seeds 3 vs 3" in text
    assert "| WARP final (iteration 1) | 0.780 |" in text  # SFT against WARP reads the iteration's own merge only


def test_an_order_that_matters_is_said_so_and_few_seeds_are_provisional(tmp_path):
    found = write_report(load(), landed(seeds=2, reversed_slope=0.045), tmp_path)
    order = found["claims"][merges.ORDER_CLAIM]
    assert order["reward"] == "order matters" and order["status"] == "provisional (2 of 3 seeds)"
    assert found["claims"]["larger M helps the recursive SLERP at matched KL"]["reward"] == "holds"


def test_a_study_judged_by_unknown_claims_is_refused_before_any_work():
    from omegaconf import OmegaConf

    from warp_lightning.studies.checks import check_study

    cfg = OmegaConf.create({"study": load(), "action": "run", "launcher": "basic", "budget_minutes": None,
                            "job": None, "jobs": []})
    check_study(cfg)
    cfg.study.claims = "nope"
    with pytest.raises(UserError, match=r"^study.claims='nope' is invalid: choose paper, merges, warm or sft "):
        check_study(cfg)
