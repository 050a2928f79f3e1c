"""Weight merging of WARP.md ("SLERP of task vectors", LITI), as pure functions over state dicts.

Every function takes state dicts (`dict[str, torch.Tensor]`) and returns a NEW dict; inputs are never
mutated and the output never aliases them. Floating tensors are computed in float32 (float64 stays float64)
and returned in their own dtype; non-floating tensors (int buffers) are copied from `theta_init`. Keys of
`theta_init` that share one storage (GPT-2's `transformer.wte.weight` and `lm_head.weight`) are one
parameter: it is merged once and the output keys share the merged tensor. `MERGES` names the merge methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _check(theta_init: StateDict, thetas: Sequence[StateDict]) -> None:
    if not thetas:
        raise ValueError("need at least one model to merge")
    for m, theta in enumerate(thetas, start=1):
        for key in sorted(theta_init.keys() ^ theta.keys()):
            where = "theta_init" if key in theta_init else f"model {m}"
            raise ValueError(f"key {key!r} is only in {where}: all state dicts must have the same keys")
        for key, t in theta_init.items():
            if theta[key].shape != t.shape:
                raise ValueError(
                    f"shape mismatch for key {key!r}: {tuple(t.shape)} in theta_init, "
                    f"{tuple(theta[key].shape)} in model {m}"
                )


def _check_lam(thetas: Sequence[StateDict], lam: float | None) -> None:
    if lam is not None and len(thetas) != 2:
        raise ValueError(f"lam is the coefficient between exactly 2 models, got {len(thetas)}; use lam=None")


def _canonical_keys(sd: StateDict) -> dict[str, str]:
    """Each floating key -> the first key sharing its storage (itself unless tied); tied weights are one parameter."""
    first: dict[tuple, str] = {}
    canonical = {}
    for key, t in sd.items():
        if not t.is_floating_point():
            continue
        if t.numel() == 0:  # empty tensors may all report data_ptr 0: never tie them
            canonical[key] = key
            continue
        storage = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        canonical[key] = first.setdefault(storage, key)
    return canonical


def _merge(
    theta_init: StateDict,
    thetas: Sequence[StateDict],
    per_tensor: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor],
) -> StateDict:
    """out[k] = per_tensor(theta_init[k], [theta_1[k], ..., theta_M[k]]) for each floating parameter, once."""
    _check(theta_init, thetas)
    canonical = _canonical_keys(theta_init)
    out: StateDict = {}
    with torch.no_grad():
        for key, t in theta_init.items():
            if key not in canonical:  # integer buffers (counters, masks) have no task vector: keep theta_init
                out[key] = t.clone()
            elif canonical[key] != key:  # tied: the canonical key came earlier and is already merged
                out[key] = out[canonical[key]]
            else:
                dtype = _compute_dtype(t)
                merged = per_tensor(t.to(dtype), [theta[key].to(dtype) for theta in thetas])
                out[key] = merged.to(t.dtype, copy=True)
    return out


def _angle(delta_1: torch.Tensor, delta_2: torch.Tensor) -> float | None:
    """Omega = angle(delta_1, delta_2) in radians, or None when a task vector is ~0 (no direction)."""
    n_1, n_2 = delta_1.norm(), delta_2.norm()
    tiny = torch.finfo(delta_1.dtype).tiny
    if n_1 <= tiny or n_2 <= tiny:
        return None
    u_1, u_2 = delta_1.flatten() / n_1, delta_2.flatten() / n_2
    # 2*atan2(|u1-u2|, |u1+u2|) (Kahan) instead of acos(u1.u2), which loses all precision near 0 and pi:
    # exactly where the collinear fallback has to be decided.
    return 2.0 * math.atan2((u_1 - u_2).norm().item(), (u_1 + u_2).norm().item())


def _slerp_task_vectors(delta_1: torch.Tensor, delta_2: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """sin((1-lam)*Omega)/sin(Omega) * delta_1 + sin(lam*Omega)/sin(Omega) * delta_2 (WARP.md)."""
    omega = _angle(delta_1, delta_2)
    if omega is None or abs(math.sin(omega)) < eps:
        # near-collinear or zero task vectors: SLERP is 0/0, and linear interpolation is its limit
        return (1 - lam) * delta_1 + lam * delta_2
    sin_omega = math.sin(omega)
    return math.sin((1 - lam) * omega) / sin_omega * delta_1 + math.sin(lam * omega) / sin_omega * delta_2


def slerp(
    theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None, *, eps: float = 1e-6
) -> StateDict:
    """SLERP of the task vectors delta_m = theta_m - theta_init, tensor by tensor (each its own Omega).

    With 2 models and `lam`: theta_init + sin((1-lam)*Omega)/sin(Omega) * delta_1 + sin(lam*Omega)/sin(Omega) * delta_2.
    With lam=None, any M >= 1: slerp_1 = theta_1, slerp_m = slerp(theta_init, [slerp_{m-1}, theta_m], 1/m).
    Falls back to linear interpolation when |sin(Omega)| < eps or a task vector is ~0.

    The paper: WARP's SLERP of task vectors (Rame et al. 2024), with the recursion for M > 2 of WARP.md (not
    associative: the order of the runs matters; `multislerp` is a symmetric mean). Its namesake, mergekit's
    `slerp`, is another merge: it interpolates the two models' whole weights, from the base model to the other
    (`t`), with the angle between the weights themselves, not between task vectors from a shared start, and takes
    exactly two models. Full weights are nearly collinear, so that SLERP is close to a linear merge (WARP.md).
    mergekit's `nuslerp` with a base model (and `nuslerp_flatten: true`, its default) is this function for M = 2,
    lambda = weight_2 / (weight_1 + weight_2).
    """
    _check_lam(thetas, lam)

    def per_tensor(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        if lam is not None:
            return init + _slerp_task_vectors(ts[0] - init, ts[1] - init, lam, eps)
        merged = ts[0]
        for m, theta_m in enumerate(ts[1:], start=2):
            merged = init + _slerp_task_vectors(merged - init, theta_m - init, 1 / m, eps)
        return merged

    return _merge(theta_init, thetas, per_tensor)


def linear(theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None) -> StateDict:
    """The linear-merge baseline: theta_init + (1-lam)*delta_1 + lam*delta_2, or (lam=None) the uniform average.

    The paper's baseline (WARP, "SLERP against linear merging"), the uniform weight average of model soups. Equal to
    mergekit's `linear` (a weighted average of the whole weights, weights normalised) with weights (1 - lam, lam),
    or equal weights: theta_init cancels out of an average whose weights sum to 1."""
    _check_lam(thetas, lam)

    def per_tensor(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        if lam is None:
            return sum(ts) / len(ts)
        return init + (1 - lam) * (ts[0] - init) + lam * (ts[1] - init)

    return _merge(theta_init, thetas, per_tensor)


def _unit(delta: torch.Tensor) -> torch.Tensor | None:
    norm = delta.norm()
    return None if norm <= torch.finfo(delta.dtype).tiny else delta / norm


def multislerp(theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None, *,
               eps: float = 1e-6) -> StateDict:
    """A symmetric spherical mean of the M task vectors, tensor by tensor: mean(delta_m) / |mean(u_m)|, where
    u_m = delta_m / |delta_m|. The linear mean shrinks by |mean(u_m)| the task vectors that point apart; this
    undoes it. Order-invariant; for M = 2 it is WARP's SLERP at lambda = 1/2 exactly (sin(Omega/2)/sin(Omega) =
    1 / (2 cos(Omega/2)) and |u_1 + u_2| = 2 cos(Omega/2)), whatever the norms; equal-norm task vectors keep their
    norm. Falls back to the linear mean when a task vector is ~0 or the unit vectors cancel (|mean(u_m)| < eps).
    `lam` must be None: the mean is uniform.

    Not the paper's (WARP merges M > 2 runs by its recursive SLERP, `slerp`): the symmetric extension of its
    lambda = 1/2 SLERP, chosen so that M = 2 gives WARP's merge whatever the norms. Its namesake, mergekit's
    `multislerp`, is another mean: the normalised mean of the unit vectors (a point on the sphere) times the mean
    of the norms, `multislerp_mergekit` here. The two agree when the task vectors have equal norms and differ in
    direction when they do not: this one leans toward the longer task vectors as SLERP does (its direction is that
    of mean(delta_m)), mergekit's keeps the bisector of the unit vectors (cosine 6 / sqrt(52) = 0.83 between the
    two for orthogonal task vectors of norms 1 and 5)."""
    if lam is not None:
        raise ValueError("multislerp is the uniform spherical mean of the M runs; use lam=None")

    def per_tensor(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        deltas = [t - init for t in ts]
        mean = sum(deltas) / len(deltas)
        units = [_unit(d) for d in deltas]
        if any(u is None for u in units):
            return init + mean
        resultant = (sum(units) / len(units)).norm().item()
        return init + (mean / resultant if resultant >= eps else mean)

    return _merge(theta_init, thetas, per_tensor)


def multislerp_mergekit(theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None, *,
                        eps: float = 1e-6) -> StateDict:
    """mergekit's `multislerp` with equal weights and a base model, tensor by tensor: the normalised mean of the
    unit task vectors u_m = delta_m / |delta_m| (the direction) times the mean of the norms |delta_m| (the length).
    Written here from that description, so that a merge configured as in mergekit can be reproduced and compared
    with `multislerp` (the two differ when the norms differ; see there). Order-invariant; equal-norm task vectors
    give `multislerp`'s result, hence WARP's SLERP at lambda = 1/2 for M = 2; for two task vectors of other norms
    the direction is the bisector of their unit vectors (SLERP's leans toward the longer one) and the norm the mean
    of theirs. A ~0 task vector has no direction: it adds none, and its norm (0) counts in the mean, as in
    mergekit. Where the unit vectors cancel (|mean(u_m)| < eps) the linear mean is taken (mergekit does so for two
    models and stops for more). `lam` must be None: the mean is uniform."""
    if lam is not None:
        raise ValueError("multislerp_mergekit is the uniform spherical mean of the M runs; use lam=None")

    def per_tensor(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        deltas = [t - init for t in ts]
        units = [u for u in map(_unit, deltas) if u is not None]
        direction = sum(units, torch.zeros_like(init)) / len(deltas)
        resultant = direction.norm().item()
        if resultant < eps:
            return init + sum(deltas) / len(deltas)
        length = sum(d.norm() for d in deltas) / len(deltas)
        return init + direction / resultant * length

    return _merge(theta_init, thetas, per_tensor)


def ties(theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None, *,
         density: float = 0.2) -> StateDict:
    """TIES merging (Yadav et al. 2023) of the M task vectors, tensor by tensor: trim each delta_m to its
    `density` fraction of largest-magnitude entries (the rest set to 0), elect each entry's sign as the sign of
    the sum of the trimmed deltas, and average, per entry, only the trimmed deltas that are non-zero and agree
    with the elected sign (the disjoint mean; 0 where none does). `lam` must be None.

    Against the paper (Yadav et al., "TIES-Merging", NeurIPS 2023): the same three steps, but its code trims the
    whole task vector flattened over every parameter (one threshold for the model) where this trims each tensor on
    its own (one threshold per tensor), and it scales the merged task vector by a factor lambda chosen on
    validation data; here there is none (lambda = 1). Against its namesake, mergekit's `ties`: the same per-tensor
    trim to `density` and the same sign election by the sum of the trimmed entries (its default `sum`) and disjoint
    mean (its `normalize: true`), with mergekit's per-model `weight` fixed to 1 and no `lambda` scaling; where the
    sum of an entry is exactly 0, mergekit elects + and keeps the positive entries, this elects none and gives 0."""
    if lam is not None:
        raise ValueError("ties merges the M runs symmetrically; use lam=None")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")

    def trim(delta: torch.Tensor) -> torch.Tensor:
        keep = max(1, math.ceil(density * delta.numel()))
        if keep >= delta.numel():
            return delta
        threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
        return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))

    def per_tensor(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        trimmed = torch.stack([trim(t - init) for t in ts])
        elected = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
        count = agree.sum(0)
        total = (trimmed * agree).sum(0)
        return init + torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))

    return _merge(theta_init, thetas, per_tensor)


def liti(theta_init: StateDict, theta_merged: StateDict, eta: float) -> StateDict:
    """LITI, interpolation towards initialisation: (1 - eta) * theta_init + eta * theta_merged. With eta > 1 it
    extrapolates beyond theta_merged (ExPO: theta_init + eta * (theta_merged - theta_init), alpha = eta - 1)."""
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return _merge(theta_init, [theta_merged], lambda init, ts: (1 - eta) * init + eta * ts[0])


def merge_stats(
    theta_init: StateDict, thetas: Sequence[StateDict], theta_merged: StateDict
) -> dict[str, float]:
    """Logging statistics; tied tensors are counted once.

    `angle_deg_mean/min/max`: per-tensor angle between delta_1 and delta_2 in degrees, over tensors where both
    are nonzero (absent when M < 2 or no such tensor). `task_vector_norm_{m}` (m = 1..M) and
    `merged_task_vector_norm`: global L2 norms over all floating tensors.
    """
    _check(theta_init, [*thetas, theta_merged])
    angles: list[float] = []
    squared_norms = [0.0] * (len(thetas) + 1)
    with torch.no_grad():
        for key, canonical in _canonical_keys(theta_init).items():
            if canonical != key:
                continue
            dtype = _compute_dtype(theta_init[key])
            init = theta_init[key].to(dtype)
            deltas = [theta[key].to(dtype) - init for theta in [*thetas, theta_merged]]
            for i, delta in enumerate(deltas):
                squared_norms[i] += delta.norm().item() ** 2
            if len(thetas) >= 2 and (omega := _angle(deltas[0], deltas[1])) is not None:
                angles.append(math.degrees(omega))
    stats = {f"task_vector_norm_{m}": math.sqrt(s) for m, s in enumerate(squared_norms[:-1], start=1)}
    stats["merged_task_vector_norm"] = math.sqrt(squared_norms[-1])
    if angles:
        stats |= {
            "angle_deg_mean": sum(angles) / len(angles),
            "angle_deg_min": min(angles),
            "angle_deg_max": max(angles),
        }
    return stats


@dataclass(frozen=True)
class Option:
    """A keyword option of a merge method (`warp.merge_options.NAME`): a number (`kind` float) or an integer
    (`kind` int) between `low` and `high`, each end excluded where `*_open`; `what` it sets, in a few words."""
    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    what: str = ""

    def accepts(self, value) -> bool:
        kinds = int if self.kind is int else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """`a number in (0, 1] (what it sets)`: the words of a refusal."""
        interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"{'an integer' if self.kind is int else 'a number'} in {interval}" + (f" ({self.what})" if self.what else "")


@dataclass(frozen=True)
class MergeMethod:
    """A way to merge the M runs of an iteration. `pairwise_lambda`: it takes WARP's lambda between two runs
    (slerp, linear; with M != 2 they use their uniform scheme); the symmetric M-way means take none. `options`:
    the keyword options of `fn` that `warp.merge_options` may set, by name (the config check reads them)."""
    fn: Callable[..., StateDict]
    pairwise_lambda: bool
    options: dict[str, Option] = field(default_factory=dict)


_EPS = Option(float, 0.0, 1.0, low_open=True, high_open=True,
              what="below it, the task vectors are merged linearly instead")

# The merge methods that `warp.merge` names. A method added here, with its options, is accepted by the config
# check (train/checks.py: the method, and `warp.merge_options` against its `options`) and used by
# `WarpState.merge` (through `merge_runs`): the one place to edit. Each function's docstring says how it relates
# to the paper and to mergekit's method of the same name (docs/experiments.md, "The WARP family"):
# - slerp: the paper's (task vectors, recursive for M > 2); mergekit's `slerp` interpolates whole weights, its
#   `nuslerp` with a base model is this one for M = 2;
# - linear: the paper's baseline, mergekit's `linear`;
# - multislerp: the symmetric mean that is WARP's SLERP at lambda = 1/2 for M = 2; NOT mergekit's `multislerp`,
#   which is multislerp_mergekit (the same when the task vectors have equal norms);
# - ties: the TIES paper's steps trimmed per tensor, as mergekit's `ties` (weights 1, no lambda scaling).
MERGES: dict[str, MergeMethod] = {
    "slerp": MergeMethod(slerp, pairwise_lambda=True, options={"eps": _EPS}),
    "linear": MergeMethod(linear, pairwise_lambda=True),
    "multislerp": MergeMethod(multislerp, pairwise_lambda=False, options={"eps": _EPS}),
    "multislerp_mergekit": MergeMethod(multislerp_mergekit, pairwise_lambda=False, options={"eps": _EPS}),
    "ties": MergeMethod(ties, pairwise_lambda=False, options={
        "density": Option(float, 0.0, 1.0, low_open=True, what="the fraction of each task vector's entries kept")}),
}


def merge_runs(method: str, theta_init: StateDict, thetas: Sequence[StateDict], lam: float | None = None,
               **options) -> StateDict:
    """The runs `thetas` merged from `theta_init` by `MERGES[method]`, with lambda where the method takes it;
    `options` go to the method (e.g. `density` for ties)."""
    merge = MERGES[method]
    return merge.fn(theta_init, thetas, lam if merge.pairwise_lambda and len(thetas) == 2 else None, **options)
