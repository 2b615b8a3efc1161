"""Settings of best-model tracking (:mod:`hooktrain.plugins.best_model`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import NEEDS_EVAL, Checks, arg, config_group
from hooktrain.plugins import early_stopping_args


@config_group
class BestModelArguments:
    load_best_model_at_end: bool = arg(
        False, "Reload the best checkpoint's weights at the end; needs evaluation. A new best is "
        "saved when found, so eval and save strategies need not match.")
    metric_for_best_model: str | None = arg(
        None, "Eval metric that ranks checkpoints (eval_ prefix optional); None means 'loss' when "
        "load_best_model_at_end or early stopping is on.", nonempty=True)
    greater_is_better: bool | None = arg(
        None, "Whether a larger metric is better; None means True unless the metric name ends with "
        "'loss'.")


def derive(a: Any, c: Checks) -> None:
    wants_metric = a.load_best_model_at_end is True or early_stopping_args.active(a, c)
    if c.ok("metric_for_best_model") and a.metric_for_best_model is None and wants_metric:
        c.put("metric_for_best_model", "loss")
    metric = a.metric_for_best_model
    if c.ok("greater_is_better", "metric_for_best_model") and a.greater_is_better is None \
            and isinstance(metric, str) and metric:
        c.put("greater_is_better", not metric.endswith("loss"))


def check(a: Any, c: Checks) -> None:
    evaluates = c.ok("eval_strategy") and a.eval_strategy != "no"
    if c.ok("eval_strategy", "load_best_model_at_end") and a.load_best_model_at_end and not evaluates:
        c.problem(f"load_best_model_at_end=True {NEEDS_EVAL}")
