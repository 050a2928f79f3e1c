"""Missing offline models are built on first use by the project's own commands (`sft`, `reward`) or from the gguf.

A model folder is built once, whatever the number of commands that need it at the same time:

- a lock per folder (`flock` on `.NAME.lock` next to it): a second command waits for the first one's build
  (and says so), then uses the folder; the kernel releases the lock when its holder dies, however it dies;
- the folder appears only complete (it is written under a temporary name and renamed, `utils.io.atomic_dir`);
  what a killed build leaves (`.NAME.*.tmp`) is removed by the next build, under the lock;
- the build command runs in its own process group, stopped with its whole group when the command that
  started it stops, and it dies with its parent even when that one is SIGKILLed (utils/signals.py);
- its run folder is `.NAME.build-HASH/` next to the model (HASH: of the build command), so that a build stopped
  by a signal resumes from its checkpoint the next time the same model is needed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

from warp_lightning import Preempted, UserError
from warp_lightning.policy.smollm2 import build_smollm2
from warp_lightning.utils import signals
from warp_lightning.utils.io import file_lock

log = logging.getLogger(__name__)


def build_command(kind: str, model_cfg, path: Path, cache_dir: str | None) -> list[str]:
    """`python -m warp_lightning sft|reward save_to=PATH ... hydra.run.dir=<next to PATH>`."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get(kind) if HydraConfig.initialized() else None
    args = [model_cfg.build, f"save_to={path}", *([f"{kind}={choice}"] if choice else []),
            *([f"paths.cache_dir={cache_dir}"] if cache_dir else []), *map(str, model_cfg.get("build_overrides", []))]
    digest = hashlib.sha256("\0".join(args).encode()).hexdigest()[:10]
    return [sys.executable, "-m", "warp_lightning", *args, f"hydra.run.dir={path.parent / f'.{path.name}.build-{digest}'}"]


def _clean_leftovers(path: Path) -> None:
    """Temporary folders of killed writes of `path` (`.NAME.*.tmp`, `.NAME.old-*`); called with the lock held."""
    for p in path.parent.glob(f".{path.name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or p.name.startswith(f".{path.name}.old-")):
            log.info("%s: removing %s, left by an interrupted build", path.name, p)
            shutil.rmtree(p, ignore_errors=True)


def ensure_model(kind: str, model_cfg, cache_dir: str | None = None) -> None:
    """Build a missing offline model with the project's own command (`sft`, `reward`) or the gguf (`smollm2`)."""
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
            cmd = build_command(kind, model_cfg, path, cache_dir)
            log.info("%s not found at %s: building it with `python -m warp_lightning %s` (first use only)",
                     kind, path, model_cfg.build)
            code = signals.run_child(cmd)
    except Preempted as err:
        err.where = err.where or f"while building {kind} at {path} (a build stopped by a signal resumes next time)"
        raise
    if code != 0 or not path.exists():
        if code in (128 + s for s in signals.STOP_SIGNALS):
            raise Preempted(code - 128, f"while building {kind} at {path}: the build was stopped by a signal "
                            "(it resumes next time)")
        raise UserError(f"{kind}.name_or_path: building {path} with `{' '.join(cmd[1:])}` failed; run it "
                        "yourself to see why")
