"""Hugging Face ``TrainerCallback``s, run unchanged: ``Trainer(callbacks=[...])``.

Active when the Trainer has callbacks (``callbacks=`` or ``add_callback``); ``transformers`` is
imported only then. The adapter calls each callback's events at Hugging Face's points, in list
order, with Hugging Face's arguments: ``args`` (a real ``transformers.TrainingArguments`` holding
this run's values), ``state`` (a ``transformers.TrainerState`` kept in step with ours),
``control`` (a ``TrainerControl``) and the keywords ``model``, ``processing_class``,
``optimizer``, ``lr_scheduler``, ``train_dataloader``, ``eval_dataloader`` (+ ``metrics`` /
``logs``). A callback's return value, when not ``None``, replaces ``control``.

Control flags are reset where Hugging Face resets them, and requests become hooktrain's
decisions: ``should_log`` logs the training window now, ``should_evaluate`` evaluates at this
step, ``should_save`` answers ``should_save``, ``should_training_stop`` answers ``should_stop``
(with a reason naming the callback) and ``should_epoch_stop`` answers ``should_end_epoch``.
Hugging Face's ``DefaultFlowCallback`` runs first, as in its ``Trainer``, so the flags read as
they do there; the schedule it requests is the one hooktrain's own plugins follow.

Callbacks implementing ``ExportableState`` are stored in every checkpoint (key
``"hf_callbacks"``) and, with ``restore_callback_states_from_checkpoint`` (on by default),
restored on resume.

Reads: restore_callback_states_from_checkpoint (through the checkpoint plugin), report_to
(to warn about double logging), save_steps (``state.save_steps``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hooktrain.core.data import iterate_batches
from hooktrain.core.errors import ArgumentError
from hooktrain.core.markers import hookimpl
from hooktrain.core.state import resolve_steps

logger = logging.getLogger("hooktrain")

STATE_KEY = "hf_callbacks"
ADAPTER_NAME = "hf_callbacks.adapter"

#: Hugging Face's tracker callbacks and the ``report_to`` names of hooktrain's reporters for the
#: same tracker: both at once log everything twice.
TRACKER_CALLBACKS = {
    "TensorBoardCallback": ("tensorboard",),
    "WandbCallback": ("wandb",),
    "MLflowCallback": ("mlflow",),
    "CometCallback": ("comet", "comet_ml"),
}
#: Callbacks that print every log, as hooktrain's progress plugin does.
PRINTING_CALLBACKS = ("PrinterCallback", "ProgressCallback", "NotebookProgressCallback")

#: ``TrainerState`` fields copied from hooktrain's state before every event …
_STATE_FIELDS = (
    "epoch", "global_step", "max_steps", "logging_steps", "eval_steps", "train_batch_size",
    "num_train_epochs", "num_input_tokens_seen", "total_flos", "log_history", "best_metric",
    "best_global_step", "best_model_checkpoint", "is_local_process_zero", "is_world_process_zero",
)
#: … and the ones that change between the per-step events (the best after an evaluation).
_STEP_FIELDS = ("epoch", "global_step", "num_input_tokens_seen", "total_flos", "best_metric",
                "best_global_step", "best_model_checkpoint")
_STEP_EVENTS = frozenset({"on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
                          "on_step_end", "on_prediction_step"})
#: the events of Hugging Face's DefaultFlowCallback, which runs before the others
_FLOW_EVENTS = frozenset({"on_step_end", "on_epoch_end"})
#: hooktrain fields that Hugging Face's v4 ``TrainingArguments`` had (v5 removed them): kept on
#: ``args`` so that older callbacks reading them work.
_V4_FIELDS = ("logging_dir", "overwrite_output_dir", "save_safetensors", "warmup_ratio")


def callbacks_of(trainer: Any) -> list[Any]:
    return getattr(trainer, "callbacks", None) or []


def checkpoint_step(path: Any) -> int | None:
    """N of a ``checkpoint-N`` directory, else ``None``."""
    _, _, tail = Path(path).name.rpartition("-")
    return int(tail) if tail.isdigit() else None


# ---- args: a real transformers.TrainingArguments -------------------------------------------------


@functools.cache
def _hf_arguments_class() -> type:
    import transformers

    fields = [(name, Any, dataclasses.field(default=None)) for name in _V4_FIELDS]
    return dataclasses.make_dataclass(
        "TrainingArguments", fields, bases=(transformers.TrainingArguments,),
        namespace={"__doc__": "transformers' TrainingArguments with a hooktrain run's values "
                              f"(plus the v4 fields {', '.join(_V4_FIELDS)})."},
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def hf_training_arguments(args: Any) -> Any:
    """A ``transformers.TrainingArguments`` with *args*' value for every name the two share.

    Values are passed through Hugging Face's constructor (so strategies are its enums); a value
    it refuses (an ``optim`` it lacks, ``tf32=True`` without an Ampere GPU, a save policy of a
    plugin) or normalises differently is then set as it is in hooktrain.
    """
    cls = _hf_arguments_class()
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    ours = {k: v for k, v in args.to_dict().items() if k in names}
    with _quiet_transformers():
        try:
            hf = cls(**ours)
        except Exception:  # keep what Hugging Face accepts, one field at a time
            accepted = {"output_dir": ours["output_dir"]}
            for name, value in ours.items():
                try:
                    cls(**accepted, **{name: value})
                except Exception:
                    continue
                accepted[name] = value
            hf = cls(**accepted)
    for name, value in ours.items():
        if getattr(hf, name) != value:
            setattr(hf, name, value)
    return hf


# ---- checks --------------------------------------------------------------------------------------


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def callback_problems(callbacks: list[Any]) -> list[str]:
    """Callbacks that cannot run here: not a ``TrainerCallback``, or needing HF's ``Trainer``."""
    if not callbacks:
        return []
    missing = [name for name in ("transformers", "accelerate") if not _installed(name)]
    if missing:
        return [f"callbacks=[{', '.join(type(c).__name__ for c in callbacks)}] run through Hugging Face's "
                f"TrainerCallback API, which needs {' and '.join(missing)}: pip install 'hooktrain[hf]'"]
    from transformers import TrainerCallback

    problems = []
    for i, callback in enumerate(callbacks):
        name = type(callback).__name__
        if not isinstance(callback, TrainerCallback):
            problems.append(
                f"callbacks[{i}]={name} is not a transformers.TrainerCallback: subclass it, or pass "
                "a hooktrain plugin with plugins=[...]")
        elif hasattr(callback, "set_trainer"):
            problems.append(
                f"callbacks[{i}]={name} needs Hugging Face's Trainer object (it has set_trainer()), "
                "which hooktrain cannot give it"
                + ("; hooktrain's preemption handling (preemption_signals) checkpoints on SIGTERM"
                   if name == "JITCheckpointCallback" else ""))
    return problems


