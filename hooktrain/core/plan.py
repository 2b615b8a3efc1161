"""The step plan of a run: how many batches, optimizer steps and epochs it has (HF's accounting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepPlan:
    """How a run is divided into epochs and optimizer steps.

    ``batches_per_epoch`` is ``None`` for data without a length (an iterable dataset): an "epoch"
    is then one pass over the data, of unknown length, and ``epochs`` is ``None`` too; the run
    goes on across passes until ``max_steps``.
    """

    batches_per_epoch: int | None  #: micro-batches in one pass over the data
    steps_per_epoch: int  #: optimizer steps in one epoch (``max_steps`` without a length)
    epochs: int | None  #: epochs to run, the last one possibly cut short by ``max_steps``
    max_steps: int  #: optimizer steps of the whole run
    accumulation: int  #: micro-batches per optimizer step (``gradient_accumulation_steps``)

    @classmethod
    def of(cls, loader: Any, max_steps: int, num_train_epochs: float, accumulation: int) -> StepPlan:
        """Hugging Face's step accounting for *loader* (``max_steps > 0`` overrides the epochs)."""
        try:
            batches = len(loader)
        except TypeError:
            return cls(None, max_steps, None, max_steps, accumulation)
        steps_per_epoch = max(math.ceil(batches / accumulation), 1)
        if max_steps > 0:
            return cls(batches, steps_per_epoch, math.ceil(max_steps / steps_per_epoch), max_steps, accumulation)
        total = math.ceil(num_train_epochs * steps_per_epoch)
        return cls(batches, steps_per_epoch, math.ceil(num_train_epochs), total, accumulation)

    @property
    def last_window(self) -> int:
        """The micro-batches of an epoch's last optimizer step (the others have ``accumulation``):
        partial when the epoch's batches do not divide evenly."""
        if self.batches_per_epoch is None:
            return self.accumulation
        return self.batches_per_epoch % self.accumulation or self.accumulation

    @property
    def epoch_length(self) -> int:
        """Micro-batches that count as one epoch for ``state.epoch`` (``max_steps`` windows
        without a length, as HF counts)."""
        if self.batches_per_epoch is None:
            return self.steps_per_epoch * self.accumulation
        return self.batches_per_epoch

    def position(self, global_step: int) -> tuple[int, int]:
        """``(epoch, optimizer step within it)`` where a run resumed at *global_step* goes on.

        Without a length it is ``(0, 0)``: the data is read from its start again.
        """
        if self.batches_per_epoch is None:
            return 0, 0
        return divmod(global_step, self.steps_per_epoch)
