"""Learning-rate schedules (``create_scheduler``, trylast). Reads: lr_scheduler_type,
lr_scheduler_kwargs, warmup_steps, warmup_ratio, learning_rate, learning_rate_end, power.

Each schedule is a ``LambdaLR`` whose factor equals Hugging Face's formula at every step (the
step with index t uses factor(t); warm-up is ``t / W``). ``learning_rate_end`` is the final LR of
``cosine``, ``cosine_with_restarts`` (as a floor) and ``polynomial`` (HF's ``lr_end``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from hooktrain.core.markers import hookimpl
from hooktrain.plugins.schedulers_args import SCHEDULER_KWARGS

KWARGS = SCHEDULER_KWARGS  # name -> the lr_scheduler_kwargs it accepts


def _linear(t: int, w: int, n: int) -> float:
    if t < w:
        return t / max(1, w)
    return max(0.0, (n - t) / max(1, n - w))


def _cosine(t: int, w: int, n: int, num_cycles: float, floor: float) -> float:
    if t < w:
        return t / max(1, w)
    p = (t - w) / max(1, n - w)
    factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * p)))
    return factor * (1 - floor) + floor


def _cosine_restarts(t: int, w: int, n: int, num_cycles: int, floor: float) -> float:
    if t < w:
        return t / max(1, w)
    p = (t - w) / max(1, n - w)
    if p >= 1.0:
        return floor
    factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0))))
    return factor * (1 - floor) + floor


def _polynomial(t: int, w: int, n: int, lr_init: float, lr_end: float, power: float) -> float:
    if t < w:
        return t / max(1, w)
    if t > n:
        return lr_end / lr_init
    decay = (lr_init - lr_end) * (1 - (t - w) / max(1, n - w)) ** power + lr_end
    return decay / lr_init


def _constant(t: int, w: int) -> float:
    return t / max(1, w) if t < w else 1.0


def _inverse_sqrt(t: int, w: int, timescale: float) -> float:
    if t < w:
        return t / max(1, w)
    return 1.0 / math.sqrt((t + timescale - w) / timescale)


def lr_lambda(args: Any, num_training_steps: int, base_lr: float) -> Callable[[int], float]:
    """The factor of the base LR at each step, for ``args.lr_scheduler_type``."""
    name, n = args.lr_scheduler_type, num_training_steps
    kw = dict(args.lr_scheduler_kwargs or {})
    w = args.get_warmup_steps(n)
    end = args.learning_rate_end
    floor = (end / base_lr) if end is not None and base_lr > 0 else 0.0
    if name == "linear":
        return partial(_linear, w=w, n=n)
    if name == "cosine":
        return partial(_cosine, w=w, n=n, num_cycles=kw.get("num_cycles", 0.5), floor=floor)
    if name == "cosine_with_restarts":
        return partial(_cosine_restarts, w=w, n=n, num_cycles=kw.get("num_cycles", 1), floor=floor)
    if name == "polynomial":
        lr_end = kw.get("lr_end", end if end is not None else 1e-7)
        power = kw.get("power", args.power)
        if base_lr <= lr_end:
            raise ValueError(f"polynomial: learning_rate_end ({lr_end}) must be below learning_rate ({base_lr})")
        return partial(_polynomial, w=w, n=n, lr_init=base_lr, lr_end=lr_end, power=power)
    if name == "constant":
        return partial(_constant, w=0)
    if name == "constant_with_warmup":
        return partial(_constant, w=w)
    if name == "inverse_sqrt":
        timescale = kw.get("timescale") or (w or 10_000)
        return partial(_inverse_sqrt, w=w, timescale=timescale)
    raise ValueError(f"unknown lr_scheduler_type {name!r}")


@hookimpl
def validate_args(args):
    allowed = KWARGS.get(args.lr_scheduler_type)
    unknown = sorted(set(args.lr_scheduler_kwargs or {}) - (allowed or set()))
    if allowed is not None and unknown:
        return [
            f"lr_scheduler_kwargs: {unknown} not accepted by lr_scheduler_type="
            f"{args.lr_scheduler_type!r}; accepted: {sorted(allowed) or 'none'}"
        ]
    return None


@hookimpl(trylast=True)
def create_scheduler(optimizer, args, num_training_steps):
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args, num_training_steps, base_lr))
