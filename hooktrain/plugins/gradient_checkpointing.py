"""Gradient (activation) checkpointing: recompute the activations of chosen blocks in the backward
pass instead of keeping them, trading compute for memory.

Reads: gradient_checkpointing, gradient_checkpointing_kwargs.

A Hugging Face model uses its own mechanism; any other model gets the forward of its blocks
(:func:`find_checkpoint_targets`) run under :func:`torch.utils.checkpoint.checkpoint`. Off by
default, when the plugin changes nothing. See docs/precision.md.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from hooktrain.core.markers import hookimpl

logger = logging.getLogger("hooktrain")

__all__ = [
    "CHECKPOINT_KWARGS",
    "disable_gradient_checkpointing",
    "enable_gradient_checkpointing",
    "find_checkpoint_targets",
]

#: Keys of ``gradient_checkpointing_kwargs`` passed on to :func:`torch.utils.checkpoint.checkpoint`.
CHECKPOINT_KWARGS: frozenset[str] = frozenset(
    {
        name
        for name, p in inspect.signature(checkpoint).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    | {"preserve_rng_state"}
)
#: Our own key of ``gradient_checkpointing_kwargs``: the class names of the blocks to checkpoint.
MODULES_KEY = "modules"
#: Keys that select *what* is checkpointed (Hugging Face's ``activation_checkpointing_enable``
#: arguments, understood for plain modules too): every n-th block, saved inputs kept on the CPU.
LAYOUT_KEYS: frozenset[str] = frozenset({"every_n_layers", "offload"})


# ---- wrapping blocks ------------------------------------------------------------------------


class _CheckpointedForward:
    """A module's ``forward`` replaced by one that runs it under :func:`torch.utils.checkpoint.checkpoint`.

    Stored as the instance attribute ``forward``, so the module tree and its ``state_dict`` keys
    do not change. Checkpoints only in training mode with gradients enabled. Holds no bound method
    (``deepcopy`` and ``pickle`` of the model keep working).
    """

    def __init__(self, module: torch.nn.Module, kwargs: dict[str, Any], offload: bool = False):
        self.module = module
        self.own_forward = module.__dict__.get("forward")  # an instance-level forward, if any
        self.kwargs = kwargs
        self.offload = offload

    def _inner(self, *args: Any, **kwargs: Any) -> Any:
        if self.own_forward is not None:
            return self.own_forward(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.training and torch.is_grad_enabled():
            fn = functools.partial(self._inner, **kwargs) if kwargs else self._inner
            if self.offload:
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                    return checkpoint(fn, *args, **self.kwargs)
            return checkpoint(fn, *args, **self.kwargs)
        return self._inner(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        if self.own_forward is not None:
            return inspect.signature(self.own_forward)
        return inspect.signature(type(self.module).forward.__get__(self.module))


def _is_hf_model(model: torch.nn.Module) -> bool:
    return any(
        callable(getattr(model, name, None))
        for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable")
    )


def _class_names(names: Any) -> list[str]:
    return [names] if isinstance(names, str) else list(names or [])


def find_checkpoint_targets(
    model: torch.nn.Module, modules: str | Iterable[str] | None = None
) -> list[tuple[str, torch.nn.Module]]:
    """The ``(name, module)`` blocks that gradient checkpointing wraps in a plain ``nn.Module``.

    In order of precedence:

    1. *modules* given: every submodule whose class name is listed (the outermost one when such
       blocks nest);
    2. the model is an ``nn.Sequential``: its children that hold parameters;
    3. the first ``nn.ModuleList`` in the model (registration order): its children — the usual
       list of transformer blocks;
    4. the first ``nn.Sequential`` inside the model: its children that hold parameters.

    An empty list means nothing can be checkpointed.
    """
    if modules is not None:
        wanted = set(_class_names(modules))
        found: list[tuple[str, torch.nn.Module]] = []
        for name, module in model.named_modules():
            if type(module).__name__ in wanted and not any(
                name.startswith(f"{outer}.") or outer == "" for outer, _ in found
            ):
                found.append((name, module))
        return found

    def children(prefix: str, container: torch.nn.Module, need_params: bool) -> list[tuple[str, torch.nn.Module]]:
        dot = f"{prefix}." if prefix else ""
        return [
            (f"{dot}{n}", m)
            for n, m in container.named_children()
            if not need_params or next(m.parameters(), None) is not None
        ]

    if isinstance(model, torch.nn.Sequential):
        return children("", model, need_params=True)
    for kind, need_params in ((torch.nn.ModuleList, False), (torch.nn.Sequential, True)):
        for name, module in model.named_modules():
            if isinstance(module, kind) and len(module) > 0:
                found = children(name, module, need_params)
                if found:
                    return found
    return []


def _checkpoint_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kw = {k: v for k, v in (kwargs or {}).items() if k != MODULES_KEY and k not in LAYOUT_KEYS}
    kw.setdefault("use_reentrant", False)
    return kw


def enable_gradient_checkpointing(
    model: torch.nn.Module, kwargs: dict[str, Any] | None = None
) -> list[str]:
    """Turn on gradient checkpointing for *model*; return the names of the checkpointed blocks.

    A Hugging Face model (one with ``activation_checkpointing_enable`` or the older
    ``gradient_checkpointing_enable``) uses its own mechanism, unless ``kwargs["modules"]`` names
    block classes; any other model gets the blocks of :func:`find_checkpoint_targets` wrapped
    (with ``every_n_layers=n``: blocks 0, n, 2n, ...; with ``offload=True`` the inputs saved for
    the recompute are kept in CPU memory). The other *kwargs* go to
    :func:`torch.utils.checkpoint.checkpoint`, ``use_reentrant`` defaulting to ``False``.
    """
    kwargs = dict(kwargs or {})
    ckpt_kwargs = _checkpoint_kwargs(kwargs)
    modules = kwargs.get(MODULES_KEY)
    layout = {k: kwargs[k] for k in LAYOUT_KEYS if k in kwargs}
    if modules is None and _is_hf_model(model):
        enable = getattr(model, "activation_checkpointing_enable", None)
        if callable(enable):
            enable(activation_checkpointing_kwargs=ckpt_kwargs, **layout)
        else:
            model.gradient_checkpointing_enable(  # type: ignore[operator]  # older transformers
                gradient_checkpointing_kwargs=ckpt_kwargs, **layout
            )
        return [type(model).__name__]
    targets = find_checkpoint_targets(model, modules)
    if not targets:
        raise ValueError(_nothing_to_checkpoint(model, modules))
    targets = targets[:: int(layout.get("every_n_layers", 1))]
    for _, module in targets:
        if not isinstance(module.__dict__.get("forward"), _CheckpointedForward):
            module.forward = _CheckpointedForward(module, ckpt_kwargs, bool(layout.get("offload", False)))
    return [name for name, _ in targets]


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Undo :func:`enable_gradient_checkpointing` (both mechanisms)."""
    for module in model.modules():
        patched = module.__dict__.get("forward")
        if isinstance(patched, _CheckpointedForward):
            if patched.own_forward is not None:
                module.forward = patched.own_forward
            else:
                del module.forward
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if callable(getattr(model, name, None)):
            getattr(model, name)()
            break


