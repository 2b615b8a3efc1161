"""Checkpoint storage: atomic and verified checkpoints, exact resume, rotation, the overwrite guard.

A checkpoint ``output_dir/checkpoint-{global_step}/`` holds:

=========================== =============================================================
``model.safetensors``       the weights of ``trainer.model`` (``pytorch_model.bin`` when
                            ``save_safetensors=False``); tied tensors are stored once
``optimizer.pt``            ``optimizer.state_dict()`` (``torch.save``)
``scheduler.pt``            ``lr_scheduler.state_dict()``
``scaler.pt``               the grad scaler's state, when ``trainer.grad_scaler`` exists
``rng_state.pth``           python, numpy, torch CPU and CUDA generators; one file per process
                            (``rng_state_{rank}.pth``) when there are several
``trainer_state.json``      :class:`~hooktrain.TrainerState`
``training_args.json``      the run's arguments (JSON, never a pickle)
``plugin_state.json``       every plugin's ``plugin_state`` by key
``manifest.json``           size and sha256 of every file, step, world size, versions;
                            written last
=========================== =============================================================

``save_only_model=True`` writes only the weights, ``trainer_state.json``, ``training_args.json`` and
the manifest; such a checkpoint cannot resume training.

Crash safety: every file is written into ``output_dir/.tmp-checkpoint-{N}`` and fsync'd, the
manifest last, then the directory is renamed to ``checkpoint-{N}``: a visible checkpoint is
always complete. Leftovers of an interrupted save are removed at the next start.

Loading never unpickles arbitrary objects: tensors come from safetensors, everything else from
JSON or ``torch.load(weights_only=True)`` (tensors and plain containers only).

Reads: output_dir, save_total_limit, save_safetensors, save_only_model, save_on_each_node,
overwrite_output_dir, restore_callback_states_from_checkpoint, ignore_data_skip, and on resume
the fields in :data:`ARITHMETIC_FIELDS`; ``save_strategy`` picks the save policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import random
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from hooktrain.core.errors import CheckpointError
from hooktrain.core.markers import hookimpl
from hooktrain.core.state import TrainerState

logger = logging.getLogger("hooktrain")

__all__ = [
    "ARITHMETIC_FIELDS",
    "CheckpointStore",
    "MANIFEST_NAME",
    "capture_rng_state",
    "checkpoint_step",
    "collect_plugin_states",
    "find_resumable_checkpoint",
    "is_own_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "read_manifest",
    "restore_rng_state",
    "rotate_checkpoints",
    "tidy_output_dir",
    "verify",
    "weights_for_safetensors",
    "seal",
    "write_file",
]

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
_RNG_RE = re.compile(r"^rng_state(_\d+)?\.pth$")
_CHUNK = 1 << 23
#: the temporary directories hooktrain creates in output_dir (removed at the next start)
_TMP_KINDS = tuple(f"{TMP_PREFIX}{kind}" for kind in (f"{PREFIX}-", "replaced-", "deleted-", "model-"))

#: Arguments compared with the checkpoint's ``training_args.json`` on resume. A difference in
#: the first group changes what ``global_step`` means for the data (which samples were seen), so
#: resuming is an error unless ``ignore_data_skip=True``; the second group only warns.
ARITHMETIC_FIELDS: dict[str, tuple[str, ...]] = {
    "error": ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size"),
    "warn": (
        "max_steps", "num_train_epochs", "seed", "data_seed", "dataloader_drop_last",
        "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
        "warmup_ratio", "learning_rate_end", "power", "optim", "weight_decay",
    ),
}


# ---- names and listing -------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step of a ``checkpoint-N`` directory name, else ``None``."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


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
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(checkpoint_dir: str | os.PathLike[str]) -> list[str]:
    """The problems of a checkpoint (each naming the file): missing manifest or file, wrong size or sha256.

    An empty list means every file the manifest lists is present and intact.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return [f"{directory}: not a directory"]
    try:
        manifest = read_manifest(directory)
    except CheckpointError as exc:
        return [str(exc)]
    problems = [_file_problem(directory / name, record) for name, record in sorted(manifest["files"].items())]
    return [p for p in problems if p]


