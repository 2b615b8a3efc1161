"""Optimizer creation (``create_optimizer``, trylast). Reads: optim, optim_args, learning_rate,
weight_decay, adam_beta1, adam_beta2, adam_epsilon.

Names: ``adamw_hf`` and ``adamw_torch`` (``torch.optim.AdamW``; the removed Hugging Face AdamW class
computed the same update), ``adamw_torch_fused`` / ``fused_adam`` (``AdamW(fused=True)``),
``adamw_apex`` (NVIDIA apex ``FusedAdam``), ``sgd``, ``adagrad``, ``rmsprop``. Weight decay applies to
every trainable parameter except biases and normalisation weights. Hugging Face recognises
normalisation layers by name and by ``nn.LayerNorm`` only; hooktrain also by the BatchNorm, GroupNorm
and RMSNorm types (docs/migrating-from-hf.md).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import torch

from hooktrain.core.markers import hookimpl
from hooktrain.plugins.optimizers_args import FUSED

APEX_MISSING = (
    "optim='adamw_apex' needs NVIDIA apex (https://github.com/NVIDIA/apex), which is not "
    "installed; use optim='adamw_torch_fused' for a fused AdamW from torch itself"
)
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(^|\.)norm($|\.)|_norm($|\.)", re.IGNORECASE)
_NORM_TYPES: tuple[type, ...] = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.batchnorm._BatchNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: not biases, not normalisation weights."""
    in_norm = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, module in model.named_modules()
        if isinstance(module, _NORM_TYPES)
        for p_name, _ in module.named_parameters(recurse=False)
    }
    return {
        name
        for name, _ in model.named_parameters()
        if name not in in_norm and not _NO_DECAY_NAME.search(name)
    }


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decay and a no-decay group (one group when no decay)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:  # one group: the same update, and one optimizer pass per step instead of two
        return [{"params": [p for _, p in named], "weight_decay": 0.0}]
    decay = decay_parameter_names(model)
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def optimizer_class_and_kwargs(args: Any) -> tuple[Any, dict[str, Any]]:
    """The optimizer class and its keyword arguments for ``args.optim``."""
    name = args.optim
    adam = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    if name in ("adamw_hf", "adamw_torch"):
        cls, kwargs = torch.optim.AdamW, adam
    elif name in FUSED:
        cls, kwargs = torch.optim.AdamW, {**adam, "fused": True}
    elif name == "adamw_apex":
        try:
            from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(APEX_MISSING) from exc
        cls, kwargs = FusedAdam, {**adam, "adam_w_mode": True}
    else:
        cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[name]
        kwargs = {"lr": args.learning_rate}
    optim_args = dict(args.optim_args or {})
    if "betas" in optim_args:
        optim_args["betas"] = tuple(optim_args["betas"])
    return cls, {**kwargs, **optim_args}


@hookimpl
def validate_args(trainer, args):
    if args.optim == "adamw_apex" and importlib.util.find_spec("apex") is None:
        return [APEX_MISSING]
    if "weight_decay" in (args.optim_args or {}):  # the parameter groups would override it
        return [f"optim_args={args.optim_args!r}: set weight_decay={args.optim_args['weight_decay']!r} "
                "as its own argument (it is applied per parameter group, without biases and norms)"]
    if args.optim not in FUSED:
        return None
    try:
        probe = torch.zeros(1, device=trainer.device, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        torch.optim.AdamW([probe], fused=True).step()
    except (RuntimeError, TypeError, ValueError) as exc:
        return [
            f"optim={args.optim!r}: torch's fused AdamW cannot run on {trainer.device} ({exc}); "
            "use optim='adamw_torch'"
        ]
    return None


@hookimpl(trylast=True)
def create_optimizer(model, args):
    cls, kwargs = optimizer_class_and_kwargs(args)
    return cls(parameter_groups(model, args.weight_decay), **kwargs)
