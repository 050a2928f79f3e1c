"""Stopping cleanly on SIGTERM and SIGINT, and child processes that never outlive their parent.

Signals (`install`, called by the CLI for every command):

- Outside a training loop, SIGTERM and SIGINT raise `Preempted` at once (a BaseException, like
  KeyboardInterrupt): `finally` blocks and atomic writes clean up, child processes are stopped, and the CLI
  prints one line and exits with 128 + the signal's number (143, 130).
- Inside `deferred()` (the training loops of `train`, `sft` and `reward`) the signal only sets a flag: the loop
  finishes the optimizer step, writes its checkpoint and then stops with `Preempted` (`stop_requested` and
  `stop_now` are what the loops read). A second signal stops at once.
- Lightning's own SIGTERM handling is switched off in every Trainer (utils/trainer.py, through
  `internals.take_over_signals`): it would run collectives inside the signal handler and stop at a point of its
  own choosing, where our checkpoints could not be written as `StopCheckpoint` (runtime/resume.py) writes them.

Child processes (`start_child`, `run_child`): each starts in its own session (process group), is registered,
and its whole group is sent SIGTERM (SIGKILL after `KILL_GRACE_S`) when the parent stops it, raises, is
stopped by a signal or exits. When the parent is SIGKILLed (nothing runs in it), the child itself asked the
kernel to send it SIGTERM (`tie_to_parent`: Linux PR_SET_PDEATHSIG, set by the child at start-up because
`preexec_fn` is not safe in a process with threads).

What the process knows (the signal received, its children, the command it belongs to, the run folders it holds)
is one object, `PROCESS`; the run-folder lock is runtime/lock.py.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from warp_lightning import Preempted
from warp_lightning.runtime import internals

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARENT_ENV = "WARP_LIGHTNING_PARENT_PID"  # set for a child: the pid it must not outlive
KILL_GRACE_S = float(os.environ.get("WARP_LIGHTNING_KILL_GRACE", "30"))  # SIGTERM, then SIGKILL after this
STOP_KEY = "warp_lightning/stop"  # in torch.distributed's store: some process was asked to stop
STOPPED_KEY = "warp_lightning/stopped"  # how many processes have stopped on it



@dataclass
class Process:
    """What this process knows about stopping: one object (`PROCESS`), read and changed by the functions below
    and by the run-folder lock (runtime/lock.py); `reset` starts it afresh (tests)."""

    requested: int | None = None  # the first stop signal received
    deferred: int = 0  # > 0 inside deferred(): signals only set the flag
    cleaning: int = 0  # > 0 while children are being stopped: a further signal escalates to SIGKILL
    escalate: bool = False
    children: dict[int, subprocess.Popen] = field(default_factory=dict)  # started by `start_child`, still ours
    atexit: bool = False  # `stop_children` registered to run at exit
    tied: bool = False  # this process is the child of another command (a build), which reports for it
    parent: int | None = None  # the pid of that command
    held: dict[Path, object] = field(default_factory=dict)  # run folders this process holds -> their lock file


PROCESS = Process()


def install() -> None:
    """Route SIGTERM and SIGINT through `_handler` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)
    if not PROCESS.atexit:
        atexit.register(stop_children)
        PROCESS.atexit = True


def _handler(signum, frame) -> None:
    first = PROCESS.requested is None
    if first:
        PROCESS.requested = signum
    if PROCESS.cleaning:  # already stopping children: stop them now
        PROCESS.escalate = True
        return
    if PROCESS.deferred and first:
        log.warning("%s received: stopping after the current optimizer step, with a checkpoint (send it again "
                    "to stop at once)", signal.Signals(signum).name)
        return
    raise Preempted(signum)


def requested() -> int | None:
    """The stop signal this process received, if any."""
    return PROCESS.requested


def reset() -> None:
    """Forget a received signal (tests)."""
    PROCESS.requested, PROCESS.escalate = None, False


@contextlib.contextmanager
def deferred():
    """Inside: a stop signal sets the flag only; the code checks `stop_requested`/`stop_now` at safe points."""
    PROCESS.deferred += 1
    try:
        yield
    finally:
        PROCESS.deferred -= 1