def _file_problem(path: Path, record: Mapping[str, Any], data: bytes | None = None) -> str | None:
    """What is wrong with *path* against its manifest *record*: hashed from *data* when the file
    was read already, else streamed from disk. ``None`` when it is intact."""
    try:
        size = len(data) if data is not None else path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != record["size"]:
        return f"{path}: {size} bytes, the manifest says {record['size']} (truncated or modified)"
    digest = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(path)
    if digest != record["sha256"]:
        return f"{path}: sha256 differs from the manifest (corrupted or modified)"
    return None


# ---- writing -------------------------------------------------------------------------------


def write_file(path: Path, produce: Callable[[BinaryIO], Any]) -> Path:
    """Create *path* and let *produce* write into it. Not yet on disk: :func:`seal` it."""
    with open(path, "wb") as f:
        produce(f)
    return path


def seal(path: Path) -> dict[str, Any]:
    """fsync *path* and return its manifest record (size and sha256; the file is in the page cache)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _write_bytes(f: Any, data: bytes) -> None:
    f.write(data)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _remove_dir(path: Path) -> None:
    """Delete a directory so that it disappears at once: rename it to a temporary name first."""
    doomed = path.with_name(f"{TMP_PREFIX}deleted-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete *tmp* to *final*, replacing an older checkpoint of the same step safely."""
    out = final.parent
    if final.exists():
        if not is_own_checkpoint(final):
            raise CheckpointError(
                f"{final} exists and hooktrain did not write it (no hooktrain manifest.json): it is "
                "left alone; move it away or choose another output_dir"
            )
        aside = out / f"{TMP_PREFIX}replaced-{final.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)  # a crash now leaves `aside`, restored at the next start
        os.replace(tmp, final)
        _fsync_dir(out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(out)


def tidy_output_dir(output_dir: str | os.PathLike[str]) -> None:
    """Remove what an interrupted save, replacement or deletion left in *output_dir*.

    A checkpoint that was set aside to be replaced is put back if its replacement never landed.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        name = entry.name
        if not name.startswith(TMP_PREFIX):
            continue
        if name.startswith(f"{TMP_PREFIX}replaced-{PREFIX}-") and entry.is_dir():
            final = out / name[len(f"{TMP_PREFIX}replaced-"):]
            if checkpoint_step(final) is not None and not final.exists():
                os.replace(entry, final)
                _fsync_dir(out)
                logger.warning("restored %s: its replacement was interrupted", final)
                continue
        if name.startswith(_TMP_KINDS) and entry.is_dir():
            logger.info("removing %s, left by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)


def rotate_checkpoints(
    output_dir: str | os.PathLike[str], limit: int | None, protected: Iterable[str] = ()
) -> list[Path]:
    """Delete the oldest of hooktrain's checkpoints beyond *limit*; return what was deleted.

    Only ``checkpoint-N`` directories with a hooktrain manifest take part, ordered by step
    number. The newest one and every name in *protected* (names or paths) are kept even when
    that leaves more than *limit*. ``None`` or a limit below 1 deletes nothing.
    """
    if not limit or limit < 1:
        return []
    ours = [path for _, path in list_checkpoints(output_dir) if is_own_checkpoint(path)]
    if len(ours) <= limit:
        return []
    keep = {Path(str(name)).name for name in protected if name}
    keep.add(ours[-1].name)
    deletable = [path for path in ours if path.name not in keep]
    doomed = deletable[: max(0, len(ours) - limit)]
    for path in doomed:
        logger.debug("deleting %s (save_total_limit=%d)", path, limit)
        _remove_dir(path)
    return doomed


# ---- tensors and RNG -------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def weights_for_safetensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict as safetensors accepts it, and the aliases of tied tensors.

    A tensor identical to one already kept (tied weights) is dropped and recorded as an alias;
    one that shares storage with another without being identical is copied; non-contiguous
    tensors are made contiguous.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    same: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[int, str]] = set()
    for name, tensor in model.state_dict().items():
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


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def _state_dict_from_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    if name == WEIGHTS_NAME:
        from safetensors.torch import load

        tensors = load(data)
        aliases = json.loads(_safetensors_metadata(data).get(ALIASES_KEY, "{}"))
        for alias, stored in aliases.items():
            tensors[alias] = tensors[stored]
        return tensors
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _apply_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
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
    path = _weights_file(directory)
    if (directory / MANIFEST_NAME).is_file():
        data = _read_checked(path, read_manifest(directory)["files"].get(path.name))
    else:
        data = path.read_bytes()
    _apply_weights(model, _load_tensor_file(path, lambda: _state_dict_from_weights(data, path.name)), path)
    return path


def _read_checked(path: Path, record: Mapping[str, Any] | None) -> bytes:
    """The bytes of *path*, read once and checked against its manifest *record*."""
    if record is None:
        raise CheckpointError(f"{path}: not listed in the checkpoint's manifest")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    problem = _file_problem(path, record, data)
    if problem:
        raise CheckpointError(problem)
    return data


def _load_tensor_file(path: Path, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused to load ({type(exc).__name__}): it must hold only tensors and plain "
            f"containers, and hooktrain never unpickles other objects. {str(exc).splitlines()[0]}"
        ) from exc


def _torch_load(path: Path, data: bytes) -> Any:
    return _load_tensor_file(path, lambda: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


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


def _rng_name(world_size: int, rank: int) -> str:
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


# ---- the plugin object ------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from hooktrain import __version__

    return {"hooktrain": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _is_writer(trainer: Any) -> bool:
    if trainer.args.save_on_each_node:
        return getattr(trainer, "local_process_index", 0) == 0
    return bool(trainer.is_world_process_zero)


def find_resumable_checkpoint(output_dir: str | os.PathLike[str]) -> Path:
    """The newest ``checkpoint-N`` (by step) in *output_dir* that verifies and can resume training.

    Each newer one that is skipped is logged with the reason; none → :class:`CheckpointError`.
    """
    return _newest_loadable(output_dir, _check_resumable)[0]


def _check_resumable(path: Path) -> None:
    problems = verify(path)
    if not problems and read_manifest(path).get("save_only_model"):
        problems = ["saved with save_only_model=True (weights only): cannot resume training"]
    if problems:
        raise CheckpointError("; ".join(problems))


def _newest_loadable(output_dir: str | os.PathLike[str], load: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``(path, load(path))`` for the newest ``checkpoint-N`` that *load* accepts (does not raise
    :class:`CheckpointError` for); each newer one is logged with the reason it was skipped."""
    out = Path(output_dir)
    candidates = list_checkpoints(out)
    if not candidates:
        raise CheckpointError(
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


class CheckpointStore:
    """Saves and restores checkpoints for one Trainer (``save_checkpoint``, ``resume_checkpoint``,
    ``save_model``) and guards ``output_dir`` at the start of training."""

    def __init__(self) -> None:
        self.resumed_from: Path | None = None
        self._pending_rng: dict[str, Any] | None = None

    # ---- saving --------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def save_checkpoint(self, trainer, state):
        args = trainer.args
        out = Path(args.output_dir)
        name = f"{PREFIX}-{state.global_step}"
        final, tmp = out / name, out / f"{TMP_PREFIX}{name}"
        writer = _is_writer(trainer)
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        trainer.barrier()
        try:
            written = self._write_files(trainer, state, tmp, writer)
            # hashing (from the page cache) and fsync of the files, in parallel
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="hooktrain-save") as pool:
                records = dict(zip(written, pool.map(seal, written.values()), strict=True))
            trainer.barrier()  # every process's RNG file is on disk
            if writer:
                self._write_manifest(trainer, state, tmp, records)
                _publish(tmp, final)
        except BaseException:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        trainer.barrier()
        if writer and args.save_total_limit:
            protected = [name]
            for names in trainer.plugin_manager.hook.protected_checkpoints(trainer=trainer, state=state):
                protected.extend(str(n) for n in names or ())
            rotate_checkpoints(out, args.save_total_limit, protected=protected)
        return final

    def _write_files(self, trainer: Any, state: TrainerState, tmp: Path, writer: bool) -> dict[str, Path]:
        """Write this process's files into *tmp* (not yet fsync'd); return them by name."""
        args = trainer.args
        full = not args.save_only_model
        contents: dict[str, Callable[[BinaryIO], Any]] = {}
        if full:
            rng = capture_rng_state(trainer.device, all_devices=trainer.world_size <= 1)
            contents[_rng_name(trainer.world_size, trainer.process_index)] = partial(torch.save, rng)
        if writer:
            contents.update(self._weights(trainer.model, args.save_safetensors))
            if full:
                if trainer.optimizer is not None:
                    contents[OPTIMIZER_NAME] = partial(torch.save, trainer.optimizer.state_dict())
                if trainer.lr_scheduler is not None:
                    contents[SCHEDULER_NAME] = partial(torch.save, trainer.lr_scheduler.state_dict())
                scaler = getattr(trainer, "grad_scaler", None)
                if scaler is not None and hasattr(scaler, "state_dict"):
                    contents[SCALER_NAME] = partial(torch.save, scaler.state_dict())
                contents[PLUGIN_STATE_NAME] = partial(_write_bytes, data=_json_bytes(collect_plugin_states(trainer)))
            contents[TRAINER_STATE_NAME] = partial(_write_bytes, data=state.to_json().encode("utf-8"))
            contents[ARGS_NAME] = partial(_write_bytes, data=(args.to_json() + "\n").encode("utf-8"))
        return {name: write_file(tmp / name, produce) for name, produce in contents.items()}

    @staticmethod
    def _weights(model: torch.nn.Module, safetensors: bool) -> dict[str, Callable[[BinaryIO], Any]]:
        """The weights file: its name and what writes it."""
        if safetensors:
            from safetensors.torch import save

            tensors, aliases = weights_for_safetensors(model)
            metadata = {"format": "pt"}
            if aliases:
                metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
            return {WEIGHTS_NAME: partial(_write_bytes, data=save(tensors, metadata=metadata))}
        return {WEIGHTS_BIN_NAME: partial(torch.save, model.state_dict())}

    def _write_manifest(self, trainer: Any, state: TrainerState, tmp: Path, records: dict[str, Any]) -> None:
        """Write the manifest (last), then make it and the directory durable."""
        for entry in sorted(tmp.iterdir()):  # the other processes' RNG files
            if entry.name not in records and _RNG_RE.match(entry.name):
                records[entry.name] = {"size": entry.stat().st_size, "sha256": _sha256_file(entry)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "world_size": trainer.world_size,
            "save_only_model": bool(trainer.args.save_only_model),
            "created_unix": round(time.time(), 3),
            "versions": _versions(),
            "files": dict(sorted(records.items())),
        }
        seal(write_file(tmp / MANIFEST_NAME, partial(_write_bytes, data=_json_bytes(manifest))))
        _fsync_dir(tmp)

    @hookimpl(trylast=True)
    def save_model(self, trainer, output_dir):
        """The final weights and ``training_args.json`` in *output_dir*, each file replaced atomically."""
        if not trainer.is_world_process_zero:  # every process calls save_model; the main one writes
            return None
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f"{TMP_PREFIX}model-{os.getpid()}"
        staging.mkdir(exist_ok=True)
        try:
            contents = self._weights(trainer.model, trainer.args.save_safetensors)
            contents[ARGS_NAME] = partial(_write_bytes, data=(trainer.args.to_json() + "\n").encode("utf-8"))
            for name, produce in contents.items():
                seal(write_file(staging / name, produce))
            for name in contents:
                os.replace(staging / name, out / name)
            _fsync_dir(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return out

    # ---- resuming ------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def resume_checkpoint(self, trainer, checkpoint):
        args = trainer.args
        if checkpoint is None:
            checkpoint = args.resume_from_checkpoint
        if isinstance(checkpoint, str) and checkpoint.lower() in ("true", "latest", "last"):
            checkpoint = True  # resume_from_checkpoint: true in a config, or on the command line
        if checkpoint is None or checkpoint is False:
            return None
        if _is_writer(trainer):
            tidy_output_dir(args.output_dir)
        trainer.barrier()
        # every file is read once, and checked against the manifest as it is read
        if checkpoint is True:
            path, loaded = _newest_loadable(args.output_dir, lambda p: self._read(trainer, p))
        else:
            path = Path(checkpoint)
            try:
                loaded = self._read(trainer, path)
            except CheckpointError as exc:
                hint = ""
                if list_checkpoints(path):
                    hint = " (it holds checkpoint-N directories: give one of them, or resume_from_checkpoint=True)"
                raise CheckpointError(f"cannot resume from {path}{hint}: {exc}") from exc
        self._check_arguments(trainer, path, loaded)
        self._apply(trainer, path, loaded)
        self.resumed_from = path
        logger.info("resumed from %s (step %d)", path, trainer.state.global_step)
        return path

    def _read(self, trainer: Any, path: Path) -> dict[str, Any]:
        """Every file needed to resume, read, checked against the manifest and decoded; nothing applied yet."""
        manifest = read_manifest(path)
        if manifest.get("save_only_model"):
            raise CheckpointError(
                f"{path} was saved with save_only_model=True and holds no "
                "optimizer, scheduler or RNG state; load its weights into the model instead "
                "(hooktrain.plugins.checkpoint.load_model_weights) and start a new run"
            )
        files = manifest["files"]

        def read(name: str, required: bool = True) -> tuple[Path, bytes] | None:
            file = path / name
            if name not in files:
                if required:
                    raise CheckpointError(f"{file}: missing from the checkpoint")
                return None
            return file, _read_checked(file, files[name])

        loaded: dict[str, Any] = {"manifest": manifest}
        weights = WEIGHTS_NAME if WEIGHTS_NAME in files else WEIGHTS_BIN_NAME
        file, data = read(weights)  # type: ignore[misc]
        loaded["weights"] = _load_tensor_file(file, lambda: _state_dict_from_weights(data, weights))
        for key, name in (("optimizer", OPTIMIZER_NAME), ("scheduler", SCHEDULER_NAME), ("scaler", SCALER_NAME)):
            got = read(name, required=False)
            loaded[key] = _torch_load(*got) if got else None
        loaded["rng"] = None
        if manifest.get("world_size", 1) == trainer.world_size:
            got = read(_rng_name(trainer.world_size, trainer.process_index), required=False)
            loaded["rng"] = _torch_load(*got) if got else None
        for key, name in (("trainer_state", TRAINER_STATE_NAME), ("args", ARGS_NAME), ("plugins", PLUGIN_STATE_NAME)):
            got = read(name, required=key == "trainer_state")
            try:
                loaded[key] = json.loads(got[1]) if got else None
            except ValueError as exc:
                raise CheckpointError(f"{path / name}: invalid JSON ({exc})") from exc
        if trainer.optimizer is not None and loaded["optimizer"] is None:
            raise CheckpointError(f"{path / OPTIMIZER_NAME}: missing; the checkpoint cannot resume training")
        return loaded

    def _check_arguments(self, trainer: Any, path: Path, loaded: dict[str, Any]) -> None:
        saved = dict(loaded["args"] or {})
        saved["world_size"] = loaded["manifest"].get("world_size", 1)
        current = json.loads(trainer.args.to_json())
        current["world_size"] = trainer.world_size
        diffs: dict[str, list[str]] = {"error": [], "warn": []}
        for level, names in ARITHMETIC_FIELDS.items():
            for name in names:
                if name in saved and name in current and saved[name] != current[name]:
                    diffs[level].append(f"{name}: {saved[name]!r} in the checkpoint, {current[name]!r} now")
        if diffs["error"] and not trainer.args.ignore_data_skip:
            raise CheckpointError(
                f"cannot resume from {path}: " + "; ".join(diffs["error"]) + ". These change which "
                "samples global_step stands for, so the data position cannot be restored. Use the "
                "checkpoint's values, or set ignore_data_skip=True to resume the weights, optimizer and "
                "schedule without restoring the data position"
            )
        changed = diffs["error"] + diffs["warn"]
        if changed:
            logger.warning(
                "resuming from %s with different arguments (the run will not match an uninterrupted "
                "one): %s", path, "; ".join(changed))

    def _apply(self, trainer: Any, path: Path, loaded: dict[str, Any]) -> None:
        _apply_weights(trainer.model, loaded["weights"], path)
        try:
            if trainer.optimizer is not None:
                trainer.optimizer.load_state_dict(loaded["optimizer"])
            if trainer.lr_scheduler is not None and loaded["scheduler"] is not None:
                trainer.lr_scheduler.load_state_dict(loaded["scheduler"])
            scaler = getattr(trainer, "grad_scaler", None)
            if scaler is not None and loaded["scaler"] is not None:
                scaler.load_state_dict(loaded["scaler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path}: the optimizer or scheduler state does not fit: {exc}") from exc
        state = trainer.state
        restored = TrainerState.from_dict(loaded["trainer_state"])
        mine = {"is_local_process_zero": state.is_local_process_zero,
                "is_world_process_zero": state.is_world_process_zero}
        for f in dataclasses.fields(state):
            setattr(state, f.name, getattr(restored, f.name))
        for key, value in mine.items():
            setattr(state, key, value)
        states = loaded["plugins"] or {}
        if trainer.args.restore_callback_states_from_checkpoint and states:
            trainer.plugin_manager.hook.load_plugin_state(trainer=trainer, states=states)
        self._pending_rng = loaded["rng"]
        if self._pending_rng is None:
            logger.warning("%s has no random state for process %d: not restored", path, trainer.process_index)
        else:
            restore_rng_state(self._pending_rng, trainer.device)

    @hookimpl(specname="on_train_begin", trylast=True)
    def restore_rng_last(self, trainer):
        """Set the random state again, after every other plugin's ``on_train_begin`` ran."""
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng, trainer.device)
            self._pending_rng = None

    # ---- the start of training ------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def on_train_begin(self, trainer, args):
        out = Path(args.output_dir)
        writer = _is_writer(trainer)
        if self.resumed_from is None and trainer.state.global_step == 0:
            existing = [path for _, path in list_checkpoints(out)]
            if existing and not args.overwrite_output_dir:
                shown = ", ".join(p.name for p in existing[:5]) + (" …" if len(existing) > 5 else "")
                raise CheckpointError(
                    f"output_dir {out} already holds checkpoints ({shown}) from an earlier run. Resume "
                    "it with train(resume_from_checkpoint=True), set overwrite_output_dir=True to delete "
                    "them (only hooktrain's own checkpoint-N directories are deleted), or choose another "
                    "output_dir"
                )
            # a directory of a step this run may save, that hooktrain did not write: refused now,
            # not when the save of that step meets it
            blocking = [p.name for p in existing
                        if not is_own_checkpoint(p) and (checkpoint_step(p) or 0) <= trainer.state.max_steps]
            if blocking:
                raise CheckpointError(
                    f"output_dir {out} holds {', '.join(blocking)}, which hooktrain did not write (no "
                    "hooktrain manifest.json) and will not delete or replace; move it away or choose "
                    "another output_dir"
                )
            if existing and writer:
                for path in existing:
                    if is_own_checkpoint(path):
                        logger.warning("overwrite_output_dir=True: deleting %s", path)
                        _remove_dir(path)
                    else:
                        logger.warning("%s was not written by hooktrain: left in place", path)
        if writer:
            tidy_output_dir(out)
        trainer.barrier()

    @hookimpl
    def on_train_end(self):
        self.resumed_from = None
        self._pending_rng = None


def collect_plugin_states(trainer: Any) -> dict[str, Any]:
    """Every plugin's ``plugin_state`` answer as ``{key: state}``; a key given twice is an error."""
    states: dict[str, Any] = {}
    for answer in trainer.plugin_manager.hook.plugin_state(trainer=trainer):
        if answer is None:
            continue
        key, value = answer
        if key in states:
            raise CheckpointError(f"two plugins return plugin_state under the key {key!r}; keys must be unique")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"plugin_state {key!r} is not JSON-serialisable: {exc}") from exc
        states[key] = value
    return states


# ---- the config group ---------------------------------------------------------------------------


@hookimpl
def validate_args(trainer, args):
    policies = trainer.registries["save_policies"]
    if args.save_strategy not in policies:
        return [policies.unknown_message(args.save_strategy)]
    return None


@hookimpl
def configure(trainer, args):
    pm = trainer.plugin_manager
    pm.register(CheckpointStore(), name="checkpoint.store")
    policy = trainer.registries["save_policies"].create(args.save_strategy, args)
    if policy is not None and not pm.is_registered(policy):
        pm.register(policy, name=f"save_policy.{args.save_strategy}")
