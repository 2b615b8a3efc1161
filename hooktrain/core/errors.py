"""Exceptions raised by hooktrain."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HooktrainError(Exception):
    """Base class of every hooktrain error."""


class ArgumentError(HooktrainError, ValueError):
    """One or more settings are invalid.

    ``problems`` lists every problem found, each naming the field, its value and what is
    allowed, so a user fixes them all in one go.
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} invalid settings:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class PluginLoadError(HooktrainError):
    """A plugin could not be imported or registered."""


class NameConflictError(HooktrainError, ValueError):
    """Two plugins registered the same name in one registry."""


class UnknownNameError(ArgumentError):
    """A name selects nothing in an open registry (``report_to``, ``save_strategy``)."""


class CheckpointError(HooktrainError):
    """A checkpoint is missing, incomplete or fails verification."""


class CheckpointSettingError(CheckpointError, ValueError):
    """A checkpoint setting does not fit the disk: resuming from a path that does not exist, or a
    fresh run into an ``output_dir`` that already holds checkpoints. A :class:`CheckpointError`
    and a ``ValueError``; a damaged checkpoint stays a plain :class:`CheckpointError`."""


def closest_match(value: object, choices: Iterable[object]) -> str | None:
    """The choice closest to *value* (difflib), or ``None``: the one "did you mean" of hooktrain."""
    names = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = closest_match(value, choices)
    return f"; did you mean {close!r}?" if close else ""
