"""One RL step of warp_lightning against TRL's RLOOTrainer, on the same model doing the same work (issue 5).

    python benchmarks/rl_step.py                      # tiny and small, fp32, 5 timed steps each (`make bench`)
    python benchmarks/rl_step.py --device cuda --bf16 # tiny, small and the GPT-2 124M shape on the first GPU
    python benchmarks/rl_step.py --scaling            # our step against completions per step and model size
    python benchmarks/rl_step.py --sizes smollm2,smollm2-lora --steps 3   # the SmolLM2-135M shape, full and LoRA
    python benchmarks/rl_step.py --shape chat --ks 4,8 # the chat experiment, prompt once per k samples or not

A step: 16 prompts of 5-20 tokens, k = 4 completions each of exactly 32 new tokens sampled at temperature 1
(EOS masked until then on both sides: `min_new_tokens` = 32, so that both do the same work),
reward, log-probs of the policy and the anchor, RLOO loss with the KL folded into the reward, backward, grad
clip, optimizer step, EMA update of the anchor. Both sides get a randomly initialised GPT-2 (the same weights,
saved to one folder that both load), the real GPT-2 tokenizer, and the same reward model.

`smollm2` is a random Llama of SmolLM2-135M's shape (30 layers, width 576, 9 heads with 3 KV heads, MLP 1536,
tied embeddings; the GPT-2 tokenizer's 50,257 tokens for its 49,152). `smollm2-lora` trains LoRA adapters
(r = 32, alpha = 64, every linear layer but the head) on both sides: ours through `policy/lora.py` (the EMA anchor
moves toward W + dW), TRL through its `peft_config`, where the reference is the base model with the adapters
disabled (TRL refuses an EMA reference with PEFT), so TRL does no EMA update and no anchor copy there.

TRL is driven by `trainer.train()`; after each of its steps a callback runs one step of ours, so the two
alternate in one process and share whatever else loads the machine. Our side calls the project's functions as
`RLOOModule.training_step` does (`policy.sample` with `keep_logits=True`, the default
`warp.keep_sampling_logits`, and on CUDA its decode loop as a CUDA graph, the default `warp.cuda_graphs`; then
`module.rloo_objective`), then the optimizer step and the EMA update of the `EMAAnchor` callback. Peak memory is
measured apart, in a fresh process per side, so that neither side's buffers count against the other.

Printed per size: completions/s, our phases, generation milliseconds per new token of each side (the whole
generation call over the new tokens: prefill included; TRL's `model.generate` timed), each side's FLOPs as a share
of the machine's matmul rate (measured in the same run: fp32, or bf16 with --bf16), peak memory; then the lines
`speedup_vs_trl size=...`, `decode_ms_per_token size=...` (ours) and `trl_decode_ms_per_token size=...`.

`--shape chat` times the step of `train +experiment=chat_smollm2` (composed by Hydra, as `train` composes it):
the real SmolLM2-135M-Instruct (its folder built once from the gguf, as `train` builds it), 4 prompts of the
film_reviews train split (the project's data code renders them through the tokenizer's chat template; TRL gets
the same messages and renders them itself, to the same ids, which is checked), k samples each (`--ks`) of up
to 32 new tokens: EOS may end an answer (min_new_tokens 0 on both sides), so each side's mean answer length is
printed with its figure; with `--equal-length` every answer on both sides is exactly 32 tokens (EOS masked, as
the random shapes do), so that completions/s compares the same work. Beta, mu, the learning rate and grad clip are the experiment's. Three sides alternate
in one process, after each TRL step one step of each of ours (in turn first): "after" is today's code, which
runs each distinct prompt once for its k samples (`sampling.prompt_forward`, in sampling and in the log-prob
forwards); "before" is the same code with `sampling._repeated_rows` patched to return None (unittest.mock, for
that step only), so every row's prompt runs on its own, as before the sharing. The reward is the random
DistilBERT above reading SmolLM2's tokenizer (the same module on both sides, through TRL's own reward-model
path): the experiment's reward (a MiniLM classifier plus a Python length rule) would need a Python reward
function on TRL's side only, and either costs well under 1% of a step at this size. One torch thread unless
`--threads` says otherwise: the comparison stays fair beside other work on a 2-core machine. One line per k,
`chat k=K: ...`, gives completions/s of the three sides, the ratios after/before and after/TRL, TRL's counted
FLOPs per step over ours (one extra untimed step per side is counted: the speed-up at equal arithmetic rate, so
what is left to win by running faster rather than doing less), and the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import json
import logging
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils import flop_counter
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from warp_lightning.algo import rl
from warp_lightning.builds import ensure_model
from warp_lightning.cli import CONF_DIR
from warp_lightning.data.assets import fetch
from warp_lightning.data.prompt_datasets import MESSAGES, prompt_columns, prompt_dataset_splits
from warp_lightning.data.prompts import left_pad
from warp_lightning.policy import sampling
from warp_lightning.policy.lora import DenseEMA, add_lora
from warp_lightning.policy.models import load_causal_lm, load_tokenizer
from warp_lightning.policy.sampling import decode_texts, sample
from warp_lightning.policy.vocab_ops import use_compiled_kernels
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.train.module import rloo_objective

SIZES = {  # name: (layers, width, heads)
    "tiny": (2, 128, 2),
    "small": (6, 384, 6),
    "gpt2": (12, 768, 12),  # the GPT-2 124M shape
    "smollm2": (30, 576, 9),  # the SmolLM2-135M shape (a Llama: 3 KV heads, MLP 1536, tied embeddings)
    "smollm2-lora": (30, 576, 9),  # the same, LoRA adapters only
}
LORA = OmegaConf.create({"rank": 32, "alpha": 64, "target_modules": "all-linear"})  # for sizes ending in -lora
PHASES = ("generation", "reward", "forwards", "backward", "optimizer")
GiB = 2**30


@dataclass(frozen=True)
class Work:
    prompts: int = 16
    k: int = 4
    new_tokens: int = 32
    min_new_tokens: int = 32  # EOS has probability 0 before this many (= new_tokens: exactly that many)
    min_prompt: int = 5
    max_prompt: int = 20
    beta: float = 0.1  # KL coefficient (WARP.md's default): both sides score the anchor / reference model
    mu: float = 0.01  # EMA rate of the anchor
    lr: float = 5e-4
    grad_clip: float = 1.0

    @property
    def completions(self) -> int:
        return self.prompts * self.k


# ---------------------------------------------------------------------------------------------- the shared setup


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


def save_random_gpt2(size: str, tokenizer, folder: Path, seed: int) -> int:
    """A randomly initialised GPT-2 of `size` (dropout off; a Llama for the SmolLM2 shapes) saved with the
    tokenizer; returns its parameter count."""
    layers, width, heads = SIZES[size]
    torch.manual_seed(seed)
    if size.startswith("smollm2"):
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads, num_key_value_heads=3,
            intermediate_size=1536, vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=len(tokenizer),
                                           n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def random_reward_model(tokenizer, seed: int, device: str = "cpu") -> RewardModel:
    """A random 2-layer DistilBERT (width 128) reading the GPT-2 tokenizer: one raw score per text."""
    torch.manual_seed(seed + 1)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=128, n_layers=2, n_heads=2, hidden_dim=512,
                              num_labels=1, pad_token_id=tokenizer.pad_token_id, dropout=0.0, attention_dropout=0.0)
    model = DistilBertForSequenceClassification(config).to(device).eval().requires_grad_(False)
    reward_tokenizer = copy.deepcopy(tokenizer)
    reward_tokenizer.padding_side = "right"
    return RewardModel(model, reward_tokenizer, sigmoid=False, max_length=128)


def autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a wall-clock reading covers it (nothing to wait for on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- measurements


class PhaseTimer:
    """`with timer("phase"):` adds the block's wall time to `seconds[phase]` (GPU work included)."""

    def __init__(self, device: str = "cpu"):
        self.seconds, self.device = dict.fromkeys(PHASES, 0.0), device

    @contextlib.contextmanager
    def __call__(self, phase: str):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start


def _shaped(formula):
    def count(*args, **kwargs):
        return formula(*args, **kwargs)

    count._get_raw = True  # `formula` already reads the shapes off the tensors
    return count


def _addmm_flops(bias, a, b, *_, out_val=None, **__) -> int:
    """addmm's FLOPs from its operands alone: torch's own formula takes a positional out_dtype (TRL passes one,
    `addmm(acc, a, b, out_dtype=float32, out=acc)`) for its output shape and fails."""
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


_addmm_flops._get_raw = True
_aten = torch.ops.aten
# ops that torch's counter misses on CPU or miscounts: addmm (in place, or with an out_dtype) and the CPU flash
# attention (forward and backward)
_MORE_FLOPS = {
    _aten.addmm: _addmm_flops,
    _aten.addmm_: _addmm_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu: _shaped(flop_counter.sdpa_flop),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _shaped(flop_counter.sdpa_backward_flop),
}


def flop_counter_mode():
    """Counts the FLOPs (2 per multiply-add) of the matmuls and attention that torch dispatches inside it."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=_MORE_FLOPS)


class PhaseFlops:
    """`with counter("phase"):` adds the block's matmul and attention FLOPs to `flops[phase]`."""

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


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not carried over from the parent through exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def peak_memory(device: str) -> int:
    """Peak bytes of this process: its RSS on CPU, the memory torch allocated on the GPU."""
    return torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()


