"""``TrainingArguments``: the whole configuration of a run, in Hugging Face vocabulary.

Every field carries ``metadata={"help": ..., "owner": ...}``; ``owner`` names the plugin (config
group) that reads the field. The CLI (:mod:`hooktrain.core.cli`) and ``docs/arguments.md`` are
generated from that metadata.

Construction normalises forms (``report_to="wandb"`` → ``["wandb"]``, JSON strings → dicts, HF
enum names → plain strings, integral ``*_steps`` → ``int``), fills the derived defaults
(Hugging Face rules: ``logging_dir``, ``eval_steps``, ``metric_for_best_model``,
``greater_is_better``, ``torch_compile``, ``dataloader_pin_memory``) and then validates *every*
field, raising one :class:`~hooktrain.core.errors.ArgumentError` that lists all problems.
Assigning a field later re-runs all of this on a copy and only commits a valid result, so an
instance is always consistent.

Registry names (``report_to``, ``save_strategy``) are only checked for their form here; the
``Trainer`` checks that they exist once every plugin has registered. Hardware (fp16 without CUDA,
bf16 support) is checked by the precision plugin, never here. This module must stay cheap to
import: torch is imported lazily, only to check ``optim_args`` keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import inspect
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from hooktrain.core.errors import ArgumentError

__all__ = ["OWNERS", "ArgSpec", "TrainingArguments", "argument_specs", "optimizer_arg_names"]

#: Config groups, in documentation order. Each field's ``owner`` is one of these.
OWNERS: tuple[str, ...] = (
    "core", "training", "optimizers", "schedulers", "precision", "progress", "reporting",
    "checkpoint", "best_model", "early_stopping", "distributed",
)

STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
OPTIMIZERS = (
    "adamw_hf", "adamw_torch", "adamw_torch_fused", "adamw_apex", "fused_adam",
    "sgd", "adagrad", "rmsprop",
)
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt",
)
#: Schedulers that decay towards a final value, so ``learning_rate_end`` means something.
SCHEDULERS_WITH_END = ("cosine", "cosine_with_restarts", "polynomial")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DDP_BACKENDS = ("nccl", "gloo", "mpi")
REPORT_ERRORS = ("warn", "raise")

#: ``optim`` name → the ``torch.optim`` class whose constructor keywords ``optim_args`` may use.
_OPTIM_CLASSES = {
    "adamw_hf": "AdamW", "adamw_torch": "AdamW", "adamw_torch_fused": "AdamW",
    "adamw_apex": "AdamW", "fused_adam": "AdamW", "sgd": "SGD", "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
}
#: Fields that hold either an absolute step count (an int >= 1) or a ratio in (0, 1).
_INT_OR_RATIO = frozenset({"logging_steps", "eval_steps", "save_steps", "warmup_steps"})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_NAME_CHARS = "letters, digits, '_', '-', '.'"
_NEEDS_EVAL = "needs an evaluation: set eval_strategy to 'steps' or 'epoch'"
_SEED_MAX = 2**32 - 1


def _arg(
    default: Any,
    owner: str,
    doc: str,
    *,
    factory: Any = None,
    choices: tuple[Any, ...] | None = None,
    open_choices: bool = False,
    required: bool = False,
) -> Any:
    """A dataclass field with the metadata the CLI, the docs and the validator read."""
    metadata: dict[str, Any] = {"help": doc, "owner": owner}
    if choices is not None:
        metadata["choices"] = choices
        metadata["open_choices"] = open_choices
    if required:
        metadata["required"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingArguments:
    """Every setting of a training run; see ``docs/arguments.md`` for the full table."""

    # ---------------------------------------------------------------- core
    output_dir: str = _arg(
        None, "core", "Directory for checkpoints, logs and the final model (required; `~` is "
        "expanded).", required=True)
    per_device_train_batch_size: int = _arg(8, "core", "Training micro-batch size per process.")
    per_device_eval_batch_size: int = _arg(8, "core", "Evaluation batch size per process.")
    num_train_epochs: float = _arg(
        3.0, "core", "Epochs to train; a fractional part trains that share of the last epoch. "
        "Ignored when max_steps > 0.")
    max_steps: int = _arg(
        -1, "core", "Total optimizer steps; > 0 overrides num_train_epochs, <= 0 trains by "
        "epochs. Required for datasets without __len__.")
    gradient_accumulation_steps: int = _arg(
        1, "core", "Micro-batches accumulated per optimizer step.")
    seed: int = _arg(
        42, "core", "Random seed set at the start of training (Python, NumPy, torch).")
    data_seed: int | None = _arg(
        None, "core", "Seed of the training sampler's shuffling; None uses seed.")
    full_determinism: bool = _arg(
        False, "core", "Also make torch use deterministic algorithms (slower; exact reruns).")
    logging_strategy: str = _arg(
        "steps", "core", "When to log training metrics.", choices=STRATEGIES)
    logging_steps: float = _arg(
        500, "core", "Log every N optimizer steps (an integer >= 1) or every ratio x max_steps "
        "(0 < ratio < 1, rounded up).")
    logging_first_step: bool = _arg(
        False, "core", "Also log after the first optimizer step, whatever the strategy.")
    logging_nan_inf_filter: bool = _arg(
        True, "core", "Leave NaN/inf step losses out of the logged running loss.")
    eval_strategy: str = _arg(
        "no", "core", "When to evaluate on eval_dataset.", choices=STRATEGIES)
    eval_steps: float | None = _arg(
        None, "core", "Evaluate every N steps or every ratio x max_steps; None copies "
        "logging_steps when eval_strategy is 'steps'.")
    eval_delay: float = _arg(
        0.0, "core", "No evaluation before this many steps (steps strategy) or epochs (epoch).")
    eval_on_start: bool = _arg(
        False, "core", "Evaluate once before the first training step (sanity check).")
    prediction_loss_only: bool = _arg(
        False, "core", "Evaluation computes only the loss; predictions and labels are not "
        "gathered.")
    eval_accumulation_steps: int | None = _arg(
        None, "core", "Accepted for Hugging Face compatibility: hooktrain already moves every eval "
        "batch's predictions to the CPU, so device memory stays bounded.")
    label_names: list[str] | None = _arg(
        None, "core", "Batch keys that hold the labels; None means ['labels'].")
    dataloader_drop_last: bool = _arg(False, "core", "Drop the last incomplete training batch.")
    dataloader_num_workers: int = _arg(
        0, "core", "DataLoader worker processes; 0 loads in the main process.")
    dataloader_pin_memory: bool = _arg(
        True, "core", "Pin DataLoader memory; set to False when use_cpu is True.")
    dataloader_persistent_workers: bool = _arg(
        False, "core", "Keep DataLoader workers alive between epochs (needs workers > 0).")
    dataloader_prefetch_factor: int | None = _arg(
        None, "core", "Batches prefetched per worker (needs dataloader_num_workers > 0); None "
        "uses torch's default.")
    include_num_input_tokens_seen: bool = _arg(
        False, "core", "Count the input tokens seen and log them as num_input_tokens_seen.")
    use_cpu: bool = _arg(False, "core", "Train on the CPU even when an accelerator is available.")
    torch_empty_cache_steps: int | None = _arg(
        None, "core", "Empty the accelerator's memory cache every N steps; None never does.")
    ignore_data_skip: bool = _arg(
        False, "core", "On resume, do not fast-forward the data to where the checkpoint stopped.")
    disable_plugins: list[str] = _arg(
        None, "core", "Names of plugins (built-in or entry point) not to register for this run.",
        factory=list)
    log_level: str = _arg(
        "passive", "core", "Level of the hooktrain logger on the main process; 'passive' leaves "
        "it as configured.", choices=LOG_LEVELS)

    # ---------------------------------------------------------------- training
    max_grad_norm: float = _arg(
        1.0, "training", "Clip the gradient norm to this value; 0 disables clipping.")
    label_smoothing_factor: float = _arg(
        0.0, "training", "Label smoothing epsilon for the loss computed from logits and labels; "
        "0 disables it.")

    # ---------------------------------------------------------------- optimizers
    learning_rate: float = _arg(5e-5, "optimizers", "Peak learning rate (reached after warmup).")
    weight_decay: float = _arg(
        0.0, "optimizers", "Weight decay, applied to all parameters except biases and norm "
        "weights.")
    adam_beta1: float = _arg(0.9, "optimizers", "beta1 of the Adam-family optimizers.")
    adam_beta2: float = _arg(0.999, "optimizers", "beta2 of the Adam-family optimizers.")
    adam_epsilon: float = _arg(1e-8, "optimizers", "epsilon of the Adam-family optimizers.")
    optim: str = _arg(
        "adamw_hf", "optimizers", "Optimizer: adamw_hf/adamw_torch = torch AdamW, "
        "adamw_torch_fused/fused_adam = fused torch AdamW, adamw_apex = apex FusedAdam, or torch's "
        "SGD/Adagrad/RMSprop.", choices=OPTIMIZERS)
    optim_args: dict[str, Any] | None = _arg(
        None, "optimizers", "Extra optimizer constructor keywords: a dict, a JSON object or "
        "'k=v,k2=v2'; keys are checked against the optimizer's constructor.")

    # ---------------------------------------------------------------- schedulers
    lr_scheduler_type: str = _arg(
        "linear", "schedulers", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_scheduler_kwargs: dict[str, Any] | None = _arg(
        None, "schedulers", "Extra keywords for the scheduler: a dict or a JSON object.")
    warmup_ratio: float = _arg(
        0.0, "schedulers", "Warmup length as a share of the total steps (rounded up); used when "
        "warmup_steps is 0.")
    warmup_steps: float = _arg(
        0, "schedulers", "Warmup steps (>= 1, truncated to an integer) or a ratio in (0, 1); wins "
        "over warmup_ratio when > 0.")
    learning_rate_end: float | None = _arg(
        None, "schedulers", "Final learning rate of cosine, cosine_with_restarts and polynomial "
        "(>= 0, < learning_rate); None: 0 (polynomial: 1e-7).")
    power: float = _arg(1.0, "schedulers", "Power of the polynomial schedule (> 0).")

    # ---------------------------------------------------------------- precision
    fp16: bool = _arg(
        False, "precision", "fp16 mixed precision (autocast + gradient scaler); on a CPU it runs "
        "but is far slower than bf16, and a warning says so.")
    bf16: bool = _arg(False, "precision", "bf16 mixed precision (needs hardware bf16 support).")
    fp16_full_eval: bool = _arg(
        False, "precision", "Evaluate with the model cast to fp16; the training weights are "
        "restored bitwise afterwards.")
    bf16_full_eval: bool = _arg(
        False, "precision", "Evaluate with the model cast to bf16; the training weights are "
        "restored bitwise afterwards.")
    tf32: bool = _arg(
        True, "precision", "Allow TF32 matmuls and convolutions on NVIDIA Ampere or newer; no "
        "effect elsewhere.")
    gradient_checkpointing: bool = _arg(
        False, "precision", "Recompute activations in the backward pass to save memory.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = _arg(
        None, "precision", "Keywords for torch.utils.checkpoint, e.g. {\"use_reentrant\": false}; "
        "a dict or a JSON object.")
    torch_compile: bool = _arg(
        False, "precision", "Compile the model with torch.compile; turned on when "
        "torch_compile_backend or torch_compile_mode is set.")
    torch_compile_backend: str | None = _arg(
        None, "precision", "torch.compile backend; None means 'inductor'.")
    torch_compile_mode: str | None = _arg(
        None, "precision", "torch.compile mode; None uses torch's default.",
        choices=(None, *COMPILE_MODES))

    # ---------------------------------------------------------------- progress
    disable_tqdm: bool = _arg(False, "progress", "Hide the progress bars.")

    # ---------------------------------------------------------------- reporting
    report_to: list[str] = _arg(
        None, "reporting", "Reporter names, 'all' (every installed reporter) or 'none'; a string "
        "is one name; None means the default ['tensorboard'].", factory=lambda: ["tensorboard"])
    run_name: str | None = _arg(
        None, "reporting", "Run name shown by the reporters; None lets each reporter choose.")
    logging_dir: str | None = _arg(
        None, "reporting", "TensorBoard log directory; None means output_dir/runs.")
    report_errors: str = _arg(
        "warn", "reporting", "What a failing reporter does: 'warn' logs and disables it, 'raise' "
        "stops training.", choices=REPORT_ERRORS)
    report_timeout: float = _arg(
        30.0, "reporting", "Seconds the reporters may take to flush at the end of training.")
    report_checkpoints: bool = _arg(
        False, "reporting", "Also store every checkpoint as an artifact in the trackers that keep "
        "files (wandb, comet, mlflow).")

    # ---------------------------------------------------------------- checkpoint
    save_strategy: str = _arg(
        "steps", "checkpoint", "Save policy name: 'no', 'steps', 'epoch', 'best' or one "
        "registered by a plugin.", choices=SAVE_STRATEGIES, open_choices=True)
    save_steps: float = _arg(
        500, "checkpoint", "Save every N steps (an integer >= 1) or every ratio x max_steps "
        "(0 < ratio < 1).")
    save_total_limit: int | None = _arg(
        None, "checkpoint", "Keep at most this many checkpoints (the best is always kept); None "
        "keeps all.")
    save_safetensors: bool = _arg(
        True, "checkpoint", "Save weights as model.safetensors; False writes pytorch_model.bin.")
    save_only_model: bool = _arg(
        False, "checkpoint", "Save only the weights (no optimizer, scheduler or RNG state); such "
        "checkpoints cannot resume training.")
    save_on_each_node: bool = _arg(
        False, "checkpoint", "Multi-node runs save on each node's local main process, not only on "
        "the global one.")
    overwrite_output_dir: bool = _arg(
        False, "checkpoint", "Allow training into an output_dir that already holds checkpoints "
        "without resuming from them.")
    resume_from_checkpoint: str | None = _arg(
        None, "checkpoint", "Checkpoint to resume from when train() is not given one: a "
        "checkpoint directory, or 'true' for the newest valid one in output_dir.")
    restore_callback_states_from_checkpoint: bool = _arg(
        True, "checkpoint", "On resume, restore plugin states (early-stopping counter, best "
        "metric...) from the checkpoint.")

    # ---------------------------------------------------------------- best_model
    load_best_model_at_end: bool = _arg(
        False, "best_model", "Reload the best checkpoint's weights at the end; needs evaluation. "
        "A new best is saved when found, so eval and save strategies need not match.")
    metric_for_best_model: str | None = _arg(
        None, "best_model", "Eval metric that ranks checkpoints (eval_ prefix optional); None "
        "means 'loss' when load_best_model_at_end or early stopping is on.")
    greater_is_better: bool | None = _arg(
        None, "best_model", "Whether a larger metric is better; None means True unless the "
        "metric name ends with 'loss'.")

    # ---------------------------------------------------------------- early_stopping
    early_stopping_patience: int | None = _arg(
        None, "early_stopping", "Stop after this many evaluations without improvement; None "
        "disables patience-based stopping.")
    early_stopping_threshold: float = _arg(
        0.0, "early_stopping", "Minimum improvement of the metric that resets the patience count.")
    early_stopping_check_finite: bool = _arg(
        True, "early_stopping", "Stop when the metric is NaN or infinite.")
    early_stopping_stopping_threshold: float | None = _arg(
        None, "early_stopping", "Stop as soon as the metric is better than this value.")
    early_stopping_divergence_threshold: float | None = _arg(
        None, "early_stopping", "Stop as soon as the metric is worse than this value.")

    # ---------------------------------------------------------------- distributed
    ddp_backend: str | None = _arg(
        None, "distributed", "torch.distributed backend; None picks nccl on CUDA, else gloo.",
        choices=(None, *DDP_BACKENDS))
    ddp_timeout: int = _arg(
        1800, "distributed", "Seconds before collective operations time out.")
    ddp_find_unused_parameters: bool = _arg(
        False, "distributed", "DistributedDataParallel find_unused_parameters.")
    ddp_bucket_cap_mb: int | None = _arg(
        None, "distributed", "DistributedDataParallel bucket_cap_mb; None uses torch's default.")
    ddp_broadcast_buffers: bool | None = _arg(
        None, "distributed", "DistributedDataParallel broadcast_buffers; None uses torch's "
        "default.")
    ddp_static_graph: bool | None = _arg(
        None, "distributed", "DistributedDataParallel static_graph; None uses torch's default.")
    local_rank: int = _arg(
        -1, "distributed", "Rank of this process on its node, for launchers that pass "
        "--local_rank; the LOCAL_RANK environment variable wins.")

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
        names = [f.name for f in fields(self)]
        if name not in names:
            if hasattr(type(self), name):  # e.g. a test monkeypatching a method
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"TrainingArguments has no field {name!r}{_suggest(name, names)}")
        new = self._rebuild({name: value})  # raises, leaving self untouched
        for f in fields(self):
            object.__setattr__(self, f.name, getattr(new, f.name))
        object.__setattr__(self, "_derived", new._derived)

    def __delattr__(self, name: str) -> None:
        if name in {f.name for f in fields(self)}:
            raise AttributeError(f"cannot delete argument {name!r}; assign a value instead")
        object.__delattr__(self, name)

    def replace(self, **changes: Any) -> TrainingArguments:
        """A new, validated instance with *changes* applied (derived values are re-derived)."""
        return self._rebuild(changes)

    def _rebuild(self, changes: dict[str, Any]) -> TrainingArguments:
        _check_names(type(self), changes)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, before in self._derived.items():
            if name not in changes:
                values[name] = before
        values.update(changes)
        return type(self)(**values)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-safe values (a deep copy)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def to_json(self) -> str:
        """``to_dict()`` as JSON with sorted keys and an indent of 2."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]) -> TrainingArguments:
        """Build from a mapping of field names; an unknown name is an error."""
        if not isinstance(values, typing.Mapping):
            kind = type(values).__name__
            raise ArgumentError(f"expected a mapping of argument names to values, got {kind}")
        _check_names(cls, values)
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike[str]) -> TrainingArguments:
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
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainingArguments:
        """Build from a YAML file holding a mapping of field names."""
        from hooktrain.core.cli import load_config_file  # cli imports this module

        return cls.from_dict(load_config_file(Path(path)))

    # ------------------------------------------------------------------ derived helpers
    @property
    def train_batch_size(self) -> int:
        """Training batch size of one process (``per_device_train_batch_size``)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batch size of one process (``per_device_eval_batch_size``)."""
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps for a run of *num_training_steps* optimizer steps (HF rounding).

        ``warmup_steps`` wins when > 0: a value >= 1 is truncated to an int, a ratio < 1 is
        ``ceil(num_training_steps * ratio)``; otherwise
        ``ceil(num_training_steps * warmup_ratio)``.
        """
        ws = self.warmup_steps
        if ws > 0:
            return int(ws) if ws >= 1 else math.ceil(num_training_steps * ws)
        return math.ceil(num_training_steps * self.warmup_ratio)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        """Normalise forms, fill derived defaults, check every rule; raise all problems at once."""
        problems: list[str] = []
        bad: set[str] = set()
        for spec in argument_specs(type(self)):
            try:
                value = _normalise(spec, getattr(self, spec.name))
            except _Problem as exc:
                problems.append(str(exc))
                bad.add(spec.name)
            else:
                object.__setattr__(self, spec.name, value)
        self._derive(bad)
        _check_rules(self, bad, problems)
        if problems:
            raise ArgumentError(problems)

    def _derive(self, bad: set[str]) -> None:
        def put(name: str, value: Any) -> None:
            self._derived.setdefault(name, getattr(self, name))
            object.__setattr__(self, name, value)

        def ok(*names: str) -> bool:
            return not bad.intersection(names)

        if ok("output_dir", "logging_dir") and self.logging_dir is None and self.output_dir:
            put("logging_dir", os.path.join(self.output_dir, "runs"))
        if (
            ok("eval_strategy", "eval_steps", "logging_steps")
            and self.eval_strategy == "steps"
            and self.eval_steps is None
            and self.logging_steps > 0
        ):
            put("eval_steps", self.logging_steps)
        early = ("early_stopping_patience", "early_stopping_stopping_threshold",
                 "early_stopping_divergence_threshold")
        wants_metric = self.load_best_model_at_end is True or (
            ok(*early) and any(getattr(self, n) is not None for n in early)
        )
        if ok("metric_for_best_model") and self.metric_for_best_model is None and wants_metric:
            put("metric_for_best_model", "loss")
        metric = self.metric_for_best_model
        if ok("greater_is_better", "metric_for_best_model") and self.greater_is_better is None \
                and isinstance(metric, str) and metric:
            put("greater_is_better", not metric.endswith("loss"))
        compile_set = self.torch_compile_backend is not None or self.torch_compile_mode is not None
        if ok("torch_compile", "torch_compile_backend", "torch_compile_mode") and compile_set \
                and not self.torch_compile:
            put("torch_compile", True)
        if ok("use_cpu", "dataloader_pin_memory") and self.use_cpu and self.dataloader_pin_memory:
            put("dataloader_pin_memory", False)


# ---------------------------------------------------------------------- field specs
@dataclass(frozen=True)
class ArgSpec:
    """What the validator, the CLI and the docs need to know about one field."""

    name: str
    kind: str  # bool | int | float | str | list | dict | any
    optional: bool
    owner: str
    help: str
    type_text: str
    default: Any
    choices: tuple[Any, ...] | None
    open_choices: bool
    required: bool


@functools.cache
def _specs(cls: type) -> tuple[ArgSpec, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        optional = type(None) in args
        if optional:
            rest = [a for a in args if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Any
        origin = typing.get_origin(tp) or tp
        kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
        factory = f.default_factory
        default = f.default if factory is dataclasses.MISSING else factory()
        md = f.metadata
        out.append(ArgSpec(
            name=f.name, kind=kind.get(origin, "any"), optional=optional,
            owner=md.get("owner", "core"), help=md.get("help", ""), type_text=str(f.type),
            default=default, choices=md.get("choices"), open_choices=md.get("open_choices", False),
            required=md.get("required", False),
        ))
    return tuple(out)


def argument_specs(cls: type = TrainingArguments) -> tuple[ArgSpec, ...]:
    """The :class:`ArgSpec` of every field of *cls*, in declaration order."""
    return _specs(cls)


@functools.cache
def optimizer_arg_names(optim: str) -> tuple[str, ...]:
    """Keywords ``optim_args`` may hold for *optim*: its torch constructor's, minus ``params``."""
    import torch.optim

    cls = getattr(torch.optim, _OPTIM_CLASSES[optim])
    return tuple(p for p in inspect.signature(cls).parameters if p != "params")


