"""Settings of ``torch.compile`` (:mod:`hooktrain.plugins.compile`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import Checks, arg, config_group

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@config_group
class CompileArguments:
    torch_compile: bool = arg(
        False, "Compile the model with torch.compile; turned on when torch_compile_backend or "
        "torch_compile_mode is set.")
    torch_compile_backend: str | None = arg(
        None, "torch.compile backend; None means 'inductor'.", nonempty=True)
    torch_compile_mode: str | None = arg(
        None, "torch.compile mode; None uses torch's default.", choices=(None, *COMPILE_MODES))


def derive(a: Any, c: Checks) -> None:
    chosen = a.torch_compile_backend is not None or a.torch_compile_mode is not None
    if c.ok("torch_compile", "torch_compile_backend", "torch_compile_mode") and chosen \
            and not a.torch_compile:
        c.put("torch_compile", True)
