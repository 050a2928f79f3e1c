"""The CLI on a GPU (marked `gpu`: skipped, and reported as skipped, where torch sees no CUDA device).

`make gpu-check` runs these with the rest of the GPU check; the policy functions' own GPU tests are beside
their CPU tests."""

import hashlib

import torch
from conftest import cli
from marks import gpu
from safetensors.torch import load_file


def weights_digest(folder) -> str:
    state = load_file(folder / "model.safetensors")
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].float().numpy().tobytes())
    return digest.hexdigest()


@gpu
def test_a_gpu_run_reloads_on_cpu_and_the_same_seed_gives_the_same_weights(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    digests = []
    for attempt in ("a", "b"):
        run_dir = tmp_path / attempt
        cli("train", "+experiment=smoke", "warp.iterations=1", "trainer.accelerator=gpu", "trainer.deterministic=true",
            f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        digests.append(weights_digest(run_dir / "final"))
    assert digests[0] == digests[1]

    from warp_lightning.data.prompts import left_pad
    from warp_lightning.policy.models import load_causal_lm, load_tokenizer
    from warp_lightning.policy.sampling import sample

    model, tokenizer = load_causal_lm(tmp_path / "a" / "final"), load_tokenizer(tmp_path / "a" / "final")
    assert next(model.parameters()).device.type == "cpu"
    ids, mask = left_pad([tokenizer("this movie was")["input_ids"]] * 2, tokenizer.pad_token_id)
    rollout = sample(model, ids, mask, 4, generator=torch.Generator().manual_seed(0))
    assert rollout.completion_ids.shape[0] == 2 and torch.isfinite(model.transformer.wte.weight).all()
