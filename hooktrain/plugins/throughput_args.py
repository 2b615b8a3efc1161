"""Settings of the throughput figures (:mod:`hooktrain.plugins.throughput`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import arg, config_group

#: ``include_num_input_tokens_seen``: Hugging Face's values (a bool means "all" / "no").
TOKEN_MODES = ("all", "non_padding", "no")


def token_mode(value: Any) -> Any:
    """``True`` / ``False`` (also as text, from the command line) → ``"all"`` / ``"no"``."""
    if isinstance(value, bool):
        return "all" if value else "no"
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return "all" if value.strip().lower() == "true" else "no"
    return value


@config_group
class ThroughputArguments:
    include_num_input_tokens_seen: str = arg(
        "no", "Count the input tokens into state.num_input_tokens_seen (logged): 'all' (the elements "
        "of the model's main input), 'non_padding' (the ones of attention_mask) or 'no'; True and "
        "False mean 'all' and 'no'.", choices=TOKEN_MODES, parse=token_mode)
    flops_per_sample: float | None = arg(
        None, "Model FLOPs (forward and backward) per training sample, for FLOP/s and MFU; None "
        "counts them on the first step, 0 turns the FLOP figures off.", ge=0)
    peak_flops: float | None = arg(
        None, "Peak FLOP/s of one device, for MFU; None looks the GPU and dtype up in a table "
        "(no MFU on a CPU without it).", gt=0)
