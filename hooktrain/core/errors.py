"""Exceptions raised by hooktrain."""

from __future__ import annotations


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
