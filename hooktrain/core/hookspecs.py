"""Hook specifications: the whole interface between the loop and the plugins.

Five kinds of hooks, each with one calling rule:

* **Plugin system and registries** — every implementation runs.
* **Events** — notifications; every implementation runs; return values are ignored.
* **Contributions** — every implementation runs; the loop merges what they return.
* **Decisions** — ``firstresult``: the first non-``None`` answer wins; built-in answers are ``trylast``.
* **Actions** — ``firstresult`` overridable steps of the loop (optimizer, scheduler, training step,
  backward, optimizer step, evaluation); the built-in implementation is ``trylast``.

Arguments are keyword-only; an implementation may accept any subset of them. Reporters are
not hooks: they are objects with ``report_*`` methods (:class:`hooktrain.Reporter`), added
through ``register_reporters``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from hooktrain.core.markers import hookspec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

    import torch

    from hooktrain.core.args import TrainingArguments
    from hooktrain.core.loop import Trainer
    from hooktrain.core.state import TrainerState
    from hooktrain.core.types import EvalOutput, LossItems, StepOutcome

__all__ = [
    "validate_args",
    "configure",
    "register_reporters",
    "register_save_policies",
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_train_batch",
    "on_step_end",
    "on_log",
    "on_evaluate",
    "on_predict",
    "on_save",
    "on_epoch_end",
    "on_train_end",
    "on_exception",
    "on_interrupt",
    "extra_logs",
    "summary_logs",
    "protected_checkpoints",
    "plugin_state",
    "load_plugin_state",
    "should_save",
    "should_stop",
    "should_end_epoch",
    "count_loss_items",
    "create_optimizer",
    "create_scheduler",
    "training_step",
    "backward",
    "optimizer_step",
    "evaluation_loop",
    "reduce_mean",
    "save_checkpoint",
    "save_model",
    "resume_checkpoint",
]

Trigger = Literal["step", "epoch", "train_end"]


# ---- Plugin system ---------------------------------------------------------------------


@hookspec
def validate_args(trainer: Trainer, args: TrainingArguments) -> list[str] | None:
    """Check the settings of the config group you own, once per :class:`Trainer`.

    Called after every plugin has registered and every registry is filled, before
    ``configure``. Return a list of problems (each naming the field, its value and what is
    allowed) or ``None``; the Trainer raises one :class:`ArgumentError` listing the problems of
    every plugin. Raising ``ArgumentError`` directly also works.

    :param trainer: the Trainer being built (model, datasets and registries are set).
    :param args: the run's arguments.
    """


@hookspec
def configure(trainer: Trainer, args: TrainingArguments) -> None:
    """Activate your config group: register stateful plugin objects when *args* enable it.

    Called once per :class:`Trainer`, after ``validate_args``. Register objects with
    ``trainer.plugin_manager.register(obj, name=...)``.

    :param trainer: the Trainer being built.
    :param args: the run's arguments.
    """


@hookspec
def register_reporters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add reporters to the open reporter registry.

    Call ``register(name, factory)``; ``factory(args)`` returns the reporter: an object with
    ``report_*`` methods, usually a :class:`hooktrain.Reporter` subclass (docs/reporters.md).
    ``args.report_to`` selects reporters by name. A reporter is not registered as a plugin,
    unless it also implements hooks (marked ``@hookimpl``): then it is registered as
    ``reporter.<name>`` for those hooks.

    :param register: the registry's ``register(name, factory)`` function.
    """


@hookspec
def register_save_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add save policies to the open save-policy registry.

    Call ``register(name, factory)``; ``factory(args)`` returns a plugin object implementing
    ``should_save``. ``args.save_strategy`` selects one by name.

    :param register: the registry's ``register(name, factory)`` function.
    """


# ---- Events: every implementation runs; return values are ignored -------------------------


@hookspec
def on_train_begin(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> None:
    """Training starts: the model, optimizer and scheduler exist, a checkpoint (if any) is loaded.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec
