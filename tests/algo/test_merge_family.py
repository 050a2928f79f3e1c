"""M-way merges beside SLERP (the symmetric spherical mean, TIES) and LITI beyond eta = 1 (ExPO), against their
defining properties and a hand computation."""

import itertools
import math

import pytest
import torch

from warp_lightning.algo import merging


def states(seed: int, m: int, shapes=((6, 5), (7,))):
    g = torch.Generator().manual_seed(seed)
    base = {f"w{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    runs = [{k: v + torch.randn(v.shape, generator=g) * (1 + r) for k, v in base.items()} for r in range(m)]
    return base, runs


def close(a, b, **kw):
    for k in a:
        torch.testing.assert_close(a[k], b[k], **kw)


def test_spherical_mean_of_two_runs_is_slerp_at_one_half_whatever_the_norms():
    base, runs = states(0, 2)  # run 2's task vector is about twice as long as run 1's
    close(merging.multislerp(base, runs), merging.slerp(base, runs, 0.5), atol=1e-5, rtol=1e-5)


def test_spherical_mean_is_invariant_to_the_order_of_its_inputs_unlike_recursive_slerp():
    base, runs = states(1, 3)
    means = [merging.multislerp(base, list(p)) for p in itertools.permutations(runs)]
    for other in means[1:]:
        close(means[0], other, atol=1e-5, rtol=1e-5)
    forward, reverse = merging.slerp(base, runs), merging.slerp(base, runs[::-1])
    assert not torch.allclose(forward["w0"], reverse["w0"], atol=1e-4)  # the recursion is not associative


def test_spherical_mean_keeps_the_norm_of_equal_norm_task_vectors_where_the_linear_mean_shrinks():
    base, runs = states(2, 4)
    runs = [{k: base[k] + 3.0 * (r[k] - base[k]) / (r[k] - base[k]).norm() for k in base} for r in runs]
    merged, lin = merging.multislerp(base, runs), merging.linear(base, runs)
    for k in base:
        assert (merged[k] - base[k]).norm().item() == pytest.approx(3.0, rel=1e-5)
        assert (lin[k] - base[k]).norm().item() < 3.0 * 0.8


def test_spherical_mean_falls_back_to_the_linear_mean_for_a_zero_task_vector():
    base, runs = states(3, 3)
    runs[1] = {k: v.clone() for k, v in base.items()}
    close(merging.multislerp(base, runs), merging.linear(base, runs))


def test_mergekit_multislerp_is_ours_for_equal_norms_and_slerp_at_one_half_for_two():
    base, runs = states(9, 4)
    runs = [{k: base[k] + 3.0 * (r[k] - base[k]) / (r[k] - base[k]).norm() for k in base} for r in runs]
    close(merging.multislerp_mergekit(base, runs), merging.multislerp(base, runs), atol=1e-5, rtol=1e-5)
    close(merging.multislerp_mergekit(base, runs[:2]), merging.slerp(base, runs[:2], 0.5), atol=1e-5, rtol=1e-5)


def test_mergekit_multislerp_is_the_mean_unit_direction_times_the_mean_norm_by_hand():
    base = {"w": torch.ones(3)}
    runs = [{"w": base["w"] + d} for d in (torch.tensor([3.0, 0, 0]), torch.tensor([0, 4.0, 0]),
                                           torch.tensor([0, 0, 5.0]))]
    # unit vectors e1, e2, e3: their mean (1, 1, 1) / 3, normalised (1, 1, 1) / sqrt(3); mean norm (3 + 4 + 5) / 3 = 4
    expected = base["w"] + 4.0 / math.sqrt(3.0) * torch.ones(3)
    torch.testing.assert_close(merging.multislerp_mergekit(base, runs)["w"], expected)
    # ours: mean(delta) / |mean(u)| = (3, 4, 5) / 3 / (1 / sqrt(3)): the longer task vectors weigh more
    ours = base["w"] + torch.tensor([3.0, 4, 5]) / math.sqrt(3.0)
    torch.testing.assert_close(merging.multislerp(base, runs)["w"], ours)


def test_mergekit_multislerp_on_random_tensors_has_the_mean_direction_and_the_mean_norm():
    base, runs = states(10, 3)
    merged = merging.multislerp_mergekit(base, runs)
    for k in base:
        deltas = [r[k] - base[k] for r in runs]
        direction = sum(d / d.norm() for d in deltas)
        out = merged[k] - base[k]
        assert out.norm().item() == pytest.approx(sum(d.norm().item() for d in deltas) / 3, rel=1e-5)
        torch.testing.assert_close(out / out.norm(), direction / direction.norm(), atol=1e-5, rtol=1e-5)


def test_two_task_vectors_of_other_norms_keep_the_bisector_in_mergekits_multislerp_unlike_slerp():
    """M = 2, orthogonal task vectors of norms 1 and 5: mergekit's direction is the bisector (1, 1) / sqrt(2), of
    norm 3; WARP's SLERP at 1/2 (= ours) is (1, 5) / (2 cos 45 deg) = (1, 5) / sqrt(2): cosine 6 / sqrt(52)."""
    base = {"w": torch.zeros(2)}
    runs = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 5.0])}]
    theirs = merging.multislerp_mergekit(base, runs)["w"]
    torch.testing.assert_close(theirs, torch.tensor([3.0, 3.0]) / math.sqrt(2.0))
    ours = merging.multislerp(base, runs)["w"]
    torch.testing.assert_close(ours, merging.slerp(base, runs, 0.5)["w"])
    torch.testing.assert_close(ours, torch.tensor([1.0, 5.0]) / math.sqrt(2.0))
    cosine = torch.dot(ours, theirs) / (ours.norm() * theirs.norm())
    assert cosine.item() == pytest.approx(6 / math.sqrt(52), rel=1e-6)
    assert merging.multislerp_mergekit(base, runs[::-1])["w"].tolist() == pytest.approx(theirs.tolist())


