"""Writing a checkpoint: take a snapshot, then persist it, on the spot or in a background thread.

:func:`persist` writes every file of a :class:`Snapshot` into ``.tmp-checkpoint-N``, hashing the
bytes as they are written, fsyncs them, writes the manifest last, fsyncs the directory, renames it
to ``checkpoint-N`` and rotates. :class:`BackgroundSave` runs it in a thread (the bulk of the work,
memory copies, writes, hashing and fsync, releases the GIL). With several processes, each writes
its own files and a gloo group of their own (:class:`Coordinator`) agrees that every file is in
before the main process renames: a checkpoint becomes visible only when all are in.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hooktrain.checkpointing.format import (
    MANIFEST_NAME,
    RNG_RE,
    checkpoint_name,
    list_checkpoints,
    manifest_json,
    temporary_name,
)
from hooktrain.checkpointing.integrity import HashingWriter, file_record, out_of_space
from hooktrain.checkpointing.sharded import SHARD_RE
from hooktrain.checkpointing.snapshot import Stager
from hooktrain.checkpointing.storage import (
    free_bytes,
    fsync_dir,
    publish,
    rotate_checkpoints,
)
from hooktrain.core.errors import CheckpointError

logger = logging.getLogger("hooktrain")


@dataclass
class Snapshot:
    """What one process writes for the checkpoint of ``step``: its files, each with the function
    that produces its bytes from memory this snapshot owns."""

    out: Path
    step: int
    epoch: float
    world_size: int
    writer: bool  # this process writes the shared files, the manifest, and renames
    save_only_model: bool
    files: dict[str, Callable[[Any], None]]
    nbytes: int  # host memory of the copied tensors
    estimated_bytes: int  # about what the files of this process take on disk
    stager: Stager | None = None  # copies left to the worker
    cuda_event: Any = None  # the non-blocking device-to-host copies are done when it is
    rotate_limit: int | None = None
    sharded: Callable[[Path], None] | None = None  # writes this process's DCP shards (collective)
    protected: list[str] = field(default_factory=list)
    copied: threading.Event = field(default_factory=threading.Event)
    #: training-thread seconds: taking the snapshot, and holding the next optimizer step for it
    blocked_s: float = 0.0
    guard_wait_s: float = 0.0

    @property
    def final(self) -> Path:
        return self.out / checkpoint_name(self.step)

    @property
    def tmp(self) -> Path:
        return self.out / temporary_name(self.step)

    def make_owned(self) -> None:
        """Finish the copies: afterwards nothing the training thread does changes the snapshot."""
        try:
            if self.stager is not None:
                self.stager.finish_deferred()
            if self.cuda_event is not None:
                self.cuda_event.synchronize()
        finally:
            self.copied.set()


class Coordinator:
    """Agreement between the processes of a run on a checkpoint, usable from a worker thread:
    a gloo process group of its own (the training's collectives are left undisturbed). One
    process alone needs none."""

    def __init__(self, timeout_s: float):
        import torch.distributed as dist

        self._dist = dist
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))

    def all_ok(self, ok: bool) -> bool:
        """Whether every process says *ok* (also a barrier)."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        self._dist.all_reduce(flag, op=self._dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())


def _agree(coordinator: Coordinator | None, ok: bool) -> bool:
    return ok if coordinator is None else coordinator.all_ok(ok)


def _cleanup_after_failure(snapshot: Snapshot, writers: list[HashingWriter]) -> None:
    for w in writers:
        w.close()
    if snapshot.writer:
        shutil.rmtree(snapshot.tmp, ignore_errors=True)


def _earlier(snapshot: Snapshot) -> str:
    names = [p.name for _, p in list_checkpoints(snapshot.out) if p.name != snapshot.final.name]
    if not names:
        return "there is no earlier checkpoint"
    shown = ", ".join(names[-3:])
    return f"the earlier checkpoints are intact ({'…, ' if len(names) > 3 else ''}{shown})"


def failure_message(snapshot: Snapshot, exc: BaseException, writers: list[HashingWriter]) -> str:
    """A message that says what failed, where, and what is left (call after the clean-up)."""
    final = snapshot.final
    full = next((e for e in [*(out_of_space(w.failure) for w in writers), out_of_space(exc)] if e), None)
    if full:
        failed = next((w.path.name for w in writers if w.failure is not None), None)
        free = free_bytes(snapshot.out)
        free_text = f"{free:,} bytes are free" if free is not None else "the free space is unknown"
        what = "file size limit reached (RLIMIT_FSIZE)" if full == errno.EFBIG else "disk full"
        return (
            f"{what}: {final} could not be written{f' ({failed})' if failed else ''}: it needs about "
            f"{snapshot.estimated_bytes:,} bytes and {free_text} on the file system of {snapshot.out}; "
            f"its temporary directory was removed and {_earlier(snapshot)}. Free some space (or lower "
            "save_total_limit) and resume"
        )
    return (f"could not write {final}: {type(exc).__name__}: {exc}; its temporary directory was removed "
            f"and {_earlier(snapshot)}")


def _in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run *calls* (fsyncs: they release the GIL and wait for the disk) at the same time; their
    results in order. The first failure is raised once all have ended."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(8, len(calls)), thread_name_prefix="hooktrain-fsync") as pool:
        futures = [pool.submit(call) for call in calls]
    return [f.result() for f in futures]


def persist(snapshot: Snapshot, coordinator: Coordinator | None = None, background: bool = False) -> Path:
    """Write *snapshot* durably and rename it into place (then rotate); its final directory.

    A failure removes the temporary directory and raises :class:`CheckpointError` naming the
    checkpoint (a full disk says so, with the bytes needed and free). With several processes
    every process calls it: the main process renames only when every process's files are in.
    *background* (training goes on meanwhile): the large files go to the disk with ``O_DIRECT``,
    which costs the least CPU; else through the page cache, which finishes sooner.
    """
    snapshot.make_owned()
    tmp, writers = snapshot.tmp, []
    failure: BaseException | None = None
    try:
        if snapshot.writer:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
    except Exception as exc:
        failure = exc
    if not _agree(coordinator, failure is None):  # the directory exists for every process
        failure = failure or CheckpointError("another process could not create its directory")
    records: dict[str, Any] = {}
    if failure is None:
        try:
            if snapshot.sharded is not None:
                snapshot.sharded(tmp)
            for name, produce in snapshot.files.items():
                w = HashingWriter(tmp / name, direct=background)
                writers.append(w)
                produce(w)
                w.drain()  # its buffer serves the next file
            # every file written: now make them durable, together (the disk flushes them at once)
            records.update(zip([w.path.name for w in writers], _in_parallel([w.seal for w in writers]),
                               strict=True))
        except Exception as exc:
            failure = exc
    if not _agree(coordinator, failure is None):  # every process's files are in
        failure = failure or CheckpointError("another process failed to write its files")
    if failure is None and snapshot.writer:
        try:
            for entry in sorted(tmp.iterdir()):  # the other processes' random-state and DCP files
                if entry.name not in records and (RNG_RE.match(entry.name) or SHARD_RE.match(entry.name)):
                    records[entry.name] = file_record(entry)
            manifest = HashingWriter(tmp / MANIFEST_NAME)
            writers.append(manifest)
            manifest.write(manifest_json(snapshot.step, snapshot.epoch, snapshot.world_size,
                                         snapshot.save_only_model, records))
            _in_parallel([manifest.seal, partial(fsync_dir, tmp)])  # the manifest and every name in tmp
            publish(tmp, snapshot.final)
        except Exception as exc:
            failure = exc
    if not _agree(coordinator, failure is None):
        failure = failure or CheckpointError("another process could not complete it")
    if failure is not None:
        _cleanup_after_failure(snapshot, writers)
        raise CheckpointError(failure_message(snapshot, failure, writers)) from failure
    if snapshot.writer and snapshot.rotate_limit:
        rotate_checkpoints(snapshot.out, snapshot.rotate_limit, protected=[snapshot.final.name, *snapshot.protected])
    return snapshot.final


#: how much lower than the training thread a background persist runs (``nice`` steps, Linux)
PERSIST_NICENESS = 10


def _yield_to_training() -> None:
    """Lower this thread's scheduling priority, so that a busy CPU serves the training thread
    first; the persist then uses the time training leaves (a no-op where threads have no own
    priority)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + PERSIST_NICENESS)
    except (AttributeError, OSError):
        pass


class BackgroundSave:
    """One checkpoint being persisted by a worker thread (:func:`persist`)."""

    def __init__(self, snapshot: Snapshot, coordinator: Coordinator | None = None):
        self.snapshot = snapshot
        self.path = snapshot.final
        self.error: BaseException | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(coordinator,), name=f"hooktrain-save-{snapshot.step}")
        self._thread.start()

    def _run(self, coordinator: Coordinator | None) -> None:
        try:
            self.snapshot.make_owned()  # at full priority: the next optimizer step may wait for it
            _yield_to_training()
            persist(self.snapshot, coordinator, background=True)
        except BaseException as exc:  # surfaced on the training thread by result()
            self.error = exc
        finally:
            self.snapshot.copied.set()
            self.seconds = time.perf_counter() - self.started

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> Path:
        """Wait until it is committed; its path. A failure is raised here as a
        :class:`CheckpointError` naming the checkpoint."""
        self._thread.join()
        error = self.error
        if error is not None:
            if isinstance(error, CheckpointError):
                raise CheckpointError(f"the background save of {self.path.name} failed: {error}") from error
            raise CheckpointError(f"the background save of {self.path.name} failed: "
                                  f"{type(error).__name__}: {error}") from error
        return self.path


class StepGuard:
    """Holds the optimizer's next ``step()`` until the snapshot's deferred copies are made.

    Registered once per optimizer (``register_step_pre_hook``); between saves it costs one
    attribute check per step.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._optimizers: set[int] = set()
        self.waited_s = 0.0

    def attach(self, optimizer: Any) -> bool:
        """Watch *optimizer*; False when it has no step pre-hooks (not a torch optimizer)."""
        if id(optimizer) in self._optimizers:
            return True
        register = getattr(optimizer, "register_step_pre_hook", None)
        if register is None:
            return False
        register(self._before_step)
        self._optimizers.add(id(optimizer))
        return True

    def hold(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def release(self) -> None:
        """Wait for the copies now (at the end of training or before another snapshot)."""
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None and not snapshot.copied.is_set():
            start = time.perf_counter()
            snapshot.copied.wait()
            waited = time.perf_counter() - start
            self.waited_s += waited
            snapshot.guard_wait_s += waited

    def _before_step(self, *_: Any) -> None:
        if self._snapshot is not None:
            self.release()


def available_memory() -> int | None:
    """Host memory available to new allocations (``MemAvailable``), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def snapshot_fits(needed: int, available: int | None) -> bool:
    """Whether *needed* new bytes of host memory clearly fit (a quarter of what is available is kept free)."""
    return available is None or needed <= 0.75 * available


def warn_if_disk_short(snapshot: Snapshot, last_size: int | None) -> None:
    """Warn before writing when the free space is clearly below what the checkpoint needs."""
    expected = max(last_size or 0, snapshot.estimated_bytes)
    free = free_bytes(snapshot.out)
    if free is not None and expected and free < expected:
        logger.warning(
            "%s needs about %s bytes (the last checkpoint's size) but only %s bytes are free on the "
            "file system of %s: the save will probably fail (the earlier checkpoints stay intact)",
            snapshot.final.name, f"{expected:,}", f"{free:,}", snapshot.out)


__all__ = [
    "BackgroundSave", "Coordinator", "Snapshot", "StepGuard", "available_memory", "failure_message",
    "persist", "snapshot_fits", "warn_if_disk_short",
]
