"""The ``checkpoint`` plugin: when to save and how to resume; the format is :mod:`hooktrain.checkpointing`.

A save takes a snapshot of everything the checkpoint holds at the step boundary, then persists
it (files, checksums, fsync, manifest, rename, rotation). With ``save_async=True`` (the default)
a background thread persists it while training goes on; at most one save is in flight, and a
save that comes due meanwhile waits for it (logged and counted). ``on_save`` is emitted on the
training thread once the checkpoint is committed: at the first step boundary after that, or
before ``train()`` returns, which never happens with a save in flight. The final save, a save at
the end of a stopped run and ``save_async=False`` are synchronous. A background failure stops
training at the next boundary with an error naming the checkpoint; the earlier ones are intact.

For other plugins (e.g. preemption): :func:`wait_for_checkpoint` waits for the save in flight
(and emits its ``on_save``), :func:`save_checkpoint_now` writes a synchronous checkpoint now.

Reads: output_dir, save_async, save_total_limit, save_safetensors, save_only_model,
save_on_each_node, overwrite_output_dir, restore_callback_states_from_checkpoint,
ignore_data_skip, ddp_timeout, and on resume the fields in :data:`ARITHMETIC_FIELDS`;
``save_strategy`` picks the save policy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from hooktrain.checkpointing.contents import state_bytes, take_snapshot, weights_files, write_model
from hooktrain.checkpointing.format import (
    checkpoint_name,
    checkpoint_step,
    is_own_checkpoint,
    list_checkpoints,
)
from hooktrain.checkpointing.loading import newest_loadable, read_checkpoint
from hooktrain.checkpointing.sharded import (
    is_sharded,
    load_sharded,
    sharded_state_bytes,
    stage_sharded,
    write_sharded,
    write_staged,
)
from hooktrain.checkpointing.snapshot import HostBuffers
from hooktrain.checkpointing.storage import (
    directory_bytes,
    remove_dir,
    tidy_output_dir,
)
from hooktrain.checkpointing.tensors import (
    apply_weights,
    capture_rng_state,
    restore_rng_state,
)
from hooktrain.checkpointing.writer import (
    BackgroundSave,
    Coordinator,
    StepGuard,
    available_memory,
    persist,
    snapshot_fits,
    warn_if_disk_short,
)
from hooktrain.core.errors import CheckpointError, CheckpointSettingError
from hooktrain.core.markers import hookimpl
from hooktrain.core.state import TrainerState

logger = logging.getLogger("hooktrain")

#: this plugin's own API; the checkpoint format's names are in :mod:`hooktrain.checkpointing`
__all__ = [
    "ARITHMETIC_FIELDS", "CheckpointStore", "STORE_NAME", "collect_plugin_states", "save_checkpoint_now",
    "wait_for_checkpoint",
]

STORE_NAME = "checkpoint.store"


def __getattr__(name: str) -> Any:
    """The checkpoint format's names, which earlier versions exposed here: still found, with a
    ``DeprecationWarning`` pointing to :mod:`hooktrain.checkpointing`."""
    import warnings

    import hooktrain.checkpointing as library
    from hooktrain.checkpointing import format as format_module

    source = library if name in library.__all__ else format_module if name == "FORMAT" else None
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"hooktrain.plugins.checkpoint.{name} moved to {source.__name__}.{name}",
                  DeprecationWarning, stacklevel=2)
    return getattr(source, name)


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
#: What a resume of sharded (fsdp) state with another number of processes does (in its warning).
RESHARDED = (
    " (fsdp: the model and optimizer state are resharded to the new processes; global_step and the "
    "counters are kept; the data position is kept as a sample count: the samples of this epoch "
    "already read are not read again, the rest of the epoch's order (the same order: it depends only "
    "on the seed and the epoch) is dealt to the new processes; an epoch now has another number of "
    "steps: by num_train_epochs, max_steps is counted again so that the run ends with its last epoch, "
    "and the learning-rate schedule is built again for it (from this step on it follows the new "
    "curve); a max_steps given stays; the random state of each process starts again from the seed)")


def _is_writer(trainer: Any) -> bool:
    if trainer.args.save_on_each_node:
        return getattr(trainer, "local_process_index", 0) == 0
    return bool(trainer.is_world_process_zero)


def _store(trainer: Any) -> CheckpointStore:
    store = trainer.plugin_manager.get_plugin(STORE_NAME)
    if store is None:
        raise CheckpointError("the checkpoint plugin is not active (is 'checkpoint' disabled?)")
    return store


def wait_for_checkpoint(trainer: Any) -> Path | None:
    """Wait for the checkpoint being written in the background, if any, and emit its ``on_save``;
    its path (``None`` when none was in flight). Its failure is raised here."""
    return _store(trainer).finish(trainer)


def save_checkpoint_now(trainer: Any) -> Path:
    """Write a checkpoint of the current step synchronously (after the one in flight), through
    ``trainer.save_checkpoint()``; it is committed and ``on_save`` emitted when this returns."""
    store = _store(trainer)
    store.sync_next = True
    try:
        return Path(trainer.save_checkpoint())
    finally:
        store.sync_next = False


@dataclasses.dataclass
class SaveStats:
    """What saving cost this run (logged at the end of ``train()`` when a save ran in the background)."""

    saves: int = 0
    background: int = 0
    waits: int = 0  # saves that came due while another was in flight
    wait_s: float = 0.0
    blocked_s: float = 0.0  # training-thread time in the saves (snapshot, waits), step guard included
    snapshot_bytes: int = 0
    #: the training thread's time for each save (for benchmarks): in the save, plus holding the next step
    per_save_s: list[float] = dataclasses.field(default_factory=list)

    def logs(self, guard_s: float) -> dict[str, float]:
        return {"checkpoint_saves": self.saves, "checkpoint_save_waits": self.waits,
                "checkpoint_wait_seconds": round(self.wait_s, 4),
                "checkpoint_blocking_seconds": round(self.blocked_s + guard_s, 4),
                "checkpoint_snapshot_bytes": self.snapshot_bytes}


class _Committer:
    """Registered while a save is in flight: finishes it at the first step boundary after its commit."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    @hookimpl
    def on_step_end(self, trainer):
        inflight = self.store.inflight
        if inflight is not None and inflight.done():
            self.store.finish(trainer)


