"""The `warm` study: its declaration (equal RL compute, each front scored by both reward models, reward arms with
WARM's recipe and seeds of their own), a reward job's result, and its verdicts on synthetic result files (the
proxy-judge gap at matched KL, the judge, the accuracies of the members and of the two averages)."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from warp_lightning.cli import CONF_DIR
from warp_lightning.studies import command, warm
from warp_lightning.studies.jobs import commands, study_jobs
from warp_lightning.studies.results import NUMERICS, front_data, read_result
from warp_lightning.studies.verdicts import pooled_front, write_report

P = 40  # prompts
ETAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
TOP_KL = 8.0  # KL at eta = 1


def load(name="warm"):
    return OmegaConf.load(CONF_DIR / "study" / f"{name}.yaml")


def test_both_arms_run_the_same_warp_and_differ_by_their_reward_model_alone():
    jobs = {j.name: j for j in study_jobs(load())}
    assert list(jobs)[:4] == ["single-s0", "warm-s0", "rm_clean-s0", "rm_noisy-s0"] and len(jobs) == 12
    single, warm_job = jobs["single-s0"], jobs["warm-s0"]
    differs = set(single.train) ^ set(warm_job.train)
    assert differs == {"reward_model=minilm_rt_warm", "warp.seed=5000", "warp.seed=5100"}  # equal RL compute
    assert "warp.iterations=3" in single.train and single.train[0] == "+experiment=study"
    # every front scored by both reward models, its total the arm's own proxy
    assert "reward_model=minilm_rt_both" in single.front
    assert {"reward_model.terms.single.weight=1", "reward_model.terms.warm.weight=0"} <= set(single.front)
    assert {"reward_model.terms.single.weight=0", "reward_model.terms.warm.weight=1"} <= set(warm_job.front)
    assert single.label.replace(" ", "_") == warm.SINGLE and warm_job.label == warm.WARM  # front's `name=`


def test_the_reward_arms_train_warms_recipe_with_seeds_of_their_own(tmp_path):
    jobs = {j.name: j for j in study_jobs(load())}
    clean, noisy = jobs["rm_clean-s1"], jobs["rm_noisy-s2"]
    recipe = OmegaConf.load(CONF_DIR / "reward_model" / "minilm_rt_warm.yaml").build_overrides
    assert set(recipe) <= set(clean.reward) and set(recipe) <= set(noisy.reward)
    assert clean.reward[-1] == "reward_training.seed=5201" and noisy.reward[-1] == "reward_training.seed=5302"
    assert "reward_training.label_noise=0.25" in noisy.reward and not any("label_noise" in o for o in clean.reward)
    assert clean.train == () and clean.front is None and clean.definition() == {"reward": list(clean.reward)}
    cmds = commands(clean, tmp_path, ["trainer.precision=bf16-mixed"])
    assert list(cmds) == ["reward"]
    cmd = cmds["reward"]
    assert cmd[3] == "reward" and cmd[-2:] == [f"save_to={tmp_path / 'warm' / 'rm_clean-s1' / 'reward' / 'model'}",
                                               f"hydra.run.dir={tmp_path / 'warm' / 'rm_clean-s1' / 'reward'}"]
    assert "trainer.precision=bf16-mixed" in cmd  # the machine's `extra` too


def test_a_reward_job_keeps_its_metrics_in_its_result(tmp_path, monkeypatch):
    """run_job on a reward arm: the `reward` command (faked here), then one result with its metrics.json."""
    job = next(j for j in study_jobs(load()) if j.name == "rm_noisy-s0")
    ran = []

    def fake(name, cmd):
        out = tmp_path / "work" / "warm" / job.name / "reward"
        (out / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}}),
                       out / ".hydra" / "config.yaml")
        (out / "metrics.json").write_text(json.dumps(accuracies(0.8, flipped=True)))
        ran.append(name)
        return 12.0

    monkeypatch.setattr(command, "run_step", fake)
    cfg = OmegaConf.create({"work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results"),
                            "extra": [], "keep_models": False})
    command.run_job(cfg, job)
    result = read_result(tmp_path / "results" / "warm" / "rm_noisy-s0.json.gz")
    assert ran == ["rm_noisy-s0 reward"] and result["seconds"] == {"reward": 12.0}
    assert result["reward"]["weight_average"]["memorised"] == 0.1 and result["front"] is None
    assert result["definition"] == {"reward": list(job.reward)} and result["numerics"] == NUMERICS
    assert not (tmp_path / "work" / "warm" / job.name).exists()  # its models removed once the result is written


def test_a_front_keeps_each_term_of_a_sum_reward_per_prompt(tmp_path):
    (tmp_path / "front.csv").write_text("curve,seed,eta,step,reward_mean,reward/single_mean\nWARM i1,0,1.0,,0.6,0.7\n")
    (tmp_path / "front_prompts.csv").write_text("curve,seed,eta,step,prompt_index,reward,judge,kl,reward/single,"
                                                "reward/warm\nWARM i1,0,1.0,,1,0.6,0.5,2.0,0.7,0.6\n"
                                                "WARM i1,0,1.0,,0,0.4,0.5,2.0,0.3,0.4\n")
    point, = front_data(tmp_path)["prompts"]
    assert point["reward/single"] == [0.7, 0.3] and point["reward/warm"] == [0.6, 0.4] and point["judge"] == [0.5, 0.5]


def accuracies(level, flipped=False):
    """A WARM run's metrics.json: members a little below the weight average, the prediction average between."""
    def figures(acc):
        return {"val_pair_accuracy": acc, "sentences_accuracy": acc - 0.1, **({"memorised": 0.1} if flipped else {})}

    return {"members": [{"seed": k, "lr": lr, "dropout": d, **figures(level - 0.02)}
                        for k, (lr, d) in enumerate(((1e-5, 0.05), (4e-5, 0.1), (1e-4, 0.05), (1e-5, 0.1)))],
            "weight_average": figures(level), "prediction_average": figures(level - 0.01)}


