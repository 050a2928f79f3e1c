"""Marks shared by test files: `@gpu` runs a test only where torch sees a CUDA device (`pytest -m gpu` selects them)."""

import pytest
import torch


def gpu(test):
    """Mark `test` as needing CUDA (marker `gpu`) and skip it, saying so, where there is none."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))
