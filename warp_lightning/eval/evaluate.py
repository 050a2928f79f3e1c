"""`python -m warp_lightning evaluate model=PATH`: experiment 1 of WARP.md (SFT vs the models, same prompts)."""

from __future__ import annotations

from pathlib import Path

from warp_lightning.eval.protocol import load_protocol, named_models, paired_gains, write_csv
from warp_lightning.eval.stats import results_table
from warp_lightning.policy.models import load_causal_lm
from warp_lightning.utils.io import atomic_write_bytes
from warp_lightning.utils.paths import cfg_output_dir


def run(cfg) -> dict:
    """`python -m warp_lightning evaluate model=PATH`: reward and KL(pi || pi_sft) with intervals.

    Experiment 1 of WARP.md: with `with_sft=true` (the default) the SFT policy is evaluated too, on the
    same prompts with the same sampling random numbers, and each model gets the paired difference to it (model
    minus SFT, per prompt, 95% bootstrap interval over prompts) of the reward and of the judge's score. The table
    `model | reward | judge | differences | KL | ...` is printed and saved as `table.md`.
    """
    sft_path = str(cfg.sft)

    def is_sft(path: str) -> bool:
        return Path(path).resolve() == Path(sft_path).resolve()

    models = {}
    for name, path in named_models(cfg.model).items():
        models["SFT" if is_sft(path) else name] = path
    protocol = load_protocol(cfg)
    if cfg.with_sft and not any(map(is_sft, models.values())):
        models = {"SFT": sft_path, **models}
    results, rows, per_model = {}, [], {}
    for name, path in models.items():
        model = protocol.sft if is_sft(path) else load_causal_lm(path).eval()
        metrics, completions = protocol.evaluate(model)
        results[name] = {**metrics, "path": path}
        per_model[name] = completions
        rows += [{"model": name, **r} for r in completions]
    sft_name = next((n for n, p in models.items() if is_sft(p)), None)
    for name, gains in (paired_gains(per_model, sft_name, cfg.eval.seed) if sft_name else {}).items():
        results[name].update(gains)
    out = Path(cfg_output_dir())
    write_csv(out / "completions.csv", rows)
    table = results_table(results)
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    print(table)
    name = next((n for n, p in models.items() if not is_sft(p)), next(iter(models)))  # the model asked for
    main = {k: v for k, v in results[name].items() if k != "path"}
    return {**main, "model": models[name], "sft": sft_path, "models": results}
