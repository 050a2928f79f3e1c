"""One WARP run as a LightningModule: on-policy RLOO against an anchor (WARP.md, inner loop)."""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.utils import instantiate

from warp_lightning import NonFiniteError, UserError
from warp_lightning.algo import rl
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import decode_prompts_completions, sample
from warp_lightning.policy.sharding import shard_model, whole
from warp_lightning.reward.rewards import RewardScores, checked_scores
from warp_lightning.runtime import internals
from warp_lightning.utils.schedules import warmup_schedule

log = logging.getLogger(__name__)


def rloo_objective(policy, anchor, rollout, reward: torch.Tensor, kl_coef: float, k: int) -> dict:
    """The RLOO loss of one rollout against the anchor, and the terms logged with it.

    Log-probs of the policy (with grad) and of the anchor (one no-grad forward), the sampled KL folded into the
    reward, leave-one-out advantages over the k samples of each prompt. Returns `loss`, `logprob` (per
    completion, with grad), `kl`, `advantages`, `entropy` (of a token subsample) and the float `mask`.
    """
    mask = rollout.completion_mask.float()
    token_lp, entropy, _ = completion_logprobs(policy, rollout, entropy_stride=8)
    logprob = rl.sequence_logprob(token_lp, mask)
    with torch.no_grad():
        anchor_lp = rl.sequence_logprob(completion_logprobs(anchor, rollout)[0], mask)
    kl = rl.sampled_kl(logprob.detach(), anchor_lp)
    advantages = rl.rloo_advantages(rl.kl_penalized_reward(reward, kl, kl_coef), k)
    return {"loss": rl.rloo_loss(advantages, logprob), "logprob": logprob, "kl": kl, "advantages": advantages,
            "entropy": entropy, "mask": mask}


