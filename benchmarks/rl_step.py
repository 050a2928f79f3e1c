"""One RL step of warp_lightning against TRL's RLOOTrainer, on the same model doing the same work (issue 5).

    python benchmarks/rl_step.py                      # tiny and small, fp32, 5 timed steps each (`make bench`)
    python benchmarks/rl_step.py --scaling            # our step against completions per step and model size

A step: 16 prompts of 5-20 tokens, k = 4 completions each of exactly 32 new tokens sampled at temperature 1,
reward, log-probs of the policy and the anchor, RLOO loss with the KL folded into the reward, backward, grad
clip, optimizer step, EMA update of the anchor. Both sides get a randomly initialised GPT-2 (same weights),
the real GPT-2 tokenizer, and the same reward model object. TRL is driven by `trainer.train()`; after each of
its steps a callback runs one step of ours, so the two alternate in one process and share any background load.
Our side calls the project's own functions (`policy.sample`, `policy.completion_logprobs`, `rl.*`), composed
as `RLOOModule.training_step` and the `EMAAnchor` callback compose them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import logging
import os
import random
import re
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import flop_counter
from transformers import DistilBertConfig, DistilBertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from warp_lightning import rl
from warp_lightning.assets import fetch
from warp_lightning.module import decode_texts
from warp_lightning.policy import (
    completion_logprobs,
    left_pad,
    load_causal_lm,
    load_tokenizer,
    sample,
    use_compiled_kernels,
)
from warp_lightning.reward import RewardModel

SIZES = {  # name: (layers, width, heads)
    "tiny": (2, 128, 2),
    "small": (6, 384, 6),
    "gpt2": (12, 768, 12),  # the GPT-2 124M shape
}
PHASES = ("generation", "reward", "forwards", "backward", "optimizer")
GiB = 2**30


@dataclass(frozen=True)
class Work:
    prompts: int = 16
    k: int = 4
    new_tokens: int = 32
    min_prompt: int = 5
    max_prompt: int = 20
    beta: float = 0.1  # KL coefficient (WARP.md's default), so both sides run the anchor / reference model
    mu: float = 0.01  # EMA rate of the anchor
    lr: float = 5e-4
    grad_clip: float = 1.0

    @property
    def completions(self) -> int:
        return self.prompts * self.k


# ---------------------------------------------------------------------------------------------- the shared setup


def gpt2_tokenizer():
    return load_tokenizer(fetch("gpt2_tokenizer"))


def make_prompts(tokenizer, work: Work, seed: int) -> list[list[int]]:
    """Prompts of whole space-prefixed words, which the tokenizer maps back to the same ids.

    TRL reads prompts as text and tokenizes them itself; this way both sides see identical token ids.
    """
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if re.fullmatch("\u0120[a-z]{2,}", w))
    prompts = []
    while len(prompts) < work.prompts:
        ids = tokenizer.convert_tokens_to_ids(rng.sample(words, rng.randint(work.min_prompt, work.max_prompt)))
        if tokenizer(tokenizer.decode(ids))["input_ids"] == ids:
            prompts.append(ids)
    return prompts


def random_gpt2(size: str, vocab: int, seed: int) -> GPT2LMHeadModel:
    layers, width, heads = SIZES[size]
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, n_positions=1024,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def random_reward_model(tokenizer, seed: int) -> tuple[RewardModel, object]:
    """A random 2-layer DistilBERT (width 128) reading the GPT-2 tokenizer: one raw score per text."""
    torch.manual_seed(seed + 1)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=128, n_layers=2, n_heads=2, hidden_dim=512,
                              num_labels=1, pad_token_id=tokenizer.pad_token_id, dropout=0.0, attention_dropout=0.0)
    model = DistilBertForSequenceClassification(config).eval().requires_grad_(False)
    reward_tokenizer = copy.deepcopy(tokenizer)
    reward_tokenizer.padding_side = "right"
    return RewardModel(model, reward_tokenizer, sigmoid=False, max_length=128), reward_tokenizer


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


# ------------------------------------------------------------------------------------------------- measurements


class PhaseTimer:
    """`with timer("phase"):` adds the block's wall time to `seconds[phase]`."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


def _shaped(formula):
    def count(*args, **kwargs):
        return formula(*args, **kwargs)

    count._get_raw = True  # `formula` already reads shapes off the tensors
    return count


