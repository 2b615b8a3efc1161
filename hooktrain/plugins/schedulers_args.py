"""Settings of the learning-rate schedules (:mod:`hooktrain.plugins.schedulers`); torch-free.

:data:`SCHEDULER_KWARGS` is the one table of ``lr_scheduler_type`` names.
"""

from __future__ import annotations

import math
from typing import Any

from hooktrain.core.settings import Checks, arg, config_group, int_or_ratio

#: ``lr_scheduler_type`` name → the ``lr_scheduler_kwargs`` it accepts.
SCHEDULER_KWARGS: dict[str, frozenset[str]] = {
    "linear": frozenset(),
    "cosine": frozenset({"num_cycles"}),
    "cosine_with_restarts": frozenset({"num_cycles"}),
    "polynomial": frozenset({"lr_end", "power"}),
    "constant": frozenset(),
    "constant_with_warmup": frozenset(),
    "inverse_sqrt": frozenset({"timescale"}),
}
SCHEDULERS = tuple(SCHEDULER_KWARGS)
#: Schedules that decay towards a final value, so ``learning_rate_end`` means something.
SCHEDULERS_WITH_END = ("cosine", "cosine_with_restarts", "polynomial")


@config_group
class SchedulersArguments:
    lr_scheduler_type: str = arg("linear", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_scheduler_kwargs: dict[str, Any] | None = arg(
        None, "Extra keywords for the scheduler: a dict or a JSON object.")
    warmup_ratio: float = arg(
        0.0, "Warmup length as a share of the total steps (rounded up); used when warmup_steps is 0.",
        ge=0, le=1)
    warmup_steps: float = arg(
        0, "Warmup steps (>= 1, truncated to an integer) or a ratio in (0, 1); wins over "
        "warmup_ratio when > 0.", ge=0, normalise=int_or_ratio)
    learning_rate_end: float | None = arg(
        None, "Final learning rate of cosine, cosine_with_restarts and polynomial (>= 0, < "
        "learning_rate); None: 0 (polynomial: 1e-7).")
    power: float = arg(1.0, "Power of the polynomial schedule (> 0).", gt=0)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps for a run of *num_training_steps* optimizer steps (HF rounding).

        ``warmup_steps`` wins when > 0: a value >= 1 is truncated to an int, a ratio < 1 is
        ``ceil(num_training_steps * ratio)``; otherwise ``ceil(num_training_steps * warmup_ratio)``.
        """
        ws = self.warmup_steps
        if ws > 0:
            return int(ws) if ws >= 1 else math.ceil(num_training_steps * ws)
        return math.ceil(num_training_steps * self.warmup_ratio)


def check(a: Any, c: Checks) -> None:
    end = a.learning_rate_end
    if c.ok("learning_rate_end", "lr_scheduler_type", "learning_rate") and end is not None:
        if a.lr_scheduler_type not in SCHEDULERS_WITH_END:
            c.problem(f"learning_rate_end={end!r} is invalid with lr_scheduler_type="
                      f"{a.lr_scheduler_type!r}: only {', '.join(SCHEDULERS_WITH_END)} use it")
        elif not 0 <= end < a.learning_rate:
            c.problem(f"learning_rate_end={end!r} is invalid: must be >= 0 and < learning_rate "
                      f"({a.learning_rate!r})")
