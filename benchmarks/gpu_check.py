"""`make gpu-check`: everything that needs a GPU, as one script, within about 8 minutes on one GPU.

1. install what the Python running this script lacks (from `--wheels DIR` when the machine is offline);
2. the tests marked `gpu` (`pytest -m gpu`);
   (they include a smoke `train` on the GPU, twice, and its output reloaded on CPU; tiny models built first);
3. the offline default on the GPU, short: `sft` and `reward` at their default settings, `train` with I=1, M=2,
   T=20 and its figures, and `evaluate` of its final policy;
4. `benchmarks/rl_step.py --device cuda --bf16` (ours against TRL at tiny, small and the GPT-2 124M shape).

Every stage runs in its own process with a time limit; a failed stage is reported and the next one runs.
The results go to `--out` (default benchmarks/gpu_check/): `GPU_CHECK.md` (the summary the README quotes),
`gpu_check.json` and one log per stage.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# import name -> requirement: what the project needs beyond torch (the `bench` extra: trl)
NEEDS = {"lightning": "lightning", "hydra": "hydra-core", "omegaconf": "omegaconf", "transformers": "transformers",
         "datasets": "datasets", "torchmetrics": "torchmetrics", "safetensors": "safetensors",
         "matplotlib": "matplotlib", "sklearn": "scikit-learn", "scipy": "scipy", "trl": "trl==1.16.0",
         "pytest": "pytest"}
TINY_SFT = ["sft.max_steps=3", "sft.n_layer=1", "sft.n_embd=32", "sft.n_head=2", "sft.context=32",
            "sft.corpus=[sentences]", "sft.val_every=2", "sft.max_val_blocks=8", "sft.warmup_steps=1"]
TINY_REWARD = ["reward_training.max_steps=3", "reward_training.max_train_texts=64",
               "reward_training.max_val_texts=32", "reward_training.max_eval_texts=32",
               "reward_training.batch_size=8", "reward_training.warmup_steps=1"]
SHORT_TRAIN = ["warp.iterations=1", "warp.runs=2", "warp.steps=20", "warp.checkpoint_every=0"]


class Check:
    def __init__(self, out: Path, budget: float):
        self.out, self.deadline, self.stages = out, time.time() + budget, []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}

    def run(self, name: str, command: list[str], limit: float) -> tuple[int, str]:
        """Run one stage with `limit` seconds (less if the whole budget runs out); its log goes to out/NAME.log."""
        limit = max(10.0, min(limit, self.deadline - time.time()))
        started = time.time()
        try:
            proc = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=limit)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, text = 124, _text(err.stdout) + _text(err.stderr) + f"\n(stopped after {limit:.0f} s)"

        seconds = round(time.time() - started, 1)
        (self.out / f"{name}.log").write_text(text)
        self.stages.append({"stage": name, "rc": rc, "seconds": seconds, "command": " ".join(command[1:])})
        print(f"== {name}: rc {rc}, {seconds} s" + ("" if rc == 0 else f"\n{text[-1500:]}"), flush=True)
        return rc, text


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "warp_lightning", *args]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def install(check: Check, wheels: str | None) -> None:
    missing = [req for mod, req in NEEDS.items() if importlib.util.find_spec(mod) is None]
    if not missing and not wheels:
        check.stages.append({"stage": "install", "rc": 0, "seconds": 0.0, "command": "(nothing missing)"})
        return
    target = check.out / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target)]
    command += ["--no-index", "--no-deps", *[str(w) for w in sorted(Path(wheels).glob("*.whl"))]] if wheels else missing
    check.run("install", command, 120)
    check.env["PYTHONPATH"] = os.pathsep.join([check.env["PYTHONPATH"], str(target)])  # before site-packages
    sys.path.insert(1, str(target))


def machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    for mod in ("transformers", "lightning", "trl"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check"))
    p.add_argument("--wheels", help="install these wheels (every *.whl in the folder, no index: offline machines) "
                   "ahead of the installed packages")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 8 minutes)")
    p.add_argument("--bench-sizes", default="gpt2,small,tiny")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        print("error: torch sees no GPU here (torch.cuda.is_available() is False): run `make gpu-check` on a machine "
              "with a CUDA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    check = Check(out, args.budget)
    started = time.time()
    install(check, args.wheels)
    info = machine()
    print(f"machine: {info}", flush=True)

    runs = out / "runs"
    tiny = runs / "tiny_models"  # built once here, then used by the tests (conftest: WARP_LIGHTNING_TEST_MODELS)
    check.run("smoke_sft", cli("sft", *TINY_SFT, f"paths.models_dir={tiny / 'models'}",
                               f"hydra.run.dir={runs / 'smoke_sft'}"), 60)
    check.run("smoke_reward", cli("reward", *TINY_REWARD, f"paths.models_dir={tiny / 'models'}",
                                  f"hydra.run.dir={runs / 'smoke_reward'}"), 60)
    check.env["WARP_LIGHTNING_TEST_MODELS"] = str(tiny)
    # the tests marked gpu: the policy on CUDA (graphs, bf16 log-probs), a smoke `train` on the GPU twice (same
    # seed, same weights) and its output reloaded on CPU
    rc, text = check.run("gpu_tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p",
                                       "no:cacheprovider", "tests"], 150)
    tests = re.findall(r"(\d+) (passed|failed|skipped|error)", text)

    models = runs / "models"
    sft_dir, reward_dir, train_dir = runs / "sft", runs / "reward", runs / "train"
    check.run("sft", cli("sft", f"paths.models_dir={models}", f"hydra.run.dir={sft_dir}"), 120)
    check.run("reward", cli("reward", f"paths.models_dir={models}", f"hydra.run.dir={reward_dir}"), 120)
    check.run("train", cli("train", *SHORT_TRAIN, f"paths.models_dir={models}", f"hydra.run.dir={train_dir}"), 150)
    check.run("evaluate", cli("evaluate", f"model={train_dir / 'final'}", "eval.subsamples=1", "eval.prompts=200",
                              f"paths.models_dir={models}", f"hydra.run.dir={runs / 'evaluate'}"), 90)
    rc, bench = check.run("bench", [sys.executable, "benchmarks/rl_step.py", "--device", "cuda", "--bf16",
                                    "--sizes", args.bench_sizes, "--steps", "3"], 300)

    result = {"date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "machine": info,
              "seconds": round(time.time() - started, 1), "stages": check.stages,
              "gpu_tests": {kind: int(n) for n, kind in tests},
              "sft": read_json(sft_dir / "metrics.json"), "reward": read_json(reward_dir / "metrics.json"),
              "train": read_json(train_dir / "metrics.json"), "evaluate": read_json(runs / "evaluate" / "metrics.json"),
              "bench": [ln for ln in bench.splitlines() if ln.strip() and not ln.startswith(("[", "W", "/"))][-60:]}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "GPU_CHECK.md").write_text(summary(result))
    print(summary(result))
    return 0 if all(s["rc"] == 0 for s in check.stages) else 1


def summary(r: dict) -> str:
    m = r["machine"]
    lines = [f"# GPU check, {r['date']}", "",
             f"{m.get('gpu')} ({m.get('gpu_memory_gib')} GiB), torch {m['torch']} (CUDA {m['cuda']}), "
             f"transformers {m['transformers']}, lightning {m['lightning']}, trl {m['trl']}; "
             f"whole check {r['seconds']:.0f} s (`python benchmarks/gpu_check.py`).", "",
             "| stage | exit status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['rc']} | {s['seconds']} |" for s in r["stages"]]
    lines += ["", f"Tests marked gpu: {r['gpu_tests'] or 'none ran'}."]
    s, rw, t = r["sft"], r["reward"], r["train"]
    if s:
        lines.append(f"SFT (default settings, on the GPU): {s.get('steps')} steps in {s.get('seconds')} s, held-out "
                     f"perplexity {s.get('val_perplexity', float('nan')):.1f} (unigram {s.get('unigram_perplexity', float('nan')):.1f}).")
    if rw:
        lines.append(f"Reward model: {rw.get('steps')} steps in {rw.get('seconds')} s, val pair accuracy "
                     f"{rw.get('val_pair_accuracy', float('nan')):.3f}, sentences accuracy "
                     f"{rw.get('sentences_accuracy', float('nan')):.3f}.")
    if t:
        lines.append("Short default train (I=1, M=2, T=20): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in t.items()
            if not isinstance(v, dict | list)) + ".")
    e = r.get("evaluate") or {}
    if e:
        lines.append("evaluate of that run's final policy: " + ", ".join(
            f"{k} {v:.3f}" for k, v in e.items() if isinstance(v, float)) + ".")
    lines += ["", "Benchmark (`benchmarks/rl_step.py --device cuda --bf16 --steps 3`):", "", "```", *r["bench"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
