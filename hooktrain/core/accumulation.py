"""One gradient-accumulation window: the forward and backward passes of its micro-batches."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from hooktrain.core.data import to_device
from hooktrain.core.types import LossItems

if TYPE_CHECKING:
    from hooktrain.core.loop import Trainer


def accumulate(trainer: Trainer, micro: list[Any], items: LossItems | None) -> torch.Tensor:
    """Forward and backward over the micro-batches of one window; the window's loss.

    Without *items* each micro-batch's mean loss is divided by the window's length and the
    window's loss is their mean. With *items* (``count_loss_items``) each micro-batch's loss is
    already its share of the window's (``num_items_in_batch``): it is multiplied by
    ``items.scale``, back-propagated as it is, and the window's loss is the sum of the shares.
    """
    call, model, n, no_sync = trainer._call, trainer.model_wrapped, len(micro), trainer._no_sync
    training_step, backward, on_batch = call["training_step"], call["backward"], call["on_train_batch"]
    on_device = trainer.device.type != "cpu"
    num_items = None if items is None else items.num_items
    scale = 1.0 if items is None else items.scale
    losses = []
    for i, batch in enumerate(micro):
        trainer.check_interrupt()  # between micro-batches: an interrupt drops the step
        on_batch(trainer, batch)
        if on_device:
            batch = to_device(batch, trainer.device)
        # gradients are all-reduced (DDP) only on the last micro-batch of the window
        with no_sync() if i < n - 1 and no_sync else nullcontext():
            loss = training_step(trainer, model, batch, num_items)
            if items is None:
                backward(trainer, loss / n)
            else:
                if scale != 1.0:
                    loss = loss * scale
                backward(trainer, loss)
        losses.append(loss.detach())
    window = torch.stack(losses)
    return window.mean() if items is None else window.sum()
