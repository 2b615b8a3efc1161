"""The on-disk format of a checkpoint: names, the manifest, listing and verification.

``output_dir/checkpoint-{step}/`` holds the files named below and ``manifest.json`` (written
last): the size and checksum of every other file, the step, the world size and the versions.
A directory of that name exists only once it is complete (see :mod:`.storage`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hooktrain.checkpointing.integrity import HASH, digest_bytes, digest_file, record_algorithm
from hooktrain.core.errors import CheckpointError

PREFIX = "checkpoint"
TMP_PREFIX = ".tmp-"  # every temporary name hooktrain uses in output_dir starts with it
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_BIN_NAME = "pytorch_model.bin"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
TRAINER_STATE_NAME = "trainer_state.json"
ARGS_NAME = "training_args.json"
PLUGIN_STATE_NAME = "plugin_state.json"
MANIFEST_NAME = "manifest.json"
FORMAT = "hooktrain-checkpoint"
FORMAT_VERSION = 1
ALIASES_KEY = "hooktrain.aliases"  # safetensors metadata: {dropped name: stored name} of tied tensors

_CHECKPOINT_RE = re.compile(rf"^{PREFIX}-(\d+)$")
RNG_RE = re.compile(r"^rng_state(_\d+)?\.pth$")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint of *step*: ``checkpoint-{step}``."""
    return f"{PREFIX}-{int(step)}"


def temporary_name(step: int) -> str:
    """Where the checkpoint of *step* is written before it is renamed into place."""
    return f"{TMP_PREFIX}{checkpoint_name(step)}"


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step of a ``checkpoint-N`` directory name, else ``None``."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def rng_name(world_size: int, rank: int) -> str:
    """The random-state file of process *rank*: ``rng_state.pth`` alone, ``rng_state_{rank}.pth`` with several."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory in *output_dir*, by step number."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for entry in out.iterdir():
        step = checkpoint_step(entry)
        if step is not None and entry.is_dir():
            found.append((step, entry))
    return sorted(found, key=lambda item: item[0])


def read_manifest(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a checkpoint; :class:`CheckpointError` if absent or invalid."""
    path = Path(checkpoint_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a complete hooktrain checkpoint)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hooktrain checkpoint manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(record_algorithm(v) for v in files.values()):
        raise CheckpointError(f"{path}: malformed 'files' table")
    for name in files:
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"{path}: invalid file name {name!r} in the manifest")
    return manifest


def is_own_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> bool:
    """Whether hooktrain wrote this directory (it holds a hooktrain manifest)."""
    try:
        read_manifest(checkpoint_dir)
    except CheckpointError:
        return False
    return True


def file_problem(path: Path, record: Mapping[str, Any], data: bytes | None = None) -> str | None:
    """What is wrong with *path* against its manifest *record*: hashed from *data* when the file
    was read already, else streamed from disk. ``None`` when it is intact."""
    try:
        size = len(data) if data is not None else path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != record["size"]:
        return f"{path}: {size} bytes, the manifest says {record['size']} (truncated or modified)"
    algorithm = record_algorithm(record) or HASH
    digest = digest_bytes(data, algorithm) if data is not None else digest_file(path, algorithm)
    if digest != record[algorithm]:
        return f"{path}: {algorithm} differs from the manifest (corrupted or modified)"
    return None


def verify(checkpoint_dir: str | os.PathLike[str]) -> list[str]:
    """The problems of a checkpoint (each naming the file): missing manifest or file, wrong size or checksum.

    An empty list means every file the manifest lists is present and intact.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return [f"{directory}: not a directory"]
    try:
        manifest = read_manifest(directory)
    except CheckpointError as exc:
        return [str(exc)]
    problems = [file_problem(directory / name, record) for name, record in sorted(manifest["files"].items())]
    return [p for p in problems if p]


def read_checked(path: Path, record: Mapping[str, Any] | None) -> bytes:
    """The bytes of *path*, read once and checked against its manifest *record*."""
    if record is None:
        raise CheckpointError(f"{path}: not listed in the checkpoint's manifest")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    problem = file_problem(path, record, data)
    if problem:
        raise CheckpointError(problem)
    return data


def versions() -> dict[str, str]:
    import torch

    from hooktrain import __version__

    return {"hooktrain": __version__, "torch": torch.__version__, "python": platform.python_version()}


def manifest_json(step: int, epoch: float, world_size: int, save_only_model: bool,
                  records: Mapping[str, Any]) -> bytes:
    """The bytes of ``manifest.json`` for the files *records* (name -> size and checksum)."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "global_step": step,
        "epoch": epoch,
        "world_size": world_size,
        "save_only_model": bool(save_only_model),
        "created_unix": round(time.time(), 3),
        "versions": versions(),
        "files": dict(sorted(records.items())),
    }
    return json_bytes(manifest)


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")

