"""`train +experiment=smollm2 policy.lora.rank=4` through the CLI on a tiny Llama standing in for SmolLM2-135M: the
SFT stage is built from the pretrained model (perplexity before and after), only the LoRA adapters train, and every
saved folder is a plain Llama with dense weights."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

pytestmark = pytest.mark.slow

TINY_SFT = ["sft.max_steps=2", "sft.max_val_blocks=4", "sft.val_every=2", "sft.batch_size=2", "sft.context=32",
            "sft.warmup_steps=1"]


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "models" / "sft_gpt2")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True))
    llama.save_pretrained(root / "pretrained")
    tokenizer.save_pretrained(root / "pretrained")
    build = ",".join(f"'{o}'" for o in ["+experiment=sft_smollm2", f"sft.init.name_or_path={root / 'pretrained'}", "sft.init.build=null",
                                         *TINY_SFT])
    cli("train", "+experiment=[smollm2,smoke]", f"paths.models_dir={tiny_models / 'models'}",
        f"policy.name_or_path={root / 'models' / 'sft_smollm2'}", f"policy.build_overrides=[{build}]",
        "policy.lora.rank=4", "policy.lora.alpha=8", "warp.lr=1e-2", "warp.snapshot_every=3", "eval.prompts=2",
        f"hydra.run.dir={root / 'run'}", cwd=root)
    return root


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_the_sft_stage_adapts_the_pretrained_model_and_reports_perplexity_before_and_after(lora_run):
    (metrics,) = [json.loads(p.read_text()) for p in (lora_run / "models").glob(".sft_smollm2.build-*/metrics.json")]
    assert metrics["init"] == str(lora_run / "pretrained") and metrics["steps"] == 2
    assert metrics["init_val_perplexity"] > 1 and metrics["val_perplexity"] > 1
    assert metrics["init_val_perplexity"] != metrics["val_perplexity"]


def test_lora_trains_only_the_adapted_matrices_and_every_folder_is_a_plain_dense_llama(lora_run):
    run = lora_run / "run"
    sft = tensors(lora_run / "models" / "sft_smollm2")
    folders = [run / "final", run / "iter_1" / "slerp", run / "iter_2" / "init", run / "iter_1" / "run_1" / "step_0003"]
    for folder in folders:
        weights = tensors(folder)
        assert weights.keys() == sft.keys() and not any("lora" in k for k in weights), folder
        assert isinstance(AutoModelForCausalLM.from_pretrained(folder), LlamaForCausalLM)
        for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
            assert torch.equal(weights[key], sft[key]), (folder, key)  # not adapted: theta_sft exactly
        moved = [k for k in sft if k.endswith("proj.weight") and not torch.equal(weights[k], sft[k])]
        assert len(moved) == 2 * 7, (folder, moved)  # q k v o gate up down of both layers
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_kl_mean"] > 0 and 0 <= metrics["final_judge_mean"] <= 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["policy"]["lora"]["rank"] == 4
