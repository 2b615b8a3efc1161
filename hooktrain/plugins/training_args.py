"""Settings of the default training step (:mod:`hooktrain.plugins.training`); torch-free."""

from __future__ import annotations

from hooktrain.core.settings import arg, config_group


@config_group
class TrainingStepArguments:
    max_grad_norm: float = arg(
        1.0, "Clip the gradient norm to this value; 0 disables clipping.", ge=0)
    label_smoothing_factor: float = arg(
        0.0, "Label smoothing epsilon for the loss computed from logits and labels; 0 disables it.",
        ge=0, lt=1)
    torch_empty_cache_steps: int | None = arg(
        None, "Empty the accelerator's memory cache every N steps; None never does.", ge=1)
