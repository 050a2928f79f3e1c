"""`python -m warp_lightning train`: the WARP loop of WARP.md, as one recipe (`WarpRecipe.loop`).

    for i in 1..I:
        for m in 1..M:            train_run(i, m): theta_m, theta_ema <- theta_init; T RLOO steps (RLOOModule,
                                  EMAAnchor); MergeRuns hands theta_m to the WarpState and, after the M-th run,
                                  calls its one merge step: theta_slerp <- slerp(theta_init, {theta_m}, lambda),
                                  theta_init <- liti(theta_init, theta_slerp, eta)
            save(i, m)            loop.pt after every run; iter_i/slerp and iter_i/init once iteration i merged
                                  (and loop.pt before the merge too: the M finished runs are kept should it fail;
                                  `merge_kept` merges them when the command runs again)

Every set of weights lives in `WarpState` (theta_sft, theta_init, theta_slerp, the finished theta_m) or in the
run's `RLOOModule` (theta_m = `policy`, theta_ema = `anchor`). `skeleton` is a model in CPU memory that only
gives the state dicts a shape (to save them, to evaluate them). With `trainer=ddp_runs` the M runs of an
iteration train at once, run m in process m - 1, and every process merges the same gathered theta_m.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from warp_lightning.algo.state import WarpState, clone_state, derive_seed
from warp_lightning.builds import ensure_model, ensure_reward
from warp_lightning.data.checks import data_source
from warp_lightning.data.prompt_datasets import prompt_columns
from warp_lightning.data.prompts import PromptBatches, splits_for
from warp_lightning.eval.judge import load_judge
from warp_lightning.eval.protocol import PAIRED, quick_eval
from warp_lightning.policy.lora import add_lora, lora_enabled
from warp_lightning.policy.models import load_causal_lm, load_tokenizer, save_policy
from warp_lightning.policy.vocab_ops import use_compiled_kernels
from warp_lightning.reward.rewards import check_reward_columns, load_reward
from warp_lightning.runtime import signals
from warp_lightning.train import checkpoint as ckpt
from warp_lightning.train.callbacks import EMAAnchor, MergeRuns, Snapshots, merge_iteration
from warp_lightning.train.checkpoint import AtomicCheckpointIO
from warp_lightning.train.commands import TRAIN
from warp_lightning.train.module import RLOOModule
from warp_lightning.train.strategies import start_processes, strategy_for
from warp_lightning.utils.io import atomic_write_json
from warp_lightning.utils.loggers import build_logger, finish_logger, trim_logs
from warp_lightning.utils.paths import RunLayout, cfg_output_dir
from warp_lightning.utils.precision import autocast
from warp_lightning.utils.progress import ProgressLog
from warp_lightning.utils.trainer import build_trainer, log_device, trainer_device, trainer_precision

log = logging.getLogger(__name__)


def build_run_trainer(cfg, out_dir: Path, run_name: str | None, callbacks: list, max_steps: int) -> L.Trainer:
    """The Lightning Trainer of one run (`run_name=None`: no logger, used to start the processes)."""
    logger = build_logger(cfg.logger, out_dir, run_name, group=cfg.experiment_name) if run_name else False
    return build_trainer(cfg.trainer, max_steps=max_steps, max_epochs=1, strategy=strategy_for(cfg), logger=logger,
                         callbacks=callbacks, plugins=[AtomicCheckpointIO()], log_every_n_steps=1,
                         gradient_clip_val=cfg.warp.grad_clip or None, limit_val_batches=0)


# the figures of the end-of-run check copied into metrics.json, for the SFT policy and the final theta_slerp
MAIN_FIGURES = ("reward_mean", "judge_mean", "kl_mean", "completion_length_mean")


class WarpRecipe:
    """The `train` command: `setup` (models, prompts, the WarpState, what an interrupted attempt finished), `loop`
    (WARP.md's I x M loop), `write_final` (final/, the end-of-run check of SFT against it, manifest.json)."""

    def __init__(self, cfg):
        self.cfg, self.w = cfg, cfg.warp
        self.out_dir = Path(cfg_output_dir())
        self.layout = RunLayout(self.out_dir)
        self.ckpt_dir = self.layout.checkpoints
        self.parallel = cfg.trainer.get("strategy") == "ddp_runs"  # run m trains in process m - 1
        self.rank, self.world = 0, 1
        self.run_records: list[dict] = []

    def setup(self) -> None:
        cfg, w = self.cfg, self.w
        torch.manual_seed(w.seed)
        use_compiled_kernels(w.compile)
        ensure_model("policy", cfg.policy, cfg.paths.cache_dir)
        ensure_reward(cfg.reward_model, cfg.paths.cache_dir)
        if cfg.trainer.get("strategy", "auto") in ("ddp", "ddp_runs", "fsdp"):  # models exist: start the processes
            os.environ[signals.PARENT_ENV] = str(os.getpid())  # the processes Lightning starts die with this one
            try:
                self.rank, self.world = start_processes(build_run_trainer(cfg, self.out_dir, None, [], 1))
            finally:
                os.environ.pop(signals.PARENT_ENV, None)
        self.device, self.precision = trainer_device(cfg.trainer), trainer_precision(cfg.trainer)
        self.compute = log_device(cfg.trainer)
        self.tokenizer = load_tokenizer(cfg.policy.name_or_path)
        self.skeleton = load_causal_lm(cfg.policy.name_or_path)  # CPU memory; each run's copies go to `device`
        self.reward_model = load_reward(cfg.reward_model, self.device)  # one call: (prompts, completions, columns)
        self.splits = splits_for(cfg.data, self.tokenizer, w.seed, cache=cfg.paths.cache_dir)
        self.train_ids = list(self.splits.train["input_ids"])
        # every other column of a prompt's row goes with it to the reward (`RLOOModule.score`), a text set's (label,
        # ...) as a data=prompts dataset's: the columns evaluate and front pass (eval/protocol.py)
        self.train_columns = prompt_columns(self.splits.train)
        # before any step: one line if a column is missing or would replace an argument the reward passes itself
        check_reward_columns(cfg.reward_model, set(self.train_columns), source=data_source(cfg.data))
        self.state = WarpState(clone_state(self.skeleton.state_dict()), w.runs, w.merge, w.slerp_lambda, w.liti_eta,
                               merge_options=dict(w.get("merge_options") or {}))
        self.config = OmegaConf.to_container(cfg, resolve=True)  # a resume may change only TRAIN.resume's keys
        done, self.run_records = ckpt.load_loop(self.ckpt_dir, self.state, self.config, TRAIN.resume)
        if done != (1, 0):
            log.info("resuming %s: iterations/runs up to (%d, %d) are done", self.out_dir, *done)

    def loop(self) -> None:
        """WARP.md's loop. A SIGTERM/SIGINT in here: the optimizer step in progress finishes, its checkpoint is
        written (RunCheckpoint), or loop.pt between runs, and `Preempted` stops the command (exit 143 or 130)."""
        with signals.deferred():
            for i in range(1, self.w.iterations + 1):
                for m in self.runs_to_train(i):
                    # after the M-th run, MergeRuns kept the M runs in loop.pt, then merged: SLERP + LITI
                    self.run_records += self.train_run(i, m)
                    self.save(i, m)
                self.merge_kept(i)

    def runs_to_train(self, i: int) -> list[int]:
        """The runs of iteration i this process still trains (one per process, all at once, with ddp_runs)."""
        if self.state.merged(i):
            return []
        runs = [self.rank + 1] if self.parallel else range(1, self.w.runs + 1)
        return [m for m in runs if not self.state.finished(i, m)]

    def merge_kept(self, i: int) -> None:
        """Iteration i's merge, when an earlier attempt kept its M runs (loop.pt) but did not merge them (its merge
        failed, or it was killed meanwhile): they are merged as the M-th run would have merged them, the statistics
        added to that run's log, without training any run again."""
        if self.state.merged(i) or not self.state.ready_to_merge:
            return
        log.info("iteration %d: its %d runs are done; merging them", i, self.w.runs)
        logger = None
        if self.rank == (self.world - 1 if self.parallel else 0):  # the process that logged run M
            logger = build_logger(self.cfg.logger, self.out_dir, f"i{i}_m{self.w.runs}", group=self.cfg.experiment_name)
            trim_logs(logger, self.w.steps + 1)  # the run's log as it was, every step kept
        merge_iteration(self.state, logger, self.w.steps)
        finish_logger(logger)
        self.save(i, self.w.runs)

    def train_run(self, i: int, m: int) -> list[dict]:
        """Run m of iteration i from theta_init (or from its checkpoint); returns its manifest record (with
        ddp_runs: the records of the M runs that trained together)."""
        cfg, w, ckpt_dir = self.cfg, self.w, self.ckpt_dir
        seed = derive_seed(w.seed, i, m)
        torch.manual_seed(seed)
        theta_m = copy.deepcopy(self.skeleton)
        theta_m.load_state_dict(self.state.theta_init)
        anchor = copy.deepcopy(theta_m)
        init_policy = anchor if w.anchor == "sft" else (copy.deepcopy(theta_m) if w.kl_to_init_every else None)
        if lora_enabled(cfg.policy.get("lora")):  # only adapters train; anchor and theta_init stay dense
            theta_m = add_lora(theta_m, cfg.policy.lora)
        module = RLOOModule(theta_m, anchor, self.reward_model, self.tokenizer, w, sample_seed=seed + 1,
                            init_policy=init_policy, tags={"iteration": i, "run": m})
        kept: list[dict] = []  # the iteration's last run: its record, kept in loop.pt with theta_m before the merge

        def keep(trainer) -> None:  # MergeRuns, the M runs in, before it merges them
            kept.extend(self.records(trainer, i, m, seed, start, run_started))
            self.save_loop(i, m, self.run_records + kept)

        callbacks = [MergeRuns(self.state, keep)]
        callbacks += [EMAAnchor(w.ema_rate)] if w.anchor == "ema" else []
        callbacks += [ProgressLog(w.log_every, f"iteration {i} run {m}", ("reward_mean", "kl_anchor", "completion_length"))]
        checkpoints = ckpt.RunCheckpoint(ckpt.run_path(ckpt_dir, m), w.checkpoint_every, i, m, every_rank=self.parallel,
                                         config=self.config, may_change=TRAIN.resume)
        callbacks.append(checkpoints)
        if w.snapshot_every:
            callbacks.append(Snapshots(w.snapshot_every, self.layout.run(i, m), self.tokenizer,
                                       self.skeleton))
        trainer = build_run_trainer(cfg, self.out_dir, f"i{i}_m{m}", callbacks, w.steps)
        resume_from = checkpoints.resume_from(trainer)  # this run's checkpoint, if an attempt left one
        start = checkpoints.resumed_at
        prompts = PromptBatches(self.train_ids, w.steps, w.prompts_per_step, seed, self.tokenizer.pad_token_id,
                                start, shard=cfg.trainer.get("strategy") in ("ddp", "fsdp"), columns=self.train_columns)
        run_started = time.time()
        checkpoints.fit(trainer, module, prompts, ckpt_path=resume_from)  # a stop: its checkpoint, then Preempted
        final = {k: float(v) for k, v in trainer.callback_metrics.items()}
        finish_logger(trainer.logger)
        log.info("iteration %d run %d: %d steps in %.0fs, reward %.3f, KL to anchor %.2f", i, m,
                 trainer.global_step, time.time() - run_started, final.get("reward_mean", float("nan")),
                 final.get("kl_anchor", float("nan")))
        return kept or self.records(trainer, i, m, seed, start, run_started)

    def records(self, trainer, i: int, m: int, seed: int, start: int, started: float) -> list[dict]:
        """The manifest record of run m of iteration i, trained by `trainer` (with ddp_runs: the records of the M
        runs that trained together, gathered)."""
        final = {k: float(v) for k, v in trainer.callback_metrics.items()}
        record = {"iteration": i, "run": m, "seed": seed, "steps": int(trainer.global_step), "resumed_at_step": start,
                  "seconds": round(time.time() - started, 1), "final": final}
        if not self.parallel:
            return [record]
        records = [None] * self.world
        torch.distributed.all_gather_object(records, record)
        return records

    def save(self, i: int, m: int) -> None:
        """After run m of iteration i (rank 0 writes): the merged folders once iteration i merged, then loop.pt.
        Then, if the command was asked to stop (any process), it stops here (every process at once)."""
        if self.rank == 0 and self.state.merged(i):
            save_policy(self.skeleton, self.state.theta_slerp, self.tokenizer, self.layout.merged(i))
            save_policy(self.skeleton, self.state.theta_init, self.tokenizer, self.layout.init(i))
            log.info("iteration %d merged: %s", i, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in self.state.merge_stats[-1].items()
                                                              if k != "iteration"))
        self.save_loop(i, m, self.run_records)
        signals.raise_if_stopped(f"after iteration {i} run {m}", device=self.device)

    def save_loop(self, i: int, m: int, records: list[dict]) -> None:
        """loop.pt (rank 0 writes): run m of iteration i is done (with ddp_runs, the M runs), the `WarpState` as it
        is now, the run `records`."""
        if self.rank == 0:
            ckpt.save_loop(self.ckpt_dir, self.state, (i, self.w.runs if self.parallel else m), records, self.config)

    def write_final(self, started: float) -> dict:
        """theta_slerp of the last iteration saved as `final/`, the end-of-run check of the SFT policy against it
        on held-out prompts, and manifest.json (config, runs, merges, the check); returns the metrics."""
        cfg, w, state = self.cfg, self.w, self.state
        save_policy(self.skeleton, state.theta_slerp, self.tokenizer, self.layout.final)
        # matmuls in the training precision; log-probs, KL and rewards are float32 either way
        judge = load_judge(cfg.get("judge"), cfg.paths.cache_dir)
        eval_prompts = self.splits.get(cfg.eval.get("split", "validation"))
        log.info("end-of-run check: the SFT policy and the final theta_slerp on %d %s prompts, the same random "
                 "numbers for both...", min(cfg.eval.prompts, len(eval_prompts)), cfg.eval.get("split", "validation"))
        with autocast(self.precision, self.device):
            evaluation = quick_eval({"sft": state.theta_sft, "final": state.theta_slerp}, self.skeleton,
                                    self.tokenizer, self.reward_model, eval_prompts, cfg.eval, self.device, judge=judge)
        final, sft = evaluation["final"], evaluation["sft"]
        # `evaluate`'s names (eval/protocol.py) with `final_` / `sft_`; the gains are the paired differences
        metrics = {f"{who}_{k}": evaluation[who][k] for who in ("final", "sft") for k in MAIN_FIGURES}
        metrics.update({f"{k}_gain": final[f"{k}_mean"] - sft[f"{k}_mean"] for k in PAIRED},
                       **{f"{k}_gain_{b}": final.get(f"{k}_diff_{b}", float("nan")) for k in PAIRED
                          for b in ("low", "high")})
        # the names before the shared schema, kept for one release
        metrics.update(final_kl_to_sft=metrics["final_kl_mean"],
                       final_completion_length=metrics["final_completion_length_mean"])
        metrics.update(judge_accuracy=judge.accuracy, eval_split=cfg.eval.get("split", "validation"),
                       eval_prompts=min(cfg.eval.prompts, len(eval_prompts)), seconds=round(time.time() - started, 1),
                       rl_steps=w.iterations * w.runs * w.steps)
        manifest = {"config": OmegaConf.to_container(cfg, resolve=True), "runs": self.run_records,
                    "merges": state.merge_stats, "train_prompts": len(self.train_ids),
                    "validation_prompts": len(self.splits.validation), "test_prompts": len(self.splits.test),
                    "processes": self.world,
                    "compute": self.compute, "evaluation": evaluation, "metrics": metrics}

        atomic_write_json(self.layout.manifest, manifest)
        return metrics