def _warn_double_logging(trainer: Any) -> None:
    report_to = set(getattr(trainer.args, "report_to", None) or [])
    for callback in callbacks_of(trainer):
        names = {c.__name__ for c in type(callback).__mro__}
        for cls_name, reporters in TRACKER_CALLBACKS.items():
            if cls_name in names and (report_to & set(reporters) or "all" in report_to):
                shown = next(r for r in reporters if r in report_to or "all" in report_to)
                logger.warning(
                    "%s and report_to=%r both log to %s: every value is logged twice. Remove "
                    "%r from report_to, or the callback", type(callback).__name__,
                    sorted(report_to), reporters[0], shown)
        if names & set(PRINTING_CALLBACKS) and trainer.plugin_manager.has_plugin("progress.console"):
            logger.warning(
                "%s prints every log, as hooktrain's console log does; switch ours off with "
                "disable_plugins=['progress'], or remove the callback", type(callback).__name__)


# ---- the adapter -------------------------------------------------------------------------------


class _PredictionSteps:
    """The evaluation batches; Hugging Face's ``on_prediction_step`` fires after each one."""

    def __init__(self, loader: Any, fire: Any):
        self.loader = loader
        self.fire = fire

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        for batch in iterate_batches(self.loader):
            yield batch
            self.fire("on_prediction_step")


