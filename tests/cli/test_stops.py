"""Builds of a shared model folder, child processes that die with their parent, clean stops on SIGTERM, and
model folders replaced in one rename (issue: reliability)."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from warp_lightning.utils.io import atomic_dir, exchange

pytestmark = pytest.mark.slow  # second tier: builds, kills and stops of several processes

# A parent that needs the model folder MODELS/sft_gpt2 and builds it with a stub instead of `python -m
# warp_lightning sft`: the stub (a child tied to its parent as the CLI's children are) starts a grandchild in its
# own group and one in its process group, records the pids, sleeps (until PIDS.release exists, at most SLEEP
# seconds), then writes the folder atomically.
PARENT = r"""
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from omegaconf import OmegaConf
from warp_lightning import Preempted, builds
from warp_lightning.runtime import signals
signals.install()
models, pids, sleep = sys.argv[1:4]
builds.build_command = lambda kind, cfg, path, cache, choice=None: [sys.executable, "-c", CHILD, str(path), pids, sleep]
try:
    builds.ensure_model("policy", OmegaConf.create({"name_or_path": f"{models}/sft_gpt2", "build": "sft"}))
except Preempted as err:
    print(err.describe(), flush=True)
    sys.exit(err.exit_code)
print("parent done", flush=True)
"""
CHILD = r"""
import os, subprocess, sys, time
from warp_lightning.runtime import signals
from warp_lightning.utils.io import atomic_dir
signals.install()
signals.tie_to_parent()
same_group = subprocess.Popen(["sleep", "120"])
own_group = signals.start_child(["sleep", "120"])
with open(sys.argv[2], "a") as f:
    f.write(f"{os.getpid()} {same_group.pid} {own_group.pid}\n")
deadline = time.time() + float(sys.argv[3])
while time.time() < deadline and not os.path.exists(sys.argv[2] + ".release"):
    time.sleep(0.05)
with atomic_dir(sys.argv[1]) as d:
    open(os.path.join(d, "config.json"), "w").write("{}")
"""


def start_parent(models: Path, pids: Path, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARENT.replace("CHILD", repr(CHILD)), str(models), str(pids),
                             str(sleep)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for_pids(pids: Path, timeout: float = 30) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pids.exists() and pids.read_text().endswith("\n"):
            return [int(p) for p in pids.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the build never started")


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and text.encode() in (p / "cmdline").read_bytes() and alive(int(p.name)):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def all_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and any(map(alive, pids)):
        time.sleep(0.05)
    return not any(map(alive, pids))


def test_two_commands_needing_the_same_model_build_it_once(tmp_path):
    models, pids = tmp_path / "models", tmp_path / "pids"
    first = start_parent(models, pids, 60)
    wait_for_pids(pids)  # the first one holds the lock and builds
    second = start_parent(models, pids, 60)
    seen = []
    for line in second.stdout:  # the build ends once the second one waits for it (however long its start-up)
        seen.append(line)
        if "another command is building" in line:
            break
    (tmp_path / "pids.release").touch()
    out = [first.communicate(timeout=60)[0], "".join(seen) + second.communicate(timeout=60)[0]]
    assert first.returncode == 0 and second.returncode == 0, out
    assert len(pids.read_text().splitlines()) == 1  # one build
    assert "another command is building" in out[1] and "was built by the other command; using it" in out[1]
    assert (models / "sft_gpt2" / "config.json").exists()
    assert not list(models.glob(".sft_gpt2.*.tmp"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_build_dies_with_the_command_that_started_it(tmp_path, how):
    """SIGTERM: the parent stops its build's process group and exits 143 with one line; SIGKILL (nothing runs in
    the parent): the kernel sends the build SIGTERM (PR_SET_PDEATHSIG), and it stops its own children."""
    models, pids = tmp_path / "models", tmp_path / "pids"
    parent = start_parent(models, pids, 120)
    child, same_group, own_group = wait_for_pids(pids)
    started = time.time()
    parent.send_signal(how)
    parent.wait(timeout=60)
    if how == signal.SIGTERM:
        out = parent.stdout.read()  # everything that held the pipe is gone
        assert parent.returncode == 143, out
        assert out.strip().splitlines()[-1].startswith(f"stopped by SIGTERM while building policy at {models}")
        assert time.time() - started < 10
        leftovers = [child, same_group, own_group]
    else:
        leftovers = [child, own_group]  # the build's own children; `same_group` is its business (the CLI has none)
    try:
        assert all_gone(leftovers), [p for p in leftovers if alive(p)]
    finally:
        for pid in (child, same_group, own_group):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
    assert not (models / "sft_gpt2").exists()


# --- model folders: one rename ----------------------------------------------------------------------------------

WRITER = r"""
import os, sys
from warp_lightning.utils.io import atomic_dir
target, version = sys.argv[1], int(sys.argv[2])
while True:
    version += 1
    with atomic_dir(target) as d:
        for name in "abcde":
            with open(os.path.join(d, name), "w") as f:
                f.write(str(version) * 20000)
        with open(os.path.join(d, "complete"), "w") as f:
            f.write(str(version))
