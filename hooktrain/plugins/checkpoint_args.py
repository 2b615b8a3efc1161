"""Settings of checkpointing and resuming (:mod:`hooktrain.plugins.checkpoint`); torch-free."""

from __future__ import annotations

from typing import Any

from hooktrain.core.settings import Checks, arg, check_steps_for_strategy, config_group, int_or_ratio

#: The built-in save policies (:mod:`hooktrain.plugins.save_policies`); plugins may add more.
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")


@config_group
class CheckpointArguments:
    save_strategy: str = arg(
        "steps", "Save policy name: 'no', 'steps', 'epoch', 'best' or one registered by a plugin.",
        choices=SAVE_STRATEGIES, open_choices=True)
    save_steps: float = arg(
        500, "Save every N steps (an integer >= 1) or every ratio x max_steps (0 < ratio < 1).",
        ge=0, normalise=int_or_ratio)
    save_total_limit: int | None = arg(
        None, "Keep at most this many checkpoints (the best is always kept); None keeps all.", ge=1)
    save_safetensors: bool = arg(
        True, "Save weights as model.safetensors; False writes pytorch_model.bin.")
    save_async: bool = arg(
        True, "Write checkpoints in a background thread after a snapshot of the state in host memory "
        "(training goes on meanwhile); False saves synchronously. The final save is always synchronous.")
    save_only_model: bool = arg(
        False, "Save only the weights (no optimizer, scheduler or RNG state); such checkpoints "
        "cannot resume training.")
    save_on_each_node: bool = arg(
        False, "Multi-node runs save on each node's local main process, not only on the global one.")
    overwrite_output_dir: bool = arg(
        False, "Allow training into an output_dir that already holds checkpoints without resuming "
        "from them.")
    resume_from_checkpoint: str | None = arg(
        None, "Checkpoint to resume from when train() is not given one: a checkpoint directory, or "
        "'true' for the newest valid one in output_dir.", nonempty=True)
    restore_callback_states_from_checkpoint: bool = arg(
        True, "On resume, restore plugin states (early-stopping counter, best metric...) from the "
        "checkpoint.")


def check(a: Any, c: Checks) -> None:
    check_steps_for_strategy(a, c, "save_steps", "save_strategy")
    if c.ok("save_strategy", "metric_for_best_model") and a.save_strategy == "best" \
            and a.metric_for_best_model is None:
        c.problem("save_strategy='best' needs metric_for_best_model (e.g. 'loss' or 'accuracy')")