def stop_requested() -> bool:
    return PROCESS.requested is not None


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def stop_now(device=None, independent: bool = False) -> bool:
    """Whether to stop after this step, the same answer in every process that must stop together.

    One process: the flag. Processes in lockstep (trainer=ddp, fsdp; between runs with any layout): an
    all-reduce (max) of the flag, called at the same point by every process. Independent processes
    (trainer=ddp_runs inside a run, where the processes may be at different steps, even after a resume): a key
    in torch.distributed's store, set by a process that received the signal and read (without waiting) by the
    others at their next step.
    """
    if not _distributed():
        return stop_requested()
    import torch
    import torch.distributed as dist

    if independent:
        store = internals.default_store()
        if store is None:
            return stop_requested()
        if stop_requested():
            store.set(STOP_KEY, "1")
        if stop_requested() or store.check([STOP_KEY]):
            store.add(STOPPED_KEY, 1)
            return True
        return False
    flag = torch.tensor([1 if stop_requested() else 0], device=device or "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def wait_for_peers(key: str, world: int, poll_s: float = 0.05) -> None:
    """trainer=ddp_runs: wait until all `world` processes reach this point (before the merge's all-gather), or
    raise `Preempted` as soon as one of them was asked to stop: a process that finished its run never blocks in
    a collective that a stopped process will not join."""
    store = internals.default_store()
    if store is None or not _distributed():
        return
    store.add(key, 1)
    while True:
        if stop_requested():
            store.set(STOP_KEY, "1")
        if store.check([STOP_KEY]):
            store.add(STOPPED_KEY, 1)
            linger()
            raise Preempted(PROCESS.requested or signal.SIGTERM, "while waiting for the other runs to finish")
        if store.add(key, 0) >= world:
            return
        time.sleep(poll_s)


def linger(timeout: float | None = None, poll_s: float = 0.05) -> None:
    """trainer=ddp_runs, after a stop: the process that hosts the store (rank 0) waits until every process has
    stopped on the store's flag (or `timeout`, for a process that died), so that none of them finds the store
    gone before it read the flag. Other processes return at once."""
    import torch.distributed as dist

    store = internals.default_store()
    if store is None or not _distributed() or dist.get_rank() != 0:
        return
    deadline = time.monotonic() + (KILL_GRACE_S if timeout is None else timeout)
    while store.add(STOPPED_KEY, 0) < dist.get_world_size() and time.monotonic() < deadline:
        time.sleep(poll_s)


def raise_if_stopped(where: str, checkpoint: bool = True, device=None) -> None:
    """At a safe point between runs: raise `Preempted` if a stop was asked (of any process, in lockstep)."""
    if stop_now(device):
        raise Preempted(PROCESS.requested or signal.SIGTERM, where, checkpoint)


# --- child processes ------------------------------------------------------------------------------------------

def start_child(cmd: list[str], **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` in a new session (its own process group), registered so that it is stopped with us.
    The child learns our pid from `PARENT_ENV` (`tie_to_parent` in the CLI uses it)."""
    env = dict(kwargs.pop("env", None) or os.environ)
    env[PARENT_ENV] = str(os.getpid())
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, **kwargs)
    PROCESS.children[proc.pid] = proc
    return proc


def run_child(cmd: list[str], **kwargs) -> int:
    """Run `cmd` to its end (its return code); if we stop first (signal, exception), its whole group stops."""
    proc = start_child(cmd, **kwargs)
    try:
        return proc.wait()
    finally:
        stop_child(proc)


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_child(proc: subprocess.Popen, grace: float | None = None) -> None:
    """SIGTERM to the child's process group, SIGKILL after `grace` seconds (or at a second signal to us);
    whatever is left of the group after the child exited is SIGKILLed too."""
    PROCESS.children.pop(proc.pid, None)
    grace = KILL_GRACE_S if grace is None else grace
    PROCESS.cleaning += 1
    try:
        if proc.poll() is None:
            log.info("stopping child process %d (%s)", proc.pid, " ".join(map(str, proc.args[1:4])))
            _killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline and not PROCESS.escalate:
                time.sleep(0.05)
        _killpg(proc.pid, signal.SIGKILL)  # the child, if still there, and any process it left in its group
        proc.wait()
    finally:
        PROCESS.cleaning -= 1


def stop_children() -> None:
    """Stop every registered child (at exit, and after an error)."""
    for proc in list(PROCESS.children.values()):
        stop_child(proc)


PR_SET_PDEATHSIG = 1


def parent_pid() -> int | None:
    """The pid of the command that started this process (`tie_to_parent`), if another command did."""
    return PROCESS.parent


def is_tied() -> bool:
    """Whether this process was started by another command (`start_child`, Lightning's launcher in `train`)."""
    return PROCESS.tied


def tie_to_parent() -> None:
    """In a child started by `start_child` (or by Lightning's launcher from `train`): get SIGTERM when the
    parent dies, even by SIGKILL (Linux); exit at once if it is already gone. Clears `PARENT_ENV`, so that
    our own children do not inherit it."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not parent.isdigit():
        return
    PROCESS.tied, PROCESS.parent = True, int(parent)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the prctl: nobody would tell us
        raise Preempted(signal.SIGTERM, "(the parent process had already exited)")
