"""A study's report from synthetic result files (no model): pooling refused across numerics, provisional verdicts,
the SFT-against-WARP table paired per seed, the T sweep's objective, and the sentence on the KL WARP reaches."""

import gzip
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.cli import CONF_DIR
from warp_lightning.eval.report import MULTIPLICITY
from warp_lightning.studies.jobs import study_jobs
from warp_lightning.studies.results import NUMERICS, read_results, write_result
from warp_lightning.studies.verdicts import (
    check_pooling,
    claim_status,
    provisional,
    reach_sentence,
    sft_agreement,
    shown_prompt,
    side_by_side,
    sweep_rows,
    verdict_rows,
    write_report,
)

P = 40  # prompts


def study():
    return OmegaConf.load(CONF_DIR / "study" / "smoke.yaml")


def point(curve, kind, seed, reward, kl, eta=None, step=None, merge="slerp", anchor="ema", iteration=1):
    return {"curve": curve, "arm": curve.split(" i")[0], "seed": seed, "kind": kind, "merge": merge, "anchor": anchor,
            "kl_coef": 0.1, "iteration": iteration, "eta": eta, "step": step, "extrapolation": False,
            "reward_mean": reward, "reward_ci95": 0.01, "judge_mean": reward / 2, "judge_ci95": 0.01, "kl_mean": kl,
            "kl_ci95": 0.1, "completion_length_mean": 8.0}


def front_of(rows, rng):
    prompts = []
    for r in rows:
        noise = rng.normal(0, 0.01, P)
        prompts.append({"curve": r["curve"], "seed": r["seed"], "eta": r["eta"], "step": r["step"],
                        "prompt_index": list(range(P)), "reward": list(r["reward_mean"] + noise - noise.mean()),
                        "judge": list(r["judge_mean"] + noise - noise.mean()), "kl": [r["kl_mean"]] * P})
    return {"rows": rows, "prompts": prompts}


def result(job, rng, front=None, metrics=None):
    return {"study": job.study, "job": job.name, "arm": job.arm, "label": job.label, "seed": job.seed,
            "warp_seed": job.warp_seed, "sweep": job.sweep, "definition": job.definition(), "numerics": NUMERICS,
            "commit": "0" * 40, "dirty": False, "compute": "cpu (Test CPU), precision 32-true (no native bf16)",
            "seconds": {"train": 60.0}, "config": {"warp": {"iterations": 2, "runs": 2}}, "runs": [], "merges": [],
            "train_metrics": metrics or {}, "front": front}


def landed(seeds=1, iterations=2):
    rng = np.random.default_rng(0)
    out = {}
    for job in study_jobs(study()):
        if job.seed >= seeds:
            continue
        s = job.warp_seed
        if job.arm == "warp":
            rows = [point("WARP i2", "liti", s, 0.3 + 0.05 * eta * 8, eta * 8, eta=eta, iteration=2) for eta in (0.0, 0.5, 1.0, 1.5)]
            rows += [point("WARP i1", "liti", s, 0.3 + 0.04 * eta * 6, eta * 6, eta=eta) for eta in (0.0, 0.5, 1.0)]
            if iterations == 3:  # a third iteration below the second: more iterations do not keep helping
                rows += [point("WARP i3", "liti", s, 0.3 + 0.045 * eta * 8, eta * 8, eta=eta, iteration=3)
                         for eta in (0.0, 0.5, 1.0)]
            front = front_of(rows, rng)
            front["examples"] = [{"curve": "WARP i2", "seed": s, "eta": eta, "step": None, "prompt_index": i,
                                  "sample": 0, "text": f"prompt {i} {who} answer", "completion": f" {who} answer"}
                                 for i in (3, 1) for eta, who in ((0.0, "sft"), (1.0, "warp"))]
            out[job.name] = result(job, rng, front)
        elif job.front is not None:
            anchor = "ema" if job.arm == "ema_anchor" else "sft"
            rows = [point(job.label.replace(" ", "_"), "training", s, 0.3 + 0.02 * kl, kl, step=st, merge="none",
                          anchor=anchor) for st, kl in ((0, 0.0), (4, 3.0), (8, 7.0), (12, 14.0))]
            out[job.name] = result(job, rng, front_of(rows, rng))
        else:
            out[job.name] = result(job, rng, metrics={"final_reward_mean": 0.6 + 0.01 * s % 3, "final_kl_mean": 2.0,
                                                      "final_judge_mean": 0.5, "sft_reward_mean": 0.3})
    return out