def arm_front(curve, seed, proxy, judge, common, rng, offset=0.0, proxy_level=0.5):
    """The last front (iteration 3) of one job: own proxy `proxy_level` + proxy x KL, judge and the common proxy
    0.5 + their slope x KL, each with per-prompt noise, and a seed-level `offset` x eta on the judge (a seed's RL
    pleasing the judge more or less: 0 at theta_sft). Its eta 0 is the job's theta_sft (no earlier iteration here)."""
    rows, prompts = [], []
    for eta in ETAS:
        kl = eta * TOP_KL
        own, j, c = proxy_level + proxy * kl, 0.5 + judge * kl + offset * eta, 0.5 + common * kl
        rows.append({"curve": curve, "arm": curve.split(" i")[0], "seed": seed, "kind": "liti", "merge": "slerp",
                     "runs": "", "anchor": "ema", "kl_coef": 0.1, "iteration": 3, "eta": eta, "step": None,
                     "extrapolation": eta > 1, "reward_mean": own, "reward_ci95": 0.01, "judge_mean": j,
                     "judge_ci95": 0.01, "kl_mean": kl, "kl_ci95": 0.1, "completion_length_mean": 24.0})
        noise = rng.normal(0, 0.01, P)
        noise -= noise.mean()
        terms = {"reward/single": c, "reward/warm": own} if curve.startswith("WARM") else {"reward/single": own,
                                                                                            "reward/warm": c}
        prompts.append({"curve": curve, "seed": seed, "eta": eta, "step": None, "prompt_index": list(range(P)),
                        "reward": list(own + noise), "judge": list(j + noise * 0.5), "kl": [kl] * P,
                        **{k: list(v + noise) for k, v in terms.items()}})
    return {"rows": rows, "prompts": prompts, "examples": []}


def landed(warm_slopes, seeds=3, spread=0.0, warm_level=0.5):
    """Results of the warm study. The single arm: proxy 0.04 / nat, judge 0.01 (a gap growing 0.03 / nat); WARM's
    (proxy, judge, common proxy) slopes given; `spread`: the sd of a seed-level offset of the judge at eta 1;
    `warm_level`: WARM's own proxy at KL 0 (the single RM's is 0.5)."""
    rng = np.random.default_rng(0)
    out = {}
    for job in study_jobs(load()):
        if job.seed >= seeds:
            continue
        header = {"study": job.study, "job": job.name, "arm": job.arm, "label": job.label, "seed": job.seed,
                  "warp_seed": job.warp_seed, "sweep": job.sweep, "definition": job.definition(),
                  "numerics": NUMERICS, "commit": "0" * 40, "dirty": False,
                  "compute": "cpu (Test CPU), precision 32-true", "seconds": {"train": 60.0}, "config": {},
                  "runs": [], "merges": [], "train_metrics": {}, "front": None}
        if job.reward is not None:
            out[job.name] = {**header, "reward": accuracies(0.85 - 0.1 * (job.arm == "rm_noisy") + 0.01 * job.seed,
                                                            flipped=job.arm == "rm_noisy")}
            continue
        offset = rng.normal(0, spread) if spread else 0.0
        slopes = (0.04, 0.01, 0.04) if job.arm == "single" else warm_slopes
        out[job.name] = {**header, "front": arm_front(f"{job.label.replace(' ', '_')} i3", job.warp_seed, *slopes,
                                                      rng, offset, warm_level if job.arm == "warm" else 0.5)}
    return out


