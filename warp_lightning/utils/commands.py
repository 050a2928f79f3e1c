"""What a command is: its record (`Command`), declared once beside the command, in the `commands.py` of its package
(its check in the `checks.py` beside it), and the list of them that the CLI reads (`commands()`).

A record names the command (`python -m warp_lightning NAME`, its config `conf/NAME.yaml`), says what it does, where
its `run(cfg) -> dict` is, its check (run once, before anything starts), the config keys a resume may change (None:
the command does not resume), and the types of its own keys whose default says nothing about their type
(utils/validate.py, "types"; the keys of the config groups every command shares are typed there, in `SHARED_TYPES`).
The body and the check are named as `module` and `module:function` and imported when used: listing the commands
(`python -m warp_lightning`) imports neither torch nor the models' libraries.

Called from Python, a record checks then runs: `commands()["evaluate"](cfg)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

from warp_lightning.utils.validate import SHARED_TYPES, validate_command

# the modules that declare commands (a package's commands.py), in the order `python -m warp_lightning` lists them
DECLARED_IN = ("warp_lightning.data.commands", "warp_lightning.train.commands", "warp_lightning.reward.commands",
               "warp_lightning.eval.commands", "warp_lightning.studies.commands")

# what a resume may change in the config of a command that trains (sft, reward, train): where the run folder and
# the caches are, how it is logged and evaluated, where the result is saved; never what is trained
WHERE_AND_HOW_LOGGED = frozenset({"hydra", "logger", "paths", "eval", "save_to"})


@dataclass(frozen=True)
class Command:
    name: str  # python -m warp_lightning NAME; its primary config is conf/NAME.yaml
    summary: str  # one line, as `python -m warp_lightning` lists it
    module: str  # the module whose `run(cfg) -> dict` the command is (imported when the command runs)
    check: str  # "module:function", its own check (after validate_command's shared ones): UserError in one line
    resume: frozenset[str] | None = None  # the config keys (dotted) a resume may change; None: not resumable
    types: Mapping[str, tuple] = field(default_factory=dict)  # its keys whose default says nothing of their type

    def __post_init__(self):
        object.__setattr__(self, "types", MappingProxyType(dict(self.types)))
        if self.resume is not None:
            object.__setattr__(self, "resume", frozenset(self.resume))

    @property
    def resumable(self) -> bool:
        return self.resume is not None

    def declared_types(self) -> dict[str, tuple]:
        """The declared types of every key of this command's config: the shared groups' and its own."""
        return {**SHARED_TYPES, **self.types}

    def checker(self) -> Callable[..., None]:
        """The command's own check (imported now, from the checks.py beside it)."""
        module, _, function = self.check.partition(":")
        return getattr(importlib.import_module(module), function)

    def validate(self, cfg, run_dir: str | None = None) -> None:
        """The checks every command shares, then this command's (utils/validate.py `validate_command`)."""
        validate_command(cfg, self.checker(), run_dir)

    def body(self):
        """The module of the command's `run(cfg)` (and of its `result_lines(metrics, out_dir)`, if it has one)."""
        return importlib.import_module(self.module)

    def run(self, cfg) -> dict | None:
        """The command's body, unchecked (the CLI has checked the config before Hydra started)."""
        return self.body().run(cfg)

    def __call__(self, cfg) -> dict | None:
        """From Python: check, then run."""
        self.validate(cfg)
        return self.run(cfg)


@cache
def commands() -> dict[str, Command]:
    """{name: record} of every command, in the order of `DECLARED_IN` and of each package's `COMMANDS`."""
    found: dict[str, Command] = {}
    for module in DECLARED_IN:
        for record in importlib.import_module(module).COMMANDS:
            if record.name in found:
                raise RuntimeError(f"two records declare the command {record.name!r} ({module})")
            found[record.name] = record
    return found


def without(config: dict, keys: Iterable[str]) -> dict:
    """A copy of the plain `config` without the dotted `keys` (those a resume may change)."""
    out = dict(config)
    for key in keys:
        head, _, rest = key.partition(".")
        if head in out:
            if not rest:
                del out[head]
            elif isinstance(out[head], dict):
                out[head] = without(out[head], [rest])
    return out


def first_difference(a, b, key: str, shared_only: bool = False, says: str = "{a!r} then, {b!r} now") -> str | None:
    """The first dotted key under `key` where the plain configs `a` and `b` differ, with both values as `says` puts
    them ("warp.steps (3 then, 4 now)"), None when they agree; `shared_only`: compare the keys both have (a key one
    version added, with its default, is not a difference)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) & set(b)) if shared_only else sorted(set(a) | set(b))
        found = next((d for k in keys if (d := first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k),
                                                                shared_only, says))), None)
        if found or shared_only:
            return found  # (else a key absent on one side and None on the other: the dicts as a whole, below)
    return None if a == b else f"{key} ({says.format(a=a, b=b)})"
