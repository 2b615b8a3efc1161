"""Settings of the optimizer plugin (:mod:`hooktrain.plugins.optimizers`); torch-free.

:data:`OPTIMIZERS` is the one table of ``optim`` names.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

from hooktrain.core.errors import did_you_mean
from hooktrain.core.settings import Checks, Invalid, arg, config_group

#: ``optim`` name → the ``torch.optim`` class whose constructor keywords ``optim_args`` may use.
OPTIM_CLASSES = {
    "adamw_hf": "AdamW", "adamw_torch": "AdamW", "adamw_torch_fused": "AdamW",
    "adamw_apex": "AdamW", "fused_adam": "AdamW", "sgd": "SGD", "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
}
OPTIMIZERS = tuple(OPTIM_CLASSES)
#: The names that select torch's fused AdamW.
FUSED = ("adamw_torch_fused", "fused_adam")


def _key_values(value: Any) -> Any:
    """``parse`` of optim_args: HF's ``"k=v,k2=v2"`` form; values are JSON where they parse."""
    if not isinstance(value, str) or value.strip().startswith("{") or not value.strip():
        return value
    text = value.strip()
    if "=" not in text:
        raise Invalid(f"optim_args={text!r} is invalid: must be a dict, a JSON object or 'k=v,k2=v2'")
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in parts)):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"optim_args={text!r} is invalid: {part!r} is not 'key=value'")
        raw = raw.strip()
        raw_json = {"True": "true", "False": "false", "None": "null"}.get(raw, raw)
        raw_json = raw_json.replace("(", "[").replace(")", "]")
        try:
            out[key.strip()] = json.loads(raw_json)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@config_group
class OptimizersArguments:
    learning_rate: float = arg(5e-5, "Peak learning rate (reached after warmup).", ge=0)
    weight_decay: float = arg(
        0.0, "Weight decay, applied to all parameters except biases and norm weights.", ge=0)
    adam_beta1: float = arg(0.9, "beta1 of the Adam-family optimizers.", ge=0, lt=1)
    adam_beta2: float = arg(0.999, "beta2 of the Adam-family optimizers.", ge=0, lt=1)
    adam_epsilon: float = arg(1e-8, "epsilon of the Adam-family optimizers.", ge=0)
    optim: str = arg(
        "adamw_hf", "Optimizer: adamw_hf/adamw_torch = torch AdamW, adamw_torch_fused/fused_adam = "
        "fused torch AdamW, adamw_apex = apex FusedAdam, or torch's SGD/Adagrad/RMSprop.",
        choices=OPTIMIZERS)
    optim_args: dict[str, Any] | None = arg(
        None, "Extra optimizer constructor keywords: a dict, a JSON object or 'k=v,k2=v2'; keys are "
        "checked against the optimizer's constructor.", parse=_key_values)


@functools.cache
def optimizer_arg_names(optim: str) -> tuple[str, ...]:
    """Keywords ``optim_args`` may hold for *optim*: its torch constructor's, minus ``params``."""
    import torch.optim

    cls = getattr(torch.optim, OPTIM_CLASSES[optim])
    return tuple(p for p in inspect.signature(cls).parameters if p != "params")


def check(a: Any, c: Checks) -> None:
    if c.ok("optim", "optim_args") and a.optim in OPTIM_CLASSES and a.optim_args:
        allowed = optimizer_arg_names(a.optim)
        for key in a.optim_args:
            if key not in allowed:
                c.problem(f"optim_args key {key!r} is not accepted by optim={a.optim!r}"
                          f"{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})")
