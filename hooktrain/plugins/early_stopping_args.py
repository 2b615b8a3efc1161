"""Settings of early stopping (:mod:`hooktrain.plugins.early_stopping`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import NEEDS_EVAL, Checks, arg, config_group

#: The settings that turn early stopping on (any of them not None).
ACTIVATING = ("early_stopping_patience", "early_stopping_stopping_threshold",
              "early_stopping_divergence_threshold")


@config_group
class EarlyStoppingArguments:
    early_stopping_patience: int | None = arg(
        None, "Stop after this many evaluations without improvement; None disables patience-based "
        "stopping.", ge=1)
    early_stopping_threshold: float = arg(
        0.0, "Minimum improvement of the metric that resets the patience count.", ge=0)
    early_stopping_check_finite: bool = arg(True, "Stop when the metric is NaN or infinite.")
    early_stopping_stopping_threshold: float | None = arg(
        None, "Stop as soon as the metric is better than this value.")
    early_stopping_divergence_threshold: float | None = arg(
        None, "Stop as soon as the metric is worse than this value.")


def active(a: Any, c: Checks) -> bool:
    """Whether early stopping is on (its activating settings passed their type checks)."""
    return c.ok(*ACTIVATING) and any(getattr(a, n) is not None for n in ACTIVATING)


def check(a: Any, c: Checks) -> None:
    on = [n for n in ACTIVATING if getattr(a, n) is not None]
    evaluates = c.ok("eval_strategy") and a.eval_strategy != "no"
    if on and c.ok("eval_strategy", *on) and not evaluates:
        c.problem(f"{on[0]}={getattr(a, on[0])!r} {NEEDS_EVAL}")
    stop, div, gib = (a.early_stopping_stopping_threshold, a.early_stopping_divergence_threshold,
                      a.greater_is_better)
    if c.ok("early_stopping_stopping_threshold", "early_stopping_divergence_threshold",
            "greater_is_better") and stop is not None and div is not None \
            and isinstance(gib, bool) and ((div >= stop) if gib else (div <= stop)):
        word = "below" if gib else "above"
        c.problem(f"early_stopping_divergence_threshold={div!r} must be {word} "
                  f"early_stopping_stopping_threshold={stop!r} (greater_is_better={gib})")
