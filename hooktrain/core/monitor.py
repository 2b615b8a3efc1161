"""A monitored evaluation metric: its full name, its direction and what counts as an improvement.

Shared by the plugins that rank evaluations (best-checkpoint tracking, early stopping). It knows
nothing of the arguments: the plugin that owns a config group builds a :class:`Monitor` from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hooktrain.core.errors import HooktrainError

__all__ = ["BUILTIN_EVAL_METRICS", "MetricNotFoundError", "Monitor"]

EVAL_PREFIX = "eval_"
#: What ``Trainer.evaluate()`` returns without ``compute_metrics``: the loss and the timings.
BUILTIN_EVAL_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


class MetricNotFoundError(HooktrainError, KeyError):
    """The monitored metric is not among an evaluation's metrics (the message lists those present)."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class Monitor:
    """One evaluation metric to rank evaluations by.

    :param metric: the metric's name, with or without the ``eval_`` prefix.
    :param greater_is_better: the direction; ``None`` means higher is better unless the name
        ends with ``loss``.
    :param threshold: an improvement must exceed this (absolute, >= 0) to count.
    """

    def __init__(self, metric: str, greater_is_better: bool | None = None, threshold: float = 0.0):
        if not isinstance(metric, str) or not metric.strip():
            raise ValueError(f"a monitored metric needs a non-empty name, got {metric!r}")
        if threshold < 0 or math.isnan(threshold):
            raise ValueError(f"threshold={threshold!r} must be >= 0")
        self.name = metric if metric.startswith(EVAL_PREFIX) else EVAL_PREFIX + metric
        self.greater_is_better = (
            not self.name.endswith("loss") if greater_is_better is None else bool(greater_is_better)
        )
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        mode = "max" if self.greater_is_better else "min"
        return f"Monitor({self.name!r}, {mode}, threshold={self.threshold!r})"

    def value(self, metrics: Mapping[str, Any]) -> float:
        """The monitored value in *metrics*; :class:`MetricNotFoundError` lists the keys when absent."""
        if self.name not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            raise MetricNotFoundError(
                f"the monitored metric {self.name!r} is not in the evaluation's metrics (available: "
                f"{available}); set metric_for_best_model to one of them (the 'eval_' prefix is "
                "optional) or return it from compute_metrics"
            )
        return float(metrics[self.name])

    def is_better(self, value: float, reference: float) -> bool:
        """Whether *value* is strictly better than *reference* in this metric's direction."""
        return value > reference if self.greater_is_better else value < reference

    def is_improvement(self, value: float, best: float | None) -> bool:
        """Whether *value* beats *best* by more than the threshold.

        Anything finite improves on ``None``; a NaN or infinite value is never an improvement.
        """
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return self.is_better(value, best) and abs(value - best) > self.threshold
