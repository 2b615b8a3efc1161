"""Settings of preemption handling (:mod:`hooktrain.plugins.preemption`); torch-free."""

from __future__ import annotations

import signal

from hooktrain.core.settings import Invalid, arg, config_group

#: Signals a process cannot catch, and the ones Python itself uses for other purposes.
UNCATCHABLE = ("SIGKILL", "SIGSTOP")
RESERVED = {"SIGINT": "Python turns it into KeyboardInterrupt (Ctrl-C), which already ends the run"}


def catchable_signal_names() -> list[str]:
    """Every signal name of this platform that a handler can be installed for."""
    names = {s.name for s in signal.Signals if not s.name.startswith("CTRL_")}
    return sorted(n for n in names if n not in UNCATCHABLE and n not in RESERVED)


def _signal_names(items: list[str]) -> list[str]:
    """Each name as ``SIGXXX`` (``term``, ``TERM`` and ``SIGTERM`` are the same), repeats dropped."""
    if [str(i).strip().lower() for i in items] == ["none"]:  # the command line's way to say []
        return []
    out: list[str] = []
    wrong: list[str] = []
    for item in items:
        name = str(item).strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name in UNCATCHABLE:
            wrong.append(f"{item!r} cannot be caught by any process")
        elif name in RESERVED:
            wrong.append(f"{item!r} is not allowed: {RESERVED[name]}")
        elif name not in signal.Signals.__members__:
            wrong.append(f"{item!r} is not a signal of this platform")
        elif name not in out:
            out.append(name)
    if wrong:
        raise Invalid(f"preemption_signals={items!r} is invalid: {'; '.join(wrong)}. Allowed: "
                      f"{', '.join(catchable_signal_names())}, or [] ('none') to turn the handling off")
    return out


@config_group
class PreemptionArguments:
    preemption_signals: list[str] = arg(
        None, "Signals that end training with a checkpoint and exit status 75 (docs/preemption.md): "
        "names such as 'SIGTERM' or 'SIGUSR1'; [] or 'none' turns the handling off.",
        factory=lambda: ["SIGTERM"], normalise=_signal_names)
    resume_tracker_runs: bool = arg(
        True, "On resume, every reporter continues the tracker run stored in the checkpoint (same "
        "TensorBoard directory, wandb/mlflow run, comet experiment) instead of starting a new one.")
