"""Clearing gradients between optimizer steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def grad_clearer(optimizer: Any) -> Callable[[], None]:
    """A function equivalent to ``optimizer.zero_grad(set_to_none=True)``.

    For an optimizer that keeps torch's own ``zero_grad`` it sets the gradients to None itself,
    without the profiler range and the dynamo guard that method opens (about 5 µs per step on a
    CPU); an optimizer with its own ``zero_grad`` is called as it is.
    """
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)

    def clear() -> None:
        for group in optimizer.param_groups:  # read each time: load_state_dict replaces the list
            for p in group["params"]:
                p.grad = None

    return clear
