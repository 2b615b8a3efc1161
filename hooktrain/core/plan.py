"""The step plan of a run: how many batches, optimizer steps and epochs it has (HF's accounting),
and where in the data a resumed run goes on, also after the number of processes changed."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from hooktrain.core.data import ResumableBatchSampler

logger = logging.getLogger("hooktrain")


@dataclass(frozen=True)
class Grid:
    """How the samples of an epoch's order are dealt to the processes (hooktrain's
    :class:`~hooktrain.core.data.ResumableBatchSampler`): the order padded to a multiple of
    ``world_size``, every ``world_size``-th index to each process, ``batch_size`` at a time. For a
    loader of one's own it is a grid of batches (one "sample" per batch, one process)."""

    num_samples: int  #: samples of an epoch
    batch_size: int  #: per process
    world_size: int
    drop_last: bool
    accumulation: int
    sampled: bool = True  #: False: a grid of batches (a loader of one's own)

    @property
    def step_samples(self) -> int:
        """Samples of a full optimizer step, over all processes."""
        return self.batch_size * self.world_size * self.accumulation

    def batches(self, consumed: int = 0) -> int:
        """Micro-batches each process reads in the rest of an epoch of which *consumed* samples
        (a prefix of its order) were read: that rest is padded to a multiple of the processes."""
        per_process = math.ceil(max(self.num_samples - consumed, 0) / self.world_size)
        return per_process // self.batch_size if self.drop_last else math.ceil(per_process / self.batch_size)

    def steps(self, consumed: int = 0) -> int:
        """Optimizer steps in the rest of an epoch after *consumed* samples."""
        return math.ceil(self.batches(consumed) / self.accumulation)

    def position(self, origin: tuple[int, int, int], global_step: int) -> tuple[int, int]:
        """``(epoch, samples of it read)`` at *global_step*, on this grid since *origin*
        ``(global_step, epoch, samples)``: the rest of the origin's epoch, then whole epochs."""
        start, epoch, consumed = origin
        done, first = global_step - start, self.steps(consumed)
        if done < first:
            return epoch, consumed + done * self.step_samples
        done -= first
        per_epoch = max(self.steps(), 1)
        return epoch + 1 + done // per_epoch, done % per_epoch * self.step_samples


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
    grid: Grid | None = None  #: how an epoch's samples are dealt (``None`` without a length)
    #: ``(global_step, epoch, samples)`` from which on the data follows this grid (not (0, 0, 0)
    #: after a resume with another number of processes)
    origin: tuple[int, int, int] = (0, 0, 0)
    epoch_offset: int = 0  #: micro-batches of the epoch before this plan's first (:meth:`rest`)

    @classmethod
    def of(cls, loader: Any, max_steps: int, num_train_epochs: float, accumulation: int,
           origin: dict[str, int] | None = None, global_step: int = 0) -> StepPlan:
        """Hugging Face's step accounting for *loader* (``max_steps > 0`` overrides the epochs).

        *origin* is ``TrainerState.data_origin`` of a resumed run (see :meth:`record`): with
        another number of processes than now, the data position at *global_step* is taken over
        on the new grid (:meth:`reorigin`), and the steps and epochs are counted from there."""
        try:
            batches = len(loader)
        except TypeError:
            return cls(None, max_steps, None, max_steps, accumulation)
        steps_per_epoch = max(math.ceil(batches / accumulation), 1)
        grid = _grid(loader, batches, accumulation)
        if max_steps > 0:
            plan = cls(batches, steps_per_epoch, math.ceil(max_steps / steps_per_epoch), max_steps, accumulation, grid)
        else:
            total = math.ceil(num_train_epochs * steps_per_epoch)
            plan = cls(batches, steps_per_epoch, math.ceil(num_train_epochs), total, accumulation, grid)
        start = plan.reorigin(origin, global_step)
        if start == (0, 0, 0):
            return plan  # the run's own start: HF's accounting as is
        return plan.from_origin(start, max_steps, num_train_epochs)

    def reorigin(self, origin: dict[str, int] | None, global_step: int) -> tuple[int, int, int]:
        """The origin on this plan's grid: *origin* as recorded, or, when it was recorded with
        another number of processes, the position at *global_step* on that grid (the samples of the
        epoch already read are kept; the next ones are dealt to this run's processes)."""
        if origin is None or self.grid is None or not self.grid.sampled or not self.grid.num_samples:
            return (0, 0, 0)
        start = (origin["global_step"], origin["epoch"], origin["samples"])
        if origin["world_size"] == self.grid.world_size:
            return start
        old = replace(self.grid, world_size=origin["world_size"])
        epoch, consumed = old.position(start, global_step)
        if consumed and not self.grid.batches(consumed):  # nothing of it left for these processes
            epoch, consumed = epoch + 1, 0
        logger.info(
            "the data order was laid out for %d process(es), now %d: epoch %d goes on after the %d of its %d "
            "samples already read (the rest of its order dealt to the new processes)",
            origin["world_size"], self.grid.world_size, epoch, consumed, self.grid.num_samples)
        return global_step, epoch, consumed

    def from_origin(self, origin: tuple[int, int, int], max_steps: int, num_train_epochs: float) -> StepPlan:
        """This plan with the data following its grid from *origin*: ``max_steps > 0`` stays; else
        the run ends with the last epoch (its steps counted from the end of the epoch when it is
        fractional), so every sample is read once per epoch."""
        assert self.grid is not None and self.batches_per_epoch is not None
        start, epoch, consumed = origin
        first, per_epoch = self.grid.steps(consumed), self.steps_per_epoch
        if max_steps > 0:
            left = max_steps - start - first
            return replace(self, origin=origin, epochs=epoch + 1 + max(math.ceil(left / per_epoch), 0))
        epochs = math.ceil(num_train_epochs)
        last = math.ceil(num_train_epochs * per_epoch) - (epochs - 1) * per_epoch  # steps of the last epoch
        if epoch >= epochs:
            total = start
        elif epoch == epochs - 1:
            total = start + max(last - (per_epoch - first), 0)
        else:
            total = start + first + (epochs - epoch - 2) * per_epoch + last
        return replace(self, origin=origin, epochs=epochs, max_steps=total)

    def record(self) -> dict[str, int] | None:
        """The origin as ``TrainerState.data_origin`` saves it (``None`` without a sample grid)."""
        if self.grid is None or not self.grid.sampled:
            return None
        start, epoch, consumed = self.origin
        return {"global_step": start, "epoch": epoch, "samples": consumed, "world_size": self.grid.world_size}

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
        return self.batches_per_epoch + self.epoch_offset

    def position(self, global_step: int) -> tuple[int, int]:
        """``(epoch, samples of it already read, over all processes)`` where a run resumed at
        *global_step* goes on; with a loader of one's own, micro-batches of one process instead.

        Without a length it is ``(0, 0)``: the data is read from its start again.
        """
        if self.grid is None:
            return 0, 0
        if self.origin == (0, 0, 0):  # HF's arithmetic
            epoch, update = divmod(global_step, self.steps_per_epoch)
            return epoch, update * self.grid.step_samples
        return self.grid.position(self.origin, global_step)

    def rest(self, consumed: int) -> StepPlan:
        """The plan of the rest of an epoch of which *consumed* samples were read (from
        :meth:`position`): its batches and steps, and ``state.epoch`` still counted over the whole epoch."""
        if not consumed or self.grid is None or self.batches_per_epoch is None:
            return self
        left = self.grid.batches(consumed)
        return replace(self, batches_per_epoch=left, steps_per_epoch=math.ceil(left / self.accumulation),
                       epoch_offset=self.batches_per_epoch - left)