_aten = torch.ops.aten
# ops that torch's counter misses on CPU: in-place addmm and the CPU flash attention (forward and backward)
_MORE_FLOPS = {
    _aten.addmm_: _shaped(flop_counter.addmm_flop),
    _aten._scaled_dot_product_flash_attention_for_cpu: _shaped(flop_counter.sdpa_flop),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _shaped(flop_counter.sdpa_backward_flop),
}


def flop_counter_mode():
    """Counts the FLOPs of matmuls and attention that torch dispatches inside it (2 per multiply-add)."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=_MORE_FLOPS)


class PhaseFlops:
    """`with counter("phase"):` adds the matmul/attention FLOPs that torch dispatches in the block."""

    def __init__(self):
        self.flops = dict.fromkeys(PHASES, 0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        with flop_counter_mode() as mode:
            yield
        self.flops[phase] += mode.get_total_flops()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest resident set size while the block runs, sampled every millisecond in a thread."""

    def __enter__(self):
        self.before = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    def __str__(self):
        return f"{self.peak / GiB:.2f} GiB (+{(self.peak - self.before) / GiB:.2f} GiB over the step's start)"


def matmul_rate(bf16: bool, n: int = 2048, repeats: int = 5) -> float:
    """The machine's best square-matmul rate in FLOP/s (fp32, or bf16 with `bf16`): the limit a step can reach."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------------------ our step


class WarpStep:
    """The project's RL step: `RLOOModule.training_step`, the optimizer step and the `EMAAnchor` update."""

    def __init__(self, policy, tokenizer, reward_model, prompts: list[list[int]], work: Work, bf16: bool, seed: int,
                 keep_logits: bool = True):
        self.policy, self.tokenizer, self.reward_model, self.work, self.bf16 = policy, tokenizer, reward_model, work, bf16
        self.keep_logits = keep_logits
        self.anchor = copy.deepcopy(policy).requires_grad_(False).eval()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=work.lr, betas=(0.9, 0.999), eps=1e-8)
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        self.prompt_ids, self.prompt_mask = ids.repeat_interleave(work.k, 0), mask.repeat_interleave(work.k, 0)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, probe=None) -> dict:
        """One step; `probe(phase)` wraps each phase (a `PhaseTimer` unless given). Returns the probe."""
        probe = probe or PhaseTimer()
        w = self.work
        with autocast(self.bf16):
            with probe("generation"):
                # exactly `new_tokens` tokens: EOS does not stop a row (as min_new_tokens does on the TRL side)
                rollout = sample(self.policy, self.prompt_ids, self.prompt_mask, w.new_tokens, temperature=1.0,
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                 generator=self.generator, stop_at_eos=False, keep_logits=self.keep_logits)
            with probe("reward"):
                reward = torch.as_tensor(self.reward_model(decode_texts(self.tokenizer, rollout))).float()
            with probe("forwards"):
                mask = rollout.completion_mask.float()
                token_lp, _entropy, _ = completion_logprobs(self.policy, rollout, entropy_stride=8)
                logprob = rl.sequence_logprob(token_lp, mask)
                with torch.no_grad():
                    anchor_lp = rl.sequence_logprob(completion_logprobs(self.anchor, rollout)[0], mask)
                kl = rl.sampled_kl(logprob.detach(), anchor_lp)
                advantages = rl.rloo_advantages(rl.kl_penalized_reward(reward, kl, w.beta), w.k)
                loss = rl.rloo_loss(advantages, logprob)
        with probe("backward"):
            loss.backward()
        with probe("optimizer"):
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), w.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            rl.ema_update_(list(self.anchor.parameters()), [p.detach() for p in self.policy.parameters()], w.mu)
        assert rollout.completion_mask.all() and rollout.completion_ids.shape[1] == w.new_tokens
        return probe


def count_our_flops(step: WarpStep) -> dict:
    """FLOPs per phase of one step, counted with eager kernels (compiled ones hide their ops from the counter;
    they fuse element-wise passes and reductions, not matmuls, so the count is the same)."""
    compiled = step_uses_compiled
    use_compiled_kernels(False)
    try:
        return step(PhaseFlops()).flops
    finally:
        use_compiled_kernels(compiled)


step_uses_compiled = True


# ----------------------------------------------------------------------------------------------------- TRL's step


