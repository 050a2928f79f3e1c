"""The output folder of the running Hydra job."""

from __future__ import annotations


def cfg_output_dir() -> str:
    """`hydra.run.dir` of this job (or its sweep subfolder): where the command writes its outputs."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir
