"""One command per run folder (`claim_run_dir`, called by the CLI for the commands that resume: `train`, `sft`,
`reward`): a `flock` on `RUN_LOCK` in the folder, held until the command exits; a second command on the same
`hydra.run.dir` refuses at once in one line. The kernel drops the lock when its holder dies, so a stale one never
blocks; the DDP processes of the holder (started by Lightning's launcher, see `signals.PARENT_ENV`) share it.
The folders this process holds are `signals.PROCESS.held`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.runtime import signals
from warp_lightning.runtime.signals import PROCESS

RUN_LOCK = ".lock"  # in the run folder: the pid of the command that holds it


def _rank_from_env() -> int:
    """This process's rank when a launcher started it (torchelastic, SLURM, Lightning's DDP launcher), else 0."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return 0


def claim_run_dir(path: str | Path, key: str = "hydra.run.dir") -> None:
    """Create the run folder and hold it until this process exits (or `release_run_dir`): a second command on
    the same folder would write the same checkpoints and outputs, so it is refused at once (UserError, one line).

    The processes of one command share its folder: those a launcher started (a rank > 0) and the children of the
    holder (`parent_pid`) take no lock of their own. A lock left by a dead process does not count: the
    kernel dropped its `flock` when it died.
    """
    folder = _folder(path)
    if folder in PROCESS.held:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{key}: cannot create {path} ({err.strerror or err}); choose a folder that can be "
                        "created") from None
    if _rank_from_env() > 0:
        return
    f = open(folder / RUN_LOCK, "a+")  # noqa: SIM115 (open until the process exits)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        if holder.isdigit() and int(holder) in (signals.parent_pid(), os.getpid()):
            return  # our parent holds it for the command we are part of (or we do, under another name)
        raise UserError(f"{key}: {path} is in use by another command (pid {holder or '?'}); wait for it to end "
                        f"or choose another {key}") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    PROCESS.held[folder] = f


def _folder(path: str | Path) -> Path:
    """The run folder as one key however it is written (`runs/../x`, a symlink): Hydra normalizes it with
    `os.path.abspath`; a process may be asked for it under two names."""
    return Path(os.path.realpath(path))


def release_run_dir(path: str | Path) -> None:
    f = PROCESS.held.pop(_folder(path), None)
    if f is not None:
        f.close()  # closing the file drops the lock


def holder(path: str | Path) -> int | None:
    """The pid of the command that holds the run folder `path` (-1 when its lock names none), None when no live
    process holds it. Probed with a shared non-blocking `flock`, let go at once: a lock left by a dead process does
    not count, and a pid reused since does not fool it."""
    lock = _folder(path) / RUN_LOCK
    try:
        f = open(lock)  # noqa: SIM115 (closed below whatever happens)
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = f.read().strip()
        return int(text) if text.isdigit() else -1
    finally:
        f.close()  # closing drops the probe's shared lock
    return None