class _Substeps:
    """``on_substep_end`` after each micro-batch of a window but the last (gradient accumulation).

    Registered only while a callback implements ``on_substep_end``.
    """

    def __init__(self, adapter: HFCallbackAdapter):
        self.adapter = adapter
        self.micro_batches = 0

    @hookimpl
    def on_step_begin(self):
        self.micro_batches = 0

    @hookimpl(wrapper=True)
    def training_step(self):
        if self.micro_batches:  # the previous micro-batch's backward is done
            self.adapter.fire("on_substep_end")
        self.micro_batches += 1
        return (yield)


class _OptimizerEvents:
    """``on_pre_optimizer_step`` / ``on_optimizer_step`` right around ``optimizer.step()`` (after
    clipping), through torch's optimizer step hooks; around the whole ``optimizer_step`` action for
    an optimizer without them. Registered only while a callback implements one of the two.
    """

    def __init__(self, adapter: HFCallbackAdapter, optimizer: Any):
        self.adapter = adapter
        self.fired = 0
        self.handles: list[Any] = []
        if hasattr(optimizer, "register_step_pre_hook"):
            self.handles = [optimizer.register_step_pre_hook(self._pre),
                            optimizer.register_step_post_hook(self._post)]

    def _pre(self, *_: Any) -> None:
        self.fired = 1
        self.adapter.fire("on_pre_optimizer_step")

    def _post(self, *_: Any) -> None:
        self.fired = 2
        self.adapter.fire("on_optimizer_step")

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @hookimpl(wrapper=True)
    def optimizer_step(self):
        fire, hooked = self.adapter.fire, bool(self.handles)
        self.fired = 0
        if not hooked:
            fire("on_pre_optimizer_step")
        outcome = yield
        if not hooked:
            fire("on_optimizer_step")
        elif self.fired == 0:  # the step was skipped (fp16 overflow): HF fires both all the same
            fire("on_pre_optimizer_step")
            fire("on_optimizer_step")
        return outcome


