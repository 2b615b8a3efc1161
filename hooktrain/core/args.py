"""``TrainingArguments``: the whole configuration of a run, in Hugging Face vocabulary.

The class is composed from config groups (:mod:`hooktrain.core.settings`): the core's own fields
(:class:`CoreArguments`, below) and one group per built-in plugin that has settings, declared in
``hooktrain/plugins/<group>_args.py`` and listed in :data:`hooktrain.plugins.BUILTINS`. A field's
owner is the group that declares it. The CLI (:mod:`hooktrain.core.cli`) and
``docs/arguments.md`` are generated from the fields' metadata.

Construction normalises forms (``report_to="wandb"`` → ``["wandb"]``, JSON strings → dicts, HF
enum names → plain strings, integral ``*_steps`` → ``int``), fills the derived defaults (each
group's ``derive``: ``logging_dir``, ``eval_steps``, ``metric_for_best_model``,
``greater_is_better``, ``torch_compile``, ``dataloader_pin_memory``) and then validates *every*
field (bounds, choices, each group's ``check``), raising one
:class:`~hooktrain.core.errors.ArgumentError` that lists all problems. Assigning a field later
re-runs all of this on a copy and only commits a valid result, so an instance is always
consistent.

Registry names (``report_to``, ``save_strategy``) are only checked for their form here; the
``Trainer`` checks that they exist once every plugin has registered. Hardware (fp16 without CUDA,
bf16 support) is checked by the precision plugin, never here. This module must stay cheap to
import: the group modules are torch-free (torch is imported lazily, only to check ``optim_args``
keys).
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from hooktrain.core.errors import ArgumentError, did_you_mean
from hooktrain.core.hf_names import HF_NAMES, read_as, translate
from hooktrain.core.settings import (
    ArgSpec,
    Checks,
    Group,
    Invalid,
    arg,
    argument_specs,
    check_field,
    check_steps_for_strategy,
    compose,
    config_group,
    group_of_module,
    int_or_ratio,
    normalise,
    set_owner,
)
from hooktrain.plugins import BUILTINS

__all__ = ["OWNERS", "ArgSpec", "CoreArguments", "TrainingArguments", "argument_specs",
           "load_config_file"]

STRATEGIES = ("no", "steps", "epoch")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
SEED_MAX = 2**32 - 1
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")


def _no_batch_rebalance(value: Any) -> Any:
    if value == "batch_rebalance":
        raise Invalid("train_sampling_strategy='batch_rebalance' is not supported by hooktrain: "
                      "use 'group_by_length'")
    return value


def _expand_path(value: str) -> str:
    if not value.strip():
        raise Invalid("output_dir='' is invalid: output_dir is required (a path)")
    return os.path.expanduser(value)


@config_group
class CoreArguments:
    """The settings the core (loop, data loading, logging and evaluation cadence) reads."""

    output_dir: str = arg(
        None, "Directory for checkpoints, logs and the final model (required; `~` is "
        "expanded).", required=True,
        normalise=_expand_path)
    per_device_train_batch_size: int = arg(8, "Training micro-batch size per process.", ge=1)
    per_device_eval_batch_size: int = arg(8, "Evaluation batch size per process.", ge=1)
    num_train_epochs: float = arg(
        3.0, "Epochs to train; a fractional part trains that share of the last epoch. "
        "Ignored when max_steps > 0.", ge=0)
    max_steps: int = arg(
        -1, "Total optimizer steps; > 0 overrides num_train_epochs, <= 0 trains by "
        "epochs. Required for datasets without __len__.")
    gradient_accumulation_steps: int = arg(
        1, "Micro-batches accumulated per optimizer step.", ge=1)
    seed: int = arg(
        42, "Random seed set at the start of training (Python, NumPy, torch).", ge=0, le=SEED_MAX)
    data_seed: int | None = arg(
        None, "Seed of the training sampler's shuffling; None uses seed.", ge=0, le=SEED_MAX)
    full_determinism: bool = arg(
        False, "Also make torch use deterministic algorithms (slower; exact reruns).")
    logging_strategy: str = arg(
        "steps", "When to log training metrics.", choices=STRATEGIES)
    logging_steps: float = arg(
        500, "Log every N optimizer steps (an integer >= 1) or every ratio x max_steps "
        "(0 < ratio < 1, rounded up).", ge=0, normalise=int_or_ratio)
    logging_first_step: bool = arg(
        False, "Also log after the first optimizer step, whatever the strategy.")
    logging_nan_inf_filter: bool = arg(
        True, "Leave NaN/inf step losses out of the logged running loss.")
    eval_strategy: str = arg(
        "no", "When to evaluate on eval_dataset.", choices=STRATEGIES)
    eval_steps: float | None = arg(
        None, "Evaluate every N steps or every ratio x max_steps; None copies "
        "logging_steps when eval_strategy is 'steps'.", ge=0, normalise=int_or_ratio)
    eval_delay: float = arg(
        0.0, "No evaluation before this many steps (steps strategy) or epochs (epoch).", ge=0)
    eval_on_start: bool = arg(
        False, "Evaluate once before the first training step (sanity check).")
    prediction_loss_only: bool = arg(
        False, "Evaluation computes only the loss; predictions and labels are not "
        "gathered.")
    eval_accumulation_steps: int | None = arg(
        None, "Accepted for Hugging Face compatibility: hooktrain already moves every eval "
        "batch's predictions to the CPU, so device memory stays bounded.", ge=1)
    label_names: list[str] | None = arg(
        None, "Batch keys that hold the labels; None means ['labels'].")
    dataloader_drop_last: bool = arg(False, "Drop the last incomplete training batch.")
    dataloader_num_workers: int = arg(
        0, "DataLoader worker processes; 0 loads in the main process.", ge=0)
    dataloader_pin_memory: bool = arg(
        True, "Pin DataLoader memory; set to False when use_cpu is True.")
    dataloader_persistent_workers: bool = arg(
        False, "Keep DataLoader workers alive between epochs (needs workers > 0).")
    dataloader_prefetch_factor: int | None = arg(
        None, "Batches prefetched per worker (needs dataloader_num_workers > 0); None "
        "uses torch's default.", ge=1)
    use_cpu: bool = arg(False, "Train on the CPU even when an accelerator is available.")
    ignore_data_skip: bool = arg(
        False, "On resume, do not fast-forward the data to where the checkpoint stopped.")
    disable_plugins: list[str] = arg(
        None, "Names of plugins (built-in or entry point) not to register for this run.",
        factory=list)
    log_level: str = arg(
        "passive", "Level of the hooktrain logger on the main process; 'passive' leaves "
        "it as configured.", choices=LOG_LEVELS)
    log_level_replica: str = arg(
        "warning", "Level of the hooktrain logger on the other processes; 'passive' leaves it "
        "as configured.", choices=LOG_LEVELS)
    log_on_each_node: bool = arg(
        True, "With several machines, the first process of each machine logs at log_level (else "
        "only the first process of the run).")
    remove_unused_columns: bool = arg(
        True, "Drop the dataset columns (datasets.Dataset) or item keys (other datasets of dicts) "
        "that the model's forward does not take, keeping label/label_ids/label_names; only when "
        "the loss comes from model(**batch) (no compute_loss).")
    train_sampling_strategy: str = arg(
        "random", "Order of the training samples: 'random' (shuffled each epoch), 'sequential', "
        "or 'group_by_length' (batches of similar lengths, less padding).",
        choices=SAMPLING_STRATEGIES, parse=_no_batch_rebalance)
    length_column_name: str = arg(
        "length", "Column of a datasets.Dataset holding precomputed lengths for 'group_by_length' "
        "(else the length of each item's input_ids).", nonempty=True)
    dataloader_multiprocessing_context: str | None = arg(
        None, "Start method of the DataLoader workers (needs dataloader_num_workers > 0); None "
        "uses the platform's default.", choices=(None, "fork", "spawn", "forkserver"))
    auto_find_batch_size: bool = arg(
        False, "On running out of memory, start training again with per_device_train_batch_size "
        "reduced to 90% (down to 1), as accelerate does.")
    do_train: bool = arg(
        False, "For your script to read (Hugging Face's example scripts do); hooktrain ignores it.")
    do_eval: bool = arg(
        False, "For your script to read (Hugging Face's example scripts do); hooktrain ignores it.")
    do_predict: bool = arg(
        False, "For your script to read (Hugging Face's example scripts do); hooktrain ignores it.")



    @property
    def train_batch_size(self) -> int:
        """Training batch size of one process (``per_device_train_batch_size``)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batch size of one process (``per_device_eval_batch_size``)."""
        return self.per_device_eval_batch_size


def _derive_core(a: Any, c: Checks) -> None:
    if c.ok("eval_strategy", "eval_steps", "logging_steps") and a.eval_strategy == "steps" \
            and a.eval_steps is None and a.logging_steps > 0:
        c.put("eval_steps", a.logging_steps)
    if c.ok("use_cpu", "dataloader_pin_memory") and a.use_cpu and a.dataloader_pin_memory:
        c.put("dataloader_pin_memory", False)


def _check_core(a: Any, c: Checks) -> None:
    check_steps_for_strategy(a, c, "logging_steps", "logging_strategy")
    check_steps_for_strategy(a, c, "eval_steps", "eval_strategy",
                             " (or logging_steps > 0, copied when None)")
    if c.ok("num_train_epochs", "max_steps") and a.num_train_epochs == 0 and a.max_steps <= 0:
        c.problem(f"num_train_epochs=0 with max_steps={a.max_steps!r} trains nothing: set "
                  "num_train_epochs > 0, or max_steps > 0 to train by steps")
    no_workers = c.ok("dataloader_num_workers") and a.dataloader_num_workers == 0
    if no_workers and c.ok("dataloader_prefetch_factor") and a.dataloader_prefetch_factor is not None:
        c.problem(f"dataloader_prefetch_factor={a.dataloader_prefetch_factor!r} is invalid: needs "
                  "dataloader_num_workers > 0")
    if no_workers and c.ok("dataloader_persistent_workers") and a.dataloader_persistent_workers:
        c.problem("dataloader_persistent_workers=True is invalid: needs dataloader_num_workers > 0")
    if no_workers and c.ok("dataloader_multiprocessing_context") and a.dataloader_multiprocessing_context:
        c.problem(f"dataloader_multiprocessing_context={a.dataloader_multiprocessing_context!r} is "
                  "invalid: needs dataloader_num_workers > 0")
    if c.ok("disable_plugins") and any(not n.strip() for n in a.disable_plugins):
        c.problem(f"disable_plugins={a.disable_plugins!r} is invalid: names must be non-empty")


def _groups() -> tuple[Group, ...]:
    """The core's group, then each built-in plugin's, in :data:`hooktrain.plugins.BUILTINS` order."""
    set_owner(CoreArguments, "core")
    core = Group("core", CoreArguments, _derive_core, _check_core)
    plugins = (group_of_module(b.name, importlib.import_module(b.settings))
               for b in BUILTINS if b.settings)
    return (core, *plugins)


GROUPS: tuple[Group, ...] = _groups()
#: Config groups, in documentation order. Each field's ``owner`` is one of these.
OWNERS: tuple[str, ...] = tuple(g.owner for g in GROUPS)

_A = typing.TypeVar("_A", bound="_ArgumentsBehaviour")


def _dc(obj: Any) -> Any:
    """*obj* for ``dataclasses.fields`` (the behaviour class is a dataclass only once composed)."""
    return obj


class _ArgumentsBehaviour:
    """Every setting of a training run; see ``docs/arguments.md`` for the full table."""

    # Non-field instance state (ClassVar so that dataclasses ignores it): the values that
    # normalisation derived, mapped to what they were before, and the "constructed" flag.
    _derived: ClassVar[dict[str, Any]]
    _initialised: ClassVar[bool]

    # ------------------------------------------------------------------ lifecycle
    def __post_init__(self) -> None:
        object.__setattr__(self, "_derived", {})
        self._validate()
        object.__setattr__(self, "_initialised", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or not self.__dict__.get("_initialised", False):
            object.__setattr__(self, name, value)
            return
        names = [f.name for f in fields(_dc(self))]
        if name in HF_NAMES:  # a Hugging Face name of another field (or a refused one)
            names.append(name)
        elif name not in names:
            if hasattr(type(self), name):  # e.g. a test monkeypatching a method
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"TrainingArguments has no field {name!r}{did_you_mean(name, names)}")
        new = self._rebuild({name: value})  # raises, leaving self untouched
        for f in fields(_dc(self)):
            object.__setattr__(self, f.name, getattr(new, f.name))
        object.__setattr__(self, "_derived", new._derived)

    if not typing.TYPE_CHECKING:  # (type checkers keep flagging unknown attributes)
        def __getattr__(self, name: str) -> Any:  # only for names that are not fields or attributes
            """Hugging Face's other names read as what they mean here (``args.push_to_hub``)."""
            entry = HF_NAMES.get(name)
            if entry is None or name.startswith("_"):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return read_as(entry, self)

    def __delattr__(self, name: str) -> None:
        if name in {f.name for f in fields(_dc(self))}:
            raise AttributeError(f"cannot delete argument {name!r}; assign a value instead")
        object.__delattr__(self, name)

    def replace(self: _A, **changes: Any) -> _A:
        """A new, validated instance with *changes* applied (derived values are re-derived)."""
        return self._rebuild(changes)

    def _rebuild(self: _A, changes: dict[str, Any]) -> _A:
        _check_names(type(self), changes)
        changes, problems = translate(changes, stacklevel=4)
        if problems:
            raise ArgumentError(problems)
        values = {f.name: getattr(self, f.name) for f in fields(_dc(self))}
        for name, before in self._derived.items():
            if name not in changes:
                values[name] = before
        values.update(changes)
        return type(self)(**values)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-safe values (a deep copy)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(_dc(self))}

    def to_json(self) -> str:
        """``to_dict()`` as JSON with sorted keys and an indent of 2."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls: type[_A], values: typing.Mapping[str, Any]) -> Any:
        """Build from a mapping of field names; an unknown name is an error."""
        if not isinstance(values, typing.Mapping):
            kind = type(values).__name__
            raise ArgumentError(f"expected a mapping of argument names to values, got {kind}")
        _check_names(cls, values)
        return cls(**dict(values))

    @classmethod
    def from_json(cls: type[_A], path_or_text: str | os.PathLike[str]) -> Any:
        """Build from a JSON object given as text or as the path of a file holding one."""
        text = str(path_or_text)
        if not (isinstance(path_or_text, str) and text.lstrip().startswith("{")):
            text = Path(path_or_text).read_text(encoding="utf-8")
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArgumentError(f"invalid JSON arguments: {exc}") from exc
        return cls.from_dict(values)

    @classmethod
    def from_yaml(cls: type[_A], path: str | os.PathLike[str]) -> Any:
        """Build from a YAML file holding a mapping of field names."""
        return cls.from_dict(load_config_file(Path(path)))

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        """Normalise forms, fill derived defaults, check every rule; raise all problems at once."""
        problems: list[str] = []
        bad: set[str] = set()
        specs = argument_specs(type(self))
        for spec in specs:
            try:
                value = normalise(spec, getattr(self, spec.name))
            except Invalid as exc:
                problems.append(str(exc))
                bad.add(spec.name)
            else:
                object.__setattr__(self, spec.name, value)
        checks = Checks(self, bad, problems, self._derived)
        for group in GROUPS:
            if group.derive is not None:
                group.derive(self, checks)
        for spec in specs:
            if spec.name not in bad:
                check_field(spec, getattr(self, spec.name), checks)
        for group in GROUPS:
            if group.check is not None:
                group.check(self, checks)
        if problems:
            raise ArgumentError(problems)


def _check_names(cls: type, names: typing.Iterable[str]) -> None:
    """Every name is a field or a Hugging Face name that :data:`HF_NAMES` answers."""
    known = [f.name for f in fields(cls)]
    unknown = [n for n in names if n not in known and n not in HF_NAMES]
    if unknown:
        raise ArgumentError([f"unknown argument {n!r}{did_you_mean(n, [*known, *HF_NAMES])}"
                             for n in unknown])


def _reading_hf_names(init: typing.Callable[..., None]) -> typing.Callable[..., None]:
    """The dataclass ``__init__`` behind one that first translates Hugging Face's other names
    (:func:`hooktrain.core.hf_names.translate`): their problems are raised with the fields'."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _check_names(type(self), kwargs)
        kwargs, problems = translate(kwargs)
        try:
            init(self, *args, **kwargs)
        except ArgumentError as exc:
            raise ArgumentError(problems + exc.problems) from None
        if problems:
            raise ArgumentError(problems)

    return __init__


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a ``.json`` file, or in a YAML file (any other extension).

    A syntax error names the file, the line and the column.
    """
    import yaml

    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArgumentError(f"config file {name!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read config file {name!r}: {exc}") from exc
    try:
        values = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"cannot read config file {name!r}: line {exc.lineno}, column "
                            f"{exc.colno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise ArgumentError(f"cannot read config file {name!r}: {where}{what or exc}") from exc
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ArgumentError(f"config file {name!r} must hold a mapping of argument names")
    return values


if typing.TYPE_CHECKING:  # what type checkers see; at run time the class is composed from GROUPS
    from hooktrain.plugins.best_model_args import BestModelArguments
    from hooktrain.plugins.checkpoint_args import CheckpointArguments
    from hooktrain.plugins.compile_args import CompileArguments
    from hooktrain.plugins.distributed_args import DistributedArguments
    from hooktrain.plugins.early_stopping_args import EarlyStoppingArguments
    from hooktrain.plugins.fsdp_args import FsdpArguments
    from hooktrain.plugins.gradient_checkpointing_args import GradientCheckpointingArguments
    from hooktrain.plugins.optimizers_args import OptimizersArguments
    from hooktrain.plugins.precision_args import PrecisionArguments
    from hooktrain.plugins.preemption_args import PreemptionArguments
    from hooktrain.plugins.progress_args import ProgressArguments
    from hooktrain.plugins.reporting_args import ReportingArguments
    from hooktrain.plugins.schedulers_args import SchedulersArguments
    from hooktrain.plugins.throughput_args import ThroughputArguments
    from hooktrain.plugins.training_args import TrainingStepArguments

    @dataclass
    class TrainingArguments(  # noqa: D101 -- a test checks these bases against GROUPS
        DistributedArguments, FsdpArguments, PreemptionArguments, ThroughputArguments, EarlyStoppingArguments,
        BestModelArguments,
        CheckpointArguments, ReportingArguments, ProgressArguments, CompileArguments, GradientCheckpointingArguments,
        PrecisionArguments, SchedulersArguments, OptimizersArguments, TrainingStepArguments,
        CoreArguments, _ArgumentsBehaviour,
    ):
        pass
else:
    TrainingArguments = compose("TrainingArguments", __name__, GROUPS,
                                _ArgumentsBehaviour)
    TrainingArguments.__init__ = _reading_hf_names(TrainingArguments.__init__)
