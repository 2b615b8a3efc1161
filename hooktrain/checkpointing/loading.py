"""Reading a checkpoint back: every file read once, checked against the manifest, then decoded."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hooktrain.checkpointing.format import (
    ARGS_NAME,
    OPTIMIZER_NAME,
    PLUGIN_STATE_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_BIN_NAME,
    WEIGHTS_NAME,
    list_checkpoints,
    read_checked,
    read_manifest,
    rng_name,
    verify,
)
from hooktrain.checkpointing.sharded import check_shard_sizes, is_sharded_checkpoint
from hooktrain.checkpointing.tensors import load_tensor_file, state_dict_from_weights, torch_load
from hooktrain.core.errors import CheckpointError, CheckpointSettingError

logger = logging.getLogger("hooktrain")


def read_checkpoint(path: Path, world_size: int = 1, rank: int = 0, needs_optimizer: bool = True) -> dict[str, Any]:
    """Everything needed to resume from *path*, read, checked against the manifest and decoded:
    ``manifest``, ``weights``, ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (this process's,
    ``None`` when the world size differs), ``trainer_state``, ``args``, ``plugins``."""
    manifest = read_manifest(path)
    if manifest.get("save_only_model"):
        raise CheckpointError(
            f"{path} was saved with save_only_model=True and holds no "
            "optimizer, scheduler or RNG state; load its weights into the model instead "
            "(hooktrain.checkpointing.load_model_weights) and start a new run"
        )
    files = manifest["files"]

    def read(name: str, required: bool = True) -> tuple[Path, bytes] | None:
        file = path / name
        if name not in files:
            if required:
                raise CheckpointError(f"{file}: missing from the checkpoint")
            return None
        return file, read_checked(file, files[name])

    loaded: dict[str, Any] = {"manifest": manifest, "sharded": is_sharded_checkpoint(manifest)}
    if loaded["sharded"]:  # model and optimizer: DCP files, checked and loaded by .sharded
        check_shard_sizes(path, files)
        loaded["weights"] = loaded["optimizer"] = None
    else:
        weights = WEIGHTS_NAME if WEIGHTS_NAME in files else WEIGHTS_BIN_NAME
        file, data = read(weights)  # type: ignore[misc]
        loaded["weights"] = load_tensor_file(file, lambda: state_dict_from_weights(data, weights))
    for key, name in (("optimizer", OPTIMIZER_NAME), ("scheduler", SCHEDULER_NAME), ("scaler", SCALER_NAME)):
        if key == "optimizer" and loaded["sharded"]:
            continue
        got = read(name, required=False)
        loaded[key] = torch_load(*got) if got else None
    loaded["rng"] = None
    if manifest.get("world_size", 1) == world_size:
        got = read(rng_name(world_size, rank), required=False)
        loaded["rng"] = torch_load(*got) if got else None
    for key, name in (("trainer_state", TRAINER_STATE_NAME), ("args", ARGS_NAME), ("plugins", PLUGIN_STATE_NAME)):
        got = read(name, required=key == "trainer_state")
        try:
            loaded[key] = json.loads(got[1]) if got else None
        except ValueError as exc:
            raise CheckpointError(f"{path / name}: invalid JSON ({exc})") from exc
    if needs_optimizer and loaded["optimizer"] is None and not loaded["sharded"]:
        raise CheckpointError(f"{path / OPTIMIZER_NAME}: missing; the checkpoint cannot resume training")
    return loaded


def find_resumable_checkpoint(output_dir: str | os.PathLike[str]) -> Path:
    """The newest ``checkpoint-N`` (by step) in *output_dir* that verifies and can resume training.

    Each newer one that is skipped is logged with the reason; none → :class:`CheckpointError`.
    """
    return newest_loadable(output_dir, _check_resumable)[0]


def _check_resumable(path: Path) -> None:
    problems = verify(path)
    if not problems and read_manifest(path).get("save_only_model"):
        problems = ["saved with save_only_model=True (weights only): cannot resume training"]
    if problems:
        raise CheckpointError("; ".join(problems))


def newest_loadable(output_dir: str | os.PathLike[str], load: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``(path, load(path))`` for the newest ``checkpoint-N`` that *load* accepts (does not raise
    :class:`CheckpointError` for); each newer one is logged with the reason it was skipped."""
    out = Path(output_dir)
    candidates = list_checkpoints(out)
    if not candidates:
        raise CheckpointSettingError(
            f"resume_from_checkpoint=True but {out} holds no checkpoint-N directory; "
            "train without resuming or give a checkpoint path"
        )
    skipped = []
    for _, path in reversed(candidates):
        try:
            return path, load(path)
        except CheckpointError as exc:
            logger.warning("not resuming from %s: %s", path, exc)
            skipped.append(f"{path.name}: {exc}")
    raise CheckpointError(
        f"resume_from_checkpoint=True but no checkpoint in {out} verifies: " + "; ".join(skipped)
    )