def on_epoch_begin(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> None:
    """An epoch starts (``state.epoch`` is the number of epochs done so far).

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec
def on_step_begin(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> None:
    """An optimizer step starts (before its first micro-batch).

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec
def on_train_batch(trainer: Trainer, batch: Any) -> None:
    """A training micro-batch, as the data loader gave it (before it moves to the device).

    Observe it (count samples or tokens); never change it. Called for every micro-batch on every
    process, so keep it cheap and do no device work.

    :param trainer: the Trainer.
    :param batch: the collated micro-batch, on the host.
    """


@hookspec
def on_step_end(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> None:
    """An optimizer step ended: ``state.global_step`` and ``state.epoch`` are updated.

    Fires before that step's log, evaluation and save.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec
def on_log(
    trainer: Trainer, args: TrainingArguments, state: TrainerState, logs: dict[str, Any]
) -> None:
    """Something was logged: training logs, evaluation metrics or the final summary.

    ``logs`` is a fresh dict for each implementation; changing it affects nobody else. The same
    values (plus ``step``) were appended to ``state.log_history``.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param logs: the logged values.
    """


@hookspec
def on_evaluate(
    trainer: Trainer, args: TrainingArguments, state: TrainerState, metrics: dict[str, float]
) -> None:
    """An evaluation finished; *metrics* carry the ``eval_`` prefix.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param metrics: the evaluation metrics (a fresh dict for each implementation).
    """


@hookspec
def on_predict(
    trainer: Trainer, args: TrainingArguments, state: TrainerState, metrics: dict[str, float]
) -> None:
    """``Trainer.predict`` finished; *metrics* carry its prefix (``test_`` by default). Nothing
    was logged.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param metrics: the prediction metrics (a fresh dict for each implementation).
    """


@hookspec
def on_save(
    trainer: Trainer, args: TrainingArguments, state: TrainerState, checkpoint_dir: Path
) -> None:
    """A checkpoint is complete on disk under its final name (committed). Emitted on the
    training thread; for a checkpoint written in the background, at the first step boundary after
    its commit (or before ``train()`` returns), so ``state.global_step`` may be past its step.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param checkpoint_dir: the checkpoint's directory (``checkpoint-{step}``).
    """


@hookspec
def on_epoch_end(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> None:
    """An epoch ended (also when it was cut short by ``max_steps`` or a stop).

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec
def on_train_end(
    trainer: Trainer,
    args: TrainingArguments,
    state: TrainerState,
    status: Literal["completed", "stopped", "interrupted", "failed"],
) -> None:
    """Training ended; every implementation runs even if one raises (then ``train()`` raises the first error).

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param status: ``"completed"``, ``"stopped"`` (a plugin or Ctrl-C stopped it), ``"interrupted"``
        (``request_interrupt``: see ``on_interrupt``) or ``"failed"``.
    """


@hookspec
def on_exception(
    trainer: Trainer, args: TrainingArguments, state: TrainerState, error: BaseException
) -> None:
    """Training raised *error*; observe it (flush, clean up). The loop re-raises it afterwards,
    except a ``KeyboardInterrupt``: then ``train()`` ends the run with status ``"stopped"`` and returns.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param error: the exception (``KeyboardInterrupt`` included).
    """


@hookspec
def on_interrupt(trainer: Trainer, args: TrainingArguments, state: TrainerState, reason: str) -> None:
    """Training stopped at a check point after ``trainer.request_interrupt(reason)``; save what must
    survive now (the preemption plugin writes its checkpoint here).

    ``state`` is at the last completed optimizer step: a step in progress was dropped and an
    evaluation in progress abandoned. ``state.stop_reason`` is *reason*; then the summary is
    logged and ``on_train_end`` follows with the status ``"interrupted"``.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param reason: what the interrupt was requested for (e.g. ``"preempted by SIGTERM"``).
    """


# ---- Contributions: every implementation runs; the loop merges the returned values ------


@hookspec
def extra_logs(trainer: Trainer, state: TrainerState) -> Mapping[str, float] | None:
    """Scalars to add to the training log being built (contribute by return, never mutate).

    :param trainer: the Trainer.
    :param state: the run's state.
    """


@hookspec
def summary_logs(trainer: Trainer, state: TrainerState) -> Mapping[str, float] | None:
    """Scalars to add to the end-of-run summary (``train_runtime``, ``train_loss``, …); contribute
    by return. Called on every process at the same point, once per ``train()``.

    :param trainer: the Trainer.
    :param state: the run's state.
    """


@hookspec
def protected_checkpoints(trainer: Trainer, state: TrainerState) -> Iterable[str] | None:
    """Checkpoint directory names that ``save_total_limit`` rotation must keep (e.g. the best).

    :param trainer: the Trainer.
    :param state: the run's state.
    """


@hookspec
def plugin_state(trainer: Trainer) -> tuple[str, dict[str, Any]] | None:
    """Return ``(unique key, JSON-safe state)`` to store in every checkpoint.

    :param trainer: the Trainer.
    """


@hookspec
def load_plugin_state(trainer: Trainer, states: Mapping[str, dict[str, Any]]) -> None:
    """Restore your state from ``states[key]`` (the key you returned from ``plugin_state``).

    Called on resume, after the model, optimizer and scheduler are restored.

    :param trainer: the Trainer.
    :param states: every plugin's saved state, by key.
    """


# ---- Decisions: firstresult; the first non-None answer wins ------------------------------


@hookspec(firstresult=True)
def should_save(
    trainer: Trainer,
    args: TrainingArguments,
    state: TrainerState,
    metrics: dict[str, float] | None,
    trigger: Trigger,
) -> bool | None:
    """Whether to save a checkpoint now. Stops at first non-None result.

    Asked after every optimizer step (after that step's evaluation, whose metrics it gets;
    else ``metrics=None``; ``trigger="step"``), at every epoch end (``trigger="epoch"``) and
    once at the end of training (``trigger="train_end"``). The policy selected by
    ``save_strategy`` answers by default; a ``tryfirst`` implementation may force or veto.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param metrics: the metrics of an evaluation that just ran at this point, else ``None``.
    :param trigger: ``"step"``, ``"epoch"`` or ``"train_end"``.
    """


@hookspec(firstresult=True)
def should_stop(
    trainer: Trainer,
    args: TrainingArguments,
    state: TrainerState,
    metrics: dict[str, float] | None,
) -> str | None:
    """A reason to stop training now, or ``None``. Stops at first non-None result.

    Asked after every optimizer step, after that step's log, evaluation and save, and at every
    epoch end, after that epoch's.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    :param metrics: the metrics of an evaluation that just ran at this step, else ``None``.
    """


@hookspec(firstresult=True)
def should_end_epoch(trainer: Trainer, args: TrainingArguments, state: TrainerState) -> bool | None:
    """Whether to end the current epoch now; training goes on with the next one. Stops at first non-None result.

    Asked after every optimizer step, after ``should_stop``, only when a plugin implements it.
    The epoch's end (``on_epoch_end``, its log, evaluation and save) follows as usual.

    :param trainer: the Trainer.
    :param args: the run's arguments.
    :param state: the run's state.
    """


@hookspec(firstresult=True)
def count_loss_items(trainer: Trainer, batches: list[Any]) -> LossItems | None:
    """How the loss of one accumulation window is normalised. Stops at first non-None result.

    Asked once per optimizer step, before the window's forward passes, when a plugin implements
    it. A :class:`~hooktrain.core.types.LossItems` makes every micro-batch's loss a share of
    the window's (``training_step`` gets ``num_items_in_batch``; the loop sums the shares,
    multiplied by ``scale``, and does not divide by the window's length); ``None`` keeps the
    mean of the micro-batches' mean losses.

    :param trainer: the Trainer.
    :param batches: the window's collated micro-batches, as the loader yields them.
    """


# ---- Actions: firstresult with a trylast built-in -----------------------------------------


@hookspec(firstresult=True)
def create_optimizer(
    trainer: Trainer, model: torch.nn.Module, args: TrainingArguments
) -> torch.optim.Optimizer | None:
    """Build the optimizer. Stops at first non-None result.

    :param trainer: the Trainer.
    :param model: the model to optimise.
    :param args: the run's arguments.
    """


@hookspec(firstresult=True)
def create_scheduler(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    args: TrainingArguments,
    num_training_steps: int,
) -> Any | None:
    """Build the learning-rate scheduler (stepped once per optimizer step). Stops at first non-None result.

    :param trainer: the Trainer.
    :param optimizer: the optimizer.
    :param args: the run's arguments.
    :param num_training_steps: the total number of optimizer steps (``state.max_steps``).
    """


@hookspec(firstresult=True)
def training_step(
    trainer: Trainer, model: torch.nn.Module, batch: Any, num_items_in_batch: Any
) -> torch.Tensor | None:
    """Compute the loss of one micro-batch (forward pass only). Stops at first non-None result.

    Precision plugins wrap this hook (``wrapper=True``) to run it under autocast. With
    *num_items_in_batch* the loss is the micro-batch's summed loss divided by it (Hugging Face's
    meaning); an implementation that does not take the argument turns that counting off.

    :param trainer: the Trainer.
    :param model: the model in training mode (possibly wrapped, e.g. by DDP).
    :param batch: the collated micro-batch, on the model's device.
    :param num_items_in_batch: the loss items of the whole window (``count_loss_items``), or
        ``None``: the micro-batch's own mean loss.
    """


@hookspec(firstresult=True)
def backward(trainer: Trainer, loss: torch.Tensor) -> bool | None:
    """Back-propagate *loss* (already normalised for its window). Stops at first non-None result.

    Return ``True`` when done.

    :param trainer: the Trainer.
    :param loss: the scaled loss of one micro-batch.
    """


@hookspec(firstresult=True)
def optimizer_step(
    trainer: Trainer,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    need_grad_norm: bool,
) -> StepOutcome | None:
    """Clip the gradients and step the optimizer. Stops at first non-None result.

    Return a :class:`~hooktrain.core.types.StepOutcome`: the pre-clip gradient norm (a tensor,
    or ``None`` when it was not computed) and whether the step was skipped (e.g. inf gradients
    under fp16; the scheduler then does not step).

    :param trainer: the Trainer.
    :param model: the model.
    :param optimizer: the optimizer.
    :param need_grad_norm: the norm will be logged after this step; compute it even if not clipping.
    """


@hookspec(firstresult=True)
def evaluation_loop(
    trainer: Trainer, model: torch.nn.Module, dataloader: Iterable[Any]
) -> EvalOutput | None:
    """Run the model over the evaluation data. Stops at first non-None result.

    Return an :class:`~hooktrain.core.types.EvalOutput` (mean loss, predictions, labels,
    sample count). Precision plugins wrap this hook for half-precision evaluation.

    :param trainer: the Trainer.
    :param model: the model, in eval mode.
    :param dataloader: the evaluation batches.
    """


@hookspec(firstresult=True)
def reduce_mean(trainer: Trainer, value: torch.Tensor) -> torch.Tensor | None:
    """Average *value* over the processes of the run. Stops at first non-None result.

    The loop calls it on every process at the same points (when it closes a training-loss
    logging window, and for the run's ``train_loss``), so the logged loss is the mean over all
    processes. A multi-process plugin answers; with none, nobody does and the local value is kept.

    :param trainer: the Trainer.
    :param value: this process's value, a float64 tensor on the CPU.
    """


@hookspec(firstresult=True)
def save_checkpoint(trainer: Trainer, state: TrainerState) -> Path | None:
    """Save a checkpoint of the current step (or start writing it in the background) and return
    its final directory. The implementation emits ``on_save``, on the training thread, once the
    checkpoint is committed. Stops at first non-None result.

    :param trainer: the Trainer.
    :param state: the run's state.
    """


@hookspec(firstresult=True)
def save_model(trainer: Trainer, output_dir: str) -> Path | None:
    """Write the model's weights and the arguments into *output_dir*. Stops at first non-None result.

    :param trainer: the Trainer.
    :param output_dir: the destination directory.
    """


@hookspec(firstresult=True)
def resume_checkpoint(trainer: Trainer, checkpoint: str | bool | None) -> Path | None:
    """Restore the run from a checkpoint; return the directory used. Stops at first non-None result.

    Called by ``train(resume_from_checkpoint=...)`` before ``on_train_begin``, unless that
    argument is ``False``.

    :param trainer: the Trainer.
    :param checkpoint: ``True`` (the newest valid checkpoint), a checkpoint path, or ``None``
        (the arguments decide: ``args.resume_from_checkpoint``).
    """
