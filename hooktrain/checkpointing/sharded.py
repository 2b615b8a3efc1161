"""Sharded model and optimizer state (FSDP2 ``DTensor`` shards) in a checkpoint, with torch.distributed.checkpoint.

A checkpoint of a sharded model holds, instead of ``model.safetensors`` and ``optimizer.pt``, the
files of ``torch.distributed.checkpoint`` (DCP) for ``{"model": ..., "optimizer": ...}`` from
``get_state_dict``: one ``__{rank}_0.distcp`` per process (its shards) and ``.metadata`` (where
each shard lies). They sit in ``checkpoint-N/`` beside the other files, are listed in its
manifest like every file, and are written before the manifest and the rename, so the usual
guarantees hold. Loading goes through DCP too, so a checkpoint written by W processes loads into
any number of processes (each reads the pieces of the shards it now owns).

Nothing from the checkpoint is unpickled unchecked. DCP's ``.metadata`` is a pickle: it is read
once, checked against the manifest, and unpickled by :class:`MetadataUnpickler`, which builds
only DCP's own metadata classes, torch sizes and dtypes and paths, nothing else. The tensors come
through ``torch.load(weights_only=True)`` (DCP's own reader), and the few non-tensor values
(optimizer hyperparameters) through ``weights_only=True`` as well (:class:`SafeLoadPlanner`),
where DCP's default planner uses ``weights_only=False``.

Every function here is collective: every process of the run calls it.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hooktrain.checkpointing.format import read_checked
from hooktrain.core.errors import CheckpointError

METADATA_NAME = ".metadata"
#: the names of DCP's files in a checkpoint directory
SHARD_RE = re.compile(r"^(__\d+_\d+\.distcp|\.metadata)$")

__all__ = [
    "METADATA_NAME",
    "SHARD_RE",
    "MetadataUnpickler",
    "check_shard_sizes",
    "is_sharded",
    "is_sharded_checkpoint",
    "load_full_weights",
    "load_sharded",
    "sharded_state_bytes",
    "stage_sharded",
    "write_sharded",
    "write_staged",
]


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether *model*'s parameters are ``DTensor`` shards (FSDP2)."""
    param = next(iter(model.parameters()), None)
    return param is not None and type(param).__name__ == "DTensor" and hasattr(param, "to_local")


