"""Interrupts: a plugin asks training to end as soon as it safely can.

``trainer.request_interrupt(reason)`` only records the reason, so it may be called from a signal
handler. The loop looks at it before every optimizer step and between the micro-batches of an
accumulation window, the evaluation loop between its batches (``trainer.check_interrupt()``);
there :class:`TrainingInterrupted` unwinds to ``train()``. The step in progress is dropped (no
optimizer step: ``state.global_step`` stays the last completed step) and an evaluation in progress
is abandoned. ``train()`` then sets ``state.stop_reason``, fires ``on_interrupt`` (where plugins
save what must survive), logs the summary and ends the run with the status ``"interrupted"``.
"""

from __future__ import annotations

#: The exit status of ``hooktrain train`` when ``train()`` was interrupted: EX_TEMPFAIL of
#: sysexits.h ("temporary failure, try again later"). A scheduler requeues on it (docs/preemption.md).
EXIT_INTERRUPTED = 75


class TrainingInterrupted(Exception):
    """Raised at an interrupt check point once ``trainer.request_interrupt(reason)`` was called.

    ``train()`` catches it; it never reaches the caller of ``train()``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Interruptible:
    """The interrupt methods of the :class:`~hooktrain.Trainer` (mixed into it)."""

    #: The reason of the interrupt requested in this ``train()``, else ``None``.
    interrupt_reason: str | None = None

    def request_interrupt(self, reason: str) -> None:
        """Ask training to end as soon as it safely can: before the next optimizer step,
        micro-batch or evaluation batch. It only records *reason*: a signal handler may call it."""
        self.interrupt_reason = reason

    def check_interrupt(self) -> None:
        """Raise :class:`TrainingInterrupted` if an interrupt was requested: a loop's check point."""
        if self.interrupt_reason is not None:
            raise TrainingInterrupted(self.interrupt_reason)


__all__ = ["EXIT_INTERRUPTED", "Interruptible", "TrainingInterrupted"]
