"""The records of `evaluate`, `front` and `report` (utils/commands.py): their checks are in checks.py beside them."""

from __future__ import annotations

from warp_lightning.utils.commands import Command

# the keys of evaluate's config that front and report share take the same types
_MODELS = {"eval.prompts": (int, None),  # null: the whole split
           "model": (str, list, dict, None)}  # a folder, a list of them or {name: folder}; front: unused
COMMANDS = (
    Command("evaluate", "proxy reward, held-out judge and KL to the SFT policy; paired gains, 95% intervals",
            "warp_lightning.eval.evaluate", "warp_lightning.eval.checks:check_evaluate", types=_MODELS),
    Command("front", "reward vs KL fronts of a run (LITI over eta; eta > 1 extrapolates, ExPO) and of baselines",
            "warp_lightning.eval.front", "warp_lightning.eval.checks:check_front",
            types={**_MODELS, "run": (str, list),  # a train run folder or a list of them (seeds of one arm)
                   "baselines": (dict, None)}),  # {name: a run folder or a list of them}
    Command("report", "tables, plots and the paper's claims from the experiments, in reports/",
            "warp_lightning.eval.report", "warp_lightning.eval.checks:check_report",
            types={key: (str, None) for key in ("evaluation", "sweep", "front", "run")}),
)
