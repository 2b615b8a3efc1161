"""Reporting: feeds the selected reporters (:class:`hooktrain.Reporter`) off the training thread.

Reads: report_to, run_name, report_errors, report_timeout, report_checkpoints, resume_tracker_runs.
Active on the main process when ``report_to`` selects a reporter or a ``Trainer(plugins=[...])``
object is one.

Reporters are objects, not plugins: the bridge calls their ``report_*`` methods itself. A
reporter that also implements real hooks (``on_save``…, marked ``@hookimpl``) is registered as
the plugin ``reporter.<name>`` for those hooks; its ``report_*`` methods are never hooks.

How a reporter is fed: every reporter has a worker thread and a buffer of its own. On a log event
the training thread only appends ``(method, arguments)`` to each buffer (no lock, no wake-up);
the worker wakes every ``BATCH_SECONDS``, takes everything buffered, builds the arguments
(``train/…`` names, a fresh config dict) and calls the reporter, in order, then
``report_flush``. The start and the end of a run wake it at once, so the end of ``train()``
does not wait for a timer. A reporter that raises is switched off with a warning naming it
(``report_errors="raise"``: the next log event raises :class:`ReporterError`); the others and
the training go on. At the end the workers get ``report_timeout`` seconds (together) to finish,
then are abandoned with a warning. Logs outside ``train()`` (a standalone ``evaluate()``) are
reported as a short run of their own.

Runs continue across a resume: each checkpoint stores every reporter's ``run_state()`` (plugin
state ``"reporting"``); a ``train()`` resumed from it hands each one its run back with
``report_resume(run, step)`` before ``report_run_start`` (unless ``resume_tracker_runs=False``).
A run that ``train()`` ended with the status ``"interrupted"`` ends with ``"preempted"``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from hooktrain.core.errors import HooktrainError, PluginLoadError
from hooktrain.core.markers import hookimpl
from hooktrain.core.reporter import Call, Reporter, is_reporter, reporter_calls

logger = logging.getLogger("hooktrain")

QUEUE_SIZE = 10_000  # events per reporter; beyond that new events are dropped (with a warning)
BATCH_SECONDS = 0.05  # a worker takes its buffered events in batches, at most this often
BRIDGE_NAME = "reporting.bridge"
STATE_KEY = "reporting"  # the bridge's plugin state: {"runs": {reporter name: run_state()}}
#: the train() status -> the reporters' run status, where they differ
RUN_STATUS = {"interrupted": "preempted"}
_STOP = object()

#: What a worker is handed: the method's name and its arguments, or a function that builds them
#: (run on the worker thread, so the training thread does not pay for it).
Item = tuple[str, Mapping[str, Any] | Callable[[], Mapping[str, Any]]]


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
    import importlib

    factory = registry.factory(name)
    module = importlib.import_module(factory.__module__)
    check = getattr(module, "available", None)
    return bool(check()) if callable(check) else True


def namespaced(logs: Mapping[str, Any]) -> dict[str, float]:
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
    """One reporter's buffer and thread, for one run."""

    def __init__(self, label: str, calls: Mapping[str, Call]):
        self.label = label
        self.calls = calls  # method name -> call(arguments)
        self.pending: deque[Any] = deque()  # appended by the training thread, emptied by the worker
        self.wake = threading.Event()
        self.error: BaseException | None = None
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"hooktrain-report-{label}", daemon=True)
        self.thread.start()

    def put(self, method: str, arguments: Any, urgent: bool = False) -> None:
        """Buffer a call; drop it (with one warning) when the reporter is this far behind.

        A reporter that failed gets nothing more but its ``report_run_end`` (to close files and
        runs), which is never dropped. *urgent* wakes the worker now instead of at its next batch.
        """
        if method not in self.calls or (self.error is not None and method != "report_run_end"):
            return
        if len(self.pending) >= QUEUE_SIZE and method != "report_run_end":
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("reporter %r is not keeping up; dropping its events", self.label)
            return
        self.pending.append((method, arguments))
        if urgent:
            self.wake.set()

    def marker(self) -> threading.Event:
        """An event set once everything buffered so far has been handled (or the reporter is off)."""
        event = threading.Event()
        if self.error is not None:
            event.set()
        else:
            self.pending.append(event)
        return event

    def close(self) -> None:
        """End the worker after what is buffered, and wake it now."""
        self.pending.append(_STOP)
        self.wake.set()

    def join(self, deadline: float) -> bool:
        """Wait until *deadline* for the worker to finish. False when it had to be abandoned."""
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()

    def _run(self) -> None:
        pending, wake = self.pending, self.wake
        popleft = pending.popleft
        flush = "report_flush" in self.calls
        while True:
            # Sleep between batches instead of waking up for each event: each wake-up would cost
            # the training thread a hand-over of the interpreter lock.
            wake.wait(BATCH_SECONDS)
            wake.clear()
            if not pending:
                continue
            while pending:
                item = popleft()
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):  # the bridge waits for what came before
                    item.set()
                    continue
                self._call(*item)
            if flush:
                self._call("report_flush", {})

    def _call(self, method: str, arguments: Any) -> None:
        failed = self.error is not None
        if failed and method != "report_run_end":
            return
        try:
            self.calls[method](arguments() if callable(arguments) else arguments)
        except Exception as exc:
            if failed:  # closing after an earlier failure: best effort, already reported
                logger.debug("reporter %r also failed to end its run: %r", self.label, exc)
                return
            self.error = exc
            logger.warning(
                "reporter %r failed in %s (%s: %s); it is switched off for the rest of the run",
                self.label, method, type(exc).__name__, exc,
            )