def _check_names(cls: type, names: typing.Iterable[str]) -> None:
    known = [f.name for f in fields(cls)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ArgumentError([f"unknown argument {n!r}{_suggest(n, known)}" for n in unknown])


def _suggest(value: Any, choices: typing.Iterable[Any]) -> str:
    names = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------- normalisation
class _Problem(Exception):
    pass


_KIND_WORDS = {
    "bool": "a bool (True or False)", "int": "an int", "float": "a number", "str": "a string",
    "list": "a list of strings", "dict": "a dict (or a JSON object string)",
}


def _normalise(spec: ArgSpec, value: Any) -> Any:
    """The canonical form of *value* for *spec*, or raise :class:`_Problem`."""
    name, kind = spec.name, spec.kind
    if value is None:
        if spec.required:
            raise _Problem(f"{name} is required: pass {name}='path/to/dir' (checkpoints and logs)")
        if spec.optional:
            return None
        if name == "report_to":
            return ["tensorboard"]
        raise _Problem(f"{name}=None is invalid: must be {_KIND_WORDS.get(kind, 'set')}")
    if spec.choices is not None:
        value = _enum_value(value, spec.choices)
    if kind == "bool" and not isinstance(value, bool):
        raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS[kind]}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS[kind]}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS[kind]}")
        if not math.isfinite(value):
            raise _Problem(f"{name}={value!r} is invalid: must be a finite number")
        if name in _INT_OR_RATIO:
            return int(value) if value >= 1 and float(value).is_integer() else value
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS[kind]}")
        if name == "output_dir":
            if not value.strip():
                raise _Problem("output_dir='' is invalid: output_dir is required (a path)")
            return os.path.expanduser(value)
        return value
    if kind == "list":
        return _normalise_list(name, value)
    if kind == "dict":
        return _normalise_dict(name, value)
    return value