def test_results_round_trip_as_small_gzipped_json(tmp_path):
    results = landed()
    job = next(iter(results.values()))
    path = write_result(tmp_path / "smoke" / f"{job['job']}.json.gz", job)
    assert read_results(tmp_path, "smoke") == {job["job"]: json.loads(gzip.decompress(path.read_bytes()))}
    assert path.stat().st_size < 20_000


def test_pooling_across_numerics_or_definitions_is_refused_naming_the_jobs():
    results = landed()
    check_pooling(study(), results)
    results["warp-s0"]["numerics"] = NUMERICS + 1
    results["T2-s0"]["definition"] = {"train": ["warp.steps=3"], "front": None}
    with pytest.raises(UserError, match=r"cannot pool the results of study smoke: T2-s0, warp-s0 \(.*numerics "
                                        rf"{NUMERICS + 1}, the code's is {NUMERICS}.*\).*jobs=\[T2-s0,warp-s0\]"):
        check_pooling(study(), results)


def test_pooling_refuses_an_arms_jobs_run_with_other_settings():
    """An edited config file or the machine's `extra` overrides change what a job computes without its definition:
    two results of one arm with another setting do not pool; their seeds, the machine and a key one version lacks
    may differ."""
    results = landed(2)
    results["warp-s1"]["config"] = {"warp": {"iterations": 2, "runs": 2, "seed": 1, "new_key": 3},
                                    "trainer": {"precision": "bf16-mixed"}}
    check_pooling(study(), results)
    results["warp-s1"]["config"]["warp"]["iterations"] = 3
    with pytest.raises(UserError, match=r"warp-s0 and warp-s1 \(arm warp\) ran other settings: warp.iterations "
                                        r"\(2 against 3\)"):
        check_pooling(study(), results)


def test_verdicts_are_provisional_until_every_front_arm_has_its_seeds():
    assert provisional(study(), landed(1)) == "provisional (1 of 3 seeds)"
    spec = study()
    spec.seeds_needed = 2
    assert provisional(spec, landed(2)) == ""


def test_each_claim_is_provisional_by_the_seeds_of_the_arms_it_compares(tmp_path):
    results = landed(2)
    del results["sft_anchor-s1"]  # the fixed-anchor arm lags: only the claims comparing it stay provisional
    spec = study()
    spec.seeds_needed = 2
    found = write_report(spec, results, tmp_path)["claims"]
    assert found["EMA anchor beats the fixed SFT anchor"]["status"] == "provisional (1 of 2 seeds)"
    assert found["the LITI front lies above the RL training curve"]["status"] == "provisional (1 of 2 seeds)"
    assert found["iteration 2 improves on iteration 1"]["status"] == "final"  # WARP's own seeds are all there
    assert found["SLERP beats linear merging in reward"]["status"] == "not measured"
    text = (tmp_path / "README.md").read_text()
    assert "| iteration 2 improves on iteration 1 | holds | holds |" in text
    assert "| EMA anchor beats the fixed SFT anchor | unresolved at this sample size (provisional (1 of 2 seeds))" in text


def test_a_claim_with_no_interval_is_marked_by_the_seeds_landed_not_final():
    """No comparison gave an interval (curves with no KL in common, say): the claim's mark comes from the fewest
    seeds landed among the arms with a front, not 'final' by default."""
    no_interval = {"comparisons": [{"what": "A over B", "points": 0, "reward": {"why": "no overlapping KL range"}}]}
    assert claim_status(no_interval, 3, 1) == "provisional (1 of 3 seeds)"
    assert claim_status(no_interval, 3, 3) == ""
    compared = {"comparisons": [{"reward": {"seeds": [2, 3]}}]}
    assert claim_status(compared, 3, 3) == "provisional (2 of 3 seeds)"
    complete = {"comparisons": [{"reward": {"seeds": [3, 3]}}]}
    assert claim_status(complete, 3, 3) == ""
    # its own arms have their seeds, but an arm the study compares against has nothing yet: not final
    assert claim_status(complete, 3, 0) == "provisional (an arm has no result yet)"


def test_the_reach_sentence_tells_warps_front_from_its_expo_points():
    front = [point("WARP i2", "liti", 0, 0.3 + 0.05 * eta * 8, eta * 8, eta=eta, iteration=2) for eta in (0.0, 1.0, 2.0)]
    rl = [point(name, "training", 0, 0.3, kl, step=st, merge="none") for name, end in (("near", 6.0), ("far", 12.0),
                                                                                       ("beyond", 20.0))
          for st, kl in ((0, 0.0), (100, end))]
    text = reach_sentence(front + rl)
    assert "near ends at KL 6.0 (proxy 0.300, step 100): WARP's front (eta <= 1) reaches that KL" in text
    assert ("far ends at KL 12.0 (proxy 0.300, step 100): WARP's front (eta <= 1) does not reach that KL; only its "
            "ExPO extrapolation (eta = 2) does") in text
    assert "beyond ends at KL 20.0 (proxy 0.300, step 100): WARP's front does not reach that KL, nor its ExPO" in text