def _grid(loader: Any, batches: int, accumulation: int) -> Grid:
    """The grid of *loader*: its sampler's, or one of whole batches for a loader of one's own."""
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, ResumableBatchSampler):
        return Grid(sampler.num_samples, sampler.batch_size, sampler.world_size, sampler.drop_last, accumulation)
    return Grid(batches, 1, 1, False, accumulation, sampled=False)


def rebuild_scheduler(trainer: Any, num_training_steps: int) -> Any:
    """The trainer's scheduler built again (``create_scheduler``, from the base learning rates) for
    *num_training_steps*, at the step it had reached: a resumed run's steps changed with the number
    of processes. From the current step on the learning rate follows the new schedule."""
    old, optimizer = trainer.lr_scheduler, trainer.optimizer
    saved, current = old.state_dict(), [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:  # what create_scheduler saw when the run started
        group["lr"] = group.get("initial_lr", group["lr"])
    new = trainer.plugin_manager.hook.create_scheduler(
        trainer=trainer, optimizer=optimizer, args=trainer.args, num_training_steps=num_training_steps)
    if new is None or not hasattr(new, "last_epoch"):
        for group, lr in zip(optimizer.param_groups, current, strict=True):
            group["lr"] = lr
        return old
    new.load_state_dict(saved)
    new.last_epoch -= 1
    new.step()  # the learning rate of the current step, on the new schedule
    return new
