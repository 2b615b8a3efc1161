"""hooktrain: a small, fast PyTorch training loop whose every feature is a pluggy plugin.

Configure a run with :class:`TrainingArguments`, train with :class:`Trainer`, extend with
plugins: objects or modules whose functions are marked ``@hooktrain.hookimpl`` and named after
the hooks of ``hooktrain.core.hookspecs`` (see docs/hooks.md and docs/writing-plugins.md).
"""

from __future__ import annotations

__version__ = "0.1.0"

from hooktrain.core.args import TrainingArguments
from hooktrain.core.errors import ArgumentError, CheckpointError, HooktrainError, PluginLoadError
from hooktrain.core.loop import Trainer, TrainOutput
from hooktrain.core.markers import hookimpl, hookspec
from hooktrain.core.reporter import Reporter
from hooktrain.core.state import TrainerState
from hooktrain.core.types import EvalPrediction, StepOutcome

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "EvalPrediction",
    "HooktrainError",
    "PluginLoadError",
    "Reporter",
    "StepOutcome",
    "TrainOutput",
    "Trainer",
    "TrainerState",
    "TrainingArguments",
    "hookimpl",
    "hookspec",
    "__version__",
]