class ReportingBridge:
    """Feeds the reporters from ``on_train_begin`` / ``on_log`` / ``on_save`` / ``on_train_end``.

    A run is open from ``on_train_begin`` to ``on_train_end``. Logs outside ``train()`` (a
    ``trainer.evaluate()`` before or after training) open a short run of their own that
    ``on_evaluate`` closes, so nothing is left unflushed.
    """

    def __init__(self, args: Any, reporters: Mapping[str, object], calls: Mapping[str, Mapping[str, Call]]):
        self.args = args
        #: The run's reporters by name (``report_to`` names, or plugin names for plugin objects).
        self.reporters = dict(reporters)
        self._calls = calls
        self.workers: list[_Worker] = []
        self._standalone = False  # the open run belongs to an evaluate() outside train()
        self._storing: dict[str, list[threading.Event]] = {}  # checkpoint name -> set when stored
        self._started: dict[str, threading.Event] = {}  # reporter name -> its report_run_start is done
        self._resume: tuple[dict[str, Any], int] | None = None  # runs to continue, and their step

    def _start(self, resuming: bool = False) -> None:
        self.workers = [_Worker(label, calls) for label, calls in self._calls.items()]
        args = self.args
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = args.run_name or f"{os.path.basename(os.path.abspath(args.output_dir))}-{stamp}"
        to_dict = args.to_dict
        runs, step = self._resume if resuming and self._resume and args.resume_tracker_runs else ({}, 0)
        self._resume = None
        for worker in self.workers:  # each gets its own config dict, built on its own thread
            if worker.label in runs:
                worker.put("report_resume", {"run": runs[worker.label], "step": step})
            worker.put("report_run_start", lambda: {"run_name": run_name, "config": to_dict()}, urgent=True)
        self._started = {worker.label: worker.marker() for worker in self.workers}

    def _raise_if_fatal(self, workers: list[_Worker] | None = None) -> None:
        if self.args.report_errors != "raise":
            return
        for worker in self.workers if workers is None else workers:
            if worker.error is not None:
                raise ReporterError(f"reporter {worker.label!r} failed: {worker.error!r}") from worker.error

    def _end(self, status: str) -> None:
        """Hand every worker ``report_run_end``, then give them one shared deadline to finish."""
        workers, self.workers = self.workers, []
        self._standalone = False
        deadline = time.monotonic() + self.args.report_timeout
        for worker in workers:  # every worker first gets its end, then all finish in parallel
            worker.put("report_run_end", {"status": status})
            worker.close()
        for worker in workers:
            if not worker.join(deadline):
                logger.warning(
                    "reporter %r did not finish within report_timeout=%ss; abandoned",
                    worker.label, self.args.report_timeout,
                )
        if status != "failed":
            self._raise_if_fatal(workers)

    @hookimpl
    def on_train_begin(self):
        if self.workers:  # an evaluate() run was left open: close it first
            self._end("completed")
        self._start(resuming=True)

    @hookimpl
    def plugin_state(self, trainer):
        """Every open run's identity (``run_state()``) whose ``report_run_start`` is done; the
        checkpoint of an interrupt waits for it (up to ``report_timeout``), the others do not."""
        runs = {}
        wait = self.args.report_timeout if trainer.interrupt_reason is not None else 0
        for worker in self.workers:
            run_state = getattr(self.reporters.get(worker.label), "run_state", None)
            if run_state is None or getattr(run_state, "__func__", None) is Reporter.run_state:
                continue
            started = self._started.get(worker.label)
            if started is not None and not started.wait(wait):
                if wait:
                    logger.warning("reporter %r has not opened its run within report_timeout=%ss: "
                                   "the checkpoint does not record it", worker.label, wait)
                continue
            if worker.error is None:
                try:
                    state = run_state()
                except Exception as exc:
                    logger.warning("reporter %r failed in run_state (%r): the checkpoint does not "
                                   "record its run", worker.label, exc)
                    continue
                if state is not None:
                    runs[worker.label] = state
        return (STATE_KEY, {"runs": runs}) if runs else None

    @hookimpl
    def load_plugin_state(self, trainer, states):
        saved = states.get(STATE_KEY) or {}
        self._resume = (dict(saved.get("runs") or {}), trainer.state.global_step)

    @hookimpl
    def on_log(self, state, logs):
        if not self.workers:
            self._standalone = True
            self._start()
        step, logs = state.global_step, dict(logs)  # a snapshot: the workers read it later

        def arguments() -> dict[str, Any]:  # on each worker: its own dict of tracker names
            return {"scalars": namespaced(logs), "step": step}

        for worker in self.workers:
            worker.put("report_scalars", arguments)
        self._raise_if_fatal()  # after: the healthy reporters still get this event

    @hookimpl
    def on_save(self, state, checkpoint_dir):
        """With ``report_checkpoints``: hand the checkpoint to the reporters, without waiting."""
        if not self.args.report_checkpoints or not self.workers:
            return
        path = os.fspath(checkpoint_dir)
        name = os.path.basename(path)
        arguments = {"path": path, "name": name, "step": state.global_step}
        for worker in self.workers:
            worker.put("report_artifact", arguments)
        self._raise_if_fatal()
        self._storing[name] = [w.marker() for w in self.workers if "report_artifact" in w.calls]

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
            self._end(RUN_STATUS.get(status, status))


