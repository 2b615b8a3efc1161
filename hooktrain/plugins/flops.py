"""Counting a model's FLOPs with :class:`torch.utils.flop_counter.FlopCounterMode`.

torch's counter knows matrix products, convolutions and the CUDA attention kernels. The CPU
attention kernel that ``scaled_dot_product_attention`` uses on a CPU is added here with torch's
own attention formulas, so a transformer's attention is counted on a CPU too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["flop_counter", "count_flops"]


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    from torch.utils import flop_counter as fc

    forward_count = getattr(fc, "sdpa_flop_count", None)
    backward_count = getattr(fc, "sdpa_backward_flop_count", None)
    aten = torch.ops.aten
    if forward_count is None or backward_count is None or not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def forward(query_shape, key_shape, value_shape, *_: Any, **__: Any) -> int:
        return int(forward_count(query_shape, key_shape, value_shape))

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *_: Any, **__: Any) -> int:
        return int(backward_count(grad_out_shape, query_shape, key_shape, value_shape))

    formulas: dict[Any, Callable[..., int]] = {aten._scaled_dot_product_flash_attention_for_cpu: forward}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return formulas


def flop_counter() -> Any:
    """A ``FlopCounterMode`` (not entered, nothing printed) that also counts CPU attention."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def count_flops(function: Callable[[], Any]) -> int:
    """The FLOPs that calling *function* performs (what :func:`flop_counter` sees)."""
    with flop_counter() as counter:
        function()
    return int(counter.get_total_flops())
