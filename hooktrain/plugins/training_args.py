"""Settings of the default training step (:mod:`hooktrain.plugins.training`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import Checks, arg, config_group

#: What ``include_for_metrics`` may name (Hugging Face's values).
METRICS_INPUTS = ("inputs", "loss")


@config_group
class TrainingStepArguments:
    max_grad_norm: float = arg(
        1.0, "Clip the gradient norm to this value; 0 disables clipping.", ge=0)
    label_smoothing_factor: float = arg(
        0.0, "Label smoothing epsilon for the loss computed from logits and labels; 0 disables it.",
        ge=0, lt=1)
    average_tokens_across_devices: bool = arg(
        True, "When the loss is normalised by the window's label tokens (num_items_in_batch: a model "
        "whose forward takes **kwargs, or a compute_loss that takes num_items_in_batch), count them "
        "over all processes, so that the gradient is the token mean of the global batch; False "
        "normalises each process by its own tokens.")
    torch_empty_cache_steps: int | None = arg(
        None, "Empty the accelerator's memory cache every N steps; None never does.", ge=1)
    use_cache: bool = arg(
        False, "Set on a transformers model's config (model.config.use_cache) when the Trainer is "
        "built, as Hugging Face does; the key/value cache is rarely needed in training.")
    include_for_metrics: list[str] = arg(
        None, "Also give compute_metrics the model's inputs ('inputs': EvalPrediction.inputs) and "
        "the per-sample losses ('loss': EvalPrediction.losses).", factory=list)
    batch_eval_metrics: bool = arg(
        False, "Call compute_metrics after every evaluation batch (with compute_result=False, and "
        "True on the last one, whose result is returned) instead of once on everything gathered.")
    eval_do_concat_batches: bool = arg(
        True, "Concatenate the evaluation batches' predictions/labels/inputs/losses; False gives "
        "compute_metrics lists with one array per batch.")


def check(a: Any, c: Checks) -> None:
    if c.ok("include_for_metrics"):
        wrong = [x for x in a.include_for_metrics if x not in METRICS_INPUTS]
        if wrong:
            c.problem(f"include_for_metrics={a.include_for_metrics!r} is invalid: {wrong[0]!r} is not "
                      f"one of {', '.join(map(repr, METRICS_INPUTS))}")
