"""Tensors in checkpoint files: weights (safetensors, tied tensors stored once), loading without
unpickling, and the random states of every generator.

Loading never unpickles arbitrary objects: tensors come from safetensors, everything else from
JSON or ``torch.load(weights_only=True)`` (tensors and plain containers only).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooktrain.checkpointing.format import (
    ALIASES_KEY,
    MANIFEST_NAME,
    WEIGHTS_BIN_NAME,
    WEIGHTS_NAME,
    read_checked,
    read_manifest,
)
from hooktrain.checkpointing.integrity import FILE_ALIGNMENT
from hooktrain.core.errors import CheckpointError

logger = logging.getLogger("hooktrain")

#: safetensors' dtype names
_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


# ---- weights -----------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def weights_for_safetensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict as safetensors accepts it, and the aliases of tied tensors.

    A tensor identical to one already kept (tied weights) is dropped and recorded as an alias;
    one that shares storage with another without being identical is copied; non-contiguous
    tensors are made contiguous.
    """
    return safetensors_view(model.state_dict())


def safetensors_view(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`weights_for_safetensors` of a state dict."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    same: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[int, str]] = set()
    for name, tensor in state_dict.items():
        t = tensor.detach()
        if t.numel() == 0:
            tensors[name] = t.contiguous()
            continue
        ptr = (_storage_key(t), str(t.device))
        key = (*ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in same:
            aliases[name] = same[key]
            continue
        same[key] = name
        if ptr in storages:
            t = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            t = t.contiguous()
        storages.add(ptr)
        tensors[name] = t
    return tensors, aliases


def safetensors_metadata(aliases: Mapping[str, str]) -> dict[str, str]:
    metadata = {"format": "pt"}
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(dict(aliases), sort_keys=True)
    return metadata


def write_safetensors(f: Any, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write *tensors* (contiguous, on the CPU) in the safetensors format to the file object *f*,
    straight from their memory: the header, then each tensor's bytes (largest element size first,
    so every tensor is aligned, as safetensors itself does). A dtype safetensors' own writer knows
    and this one does not goes through that writer."""
    if any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        from safetensors.torch import save

        f.write(save(dict(tensors), metadata=dict(metadata)))
        return
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # the format allows trailing spaces in the header: the data of a large file starts at a block
    # boundary (the writer then hands the tensors to the disk without copying), else at 8 bytes
    align = FILE_ALIGNMENT if offset >= 1 << 16 else 8
    encoded += b" " * (-(8 + len(encoded)) % align)
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    for name in order:
        t = tensors[name]
        if t.numel():
            f.write(t.reshape(-1).view(torch.uint8).numpy())


def _safetensors_header_metadata(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def state_dict_from_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """The state dict in the bytes of a weights file called *name* (tied tensors restored)."""
    if name == WEIGHTS_NAME:
        from safetensors.torch import load

        tensors = load(data)
        aliases = json.loads(_safetensors_header_metadata(data).get(ALIASES_KEY, "{}"))
        for alias, stored in aliases.items():
            tensors[alias] = tensors[stored]
        return tensors
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def apply_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    from hooktrain.checkpointing.sharded import is_sharded, load_full_weights

    if is_sharded(model):  # FSDP: every process keeps its shard of the full weights
        load_full_weights(model, state_dict, source)
        return
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: does not fit the model: {exc}") from exc


def _weights_file(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, WEIGHTS_BIN_NAME):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_BIN_NAME}")


def load_model_weights(model: torch.nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Load the weights of a checkpoint (or of a ``save_model`` directory) into *model*.

    When the directory has a manifest the weights file is checked against it first.
    Returns the file read.
    """
    directory = Path(directory)
    if (directory / MANIFEST_NAME).is_file():
        from hooktrain.checkpointing.sharded import is_sharded_checkpoint, load_sharded

        manifest = read_manifest(directory)
        if is_sharded_checkpoint(manifest):  # written under fsdp: DCP files, the model needs fsdp too
            load_sharded(directory, manifest, model)
            return directory
    path = _weights_file(directory)
    if (directory / MANIFEST_NAME).is_file():
        data = read_checked(path, read_manifest(directory)["files"].get(path.name))
    else:
        data = path.read_bytes()
    apply_weights(model, load_tensor_file(path, lambda: state_dict_from_weights(data, path.name)), path)
    return path


def load_tensor_file(path: Path, load: Callable[[], Any]) -> Any:
    """*load()*, with any failure reported as a :class:`CheckpointError` naming *path*."""
    try:
        return load()
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused to load ({type(exc).__name__}): it must hold only tensors and plain "
            f"containers, and hooktrain never unpickles other objects. {str(exc).splitlines()[0]}"
        ) from exc


def torch_load(path: Path, data: bytes) -> Any:
    """The value in the bytes of a ``torch.save`` file, loaded with ``weights_only=True``."""
    return load_tensor_file(path, lambda: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


# ---- random states ---------------------------------------------------------------------------


def capture_rng_state(device: torch.device | None = None, all_devices: bool = True) -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states, as tensors and plain values only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "cpu": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        if all_devices:
            state["cuda_all"] = torch.cuda.get_rng_state_all()
        else:
            state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Set the generators from :func:`capture_rng_state`'s dict."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["cpu"])
    try:
        if "cuda_all" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_all"])
        elif "cuda" in state and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)
    except Exception as exc:  # a different device count: the data order is unaffected
        logger.warning("could not restore the CUDA random state: %r", exc)
