"""The reporter interface: what an experiment-tracker integration implements (``hooktrain.Reporter``).

A reporter is an object, not a plugin: a plugin adds it to the reporter registry with
``register_reporters`` (``register(name, factory)``; ``factory(args)`` returns the object) and
``report_to`` selects it by name; an object passed as ``Trainer(plugins=[obj])`` that has these
methods is a reporter for that run too. The reporting plugin calls the methods, never the loop:
each reporter on a worker thread of its own, one call at a time, in the order of the events.

Every method is optional: implement those you need. Subclassing :class:`Reporter` gives no-op
defaults and the signatures; any object with at least one of the methods works the same way. A
method may accept any subset of its arguments, and may carry ``@hookimpl`` (reporters written
when these methods were hooks keep working; the marker is ignored).

New optional methods may be added to this interface in later versions; an object that lacks them
keeps working. Two serve resuming (docs/preemption.md): :meth:`Reporter.run_state` tells the
identity of the open run, stored in every checkpoint, and :meth:`Reporter.report_resume` hands it
back before ``report_run_start`` when a resumed ``train()`` continues that run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

#: How a run ended. ``"preempted"``: ``train()`` was interrupted (a preemption signal), a
#: checkpoint of its last step is written and a resume will continue the run; treat a status you
#: do not know like ``"stopped"``.
RunStatus = Literal["completed", "stopped", "failed", "preempted"]

#: Each method of the interface with the arguments it is called with, in the order of its signature.
REPORTER_METHODS: Mapping[str, tuple[str, ...]] = {
    "report_resume": ("run", "step"),
    "report_run_start": ("run_name", "config"),
    "report_scalars": ("scalars", "step"),
    "report_flush": (),
    "report_artifact": ("path", "name", "step"),
    "report_run_end": ("status",),
}


class Reporter:
    """Base class of reporters: every method is a no-op until you override it."""

    def run_state(self) -> dict[str, Any] | None:
        """The identity of the open run (JSON-safe: a run id, a directory), or ``None``.

        Not a queued call: the reporting plugin calls it on the training thread each time a
        checkpoint is written (after your ``report_run_start`` has returned) and stores the
        answer in the checkpoint. Read attributes only.
        """
        return None

    def report_resume(self, run: dict[str, Any], step: int) -> None:
        """The next ``report_run_start`` continues the run *run* (what :meth:`run_state` returned
        when the checkpoint was written) instead of opening a new one.

        Called before ``report_run_start`` when ``train()`` resumes from a checkpoint that holds
        your run and ``resume_tracker_runs=True``. Steps logged after *step* by the interrupted
        run are to be replaced by the ones that follow, where the tracker can.

        :param run: the stored run identity.
        :param step: the global step of the checkpoint the run resumes from.
        """

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        """A run starts: open it in your tracker.

        :param run_name: the run's name (``args.run_name``, or ``<output_dir name>-<time>``).
        :param config: the JSON-safe arguments dict (``args.to_dict()``); yours to change.
        """

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Record scalars, namespaced (``train/loss``, ``eval/accuracy``), at the global step.

        :param scalars: name to value, a fresh dict for each call.
        :param step: the global optimizer step; a training log and an evaluation may share one.
        """

    def report_flush(self) -> None:
        """Every event queued so far has been handed to you: send what you buffered.

        Called after each batch of events (at most every 50 ms while events keep coming), so a
        reporter may buffer ``report_scalars`` and send one request here.
        """

    def report_artifact(self, path: str, name: str, step: int) -> None:
        """Store the directory *path* (a complete checkpoint) as the artifact *name*.

        Called only with ``report_checkpoints=True``. Training goes on meanwhile, and
        ``save_total_limit`` rotation keeps the checkpoint until every reporter has stored it.

        :param path: the checkpoint directory.
        :param name: the artifact's name (``checkpoint-N``).
        :param step: the global step of the checkpoint.
        """

    def report_run_end(self, status: RunStatus) -> None:
        """The run ended: close it with its status; also called after one of your methods failed.

        :param status: ``"completed"``, ``"stopped"`` (a plugin or Ctrl-C stopped it),
            ``"preempted"`` (interrupted, to be resumed: see :data:`RunStatus`) or ``"failed"``
            (an exception).
        """


Call = Callable[[Mapping[str, Any]], Any]


def reporter_calls(reporter: object, label: str) -> tuple[dict[str, Call], list[str]]:
    """The methods *reporter* implements, each as ``call(arguments)``, and the problems found.

    ``call`` takes the full arguments dict of its method and passes the method the arguments it
    accepts. A method inherited unchanged from :class:`Reporter` is not implemented. A problem is
    a parameter the method needs but the interface does not give (named with *label*).
    """
    calls: dict[str, Call] = {}
    problems: list[str] = []
    for method_name, given in REPORTER_METHODS.items():
        method = getattr(reporter, method_name, None)
        if method is None or not callable(method):
            continue
        if getattr(method, "__func__", None) is getattr(Reporter, method_name):
            continue  # the base class's no-op
        try:
            parameters = list(inspect.signature(method).parameters.values())
        except (TypeError, ValueError):  # no signature (a builtin): give it everything
            calls[method_name] = _by_keyword(method, given)
            continue
        positional: list[str] = []
        keywords: list[str] = []
        skipped = False
        for p in parameters:
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.VAR_KEYWORD:
                keywords += [n for n in given if n not in positional and n not in keywords]
            elif p.name not in given:
                if p.default is p.empty:
                    problems.append(
                        f"reporter {label!r}: {method_name}() takes {p.name!r}, which it is never "
                        f"given (its arguments: {', '.join(given) or 'none'})"
                    )
                skipped = True
            elif p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and not skipped):
                positional.append(p.name)
            else:
                keywords.append(p.name)
        calls[method_name] = _caller(method, tuple(positional), tuple(keywords))
    return calls, problems


def is_reporter(obj: object) -> bool:
    """Whether *obj* has at least one method of the reporter interface."""
    return isinstance(obj, Reporter) or any(callable(getattr(obj, m, None)) for m in REPORTER_METHODS)


def _caller(method: Callable[..., Any], positional: tuple[str, ...], keywords: tuple[str, ...]) -> Call:
    if not keywords:
        if not positional:
            return lambda arguments: method()
        if len(positional) == 1:
            (only,) = positional
            return lambda arguments: method(arguments[only])
        return lambda arguments: method(*[arguments[n] for n in positional])
    return lambda arguments: method(*[arguments[n] for n in positional], **{n: arguments[n] for n in keywords})


def _by_keyword(method: Callable[..., Any], names: tuple[str, ...]) -> Call:
    return lambda arguments: method(**{n: arguments[n] for n in names})


__all__ = ["REPORTER_METHODS", "Reporter", "RunStatus", "is_reporter", "reporter_calls"]