def test_a_warm_gap_clearly_smaller_helps(tmp_path):
    """WARM: proxy 0.03 / nat, judge 0.02 (a gap of 0.01 / nat against the single arm's 0.03), and the single RM
    scores WARM's policy at 0.035 / nat (a common-proxy gap of 0.015 / nat)."""
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- study:warm -->\nold\n<!-- /study:warm -->\nafter\n")
    found = write_report(load(), landed((0.03, 0.02, 0.035)), tmp_path / "report", readme=readme)
    gap, judge = found["claims"][warm.GAP_CLAIM], found["claims"][warm.JUDGE_CLAIM]
    assert gap == {"reward": "helps", "judge": "helps", "status": "final"}
    assert judge == {"reward": "holds", "judge": "holds", "status": "final"}
    text = (tmp_path / "report" / "README.md").read_text()
    assert "| at matched KL (the gap: own proxy) |" in text.split("## Claims")[1]
    table = text.split("## The proxy-judge gap as KL grows")[1].split("##")[0]
    # eta 1: KL 8 for both, own proxy 0.82 / 0.74, common 0.82 / 0.78, judge 0.58 / 0.66, gap 0.24 / 0.08
    assert "| 1 | 8.00 / 8.00 | 0.820 / 0.740 | 0.820 / 0.780 | 0.580 / 0.660 | 0.240 / 0.080 | -0.160 [" in table
    assert "SFT against WARP" in text and "WARP final (single RM, iteration 3)" in text  # the first arm alone, named
    block = readme.read_text().split("<!-- study:warm -->")[1]
    assert "| · WARM i3 over single_RM i3 (gap: own proxy \\| common proxy) | -0.160 [" in block
    assert "WARM i3 over single_RM i3: gap (own proxy) -0.160 [" in text and "after" in readme.read_text()
    assert (tmp_path / "report" / "gap.png").exists() and "![The proxy-judge gap as KL grows](gap.png)" in text
    assert ("![study warm: proxy reward and held-out judge vs KL](report/front.png) "  # the README's own, relative
            "![study warm: the proxy-judge gap as KL grows](report/gap.png)") in block


def test_the_gap_figure_draws_each_arms_last_front_against_kl():
    """gap_panels: the means over seeds and prompts at each eta, as (KL, value) lines per arm and quantity."""
    rows, scores = pooled_front(landed((0.03, 0.02, 0.035)))
    (left_title, _, left), (right_title, _, right) = warm.gap_panels(rows, scores)
    assert "judge" in left_title and "gap" in right_title
    assert set(left) == {f"{arm}: {what}" for arm in ("single RM", "WARM") for what in ("own proxy", "judge")}
    at = ETAS.index(1)
    xs, ys = right["single RM: own proxy - judge"]
    assert xs[at] == pytest.approx(8.0) and ys[at] == pytest.approx(0.24)
    assert right["WARM: own proxy - judge"][1][at] == pytest.approx(0.08)
    assert right["WARM: common proxy (single RM) - judge"][1][at] == pytest.approx(0.12)  # 0.78 - 0.66
    assert left["WARM: judge"][1][at] == pytest.approx(0.66) and xs == sorted(xs)
    assert warm.gap_panels([], {}) == []


def test_an_equal_gap_is_unresolved_with_the_smallest_detectable_effect_or_not_narrowed(tmp_path):
    spread = write_report(load(), landed((0.04, 0.01, 0.04), spread=0.05), tmp_path / "wide")["claims"]
    verdict = spread[warm.GAP_CLAIM]["reward"]
    assert verdict.startswith("unresolved (smallest detectable effect ") and float(verdict[-6:-1]) > warm.MARGIN
    assert spread[warm.JUDGE_CLAIM]["reward"] == "unresolved at this sample size"
    tight = write_report(load(), landed((0.04, 0.01, 0.04)), tmp_path / "tight")["claims"]
    assert tight[warm.GAP_CLAIM]["reward"] == warm.NOT_NARROWED  # the interval excludes a narrowing of 0.02
    wider = write_report(load(), landed((0.05, 0.005, 0.05)), tmp_path / "wider")["claims"]
    assert wider[warm.GAP_CLAIM] == {"reward": warm.WIDENS, "judge": warm.WIDENS, "status": "final"}


