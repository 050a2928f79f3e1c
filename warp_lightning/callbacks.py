"""The two callbacks of the WARP loop: the EMA anchor update and the merge of an iteration's runs."""

from __future__ import annotations

import lightning as L

from warp_lightning import rl


class EMAAnchor(L.Callback):
    """theta_ema <- (1 - mu) * theta_ema + mu * theta_m after every optimizer step.

    The anchor never gets gradients; with `anchor: sft` this callback is not installed and the anchor
    stays at theta_init (the fixed-anchor baseline).
    """

    def __init__(self, mu: float):
        self.mu = mu

    def on_fit_start(self, trainer, module):
        self._anchor = [p for p in module.anchor.parameters()]
        self._policy = [p.detach() for p in module.policy.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        rl.ema_update_(self._anchor, self._policy, self.mu)


class MergeRuns(L.Callback):
    """At the end of each run, hand theta_m to the `WarpState`; after the M-th, it merges (SLERP/linear + LITI)."""

    def __init__(self, state):
        self.state = state

    def on_fit_end(self, trainer, module):
        from warp_lightning.distributed import full_state

        merges = len(self.state.merge_stats)
        self.state.finish_run(full_state(module.policy))
        if len(self.state.merge_stats) > merges and trainer.logger:
            stats = self.state.merge_stats[-1]
            trainer.logger.log_metrics({f"merge/{k}": float(v) for k, v in stats.items()}, step=trainer.global_step)
            trainer.logger.save()


class Snapshots(L.Callback):
    """theta_m as a Hugging Face folder `step_TTTT/` every `every` steps and at the run's last step.

    These are the checkpoints along training that the fronts of the baselines evaluate. One process writes
    each folder (every process with trainer=ddp_runs, one run each); a sharded policy is gathered first into
    a copy of `skeleton`.
    """

    def __init__(self, every: int, folder, tokenizer, skeleton=None):
        self.every, self.folder, self.tokenizer, self.skeleton = every, folder, tokenizer, skeleton

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        from warp_lightning.distributed import IndependentRunsStrategy, ShardedStrategy, full_state
        from warp_lightning.evaluate import save_policy
        from warp_lightning.io import save_hf_folder

        t = trainer.global_step
        if t % self.every and t != trainer.max_steps:
            return
        path = self.folder / f"step_{t:04d}"
        if isinstance(trainer.strategy, ShardedStrategy):
            state = full_state(module.policy)  # a collective: every process gathers
            if trainer.is_global_zero:
                save_policy(self.skeleton, state, self.tokenizer, path)
        elif trainer.is_global_zero or isinstance(trainer.strategy, IndependentRunsStrategy):
            save_hf_folder(path, module.policy, self.tokenizer)