def _nothing_to_checkpoint(model: torch.nn.Module, modules: Any) -> str:
    classes = sorted({type(m).__name__ for m in model.modules()})
    if modules is not None:
        return (
            f"gradient_checkpointing_kwargs['modules']={_class_names(modules)!r} matches no submodule "
            f"of {type(model).__name__}; its module classes are: {', '.join(classes)}"
        )
    return (
        f"gradient_checkpointing=True: nothing to checkpoint in {type(model).__name__}: it is not a "
        "Hugging Face model (no gradient_checkpointing_enable), not an nn.Sequential, and holds no "
        "nn.ModuleList or nn.Sequential of blocks; name the block classes to checkpoint with "
        f"gradient_checkpointing_kwargs={{'modules': ['YourBlock']}} (module classes here: "
        f"{', '.join(classes)})"
    )


def _checkpointing_problems(model: torch.nn.Module, kwargs: dict[str, Any] | None) -> list[str]:
    problems = []
    kwargs = dict(kwargs or {})
    allowed = CHECKPOINT_KWARGS | LAYOUT_KEYS | {MODULES_KEY}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        problems.append(
            f"gradient_checkpointing_kwargs has unknown keys {unknown}: allowed are "
            f"{', '.join(sorted(allowed))}"
        )
    every = kwargs.get("every_n_layers", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        problems.append(
            f"gradient_checkpointing_kwargs['every_n_layers']={every!r} is invalid: an integer >= 1"
        )
    modules = kwargs.get(MODULES_KEY)
    if modules is not None and (
        not _class_names(modules) or not all(isinstance(n, str) for n in _class_names(modules))
    ):
        problems.append(
            f"gradient_checkpointing_kwargs['modules']={modules!r} is invalid: give a class name or a "
            "list of class names"
        )
    elif modules is None and _is_hf_model(model):
        layout = sorted(LAYOUT_KEYS & set(kwargs))
        if layout and not callable(getattr(model, "activation_checkpointing_enable", None)):
            problems.append(
                f"gradient_checkpointing_kwargs {layout}: this version of {type(model).__name__} has no "
                "activation_checkpointing_enable to take them; upgrade transformers or drop them"
            )
        if not getattr(model, "supports_gradient_checkpointing", True):
            problems.append(
                f"gradient_checkpointing=True: {type(model).__name__} does not support gradient "
                "checkpointing; name its block classes with gradient_checkpointing_kwargs="
                "{'modules': [...]} or drop gradient_checkpointing"
            )
    elif not find_checkpoint_targets(model, modules):
        problems.append(_nothing_to_checkpoint(model, modules))
    return problems


# ---- hooks ----------------------------------------------------------------------------------


@hookimpl
def validate_args(trainer, args):
    if not args.gradient_checkpointing or not isinstance(trainer.model, torch.nn.Module):
        return None  # the core reports a model that is not a module
    return _checkpointing_problems(trainer.model, args.gradient_checkpointing_kwargs)


@hookimpl
def configure(trainer, args):
    if args.gradient_checkpointing:
        names = enable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs)
        logger.debug("gradient checkpointing on: %s", ", ".join(names))
    elif args.gradient_checkpointing_kwargs:
        logger.warning("gradient_checkpointing_kwargs is set but gradient_checkpointing=False: unused")