class RLOOModule(L.LightningModule):
    """theta_m (`policy`, trained) and theta_ema (`anchor`, moved only by the `EMAAnchor` callback).

    One batch of P prompts is one RL step: k samples per prompt, reward, KL to the anchor folded into
    the reward, leave-one-out advantages, one gradient step on -mean(A * log pi_theta(y|x)). A batch is
    `(ids, mask)` or `(ids, mask, columns)`: the dataset's other columns, {name: one value per prompt}, which the
    reward (`reward.rewards.load_reward`) receives beside the decoded prompts and completions.
    """
    def __init__(self, policy, anchor, reward, tokenizer, warp, sample_seed: int,
                 init_policy=None, tags: dict | None = None):
        super().__init__()
        self.policy, self.anchor, self.init_policy = policy, anchor, init_policy
        self.anchor.requires_grad_(False).eval()
        if init_policy is not None:
            init_policy.requires_grad_(False).eval()
        self.reward, self.tokenizer, self.warp = reward, tokenizer, warp
        self.generator = torch.Generator().manual_seed(sample_seed)
        self.tags = tags or {}

    def train(self, mode: bool = True):
        # Dropout stays off: sampling and scoring must see the same distribution, and the anchor
        # is a frozen reference.
        super().train(mode)
        self.policy.eval()
        self.anchor.eval()
        return self

    def configure_model(self):
        """trainer=fsdp: shard theta_m, theta_ema and theta_init over the processes (`distributed.shard_model`)."""
        if self.device_mesh is None:
            return
        for model in {id(m): m for m in (self.policy, self.anchor, self.init_policy) if m is not None}.values():
            shard_model(model, self.device_mesh["data_parallel"])
        held = sum(p.to_local().numel() for p in self.policy.parameters())
        log.info("fsdp: process %d holds %d of the %d weights of theta_m (as much of theta_ema and theta_init)",
                 self.global_rank, held, sum(p.numel() for p in self.policy.parameters()))

    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        k = self.warp.samples_per_prompt
        return sample(self.policy, prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0),
                      self.warp.max_new_tokens, self.warp.temperature, eos_token_id=self.tokenizer.eos_token_id,
                      pad_token_id=self.tokenizer.pad_token_id, generator=self.generator,
                      keep_logits=self.warp.keep_sampling_logits, min_new_tokens=self.warp.get("min_new_tokens", 0),
                      cuda_graphs=self.warp.get("cuda_graphs", True))

    def decode(self, rollout) -> tuple[list[str], list[str]]:
        """The prompts and completions as texts (prompt + completion: the row decoded at once)."""
        return decode_prompts_completions(self.tokenizer, rollout)

    def score(self, rollout, columns: dict) -> RewardScores:
        """The reward of each completion; a prompt's columns (its chat messages among them) repeated for its k
        samples. The checks of every command (`checked_scores`: one finite score per completion); a refusal, or a
        reward's own error (a function's bad row), gets the step and the kept checkpoints added to its one line."""
        k = self.warp.samples_per_prompt
        per_completion = {name: [v for v in values for _ in range(k)] for name, values in columns.items()}
        try:
            return checked_scores(self.reward, *self.decode(rollout), per_completion, where=self.where())
        except UserError as err:  # NonFiniteError too, keeping its exit status
            raise type(err)(f"{err}; {self.KEPT}") from None

    def training_step(self, batch, batch_idx):
        w = self.warp
        prompt_ids, prompt_mask, *rest = batch
        rollout = self.rollout(prompt_ids, prompt_mask)
        scores = self.score(rollout, rest[0] if rest else {})
        reward = scores.total.to(rollout.input_ids.device)  # the reward model scores text on its own device
        terms = rloo_objective(self.policy, self.anchor, rollout, reward, w.kl_coef, w.samples_per_prompt)
        loss, logprob, kl, mask = terms["loss"], terms["logprob"], terms["kl"], terms["mask"]

        lengths = mask.sum(-1)
        stats = {
            "reward_mean": reward.mean(), "reward_std": reward.std(), "kl_anchor": kl.mean(),
            "completion_length": lengths.mean(), "entropy": terms["entropy"],
            "loss": loss.detach(), "advantage_std": terms["advantages"].std(),
            **{f"reward/{name}": term.mean() for name, term in scores.terms.items()},  # a sum's terms
        }
        if self.init_policy is self.anchor:  # fixed anchor: theta_init is the anchor
            stats["kl_init"] = stats["kl_anchor"]
        elif self.init_policy is not None and w.kl_to_init_every and self.global_step % w.kl_to_init_every == 0:
            with torch.no_grad():
                init_lp = rl.sequence_logprob(completion_logprobs(self.init_policy, rollout)[0], mask)
            # straight to the logger: `self.log` would repeat this value on the steps that do not measure it
            if self.logger:
                self.logger.log_metrics({"kl_init": rl.sampled_kl(logprob.detach(), init_lp).mean().item()},
                                        step=internals.logger_step(self.trainer))
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss at {self.where()} (KL to anchor {kl.mean():.3g}, log-prob "
                                 f"{logprob.detach().mean():.3g}): lower warp.lr or raise warp.kl_coef; {self.KEPT}")
        stats["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        shown = {k: stats.pop(k) for k in ("reward_mean", "kl_anchor")}  # on the progress bar too
        self.log_dict(shown, prog_bar=True, batch_size=reward.shape[0])
        self.log_dict({**stats, **{k: float(v) for k, v in self.tags.items()}}, batch_size=reward.shape[0])
        return loss

    KEPT = "the checkpoints written before this step are kept"

    def where(self) -> str:
        """`iteration i run m step t` of the step being computed (t counts from 1)."""
        return (f"iteration {self.tags.get('iteration')} run {self.tags.get('run')} step "
                f"{self.trainer.global_step + 1 if internals.attached_trainer(self) else '?'}")

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        check_finite_weights(self.policy, f"after the update of {self.where()}", self.KEPT)

    def on_before_optimizer_step(self, optimizer):

        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        self.log("grad_norm", whole(torch.nn.utils.get_total_norm(grads)))

    def configure_optimizers(self):
        w = self.warp
        trained = [p for p in self.policy.parameters() if p.requires_grad]  # all, or the LoRA adapters only
        opt = instantiate(w.optimizer)(trained)  # conf/warp: Adam, its lr, betas and eps
        return {"optimizer": opt, "lr_scheduler": warmup_schedule(opt, w.warmup_steps, decay="constant")}


def check_finite_weights(model, when: str, kept: str = "") -> None:
    """Raise `NonFiniteError` naming the first parameter of `model` holding a NaN or inf."""
    finite = whole(torch.stack([torch.isfinite(p).all() for p in model.parameters()]))
    if not finite.all():
        name = next(n for (n, _), ok in zip(model.named_parameters(), finite, strict=True) if not ok)
        raise NonFiniteError(f"non-finite weights {when} (first: {name}): lower warp.lr or set warp.grad_clip"
                             + (f"; {kept}" if kept else ""))