def _enum_value(value: Any, choices: tuple[Any, ...]) -> Any:
    """Map HF enum members and names (``IntervalStrategy.STEPS``, ``"STEPS"``) to plain strings."""
    if isinstance(value, enum.Enum) or (
        not isinstance(value, str) and isinstance(getattr(value, "value", None), str)
    ):
        value = value.value
    if not isinstance(value, str) or value in choices:
        return value
    for candidate in (value, value.rsplit(".", 1)[-1]):
        if candidate.lower() in choices:
            return candidate.lower()
    return value


def _normalise_list(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS['list']}")
    if name == "report_to":
        items = list(dict.fromkeys(items))  # drop repeats, keep order
        special = [i for i in items if i in ("all", "none")]
        if special and len(items) > 1:
            raise _Problem(f"report_to={value!r} is invalid: 'all' and 'none' cannot be combined "
                           "with other names")
        if items == ["none"]:
            return []
    for item in items:
        if not _NAME_RE.match(item):
            raise _Problem(f"{name}={value!r} is invalid: {item!r} is not a name ({_NAME_CHARS})")
    return list(items)


def _normalise_dict(name: str, value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _Problem(f"{name}={text!r} is invalid: not a JSON object ({exc})") from exc
        elif name == "optim_args" and "=" in text:
            value = _parse_key_values(text)
        else:
            allowed = "a dict, a JSON object" + (" or 'k=v,k2=v2'" if name == "optim_args" else "")
            raise _Problem(f"{name}={text!r} is invalid: must be {allowed}")
    if not isinstance(value, dict):
        raise _Problem(f"{name}={value!r} is invalid: must be {_KIND_WORDS['dict']}")
    try:
        out = _json_safe(value)
    except TypeError as exc:
        raise _Problem(f"{name}={value!r} is invalid: {exc}") from None
    return typing.cast("dict[str, Any]", out)


def _json_safe(obj: Any) -> Any:
    """A copy of *obj* made of JSON types only (tuples become lists); TypeError otherwise."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("dict keys must be strings")
        return {k: _json_safe(v) for k, v in obj.items()}
    raise TypeError(f"{obj!r} ({type(obj).__name__}) is not JSON-serialisable")


def _parse_key_values(text: str) -> dict[str, Any]:
    """Parse HF's ``"k=v,k2=v2"`` form; values are JSON scalars/lists where they parse."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in parts)):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise _Problem(f"optim_args={text!r} is invalid: {part!r} is not 'key=value'")
        raw = raw.strip()
        raw_json = {"True": "true", "False": "false", "None": "null"}.get(raw, raw)
        raw_json = raw_json.replace("(", "[").replace(")", "]")
        try:
            out[key.strip()] = json.loads(raw_json)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


# ---------------------------------------------------------------------- rules
def _check_rules(a: TrainingArguments, bad: set[str], problems: list[str]) -> None:  # noqa: C901
    p = problems.append

    def ok(*names: str) -> bool:
        return not bad.intersection(names)

    def need(name: str, test: typing.Callable[[Any], bool], allowed: str) -> None:
        """Report *name* unless its value passes *test* (skipped when its type was wrong)."""
        if ok(name) and not test(getattr(a, name)):
            p(f"{name}={getattr(a, name)!r} is invalid: must be {allowed}")

    for spec in argument_specs(type(a)):
        value = getattr(a, spec.name)
        if spec.choices is None or not ok(spec.name) or value in spec.choices:
            continue
        if spec.open_choices:
            need(spec.name, lambda v: bool(_NAME_RE.match(v)), f"a policy name ({_NAME_CHARS})")
        else:
            shown = ", ".join(repr(c) for c in spec.choices)
            p(f"{spec.name}={value!r} is not one of {shown}{_suggest(value, spec.choices)}")

    for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps"):
        need(name, lambda v: v >= 1, ">= 1")
    for name in ("eval_accumulation_steps", "dataloader_prefetch_factor",
                 "torch_empty_cache_steps", "save_total_limit", "early_stopping_patience",
                 "ddp_bucket_cap_mb"):
        need(name, lambda v: v is None or v >= 1, ">= 1 or None")
    for name in ("num_train_epochs", "eval_delay", "learning_rate", "weight_decay", "adam_epsilon",
                 "max_grad_norm", "warmup_steps", "early_stopping_threshold",
                 "dataloader_num_workers", "logging_steps", "save_steps"):
        need(name, lambda v: v >= 0, ">= 0")
    for name in ("seed", "data_seed"):
        need(name, lambda v: v is None or 0 <= v <= _SEED_MAX, f"between 0 and {_SEED_MAX}")
    need("eval_steps", lambda v: v is None or v >= 0, ">= 0 or None")
    for name in ("adam_beta1", "adam_beta2", "label_smoothing_factor"):
        need(name, lambda v: 0 <= v < 1, "in [0, 1)")
    need("warmup_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
    for name in ("power", "report_timeout", "ddp_timeout"):
        need(name, lambda v: v > 0, "> 0")
    need("local_rank", lambda v: v >= -1, ">= -1")
    for name in ("torch_compile_backend", "run_name", "logging_dir", "metric_for_best_model",
                 "resume_from_checkpoint"):
        need(name, lambda v: v is None or v.strip() != "", "a non-empty string or None")

    # *_steps: > 0 and (a ratio < 1 or an integer) under the "steps" strategy.
    for steps, strategy in (("logging_steps", "logging_strategy"), ("eval_steps", "eval_strategy"),
                            ("save_steps", "save_strategy")):
        value = getattr(a, steps)
        if not ok(steps, strategy) or getattr(a, strategy) != "steps":
            continue
        if value is None or value == 0:  # negative values are reported above
            extra = " (or logging_steps > 0, copied when None)" if steps == "eval_steps" else ""
            p(f"{steps}={value!r} is invalid: {strategy}='steps' needs {steps} > 0{extra}")
        elif value > 1 and not float(value).is_integer():
            p(f"{steps}={value!r} is invalid: must be an integer step count or a ratio in (0, 1)")

    no_workers = ok("dataloader_num_workers") and a.dataloader_num_workers == 0
    if no_workers and ok("dataloader_prefetch_factor") and a.dataloader_prefetch_factor is not None:
        p(f"dataloader_prefetch_factor={a.dataloader_prefetch_factor!r} is invalid: needs "
          "dataloader_num_workers > 0")
    if no_workers and ok("dataloader_persistent_workers") and a.dataloader_persistent_workers:
        p("dataloader_persistent_workers=True is invalid: needs dataloader_num_workers > 0")
    if ok("fp16", "bf16") and a.fp16 and a.bf16:
        p("fp16=True and bf16=True: choose at most one mixed precision")
    if ok("fp16_full_eval", "bf16_full_eval") and a.fp16_full_eval and a.bf16_full_eval:
        p("fp16_full_eval=True and bf16_full_eval=True: choose at most one")

    end = a.learning_rate_end
    if ok("learning_rate_end", "lr_scheduler_type", "learning_rate") and end is not None:
        if a.lr_scheduler_type not in SCHEDULERS_WITH_END:
            p(f"learning_rate_end={end!r} is invalid with lr_scheduler_type="
              f"{a.lr_scheduler_type!r}: only {', '.join(SCHEDULERS_WITH_END)} use it")
        elif not 0 <= end < a.learning_rate:
            p(f"learning_rate_end={end!r} is invalid: must be >= 0 and < learning_rate "
              f"({a.learning_rate!r})")

    if ok("optim", "optim_args") and a.optim in _OPTIM_CLASSES and a.optim_args:
        allowed = optimizer_arg_names(a.optim)
        for key in a.optim_args:
            if key not in allowed:
                p(f"optim_args key {key!r} is not accepted by optim={a.optim!r}"
                  f"{_suggest(key, allowed)} (allowed: {', '.join(allowed)})")

    if ok("disable_plugins"):
        for name in a.disable_plugins:
            if not name.strip():
                p(f"disable_plugins={a.disable_plugins!r} is invalid: names must be non-empty")

    evaluates = ok("eval_strategy") and a.eval_strategy != "no"
    if ok("eval_strategy", "load_best_model_at_end") and a.load_best_model_at_end and not evaluates:
        p(f"load_best_model_at_end=True {_NEEDS_EVAL}")
    if ok("save_strategy", "metric_for_best_model") and a.save_strategy == "best" \
            and a.metric_for_best_model is None:
        p("save_strategy='best' needs metric_for_best_model (e.g. 'loss' or 'accuracy')")
    early = [n for n in ("early_stopping_patience", "early_stopping_stopping_threshold",
                         "early_stopping_divergence_threshold") if getattr(a, n) is not None]
    if early and ok("eval_strategy", *early) and not evaluates:
        p(f"{early[0]}={getattr(a, early[0])!r} {_NEEDS_EVAL}")
    stop, div = a.early_stopping_stopping_threshold, a.early_stopping_divergence_threshold
    gib = a.greater_is_better
    thresholds_ok = ok("early_stopping_stopping_threshold", "early_stopping_divergence_threshold",
                       "greater_is_better")
    if thresholds_ok and stop is not None and div is not None and isinstance(gib, bool) \
            and ((div >= stop) if gib else (div <= stop)):
        word = "below" if gib else "above"
        p(f"early_stopping_divergence_threshold={div!r} must be {word} "
          f"early_stopping_stopping_threshold={stop!r} (greater_is_better={gib})")
