"""The prompt splits of a data config computed against read back from the held-out prompt cache (data/prompts.py).

    python benchmarks/prompt_cache.py                 # conf/data/reviews.yaml (the offline default), 3 repeats
    python benchmarks/prompt_cache.py --data file     # another conf/data/*.yaml (with its data.path set there)

Every timing is in one process that already holds the texts and the tokenizer (a first call warms them), so it
measures what the cache saves itself; a new process (each `train`, `evaluate`, `front` and multirun job) saves
more: on a hit it does not load the seen-text sets at all. The cache goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf
from transformers import AutoTokenizer

from warp_lightning.cli import CONF_DIR
from warp_lightning.data import prompts
from warp_lightning.data.assets import fetch


def cpu() -> str:
    names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")] if Path("/proc/cpuinfo").exists() else [platform.processor()]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return f"{names[0] if names else '?'} x{len(names)}" + (", avx512_bf16" if "avx512_bf16" in flags else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="reviews", help="a conf/data/*.yaml name")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data = OmegaConf.load(CONF_DIR / "data" / f"{args.data}.yaml")
    tokenizer = AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer"))
    folder = Path(tempfile.mkdtemp(prefix="prompt_cache_"))
    prompts.prompt_cache_dir = lambda cache: folder  # leave the user's cache alone

    def timed(cache_on: bool, keep: bool) -> float:
        os.environ[prompts.PROMPT_CACHE_ENV] = "1" if cache_on else "0"
        if not keep:
            for f in folder.glob("*"):
                f.unlink()
        start = time.perf_counter()
        prompts.splits_for(data, tokenizer, 0)
        return time.perf_counter() - start

    timed(False, False)  # warm-up: imports, the texts' parsing, the tokenizer
    computed = [timed(False, False) for _ in range(args.repeats)]
    timed(True, False)  # writes the cache file
    read = [timed(True, True) for _ in range(args.repeats)]
    c, r = statistics.median(computed), statistics.median(read)
    print(f"cpu: {cpu()}; data={args.data}; median of {args.repeats}")
    print(f"computed: {c:.2f} s   read back: {r:.2f} s   ratio: {c / r:.1f}x")


if __name__ == "__main__":
    main()
