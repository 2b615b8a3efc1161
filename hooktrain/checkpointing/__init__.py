"""hooktrain's checkpoint format, as a library without hooks.

* :mod:`.format` — names (:func:`checkpoint_name`), the manifest, listing, :func:`verify`;
* :mod:`.integrity` — checksums computed while the bytes are written (xxh3-128; sha256 read);
* :mod:`.storage` — publish by rename, :func:`rotate_checkpoints`, :func:`tidy_output_dir`;
* :mod:`.tensors` — weights (tied tensors), loading without unpickling, random states;
* :mod:`.snapshot`, :mod:`.contents`, :mod:`.writer` — a snapshot in owned host memory, then
  :func:`persist` on the spot or in a :class:`BackgroundSave`;
* :mod:`.loading` — reading a checkpoint back to resume.

The ``checkpoint`` plugin (``hooktrain.plugins.checkpoint``) decides when to save and resume.
"""

from __future__ import annotations

from hooktrain.checkpointing.format import (
    ARGS_NAME,
    MANIFEST_NAME,
    TMP_PREFIX,
    TRAINER_STATE_NAME,
    WEIGHTS_BIN_NAME,
    WEIGHTS_NAME,
    checkpoint_name,
    checkpoint_step,
    is_own_checkpoint,
    list_checkpoints,
    read_manifest,
    verify,
)
from hooktrain.checkpointing.loading import find_resumable_checkpoint, read_checkpoint
from hooktrain.checkpointing.storage import rotate_checkpoints, tidy_output_dir
from hooktrain.checkpointing.tensors import (
    capture_rng_state,
    load_model_weights,
    restore_rng_state,
    weights_for_safetensors,
)

__all__ = [
    "ARGS_NAME",
    "MANIFEST_NAME",
    "TMP_PREFIX",
    "TRAINER_STATE_NAME",
    "WEIGHTS_BIN_NAME",
    "WEIGHTS_NAME",
    "capture_rng_state",
    "checkpoint_name",
    "checkpoint_step",
    "find_resumable_checkpoint",
    "is_own_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "read_checkpoint",
    "read_manifest",
    "restore_rng_state",
    "rotate_checkpoints",
    "tidy_output_dir",
    "verify",
    "weights_for_safetensors",
]
