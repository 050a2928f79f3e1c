"""Every use of a private (underscore) attribute of Lightning, torch or transformers, each in one named function.

These are not part of those packages' API and may change in any release. Keeping them here makes that risk
visible in one place, and `tests/runtime/test_internals.py` checks each one against the installed versions: an upgrade
that removes one fails there, naming the attribute and the version, instead of somewhere in a training run.
`USES` lists them (function, package, attribute) for that test; a function added here goes there too.
`OVERRIDES` lists the private members of a Lightning class that a subclass of ours overrides, sets or calls
(`train/strategies.py`): the same risk, checked by the same test, and a test finds any subclass member not listed.

Lightning and torch are imported inside the functions: the CLI imports this module (through runtime/signals.py)
before it knows whether the command needs them, and `algo/` (pure tensor code) must not pull Lightning in.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# (function here, package, the private attribute it relies on: a module path, or a class then attributes)
USES = (
    ("dump_checkpoint", "lightning", "Trainer._checkpoint_connector.dump_checkpoint"),
    ("stop_after_this_step", "lightning", "Trainer._signal_connector.received_sigterm"),
    ("take_over_signals", "lightning", "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector"),
    ("take_over_signals", "lightning", "Trainer._signal_connector"),
    ("take_over_signals", "lightning", "Trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor"),
    ("logger_step", "lightning", "Trainer.fit_loop.epoch_loop._batches_that_stepped"),
    ("purge_tensorboard_from", "lightning", "TensorBoardLogger._kwargs"),
    ("attached_trainer", "lightning", "LightningModule._trainer"),
    ("log_on_every_rank", "lightning", "lightning.pytorch.utilities.rank_zero.rank_zero_only.rank"),
    ("default_store", "torch", "torch.distributed.distributed_c10d._get_default_store"),
    ("foreach_lerp_", "torch", "torch._foreach_lerp_"),
    ("version_counter", "torch", "Tensor._version"),
    ("storage_use_count", "torch", "torch._C._storage_Use_Count"),
    ("storage_use_count", "torch", "UntypedStorage._cdata"),
    ("attention_implementation", "transformers", "GPT2LMHeadModel.config._attn_implementation"),
    ("no_split_modules", "transformers", "GPT2LMHeadModel._no_split_modules"),
)


# (our class and member, package, the private member of its base it overrides, sets or calls)
OVERRIDES = (
    ("IndependentRunsStrategy._setup_model", "lightning", "lightning.pytorch.strategies.DDPStrategy._setup_model"),
    ("IndependentRunsStrategy._register_ddp_hooks", "lightning",
     "lightning.pytorch.strategies.DDPStrategy._register_ddp_hooks"),
    ("ShardedStrategy._data_parallel_size", "lightning", "ModelParallelStrategy._data_parallel_size"),
    ("ShardedStrategy._setup_distributed", "lightning",
     "lightning.pytorch.strategies.ModelParallelStrategy._setup_distributed"),
)
PACKAGES = ("lightning", "torch", "transformers")  # whose private members are listed here


# --- Lightning ------------------------------------------------------------------------------------------------

def dump_checkpoint(trainer) -> dict:
    """The full checkpoint of the step just finished, as a dict, without writing it.

    `trainer.save_checkpoint` writes at once; our checkpoints are taken at the end of step t and written when
    step t+1 starts (or when the loop stops), once step t's metrics are logged (runtime/resume.py)."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def stop_after_this_step(trainer) -> None:
    """Make Lightning's loop stop (its `SIGTERMException`) once the step in progress is complete.

    The flag its own SIGTERM handler sets; we set it ourselves because `take_over_signals` removed that handler."""
    trainer._signal_connector.received_sigterm = True


@functools.cache
def _signal_connector_class():
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    class QuietSignals(_SignalConnector):
        """Lightning's signal connector without its handlers (SIGTERM, SIGINT are runtime/signals.py's)."""

        def register_signal_handlers(self) -> None:
            self.received_sigterm = False

        def teardown(self) -> None:
            pass

    return QuietSignals


def take_over_signals(trainer) -> None:
    """Switch off Lightning's own SIGTERM handling in `trainer`: runtime/signals.py handles the signals.

    Lightning's SIGTERM handler (2.6) forwards the signal to the processes its launcher started, broadcasts a
    tensor from inside the handler (a collective at an arbitrary point: a deadlock risk under DDP) and makes
    the loop stop after whichever step is running, while our checkpoint callback decides when to stop
    (`signals.stop_now`) and says so with `stop_after_this_step`. (Lightning's SLURM auto-requeue on SIGUSR1 is
    off with it; SLURM's SIGTERM before a kill is handled by ours.)

    Lightning also broadcasts rank 0's SIGTERM flag before every step of every multi-process run: a collective
    per step that would tie trainer=ddp_runs' independent runs to the same step counts (they may differ after
    a resume). `signals.stop_now` does that job, with an all-reduce where the processes are in lockstep.
    """
    trainer._signal_connector = _signal_connector_class()(trainer)
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None


def logger_step(trainer) -> int:
    """The step Lightning gives the logger for `self.log` values (optimizer steps so far, restored on resume):
    values logged straight to the logger use it to land on the same row."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def attached_trainer(module):
    """The Trainer a LightningModule is attached to, or None (`module.trainer` raises when there is none)."""
    return module._trainer


def log_on_every_rank() -> None:
    """Let every process log (`rank_zero_only` functions run everywhere): trainer=ddp_runs gives each process its
    own run and its own log folder. Lightning sets the rank itself when its launcher starts the processes."""
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only.rank = 0


def purge_tensorboard_from(logger, step: int) -> None:
    """A TensorBoardLogger whose writer (created on first use) purges the events from `step` on: a resumed run
    then does not repeat the steps after its checkpoint. Lightning passes these kwargs to `SummaryWriter`."""
    logger._kwargs["purge_step"] = step


# --- torch ----------------------------------------------------------------------------------------------------

def default_store():
    """torch.distributed's default store (the rendezvous key-value store), or None: trainer=ddp_runs' processes
    tell each other to stop through it without a collective (runtime/signals.py)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # no process group (or the API is gone): independent processes stop on their own signal
        return None


def foreach_lerp_(targets: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
    """targets[k] += weight * (ends[k] - targets[k]) in place, in one fused call for all tensors (the EMA
    update: one kernel launch per step instead of one per parameter)."""
    import torch

    torch._foreach_lerp_(targets, ends, weight)


def version_counter(tensor: torch.Tensor) -> int:
    """The tensor's version, bumped by every in-place change: tells cached decoders the weights changed."""
    return tensor._version


def storage_use_count(tensor: torch.Tensor) -> int:
    """How many references hold the tensor's storage (the temporary storage object counts one): a reused
    buffer is free again once nothing else views it."""
    import torch

    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


# --- transformers ---------------------------------------------------------------------------------------------

def attention_implementation(model) -> str:
    """The attention a model runs ("sdpa", "eager", "flash_attention_2", ...): CUDA graphs need one that takes
    a 4D mask, and a graph captured for one is not valid for another."""
    return model.config._attn_implementation


def no_split_modules(model) -> set[str]:
    """The class names of a model's transformer blocks (what FSDP shards one at a time); empty if it names none."""
    return set(getattr(model, "_no_split_modules", None) or ())
