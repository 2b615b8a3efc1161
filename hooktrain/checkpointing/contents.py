"""What a checkpoint holds, taken from the training objects into a :class:`~.writer.Snapshot`.

========================== =============================================================
``model.safetensors``      the model's weights (``pytorch_model.bin`` without safetensors);
                           tied tensors are stored once
``optimizer.pt``           ``optimizer.state_dict()`` (``torch.save``)
``scheduler.pt``           ``lr_scheduler.state_dict()``
``scaler.pt``              the grad scaler's state, when there is one
``rng_state.pth``          python, numpy, torch CPU and CUDA generators; one file per process
                           (``rng_state_{rank}.pth``) when there are several
``trainer_state.json``     the ``TrainerState``
``training_args.json``     the run's arguments (JSON, never a pickle)
``plugin_state.json``      every plugin's ``plugin_state`` by key
``manifest.json``          size and checksum of every file, step, world size, versions; last
========================== =============================================================
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hooktrain.checkpointing.format import (
    ARGS_NAME,
    OPTIMIZER_NAME,
    PLUGIN_STATE_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_BIN_NAME,
    WEIGHTS_NAME,
    json_bytes,
    rng_name,
)
from hooktrain.checkpointing.integrity import FILE_ALIGNMENT
from hooktrain.checkpointing.snapshot import HostBuffers, Key, Stager, copy_tree
from hooktrain.checkpointing.tensors import safetensors_metadata, safetensors_view, write_safetensors
from hooktrain.checkpointing.writer import Snapshot


def _write_bytes(f: Any, data: bytes) -> None:
    f.write(data)


def _torch_save(f: Any, value: Any) -> None:
    """``torch.save`` as a checkpoint writes it: without the zip records' CRC-32 (the manifest's
    checksum covers the file; torch's CRC costs about 15 ms of CPU per W2 optimizer state, and
    ``torch.load`` does not check it), and with every tensor's bytes at a 4096-byte boundary of the
    file (instead of 64), so that the writer hands them to the disk without copying them.
    Both are torch's global serialization settings, restored afterwards; a ``torch.save`` on
    another thread meanwhile gets them too, and its file loads the same."""
    try:
        from torch.utils.serialization import config  # torch 2.6 and later
    except ImportError:
        torch.save(value, f)
        return
    before = config.save.compute_crc32, config.save.storage_alignment
    config.save.compute_crc32, config.save.storage_alignment = False, FILE_ALIGNMENT
    try:
        torch.save(value, f)
    finally:
        config.save.compute_crc32, config.save.storage_alignment = before


def state_bytes(model: torch.nn.Module, optimizer: Any = None) -> int:
    """Bytes of the model's state dict and the optimizer's state tensors (what a snapshot copies)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    tensors = list(model.state_dict().values())
    if optimizer is not None:
        for per_param in getattr(optimizer, "state", {}).values():
            tensors.extend(v for v in per_param.values() if isinstance(v, torch.Tensor))
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def weights_files(model: torch.nn.Module, safetensors: bool, stage: Callable[[torch.Tensor, Key, bool], torch.Tensor]
                  ) -> dict[str, Callable[[Any], None]]:
    """The weights file (by name) and what writes it, from host copies made by *stage*."""
    live = model.state_dict(keep_vars=True)
    parameters = {name for name, value in live.items() if isinstance(value, torch.nn.Parameter)}
    if safetensors:
        tensors, aliases = safetensors_view(live)
        copied = {name: stage(t, ("weights", name), name in parameters) for name, t in tensors.items()}
        return {WEIGHTS_NAME: partial(write_safetensors, tensors=copied, metadata=safetensors_metadata(aliases))}
    state = model.state_dict()
    copied_sd = copy_tree(state, ("weights",), lambda t, key: stage(t, key, key[-1] in parameters))
    return {WEIGHTS_BIN_NAME: partial(_torch_save, value=copied_sd)}


def state_dict_files(state_dict: dict[str, torch.Tensor], safetensors: bool) -> dict[str, Callable[[Any], None]]:
    """The weights file (by name) and what writes it, from a state dict of host tensors (a sharded
    model's gathered weights)."""
    if safetensors:
        tensors, aliases = safetensors_view(state_dict)
        return {WEIGHTS_NAME: partial(write_safetensors, tensors=tensors, metadata=safetensors_metadata(aliases))}
    return {WEIGHTS_BIN_NAME: partial(_torch_save, value=dict(state_dict))}


