"""Result files: one small gzipped JSON per finished job, RESULTS_DIR/STUDY/JOB.json.gz, committed to the repository.

A result holds what every table, interval and verdict of the study needs, and nothing heavy (never weights):
- the job's header: study, arm, seed, its definition (the overrides of its commands), `NUMERICS`, the commit
  (and whether the tree had uncommitted changes), the device and precision, the seconds of each command;
- the resolved config of its `train` run, its per-run records and merge statistics, its end-of-train check (a
  reward arm's job: its `reward` run's resolved config and metrics.json, under `reward`);
- its front (`front`): every point (front.csv's row) and the per-prompt reward, judge score and KL of every point
  (and each term of a sum reward, `reward/NAME`), on the prompts and sampling random numbers that every job of the study shares.

`NUMERICS` names what the numbers mean: the training and evaluation arithmetic. A change of code that changes
what a job computes (a smoke `train` no longer giving its golden figures: tests/studies/test_golden.py) bumps it,
and the report refuses to pool results of different numerics (naming the jobs to re-run). Results from machines
that compute bf16 and fp32 matmuls may pool (their seeds are independent); the report states the mix.
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
from pathlib import Path

from warp_lightning.utils.io import atomic_write_bytes

NUMERICS = 1  # bump when a smoke `train` or `front` computes other numbers (tests/studies/test_golden.py)
DIGITS = 6  # per-prompt values are rounded to this many decimals (a whole study stays under a few MB)


def git_commit(repo: Path | None = None) -> tuple[str, bool]:
    """(the commit of the code that ran, whether its code or configs had uncommitted changes, new files under them
    included); ("unknown", False) outside git."""
    where = repo or Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "warp_lightning", "conf"], cwd=where, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", bool(dirty)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(v):
    if v in ("", None):
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return round(x, DIGITS)


def measured(row: dict) -> list[str]:
    """The per-prompt values of a front_prompts.csv row: reward, judge, KL, and a sum reward's terms `reward/NAME`."""
    return [m for m in row if m in ("reward", "judge", "kl") or m.startswith("reward/")]


def front_data(front_dir: Path) -> dict:
    """A front run's points (front.csv), per point its prompts and their values (front_prompts.csv), and its
    completions of the first prompts (front_examples.csv)."""
    rows = [{k: _number(v) for k, v in r.items()} for r in read_csv(front_dir / "front.csv")]
    points: dict[str, dict] = {}
    for r in read_csv(front_dir / "front_prompts.csv"):
        key = "|".join(str(r[k]) for k in ("curve", "seed", "eta", "step"))
        p = points.setdefault(key, {"curve": r["curve"], "seed": int(float(r["seed"])), "eta": _number(r["eta"]),
                                    "step": _number(r["step"]), "prompt_index": []})
        p["prompt_index"].append(int(r["prompt_index"]))
        for m in measured(r):
            if r.get(m) not in ("", None):
                p.setdefault(m, []).append(round(float(r[m]), DIGITS))
    examples = front_dir / "front_examples.csv"  # a front of an older version has none
    return {"rows": rows, "prompts": list(points.values()),
            "examples": [{**{k: _number(v) for k, v in r.items() if k not in ("text", "completion")},
                          "text": r["text"], "completion": r["completion"]} for r in read_csv(examples)]
            if examples.exists() else []}


def write_result(path: Path, record: dict) -> Path:
    """Atomically: a reader sees the whole file or none (a job killed while writing leaves no result)."""
    data = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()
    return atomic_write_bytes(path, gzip.compress(data, mtime=0))


def read_result(path: Path) -> dict:
    return json.loads(gzip.decompress(Path(path).read_bytes()))


def read_results(results_dir: str | Path, study: str) -> dict[str, dict]:
    """{job name: result} of every result file of a study."""
    folder = Path(results_dir) / study
    return {p.name.removesuffix(".json.gz"): read_result(p) for p in sorted(folder.glob("*.json.gz"))}
