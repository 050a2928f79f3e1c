"""Missing offline models are built on first use by the project's own commands (`sft`, `reward`) or from the gguf.

A model folder is built once, whatever the number of commands that need it at the same time:

- a lock per folder (`flock` on `.NAME.lock` next to it): a second command waits for the first one's build
  (and says so), then uses the folder; the kernel releases the lock when its holder dies, however it dies;
- the folder appears only complete (it is written under a temporary name and renamed, `utils.io.atomic_dir`);
  what a killed build leaves (`.NAME.*.tmp`) is removed by the next build, under the lock;
- the build command runs in its own process group, stopped with its whole group when the command that
  started it stops, and it dies with its parent even when that one is SIGKILLed (runtime/signals.py);
- its run folder is `.NAME.build-HASH/` next to the model (HASH: of the build command), so that a build stopped
  by a signal resumes from its checkpoint the next time the same model is needed;
- it reads its model and data from where the parent's config says (`SOURCES`: e.g. `reward_model.base=DIR` given
  to `train` reaches the `reward` build), and a build that fails gives its own one-line cause in the parent's.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from warp_lightning import Preempted, UserError
from warp_lightning.policy.smollm2 import build_smollm2
from warp_lightning.reward.rewards import classifier_configs
from warp_lightning.runtime import signals
from warp_lightning.utils.io import file_lock

log = logging.getLogger(__name__)

# the keys of a model's config that say where its build reads from (a hub name or a local copy): passed on to
# the build command, which composes the model's config anew (`reward_model=NAME`) and would not see them otherwise
SOURCES = {"reward": ("base", "train_data", "train_data_path")}
BUILD_KEYS = {"reward": "reward_model"}  # the key of the built model in the build command's own config
ERROR_PREFIX = "error: "  # how the CLI starts its one line (cli.py)


def build_command(kind: str, model_cfg, path: Path, cache_dir: str | None, choice: str | None = None) -> list[str]:
    """`python -m warp_lightning sft|reward save_to=PATH ... hydra.run.dir=<next to PATH>`. `choice`: the config
    of `kind` the needing command chose (`policy=sft_smollm2`); by default this command's own Hydra choice."""
    from hydra.core.hydra_config import HydraConfig

    if choice is None and HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(kind)
    prefix = BUILD_KEYS.get(model_cfg.build, kind)  # a sum's term `reward_model.terms.NAME` is the build's reward_model
    sources = [f"{prefix}.{key}={'null' if model_cfg[key] is None else model_cfg[key]}"
               for key in SOURCES.get(model_cfg.build, ()) if key in model_cfg]
    args = [model_cfg.build, f"save_to={path}", *([f"{kind}={choice}"] if choice else []), *sources,
            *([f"paths.cache_dir={cache_dir}"] if cache_dir else []), *map(str, model_cfg.get("build_overrides", []))]
    digest = hashlib.sha256("\0".join(args).encode()).hexdigest()[:10]
    return [sys.executable, "-m", "warp_lightning", *args, f"hydra.run.dir={path.parent / f'.{path.name}.build-{digest}'}"]


def _clean_leftovers(path: Path) -> None:
    """Temporary folders of killed writes of `path` (`.NAME.*.tmp`, `.NAME.old-*`); called with the lock held."""
    for p in path.parent.glob(f".{path.name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or p.name.startswith(f".{path.name}.old-")):
            log.info("%s: removing %s, left by an interrupted build", path.name, p)
            shutil.rmtree(p, ignore_errors=True)


def last_error(stderr: str) -> str:
    """A failed child's cause in one line: its CLI's `error: ...` line, else its last line (a traceback's end)."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1][len(ERROR_PREFIX):] if errors else (lines[-1][:300] if lines else "")


def run_build(cmd: list[str], keep: int = 16_384) -> tuple[int, str]:
    """Run the build command to its end: its stderr goes on to ours as it comes (a thread copies it, so that
    waiting and stopping are those of `signals.run_child`), and its last `keep` characters come back."""
    proc = signals.start_child(cmd, stderr=subprocess.PIPE)
    tail: list[str] = [""]

    def copy() -> None:
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: proc.stderr.read1(65536), b""):
            text = decode.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail[0] = (tail[0] + text)[-keep:]

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    finally:
        signals.stop_child(proc)  # what is left of its group too: nothing holds the pipe open after this
        reader.join(timeout=5)
        proc.stderr.close()
    return code, tail[0]


def ensure_model(kind: str, model_cfg, cache_dir: str | None = None, choice: str | None = None) -> None:
    """Build a missing offline model with the project's own command (`sft`, `reward`) or the gguf (`smollm2`).
    `choice`: as `build_command`'s (a command building the models of another command's config passes its)."""
    path = Path(str(model_cfg.name_or_path)).expanduser()
    if path.exists() or not model_cfg.get("build"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    waiting = f"{kind}: another command is building {path}; waiting for it (lock {lock})"
    try:
        with file_lock(lock, waiting):
            if path.exists():
                log.info("%s: %s was built by the other command; using it", kind, path)
                return
            _clean_leftovers(path)
            if model_cfg.build == "smollm2":
                build_smollm2(path, cache=cache_dir)
                return
            cmd = build_command(kind, model_cfg, path, cache_dir, choice)
            log.info("%s not found at %s: building it with `python -m warp_lightning %s` (first use only)",
                     kind, path, model_cfg.build)
            code, stderr = run_build(cmd)
    except Preempted as err:
        err.where = err.where or f"while building {kind} at {path} (a build stopped by a signal resumes next time)"
        raise
    if code != 0 or not path.exists():
        if code in (128 + s for s in signals.STOP_SIGNALS):
            raise Preempted(code - 128, f"while building {kind} at {path}: the build was stopped by a signal "
                            "(it resumes next time)")
        cause = last_error(stderr) or f"exit status {code}"
        raise UserError(f"{kind}.name_or_path: building {path} failed: {cause} (the build: "
                        f"`python {' '.join(cmd[1:])}`)")


def ensure_reward(reward_cfg, cache_dir: str | None = None) -> None:
    """`ensure_model` for every classifier of a reward config (the reward model, or each classifier term of a sum)."""
    for key, model_cfg in classifier_configs(reward_cfg).items():
        ensure_model(key, model_cfg, cache_dir)