def result_lines(metrics: dict, out_dir: Path) -> str:
    """What the console shows when `train` ends: SFT against the final policy, the paired gains, what was written."""
    def cell(key: str, digits: int = 3) -> str:
        value = metrics.get(key)
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"

    def gain(key: str) -> str:
        low, high = metrics.get(f"{key}_gain_low"), metrics.get(f"{key}_gain_high")
        interval = f" [{low:+.3f}, {high:+.3f}]" if isinstance(low, float) and isinstance(high, float) else ""
        return f"{metrics[f'{key}_gain']:+.3f}{interval}" if isinstance(metrics.get(f"{key}_gain"), float) else "—"

    rows = [f"  {'model':<7}{'proxy':>8}{'judge':>8}{'KL to SFT':>11}{'length':>8}"]
    rows += [f"  {who:<7}{cell(f'{who}_reward_mean'):>8}{cell(f'{who}_judge_mean'):>8}"
             f"{cell(f'{who}_kl_mean', 2):>11}{cell(f'{who}_completion_length_mean', 1):>8}" for who in ("sft", "final")]
    return "\n".join([f"train: {metrics.get('eval_prompts')} {metrics.get('eval_split')} prompts, one completion each, "
                      "the same random numbers for both models", *rows,
                      f"  final - SFT (paired, 95% interval): proxy {gain('reward')}, judge {gain('judge')}",
                      f"written: {out_dir / 'final'} (the final policy), {out_dir / 'metrics.json'}, "
                      f"{out_dir / 'manifest.json'}, {out_dir}/iter_*/ (each iteration's merge)"])


def run(cfg) -> dict | None:
    started = time.time()
    recipe = WarpRecipe(cfg)
    recipe.setup()
    recipe.loop()
    return recipe.write_final(started) if recipe.rank == 0 else None  # rank 0 writes the outputs
