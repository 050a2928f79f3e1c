"""ExPO in the report: points beyond eta = 1 are judged by their own claim (not mixed into the LITI claims), and
the eta that ExPO's selection rule picks."""

from warp_lightning.eval.report import chosen_eta, claims


def point(curve, kind, kl, reward, eta="", step="", iteration=1, merge="slerp", anchor="ema"):
    return {"curve": curve, "kind": kind, "merge": merge, "anchor": anchor, "seed": 0, "iteration": iteration,
            "eta": eta, "step": step, "kl_mean": kl, "reward_mean": reward, "judge_mean": ""}


def front_rows():
    rows = [point("WARP i2", "liti", kl, r, eta=e, iteration=2)
            for e, kl, r in ((0.0, 0.0, 0.3), (0.5, 2.0, 0.5), (1.0, 5.0, 0.6), (1.5, 9.0, 0.7), (2.0, 14.0, 0.65))]
    rows += [point("EMA", "training", kl, r, step=t, merge="none")
             for t, kl, r in ((0, 0.0, 0.3), (20, 4.0, 0.45), (40, 10.0, 0.6))]
    return rows


def test_the_selection_rule_picks_the_best_eta_of_the_last_front_even_beyond_one():
    choice = chosen_eta(front_rows())
    assert choice == {"curve": "WARP i2", "eta": 1.5, "reward_mean": 0.7, "extrapolation": True}
    assert chosen_eta([r for r in front_rows() if r["kind"] == "training"]) is None


def test_extrapolated_points_have_their_own_claim_and_stay_out_of_the_liti_claims():
    found = {c["claim"]: c for c in claims(front_rows())}
    expo = found["extrapolation (ExPO) of the last merge beats RL at matched KL"]
    assert expo["comparisons"] and expo["comparisons"][0]["what"] == "WARP i2 extrapolated over EMA"
    without = {c["claim"]: c for c in claims([r for r in front_rows() if r["eta"] in ("", 0.0, 0.5, 1.0)])}
    assert not without["extrapolation (ExPO) of the last merge beats RL at matched KL"]["comparisons"]
    for claim, c in without.items():  # the LITI claims are those of eta <= 1, whatever lies beyond
        if "ExPO" not in claim:
            assert found[claim] == c
