"""A clean console: every log record printed once (through Hydra's handlers, which also write the job's log
file), and third-party tips, repeated notices and deprecation noise dropped. `WARP_LIGHTNING_VERBOSE=1` keeps
everything."""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "WARP_LIGHTNING_VERBOSE"

# INFO lines Lightning repeats for every Trainer (one per run: I x M times in `train`) or that advertise
NOTICES = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "LOCAL_RANK:", "`Trainer.fit` stopped:",
           "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
           "Trainer already configured with model summary callbacks")
WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the anchor and the frozen reference are in eval mode on purpose
    r".*does not have many workers.*",  # prompts are a few token ids per step: no workers needed
    r".*`torch.jit.script_method` is deprecated.*",
    r".*`past_key_values` is deprecated.*",  # transformers' rename, raised from inside torch's module call
    r".*The `srun` command is available on your system but is not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*resuming from a checkpoint that ended before the epoch ended.*",  # sft/reward say it (runtime/resume.py)
)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not any(n in record.getMessage() for n in NOTICES)


# libraries that print their records with a console handler of their own and pass them on to the root logger too
# (Hydra's handlers): each warning would appear twice, e.g. every retry of the hub client
OWN_HANDLERS = ("lightning", "lightning.pytorch", "lightning.fabric", "huggingface_hub", "datasets")


def single_handler(names=OWN_HANDLERS) -> None:
    """Drop the libraries' own console handlers: their records reach the console once, through the root's."""
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def quiet_third_party() -> None:
    """Call once Hydra has configured logging (inside the Hydra app)."""
    if os.environ.get(VERBOSE_ENV) != "1":
        _drop_noise()
    single_handler()  # even when verbose (a record printed twice is noise); last: a library adds its handler
    # when it is imported, by the command or by _drop_noise


def _drop_noise() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).addFilter(_DropNotices())
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars, one per saved folder
        transformers.utils.logging.set_verbosity_error()  # advice about padding and loss types we handle
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def figures_line(command: str, metrics: dict, out_dir) -> str:
    """The end of a command without an account of its own: its scalar figures, rounded, and where they are."""
    shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
             if isinstance(v, int | float | str) and not isinstance(v, bool) and len(str(v)) < 60][:12]
    return f"{command}: " + ", ".join(shown) + f"\nwritten: {out_dir}/metrics.json"
