"""LoRA adapters through peft (`policy.lora`), and the dense view of an adapted policy that WARP acts on.

With `policy.lora.rank > 0` each run of the loop trains only low-rank adapters injected into its copy of theta_init:
the adapted matrix W is used as W + dW with dW = (alpha / r) B A (peft's `get_delta_weight`, which also handles
GPT-2's transposed Conv1D layout); B starts at 0, so the run starts exactly at theta_init.

Everything else in WARP sees dense weights with the model's own keys: `dense_state` is theta_init + dW for each
adapted matrix and theta_init elsewhere. So the task vector of a run is exactly dW on the adapted matrices and 0
elsewhere, and SLERP (per tensor), LITI and the saved folders act on dW; no adapter ever reaches a saved folder
(each loads as a plain `AutoModelForCausalLM`). Averaging A and B separately would not be this merge: the mean
of products B_m A_m is not the product of means.

The EMA anchor stays a dense model: after every step, `DenseEMA.update_` moves each adapted matrix of the anchor
toward W + dW. The other tensors of the policy are frozen at theta_init, where the anchor starts, so the anchor
is exactly theta_init + EMA(dW).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

ADAPTER = "default"


def lora_enabled(lora) -> bool:
    """`policy.lora` asks for adapters (rank > 0)."""
    return bool(lora) and int(lora.get("rank", 0) or 0) > 0


def add_lora(model: torch.nn.Module, lora) -> torch.nn.Module:
    """Inject LoRA adapters (rank, alpha, target_modules of `policy.lora`) into `model` in place; only the adapters
    keep `requires_grad`. The model keeps its class (`base_model`, `get_output_embeddings`, `save_pretrained`)."""
    targets = lora.target_modules
    config = LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), lora_dropout=0.0, bias="none",
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))  # GPT-2: W is in x out
    model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    """{module name: adapted layer} of a model with adapters (empty for a plain model)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def delta_weight(layer: LoraLayer) -> torch.Tensor:
    """dW = (alpha / r) B A of one adapted layer, in the layout of its base weight."""
    return layer.get_delta_weight(ADAPTER)


def dense_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the adapted `model` computes with, under the keys of the model without adapters: W + dW for
    every adapted matrix, the (frozen) tensor itself elsewhere. Tied tensors stay one tensor."""
    with torch.no_grad():
        out = {key.replace(".base_layer.", "."): t for key, t in model.state_dict().items() if ".lora_" not in key}
        for name, layer in lora_layers(model).items():
            key = f"{name}.weight"
            out[key] = (out[key] + delta_weight(layer).to(out[key].dtype)).detach()
    return out


class DenseEMA:
    """theta_ema <- (1 - mu) theta_ema + mu (W + dW) for each adapted matrix of `policy`, in the dense `anchor`."""

    def __init__(self, anchor: torch.nn.Module, policy: torch.nn.Module):
        anchor_params = dict(anchor.named_parameters())
        self.pairs = [(anchor_params[f"{name}.weight"], layer) for name, layer in lora_layers(policy).items()]

    @torch.no_grad()
    def update_(self, mu: float) -> None:
        for anchor_w, layer in self.pairs:
            anchor_w.lerp_(layer.base_layer.weight + delta_weight(layer).to(anchor_w.dtype), mu)
