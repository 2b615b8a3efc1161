"""Small value types passed between the loop and plugins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class StepOutcome(NamedTuple):
    """What ``optimizer_step`` did: the pre-clip gradient norm and whether the step was skipped."""

    grad_norm: Any = None  # a 0-d tensor, or None when not computed
    skipped: bool = False


@dataclass
class EvalOutput:
    """What ``evaluation_loop`` returns."""

    loss: float | None
    predictions: Any
    label_ids: Any
    num_samples: int


class EvalPrediction(NamedTuple):
    """The object given to ``compute_metrics``; also unpacks as ``(predictions, label_ids)``."""

    predictions: Any
    label_ids: Any
