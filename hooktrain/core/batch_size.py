"""``auto_find_batch_size``: train again with a smaller batch after running out of memory.

As Hugging Face's ``Trainer`` (through accelerate's ``find_executable_batch_size``) does: a run
that fails with an out-of-memory error (CUDA, XPU, MPS or the CPU allocator) is started again
from the beginning with ``per_device_train_batch_size`` reduced to 90 % (rounded down), until it
fits or the size would reach 0. The optimizer and scheduler that hooktrain created are created
again (the number of steps changes); ones passed to the ``Trainer`` are kept.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import torch

from hooktrain.core.state import TrainerState

logger = logging.getLogger("hooktrain")

#: What the messages of out-of-memory errors contain (accelerate's list).
OUT_OF_MEMORY = (" out of memory.", "MPS backend out of memory", "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",
                 "DefaultCPUAllocator: can't allocate memory", "PT_DEVMEM Allocation failed")


def out_of_memory(error: BaseException) -> bool:
    """Whether *error* says that memory ran out."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and len(error.args) == 1 and \
        any(text in str(error.args[0]) for text in OUT_OF_MEMORY)


def train_finding_batch_size(trainer: Any, train: Callable[..., Any], *args: Any) -> Any:
    """``train(*args)``, again with a smaller training batch after each out-of-memory failure."""
    made_optimizer, made_scheduler = trainer.optimizer is None, trainer.lr_scheduler is None
    trainer._finding_batch_size = True
    try:
        while True:
            try:
                return train(*args)
            except RuntimeError as error:
                size = trainer.args.per_device_train_batch_size
                smaller = int(size * 0.9)
                if not out_of_memory(error) or smaller < 1:
                    raise
                logger.warning("auto_find_batch_size: out of memory with per_device_train_batch_size=%d; "
                               "training again from the start with %d", size, smaller)
                del error
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                trainer.args = trainer.args.replace(per_device_train_batch_size=smaller)  # not the caller's
                trainer.state = TrainerState()
                if made_optimizer:
                    trainer.optimizer = None
                if made_scheduler:
                    trainer.lr_scheduler = None
    finally:
        trainer._finding_batch_size = False
