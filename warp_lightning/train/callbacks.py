"""The callbacks of a WARP run: the EMA anchor update, the merge of an iteration's runs (SLERP + LITI), snapshots."""

from __future__ import annotations

import lightning as L

from warp_lightning.algo import rl
from warp_lightning.algo.state import clone_state
from warp_lightning.policy.lora import DenseEMA, dense_state, has_lora
from warp_lightning.policy.models import save_policy
from warp_lightning.policy.sharding import full_state
from warp_lightning.runtime import signals
from warp_lightning.train.strategies import IndependentRunsStrategy, ShardedStrategy, gather_states
from warp_lightning.utils.io import save_hf_folder
from warp_lightning.utils.paths import RunLayout


class EMAAnchor(L.Callback):
    """theta_ema <- (1 - mu) * theta_ema + mu * theta_m after every optimizer step.

    The anchor never gets gradients; with `anchor: sft` this callback is not installed and the anchor
    stays at theta_init (the fixed-anchor baseline). A policy with LoRA adapters moves the dense anchor's adapted
    matrices toward W + dW, which makes the anchor exactly theta_init + EMA(dW) (`policy/lora.py`).
    """

    def __init__(self, mu: float):
        self.mu = mu

    def on_fit_start(self, trainer, module):
        self._dense = DenseEMA(module.anchor, module.policy) if has_lora(module.policy) else None
        if self._dense is None:
            self._anchor = [p for p in module.anchor.parameters()]
            self._policy = [p.detach() for p in module.policy.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._dense is not None:
            self._dense.update_(self.mu)
        else:
            rl.ema_update_(self._anchor, self._policy, self.mu)


def policy_state(policy) -> dict:
    """theta_m as dense weights under the keys of the policy without adapters (gathered if sharded)."""
    return dense_state(policy) if has_lora(policy) else full_state(policy)


class MergeRuns(L.Callback):
    """At the end of each run, hand theta_m to the `WarpState`; after the M-th, call its merge step (SLERP or
    linear, then LITI: `merge_iteration`).

    The one merge path of the loop: run after run in one process, or (trainer=ddp_runs) the M runs ending
    together, one per process, where theta_m of every process is all-gathered in run order, so that every
    process merges the same weights the same way. The merge's statistics go to the M-th run's log. Before the
    merge, `keep(trainer)` (the loop's) records the M finished runs in loop.pt: a merge that fails loses no run,
    and the command run again merges them without training them again.
    """

    def __init__(self, state, keep=None):
        self.state, self.keep = state, keep

    def on_fit_end(self, trainer, module):
        theta_m = policy_state(module.policy)
        independent = isinstance(trainer.strategy, IndependentRunsStrategy)
        if independent:
            # no process enters the all-gather before all have finished their run: one asked to stop meanwhile
            # (its checkpoint written, it will not gather) makes the others stop too instead of waiting forever
            signals.wait_for_peers(f"warp_lightning/merge/{self.state.iteration}", trainer.world_size)
            finished = gather_states(clone_state(theta_m), trainer.world_size)
        else:
            finished = [theta_m]
        for theta in finished:
            self.state.add_run(theta)
        if not self.state.ready_to_merge:
            return
        if self.keep is not None:
            self.keep(trainer)
        last_run = not independent or trainer.global_rank == trainer.world_size - 1
        merge_iteration(self.state, trainer.logger if last_run else None, trainer.global_step)


def merge_iteration(state, logger=None, step: int | None = None) -> dict:
    """The merge step of the iteration whose M runs `state` holds (`WarpState.merge`), its statistics logged to
    `logger` (the M-th run's) as `merge/NAME` at `step`. Returns them."""
    stats = state.merge()
    if logger:
        logger.log_metrics({f"merge/{k}": float(v) for k, v in stats.items()}, step=step)
        logger.save()
    return stats


class Snapshots(L.Callback):
    """theta_m as a Hugging Face folder `step_TTTT/` every `every` steps and at the run's last step.

    These are the checkpoints along training that the fronts of the baselines evaluate. One process writes
    each folder (every process with trainer=ddp_runs, one run each); a sharded policy is gathered first into
    a copy of `skeleton`.
    """

    def __init__(self, every: int, folder, tokenizer, skeleton=None):
        self.every, self.folder, self.tokenizer, self.skeleton = every, folder, tokenizer, skeleton

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        t = trainer.global_step
        if t % self.every and t != trainer.max_steps:
            return
        path = RunLayout.snapshot(self.folder, t)
        if isinstance(trainer.strategy, ShardedStrategy):
            state = full_state(module.policy)  # a collective: every process gathers
            if trainer.is_global_zero:
                save_policy(self.skeleton, state, self.tokenizer, path)
        elif trainer.is_global_zero or isinstance(trainer.strategy, IndependentRunsStrategy):
            if has_lora(module.policy):
                save_policy(self.skeleton, dense_state(module.policy), self.tokenizer, path)  # W + dW, no adapters
            else:
                save_hf_folder(path, module.policy, self.tokenizer)