class CheckpointStore:
    """Saves and restores checkpoints for one Trainer (``save_checkpoint``, ``resume_checkpoint``,
    ``save_model``) and guards ``output_dir`` at the start of training."""

    def __init__(self) -> None:
        self.resumed_from: Path | None = None
        self._pending_rng: dict[str, Any] | None = None
        self.inflight: BackgroundSave | None = None
        self.sync_next = False  # the next save is synchronous (save_checkpoint_now)
        self.stats = SaveStats()
        self._training = False
        self._buffers = HostBuffers()
        self._guard = StepGuard()
        self._committer = _Committer(self)
        self._coordinator: Coordinator | None = None
        self._last_size: int | None = None
        self._short_memory_warned = False

    # ---- saving --------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def save_checkpoint(self, trainer, state):
        start = time.perf_counter()
        if self.inflight is not None:
            if not self.inflight.done():
                self._wait_logged(trainer, state)
            self.finish(trainer)
        args = trainer.args
        background = self._background(trainer, state)
        snapshot = self._snapshot(trainer, state, background)
        if snapshot.writer:
            warn_if_disk_short(snapshot, self._last_size)
        self.stats.saves += 1
        self.stats.snapshot_bytes = max(self.stats.snapshot_bytes, snapshot.nbytes)
        if not background:
            path = persist(snapshot, self._coordinator)
            self._last_size = directory_bytes(path) if snapshot.writer else None
            self.stats.blocked_s += time.perf_counter() - start
            self.stats.per_save_s.append(time.perf_counter() - start)
            self._emit_on_save(trainer, path)
            return path
        if snapshot.stager is not None:
            self._guard.hold(snapshot)
        self.inflight = BackgroundSave(snapshot, self._coordinator)
        self.stats.background += 1
        if self.stats.background == 1:
            logger.info("checkpoints are written in the background (save_async=True); each snapshot holds "
                        "%s bytes of host memory", f"{snapshot.nbytes:,}")
        trainer.plugin_manager.register(self._committer, name="checkpoint.committer")
        snapshot.blocked_s = time.perf_counter() - start
        self.stats.blocked_s += snapshot.blocked_s
        return Path(args.output_dir) / checkpoint_name(state.global_step)

    def _wait_logged(self, trainer: Any, state: TrainerState) -> None:
        inflight = self.inflight
        assert inflight is not None
        start = time.perf_counter()
        try:
            inflight.wait()
        except CheckpointError:
            pass  # raised again by finish()
        waited = time.perf_counter() - start
        self.stats.waits += 1
        self.stats.wait_s += waited
        logger.info("%s came due while %s was still being written: waited %.3f s for it (%d such waits "
                    "so far)", checkpoint_name(state.global_step), inflight.path.name, waited, self.stats.waits)

    def _background(self, trainer: Any, state: TrainerState) -> bool:
        """Whether this save may be persisted in the background."""
        args = trainer.args
        ending = state.stop_reason is not None or 0 < state.max_steps <= state.global_step
        if self.sync_next or not self._training or not args.save_async or ending:
            return False
        sharded = is_sharded(trainer.model)
        if sharded and trainer.world_size <= 1:  # DCP in a thread needs a group of its own: none here
            return False
        needed = sharded_state_bytes(trainer.model, trainer.optimizer) if sharded else \
            state_bytes(trainer.model, trainer.optimizer) - self._buffers.nbytes
        if needed > 0:
            available = available_memory()
            if not snapshot_fits(needed, available):
                if not self._short_memory_warned:
                    logger.warning(
                        "save_async: a snapshot needs %s more bytes of host memory and only %s are "
                        "available; saving synchronously instead", f"{needed:,}", f"{available:,}")
                    self._short_memory_warned = True
                return False
        return True

    def _snapshot(self, trainer: Any, state: TrainerState, background: bool) -> Any:
        args = trainer.args
        writer = _is_writer(trainer)
        if trainer.world_size > 1 and self._coordinator is None:
            self._coordinator = Coordinator(getattr(args, "ddp_timeout", 1800))
        protected: list[str] = []
        if writer and args.save_total_limit:
            for names in trainer.plugin_manager.hook.protected_checkpoints(trainer=trainer, state=state):
                protected.extend(str(n) for n in names or ())
        full = not args.save_only_model
        defer = background and trainer.optimizer is not None and self._guard.attach(trainer.optimizer)
        snapshot = take_snapshot(
            Path(args.output_dir), step=state.global_step, epoch=state.epoch, model=trainer.model,
            optimizer=trainer.optimizer if full else None,
            scheduler=trainer.lr_scheduler if full else None,
            scaler=getattr(trainer, "grad_scaler", None) if full else None,
            rng=capture_rng_state(trainer.device, all_devices=trainer.world_size <= 1) if full else None,
            trainer_state_json=state.to_json() if writer else "",
            args_json=args.to_json() if writer else "",
            plugin_states=collect_plugin_states(trainer) if writer and full else None,
            world_size=trainer.world_size, rank=trainer.process_index, writer=writer,
            save_only_model=args.save_only_model, safetensors=args.save_safetensors,
            buffers=self._buffers if background else None, defer=defer,
            sharded=self._sharded_writer(trainer, background, full),
        )
        snapshot.rotate_limit = args.save_total_limit
        snapshot.protected = protected
        return snapshot

    def _sharded_writer(self, trainer: Any, background: bool, full: bool) -> Any:
        """What writes the DCP files of a sharded model: in the background, a host copy of this
        process's shards over the coordinator's own group; else the live state, on the training thread."""
        if not is_sharded(trainer.model):
            return None
        optimizer = trainer.optimizer if full else None
        if background and self._coordinator is not None:
            return partial(write_staged, state=stage_sharded(trainer.model, optimizer), group=self._coordinator.group)
        return partial(write_sharded, model=trainer.model, optimizer=optimizer)

    def finish(self, trainer: Any) -> Path | None:
        """Wait for the save in flight (if any), then emit its ``on_save``; its path. Its
        failure is raised here, on the training thread."""
        inflight = self.inflight
        if inflight is None:
            return None
        self.inflight = None
        if trainer.plugin_manager.is_registered(self._committer):
            trainer.plugin_manager.unregister(self._committer)
        self._guard.release()
        path = inflight.wait()
        self.stats.per_save_s.append(inflight.snapshot.blocked_s + inflight.snapshot.guard_wait_s)
        if inflight.snapshot.writer:
            self._last_size = directory_bytes(path)
        self._emit_on_save(trainer, path)
        return path

    @staticmethod
    def _emit_on_save(trainer: Any, path: Path) -> None:
        trainer.plugin_manager.hook.on_save(trainer=trainer, args=trainer.args, state=trainer.state,
                                            checkpoint_dir=path)

    @hookimpl(trylast=True)
    def save_model(self, trainer, output_dir):
        """The final weights and ``training_args.json`` in *output_dir*, each file replaced atomically."""
        if not trainer.is_world_process_zero:  # every process calls save_model; the main one writes
            return None
        weights = weights_files(trainer.model, trainer.args.save_safetensors, lambda t, key, deferrable: t.detach().cpu())
        return write_model(Path(output_dir), weights, trainer.args.to_json())

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

        def read(path: Path) -> dict[str, Any]:  # every file read once, checked as it is read
            return read_checkpoint(path, trainer.world_size, trainer.process_index,
                                   needs_optimizer=trainer.optimizer is not None)

        if checkpoint is True:
            path, loaded = newest_loadable(args.output_dir, read)
        else:
            path = Path(checkpoint)
            if not path.exists():
                raise CheckpointSettingError(
                    f"resume_from_checkpoint={str(checkpoint)!r}: no such directory; give a checkpoint "
                    "directory, or resume_from_checkpoint=True for the newest in output_dir")
            try:
                loaded = read(path)
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

    def _check_arguments(self, trainer: Any, path: Path, loaded: dict[str, Any]) -> None:
        saved = dict(loaded["args"] or {})
        saved["world_size"] = loaded["manifest"].get("world_size", 1)
        current = json.loads(trainer.args.to_json())
        current["world_size"] = trainer.world_size
        diffs: dict[str, list[str]] = {"error": [], "warn": []}
        resharding = loaded.get("sharded") and is_sharded(trainer.model)
        for level, names in ARITHMETIC_FIELDS.items():
            for name in names:
                if name in saved and name in current and saved[name] != current[name]:
                    diffs["warn" if resharding and name == "world_size" else level].append(
                        f"{name}: {saved[name]!r} in the checkpoint, {current[name]!r} now"
                        + (RESHARDED if resharding and name == "world_size" else ""))
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
        if loaded.get("sharded"):  # DCP: resharded to this run's processes
            load_sharded(path, loaded["manifest"], trainer.model, trainer.optimizer)
        elif is_sharded(trainer.model) and trainer.optimizer is not None:
            raise CheckpointError(
                f"{path} was written without fsdp (its optimizer state is not sharded): resume it without "
                "fsdp, or load its weights (hooktrain.checkpointing.load_model_weights) and start a new run")
        else:
            apply_weights(trainer.model, loaded["weights"], path)
        try:
            if trainer.optimizer is not None and not loaded.get("sharded"):
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

    # ---- the start and the end of training --------------------------------------------------

    @hookimpl(tryfirst=True)
    def on_train_begin(self, trainer, args):
        out = Path(args.output_dir)
        writer = _is_writer(trainer)
        self._training = True
        self.stats = SaveStats()
        self._guard.waited_s = 0.0
        if self.resumed_from is None and trainer.state.global_step == 0:
            existing = [path for _, path in list_checkpoints(out)]
            if existing and not args.overwrite_output_dir:
                shown = ", ".join(p.name for p in existing[:5]) + (" …" if len(existing) > 5 else "")
                raise CheckpointSettingError(
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
                        remove_dir(path)
                    else:
                        logger.warning("%s was not written by hooktrain: left in place", path)
        if writer:
            tidy_output_dir(out)
        trainer.barrier()

    @hookimpl
    def summary_logs(self, trainer):
        """The run ends: the save in flight is committed (and its ``on_save`` emitted) now. With
        saves in the background, what they cost the training thread and the snapshot's memory."""
        self.finish(trainer)
        return self.stats.logs(self._guard.waited_s) if self.stats.background else None

    @hookimpl(tryfirst=True)
    def on_train_end(self, trainer):
        """First of all (also after a failure): no save stays in flight once ``train()`` returns."""
        self._training = False
        self.resumed_from = None
        self._pending_rng = None
        self.finish(trainer)


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
    pm.register(CheckpointStore(), name=STORE_NAME)
    policy = trainer.registries["save_policies"].create(args.save_strategy, args)
    if policy is not None and not pm.is_registered(policy):
        pm.register(policy, name=f"save_policy.{args.save_strategy}")

