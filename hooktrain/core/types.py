"""Small value types passed between the loop and plugins."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple


class _TrainResult(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class TrainOutput(_TrainResult):
    """HF's three fields (``global_step, loss, metrics = trainer.train()`` still unpacks), plus
    ``status``: "completed", "stopped" (should_stop, Ctrl-C) or "interrupted" (request_interrupt)."""

    status: str

    def __new__(cls, global_step: int, training_loss: float, metrics: dict[str, float],
                status: str = "completed") -> TrainOutput:
        out = super().__new__(cls, global_step, training_loss, metrics)
        out.status = status
        return out


class StepOutcome(NamedTuple):
    """What ``optimizer_step`` did: the pre-clip gradient norm and whether the step was skipped."""

    grad_norm: Any = None  # a 0-d tensor, or None when not computed
    skipped: bool = False


class LossItems(NamedTuple):
    """How the loss of one accumulation window is normalised (``count_loss_items``): over
    ``num_items`` items (label tokens) of the whole window, and multiplied by ``scale``."""

    num_items: Any  # a 0-d integer tensor (or an int): given to the loss as num_items_in_batch
    scale: float = 1.0  # the processes' count when num_items is their sum (their gradients are averaged)


@dataclass
class EvalOutput:
    """What ``evaluation_loop`` returns."""

    loss: float | None
    predictions: Any
    label_ids: Any
    num_samples: int
    inputs: Any = None  # include_for_metrics=["inputs"]
    losses: Any = None  # include_for_metrics=["loss"]: one per sample
    metrics: dict[str, float] | None = None  # computed batch by batch (batch_eval_metrics)


class EvalPrediction:
    """The object given to ``compute_metrics``: ``predictions``, ``label_ids`` and, when asked for
    (``include_for_metrics``), ``inputs`` and ``losses``. Unpacks as ``(predictions, label_ids)``
    followed by those of the other two that are set, as Hugging Face's does."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None):
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        self._items = (predictions, label_ids, *(x for x in (inputs, losses) if x is not None))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __getitem__(self, index: int) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)


class ProcessFlag(int):
    """A yes/no that reads as a bool (``if trainer.is_world_process_zero:``) and can also be called
    like Hugging Face's method (``trainer.is_world_process_zero()``)."""

    def __call__(self) -> bool:
        return bool(self)

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__
