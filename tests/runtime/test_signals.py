"""What a process knows about stopping is one object (runtime/signals.py `PROCESS`): a signal inside `deferred()`
only sets the flag there, outside it stops at once; the run folders a process holds are in the same object."""

import signal

import pytest

from warp_lightning import Preempted
from warp_lightning.runtime import lock, signals


@pytest.fixture
def fresh():
    signals.reset()
    yield signals.PROCESS
    signals.reset()


def test_a_signal_inside_deferred_sets_the_flag_and_outside_stops_at_once(fresh):
    with signals.deferred():
        assert fresh.deferred == 1
        signals._handler(signal.SIGTERM, None)  # what the kernel's SIGTERM runs
        assert fresh.requested == signal.SIGTERM and signals.stop_requested() and signals.stop_now()
    assert fresh.deferred == 0
    with pytest.raises(Preempted) as stop:
        signals.raise_if_stopped("between two runs")
    assert stop.value.exit_code == 128 + signal.SIGTERM
    signals.reset()
    assert fresh.requested is None and not signals.stop_requested()
    with pytest.raises(Preempted):
        signals._handler(signal.SIGINT, None)  # not deferred: at once
    assert fresh.requested == signal.SIGINT


def test_the_folders_a_process_holds_are_in_the_same_object(tmp_path):
    folder = tmp_path / "run"
    lock.claim_run_dir(folder)
    try:
        assert folder.resolve() in signals.PROCESS.held
        lock.claim_run_dir(tmp_path / "x" / ".." / "run")  # the same folder under another name: held already
    finally:
        lock.release_run_dir(folder)
    assert folder.resolve() not in signals.PROCESS.held