def test_mergekit_multislerp_with_a_zero_task_vector_or_cancelling_ones():
    base = {"w": torch.zeros(2)}
    zero = {"w": torch.zeros(2)}
    # a zero task vector adds no direction and a norm 0: direction e1, norm (2 + 0) / 2
    torch.testing.assert_close(merging.multislerp_mergekit(base, [{"w": torch.tensor([2.0, 0.0])}, zero])["w"],
                               torch.tensor([1.0, 0.0]))
    opposite = [{"w": torch.tensor([2.0, 0.0])}, {"w": torch.tensor([-1.0, 0.0])}]  # unit vectors cancel: linear
    torch.testing.assert_close(merging.multislerp_mergekit(base, opposite)["w"], torch.tensor([0.5, 0.0]))


def test_ties_against_a_hand_computation():
    base = {"w": torch.zeros(6)}
    d1 = torch.tensor([4.0, -1.0, 0.5, -3.0, 0.1, 2.0])
    d2 = torch.tensor([-2.0, 3.0, 0.2, -1.0, 5.0, -0.3])
    d3 = torch.tensor([1.0, -4.0, -0.6, 0.2, 0.3, -2.5])
    runs = [{"w": d} for d in (d1, d2, d3)]
    # density 0.5: keep the 3 largest |entries| of each task vector:
    # t1 = [4, 0, 0, -3, 0, 2], t2 = [-2, 3, 0, 0, 5, 0], t3 = [1, -4, 0, 0, 0, -2.5]
    # elected signs of t1 + t2 + t3 = [3, -1, 0, -3, 5, -0.5]: + - 0 - + -
    # disjoint means: entry 0: (4 + 1) / 2; 1: -4 (t3); 2: no sign, 0; 3: -3; 4: 5; 5: -2.5 (t3; t1's +2 disagrees)
    expected = torch.tensor([2.5, -4.0, 0.0, -3.0, 5.0, -2.5])
    torch.testing.assert_close(merging.ties(base, runs, density=0.5)["w"], expected)
    # density 1: nothing trimmed; entry 0: + elected (4 - 2 + 1 = 3), mean of 4 and 1
    full = merging.ties(base, runs, density=1.0)["w"]
    assert full[0].item() == pytest.approx(2.5) and full[1].item() == pytest.approx(-2.5)


def test_ties_and_the_spherical_mean_refuse_a_lambda():
    base, runs = states(4, 2)
    for fn in (merging.ties, merging.multislerp, merging.multislerp_mergekit):
        with pytest.raises(ValueError, match="lam=None"):
            fn(base, runs, 0.3)