"""


def read_folder(target: Path) -> int:
    """The version of a complete folder; AssertionError if incomplete or mixed."""
    version = (target / "complete").read_text()
    for name in "abcde":
        text = (target / name).read_text()
        assert text == version * 20000, f"{name} holds {text[:10]}... in folder version {version}"
    return int(version)


def test_model_folder_is_replaced_in_one_rename_even_when_killed(tmp_path):
    """A writer replaces a folder in a loop and is SIGKILLed at random moments; a reader polling all along always
    finds the folder, and after each kill it is complete (one version in every file)."""
    if sys.platform.startswith("linux"):
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        assert exchange(a, b), "renameat2(RENAME_EXCHANGE) is not available here"
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        for name in "abcde":
            (d / name).write_text("0" * 20000)
        (d / "complete").write_text("0")
    stop, missing = threading.Event(), []

    def reader():
        while not stop.is_set():
            if not target.is_dir():
                missing.append(time.time())

    thread = threading.Thread(target=reader)
    thread.start()
    rng, versions = random.Random(0), []
    try:
        for k in range(8):
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(1000 * (k + 1))])
            time.sleep(rng.uniform(0.3, 0.8))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            for _ in range(3):  # the reader may meet the old folder's files while the writer deleted them
                try:
                    versions.append(read_folder(target))
                    break
                except FileNotFoundError:
                    time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not missing, f"the folder was missing {len(missing)} times"
    assert len(versions) == 8 and len({v // 1000 for v in versions}) > 1, versions  # the writers got to write


# --- train: SIGTERM is a checkpoint and a clean exit -------------------------------------------------------------

def test_sigterm_during_a_build_through_the_cli_leaves_no_process(tmp_path, asset_cache):
    """`train` with an empty model cache starts the SFT build; SIGTERM to `train` stops the build with it."""
    from conftest import TINY_SFT

    models = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", "train", "+experiment=smoke",
                             f"paths.models_dir={models}", f"hydra.run.dir={tmp_path / 'run'}",
                             "policy.build_overrides=[" + ",".join(f"'{o}'" for o in TINY_SFT) + "]"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "building it with" in line:
            break
    children = []
    deadline = time.time() + 30
    while not children and time.time() < deadline:  # the build process, once started
        children = [pid for pid in processes_mentioning(str(models)) if pid != proc.pid]
        time.sleep(0.05)
    assert children, "".join(seen)
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out[-3000:]
    assert f"stopped by SIGTERM while building policy at {models / 'sft_gpt2'}" in out.strip().splitlines()[-1]
    assert all_gone(children), [p for p in children if alive(p)]
    assert not (models / "sft_gpt2").exists()


# --- several processes: a stop reaches every process, nobody waits forever ---------------------------------------

def _stop_worker(rank: int, port: int, scenario: str, out: str) -> None:
    """One of 2 gloo processes. `steps`: independent runs (trainer=ddp_runs) at their own pace, rank 0 gets SIGTERM
    at its step 3; `lockstep`: the same with the all-reduce of trainer=ddp/fsdp; `waiting`: rank 1 has finished its
    run and waits for rank 0 before the merge when rank 0 gets SIGTERM."""
    import torch.distributed as dist

    from warp_lightning import Preempted
    from warp_lightning.runtime import signals

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    signals.install()
    result = "none"
    with signals.deferred():
        try:
            if scenario == "waiting" and rank == 1:
                signals.wait_for_peers("merge", 2)
                result = "merged"
            else:
                for step in range(1, 500):
                    if rank == 0 and step == 3:
                        os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.01 if rank == 0 else 0.03)  # the runs go at different speeds
                    if signals.stop_now(independent=scenario != "lockstep"):
                        result = f"stopped at step {step}"
                        if scenario != "lockstep":
                            signals.linger()
                        break
        except Preempted as err:
            result = err.describe()
    Path(out, f"rank{rank}").write_text(result)
    if scenario == "lockstep":
        dist.destroy_process_group()


@pytest.mark.parametrize("scenario", ["steps", "lockstep", "waiting"])
def test_a_stop_reaches_every_process_without_deadlock(tmp_path, scenario):
    import socket

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    torch.multiprocessing.spawn(_stop_worker, args=(port, scenario, str(tmp_path)), nprocs=2)
    assert time.time() - started < 60
    results = {r: (tmp_path / f"rank{r}").read_text() for r in (0, 1)}
    assert results[0] == "stopped at step 3", results
    if scenario == "waiting":
        assert results[1] == "stopped by SIGTERM while waiting for the other runs to finish", results
    elif scenario == "lockstep":
        assert results[1] == "stopped at step 3", results
    else:
        assert results[1].startswith("stopped at step "), results


@pytest.mark.parametrize("command", ["sft", "reward"])
def test_a_command_stopped_by_sigterm_resumes_from_its_checkpoint(tmp_path, asset_cache, command):
    """`sft` and `reward` (one mechanism, runtime/resume.py): SIGTERM finishes the step, writes
    checkpoints/resume.ckpt and exits 143 naming the resume command; that command continues from the step (not
    from 0), saves the model and removes the checkpoint."""
    from conftest import TINY_REWARD, TINY_SFT, cli

    tiny = {"sft": [*TINY_SFT, "sft.max_steps=8", "sft.log_every=1"],
            "reward": [*TINY_REWARD, "reward_training.max_steps=8", "reward_training.epochs=4",  # 3 steps an epoch
                       "reward_training.log_every=1"]}[command]
    args = [command, *tiny, f"save_to={tmp_path / 'model'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "-m", "warp_lightning", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if f"{command} step 2/8" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("stopped by SIGTERM at step "), err[-3000:]
    assert last.endswith("resume with " + shlex.join(["python", "-m", "warp_lightning", *args])), last
    step = int(last.split(" at step ")[1].split()[0])
    assert 2 <= step < 8 and (tmp_path / "run/checkpoints/resume.ckpt").exists() and not (tmp_path / "model").exists()
    resumed = cli(*args, cwd=tmp_path)
    assert f"resuming at step {step} from" in resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "run/metrics.json").read_text())["steps"] == 8
    assert (tmp_path / "model/model.safetensors").exists() and not (tmp_path / "run/checkpoints/resume.ckpt").exists()
