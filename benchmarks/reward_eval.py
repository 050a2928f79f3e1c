"""A reward model's evaluation figures: texts scored in the order given against shortest first (reward/training.py
`length_ordered`, what `reward_metrics` uses), on the same texts in one process, alternating.

    python benchmarks/reward_eval.py                         # 1024 of Pang & Lee's sentences, the cached MiniLM
    python benchmarks/reward_eval.py --texts 2048 --repeats 3 --set reviews

Prints each side's seconds (median and range over the repeats), the ratio, the largest score difference and how
many signs (the sign accuracy's verdict per text) differ. Needs the reward model in the models cache (any `train`
builds it) and the asset (`python -m warp_lightning assets`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from warp_lightning.data.texts import load_texts
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.reward.training import length_ordered
from warp_lightning.utils.precision import cpu_flags, cpu_name

CACHE = Path(os.environ.get("WARP_LIGHTNING_CACHE", Path.home() / ".cache" / "warp_lightning"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=1024)
    p.add_argument("--set", default="sentences", help="an evaluation set of `reward_training.eval_sets`")
    p.add_argument("--model", default=str(CACHE / "models" / "reward_minilm_rt"))
    p.add_argument("--max-length", type=int, default=256, help="reward_training.eval_max_length")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    texts = load_texts(args.set, None, cache=CACHE)
    texts = list(texts.shuffle(seed=0).select(range(min(len(texts), args.texts)))["text"])
    scorer = RewardModel.from_pretrained(args.model, sigmoid=False, max_length=args.max_length)
    scorer(texts[:64])  # warm-up
    times: dict[str, list[float]] = {"as given": [], "shortest first": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        given = scorer(texts)
        times["as given"].append(time.perf_counter() - started)
        started = time.perf_counter()
        ordered = length_ordered(scorer, texts)
        times["shortest first"].append(time.perf_counter() - started)
    print(f"reward_eval {time.strftime('%Y-%m-%d %H:%M')}: torch {torch.__version__}, {cpu_name()}"
          f"{' (avx512_bf16)' if 'avx512_bf16' in cpu_flags() else ' (no avx512_bf16)'}, "
          f"{torch.get_num_threads()} thread(s), fp32, load average {os.getloadavg()[0]:.2f}")
    print(f"{len(texts)} texts of `{args.set}`, max_length {args.max_length}, batches of {scorer.batch_size}, "
          f"model {args.model}")
    for name, ts in times.items():
        print(f"  {name:<15} {statistics.median(ts):7.2f} s (median; {min(ts):.2f}-{max(ts):.2f})")
    ratio = statistics.median(times["as given"]) / statistics.median(times["shortest first"])
    print(f"as given / shortest first: {ratio:.2f}x; max |score difference| {(given - ordered).abs().max():.2e}; "
          f"signs that differ: {int(((given > 0) != (ordered > 0)).sum())} of {len(texts)}")


if __name__ == "__main__":
    main()
