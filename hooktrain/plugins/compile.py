"""``torch.compile``: the model that forward passes use is compiled (after DDP wraps it, if it does).

Reads: torch_compile, torch_compile_backend, torch_compile_mode.

Off by default, when the plugin changes nothing. See docs/precision.md.
"""

from __future__ import annotations

from typing import Any

import torch

from hooktrain.core.markers import hookimpl

# ---- checks ---------------------------------------------------------------------------------


def _compile_problems(args: Any) -> list[str]:
    import torch._dynamo

    backend = args.torch_compile_backend or "inductor"
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        return [
            f"torch_compile_backend={backend!r} is not a torch.compile backend here; available: "
            f"{', '.join(torch._dynamo.list_backends(exclude_tags=('debug', 'experimental')))} "
            "(also eager, aot_eager for debugging)"
        ]
    if args.torch_compile_mode is not None and backend != "inductor":
        return [
            f"torch_compile_mode={args.torch_compile_mode!r} only applies to the 'inductor' backend, "
            f"but torch_compile_backend={backend!r}; drop the mode or use the inductor backend"
        ]
    return []


def _is_compiled(model: torch.nn.Module) -> bool:
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


# ---- hooks ----------------------------------------------------------------------------------


@hookimpl
def validate_args(args):
    return _compile_problems(args) if args.torch_compile else None


@hookimpl
def configure(trainer, args):
    if args.torch_compile and not _is_compiled(trainer.model_wrapped):
        if trainer.model_wrapped is trainer.model:  # the Trainer only moves an unwrapped model
            trainer.model.to(trainer.device)
        trainer.model_wrapped = torch.compile(
            trainer.model_wrapped,
            backend=args.torch_compile_backend or "inductor",
            mode=args.torch_compile_mode,
        )