def active_reporters(trainer: Any) -> dict[str, object]:
    """The reporter objects of *trainer*'s runs, by name (empty when nothing reports)."""
    bridge = trainer.plugin_manager.get_plugin(BRIDGE_NAME)
    return dict(bridge.reporters) if bridge is not None else {}


def _implements_hooks(pm: Any, obj: object) -> bool:
    """Whether *obj* has methods marked ``@hookimpl`` for real hooks (``report_*`` never count)."""
    return any(pm.parse_hookimpl_opts(obj, attr) is not None for attr in dir(obj))


@hookimpl
def validate_args(trainer, args):
    registry = trainer.registries["reporters"]
    return [registry.unknown_message(n) for n in args.report_to if n not in ("all", "none") and n not in registry]


@hookimpl
def configure(trainer, args):
    if not trainer.is_world_process_zero:
        return
    pm = trainer.plugin_manager
    registry = trainer.registries["reporters"]
    reporters: dict[str, object] = {}
    problems: list[str] = []
    for name in selected_names(args.report_to, registry):
        reporter = registry.create(name, args)
        if not is_reporter(reporter):
            problems.append(
                f"reporter {name!r} ({registry.provider(name)}): its factory returned "
                f"{type(reporter).__name__}, which has none of the report_* methods of hooktrain.Reporter"
            )
            continue
        reporters[name] = reporter
        if _implements_hooks(pm, reporter):  # it also listens to events: a plugin for those
            pm.register(reporter, name=f"reporter.{name}")
    chosen = {id(r) for r in reporters.values()}
    for name, plugin in pm.list_name_plugin():  # objects passed as Trainer(plugins=[...])
        if plugin is not None and id(plugin) not in chosen and is_reporter(plugin):
            reporters[name] = plugin
    calls: dict[str, dict[str, Call]] = {}
    for name, reporter in reporters.items():
        calls[name], found = reporter_calls(reporter, name)
        problems += found
    if problems:
        raise PluginLoadError("\n".join(problems))
    if reporters:
        pm.register(ReportingBridge(args, reporters, calls), name=BRIDGE_NAME)


__all__ = ["ReportingBridge", "ReporterError", "active_reporters", "namespaced", "selected_names"]