def is_sharded_checkpoint(manifest: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's manifest lists DCP files (model and optimizer state are sharded)."""
    return METADATA_NAME in manifest.get("files", {})


def check_shard_sizes(directory: Path, files: Mapping[str, Any]) -> None:
    """Every DCP file the manifest lists is there with its size (the checksums are checked when
    :func:`load_sharded` reads them)."""
    for name, record in files.items():
        if SHARD_RE.match(name):
            path = directory / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CheckpointError(f"{path}: missing") from None
            if size != record["size"]:
                raise CheckpointError(f"{path}: {size} bytes, the manifest says {record['size']} "
                                      "(truncated or modified)")


def _state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def write_staged(directory: Path, state: dict[str, Any], group: Any = None) -> None:
    """Write *state* (from :func:`stage_sharded`, or live) as DCP files into *directory* (it exists),
    agreeing over *group* (``None``: the default process group).

    Each process writes its own shards and fsyncs them; the coordinator (rank 0) writes
    ``.metadata`` after every process has written.
    """
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(directory, single_file_per_rank=True, sync_files=True, thread_count=1)
    dcp.save(state, storage_writer=writer, process_group=group)


def write_sharded(directory: Path, model: torch.nn.Module, optimizer: Any = None) -> None:
    """Write the model's (and the optimizer's) live state as DCP files into *directory*, on the
    training thread (its collectives use the default process group)."""
    write_staged(directory, _state(model, optimizer))


def stage_sharded(model: torch.nn.Module, optimizer: Any = None) -> dict[str, Any]:
    """A host copy of this process's shards of the model's (and optimizer's) state, still
    ``DTensor``s (now on the CPU), for :func:`write_staged` on a background thread."""
    from torch.distributed.checkpoint.staging import BlockingAsyncStager

    return BlockingAsyncStager(cache_staged_state_dict=False).stage(_state(model, optimizer))


def sharded_state_bytes(model: torch.nn.Module, optimizer: Any = None) -> int:
    """Bytes of this process's shards of the parameters, buffers and optimizer state (what
    :func:`stage_sharded` copies)."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        for per_param in getattr(optimizer, "state", {}).values():
            tensors.extend(v for v in per_param.values() if isinstance(v, torch.Tensor))
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


# ---- reading without unpickling arbitrary objects ------------------------------------------------


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: DCP's metadata classes, torch sizes, dtypes and layouts,
    paths and plain containers; any other global is refused."""

    MODULES = {
        "torch.distributed.checkpoint.metadata": None,  # any of DCP's metadata classes
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
        "collections": {"OrderedDict"},
        "builtins": {"set", "frozenset", "slice"},
    }

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        allowed = self.MODULES.get(module, set())
        if (allowed is None or name in allowed) and not name.startswith("__"):
            obj = super().find_class(module, name)
            if module != "torch.distributed.checkpoint.metadata" or isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP .metadata file")


def _reader(directory: Path, metadata: bytes) -> Any:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(dcp.FileSystemReader):
        """DCP's file reader, with the ``.metadata`` bytes that were checked against the manifest."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("rank") is not None:
                raise CheckpointError(f"{directory}: per-rank DCP metadata is not supported")
            meta = MetadataUnpickler(io.BytesIO(metadata)).load()
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return CheckedReader(directory)


def _planner() -> Any:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's planner, loading the non-tensor values with ``weights_only=True``."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeLoadPlanner()


def _checked_files(directory: Path, manifest: Mapping[str, Any]) -> bytes:
    """Check every DCP file against the manifest (the processes share the work and agree);
    the ``.metadata`` bytes, as checked."""
    import torch.distributed as dist

    files = manifest["files"]
    names = sorted(n for n in files if SHARD_RE.match(n) and n != METADATA_NAME)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    problems = []
    metadata = b""
    try:
        metadata = read_checked(directory / METADATA_NAME, files.get(METADATA_NAME))
        for name in names[rank::world]:
            read_checked(directory / name, files[name])
    except CheckpointError as exc:
        problems.append(str(exc))
    if world > 1:
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, problems)
        problems = [p for ps in everyone for p in ps]
    if problems:
        raise CheckpointError("; ".join(dict.fromkeys(problems)))
    return metadata


def load_sharded(directory: Path, manifest: Mapping[str, Any], model: torch.nn.Module, optimizer: Any = None) -> None:
    """Load the DCP state of the checkpoint *directory* into the sharded *model* (and *optimizer*),
    resharded to this run's processes; every file is checked against *manifest* first."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    metadata = _checked_files(directory, manifest)
    if not is_sharded(model):
        raise CheckpointError(
            f"{directory} holds sharded model state (written with fsdp): load it with fsdp set, in any "
            "number of processes; a plain model loads the consolidated model.safetensors of save_model()")
    try:
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)  # filled in place by dcp.load
            dcp.load({"model": model_sd, "optimizer": optim_sd}, storage_reader=_reader(directory, metadata),
                     planner=_planner())
            set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
        else:
            model_sd = get_model_state_dict(model)
            dcp.load({"model": model_sd}, storage_reader=_reader(directory, metadata), planner=_planner())
            set_model_state_dict(model, model_sd)
    except (pickle.UnpicklingError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: the sharded state does not load into this model and "
                              f"optimizer: {type(exc).__name__}: {exc}") from exc


def load_full_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load unsharded weights (every process holds them) into the sharded *model*: each process
    keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    try:
        set_model_state_dict(model, dict(state_dict), options=StateDictOptions(full_state_dict=True, strict=True))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: does not fit the model: {exc}") from exc