def test_the_gap_is_its_growth_since_sft_so_a_reward_models_level_does_not_count(tmp_path):
    """WARM scores every completion 0.05 higher than the single RM would at the same slopes, SFT's included: a level
    gap would call that a widening of 0.05; the growth since theta_sft sees the same equal gaps as without it."""
    raised = write_report(load(), landed((0.04, 0.01, 0.04), warm_level=0.55), tmp_path / "raised")["claims"]
    assert raised[warm.GAP_CLAIM]["reward"] == warm.NOT_NARROWED
    text = (tmp_path / "raised" / "README.md").read_text()
    table = text.split("## The proxy-judge gap as KL grows")[1].split("##")[0]
    # eta 1: own proxy 0.82 / 0.87, the gap's growth 0.24 for both (0.87 - 0.55 - (0.58 - 0.5) = 0.24)
    assert "| 1 | 8.00 / 8.00 | 0.820 / 0.870 | 0.820 / 0.820 | 0.580 / 0.580 | 0.240 / 0.240 | +0.000 [" in table
    level = warm.with_gaps(*reversed(pooled_front(landed((0.04, 0.01, 0.04), seeds=1, warm_level=0.55))))
    sft = [v for k, v in level.items() if k[0] == "WARM i3" and k[2] == 0.0]
    assert sft and all(np.allclose(v["gap"], 0) and np.allclose(v["gap_common"], 0) for v in sft)


