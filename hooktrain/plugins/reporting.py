"""The reporting bridge: turns training events into ``report_*`` calls, off the training thread.

Reads: report_to, run_name, report_errors, report_timeout. Active on the main process when
``report_to`` selects at least one reporter. Every reporter gets its own worker thread and its
own bounded queue, so a slow or hung tracker never stalls a training step nor the other
reporters; each reporter's calls arrive in order. A reporter that raises is switched off with a
warning naming it (``report_errors="raise"`` makes that fatal: the next log event raises
:class:`ReporterError`); the others and the training go on. At the end the workers get
``report_timeout`` seconds (together) to finish, then are abandoned with a warning. Logs outside
``train()`` (a standalone ``evaluate()``) are reported as a short run of their own.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import threading
import time
from datetime import datetime
from typing import Any

from hooktrain.core.errors import HooktrainError
from hooktrain.core.markers import hookimpl

logger = logging.getLogger("hooktrain")

QUEUE_SIZE = 10_000  # events per reporter; beyond that new events are dropped (with a warning)
#: The hooks a reporter implements; the bridge calls them on the reporter's own thread.
REPORTER_HOOKS = ("report_run_start", "report_scalars", "report_flush", "report_artifact", "report_run_end")
BATCH_SECONDS = 0.05  # a worker takes its queued events in batches, at most this often
_STOP = object()


class ReporterError(HooktrainError):
    """A reporter failed and ``report_errors="raise"`` asked for that to be fatal."""


def selected_names(report_to: list[str], registry: Any) -> list[str]:
    """The reporter names *report_to* selects: ``"all"`` = every registered one whose library imports."""
    names: list[str] = []
    for name in report_to:
        if name == "none":
            continue
        if name == "all":
            names += [n for n in registry.names() if _available(registry, n)]
        else:
            names.append(name)
    # one reporter per factory: an alias (``comet_ml`` for ``comet``) must not open a second run
    chosen, factories = [], []
    for name in names:
        factory = registry.factory(name)
        if factory not in factories:
            chosen.append(name)
            factories.append(factory)
    return chosen


def _available(registry: Any, name: str) -> bool:
    factory = registry.factory(name)
    module = importlib.import_module(factory.__module__)
    check = getattr(module, "available", None)
    return bool(check()) if callable(check) else True


def namespaced(logs: dict[str, Any]) -> dict[str, float]:
    """Numeric log values with tracker names: ``eval_x`` → ``eval/x``, ``test_x`` → ``test/x``
    (``evaluate(metric_key_prefix="test")``), everything else → ``train/x``."""
    scalars = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        prefix, _, rest = key.partition("_")
        if prefix in ("eval", "test") and rest:
            scalars[f"{prefix}/{rest}"] = float(value)
        else:
            scalars[f"train/{key}"] = float(value)
    return scalars


class _Worker:
    """One reporter's queue and thread."""

    def __init__(self, label: str, impls: dict[str, Any]):
        self.label = label
        self.impls = impls  # hook name -> HookImpl of this reporter
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
        self.error: BaseException | None = None
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"hooktrain-report-{label}", daemon=True)
        self.thread.start()

    def _offer(self, item: Any, deadline: float | None) -> bool:
        """Queue *item*, waiting for room until *deadline* (``None``: not at all); False if still full."""
        try:
            if deadline is None:
                self.queue.put_nowait(item)
            else:
                self.queue.put(item, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        return True

    def put(self, hook_name: str, kwargs: dict[str, Any], deadline: float | None = None) -> None:
        """Queue a call; drop it (with one warning) when the queue stays full past *deadline*.

        A reporter that failed gets nothing more but its ``report_run_end`` (to close files and runs).
        """
        if hook_name not in self.impls or (self.error is not None and hook_name != "report_run_end"):
            return
        if not self._offer((hook_name, kwargs), deadline):
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("reporter %r is not keeping up; dropping its events", self.label)

    def _run(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        while True:
            batch = [get()]  # wait for work, then take everything queued meanwhile
            try:
                while len(batch) < 1000:
                    batch.append(get_nowait())
            except queue.Empty:
                pass
            for item in batch:
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):  # the bridge waits for what came before
                    item.set()
                    continue
                self._call(*item)
            if "report_flush" in self.impls:
                self._call("report_flush", {})
            # Let the next events pile up instead of waking up for each one: waking this thread
            # per event costs the training thread two handovers of the interpreter lock.
            time.sleep(BATCH_SECONDS)

    def _call(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        failed = self.error is not None
        if failed and hook_name != "report_run_end":
            return
        impl = self.impls[hook_name]
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as exc:
            if failed:  # closing after an earlier failure: best effort, already reported
                logger.debug("reporter %r also failed to end its run: %r", self.label, exc)
                return
            self.error = exc
            logger.warning(
                "reporter %r failed in %s (%s: %s); it is switched off for the rest of the run",
                self.label, hook_name, type(exc).__name__, exc,
            )

    def marker(self, deadline: float) -> threading.Event:
        """An event set once everything queued so far has been handled (or the reporter is off)."""
        event = threading.Event()
        if self.error is not None:
            event.set()
        else:
            self._offer(event, deadline)  # when full it is never set: the caller's wait times out
        return event

    def close(self, deadline: float) -> None:
        """Queue the end of the worker (after what is queued); wait for room until *deadline*."""
        self._offer(_STOP, deadline)

    def join(self, deadline: float) -> bool:
        """Wait until *deadline* for the worker to finish. False when it had to be abandoned."""
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()


class ReportingBridge:
    """Feeds every ``report_*`` implementation from ``on_train_begin`` / ``on_log`` / ``on_train_end``.

    A run is open from ``on_train_begin`` to ``on_train_end``. Logs outside ``train()`` (a
    ``trainer.evaluate()`` before or after training) open a short run of their own that
    ``on_evaluate`` closes, so nothing is left unflushed.
    """

    def __init__(self, args: Any):
        self.args = args
        self.workers: list[_Worker] = []
        self._standalone = False  # the open run belongs to an evaluate() outside train()
        self._storing: dict[str, list[threading.Event]] = {}  # checkpoint name -> set when stored

    def _start(self, trainer: Any) -> None:
        pm = trainer.plugin_manager
        by_plugin: dict[int, tuple[Any, dict[str, Any]]] = {}
        for hook_name in REPORTER_HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                entry = by_plugin.setdefault(id(impl.plugin), (impl.plugin, {}))
                entry[1][hook_name] = impl
        self.workers = [_Worker(_label(pm, p), impls) for p, impls in by_plugin.values()]
        args = self.args
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = args.run_name or f"{os.path.basename(os.path.abspath(args.output_dir))}-{stamp}"
        self._put("report_run_start", run_name=run_name, config=args.to_dict())

    def _put(self, hook_name: str, **kwargs: Any) -> None:
        workers = self.workers
        for i, worker in enumerate(workers):
            if i:  # every reporter gets its own dicts: one that changes them affects nobody else
                kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
            worker.put(hook_name, kwargs)
        self._raise_if_fatal()  # after: the healthy reporters still get this event

    def _raise_if_fatal(self, workers: list[_Worker] | None = None) -> None:
        if self.args.report_errors != "raise":
            return
        for worker in self.workers if workers is None else workers:
            if worker.error is not None:
                raise ReporterError(f"reporter {worker.label!r} failed: {worker.error!r}") from worker.error

    def _end(self, status: str) -> None:
        """Queue ``report_run_end``, then give every worker until one shared deadline to finish."""
        workers, self.workers = self.workers, []
        self._standalone = False
        deadline = time.monotonic() + self.args.report_timeout
        for worker in workers:  # every worker first gets its end, then all finish in parallel
            worker.put("report_run_end", {"status": status}, deadline)
            worker.close(deadline)
        for worker in workers:
            if not worker.join(deadline):
                logger.warning(
                    "reporter %r did not finish within report_timeout=%ss; abandoned",
                    worker.label, self.args.report_timeout,
                )
        if status != "failed":
            self._raise_if_fatal(workers)

    @hookimpl
    def on_train_begin(self, trainer):
        if self.workers:  # an evaluate() run was left open: close it first
            self._end("completed")
        self._start(trainer)

    @hookimpl
    def on_log(self, trainer, state, logs):
        if not self.workers:
            self._standalone = True
            self._start(trainer)
        scalars = namespaced(logs)
        if scalars:
            self._put("report_scalars", scalars=scalars, step=state.global_step)

    @hookimpl
    def on_save(self, state, checkpoint_dir):
        """With ``report_checkpoints``: hand the checkpoint to the reporters, without waiting."""
        if not self.args.report_checkpoints or not self.workers:
            return
        name = os.path.basename(os.fspath(checkpoint_dir))
        self._put("report_artifact", path=os.fspath(checkpoint_dir), name=name, step=state.global_step)
        deadline = time.monotonic() + self.args.report_timeout
        self._storing[name] = [w.marker(deadline) for w in self.workers if "report_artifact" in w.impls]

    @hookimpl
    def protected_checkpoints(self):
        """The checkpoints a reporter is still storing: rotation keeps them until the next save."""
        self._storing = {n: done for n, done in self._storing.items() if not all(e.is_set() for e in done)}
        return list(self._storing) or None

    @hookimpl
    def on_evaluate(self):
        if self._standalone and self.workers:
            self._end("completed")

    @hookimpl
    def on_train_end(self, status):
        if self.workers:
            self._end(status)


def _label(pm: Any, plugin: Any) -> str:
    """The name a warning uses for a reporter: ``tensorboard`` for ``reporter.tensorboard``."""
    name = pm.get_name(plugin) or repr(plugin)
    return name[len("reporter."):] if name.startswith("reporter.") else name


@hookimpl
def validate_args(trainer, args):
    registry = trainer.registries["reporters"]
    return [registry.unknown_message(n) for n in args.report_to if n not in ("all", "none") and n not in registry]


@hookimpl
def configure(trainer, args):
    if not trainer.is_world_process_zero:
        return
    registry = trainer.registries["reporters"]
    names = selected_names(args.report_to, registry)
    for name in names:
        trainer.plugin_manager.register(registry.create(name, args), name=f"reporter.{name}")
    has_reporters = any(getattr(trainer.plugin_manager.hook, h).get_hookimpls() for h in REPORTER_HOOKS)
    if has_reporters:
        trainer.plugin_manager.register(ReportingBridge(args), name="reporting.bridge")


__all__ = ["ReportingBridge", "ReporterError", "namespaced", "selected_names"]
