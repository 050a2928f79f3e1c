"""FSDP2 for the policy functions: shard a Hugging Face causal LM, gather its weights around calls that read
them outside `model.forward` (sampling, log-probs), and gather whole state dicts for merges and saving."""

from __future__ import annotations

import contextlib
import functools
import types

import torch
from torch.distributed.tensor import DTensor

from warp_lightning.runtime import internals


def gathers_weights(fn=None, *, all_blocks: bool = False):
    """`fn(model, ...)` reads the model's weights outside `model.forward`. For a model sharded by
    `shard_model` it runs inside FSDP's forward hooks (`model.run_gathered`): the weights are
    gathered around the call and freed after it, or after backward when the result carries gradients (a gathered
    copy kept longer would miss the next optimizer or EMA update of the shards). With `all_blocks`, the blocks
    too stay gathered for the whole call (`blocks_kept`), for loops that run them once per token."""
    if fn is None:
        return functools.partial(gathers_weights, all_blocks=all_blocks)

    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        if not hasattr(model, "run_gathered"):
            return fn(model, *args, **kwargs)

        with blocks_kept(model) if all_blocks else contextlib.nullcontext():
            out = model.run_gathered(fn, *args, **kwargs)
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in (out if isinstance(out, tuple) else ())):
            model.reshard()  # no backward to come (sampling, the anchor): free the gathered root weights now
        return out

    return call


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2 on a Hugging Face causal LM: each transformer block (`_no_split_modules`) is its own unit, the rest
    (embeddings, final norm, the tied head) the root's.

    The policy functions read the head's weight and call `base_model` outside `model.forward`; they run through
    `model.run_gathered(fn, ...)`, which FSDP treats as a forward (root weights gathered around the call, blocks
    gathered one at a time inside it or all at once with `blocks_kept`, gradients reduce-scattered after backward).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if isinstance(model, FSDPModule):
        return
    blocks = internals.no_split_modules(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer block class (_no_split_modules) to shard")
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # the shards themselves: while gathered, `model.parameters()` are copies refreshed without a version bump
    model.shards = tuple(model.parameters())
    model.run_gathered = types.MethodType(lambda self, fn, *args, **kwargs: fn(self, *args, **kwargs), model)
    register_fsdp_forward_method(model, "run_gathered")


@contextlib.contextmanager
def blocks_kept(model: torch.nn.Module):
    """Within: each sharded block of `model`, once gathered, stays gathered, and all are freed on exit. A decoding
    loop runs every block once per token: one gather per block instead of one per block and token."""
    from torch.distributed.fsdp import FSDPModule

    blocks = [m for m in model.modules() if m is not model and isinstance(m, FSDPModule)]
    for block in blocks:
        block.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for block in blocks:
            block.set_reshard_after_forward(True, recurse=False)
            block.reshard()


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (DTensor) gathered on every process; any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with sharded entries gathered (call it on every process); tied entries stay one tensor."""
    gathered: dict[int, torch.Tensor] = {}
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) not in gathered:
            gathered[id(t)] = whole(t.detach())
        out[key] = gathered[id(t)]
    return out