def test_the_verdicts_table_names_the_warm_claims_readings(tmp_path):
    """The warm claims' two verdicts are readings of their own (the gap on the own and the common proxy; the judge
    at matched KL and at eta 1), named in every study's verdicts table, whose columns say proxy reward and judge."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- study:verdicts -->\n<!-- /study:verdicts -->\n<!-- study:warm -->\n<!-- /study:warm -->\n")
    write_report(load(), landed((0.03, 0.02, 0.035)), tmp_path / "warm", readme=readme)
    rows = [line for line in readme.read_text().split("<!-- /study:verdicts -->")[0].splitlines() if "WARM" in line]
    assert "| gap, own proxy (each its own scale): helps | gap, common proxy (one scale): helps |" in rows[0]
    assert "| judge at matched KL: holds | judge at eta = 1: holds |" in rows[1]


def test_few_seeds_are_provisional_and_the_accuracies_show_before_any_front(tmp_path):
    found = write_report(load(), landed((0.03, 0.02, 0.035), seeds=2), tmp_path / "two")
    assert found["claims"][warm.GAP_CLAIM]["status"] == "provisional (2 of 3 seeds)"
    only_rm = {k: v for k, v in landed((0.03, 0.02, 0.035), seeds=2).items() if k.startswith("rm_")}
    found = write_report(load(), only_rm, tmp_path / "rm")
    assert found["claims"] == {} and not (tmp_path / "rm" / "gap.png").exists()  # no front, no figure
    table = (tmp_path / "rm" / "README.md").read_text().split("## The reward models' accuracies")[1]
    # means over seeds 0 and 1: clean 0.855 (weight average), members 0.835; flipped 0.755, memorised 0.1
    assert "| WARM members, clean labels | 2 | **weight average (WARM)** | 0.855 | 0.755 | — |" in table
    assert "| WARM members, clean labels | 2 | member 2 (lr 4e-05, dropout 0.1) | 0.835 | 0.735 | — |" in table
    assert "| WARM members, 25% flipped | 2 | **prediction average** | 0.745 | 0.645 | 0.100 |" in table


def test_front_scores_each_term_of_a_sum_reward_per_prompt():
    """evaluate_curves: a sum reward's terms (`reward/NAME`, as the protocol reports them) per prompt, beside the
    total, in every point's prompt rows (front_prompts.csv): the warm study's common proxy."""
    from types import SimpleNamespace

    from warp_lightning.eval.front import Curve, evaluate_curves

    completions = [{"prompt_index": i, "sample": 0, "text": f"p{i} c", "completion": " c", "reward": 0.5 + i,
                    "reward/single": 0.5 + i, "reward/warm": 0.25 * i, "judge": 0.4, "kl": 1.0} for i in (1, 0)]
    metrics = {"reward_mean": 1.0, "reward_ci95": 0.1, "kl_mean": 1.0, "kl_ci95": 0.1}
    protocol = SimpleNamespace(sft="sft", evaluate=lambda model: (metrics, completions))
    curve = Curve("WARM i1", "liti", "slerp", "ema", 0.1, 1, "run", lambda: iter([({"eta": 0.0}, None)]), "WARM")
    _, prompt_rows, _ = evaluate_curves([curve], protocol)
    assert [(r["prompt_index"], r["reward"], r["reward/single"], r["reward/warm"]) for r in prompt_rows] == [
        (0, 0.5, 0.5, 0.0), (1, 1.5, 1.5, 0.25)]


def test_the_weight_average_against_its_peers_by_hand():
    """accuracy_differences: a paired t over the seeds within an arm, Welch's between the clean and flipped arms."""
    def run(wa, pa, member, memorised=None):
        extra = {} if memorised is None else {"memorised": memorised}
        return {"members": [{"val_pair_accuracy": member, "sentences_accuracy": member, **extra}] * 4,
                "weight_average": {"val_pair_accuracy": wa, "sentences_accuracy": wa, **extra},
                "prediction_average": {"val_pair_accuracy": pa, "sentences_accuracy": pa, **extra}}

    clean = [run(0.85, 0.84, 0.83), run(0.87, 0.85, 0.84), run(0.86, 0.86, 0.85)]
    noisy = [run(0.75, 0.74, 0.70, 0.1), run(0.76, 0.75, 0.71, 0.2)]
    table = warm.accuracy_differences({"clean": clean, "flipped": noisy})
    rows = {line.split(" | ")[2] + line.split(" | ")[0]: line for line in table.splitlines()[2:] if line.startswith("|")}
    # WA - PA, clean: d = 0.01, 0.02, 0.00: mean 0.01, se 0.01 / sqrt 3, t_0.975(2) = 4.303: +-0.0248;
    # MDE (4.303 + t_0.80(2) = 1.061) x 0.00577 = 0.031
    assert "| +0.010 [-0.015, +0.035] (MDE 0.031) |" in rows["weight average - prediction average| clean"]
    # the members' mean: d = 0.02, 0.03, 0.01, the same spread
    assert "| +0.020 [-0.005, +0.045] (MDE 0.031) |" in rows["weight average - the members' mean| clean"]
    assert "| — |" in rows["weight average - prediction average| clean"]  # nothing memorised on clean labels
    # flipped: d = 0.01 twice (no spread): the interval is the point; memorised the same for both averages
    assert "+0.000 [+0.000, +0.000]" in rows["weight average - prediction average| flipped"]
    # Welch, flipped - clean for the weight average: 0.755 - 0.86 = -0.105; var 0.00005 / 2 + 0.0001 / 3,
    # df = (va + vb)^2 / (va^2 / 1 + vb^2 / 2) = 2.61, half t_0.975(2.61) x 0.00764
    va, vb = 0.00005 / 2, 0.0001 / 3
    df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    line = rows["weight average: 25% flipped - clean labels| flipped - clean"]
    assert f"-0.105 [{-0.105 - half:+.3f}, {-0.105 + half:+.3f}]" in line and "| 2 vs 3 |" in line
    one = warm.accuracy_differences({"clean": clean[:1]})
    assert "(1 seed: no interval)" in one and "flipped - clean" not in one


def test_final_claims_still_say_which_arms_have_not_landed(tmp_path):
    """The RL arms' 3 seeds make the claims final; the README's line says the reward arms are still to land."""
    readme = tmp_path / "PROJECT.md"
    readme.write_text("<!-- study:warm -->\n<!-- /study:warm -->\n")
    rl_only = {k: v for k, v in landed((0.03, 0.02, 0.035)).items() if not k.startswith("rm_")}
    write_report(load(), rl_only, tmp_path / "warm", readme=readme)
    head = readme.read_text().splitlines()[1]
    assert ("6 of 12 jobs landed" in head and "verdicts final; still to land: WARM members, clean labels 0 of 3, "
            "WARM members, 25% flipped 0 of 3; generated" in head)
    write_report(load(), landed((0.03, 0.02, 0.035)), tmp_path / "warm", readme=readme)
    assert "verdicts final; generated by" in readme.read_text()
