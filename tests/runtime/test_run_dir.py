"""A run folder has one command at a time, and a run folder that cannot be made is one line (issue 21; runtime/lock.py)."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import cli

from warp_lightning import UserError
from warp_lightning.runtime import lock, signals


def train_args(tiny_models, run_dir):
    return ["train", "+experiment=smoke", f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}"]


def test_a_second_command_on_a_run_folder_in_use_refuses_at_once(tiny_models, tmp_path):
    run_dir = tmp_path / "run"
    lock.claim_run_dir(run_dir)  # this process is the command that holds it
    try:
        refused = cli(*train_args(tiny_models, run_dir), cwd=tmp_path, check=False)
    finally:
        lock.release_run_dir(run_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        f"error: hydra.run.dir: {run_dir} is in use by another command (pid {os.getpid()}); wait for it to end or "
        "choose another hydra.run.dir"]
    assert not (run_dir / ".hydra").exists()  # refused before Hydra wrote the config of the holder's run


def test_a_run_folder_that_cannot_be_made_is_one_line(tiny_models, tmp_path):
    proc = cli(*train_args(tiny_models, "/proc/nope"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra.run.dir: ") and "/proc/nope" in lines[0], lines


CLAIM = """
import sys
from warp_lightning import UserError
from warp_lightning.runtime import lock, signals
signals.tie_to_parent()
try:
    lock.claim_run_dir(sys.argv[1])
except UserError as err:
    print(err)
    sys.exit(2)
print("claimed")
if len(sys.argv) > 2:
    import time
    time.sleep(float(sys.argv[2]))
"""


def claim_in_child(run_dir, env=None, sleep=None) -> subprocess.Popen:
    args = [sys.executable, "-c", CLAIM, str(run_dir)] + ([str(sleep)] if sleep else [])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")} | (env or {})
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


def test_the_processes_of_the_holder_share_its_run_folder(tmp_path):
    """A child of the holder (a DDP process Lightning's launcher started, which gets PARENT_ENV) is not refused by
    its parent's lock; another process is."""
    run_dir = tmp_path / "run"
    lock.claim_run_dir(run_dir)
    try:
        child = claim_in_child(run_dir, {signals.PARENT_ENV: str(os.getpid())})
        other = claim_in_child(run_dir)
        outs = [p.communicate(timeout=60)[0] for p in (child, other)]
    finally:
        lock.release_run_dir(run_dir)
    assert (child.returncode, outs[0].strip()) == (0, "claimed")
    assert other.returncode == 2 and f"in use by another command (pid {os.getpid()})" in outs[1]


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = claim_in_child(run_dir, sleep=120)
    assert holder.stdout.readline().strip() == "claimed"
    with pytest.raises(UserError, match=rf"in use by another command \(pid {holder.pid}\)"):
        lock.claim_run_dir(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    assert (run_dir / lock.RUN_LOCK).read_text().strip() == str(holder.pid)  # its pid is still written there
    lock.claim_run_dir(run_dir)
    try:
        assert (run_dir / lock.RUN_LOCK).read_text().strip() == str(os.getpid())
    finally:
        lock.release_run_dir(run_dir)


def test_a_run_folder_is_one_folder_however_it_is_written(tmp_path):
    """The CLI claims `hydra.run.dir` as given, then as Hydra normalized it (`os.path.abspath`): the same command
    must not refuse itself, and another one is refused under either name."""
    (tmp_path / "elsewhere").mkdir()
    given = tmp_path / "elsewhere" / ".." / "run"
    lock.claim_run_dir(given)
    try:
        lock.claim_run_dir(os.path.abspath(given))
        other = claim_in_child(tmp_path / "run")
        out = other.communicate(timeout=60)[0]
    finally:
        lock.release_run_dir(os.path.abspath(given))
    assert other.returncode == 2 and f"in use by another command (pid {os.getpid()})" in out
    after = claim_in_child(tmp_path / "run")  # released under the other name too
    assert (after.communicate(timeout=60)[0].strip(), after.returncode) == ("claimed", 0)