def trl_trainer(model_dir: Path, tokenizer, reward: RewardModel, reward_tokenizer, prompts, work: Work,
                max_steps: int, bf16: bool, seed: int, callback):
    """RLOOTrainer doing our step's work: one update per batch of 16 prompts x 4, exactly 32 new tokens."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    texts = [tokenizer.decode(p) for p in prompts]
    args = RLOOConfig(
        output_dir=str(model_dir / "trl"), report_to="none", save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed, shuffle_dataset=False, dataloader_num_workers=0,
        bf16=bf16, gradient_checkpointing=False,  # TRL turns checkpointing on by default: off, to do our work only
        per_device_train_batch_size=work.completions, gradient_accumulation_steps=1, num_generations=work.k,
        num_iterations=1, max_completion_length=work.new_tokens,
        generation_kwargs={"min_new_tokens": work.new_tokens},  # EOS masked until 32 tokens: exactly 32
        temperature=1.0, top_p=1.0, top_k=0, beta=work.beta, learning_rate=work.lr, lr_scheduler_type="constant",
        max_grad_norm=work.grad_clip, max_steps=max_steps, disable_dropout=True,
        # the reference model moves like our EMA anchor: ref <- alpha * policy + (1 - alpha) * ref every step
        sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=work.mu,
    )
    trainer = RLOOTrainer(model=str(model_dir), reward_funcs=[reward.model], args=args,
                          train_dataset=Dataset.from_dict({"prompt": texts * max_steps}),
                          processing_class=tokenizer, reward_processing_classes=[reward_tokenizer])
    trainer.add_callback(callback)  # after TRL's own SyncRefModelCallback: its EMA is inside the timed step
    return trainer


def alternating_callback(ours: WarpStep, timed: range, flops_step: int, memory_step: int):
    from transformers import TrainerCallback

    class Alternate(TrainerCallback):
        """Times each TRL step, then runs one of ours; probes FLOPs and memory on the two extra steps."""

        def __init__(self):
            self.trl_seconds, self.our_phases, self.trl_flops, self.our_flops = [], [], None, None
            self.trl_memory = self.our_memory = None

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step
            self._probe = (flop_counter_mode() if step == flops_step
                           else PeakRSS() if step == memory_step else contextlib.nullcontext())
            self._probe.__enter__()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self._start
            self._probe.__exit__(None, None, None)
            step = state.global_step - 1
            if step in timed:
                self.trl_seconds.append(seconds)
                self.our_phases.append(ours().seconds)
            elif step == flops_step:
                self.trl_flops = self._probe.get_total_flops()
                self.our_flops = count_our_flops(ours)
            elif step == memory_step:
                self.trl_memory = self._probe
                with PeakRSS() as self.our_memory:
                    ours()
            else:  # warm-up
                ours()

    return Alternate()


# ------------------------------------------------------------------------------------------------------ reporting


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def compare(size: str, args, tokenizer, reward, reward_tokenizer, rate: float) -> float:
    work = Work()
    prompts = make_prompts(tokenizer, work, args.seed)
    policy = random_gpt2(size, len(tokenizer), args.seed)
    n_params = sum(p.numel() for p in policy.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        policy.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        # our side loads it the way training does (`load_causal_lm`); TRL loads the same folder itself
        ours = WarpStep(load_causal_lm(model_dir).eval(), tokenizer, reward, prompts, work, args.bf16, args.seed)
        timed = range(args.warmup, args.warmup + args.steps)
        callback = alternating_callback(ours, timed, timed.stop, timed.stop + 1)
        trainer = trl_trainer(model_dir, tokenizer, reward, reward_tokenizer, prompts, work, timed.stop + 2,
                              args.bf16, args.seed, callback)
        trainer.train()
    ours_s = [sum(p.values()) for p in callback.our_phases]
    ours_cps = [work.completions / s for s in ours_s]
    trl_cps = [work.completions / s for s in callback.trl_seconds]
    layers, width, _ = SIZES[size]
    print(f"\n== {size}: {layers} layers, width {width}, {n_params / 1e6:.1f}M parameters ==")
    print(f"completions/s, median (min-max) over {args.steps} steps:")
    print(f"  warp_lightning {spread(ours_cps)}   {statistics.median(ours_s):.3f} s/step")
    print(f"  trl            {spread(trl_cps)}   {statistics.median(callback.trl_seconds):.3f} s/step")
    med = {ph: statistics.median(p[ph] for p in callback.our_phases) for ph in PHASES}
    print("our step, median s: " + " | ".join(f"{ph} {med[ph]:.3f}" for ph in PHASES))
    flops = callback.our_flops
    total = sum(flops.values())
    print("our counted GFLOP:  " + " | ".join(f"{ph} {flops[ph] / 1e9:.1f}" for ph in PHASES)
          + f" | total {total / 1e9:.1f}")
    for name, count, seconds in (("warp_lightning", total, statistics.median(ours_s)),
                                 ("trl", callback.trl_flops, statistics.median(callback.trl_seconds))):
        print(f"  {name:14s} {count / 1e9:7.1f} GFLOP in {seconds:.3f} s = {count / seconds / 1e9:6.1f} GFLOP/s, "
              f"{count / seconds / rate:.2f} of the measured matmul rate")
    print(f"peak memory (RSS): warp_lightning {callback.our_memory}; trl {callback.trl_memory}")
    return statistics.median(callback.trl_seconds) / statistics.median(ours_s)


def scaling(args, tokenizer, reward) -> None:
    """Our step's time and peak memory against completions per step and model size, as a markdown table."""
    rows = []
    for size in args.scaling_sizes.split(","):
        for completions in (int(c) for c in args.scaling_completions.split(",")):
            work = Work(prompts=completions // 4)
            policy = random_gpt2(size, len(tokenizer), args.seed)
            step = WarpStep(policy, tokenizer, reward, make_prompts(tokenizer, work, args.seed), work, args.bf16,
                            args.seed)
            for _ in range(args.scaling_warmup):
                step()
            seconds = []
            for _ in range(args.scaling_steps):
                with PeakRSS() as memory:
                    seconds.append(sum(step().seconds.values()))
            s = statistics.median(seconds)
            rows.append(f"| {size} | {completions} | {s:.2f} | {completions / s:.1f} | {memory.peak / GiB:.2f} | "
                        f"{(memory.peak - memory.before) / GiB:.2f} |")
            print(rows[-1], flush=True)
            del step, policy
    print("\n| model | completions/step | s/step (median) | completions/s | peak RSS GiB | step's own GiB |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small", help="comma-separated: " + ",".join(SIZES))
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (compiles kernels)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default fp32)")
    p.add_argument("--no-compile", action="store_true", help="eager log-prob/sampling kernels on our side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scaling", action="store_true", help="only our step: table over sizes x completions")
    p.add_argument("--scaling-sizes", default="tiny,small,gpt2")
    p.add_argument("--scaling-completions", default="16,64,256")
    p.add_argument("--scaling-steps", type=int, default=2)
    p.add_argument("--scaling-warmup", type=int, default=1)
    args = p.parse_args(argv)

    global step_uses_compiled
    step_uses_compiled = not args.no_compile
    use_compiled_kernels(step_uses_compiled)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    tokenizer = gpt2_tokenizer()
    reward, reward_tokenizer = random_reward_model(tokenizer, args.seed)
    rate = matmul_rate(args.bf16)
    import trl

    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"rl_step {datetime.datetime.now():%Y-%m-%d %H:%M}: torch {torch.__version__}, trl {trl.__version__}, "
          f"{torch.get_num_threads()} threads, {precision}, load average {os.getloadavg()[0]:.2f}")
    print(f"machine matmul rate: {rate / 1e9:.1f} GFLOP/s ({precision}, 2048^3 matmul, best of 5)")
    work = Work()
    print(f"work per step: {work.prompts} prompts of {work.min_prompt}-{work.max_prompt} tokens x k={work.k} = "
          f"{work.completions} completions of exactly {work.new_tokens} tokens, temperature 1, beta={work.beta}, "
          f"EMA mu={work.mu}, Adam(W) lr={work.lr}, grad clip {work.grad_clip}")
    print("reward: a random 2-layer DistilBERT (width 128) over the GPT-2 tokenizer, raw score; the same object on "
          "both sides")
    if args.scaling:
        scaling(args, tokenizer, reward)
        return
    speedups = {size: compare(size, args, tokenizer, reward, reward_tokenizer, rate) for size in args.sizes.split(",")}
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print("speedup_vs_trl " + " ".join(f"{size}={s:.2f}" for size, s in speedups.items()))


if __name__ == "__main__":
    main()