class HFCallbackAdapter:
    """Runs a Trainer's Hugging Face callbacks; ``args``, ``state`` and ``control`` are theirs."""

    def __init__(self, trainer: Any):
        from transformers.trainer_callback import DefaultFlowCallback, TrainerControl, TrainerState

        self.trainer = trainer
        self.flow = DefaultFlowCallback()
        self.control = TrainerControl()
        self._control_class = TrainerControl
        self.state = TrainerState()
        self.args = hf_training_arguments(trainer.args)
        self._args_seen = trainer.args.to_dict()
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None
        self._running = False
        self._deciding = False  # inside our own re-ask of should_save / should_stop
        self._stopped_by: tuple[str, str] | None = None  # (callback, event) that asked to stop
        self._extra_eval: tuple[int, dict[str, float]] | None = None  # an evaluation a callback asked for
        self._helpers: list[Any] = []  # _Substeps / _OptimizerEvents registered for this run
        self._routes: dict[str, list[Any]] = {}  # event -> the callbacks that implement it
        self._routed: tuple[int, ...] = ()  # the callbacks (ids) the routes were made for

    # ---- calling the callbacks -------------------------------------------------------------

    def sync_state(self, names: tuple[str, ...] = _STATE_FIELDS) -> None:
        ours, theirs = self.trainer.state, self.state
        for name in names:
            setattr(theirs, name, getattr(ours, name))

    def implementers(self, event: str) -> list[Any]:
        """The callbacks (DefaultFlowCallback first) whose *event* is more than TrainerCallback's no-op."""
        callbacks = callbacks_of(self.trainer)
        ids = tuple(map(id, callbacks))
        if ids != self._routed:  # add_callback / remove_callback since
            self._routed, self._routes = ids, {}
        route = self._routes.get(event)
        if route is None:
            from transformers import TrainerCallback

            base = getattr(TrainerCallback, event)
            route = [c for c in callbacks if getattr(type(c), event, None) is not base]
            if event in _FLOW_EVENTS:
                route.insert(0, self.flow)
            self._routes[event] = route
        return route

    def fire(self, event: str, *, at_step: int | None = None, **extra: Any) -> Any:
        """Call *event* on every callback in order; a returned control replaces ours.

        *at_step*: the callbacks see ``state.global_step`` at that step (a checkpoint's).
        """
        callbacks = self.implementers(event)
        if not callbacks:  # TrainerCallback's own events do nothing
            return self.control
        t = self.trainer
        self.sync_state(_STEP_FIELDS if event in _STEP_EVENTS else _STATE_FIELDS)
        if at_step is not None:
            self.state.global_step = at_step
        kwargs = dict(
            model=t.model, processing_class=getattr(t, "processing_class", None), optimizer=t.optimizer,
            lr_scheduler=t.lr_scheduler, train_dataloader=self.train_dataloader,
            eval_dataloader=self.eval_dataloader, **extra)
        control = self.control
        for callback in callbacks:
            was_stopping = control.should_training_stop
            result = getattr(callback, event)(self.args, self.state, control, **kwargs)
            if result is not None:
                if not isinstance(result, self._control_class):
                    raise TypeError(f"{type(callback).__name__}.{event} returned {result!r}; a callback "
                                    "returns None or a TrainerControl")
                control = result
            if control.should_training_stop and not was_stopping and callback is not self.flow:
                self._stopped_by = (type(callback).__name__, event)
        self.control = control
        return control

    # ---- the run ------------------------------------------------------------------------------

    def begin(self, trainer: Any) -> None:
        """Training starts: check the callbacks, refresh ``args``, fire ``on_train_begin``."""
        if self._running:
            return
        problems = callback_problems(callbacks_of(trainer))
        if problems:
            raise ArgumentError(problems)
        _warn_double_logging(trainer)
        seen = trainer.args.to_dict()
        if seen != self._args_seen:  # arguments assigned since the Trainer was built
            self.args, self._args_seen = hf_training_arguments(trainer.args), seen
        self._running = True
        self._stopped_by, self._extra_eval = None, None
        self.state.save_steps = resolve_steps(getattr(trainer.args, "save_steps", None), trainer.state.max_steps)
        self.train_dataloader = trainer.get_train_dataloader()
        self._add_step_helpers(trainer)
        self.control.should_training_stop = False
        self.sync_state()  # all of it: the per-step events copy only what changes within a step
        self.fire("on_train_begin")

    def _add_step_helpers(self, trainer: Any) -> None:
        """The per-micro-batch and optimizer-step events cost nothing unless a callback has them."""
        self._remove_step_helpers()
        pm = trainer.plugin_manager
        if trainer.args.gradient_accumulation_steps > 1 and self.implementers("on_substep_end"):
            self._helpers.append(_Substeps(self))
        if self.implementers("on_pre_optimizer_step") or self.implementers("on_optimizer_step"):
            self._helpers.append(_OptimizerEvents(self, trainer.optimizer))
        for helper in self._helpers:
            pm.register(helper, name=f"hf_callbacks.{type(helper).__name__.strip('_').lower()}")

    def _remove_step_helpers(self) -> None:
        for helper in self._helpers:
            if isinstance(helper, _OptimizerEvents):
                helper.close()
            self.trainer.plugin_manager.unregister(helper)
        self._helpers = []

    @hookimpl
    def on_train_begin(self, trainer):
        self.begin(trainer)

    @hookimpl
    def on_epoch_begin(self):
        self.control.should_epoch_stop = False
        self.fire("on_epoch_begin")

    @hookimpl
    def on_step_begin(self):
        control = self.control
        control.should_log = control.should_evaluate = control.should_save = False
        self.fire("on_step_begin")

    @hookimpl(trylast=True)  # after the other plugins' step end (the progress bar's update)
    def on_step_end(self, trainer):
        self.fire("on_step_end")
        if self.control.should_log:
            trainer.log_training()  # the loop's own log of this step then finds the window empty

    @hookimpl
    def on_log(self, logs):
        if "stop_reason" in logs:  # hooktrain's record of a stop: Hugging Face logs nothing then
            return
        self.control.should_log = False
        self.fire("on_log", logs=logs)

    @hookimpl(tryfirst=True)
    def evaluation_loop(self, trainer, model, dataloader):
        self.eval_dataloader = dataloader
        pm = trainer.plugin_manager
        # the wrappers (autocast …) are already around this call: the rest runs inside them
        skip = [self, *(i.plugin for i in pm.hook.evaluation_loop.get_hookimpls() if i.wrapper or i.hookwrapper)]
        rest = pm.subset_hook_caller("evaluation_loop", remove_plugins=skip)
        return rest(trainer=trainer, model=model, dataloader=_PredictionSteps(dataloader, self.fire))

    @hookimpl(tryfirst=True)  # before best_model updates state.best_metric, as in HF
    def on_evaluate(self, metrics):
        self.control.should_evaluate = False
        self.fire("on_evaluate", metrics=metrics)

    @hookimpl(optionalhook=True)  # Trainer.predict's event, where the Trainer has predict()
    def on_predict(self, metrics):
        self.fire("on_predict", metrics=metrics)

    @hookimpl(trylast=True)  # after best_model named the best checkpoint
    def on_save(self, checkpoint_dir):
        self.control.should_save = False
        # a checkpoint written in the background is announced at a later step: the callbacks
        # see its step, so that output_dir/checkpoint-{state.global_step} is this checkpoint
        self.fire("on_save", at_step=checkpoint_step(checkpoint_dir))

    @hookimpl(trylast=True)
    def on_epoch_end(self, trainer):
        self.fire("on_epoch_end")
        if self.control.should_log:
            trainer.log_training()

    @hookimpl(trylast=True)  # after best_model loaded the best weights
    def on_train_end(self, status):
        self._remove_step_helpers()
        if not self._running:
            return
        self._running = False
        if status != "failed":  # as in HF, where an exception leaves train() without it
            self.fire("on_train_end")

    # ---- decisions ----------------------------------------------------------------------------

    def _evaluate_if_asked(self, trainer: Any, metrics: Any) -> Any:
        if self.control.should_evaluate and metrics is None:
            metrics = trainer.evaluate()
            self._extra_eval = (trainer.state.global_step, metrics)
            return metrics
        return None

    @hookimpl(tryfirst=True)
    def should_save(self, trainer, args, state, metrics, trigger):
        if self._deciding or trigger == "train_end":
            return None
        extra = self._evaluate_if_asked(trainer, metrics)
        # The other answers first (the save policy, best_model naming a new best before its save),
        # with the metrics of an evaluation a callback asked for; a callback's request adds a save.
        self._deciding = True
        try:
            answer = trainer.plugin_manager.hook.should_save(
                trainer=trainer, args=args, state=state, metrics=metrics if extra is None else extra,
                trigger=trigger)
        finally:
            self._deciding = False
        return bool(answer) or self.control.should_save

    @hookimpl(tryfirst=True)
    def should_stop(self, trainer, args, state, metrics):
        if self._deciding:
            return None
        if self.control.should_training_stop and state.global_step < state.max_steps:
            who, event = self._stopped_by or ("a callback", "an event")
            return f"{who} set control.should_training_stop in {event}"
        extra = self._extra_eval
        if metrics is not None or extra is None or extra[0] != state.global_step:
            return None
        self._deciding = True  # early stopping … decides on the evaluation a callback asked for
        try:
            return trainer.plugin_manager.hook.should_stop(
                trainer=trainer, args=args, state=state, metrics=extra[1])
        finally:
            self._deciding = False

    @hookimpl(tryfirst=True)
    def should_end_epoch(self):
        return True if self.control.should_epoch_stop else None

    # ---- stateful callbacks -----------------------------------------------------------------

    def exported_states(self) -> dict[str, Any]:
        """``{class name: state()}`` (a list for several of one class), as HF's ``stateful_callbacks``."""
        from transformers.trainer_callback import ExportableState

        states: dict[str, list[Any]] = {}
        for callback in [*callbacks_of(self.trainer), self.control]:
            if isinstance(callback, ExportableState):
                states.setdefault(type(callback).__name__, []).append(callback.state())
        return {name: found[0] if len(found) == 1 else found for name, found in states.items()}

    @hookimpl
    def plugin_state(self):
        self.state.stateful_callbacks = self.exported_states()
        return STATE_KEY, self.state.stateful_callbacks

    def restore(self, states: dict[str, Any]) -> None:
        """Give each stateful callback (and ``control``) the attributes saved in the checkpoint."""
        from transformers.trainer_callback import ExportableState

        saved = states.get(STATE_KEY) or {}
        current = [c for c in [*callbacks_of(self.trainer), self.control] if isinstance(c, ExportableState)]
        missing = []
        for name, entries in saved.items():
            mine = [c for c in current if type(c).__name__ == name]
            if not mine:
                missing.append(name)
                continue
            for callback, entry in zip(mine, entries if isinstance(entries, list) else [entries], strict=False):
                saved_args, attributes = entry.get("args", {}), entry.get("attributes", {})
                if callback is self.control:
                    attributes = saved_args  # TrainerControl exports its flags as constructor args
                elif callback.state().get("args", {}) != saved_args:
                    logger.warning(
                        "%s: the checkpoint's was built with %s, this run's with %s; keeping this "
                        "run's arguments, restoring %s", name, saved_args, callback.state().get("args"),
                        ", ".join(attributes) or "nothing")
                for key, value in attributes.items():
                    setattr(callback, key, value)
        if missing:
            logger.warning("the checkpoint holds the state of callbacks this run does not have: %s",
                           ", ".join(missing))

    @hookimpl
    def load_plugin_state(self, states):
        self.restore(states)


# ---- the config group ---------------------------------------------------------------------------


def _adapter(trainer: Any) -> HFCallbackAdapter | None:
    return trainer.plugin_manager.get_plugin(ADAPTER_NAME)


def _activate(trainer: Any) -> HFCallbackAdapter:
    adapter = HFCallbackAdapter(trainer)
    trainer.plugin_manager.register(adapter, name=ADAPTER_NAME)
    return adapter


@hookimpl
def validate_args(trainer, args):
    return callback_problems(callbacks_of(trainer)) or None


@hookimpl(trylast=True)  # the last configure: Hugging Face fires on_init_end at the end of __init__
def configure(trainer, args):
    if callbacks_of(trainer):
        _activate(trainer).fire("on_init_end")


@hookimpl
def load_plugin_state(trainer, states):
    """Callbacks added after the Trainer was built: the adapter starts here on a resume."""
    if callbacks_of(trainer) and _adapter(trainer) is None:
        _activate(trainer).restore(states)


@hookimpl(tryfirst=True)
def on_train_begin(trainer):
    """Callbacks added after the Trainer was built: the adapter starts with the training."""
    if callbacks_of(trainer) and _adapter(trainer) is None:
        _activate(trainer).begin(trainer)