@pytest.mark.parametrize("eta", [1.0, 1.5, 2.0])
def test_liti_beyond_one_extrapolates_exactly(eta):
    sft, (aligned,) = states(5, 1)
    out = merging.liti(sft, aligned, eta)
    for k in sft:
        torch.testing.assert_close(out[k], sft[k] + eta * (aligned[k] - sft[k]), atol=1e-6, rtol=0)


def test_merge_runs_gives_lambda_only_to_the_pairwise_methods():
    base, runs = states(6, 2)
    close(merging.merge_runs("slerp", base, runs, 0.3), merging.slerp(base, runs, 0.3))
    close(merging.merge_runs("linear", base, runs, 0.3), merging.linear(base, runs, 0.3))
    close(merging.merge_runs("multislerp", base, runs, 0.3), merging.multislerp(base, runs))
    close(merging.merge_runs("multislerp_mergekit", base, runs, 0.3), merging.multislerp_mergekit(base, runs))
    close(merging.merge_runs("ties", base, runs, 0.3, density=0.5), merging.ties(base, runs, density=0.5))
    three = states(7, 3)[1]
    close(merging.merge_runs("slerp", base, three, 0.3), merging.slerp(base, three))  # M != 2: recursive 1/m


def test_warp_state_merges_with_the_registry_method_and_its_options():
    from warp_lightning.algo.state import WarpState

    base, runs = states(8, 3)
    state = WarpState(base, runs_per_iteration=3, merge_method="ties", liti_eta=1.0, merge_options={"density": 0.5})
    for r in runs:
        state.add_run(r)
    state.merge()
    close(state.theta_slerp, merging.ties(base, runs, density=0.5))


def test_each_merge_method_declares_the_keyword_options_its_function_takes():
    """The registry's `options` are the one declaration `warp.merge_options` is checked against: exactly the
    keyword-only parameters of each method's function, each default inside its declared range."""
    import inspect

    for name, method in merging.MERGES.items():
        params = {p.name: p for p in inspect.signature(method.fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
        assert set(method.options) == set(params), name
        for option, declared in method.options.items():
            assert declared.accepts(params[option].default), (name, option)


@pytest.mark.parametrize(("method", "options", "message"), [
    ("ties", {"density": 1.5}, "warp.merge_options.density=1.5 is invalid: warp.merge=ties takes a number in (0, 1] "
                               "(the fraction of each task vector's entries kept)"),
    ("ties", {"density": 0}, "warp.merge_options.density=0 is invalid: warp.merge=ties takes a number in (0, 1]"),
    ("ties", {"density": True}, "warp.merge_options.density=True is invalid: warp.merge=ties takes a number in"),
    ("ties", {"density": float("nan")}, "warp.merge_options.density=nan is invalid: warp.merge=ties takes a number"),
    ("slerp", {"density": 0.2}, "warp.merge_options.density=0.2 is invalid: warp.merge=slerp takes no option density "
                                "(it takes eps)"),
    ("linear", {"eps": 1e-6}, "warp.merge_options.eps=1e-06 is invalid: warp.merge=linear takes no option eps "
                              "(it takes none)"),
    ("multislerp", {"eps": 0.0}, "warp.merge_options.eps=0.0 is invalid: warp.merge=multislerp takes a number in "
                                 "(0, 1)"),
    ("multislerp_mergekit", {"density": 0.2}, "warp.merge_options.density=0.2 is invalid: "
                                              "warp.merge=multislerp_mergekit takes no option density (it takes eps)"),
    ("ties", [0.2], "warp.merge_options=[0.2] is invalid: must be a mapping {name: value}"),
])
def test_merge_options_outside_the_declaration_are_one_line(method, options, message):
    from warp_lightning import UserError
    from warp_lightning.train.checks import check_merge_options

    with pytest.raises(UserError) as err:
        check_merge_options(method, options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_merge_options_inside_the_declaration_pass_and_merge():
    from warp_lightning.train.checks import check_merge_options

    for method, options in (("ties", {"density": 1}), ("ties", {"density": 0.2}), ("slerp", {"eps": 1e-5}),
                            ("multislerp", {}), ("multislerp_mergekit", {"eps": 1e-4}), ("linear", None),
                            ("linear", {})):
        check_merge_options(method, options)
        base, runs = states(5, 2)
        merging.merge_runs(method, base, runs, 0.5, **(options or {}))  # what WarpState.merge then calls
