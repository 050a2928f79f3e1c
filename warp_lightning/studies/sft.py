"""SFT against WARP's final policy, from the fronts: the points it pairs, and its verdict (the claims of the `chat`
study, conf/study/chat.yaml: `claims: sft`).

Per seed, the SFT policy is eta = 0 and WARP's final policy eta = 1 of the last iteration's SLERP front, both
evaluated on the same test prompts and sampling random numbers by the same job, so the comparison pairs prompts
and seeds (`eval.report.endpoint_difference` with `paired_seeds`: the two-level bootstrap and the paired t over the
seeds' own differences, the verdict taking the wider). On the proxy reward (what RL maximised, for a sum reward
its total) and on the held-out judge (what it was not trained against): *holds* when the interval lies above 0,
*contradicted* below, otherwise *unresolved* with the smallest effect the design detects.
"""

from __future__ import annotations

from warp_lightning.eval.report import claim_record, compare_metrics, endpoint_difference, main_curves

CLAIM = "WARP's final policy beats the SFT policy"


def final_and_sft(rows: list[dict]) -> tuple[int, dict[int, dict], dict[int, dict]]:
    """(the last iteration, {seed: its eta = 1 point}, {seed: its eta = 0 point}) of the SLERP fronts, for the seeds
    that have both; (0, {}, {}) without a front."""
    fronts = [r for r in main_curves(rows) if r["kind"] == "liti" and r["merge"] == "slerp"]  # not other merges
    if not fronts:
        return 0, {}, {}
    last = max(int(r["iteration"]) for r in fronts)
    at = {eta: {int(r["seed"]): r for r in fronts if int(r["iteration"]) == last and r["eta"] == eta}
          for eta in (0.0, 1.0)}
    seeds = sorted(set(at[0.0]) & set(at[1.0]))
    return last, {s: at[1.0][s] for s in seeds}, {s: at[0.0][s] for s in seeds}


def claims(rows: list[dict], scores: dict | None = None) -> list[dict]:
    """One claim: WARP's final policy (eta = 1 of the last iteration) above SFT (eta = 0), paired per seed."""
    last, final, sft = final_and_sft(rows)
    comparisons = []
    if final:
        what = f"WARP final (iteration {last}, eta = 1) over SFT (eta = 0)"
        comparisons = [(what, compare_metrics(endpoint_difference, {s: [r] for s, r in final.items()},
                                              {s: [r] for s, r in sft.items()}, rows, scores, paired=True))]
    return [claim_record(CLAIM, "WARP's final policy scores above the SFT policy on the same test prompts and random "
                         "numbers (paired per prompt and seed)", comparisons,
                         "needs a front with eta = 0 and eta = 1 of the last iteration")]