def write_model(output_dir: Path, weights: dict[str, Callable[[Any], None]], args_json: str) -> Path:
    """*weights* (:func:`weights_files`, :func:`state_dict_files`) and ``training_args.json`` into
    *output_dir* (``save_model``): each file written and fsynced in a staging directory beside them,
    then renamed into place, so an existing file is replaced atomically; *output_dir*."""
    from hooktrain.checkpointing.format import TMP_PREFIX
    from hooktrain.checkpointing.integrity import HashingWriter
    from hooktrain.checkpointing.storage import fsync_dir

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f"{TMP_PREFIX}model-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    args_bytes = (args_json + "\n").encode("utf-8")
    contents = {**weights, ARGS_NAME: lambda f: f.write(args_bytes)}
    try:
        for name, produce in contents.items():
            writer = HashingWriter(staging / name)
            try:
                produce(writer)
            except BaseException:
                writer.close()
                raise
            writer.seal()
        for name in contents:
            os.replace(staging / name, output_dir / name)
        fsync_dir(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def take_snapshot(
    out: Path,
    *,
    step: int,
    epoch: float,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    rng: dict[str, Any] | None,
    trainer_state_json: str,
    args_json: str,
    plugin_states: dict[str, Any] | None,
    world_size: int = 1,
    rank: int = 0,
    writer: bool = True,
    save_only_model: bool = False,
    safetensors: bool = True,
    buffers: HostBuffers | None = None,
    defer: bool = False,
    sharded: Callable[[Path], None] | None = None,
) -> Snapshot:
    """A consistent copy of the checkpoint of *step* for this process, in host memory it owns
    (*buffers*, reused from save to save). Without *buffers* the snapshot refers to the live CPU
    tensors: only for a save persisted before training goes on.

    With *defer*, CPU parameters and optimizer state are copied later by :meth:`Snapshot.make_owned`
    (on the worker), which must happen before the optimizer's next step. *rng* (from
    :func:`~.tensors.capture_rng_state`) is needed unless *save_only_model*. *sharded* writes the
    model's and optimizer's state as DCP files instead (:mod:`.sharded`), at persist time.
    """
    stager = Stager(buffers, defer=defer)
    files: dict[str, Callable[[Any], None]] = {}
    if not save_only_model:
        files[rng_name(world_size, rank)] = partial(_torch_save, value=rng)
    if writer:
        if sharded is None:
            files.update(weights_files(model, safetensors, stager.stage))
        if not save_only_model:
            if optimizer is not None and sharded is None:
                opt_state = copy_tree(optimizer.state_dict(), ("optimizer",),
                                      lambda t, key: stager.stage(t, key, True))
                files[OPTIMIZER_NAME] = partial(_torch_save, value=opt_state)
            for name, owner, key in ((SCHEDULER_NAME, scheduler, "scheduler"), (SCALER_NAME, scaler, "scaler")):
                if owner is not None and hasattr(owner, "state_dict"):
                    state = copy_tree(owner.state_dict(), (key,), lambda t, k: stager.stage(t, k, False))
                    files[name] = partial(_torch_save, value=state)
            files[PLUGIN_STATE_NAME] = partial(_write_bytes, data=json_bytes(plugin_states or {}))
        files[TRAINER_STATE_NAME] = partial(_write_bytes, data=trainer_state_json.encode("utf-8"))
        files[ARGS_NAME] = partial(_write_bytes, data=(args_json + "\n").encode("utf-8"))
    if stager.buffers is not None:
        stager.buffers.drop_unused(stager.used)
    event = None
    if stager.cuda:
        event = torch.cuda.Event()
        event.record()
    small = sum(len(f.keywords.get("data", b"")) for f in files.values() if isinstance(f, partial))
    snapshot = Snapshot(
        out=out, step=step, epoch=epoch, world_size=world_size, writer=writer,
        save_only_model=save_only_model, files=files, nbytes=stager.nbytes,
        estimated_bytes=stager.tensor_bytes + small + 4096 * (len(files) + 1),  # + headers, the manifest
        stager=stager if stager.deferred else None,
        cuda_event=event, sharded=sharded,
    )
    if snapshot.stager is None and event is None:
        snapshot.copied.set()
    return snapshot
