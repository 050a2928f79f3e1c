"""Missing offline models are built on first use by the project's own commands (`sft`, `reward`) or from the gguf."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.policy.smollm2 import build_smollm2

log = logging.getLogger(__name__)


def ensure_model(kind: str, model_cfg, cache_dir: str | None = None) -> None:
    """Build a missing offline model with the project's own command (`sft`, `reward`) or the gguf (`smollm2`)."""
    from hydra.core.hydra_config import HydraConfig


    path = Path(str(model_cfg.name_or_path))
    if path.exists() or not model_cfg.get("build"):
        return
    if model_cfg.build == "smollm2":

        build_smollm2(path, cache=cache_dir)
        return
    log.info("%s not found at %s: building it with `python -m warp_lightning %s` (first use only)",
             kind, path, model_cfg.build)
    choice = HydraConfig.get().runtime.choices.get(kind) if HydraConfig.initialized() else None
    cmd = [sys.executable, "-m", "warp_lightning", model_cfg.build, f"save_to={path}",
           *([f"{kind}={choice}"] if choice else []), *([f"paths.cache_dir={cache_dir}"] if cache_dir else []),
           *model_cfg.get("build_overrides", [])]
    if subprocess.run(cmd).returncode != 0 or not path.exists():
        raise UserError(f"{kind}.name_or_path: building {path} with `{' '.join(cmd[1:])}` failed; run it "
                        "yourself to see why")