def current_memory(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else rss_bytes()


def matmul_rate(device: str, bf16: bool, repeats: int = 5) -> tuple[float, int]:
    """The machine's best square-matmul rate in FLOP/s (fp32, or bf16 with `bf16`): the limit a step can reach.
    Returns it and the matrices' size (2048 on CPU, 8192 on a GPU)."""
    n = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best, n


# ------------------------------------------------------------------------------------------------------ our step


class WarpStep:
    """The project's RL step: `RLOOModule.training_step`, the optimizer step and the `EMAAnchor` update."""

    def __init__(self, model_dir: Path, reward_model: RewardModel, prompts: list[list[int]], work: Work,
                 bf16: bool, seed: int, compiled: bool = True, device: str = "cpu", cuda_graphs: bool = True,
                 lora: bool = False):
        self.tokenizer = load_tokenizer(model_dir)
        self.policy = load_causal_lm(model_dir).to(device).eval()  # as training loads it
        self.anchor = copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.dense_ema = None
        if lora:  # as `train` with policy.lora.rank > 0: adapters in the policy, a dense anchor moved toward W + dW
            self.policy = add_lora(self.policy, LORA)
            self.dense_ema = DenseEMA(self.anchor, self.policy)
        self.trained = [p for p in self.policy.parameters() if p.requires_grad]
        self.reward_model, self.work, self.bf16, self.compiled = reward_model, work, bf16, compiled
        self.device, self.cuda_graphs = device, cuda_graphs
        self.optimizer = torch.optim.Adam(self.trained, lr=work.lr, betas=(0.9, 0.999), eps=1e-8)
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        self.prompt_ids = ids.repeat_interleave(work.k, 0).to(device)
        self.prompt_mask = mask.repeat_interleave(work.k, 0).to(device)
        self.generator = torch.Generator(device).manual_seed(seed)

    def __call__(self, probe=None):
        """One step; `probe(phase)` wraps each phase (a new `PhaseTimer` unless given). Returns the probe."""
        probe = probe or PhaseTimer(self.device)
        w, tok = self.work, self.tokenizer
        with autocast(self.device, self.bf16):
            with probe("generation"):
                # EOS has probability 0 for `min_new_tokens` tokens (TRL: min_new_tokens)
                rollout = sample(self.policy, self.prompt_ids, self.prompt_mask, w.new_tokens, temperature=1.0,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 generator=self.generator, keep_logits=True, min_new_tokens=w.min_new_tokens,
                                 cuda_graphs=self.cuda_graphs)
            with probe("reward"):
                reward = torch.as_tensor(self.reward_model(decode_texts(tok, rollout))).float().to(self.device)
            with probe("forwards"):
                loss = rloo_objective(self.policy, self.anchor, rollout, reward, w.beta, w.k)["loss"]
        with probe("backward"):
            loss.backward()
        with probe("optimizer"):
            torch.nn.utils.clip_grad_norm_(self.trained, w.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.dense_ema is not None:
                self.dense_ema.update_(w.mu)
            else:
                rl.ema_update_(list(self.anchor.parameters()), [p.detach() for p in self.policy.parameters()], w.mu)
        assert rollout.completion_ids.shape[1] >= w.min_new_tokens and rollout.completion_mask[:, : w.min_new_tokens].all()
        self.completion_tokens = int(rollout.completion_mask.sum())  # of the last step
        return probe

    def count_flops(self) -> dict:
        """FLOPs per phase of one step, with eager kernels and no CUDA graph: the compiled kernels (element-wise
        passes and reductions, no matmuls) and a graph's replay hide their ops from the counter."""
        use_compiled_kernels(False)
        graphs, self.cuda_graphs = self.cuda_graphs, False
        try:
            return self(PhaseFlops()).flops
        finally:
            use_compiled_kernels(self.compiled)
            self.cuda_graphs = graphs


# ----------------------------------------------------------------------------------------------------- TRL's step


def trl_trainer(model_dir: Path, reward: RewardModel, prompts, work: Work, max_steps: int, bf16: bool, seed: int,
                callback, device: str = "cpu", lora: bool = False, messages: list | None = None,
                output_dir: Path | None = None):
    """RLOOTrainer doing our step's work: one update per batch of `work.prompts` prompts x k, of `work.new_tokens`
    new tokens (exactly that many with the default `work.min_new_tokens`). TRL reads the prompt ids as text, or
    `messages`, the same prompts as chat messages, which it renders with the tokenizer's chat template."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    tokenizer = load_tokenizer(model_dir)
    texts = messages or [tokenizer.decode(p) for p in prompts]
    args = RLOOConfig(
        output_dir=str(output_dir or model_dir / "trl"), report_to="none", save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, use_cpu=device == "cpu", seed=seed, data_seed=seed, shuffle_dataset=False, dataloader_num_workers=0,
        bf16=bf16, gradient_checkpointing=False,  # TRL turns checkpointing on by default: off, to do our work only
        per_device_train_batch_size=work.completions, gradient_accumulation_steps=1, num_generations=work.k,
        num_iterations=1, max_completion_length=work.new_tokens,
        generation_kwargs={"min_new_tokens": work.min_new_tokens},  # EOS masked until then, as on our side
        temperature=1.0, top_p=1.0, top_k=0, beta=work.beta, learning_rate=work.lr, lr_scheduler_type="constant",
        max_grad_norm=work.grad_clip, max_steps=max_steps, disable_dropout=True,
        # the reference model moves like our EMA anchor: ref <- alpha * policy + (1 - alpha) * ref every step
        # (with PEFT, TRL's reference is the base model with the adapters disabled: no EMA possible)
        sync_ref_model=not lora, ref_model_sync_steps=1, ref_model_mixup_alpha=work.mu,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, target_modules=LORA.target_modules,
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = RLOOTrainer(model=str(model_dir), reward_funcs=[reward.model], args=args, peft_config=peft_config,
                          train_dataset=Dataset.from_dict({"prompt": texts * max_steps}),
                          processing_class=tokenizer, reward_processing_classes=[reward.tokenizer])
    trainer.add_callback(callback)  # after TRL's own SyncRefModelCallback: its EMA is inside the timed step
    return trainer


def step_callback(after_step=None, flops_step: int = -1, device: str = "cpu"):
    """A TrainerCallback timing TRL's steps (and counting the FLOPs of step `flops_step`); after each step it
    calls `after_step(step)`, which runs one of ours when the two alternate."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self):
            self.seconds, self.flops, self.start_rss = [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_rss = current_memory(device)  # the models (policy, reference, reward) are loaded

        def on_step_begin(self, args, state, control, **kwargs):
            self._probe = flop_counter_mode() if state.global_step == flops_step else contextlib.nullcontext()
            self._probe.__enter__()
            synchronize(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.seconds.append(time.perf_counter() - self._start)
            self._probe.__exit__(None, None, None)
            if state.global_step - 1 == flops_step:
                self.flops = self._probe.get_total_flops()
            if after_step is not None:
                after_step(state.global_step - 1)

    return Steps()


def trl_alternating(model_dir: Path, reward: RewardModel, prompts, work: Work, steps: int, args, our_step,
                    flops_step: int = -1, **trl_options):
    """TRL's trainer for `steps` steps, `our_step(step)` run after each (the two sides alternate in this
    process). Returns the trainer, still to `train()`, its step timer and the list of its `generate` times."""
    callback = step_callback(our_step, flops_step=flops_step, device=args.device)
    trainer = trl_trainer(model_dir, reward, prompts, work, steps, args.bf16, args.seed, callback, args.device,
                          **trl_options)
    return trainer, callback, time_generate(trainer.model, args.device)


# -------------------------------------------------------------------------------------------- runs and reporting


def child(args) -> None:
    """`--child ours|trl`: steps of one side alone in this fresh process; prints one JSON line (times, memory)."""
    work = Work(prompts=args.completions // 4)
    tokenizer = load_tokenizer(fetch("gpt2_tokenizer"))
    reward = random_reward_model(tokenizer, args.seed, args.device)
    prompts = make_prompts(tokenizer, work, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        save_random_gpt2(args.sizes, tokenizer, model_dir, args.seed)
        if args.child == "ours":
            ours = WarpStep(model_dir, reward, prompts, work, args.bf16, args.seed, not args.no_compile, args.device,
                            lora=args.sizes.endswith("-lora"))
            start = current_memory(args.device)
            seconds = [sum(ours().seconds.values()) for _ in range(args.warmup + args.steps)][args.warmup:]
        else:
            callback = step_callback(device=args.device)
            trl_trainer(model_dir, reward, prompts, work, args.warmup + args.steps, args.bf16, args.seed,
                        callback, args.device, lora=args.sizes.endswith("-lora")).train()
            seconds, start = callback.seconds[args.warmup:], callback.start_rss
    print(json.dumps({"seconds": seconds, "peak": peak_memory(args.device), "start": start}))


def run_child(side: str, size: str, args, completions: int = 64, steps: int = 1, warmup: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", side, "--sizes", size, "--completions", str(completions),
               "--steps", str(steps), "--warmup", str(warmup), "--seed", str(args.seed), "--device", args.device]
    command += ["--bf16"] * args.bf16 + ["--no-compile"] * args.no_compile
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_kind(device: str) -> str:
    return "peak GPU memory allocated" if device == "cuda" else "peak RSS"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})"


def time_generate(model, device: str) -> list[float]:
    """Wraps `model.generate` (TRL's sampling) to record each call's wall time, GPU work included."""
    seconds, inner = [], model.generate

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        return out

    model.generate = timed
    return seconds


def compare(size: str, args, tokenizer, reward: RewardModel, rate: float) -> tuple[float, float, float]:
    """Both sides alternating on `size`; prints the comparison. Returns TRL's median step time over ours, and
    the median generation milliseconds per new token of ours and of TRL."""
    work = Work()
    prompts = make_prompts(tokenizer, work, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        n_params = save_random_gpt2(size, tokenizer, model_dir, args.seed)
        lora = size.endswith("-lora")
        ours = WarpStep(model_dir, reward, prompts, work, args.bf16, args.seed, not args.no_compile, args.device,
                        lora=lora)
        timed = range(args.warmup, args.warmup + args.steps)
        phases, our_flops = [], {}

        def our_step(step: int) -> None:
            if step in timed:
                phases.append(ours().seconds)
            elif step == timed.stop:
                our_flops.update(ours.count_flops())
            else:
                ours()  # warm-up (compiles the kernels)

        trainer, callback, trl_generate = trl_alternating(model_dir, reward, prompts, work, timed.stop + 1, args,
                                                          our_step, flops_step=timed.stop, lora=lora)
        trainer.train()  # one `generate` call per step
    trl_s = callback.seconds[timed.start : timed.stop]
    ours_s = [sum(p.values()) for p in phases]
    memory = {side: run_child(side, size, args) for side in ("ours", "trl")}

    layers, width, _ = SIZES[size]
    print(f"\n== {size}: {layers} layers, width {width}, {n_params / 1e6:.1f}M parameters ==")
    print(f"completions/s, median (min-max) over {args.steps} alternating steps:")
    print(f"  warp_lightning {spread([work.completions / s for s in ours_s])}   "
          f"{statistics.median(ours_s):.3f} s/step")
    print(f"  trl            {spread([work.completions / s for s in trl_s])}   "
          f"{statistics.median(trl_s):.3f} s/step")
    med = {ph: statistics.median(p[ph] for p in phases) for ph in PHASES}
    print("our step, median s:  " + " | ".join(f"{ph} {med[ph]:.3f}" for ph in PHASES))
    decode = {"warp_lightning": 1000 * med["generation"] / work.new_tokens,
              "trl": 1000 * statistics.median(trl_generate[timed.start : timed.stop]) / work.new_tokens}
    print(f"generation ms per new token ({work.completions} completions, prefill included, median): "
          + " | ".join(f"{name} {ms:.2f}" for name, ms in decode.items()))
    total = sum(our_flops.values())
    print("our step, GFLOP:     " + " | ".join(f"{ph} {our_flops[ph] / 1e9:.1f}" for ph in PHASES))
    for name, count, seconds in (("warp_lightning", total, statistics.median(ours_s)),
                                 ("trl", callback.flops, statistics.median(trl_s))):
        print(f"  {name:14s} {count / 1e9:7.1f} GFLOP counted in {seconds:.3f} s = {count / seconds / 1e9:6.1f} "
              f"GFLOP/s = {100 * count / seconds / rate:.1f}% of the measured matmul rate")
    print(f"peak memory, one side alone in a fresh process ({memory_kind(args.device)}; above it with the models "
          "loaded):")
    for name, side in (("warp_lightning", "ours"), ("trl", "trl")):
        m = memory[side]
        print(f"  {name:14s} {m['peak'] / GiB:5.2f} GiB ({(m['peak'] - m['start']) / GiB:+.2f} GiB)")
    return statistics.median(trl_s) / statistics.median(ours_s), decode["warp_lightning"], decode["trl"]


# ------------------------------------------------------------------------------------- the chat experiment's shape

CHAT_EXPERIMENT = "chat_smollm2"  # conf/experiment/chat_smollm2.yaml
# our two variants: today's code (each distinct prompt runs once for its k samples, then its KV cache is
# expanded), and the same code with every row's prompt run on its own, as before that sharing
OURS = {
    "after": contextlib.nullcontext,
    "before": lambda: mock.patch.object(sampling, "_repeated_rows", lambda ids, mask: None),
}


def cpu_name() -> str:
    """The CPU's model name and its widest vector unit (AVX-512 BF16 runs bf16 matmuls at about twice fp32's rate)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = info.split("\n\n")[0]  # the first processor's block
    fields = {key.strip(): value.strip() for key, value in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
    name, flags = fields.get("model name", platform.processor()), fields.get("flags", "").split()
    unit = ("AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512, no AVX-512 BF16" if "avx512f" in flags
            else "AVX2, no AVX-512 BF16" if "avx2" in flags else "no AVX2")
    return f"{name} ({unit})"


def chat_setup(args):
    """`train +experiment=chat_smollm2` as Hydra composes it: its policy folder (built once from the gguf, as
    `train` builds it), a `Work` maker (k to give) with its step's settings, and `--prompts` prompts (default its
    prompts_per_step) drawn from its train split: as messages (what TRL reads) and as the ids our side trains on."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={CHAT_EXPERIMENT}"])
    ensure_model("policy", cfg.policy, cfg.paths.cache_dir)
    model_dir = Path(cfg.policy.name_or_path)
    tokenizer = load_tokenizer(model_dir)
    train = prompt_dataset_splits(cfg.data, tokenizer, cfg.paths.cache_dir)[0]
    rows = random.Random(args.seed).sample(range(len(train)), args.prompts or cfg.warp.prompts_per_step)
    messages = [prompt_columns(train)[MESSAGES][r] for r in rows]
    prompts = [train[r]["input_ids"] for r in rows]
    trl_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert trl_ids["input_ids"] == prompts, "TRL would tokenize the chat prompts differently from our data code"
    w = cfg.warp
    assert w.temperature == 1.0 and w.optimizer._target_ == "torch.optim.Adam"  # as both sides here
    # --equal-length: EOS masked for all the new tokens on both sides (every answer exactly max_new_tokens long), so
    # that both sides do the same work per answer; by default the experiment's own min_new_tokens
    least = w.max_new_tokens if args.equal_length else w.min_new_tokens
    work = functools.partial(Work, prompts=len(rows), new_tokens=w.max_new_tokens, min_new_tokens=least,
                             beta=w.kl_coef, mu=w.ema_rate, lr=w.lr, grad_clip=w.grad_clip)
    return model_dir, tokenizer, messages, prompts, work


def chat_compare(model_dir: Path, reward: RewardModel, messages, prompts, work: Work, args) -> dict:
    """Our two variants (`OURS`) and TRL alternating on the chat shape: after each TRL step one step of each of
    ours, in turn first. Returns, per side, the timed steps' seconds and mean answer lengths (new tokens, EOS
    included), and our variants' phases."""
    ours = WarpStep(model_dir, reward, prompts, work, args.bf16, args.seed, not args.no_compile, args.device)
    timed = range(args.warmup, args.warmup + args.steps)
    sides = {side: {"seconds": [], "tokens": [], "phases": [], "flops": None} for side in (*OURS, "trl")}

    def our_step(step: int) -> None:
        if step in timed:  # TRL's own count of its last step's answer lengths
            sides["trl"]["tokens"].append(trainer._metrics["train"]["completions/mean_length"][-1])
        for variant in list(OURS)[:: 1 if step % 2 == 0 else -1]:
            with OURS[variant]():
                if step == timed.stop:  # one more step each, untimed, to count its FLOPs
                    sides[variant]["flops"] = ours.count_flops()
                    continue
                probe = ours()
            if step in timed:
                sides[variant]["phases"].append(probe.seconds)
                sides[variant]["seconds"].append(sum(probe.seconds.values()))
                sides[variant]["tokens"].append(ours.completion_tokens / work.completions)

    with tempfile.TemporaryDirectory() as tmp:
        trainer, callback, trl_generate = trl_alternating(model_dir, reward, prompts, work, timed.stop + 1, args,
                                                          our_step, flops_step=timed.stop, messages=messages,
                                                          output_dir=Path(tmp))
        trainer.train()
    sides["trl"]["seconds"] = callback.seconds[timed.start : timed.stop]
    sides["trl"]["generation"] = trl_generate[timed.start : timed.stop]
    sides["trl"]["flops"] = callback.flops
    return sides


def flops_lines(sides: dict) -> list[str]:
    """Each side's counted FLOPs per step (ours by phase), their rate over its median step, and TRL's count over
    each of ours: the speed-up each side would have at the same arithmetic rate."""
    lines = []
    for side, s in sides.items():
        total = sum(s["flops"].values()) if isinstance(s["flops"], dict) else s["flops"]
        phases = (" (" + " | ".join(f"{ph} {s['flops'][ph] / 1e9:.1f}" for ph in PHASES) + ")"
                  if isinstance(s["flops"], dict) else "")
        lines.append(f"  {side:6s} {total / 1e9:7.1f} GFLOP/step{phases}, {total / statistics.median(s['seconds']) / 1e9:.1f}"
                     f" GFLOP/s")
        s["total_flops"] = total
    trl = sides["trl"]["total_flops"]
    lines.append("  trl's FLOPs over ours (the speed-up at equal arithmetic rate): " + " | ".join(
        f"{side} {trl / s['total_flops']:.2f}x" for side, s in sides.items() if side != "trl"))
    return lines


def chat(args) -> None:
    """`--shape chat`: the three sides for each k of `--ks`, then one summary line per k."""
    import trl

    model_dir, tokenizer, messages, prompts, make_work = chat_setup(args)
    reward = random_reward_model(tokenizer, args.seed, args.device)
    machine = (f"{cpu_name()}, {torch.get_num_threads()} thread(s), {'bf16 autocast' if args.bf16 else 'fp32'}, "
               f"torch {torch.__version__}, trl {trl.__version__}")
    lengths = sorted(len(p) for p in prompts)
    print(f"chat shape (+experiment={CHAT_EXPERIMENT}): {model_dir.name}, {len(prompts)} film prompts of "
          f"{lengths[0]}-{lengths[-1]} tokens (chat template), e.g. {messages[0][-1]['content']!r}")
    print("reward: a random 2-layer DistilBERT (width 128) reading the SmolLM2 tokenizer, raw score; the same "
          "model on both sides")
    print(f"all three sides alternate in this one process with {torch.get_num_threads()} torch thread(s); "
          f"{args.warmup} warm-up + {args.steps} timed steps per side and k")
    summary = []
    for k in (int(k) for k in args.ks.split(",")):
        work = make_work(k=k)
        sides = chat_compare(model_dir, reward, messages, prompts, work, args)
        rate = {side: work.completions / statistics.median(s["seconds"]) for side, s in sides.items()}
        print(f"\n== chat, k={k}: {work.prompts} prompts x {k} = {work.completions} answers of up to "
              f"{work.new_tokens} new tokens (min_new_tokens {work.min_new_tokens}), beta={work.beta}, "
              f"EMA mu={work.mu}, Adam lr={work.lr}, grad clip {work.grad_clip} ==")
        print(f"completions/s, median (min-max) over {args.steps} alternating steps; s/step; mean answer tokens:")
        for side, s in sides.items():
            print(f"  {side:6s} {spread([work.completions / t for t in s['seconds']])}   "
                  f"{statistics.median(s['seconds']):.3f} s/step   {statistics.mean(s['tokens']):.1f} tokens")
        for variant in OURS:
            med = {ph: statistics.median(p[ph] for p in sides[variant]["phases"]) for ph in PHASES}
            print(f"our step ({variant}), median s:  " + " | ".join(f"{ph} {med[ph]:.3f}" for ph in PHASES))
        print(f"trl generate, median s: {statistics.median(sides['trl']['generation']):.3f}")
        print("FLOPs counted (matmuls and attention; one extra untimed step per side, eager kernels):")
        print("\n".join(flops_lines(sides)))
        summary.append(f"chat k={k}{' (equal length)' if args.equal_length else ''}: after {rate['after']:.2f} | before {rate['before']:.2f} | trl {rate['trl']:.2f} "
                       f"completions/s | after/before {rate['after'] / rate['before']:.2f}x | after/trl "
                       f"{rate['after'] / rate['trl']:.2f}x | trl/after FLOPs "
                       f"{sides['trl']['total_flops'] / sides['after']['total_flops']:.2f}x | {machine}, load average "
                       f"{os.getloadavg()[0]:.2f}")
        print(summary[-1], flush=True)
    print("\n" + "\n".join(summary))


def scaling(args) -> None:
    """Our step's time and peak memory against completions per step and model size, as a markdown table."""
    rows = [f"| model | completions/step | s/step (median) | completions/s | {memory_kind(args.device)} GiB "
            "| above models GiB |",
            "|---|---|---|---|---|---|"]
    for size in args.sizes.split(","):
        layers, width, _ = SIZES[size]
        for completions in (int(c) for c in args.completions_list.split(",")):
            m = run_child("ours", size, args, completions, args.steps, args.warmup)
            s = statistics.median(m["seconds"])
            rows.append(f"| {size} ({layers}x{width}) | {completions} | {s:.2f} | {completions / s:.1f} | "
                        f"{m['peak'] / GiB:.2f} | {(m['peak'] - m['start']) / GiB:.2f} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=None, help="comma-separated, from: " + ", ".join(SIZES)
                   + " (default tiny,small; with --scaling or --device cuda tiny,small,gpt2)")
    p.add_argument("--steps", type=int, help="timed steps per side (default 5; with --scaling per cell, default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile the kernels)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default fp32)")
    p.add_argument("--no-compile", action="store_true", help="eager log-prob and sampling kernels on our side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both sides run (cuda: the first GPU; the CPU figures are the reference)")
    p.add_argument("--scaling", action="store_true", help="only our step: a table over sizes x completions/step")
    p.add_argument("--shape", choices=("random", "chat"), default="random",
                   help="chat: the chat experiment (SmolLM2-135M-Instruct, film prompts) before/after the prompt "
                   "computed once per k samples, against TRL (default: random models of --sizes)")
    p.add_argument("--ks", default="4,8", help="samples per prompt for --shape chat")
    p.add_argument("--prompts", type=int, help="prompts per step for --shape chat (default the experiment's)")
    p.add_argument("--equal-length", action="store_true", help="--shape chat: every answer exactly max_new_tokens "
                   "long on both sides (EOS masked), the same work per answer (default: EOS may end an answer)")
    p.add_argument("--threads", type=int, help="torch threads (default torch's; 1 with --shape chat)")
    p.add_argument("--completions-list", default="16,64,256", help="completions per step for --scaling")
    p.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--completions", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.scaling else 3 if args.shape == "chat" else 5)
    args.sizes = args.sizes or ("tiny,small,gpt2" if args.scaling or args.device == "cuda" else "tiny,small")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); leave --device out")

    use_compiled_kernels(not args.no_compile)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    threads = args.threads or (1 if args.shape == "chat" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.child:
        child(args)
        return
    if args.shape == "chat":
        chat(args)
        return
    import trl

    precision = "bf16 autocast" if args.bf16 else "fp32"
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"rl_step {datetime.datetime.now():%Y-%m-%d %H:%M}: torch {torch.__version__}, trl {trl.__version__}, "
          f"{where}, {precision}, load average {os.getloadavg()[0]:.2f}")
    rate, n = matmul_rate(args.device, args.bf16)
    print(f"machine matmul rate: {rate / 1e9:.1f} GFLOP/s ({precision}, {n}^3, best of 5)")
    work = Work()
    print(f"work per step: {work.prompts} prompts of {work.min_prompt}-{work.max_prompt} tokens x k={work.k} = "
          f"{work.completions} completions of exactly {work.new_tokens} tokens, temperature 1, beta={work.beta}, "
          f"EMA mu={work.mu}, Adam lr={work.lr}, grad clip {work.grad_clip}")
    print("reward: a random 2-layer DistilBERT (width 128) reading the GPT-2 tokenizer, raw score; the same model "
          "on both sides")
    if args.scaling:
        scaling(args)
        return
    tokenizer = load_tokenizer(fetch("gpt2_tokenizer"))
    reward = random_reward_model(tokenizer, args.seed, args.device)
    results = {size: compare(size, args, tokenizer, reward, rate) for size in args.sizes.split(",")}
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    for i, name in enumerate(("speedup_vs_trl", "decode_ms_per_token", "trl_decode_ms_per_token")):
        print(name + " " + " ".join(f"{size}={r[i]:.2f}" for size, r in results.items()))


if __name__ == "__main__":
    main()
