"""The reporting bridge: turns training events into ``report_*`` calls, off the training thread.

Reads: report_to, run_name, report_errors, report_timeout. Active on the main process when
``report_to`` selects at least one reporter. Every reporter gets its own worker thread and its
own bounded queue, so a slow or hung tracker never stalls a training step nor the other
reporters. A reporter that raises is switched off with a warning naming it (``report_errors=
"raise"`` makes that fatal instead); the others and the training go on. At the end each worker
gets ``report_timeout`` seconds to finish, then is abandoned with a warning.
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

QUEUE_SIZE = 10_000
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
        elif name not in names:
            names.append(name)
    return list(dict.fromkeys(names))


def _available(registry: Any, name: str) -> bool:
    factory = registry.factory(name)
    module = importlib.import_module(factory.__module__)
    check = getattr(module, "available", None)
    return bool(check()) if callable(check) else True


def namespaced(logs: dict[str, Any]) -> dict[str, float]:
    """Numeric log values with tracker names: ``eval_x`` → ``eval/x``, everything else → ``train/x``."""
    scalars = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            scalars[f"eval/{key[5:]}"] = float(value)
        elif key != "epoch":
            scalars[f"train/{key}"] = float(value)
        else:
            scalars["train/epoch"] = float(value)
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

    def put(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        if self.error is not None or hook_name not in self.impls:
            return
        try:
            self.queue.put_nowait((hook_name, kwargs))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("reporter %s is not keeping up; dropping its events", self.label)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            hook_name, kwargs = item
            if self.error is not None:
                continue
            impl = self.impls[hook_name]
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                self.error = exc
                logger.warning(
                    "reporter %s failed in %s (%s: %s); it is switched off for the rest of the run",
                    self.label, hook_name, type(exc).__name__, exc,
                )

    def stop(self, deadline: float) -> bool:
        """Ask the worker to finish; wait until *deadline*. False when it had to be abandoned."""
        try:
            self.queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()


class ReportingBridge:
    """Feeds every ``report_*`` implementation from ``on_train_begin`` / ``on_log`` / ``on_train_end``."""

    def __init__(self, args: Any):
        self.args = args
        self.workers: list[_Worker] = []

    def _start(self, trainer: Any) -> None:
        pm = trainer.plugin_manager
        by_plugin: dict[int, tuple[Any, dict[str, Any]]] = {}
        for hook_name in ("report_run_start", "report_scalars", "report_run_end"):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                entry = by_plugin.setdefault(id(impl.plugin), (impl.plugin, {}))
                entry[1][hook_name] = impl
        self.workers = [_Worker(pm.get_name(p) or repr(p), impls) for p, impls in by_plugin.values()]
        args = self.args
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = args.run_name or f"{os.path.basename(os.path.abspath(args.output_dir))}-{stamp}"
        self._put("report_run_start", run_name=run_name, config=args.to_dict())

    def _put(self, hook_name: str, **kwargs: Any) -> None:
        self._raise_if_fatal()
        for worker in self.workers:
            worker.put(hook_name, kwargs)

    def _raise_if_fatal(self) -> None:
        if self.args.report_errors != "raise":
            return
        for worker in self.workers:
            if worker.error is not None:
                raise ReporterError(f"reporter {worker.label} failed: {worker.error!r}") from worker.error

    @hookimpl
    def on_train_begin(self, trainer):
        self._start(trainer)

    @hookimpl
    def on_log(self, trainer, state, logs):
        if not self.workers:
            self._start(trainer)
        scalars = namespaced(logs)
        if scalars:
            self._put("report_scalars", scalars=scalars, step=state.global_step)

    @hookimpl
    def on_train_end(self, status):
        if not self.workers:
            return
        for worker in self.workers:
            worker.put("report_run_end", {"status": status})
        deadline = time.monotonic() + self.args.report_timeout
        for worker in self.workers:
            if not worker.stop(deadline):
                logger.warning(
                    "reporter %s did not finish within report_timeout=%ss; abandoned",
                    worker.label, self.args.report_timeout,
                )
        workers, self.workers = self.workers, []
        if self.args.report_errors == "raise" and status != "failed":
            self.workers = workers
            try:
                self._raise_if_fatal()
            finally:
                self.workers = []


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
    has_reporters = any(
        getattr(trainer.plugin_manager.hook, h).get_hookimpls()
        for h in ("report_run_start", "report_scalars", "report_run_end")
    )
    if has_reporters:
        trainer.plugin_manager.register(ReportingBridge(args), name="reporting.bridge")


__all__ = ["ReportingBridge", "ReporterError", "namespaced", "selected_names"]
