"""Settings of gradient checkpointing (:mod:`hooktrain.plugins.gradient_checkpointing`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import arg, config_group


@config_group
class GradientCheckpointingArguments:
    gradient_checkpointing: bool = arg(
        False, "Recompute activations in the backward pass to save memory.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = arg(
        None, "Keywords for torch.utils.checkpoint, e.g. {\"use_reentrant\": false}; a dict or a "
        "JSON object.")
