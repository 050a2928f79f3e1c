"""SmolLM2-135M-Instruct from the gguf of ASSETS.md, dequantized once and cached as safetensors."""

from __future__ import annotations

import logging
from pathlib import Path

from warp_lightning.data.assets import fetch
from warp_lightning.utils.io import save_hf_folder

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(path: str | Path, cache: str | Path | None = None) -> Path:
    """Dequantize the gguf into a plain `LlamaForCausalLM` folder at `path` (atomic; skipped if present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM


    path = Path(path)
    if path.exists():
        return path
    folder = fetch("smollm2", cache=Path(cache) if cache else None)
    log.info("dequantizing %s into %s (once)", GGUF_NAME, path)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    config = quantized.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())

    return save_hf_folder(path, model, tokenizer)