def test_the_side_by_side_answers_come_from_the_arm_asked_for():
    results = landed(1)
    warp = results["warp-s0"]
    other = {**warp, "job": "another-s0", "arm": "another"}
    both = {"another-s0": other, **results}  # first in order, but not the arm asked for
    assert "job another-s0" in side_by_side(both)
    assert "job warp-s0" in side_by_side(both, arm="warp") and side_by_side(both, arm="nobody") == ""


def test_the_report_says_whether_every_jobs_theta_sft_scored_the_same():
    """Every job samples theta_sft with the same prompts and random numbers: equal per-prompt scores mean one build of
    the scorers; a job whose reward model was built elsewhere (here: its SFT proxy scores 0.01 higher) is named."""
    results = landed(1)
    for result in results.values():  # the synthetic fronts draw their own noise: make theta_sft's the same
        for p in (result.get("front") or {}).get("prompts", []):
            if p["eta"] == 0.0 or p["step"] == 0:
                p["reward"], p["judge"] = [0.3] * P, [0.15] * P
    assert sft_agreement(results).startswith("theta_sft scores the same in all 3 jobs with a front")
    warp = results["warp-s0"]["front"]["prompts"]
    first = next(p for p in warp if p["curve"] == "WARP i1" and p["eta"] == 0.0)
    first["reward"] = [v + 0.01 for v in first["reward"]]
    text = sft_agreement(results)
    assert "**theta_sft scores differently between jobs** (2 groups: ema_anchor-s0, sft_anchor-s0; warp-s0)" in text
    assert sft_agreement({"T2-s0": results["T2-s0"]}) == ""  # no front: nothing to compare
    assert sft_agreement({"warp-s0": results["warp-s0"]}) == ""  # one job: nothing to compare it with


def test_report_from_results_alone(tmp_path):
    readme = tmp_path / "PROJECT.md"
    readme.write_text("intro\n<!-- study:smoke -->\nold table\n<!-- /study:smoke -->\noutro\n")
    found = write_report(study(), landed(2), tmp_path, readme=readme)
    block = readme.read_text()
    assert found["readme"] == str(readme) and block.startswith("intro\n<!-- study:smoke -->\n**Study `smoke`**: 8 of")
    assert "old table" not in block and block.endswith("\n<!-- /study:smoke -->\noutro\n")
    assert "| **the LITI front lies above the RL training curve** | holds | holds | provisional (2 of 3 seeds) |" in block
    assert block.index("| **the LITI front") < block.index("| 2 | 2 | 0.405 ± 0.064 |")  # then the T sweep
    text = (tmp_path / "README.md").read_text()
    assert found["status"] == "provisional (2 of 3 seeds)" and "**provisional (2 of 3 seeds)**" in text
    # per arm: seeds landed, jobs declared, and the seeds the verdicts need (the sweep's arm: no claim reads it)
    assert "| WARP | 2 | 2 | 3 |" in text and "| T=2 | 2 | 2 | none (no claim compares it) |" in text
    assert found["claims"]["EMA anchor beats the fixed SFT anchor"]["reward"].startswith("unresolved")  # same slope
    assert found["claims"]["the LITI front lies above the RL training curve"]["reward"] == "holds"
    # experiment 1 from the fronts: eta = 1 of the last iteration (0.7 at KL 8) against eta = 0 (0.3), paired
    section = text.split("## SFT against WARP")[1].split("##")[0]
    assert "| WARP final (iteration 2) | 0.700 | 0.350 | 8.00 | 8.0 |" in section and "reward +0.400 [+0.39" in section
    assert "2 seeds" in section and "t over seeds" in section
    assert "| prompt 1 | sft answer | warp answer |\n| prompt 3 | sft answer | warp answer |" in section
    assert "reaches KL 8.0 (proxy 0.700) at eta = 1 and KL 12.0 (proxy 0.900) at eta = 1.5 (ExPO)" in text
    assert "EMA_anchor ends at KL 14.0" in text and "does not reach that KL" in text
    assert "4 jobs on cpu (Test CPU)" not in text and "8 jobs on cpu (Test CPU)" in text
    assert MULTIPLICITY in text.split("## Claims")[1]  # how a claim of several comparisons is combined, uncorrected
    assert (tmp_path / "front.png").exists() and (tmp_path / "sweep_T.png").exists()


def test_every_studys_verdicts_in_one_table_rebuilt_from_each_claims_json(tmp_path):
    readme = tmp_path / "PROJECT.md"
    readme.write_text("<!-- study:verdicts -->\nstale table\n<!-- /study:verdicts -->\n<!-- study:smoke -->\n"
                      "<!-- /study:smoke -->\n<!-- study:later -->\n<!-- /study:later -->\n")
    write_report(study(), landed(2), tmp_path / "smoke", readme=readme)
    table = readme.read_text().split("<!-- study:verdicts -->\n")[1].split("\n<!-- /study:verdicts -->")[0]
    rows = table.splitlines()[2:]
    claims = json.loads((tmp_path / "smoke" / "claims.json").read_text())["claims"]
    assert len(rows) == len(claims) + 1 and "stale table" not in table  # one row per claim, one for the study not reported
    liti = next(r for r in rows if "the LITI front lies above the RL training curve" in r)
    assert liti.startswith("| `smoke` | the LITI front lies above the RL training curve | holds | holds | ")
    assert "| provisional (2 of 3 seeds) | 2 vs 2 |" in liti and liti.endswith("| 8 of 8; 0000000 |")
    mde = liti.split(" | ")[4]  # the largest minimum detectable effect of its comparisons, proxy / judge
    comparisons = next(c for c in claims if c["claim"] == "the LITI front lies above the RL training curve")["comparisons"]
    assert mde == " / ".join(f"{max(c[s]['mde'] for c in comparisons):.3f}" for s in ("reward", "judge"))
    assert rows[-1].startswith("| `later` | no job has landed yet |")
    assert (tmp_path / "verdicts.md").read_text().count("| `smoke` |") == len(claims)  # the report folder's index


