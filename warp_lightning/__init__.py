"""warp-lightning: WARP (Weight Averaged Rewarded Policies) on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreachable registry).

    The CLI prints it as one line and exits with status 2, without a traceback.
    """
