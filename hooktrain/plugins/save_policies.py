"""The built-in save policies, registered through ``register_save_policies`` like any third-party one.

``save_strategy`` selects one by name; the ``checkpoint`` plugin creates it and registers it for
the run. A policy is an object answering ``should_save`` (``trylast``, so any other plugin may
force or veto a save by answering first).

* ``"no"`` — never saves.
* ``"steps"`` — after every ``save_steps`` optimizer steps (an integer, or a ratio of
  ``max_steps`` below 1, rounded up), plus the forced save of the last step, as Hugging Face does.
* ``"epoch"`` — at the end of every epoch.
* ``"best"`` — after an evaluation that set a new best ``metric_for_best_model`` (the
  ``best_model`` plugin updates ``state.best_global_step`` in ``on_evaluate``, before the question).

Reads: save_steps.
"""

from __future__ import annotations

from hooktrain.core.markers import hookimpl
from hooktrain.core.state import resolve_steps


class NoSave:
    """``save_strategy="no"``: never save (``trainer.save_checkpoint()`` still works).

    It answers no ``should_save`` at all, so that a run without saves is not asked every step.
    """

    name = "no"


class EveryNSteps:
    """``save_strategy="steps"``: every ``save_steps`` optimizer steps and at the last step."""

    name = "steps"

    def __init__(self, save_steps: float):
        self.save_steps = save_steps

    @hookimpl
    def on_train_begin(self, state):
        state.save_steps = resolve_steps(self.save_steps, state.max_steps)

    @hookimpl(trylast=True)
    def should_save(self, state, trigger):
        if trigger != "step":
            return False
        step = state.global_step
        return step % state.save_steps == 0 or (0 < state.max_steps <= step)


class EveryEpoch:
    """``save_strategy="epoch"``: at the end of every epoch."""

    name = "epoch"

    @hookimpl(trylast=True)
    def should_save(self, trigger):
        return trigger == "epoch"


class OnNewBest:
    """``save_strategy="best"``: when the evaluation that just ran set a new best metric."""

    name = "best"

    @hookimpl(trylast=True)
    def should_save(self, state, metrics):
        return metrics is not None and state.best_global_step == state.global_step


@hookimpl
def register_save_policies(register):
    register("no", lambda args: NoSave())
    register("steps", lambda args: EveryNSteps(args.save_steps))
    register("epoch", lambda args: EveryEpoch())
    register("best", lambda args: OnNewBest())


__all__ = ["EveryEpoch", "EveryNSteps", "NoSave", "OnNewBest", "register_save_policies"]