def test_without_a_readme_the_index_reads_the_studies_reports_alone(tmp_path):
    """A report_dir of the user's choosing may hold another tool's claims.json: the index skips it."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "claims.json").write_text(json.dumps([{"claim": "not ours"}]))
    write_report(study(), landed(2), tmp_path / "smoke")
    index = (tmp_path / "verdicts.md").read_text()
    assert "| `smoke` |" in index and "elsewhere" not in index and "not ours" not in index


def test_with_more_than_two_iterations_each_further_one_is_judged(tmp_path):
    two = write_report(study(), landed(2), tmp_path / "two")["claims"]
    assert "more iterations keep improving the front" not in two  # I = 2: the claim of iteration 2 says it all
    three = write_report(study(), landed(2, iterations=3), tmp_path / "three")["claims"]
    assert three["more iterations keep improving the front"]["reward"] == "contradicted"  # i3 below i2
    text = (tmp_path / "three" / "README.md").read_text()
    assert "WARP i3 over WARP i2" in text and "WARP i3 over WARP i1" in text


def test_the_sweep_objective_is_reward_minus_beta_kl():
    rows = sweep_rows(study(), landed(2))
    assert [r["steps"] for r in rows] == [2] and len(rows[0]["seeds"]) == 2
    assert rows[0]["objective_value_per_seed"] == pytest.approx([r - 0.1 * 2.0 for r in rows[0]["reward_per_seed"]])


def test_the_sweeps_choice_is_compared_with_the_runner_up_by_welchs_t():
    """By hand: differences of 1.0 with both sides' seed sd 0.2 (3 seeds): se = sqrt(2 x 0.04 / 3) = 0.1633, Welch
    df = 4, t = 2.7764: half-width 0.4534; a difference of 0.1 with sd 0.3: half-width 2.7764 x 0.2449 = 0.680."""
    from warp_lightning.studies.verdicts import runner_up

    def t(steps, values):
        return {"steps": steps, "objective_value_per_seed": values}

    told = runner_up([t(50, [1.0, 1.2, 1.4]), t(100, [0.0, 0.2, 0.4])])
    assert told == "; against T = 100 (the runner-up): +1.000 [+0.547, +1.453] (Welch's t over seeds), told apart"
    close = runner_up([t(50, [0.0, 0.3, -0.3]), t(150, [-0.1, 0.2, -0.4])])
    assert close.endswith("not told apart at these seeds (an interval of half-width 0.680)")
    assert runner_up([t(50, [0.1])]) == "" and "one seed on a side" in runner_up([t(50, [0.1]), t(100, [0.0])])


def sum_reward_front(rng, seeds=(0, 1), gain=0.4):
    """A front of the chat study's shape: eta 0 (SFT) and 1 (WARP final), a sum reward's terms beside the total."""
    rows = [point("WARP i1", "liti", s, reward, kl, eta=eta) for s in seeds for eta, reward, kl in
            ((0.0, 0.3, 0.0), (1.0, 0.3 + gain, 8.0))]
    for r in rows:
        r["reward/sentiment_mean"], r["reward/length_mean"] = r["reward_mean"] - 0.1, 0.1
    front = front_of(rows, rng)
    for prompt_row in front["prompts"]:
        prompt_row["reward/sentiment"] = [v - 0.1 for v in prompt_row["reward"]]
        prompt_row["reward/length"] = [0.1] * P
    return front


def test_sft_against_warp_shows_each_term_of_a_sum_reward_beside_the_total():
    """The chat study's reward is a sum (reward/sentiment + reward/length): each term's means and paired gain."""
    from warp_lightning.studies.verdicts import pooled_front, sft_against_final

    rng = np.random.default_rng(0)
    text = sft_against_final(*pooled_front({"a": result(study_jobs(study())[0], rng, sum_reward_front(rng))}))
    assert "| model | proxy reward | `reward/sentiment` | `reward/length` | held-out judge |" in text
    assert "| WARP final (iteration 1) | 0.700 | 0.600 | 0.100 | 0.350 | 8.00 | 8.0 |" in text
    assert "reward/sentiment +0.400 [+0.39" in text and "reward/length +0.000 [+0.000, +0.000]" in text


def test_the_chat_study_is_judged_by_warp_against_sft_paired_per_seed(tmp_path):
    chat = OmegaConf.load(CONF_DIR / "study" / "chat.yaml")
    jobs = study_jobs(chat)
    rng = np.random.default_rng(0)
    landed = {job.name: result(job, rng, sum_reward_front(rng, seeds=(job.warp_seed,))) for job in jobs[:2]}
    found = write_report(chat, landed, tmp_path)
    assert found["claims"] == {"WARP's final policy beats the SFT policy": {
        "reward": "holds", "judge": "holds", "status": "provisional (2 of 3 seeds)"}}
    claim = json.loads((tmp_path / "claims.json").read_text())["claims"][0]
    assert claim["comparisons"][0]["reward"]["seeds"] == [2, 2] and claim["comparisons"][0]["reward"]["n"] == P
    t = claim["comparisons"][0]["reward"]["seed_t"]  # the verdict judges by the wider: the table shows both
    row = verdict_rows([{**claim, "status": "provisional"}])[1]  # the README's table: the comparison's row
    assert row[1].endswith(f"] (t over seeds [{t['low']:+.3f}, {t['high']:+.3f}])")
    even = {job.name: result(job, rng, sum_reward_front(rng, seeds=(job.warp_seed,), gain=0.0)) for job in jobs}
    assert write_report(chat, even, tmp_path / "even")["claims"]["WARP's final policy beats the SFT policy"][
        "reward"].startswith("unresolved")


def test_sft_against_warp_reads_the_iterations_own_merge_not_another_merge_of_the_same_runs():
    """A front with `merges=[...]` has other SLERP curves of the same iteration (with `runs`): WARP's final policy is
    the iteration's own merge, whichever comes last in the rows."""
    from warp_lightning.studies import sft

    own = [point("WARP i1", "liti", 0, 0.3 + 0.4 * eta, 8 * eta, eta=eta, iteration=1) for eta in (0.0, 1.0)]
    other = [{**point("WARP slerp M2 reversed i1", "liti", 0, 0.2, 8 * eta, eta=eta, iteration=1), "runs": "2-1"}
             for eta in (0.0, 1.0)]
    last, final, start = sft.final_and_sft(own + other)
    assert last == 1 and final[0]["curve"] == start[0]["curve"] == "WARP i1" and final[0]["reward_mean"] == 0.7


def test_a_chat_prompt_is_shown_by_its_last_user_turn_and_any_other_prompt_as_it_is():
    chat = ("system\nYou are a helpful AI assistant named SmolLM\nuser\nHi\nassistant\nHello\n"
            "user\nWrite a one-sentence review of the film Arroz Con Mango.\nassistant\n")
    assert shown_prompt(chat) == "Write a one-sentence review of the film Arroz Con Mango."
    assert shown_prompt("user\n\nTwo lines\nof a request\nassistant\n\n") == "Two lines\nof a request"
    for plain in ("This movie was", "The user\nsaid\nassistant", "user\nassistant\n"):
        assert shown_prompt(plain) == plain
