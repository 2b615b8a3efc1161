"""The Trainer: an event-emitting training loop. It knows no feature; plugins decide and act."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import count, islice
from typing import Any

import torch

from hooktrain.core.accumulation import accumulate
from hooktrain.core.args import TrainingArguments
from hooktrain.core.batch_size import train_finding_batch_size
from hooktrain.core.callbacks import CallbackMethods
from hooktrain.core.console import console_logging, log_level_of
from hooktrain.core.data import (
    ResumableBatchSampler,
    default_collate,
    iterate_batches,
    make_loader,
    to_device,
)
from hooktrain.core.errors import ArgumentError
from hooktrain.core.evaluation import EvaluationMethods
from hooktrain.core.grads import grad_clearer
from hooktrain.core.interrupts import Interruptible, TrainingInterrupted
from hooktrain.core.losses import LossWindow
from hooktrain.core.manager import PluginManager, build_manager
from hooktrain.core.plan import StepPlan, rebuild_scheduler
from hooktrain.core.seeding import set_seed
from hooktrain.core.state import TrainerState, resolve_steps
from hooktrain.core.types import EvalPrediction, ProcessFlag, StepOutcome, TrainOutput

logger = logging.getLogger("hooktrain")

#: The hooks called on every optimizer step, each with the order in which the loop passes its
#: arguments (positionally, for speed). ``train()`` checks every order against the hook's spec.
STEP_HOOKS: dict[str, tuple[str, ...]] = {
    "on_step_begin": ("trainer", "args", "state"),
    "count_loss_items": ("trainer", "batches"),
    "training_step": ("trainer", "model", "batch", "num_items_in_batch"),
    "backward": ("trainer", "loss"),
    "optimizer_step": ("trainer", "model", "optimizer", "need_grad_norm"),
    "on_train_batch": ("trainer", "batch"),
    "on_step_end": ("trainer", "args", "state"),
    "should_save": ("trainer", "args", "state", "metrics", "trigger"),
    "should_stop": ("trainer", "args", "state", "metrics"),
    "should_end_epoch": ("trainer", "args", "state"),
}


class Trainer(EvaluationMethods, CallbackMethods, Interruptible):
    """Train ``model`` on ``train_dataset`` as configured by ``args``; see docs/index.md."""

    # ---- what plugins set, in ``configure`` (the defaults are one process, no wrapper) --------
    #: The module forward passes use: ``model``, or ``model`` wrapped (DDP, ``torch.compile``).
    model_wrapped: torch.nn.Module
    #: Where the model and the batches go (the distributed plugin pins each process's GPU).
    device: torch.device
    #: This process's rank, the number of processes and the rank on this machine (distributed).
    process_index: int = 0
    world_size: int = 1
    local_process_index: int = 0
    #: Waits until every process gets there (distributed); :meth:`barrier` calls it.
    _barrier: Callable[[], None]
    #: The fp16 loss scaler (precision); the checkpoint plugin saves and restores its state.
    grad_scaler: torch.amp.GradScaler | None = None
    _finding_batch_size = False  # auto_find_batch_size: a train() inside the search

    def __init__(
        self,
        model: torch.nn.Module,
        args: TrainingArguments,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        compute_loss: Callable[..., Any] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        plugins: Iterable[object] = (),
        callbacks: Iterable[Any] | None = None,
    ):
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
        self.args = args
        self.model = model
        self.model_wrapped: torch.nn.Module = model  # what forward passes use (DDP, compiled …)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.data_collator = data_collator or default_collate
        self.compute_loss_func = compute_loss
        self.compute_metrics = compute_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.state = TrainerState()
        self.device = torch.device(
            "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
        )
        self._barrier = lambda: None  # one process: nothing to wait for
        self._hooks_built = -1  # the plugin manager's ``changes`` when the step hooks were bound
        self.worker_init_fns: list[Callable[[int], Any]] = []  # data loader workers call them first (plugins add)
        set_seed(args.seed, args.full_determinism)
        self._set_callbacks(callbacks)  # for the plugin that runs them (hf_callbacks)

        self.plugin_manager: PluginManager = build_manager(
            plugins=plugins, blocked=args.disable_plugins
        )
        self.registries = self.plugin_manager.fill_registries()
        hook = self.plugin_manager.hook
        problems = self._check_inputs()
        for found in hook.validate_args(trainer=self, args=args):
            problems.extend(found or [])
        if problems:
            raise ArgumentError(problems)
        hook.configure(trainer=self, args=args)
        self.plugin_manager.check_pending()
        self.state.is_world_process_zero = self.process_index == 0
        console_logging(*log_level_of(args, self.process_index, self.local_process_index))
        if self.model_wrapped is self.model:
            self.model.to(self.device)

    @property
    def is_world_process_zero(self) -> ProcessFlag:  # a bool; also callable, as HF's method
        return ProcessFlag(self.process_index == 0)

    def barrier(self) -> None:
        """Wait until every process reaches this point (a no-op in a single process)."""
        self._barrier()

    def _check_inputs(self) -> list[str]:
        args, problems = self.args, []
        if not isinstance(self.model, torch.nn.Module):
            problems.append(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if args.eval_strategy != "no" and self.eval_dataset is None:
            problems.append(
                f"eval_strategy={args.eval_strategy!r} needs an eval_dataset; pass one to Trainer "
                "or set eval_strategy='no'"
            )
        ds = self.train_dataset
        if ds is not None and not hasattr(ds, "__len__") and args.max_steps <= 0:
            problems.append("a train_dataset without __len__ needs max_steps > 0 (max_steps=-1)")
        return problems

    # ---- data -------------------------------------------------------------------------

    def _loader(self, dataset: Any, batch_size: int, train: bool) -> torch.utils.data.DataLoader:
        pin = self.args.dataloader_pin_memory and self.device.type == "cuda"
        return make_loader(dataset, self.args, batch_size, train, self.data_collator, pin, rank=self.process_index,
                           world_size=self.world_size, forward=None if self.compute_loss_func else self.model,
                           worker_init=self.worker_init_fns)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset")
        return self._loader(self.train_dataset, self.args.per_device_train_batch_size, train=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset")
        return self._loader(dataset, self.args.per_device_eval_batch_size, train=False)

    # ---- the model contract -------------------------------------------------------------

    def compute_loss(self, model: torch.nn.Module, batch: Any, num_items_in_batch: Any = None) -> tuple[torch.Tensor, Any]:
        """``(loss, outputs)`` of a batch: ``compute_loss`` if given, else ``model(**batch).loss``;
        *num_items_in_batch*, when given, is passed on to either as a keyword (docs/migrating-from-hf.md)."""
        if self.compute_loss_func is not None:
            result = (self.compute_loss_func(model, batch) if num_items_in_batch is None
                      else self.compute_loss_func(model, batch, num_items_in_batch=num_items_in_batch))
            return result if isinstance(result, tuple) else (result, None)
        if num_items_in_batch is not None:  # a dict batch with labels (count_loss_items)
            outputs = model(**batch, num_items_in_batch=num_items_in_batch)
        else:
            outputs = model(**batch) if isinstance(batch, dict) else model(batch)
        if isinstance(outputs, dict):
            loss = outputs.get("loss")
        else:
            loss = getattr(outputs, "loss", None)
            if loss is None and isinstance(outputs, (tuple, list)):
                loss = outputs[0]
        if loss is None:
            raise ValueError(
                "the model returned no 'loss': return a dict or object with 'loss' (include 'labels' "
                "in the batch), or pass compute_loss=... to Trainer"
            )
        return loss, outputs

    # ---- training ------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        if self.args.auto_find_batch_size and not self._finding_batch_size:  # core/batch_size.py
            return train_finding_batch_size(self, self.train, resume_from_checkpoint)  # type: ignore[no-any-return]
        args, state, pm = self.args, self.state, self.plugin_manager
        hook = pm.hook
        loader = self.get_train_dataloader()
        plan = StepPlan.of(loader, args.max_steps, args.num_train_epochs, args.gradient_accumulation_steps)
        max_steps = plan.max_steps
        if self.optimizer is None:
            self.optimizer = hook.create_optimizer(trainer=self, model=self.model, args=args)
            if self.optimizer is None:
                raise RuntimeError("no plugin created an optimizer (is 'optimizers' disabled?); "
                                   "pass Trainer(optimizers=(optimizer, None))")
        made_scheduler = self.lr_scheduler is None
        if made_scheduler:
            self.lr_scheduler = hook.create_scheduler(
                trainer=self, optimizer=self.optimizer, args=args, num_training_steps=max_steps
            )
        if resume_from_checkpoint is not False:  # None: the checkpoint plugin may resume from args
            hook.resume_checkpoint(trainer=self, checkpoint=resume_from_checkpoint)
        plan = StepPlan.of(loader, args.max_steps, args.num_train_epochs, args.gradient_accumulation_steps,
                           state.data_origin, state.global_step)  # a resumed run: from where its data was
        if plan.max_steps != max_steps and made_scheduler:  # the steps changed with the number of processes
            self.lr_scheduler = rebuild_scheduler(self, plan.max_steps)
        max_steps, state.data_origin = plan.max_steps, plan.record()
        state.max_steps = max_steps
        state.num_train_epochs = plan.epochs or 0
        state.num_update_steps_per_epoch = plan.steps_per_epoch
        state.train_batch_size = args.per_device_train_batch_size
        state.logging_steps = resolve_steps(args.logging_steps, max_steps)
        state.eval_steps = resolve_steps(args.eval_steps, max_steps)
        state.stop_reason = None
        self._losses = LossWindow(args.logging_nan_inf_filter, read_each_step=self.device.type == "cpu")
        self._last_saved = state.global_step
        self._step_hooks()  # built (and checked against the specs) before the run begins
        self._no_sync = getattr(self.model_wrapped, "no_sync", None)
        self._log_every = state.logging_steps if args.logging_strategy == "steps" else 0
        self._eval_every = state.eval_steps if args.eval_strategy == "steps" else 0
        status, start, start_step = "failed", time.time(), state.global_step
        self.model_wrapped.train()  # a from_pretrained model comes in eval mode (dropout off)
        try:
            try:
                hook.on_train_begin(trainer=self, args=args, state=state)
                if args.eval_on_start and state.global_step == 0:
                    self.evaluate()
                self._epochs(loader, plan)
                self._maybe_save(None, "train_end")
                status = "stopped" if state.stop_reason else "completed"
            except TrainingInterrupted as stop:  # a step in progress is dropped, an evaluation abandoned
                state.stop_reason, status = stop.reason, "interrupted"
                hook.on_interrupt(trainer=self, args=args, state=state, reason=stop.reason)
            except KeyboardInterrupt as error:
                pm.call_each("on_exception", isolate=True, trainer=self, args=args, state=state, error=error)
                state.stop_reason = "interrupted (KeyboardInterrupt)"
                logger.warning("training interrupted at step %d; ending the run", state.global_step)
                status = "stopped"
            metrics = self._summary(start, state.global_step - start_step)  # a log event: may fail too
        except BaseException as error:
            pm.call_each("on_exception", isolate=True, trainer=self, args=args, state=state, error=error)
            pm.call_each("on_train_end", isolate=True, trainer=self, args=args, state=state, status="failed")
            self.interrupt_reason = None
            raise
        errors = pm.call_each("on_train_end", isolate=True, trainer=self, args=args, state=state, status=status)
        self.interrupt_reason = None  # the handlers are put back by now: evaluate() may follow
        if errors:  # every plugin has finished its end of run; now the first failure surfaces
            raise errors[0]
        return TrainOutput(state.global_step, metrics["train_loss"], metrics, status)

    def _step_hooks(self) -> dict[str, Callable[..., Any]]:
        """The callers of :data:`STEP_HOOKS`, rebuilt when plugins were (un)registered since."""
        pm = self.plugin_manager
        if self._hooks_built != pm.changes:
            self._call = pm.step_callers(STEP_HOOKS)
            # the per-step decisions nobody answers are not asked
            self._asks_save, self._asks_stop = pm.implemented("should_save"), pm.implemented("should_stop")
            self._end_epoch = self._call["should_end_epoch"] if pm.implemented("should_end_epoch") else None
            self._counts = pm.implemented("count_loss_items")  # else: no per-window count, the W1 fast path
            self._hooks_built = pm.changes
        return self._call

    def _epochs(self, loader: Any, plan: StepPlan) -> None:
        args, state, hook = self.args, self.state, self.plugin_manager.hook
        first_epoch, consumed = plan.position(state.global_step)  # samples (batches: a loader of its own)
        sampler = getattr(loader, "batch_sampler", None)
        if state.global_step >= plan.max_steps:  # resumed from the final checkpoint
            return
        epochs = range(first_epoch, plan.epochs) if plan.epochs is not None else count(first_epoch)
        for epoch in epochs:
            skip = consumed if epoch == first_epoch and not args.ignore_data_skip else 0
            if isinstance(sampler, ResumableBatchSampler):
                sampler.set_epoch(epoch)
                sampler.skip_samples(skip)
            hook.on_epoch_begin(trainer=self, args=args, state=state)
            batches = iterate_batches(loader)
            if skip and not isinstance(sampler, ResumableBatchSampler):
                for _ in islice(batches, skip):  # a loader of its own: read past them
                    pass
            stepped = self._epoch_steps(batches, epoch, plan.rest(skip))
            if not stepped and plan.batches_per_epoch is None:
                raise ValueError(f"the train_dataset yielded no batch in epoch {epoch}")
            hook.on_epoch_end(trainer=self, args=args, state=state)
            self._after_epoch()
            if state.stop_reason or state.global_step >= plan.max_steps:
                break

    def _epoch_steps(self, batches: Iterator[Any], epoch: int, plan: StepPlan) -> bool:
        """The optimizer steps of (the rest of) one epoch, each followed by its log,
        evaluation, save and stop decisions. False when not one step was made (no data). The hot
        path: what stays the same is looked up once, and again after a plugin is (un)registered."""
        args, state, model, optimizer, pm = self.args, self.state, self.model_wrapped, self.optimizer, self.plugin_manager
        scheduler_step = self.lr_scheduler.step if self.lr_scheduler is not None else None
        zero_grad, add_loss = grad_clearer(optimizer, self.model), self._losses.add
        log_every, eval_every = self._log_every, self._eval_every
        ga, on_cpu = plan.accumulation, self.device.type == "cpu"
        steps, last_window, epoch_len, max_steps = plan.steps_per_epoch, plan.last_window, plan.epoch_length, plan.max_steps
        stepped, start, before = False, 0, plan.epoch_offset
        while start < steps:  # once, and again from the current step after (un)registrations
            call, built = self._step_hooks(), pm.changes
            on_step_begin, training_step, backward = call["on_step_begin"], call["training_step"], call["backward"]
            optimizer_step, on_step_end, on_batch = call["optimizer_step"], call["on_step_end"], call["on_train_batch"]
            asks_save, asks_stop, end_epoch, counts = self._asks_save, self._asks_stop, self._end_epoch, self._counts
            for update in range(start, steps):
                if pm.changes != built:
                    start = update
                    break  # a plugin was (un)registered: bind the hooks again, then make this step
                self.check_interrupt()
                window = last_window if update == steps - 1 else ga
                if window == 1 and not counts:
                    batch = next(batches, None)
                    if batch is None:
                        return stepped  # the data ran out (iterable dataset)
                    on_batch(self, batch)
                    on_step_begin(self, args, state)
                    step_loss = training_step(self, model, batch if on_cpu else to_device(batch, self.device), None)
                    backward(self, step_loss)
                    n = 1
                else:
                    micro = list(islice(batches, window))
                    if not micro:
                        return stepped
                    on_step_begin(self, args, state)
                    items = call["count_loss_items"](self, micro) if counts else None
                    step_loss, n = accumulate(self, micro, items), len(micro)
                gs = state.global_step + 1
                log_due = bool(log_every and gs % log_every == 0) or (gs == 1 and args.logging_first_step)
                outcome: StepOutcome = optimizer_step(self, model, optimizer, log_due)
                self._last_lr = optimizer.param_groups[0]["lr"]
                if outcome.skipped:
                    state.skipped_steps += 1
                elif scheduler_step is not None:
                    scheduler_step()
                zero_grad()
                add_loss(step_loss)
                self._grad_norm = outcome.grad_norm
                state.global_step = gs
                state.epoch = epoch + (before + update * ga + n) / epoch_len
                on_step_end(self, args, state)
                stepped = True
                # the step's decisions: log, evaluate, save, stop
                if log_due:
                    self.log_training()
                last, metrics = gs >= max_steps, None
                if eval_every and gs >= args.eval_delay and (gs % eval_every == 0 or last):
                    metrics = self.evaluate()
                if asks_save:
                    self._maybe_save(metrics, "step")
                if asks_stop:
                    self._maybe_stop(metrics)
                if last or state.stop_reason is not None or (end_epoch and end_epoch(self, args, state)):
                    return stepped
            else:
                return stepped
        return stepped

    def _after_epoch(self) -> None:
        args, state = self.args, self.state
        if args.logging_strategy == "epoch":
            self.log_training()  # nothing when the window is empty
        metrics = None
        if args.eval_strategy == "epoch" and state.epoch >= args.eval_delay:
            metrics = self.evaluate()
        self._maybe_save(metrics, "epoch")
        self._maybe_stop(metrics)

    def _maybe_save(self, metrics: dict[str, float] | None, trigger: str) -> None:
        wanted = self._step_hooks()["should_save"](self, self.args, self.state, metrics, trigger)
        if wanted and self._last_saved != self.state.global_step:
            self.save_checkpoint()

    def save_checkpoint(self) -> Any:
        """Save a checkpoint of the current step (through ``save_checkpoint``); its directory.

        The implementation emits ``on_save`` once the checkpoint is committed (at once, or at a
        later step boundary when it is written in the background)."""
        path = self.plugin_manager.hook.save_checkpoint(trainer=self, state=self.state)
        if path is None:
            raise RuntimeError("no plugin implements save_checkpoint (is 'checkpoint' disabled?)")
        self._last_saved = self.state.global_step
        return path

    def _maybe_stop(self, metrics: dict[str, float] | None) -> None:
        reason = self._step_hooks()["should_stop"](self, self.args, self.state, metrics)
        state = self.state
        if reason and not state.stop_reason:
            state.stop_reason = str(reason)
            logger.info("stopping at step %d: %s", state.global_step, reason)
            self.log({"stop_reason": state.stop_reason})

    # ---- logging -------------------------------------------------------------------------

    def log_training(self) -> None:
        """Log the training window now: the loss, grad norm and learning rate of the steps since
        the last log (nothing when there were none)."""
        state = self.state
        loss, steps, nonfinite = self._losses.close()
        if steps == 0:
            return
        logs: dict[str, Any] = {"loss": self.mean_over_processes(loss)}
        if self._grad_norm is not None:
            logs["grad_norm"] = float(self._grad_norm)
        logs["learning_rate"] = self._last_lr
        if nonfinite:
            state.nonfinite_steps += nonfinite
            logs["nonfinite_steps"] = nonfinite
        for extra in self.plugin_manager.hook.extra_logs(trainer=self, state=state):
            logs.update(extra or {})
        self.log(logs)

    def mean_over_processes(self, value: float) -> float:
        """*value* averaged over the processes of the run (``reduce_mean``); every process must call it."""
        out = self.plugin_manager.hook.reduce_mean(trainer=self, value=torch.tensor(value, dtype=torch.float64))
        return value if out is None else float(out)

    def log(self, logs: dict[str, Any]) -> None:
        """Add ``epoch``, append to ``state.log_history`` and fire ``on_log`` (a fresh dict per plugin)."""
        state = self.state
        logs = {**logs, "epoch": round(state.epoch, 4)}
        state.log_history.append({**logs, "step": state.global_step})
        self.plugin_manager.call_each("on_log", fresh="logs", trainer=self, args=self.args, state=state, logs=logs)

    def _summary(self, start: float, steps: int) -> dict[str, float]:
        self.state.nonfinite_steps += self._losses.close()[2]  # the steps after the last log
        runtime = time.time() - start
        samples = steps * self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(samples * self.world_size / runtime, 3) if runtime else 0.0,
            "train_steps_per_second": round(steps / runtime, 3) if runtime else 0.0,
            "train_loss": self.mean_over_processes(self._losses.mean_over_run()),
        }
        for extra in self.plugin_manager.hook.summary_logs(trainer=self, state=self.state):
            metrics.update(extra or {})
        self.log(metrics)
        return metrics

    # ---- saving ---------------------------------------------------------------------------

    def save_state(self) -> None:
        """Write ``trainer_state.json`` (with the final summary) into ``args.output_dir``."""
        if self.is_world_process_zero:
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))

    def save_model(self, output_dir: str | None = None) -> None:
        """Write the weights (and ``training_args.json``) into *output_dir* (default ``args.output_dir``);
        call it on every process (a sharded model is gathered from all), the main process writes."""
        self.plugin_manager.hook.save_model(trainer=self, output_dir=output_dir or self.args.output_dir)
