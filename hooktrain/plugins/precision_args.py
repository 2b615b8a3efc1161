"""Settings of mixed precision (:mod:`hooktrain.plugins.precision`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import Checks, arg, config_group


@config_group
class PrecisionArguments:
    fp16: bool = arg(
        False, "fp16 mixed precision (autocast + gradient scaler); on a CPU it runs but is far "
        "slower than bf16, and a warning says so.")
    bf16: bool = arg(False, "bf16 mixed precision (needs hardware bf16 support).")
    fp16_full_eval: bool = arg(
        False, "Evaluate with the model cast to fp16; the training weights are restored bitwise "
        "afterwards.")
    bf16_full_eval: bool = arg(
        False, "Evaluate with the model cast to bf16; the training weights are restored bitwise "
        "afterwards.")
    tf32: bool | None = arg(
        True, "Allow TF32 matmuls and convolutions on NVIDIA Ampere or newer; no effect elsewhere. "
        "None leaves torch's settings as they are (Hugging Face's default).")


def check(a: Any, c: Checks) -> None:
    if c.ok("fp16", "bf16") and a.fp16 and a.bf16:
        c.problem("fp16=True and bf16=True: choose at most one mixed precision")
    if c.ok("fp16_full_eval", "bf16_full_eval") and a.fp16_full_eval and a.bf16_full_eval:
        c.problem("fp16_full_eval=True and bf16_full_eval=True: choose at most one")
