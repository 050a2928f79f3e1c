"""warp-lightning: WARP (Weight Averaged Rewarded Policies) on PyTorch Lightning and Hydra."""

import signal as _signal

__version__ = "0.1.0"


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreachable registry).

    The CLI prints it as one line and exits with status 2, without a traceback.
    """

    exit_code = 2


class NonFiniteError(UserError):
    """A loss, reward or weight became NaN/inf: the run stops (exit status 3), its last good checkpoint kept."""

    exit_code = 3


class Preempted(BaseException):
    """SIGTERM or SIGINT: the command stopped cleanly (runtime/signals.py); exit status 128 + the signal's
    number (143 for SIGTERM, 130 for SIGINT), one line saying how to resume.

    A BaseException, like KeyboardInterrupt, so that `except Exception` clauses (a checkpoint that fails
    to load, Hydra's error report) never take it for an error of theirs.
    """

    def __init__(self, signum: int = _signal.SIGTERM, where: str = "", checkpoint: bool = False):
        self.signum, self.where, self.checkpoint = int(signum), where, checkpoint
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        what = f"stopped by {_signal.Signals(self.signum).name}"
        what += f" {self.where}" if self.where else ""
        return what + (" (checkpoint written)" if self.checkpoint else "")
