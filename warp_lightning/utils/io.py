"""Atomic writes: every file or folder is written under a temporary name, then renamed.

A kill at any moment leaves either the old version or the new one, never a half-written file that a
later run would trust. A folder that already exists is replaced by swapping the two names in one system call
(`exchange`), so that there is no moment without a complete folder at its path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path):
    """Yield a binary file open on a temporary sibling of `path`; on success it is synced and renamed to
    `path`. On any error (or a kill) `path` keeps its previous content and the temporary file is removed
    (or, after a kill, left under a `.tmp` name that nothing reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the final file reads like any other
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_torch_save(obj, path: str | Path) -> Path:
    """`torch.save` through `atomic_file` (tensors that share storage stay shared)."""
    import torch

    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # tensors and numpy scalars
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def write_metrics(path: str | Path, metrics: dict) -> Path:
    return atomic_write_json(path, metrics)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # Linux renameat2 flag
_RENAME_SWAP = 2  # macOS renamex_np flag
_libc = None


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the names `a` and `b` (both must exist) in one system call: Linux `renameat2(RENAME_EXCHANGE)`
    (kernel 3.15, most local file systems), macOS `renamex_np(RENAME_SWAP)`. False where the system or the
    file system cannot (the caller falls back to two renames); other errors raise OSError."""
    global _libc
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return False
    try:
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        if sys.platform == "darwin":
            result = _libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
        else:
            result = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    except (AttributeError, OSError):  # no such function in this C library (glibc < 2.28)
        return False
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling folder; on success it takes the place of `path` in one rename.

    A new `path` appears complete (one rename). An existing one is swapped with the new folder in one call
    (`exchange`) and then removed from under the temporary name: at every moment `path` is a complete folder,
    the old one or the new one. Where the swap is not available (another OS, or a file system without it,
    e.g. NFS) the fallback is two renames: the old folder is moved to `.NAME.old-PID` and the new one renamed
    in; a kill between the two leaves no `path`, but the previous folder stays complete under the `.old` name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final folder should read like any other
    try:
        yield tmp
        _fsync_tree(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    for _ in range(10):  # another writer may create or replace `path` in between: try again
        if not os.path.lexists(path):
            try:
                os.rename(tmp, path)  # fails if `path` appeared meanwhile (a non-empty folder)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
                continue
            _fsync_dir(path.parent)
            return
        if exchange(tmp, path):  # `path` is the new folder, `tmp` holds the old one
            _fsync_dir(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"{path} kept changing while it was being replaced")


def _fsync_tree(folder: Path) -> None:
    """Sync every file of `folder` (and the folders), so that the rename publishes data that is on disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(root))


@contextmanager
def file_lock(path: str | Path, waiting: str | None = None):
    """An exclusive `flock` on `path` (created if needed) for the duration of the block; logs `waiting` when
    another process holds it. The kernel releases it when its holder exits or dies. No lock where `fcntl` is
    missing (not POSIX)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_hf_folder(path: str | Path, *parts) -> Path:
    """Write a Hugging Face folder atomically: each part (model, tokenizer) `save_pretrained`s into it."""
    with atomic_dir(path) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
    return Path(path)
