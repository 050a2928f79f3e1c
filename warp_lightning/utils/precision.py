"""Which device and precision a command computes in, chosen from the machine unless the config says.

`trainer.precision: auto` (the default of every command) means bf16 matmuls (`bf16-mixed`) where the device
computes bf16 natively, fp32 (`32-true`) elsewhere:

- CUDA: GPUs that support bf16 (Ampere and later);
- CPU: x86 CPUs with AVX-512 BF16 or AMX (their bf16 matmuls run 2-3x faster than fp32). Without them
  (AVX2-only CPUs, e.g. many AMD EPYC) bf16 matmuls are emulated, 8-65x slower than fp32, so fp32 is chosen.

Log-probs, KL, advantages and rewards are float32 in both precisions; only matmuls change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("auto", "bf16-mixed", "32-true", "32")


def cuda_requested(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts the models on a GPU (`auto` does when one is visible)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def device_for(accelerator: str) -> torch.device:
    """The device of this process's models: `cuda:LOCAL_RANK` (one GPU per process) or `cpu`."""
    if cuda_requested(accelerator):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively (faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> `bf16-mixed` or `32-true` for `device`; any other Lightning precision as given."""
    if str(precision) != "auto":
        return str(precision)
    return "bf16-mixed" if native_bf16(device) else "32-true"


def describe(device: torch.device, precision: str) -> str:
    """One line for the log and the manifest: device, its name, the precision and why."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    why = ("bf16 native" if native_bf16(device) else "no native bf16")
    return f"{device} ({name}), precision {precision} ({why})"


def autocast(precision: str, device: torch.device):
    """The matmul precision of a command outside Lightning's loop (sampling for evaluation, scoring):
    bf16 autocast on `device` for `bf16-mixed`, nothing for fp32."""
    if str(precision).startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
