"""Best-checkpoint tracking and ``load_best_model_at_end``.

Active when ``load_best_model_at_end`` is on or ``metric_for_best_model`` is set. After every
evaluation of a training run, a strictly better ``metric_for_best_model`` (direction from
``greater_is_better``) updates ``state.best_metric`` and ``state.best_global_step``. With
``load_best_model_at_end`` a new best is saved on the spot, even on a step the save policy would
skip, so the best weights always exist on disk; the best checkpoint
is kept by ``save_total_limit`` rotation, and at the end of training its weights are loaded into
``trainer.model``. With ``metric_for_best_model`` alone the best is tracked but the save policy
decides what is saved: ``best_model_checkpoint`` is then ``None`` while the newest best is not on
disk.

Reads: load_best_model_at_end, metric_for_best_model, greater_is_better.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hooktrain.checkpointing.format import checkpoint_name, checkpoint_step
from hooktrain.core.markers import hookimpl
from hooktrain.core.monitor import BUILTIN_EVAL_METRICS, Monitor

logger = logging.getLogger("hooktrain")



def is_active(args: Any) -> bool:
    return bool(args.load_best_model_at_end) or args.metric_for_best_model is not None


class BestModel:
    """Tracks the best evaluation of a run in ``TrainerState`` and materialises its checkpoint."""

    def __init__(self, monitor: Monitor, load_at_end: bool):
        self.monitor = monitor
        self.load_at_end = load_at_end  # also: save a new best even when the save policy would not
        self._training = False
        self._new_best_step: int | None = None  # the step whose evaluation just set a new best
        self._last_save: tuple[int, str] | None = None  # (step, dir) of this run's latest save
        self._policy: Any = None  # the should_save hook without this plugin, set per train()

    @hookimpl
    def on_train_begin(self, trainer):
        self._training = True
        self._new_best_step = None
        # What the other should_save implementations (the save policy) answer without this one.
        self._policy = trainer.plugin_manager.subset_hook_caller("should_save", remove_plugins=[self])

    @hookimpl
    def on_evaluate(self, state, metrics):
        if not self._training:
            return  # trainer.evaluate() outside train(): a look, not part of the run's ranking
        value = self.monitor.value(metrics)  # a missing metric is an error at the first evaluation
        step = state.global_step
        if step == 0:
            return  # eval_on_start: the untrained model is no candidate (no checkpoint of step 0)
        if not self.monitor.is_improvement(value, state.best_metric):
            return
        state.best_metric = value
        state.best_global_step = step
        self._new_best_step = step
        saved = self._last_save
        # The step may already be on disk (a step save, then the epoch's evaluation at that step).
        state.best_model_checkpoint = saved[1] if saved is not None and saved[0] == step else None

    @hookimpl(tryfirst=True)
    def should_save(self, trainer, args, state, metrics, trigger):
        """Save a new best now (with ``load_best_model_at_end``), whatever the save policy says.

        Without it the policy decides. Either way, when the new best is about to be saved,
        ``best_model_checkpoint`` names it already, so the checkpoint's ``trainer_state.json``
        records itself as the best (as Hugging Face's does).
        """
        if metrics is None or self._new_best_step != state.global_step:
            return None
        wanted = self.load_at_end or (self._policy is not None and bool(self._policy(
            trainer=trainer, args=args, state=state, metrics=metrics, trigger=trigger)))
        if wanted and state.best_model_checkpoint is None:
            state.best_model_checkpoint = os.path.join(args.output_dir, checkpoint_name(state.global_step))
        return wanted

    @hookimpl
    def on_save(self, state, checkpoint_dir):
        # a checkpoint written in the background is announced at a later step: use its own step
        step = checkpoint_step(checkpoint_dir)
        if step is None:
            step = state.global_step
        self._last_save = (step, str(checkpoint_dir))
        if state.best_global_step == step:
            state.best_model_checkpoint = str(checkpoint_dir)

    @hookimpl
    def protected_checkpoints(self, state):
        return [Path(state.best_model_checkpoint).name] if state.best_model_checkpoint else None

    @hookimpl
    def on_train_end(self, trainer, state, status):
        self._training = False
        if not self.load_at_end or status not in ("completed", "stopped"):
            return
        if state.best_global_step is None:
            logger.warning(
                "load_best_model_at_end: no evaluation ranked a best model (%s); keeping the final "
                "weights", self.monitor.name)
            return
        path = state.best_model_checkpoint
        if not path or not os.path.isdir(path):
            logger.warning(
                "load_best_model_at_end: the best model (step %d, %s=%s) has no checkpoint on disk%s; "
                "keeping the final weights", state.best_global_step, self.monitor.name,
                state.best_metric, f" ({path} is gone)" if path else "")
            return
        from hooktrain.checkpointing.tensors import load_model_weights

        load_model_weights(trainer.model, path)
        logger.info(
            "loaded the best model from step %d (%s=%s) out of %s",
            state.best_global_step, self.monitor.name, f"{state.best_metric:.6g}", path)


@hookimpl
def validate_args(trainer, args):
    if not is_active(args):
        return None
    problems = []
    name = Monitor(args.metric_for_best_model).name
    if name not in BUILTIN_EVAL_METRICS and (trainer.compute_metrics is None or args.prediction_loss_only):
        why = "prediction_loss_only=True" if args.prediction_loss_only else "without compute_metrics"
        problems.append(
            f"metric_for_best_model={args.metric_for_best_model!r} is not produced by the evaluation: "
            f"{why} it returns only {', '.join(BUILTIN_EVAL_METRICS)}; pass compute_metrics=... to "
            "Trainer (with prediction_loss_only=False) or choose one of those")
    return problems


@hookimpl
def configure(trainer, args):
    if not is_active(args):
        return
    monitor = Monitor(args.metric_for_best_model, args.greater_is_better)  # args default it to "loss"
    trainer.plugin_manager.register(
        BestModel(monitor, bool(args.load_best_model_at_end)), name="best_model.tracker")
