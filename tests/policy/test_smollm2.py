"""policy=smollm2: the gguf of ASSETS.md dequantized once into a plain LlamaForCausalLM folder."""

import pytest
import torch

from warp_lightning.data.prompts import left_pad
from warp_lightning.policy.models import load_causal_lm, load_tokenizer
from warp_lightning.policy.sampling import sample
from warp_lightning.policy.smollm2 import build_smollm2


@pytest.mark.slow
def test_smollm2_builds_once_and_writes_english(asset_cache, tmp_path):
    folder = build_smollm2(tmp_path / "smollm2", cache=asset_cache)
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert build_smollm2(folder, cache=asset_cache) == folder  # cached: not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime == mtime
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model.config, "quantization_config", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids, mask = left_pad([tok("The movie was")["input_ids"]], tok.pad_token_id)
    out = sample(model, ids, mask, 12, temperature=0.7, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    words = tok.decode(out.completion_ids[0], skip_special_tokens=True).split()
    assert len(words) >= 3 and sum(w.isalpha() for w in words) >= len(words) // 2
