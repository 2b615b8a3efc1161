"""Early stopping on an evaluation metric.

Active when ``early_stopping_patience``, ``early_stopping_stopping_threshold`` or
``early_stopping_divergence_threshold`` is set. The metric is ``metric_for_best_model``
(``"loss"``, i.e. ``eval_loss``, when unset) and its direction ``greater_is_better``.

After each evaluation of a training run:

* a NaN or infinite value stops the run (``early_stopping_check_finite``, on by default);
* a value better than ``early_stopping_stopping_threshold`` stops it (the goal is reached);
* a value worse than ``early_stopping_divergence_threshold`` stops it (the run diverged);
* a value better than this plugin's own best by more than ``early_stopping_threshold`` resets
  the patience count and becomes the best; any other value adds one, and the run stops when the
  count reaches ``early_stopping_patience``.

The count and the best value are stored in every checkpoint (key ``"early_stopping"``) and come
back on resume, so a resumed run continues its patience count.

Reads: early_stopping_patience, early_stopping_threshold, early_stopping_check_finite,
early_stopping_stopping_threshold, early_stopping_divergence_threshold, metric_for_best_model,
greater_is_better.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hooktrain.core.markers import hookimpl
from hooktrain.core.monitor import Monitor
from hooktrain.plugins.early_stopping_args import ACTIVATING

logger = logging.getLogger("hooktrain")

STATE_KEY = "early_stopping"


def is_active(args: Any) -> bool:
    return any(getattr(args, name) is not None for name in ACTIVATING)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


class EarlyStopping:
    """The stopping rule, fed one evaluation value at a time through :meth:`update`.

    :param monitor: the metric, its direction and the improvement threshold.
    :param patience: stop after this many evaluations in a row without an improvement; ``None``
        disables the patience rule (the other rules still apply).
    :param check_finite: stop on a NaN or infinite value.
    :param stopping_threshold: stop as soon as a value is better than this.
    :param divergence_threshold: stop as soon as a value is worse than this.
    """

    def __init__(
        self,
        monitor: Monitor,
        patience: int | None = None,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
    ):
        self.monitor = monitor
        self.patience = patience
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.best: float | None = None
        self.best_step: int | None = None
        self.counter = 0
        self._training = False
        self._decision: tuple[int, str | None] | None = None  # (step, reason) of the last evaluation

    # ---- the rule -------------------------------------------------------------------------

    def update(self, value: float, step: int) -> str | None:
        """Account for one evaluation's *value* at *step*; return a reason to stop, or ``None``."""
        m = self.monitor
        if m.is_improvement(value, self.best):
            self.best, self.best_step, self.counter = value, step, 0
        else:
            self.counter += 1
        if self.check_finite and not math.isfinite(value):
            return f"early stopping: {m.name} is {value}"
        if self.stopping_threshold is not None and m.is_better(value, self.stopping_threshold):
            return (f"early stopping: {m.name}={_fmt(value)} reached the stopping threshold "
                    f"{self.stopping_threshold}")
        if self.divergence_threshold is not None and m.is_better(self.divergence_threshold, value):
            return (f"early stopping: {m.name}={_fmt(value)} diverged beyond "
                    f"{self.divergence_threshold}")
        if self.patience is not None and self.counter >= self.patience:
            plural = "" if self.counter == 1 else "s"
            best_at = "" if self.best_step is None else f" at step {self.best_step}"
            return (f"early stopping: {m.name} did not improve by more than {m.threshold} for "
                    f"{self.counter} evaluation{plural} (best {_fmt(self.best)}{best_at})")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.monitor.name, "best": self.best, "best_step": self.best_step,
                "counter": self.counter}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved.get("metric") != self.monitor.name:
            logger.warning(
                "early stopping: the checkpoint counted %r, this run monitors %r; starting a new count",
                saved.get("metric"), self.monitor.name)
            return
        best = saved.get("best")
        self.best = None if best is None else float(best)
        self.best_step = saved.get("best_step")
        self.counter = int(saved.get("counter", 0))

    # ---- hooks ----------------------------------------------------------------------------

    @hookimpl
    def on_train_begin(self):
        self._training = True
        self._decision = None

    @hookimpl
    def on_evaluate(self, state, metrics):
        # Counted here, before the step's save, so that checkpoint holds this evaluation's count.
        if not self._training or state.global_step == 0:
            return  # outside train(), or eval_on_start's look at the untrained model
        value = self.monitor.value(metrics)
        self._decision = (state.global_step, self.update(value, state.global_step))

    @hookimpl
    def should_stop(self, state, metrics):
        if metrics is None or self._decision is None or self._decision[0] != state.global_step:
            return None
        return self._decision[1]

    @hookimpl
    def on_train_end(self):
        self._training = False

    @hookimpl
    def plugin_state(self):
        return STATE_KEY, self.state_dict()

    @hookimpl
    def load_plugin_state(self, states):
        saved = states.get(STATE_KEY)
        if saved:
            self.load_state_dict(saved)


@hookimpl
def configure(trainer, args):
    if not is_active(args):
        return
    monitor = Monitor(args.metric_for_best_model, args.greater_is_better,  # args default it to "loss"
                      args.early_stopping_threshold)
    trainer.plugin_manager.register(
        EarlyStopping(
            monitor,
            patience=args.early_stopping_patience,
            check_finite=args.early_stopping_check_finite,
            stopping_threshold=args.early_stopping_stopping_threshold,
            divergence_threshold=args.early_stopping_divergence_threshold,
        ),
        name="early_stopping.rule",
    )
