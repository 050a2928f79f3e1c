"""The private attributes of Lightning, torch and transformers that warp_lightning relies on (all of them in
runtime/internals.py: its functions' and its subclasses' members) still exist in the installed versions, and the
functions that wrap them do their job."""

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.runtime import internals


def tiny_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(max_steps=kwargs.pop("max_steps", 1), logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))


def tensorboard_logger(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(tmp_path, version=0)


# the first name of an attribute path in `internals.USES` -> an object that holds the rest
ROOTS = {"Trainer": lambda tmp: tiny_trainer(), "TensorBoardLogger": tensorboard_logger,
         "Tensor": lambda tmp: torch.zeros(2), "UntypedStorage": lambda tmp: torch.zeros(2).untyped_storage(),
         "GPT2LMHeadModel": lambda tmp: tiny_gpt2(), "LightningModule": lambda tmp: L.LightningModule(),
         "ModelParallelStrategy": lambda tmp: ModelParallelStrategy(tensor_parallel_size=1)}
PACKAGE = Path(internals.__file__).resolve().parents[1]


def resolve(path: str, tmp_path):
    """Walk `path` ("Trainer.a.b" from a fresh Trainer, or "pkg.module.attr" by import); the first missing name
    raises AttributeError naming it and its owner."""
    first, *rest = path.split(".")
    if first in ROOTS:
        obj, owner = ROOTS[first](tmp_path), first
    else:
        obj, owner = importlib.import_module(first), first
        while rest and hasattr(obj, "__path__") and importlib.util.find_spec(f"{owner}.{rest[0]}") is not None:
            owner = f"{owner}.{rest.pop(0)}"
            obj = importlib.import_module(owner)
    for name in rest:
        if not hasattr(obj, name):
            raise AttributeError(f"{owner} has no attribute {name}")
        obj, owner = getattr(obj, name), f"{owner}.{name}"
    return obj


@pytest.mark.parametrize(("function", "package", "attribute"), internals.USES + internals.OVERRIDES,
                         ids=[u[2] for u in internals.USES + internals.OVERRIDES])
def test_each_private_attribute_we_use_still_exists(function, package, attribute, tmp_path):
    try:
        resolve(attribute, tmp_path)
    except (AttributeError, ImportError) as err:
        pytest.fail(f"{package} {importlib.metadata.version(package)} no longer has {attribute} ({err}): "
                    f"warp_lightning/runtime/internals.py `{function}` relies on it; adapt that function to this "
                    "version (its docstring says what it is for)", pytrace=False)


@pytest.mark.parametrize(("attribute", "named"), [
    ("Trainer._checkpoint_connector.gone", "Trainer._checkpoint_connector has no attribute gone"),
    ("torch.distributed.distributed_c10d._gone", "torch.distributed.distributed_c10d has no attribute _gone"),
    ("lightning.pytorch.trainer.gone._X", "lightning.pytorch.trainer has no attribute gone")])
def test_an_attribute_an_upgrade_removed_is_named_with_its_owner(attribute, named, tmp_path):
    with pytest.raises(AttributeError, match=f"^{named}$"):
        resolve(attribute, tmp_path)


def test_every_function_of_internals_is_listed_in_uses():
    public = {name for name, f in inspect.getmembers(internals, inspect.isfunction)
              if not name.startswith("_") and f.__module__ == internals.__name__}
    assert public == {u[0] for u in internals.USES}


class Steps(L.LightningModule):
    """One linear layer trained on constant batches, with a hook run at the end of each step."""

    def __init__(self, at_step_end=None):
        super().__init__()
        self.layer, self.at_step_end, self.seen = torch.nn.Linear(2, 1), at_step_end, []

    def training_step(self, batch, _):
        return self.layer(batch).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.at_step_end:
            self.seen.append(self.at_step_end(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(8, 2), batch_size=1)


def test_dump_checkpoint_and_logger_step_describe_the_step_just_finished():
    module = Steps(lambda trainer: (internals.dump_checkpoint(trainer)["global_step"], internals.logger_step(trainer)))
    tiny_trainer(max_steps=3).fit(module)
    # the logger's step is counted after `on_train_batch_end`: the steps before this one
    assert module.seen == [(1, 0), (2, 1), (3, 2)]


def test_stop_after_this_step_stops_a_trainer_whose_signals_we_took_over():
    module = Steps(lambda trainer: internals.stop_after_this_step(trainer) if trainer.global_step == 2 else None)
    trainer = tiny_trainer(max_steps=6)
    internals.take_over_signals(trainer)
    with pytest.raises(SIGTERMException):
        trainer.fit(module)
    assert trainer.global_step == 2


def test_the_tensor_helpers():
    a, b = [torch.zeros(3), torch.ones(2)], [torch.full((3,), 4.0), torch.full((2,), 3.0)]
    internals.foreach_lerp_(a, b, 0.25)
    assert torch.equal(a[0], torch.full((3,), 1.0)) and torch.equal(a[1], torch.full((2,), 1.5))
    before = internals.version_counter(a[0])
    a[0].add_(1)
    assert internals.version_counter(a[0]) == before + 1
    buf = torch.empty(10)
    assert internals.storage_use_count(buf) == 2  # `buf` and the temporary storage object
    view = buf[:5]
    assert internals.storage_use_count(buf) == 3 and view.numel() == 5
    assert internals.default_store() is None  # no process group here


def test_the_model_and_logger_helpers(tmp_path):
    model = tiny_gpt2()
    assert internals.no_split_modules(model) == {"GPT2Block"}
    assert internals.no_split_modules(torch.nn.Linear(1, 1)) == set()
    assert internals.attention_implementation(model) in ("sdpa", "eager")


def test_purge_tensorboard_from_drops_the_events_after_the_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = tensorboard_logger(tmp_path)
    for step in range(10):
        first.log_metrics({"x": 1.0}, step=step)
    first.finalize("success")
    resumed = tensorboard_logger(tmp_path)  # the same version folder, as a resumed run's logger
    internals.purge_tensorboard_from(resumed, 5)
    resumed.log_metrics({"x": 2.0}, step=5)
    resumed.finalize("success")
    events = EventAccumulator(first.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0),
                                                               (5, 2.0)]


def _third_party_bases(cls) -> list[type]:
    return [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in internals.PACKAGES]


def _private_names_used(cls) -> set[str]:
    """`_name` members that the source of `cls` defines, and `self._name` that its methods read, write or call
    (dunders aside; what a metaclass adds, such as ABCMeta's `_abc_impl`, is not ours)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    names = {n.name for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= {t.id for n in body if isinstance(n, ast.Assign | ast.AnnAssign)
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    names |= {n.attr for part in body for n in ast.walk(part) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id == "self"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _owned_by(base: type, name: str) -> bool:
    """Whether `name` is the base's (a member, or an attribute its code sets on self)."""
    if name in vars(base):
        return True
    try:
        return f"self.{name}" in inspect.getsource(base)
    except (OSError, TypeError):
        return False


def test_every_private_member_of_a_third_party_base_that_our_subclasses_touch_is_registered():
    """A subclass of a Lightning (torch, transformers) class that overrides, sets or calls a private member of its
    base relies on that base's internals as much as a direct use does: it is listed in `internals.OVERRIDES`, so that
    the test above checks it against the installed version."""
    registered = {where for where, _, _ in internals.OVERRIDES}
    unregistered = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = importlib.import_module(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
                                         .removesuffix(".__init__"))
        for cls in [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]:
            bases = _third_party_bases(cls)
            for name in sorted(_private_names_used(cls)):
                if any(_owned_by(b, name) for b in bases) and f"{cls.__name__}.{name}" not in registered:
                    unregistered.append(f"{module.__name__}.{cls.__name__}.{name}")
    assert not unregistered, f"register these in runtime/internals.py OVERRIDES: {unregistered}"


def test_the_functions_that_wrap_module_internals_do_their_job():
    module = L.LightningModule()
    assert internals.attached_trainer(module) is None
    trainer = tiny_trainer()
    module.trainer = trainer
    assert internals.attached_trainer(module) is trainer
