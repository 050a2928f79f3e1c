"""warp-lightning: WARP (Weight Averaged Rewarded Policies) on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreachable registry).

    The CLI prints it as one line and exits with status 2, without a traceback.
    """

    exit_code = 2


class NonFiniteError(UserError):
    """A loss, reward or weight became NaN/inf: the run stops (exit status 3), its last good checkpoint kept."""

    exit_code = 3
