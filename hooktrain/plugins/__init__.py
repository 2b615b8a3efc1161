"""hooktrain's built-in plugins: one module per config group, registered like third-party ones.

A config group's settings (fields, choices, rules, derived defaults) live beside its plugin, in
the torch-free ``<group>_args.py`` module that :data:`BUILTINS` names; ``TrainingArguments`` is
composed from them (:mod:`hooktrain.core.settings`).
"""

from __future__ import annotations

from typing import NamedTuple


class Builtin(NamedTuple):
    """A built-in plugin: its name, its module, and the module of its settings (if any)."""

    name: str
    module: str
    settings: str | None = None


_P = "hooktrain.plugins."

#: THE list of built-in plugins, in registration order. pluggy calls the newest registration
#: first, so ``distributed`` is last: its ``configure`` runs first and every other plugin sees
#: the process rank, device and wrapped model it sets up. The config groups appear in
#: ``TrainingArguments``, ``--help`` and docs/arguments.md in this order, after the core's.
BUILTINS: tuple[Builtin, ...] = (
    Builtin("training", _P + "training", _P + "training_args"),
    Builtin("optimizers", _P + "optimizers", _P + "optimizers_args"),
    Builtin("schedulers", _P + "schedulers", _P + "schedulers_args"),
    Builtin("precision", _P + "precision", _P + "precision_args"),
    Builtin("gradient_checkpointing", _P + "gradient_checkpointing", _P + "gradient_checkpointing_args"),
    Builtin("compile", _P + "compile", _P + "compile_args"),
    Builtin("progress", _P + "progress", _P + "progress_args"),
    Builtin("reporting", _P + "reporting", _P + "reporting_args"),
    Builtin("checkpoint", _P + "checkpoint", _P + "checkpoint_args"),
    Builtin("save_policies", _P + "save_policies"),
    Builtin("best_model", _P + "best_model", _P + "best_model_args"),
    Builtin("early_stopping", _P + "early_stopping", _P + "early_stopping_args"),
    Builtin("throughput", _P + "throughput", _P + "throughput_args"),
    Builtin("preemption", _P + "preemption", _P + "preemption_args"),
    Builtin("reporters.tensorboard", _P + "reporters.tensorboard"),
    Builtin("reporters.wandb", _P + "reporters.wandb"),
    Builtin("reporters.mlflow", _P + "reporters.mlflow"),
    Builtin("reporters.comet", _P + "reporters.comet"),
    Builtin("hf_callbacks", _P + "hf_callbacks"),
    Builtin("fsdp", _P + "fsdp", _P + "fsdp_args"),
    Builtin("distributed", _P + "distributed", _P + "distributed_args"),
)
