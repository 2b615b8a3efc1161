"""Many processes on ``torch.distributed``: process group, ``DistributedDataParallel``, gathered evaluation.

Reads: ddp_backend, ddp_timeout, ddp_find_unused_parameters, ddp_bucket_cap_mb,
ddp_broadcast_buffers, ddp_static_graph, local_rank, use_cpu (through ``trainer.device``).

Active when the launcher says the run has more than one process (``WORLD_SIZE > 1``, as set by
``torchrun``) or when the user already initialised a process group of more than one process.
Then, when the :class:`~hooktrain.Trainer` is built:

* the process group is initialised from the launcher's environment (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``) with ``ddp_backend`` (``nccl`` on CUDA, else ``gloo``) and
  ``ddp_timeout``, unless one already exists;
* ``trainer.process_index`` / ``world_size`` / ``local_process_index`` are set, the model moves
  to ``cuda:LOCAL_RANK`` (or stays on the CPU) and ``trainer.model_wrapped`` becomes a
  ``DistributedDataParallel`` of it; ``trainer.barrier()`` waits for every process.

The core then shards the data by rank and skips gradient synchronisation on all but the last
micro-batch of an accumulation window. This plugin answers ``reduce_mean`` (the logged training
loss is averaged over the processes) and wraps ``evaluation_loop`` so that every process returns
the metrics of the whole evaluation set, in dataset order, each sample counted once.

The process group is left alive after ``train()`` (``evaluate()`` may follow); one this plugin
created is destroyed at interpreter exit after a run that did not fail.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hooktrain.core.data import ResumableBatchSampler, concat_padded
from hooktrain.core.markers import hookimpl
from hooktrain.core.types import EvalOutput

logger = logging.getLogger("hooktrain")

#: Seconds a failing process lingers under torchrun so that the first failure is reported as such.
FAILURE_GRACE_S = 1.0

#: The process groups this module initialised (destroyed at exit unless a run failed).
_created: dict[str, bool] = {"group": False, "failed": False}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        return default


def is_distributed_run() -> bool:
    """Whether this process is one of several: an initialised group, else ``WORLD_SIZE > 1``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return _env_int("WORLD_SIZE", 1) > 1


def _default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@hookimpl(tryfirst=True)  # it pins this process's GPU before any other plugin's check uses CUDA
def validate_args(trainer, args):
    if not is_distributed_run():
        return None
    if not dist.is_available():
        return ["WORLD_SIZE > 1 but this torch build has no torch.distributed; launch one process"]
    problems = []
    backend = args.ddp_backend or _default_backend(trainer.device)
    if backend == "nccl" and trainer.device.type != "cuda":
        why = "use_cpu=True" if args.use_cpu else "no CUDA device is available"
        problems.append(f"ddp_backend='nccl' needs CUDA devices but {why}; use ddp_backend='gloo'")
    elif not dist.is_initialized() and not dist.is_backend_available(backend):
        problems.append(f"ddp_backend={backend!r} is not available in this torch build")
    local_rank = _local_rank(args)
    if trainer.device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            problems.append(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} visible CUDA "
                "device(s): start at most that many processes per machine (--nproc_per_node), or set "
                "use_cpu=True"
            )
        else:  # now, before the other plugins' checks probe CUDA: every rank on its own GPU, not GPU 0
            torch.cuda.set_device(local_rank)
    return problems


@hookimpl(tryfirst=True)  # before the plugins that register only on the main process
def configure(trainer, args):
    if is_distributed_run():
        trainer.plugin_manager.register(DistributedRun(trainer, args), name="distributed.ddp")


def _local_rank(args: Any) -> int:
    """This process's rank on its machine: ``LOCAL_RANK``, else ``args.local_rank``, else (a
    launcher that sets neither: one machine) the global rank."""
    local_rank = _env_int("LOCAL_RANK", args.local_rank)
    if local_rank < 0:
        local_rank = dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)
    return local_rank


def _destroy_at_exit() -> None:
    if _created["group"] and not _created["failed"] and dist.is_initialized():
        dist.destroy_process_group()


class DistributedRun:
    """One process of a multi-process run: owns the DDP wrapper and the cross-process hooks."""

    def __init__(self, trainer: Any, args: Any):
        local_rank = _local_rank(args)  # below the device count on CUDA (validate_args)
        cuda = trainer.device.type == "cuda"
        if cuda:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            self.backend = args.ddp_backend or _default_backend(trainer.device)
            dist.init_process_group(backend=self.backend, timeout=timedelta(seconds=args.ddp_timeout))
            if not _created["group"]:
                atexit.register(_destroy_at_exit)
            _created["group"] = True
        else:
            self.backend = dist.get_backend()
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = local_rank
        self.device = device
        self._recent: list[tuple[Any, tuple[Any, ...]]] = []
        self.broken = False

        trainer.process_index = self.rank
        trainer.world_size = self.world_size
        trainer.local_process_index = self.local_rank
        trainer.state.is_world_process_zero = self.rank == 0
        trainer.state.is_local_process_zero = self.local_rank == 0
        trainer.device = device
        trainer._barrier = self.barrier

        trainer.model.to(device)
        if getattr(args, "fsdp", None):  # sharded instead, by the fsdp plugin (plugins/fsdp.py)
            return
        ddp_kwargs: dict[str, Any] = {"find_unused_parameters": bool(args.ddp_find_unused_parameters)}
        for field, key in (("ddp_bucket_cap_mb", "bucket_cap_mb"),
                           ("ddp_broadcast_buffers", "broadcast_buffers"),
                           ("ddp_static_graph", "static_graph")):
            if getattr(args, field) is not None:
                ddp_kwargs[key] = getattr(args, field)
        trainer.model_wrapped = torch.nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[device.index] if cuda else None, **ddp_kwargs
        )

    def barrier(self) -> None:
        """Wait until every process reaches this point (bounded by ``ddp_timeout``)."""
        self._wait(dist.barrier(async_op=True))

    def _wait(self, work: Any, *tensors: Any) -> None:
        """Wait for a collective and keep it (and its tensors) referenced from Python.

        gloo's worker thread otherwise may drop the last reference to a finished collective,
        and so free its Python tensors, while the interpreter is shutting down: the process
        then aborts ("terminate called without an active exception") after a good run.
        """
        work.wait()
        self._recent = [*self._recent[-3:], (work, tensors)]

    # ---- events ---------------------------------------------------------------------------

    @hookimpl
    def on_train_begin(self, trainer, args, state):
        self.broken = False
        # a resumed trainer_state.json carries the flags of the process that wrote it
        state.is_world_process_zero = self.rank == 0
        state.is_local_process_zero = self.local_rank == 0
        if self.rank == 0:
            per_device, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
            logger.info(
                "distributed: %d processes (%s); effective batch %d = %d per device x %d processes "
                "x %d accumulation steps",
                self.world_size, self.backend, per_device * self.world_size * ga,
                per_device, self.world_size, ga,
            )

    @hookimpl
    def on_exception(self, error):
        _created["failed"] = True  # the group may be broken: never block at exit on it
        self.broken = True  # e.g. Ctrl-C: the processes may be at different points of a step
        if not isinstance(error, Exception) or "TORCHELASTIC_RUN_ID" not in os.environ:
            return
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if path and not os.path.exists(path):
            # torchrun's failure summary then shows this rank's error (no @record needed)
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            try:
                ErrorHandler().record_exception(error)
            except OSError:
                pass
        # The rank that failed first ends first; the others fail a moment later ("connection
        # closed by peer"). Lingering briefly lets torchrun see the first failure alone, name it
        # as the root cause and stop the others itself.
        time.sleep(FAILURE_GRACE_S)

    # ---- cross-process values --------------------------------------------------------------

    @hookimpl
    def reduce_mean(self, value):
        if self.broken:  # the summary after an interrupt: keep the local value, never wait
            return None
        tensor = value.detach().to(self.device, dtype=torch.float64, copy=True)
        self._wait(dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True), tensor)
        return (tensor / self.world_size).cpu()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's *obj* (picklable), in rank order."""
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(self.device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        self._wait(dist.all_gather(sizes, size, async_op=True), size, *sizes)
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[: payload.numel()] = payload
        chunks = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._wait(dist.all_gather(chunks, padded, async_op=True), padded, *chunks)
        # the bytes come from the other processes of this job, never from a file
        return [pickle.loads(chunk[: int(n)].cpu().numpy().tobytes())
                for chunk, n in zip(chunks, sizes, strict=True)]

    @hookimpl(wrapper=True)
    def evaluation_loop(self, trainer, dataloader):
        out = yield
        if out is None:
            return None
        sampler = getattr(dataloader, "batch_sampler", None)
        indices: list[int] | None = None
        if isinstance(sampler, ResumableBatchSampler) and sampler.world_size == self.world_size:
            indices = sampler.indices()[: out.num_samples]
        mine = (out.loss, out.num_samples, indices, out.predictions, out.label_ids, out.inputs, out.losses)
        return merge_eval_outputs(self.all_gather_object(mine))


# ---- merging the evaluation outputs of every process ---------------------------------------


def merge_eval_outputs(parts: list[tuple[Any, ...]]) -> EvalOutput:
    """One :class:`EvalOutput` from every process's ``(loss, n, indices, predictions, labels[, inputs,
    losses])``.

    With *indices* (the dataset index of each of a process's samples), results are put back in
    dataset order and an index seen twice (the padding of a shard) counts once; otherwise they
    are concatenated in rank order. The loss is the sample-weighted mean of the processes' losses.
    """
    loss_sum = loss_n = 0.0
    for loss, n, *_ in parts:
        if loss is not None and n:
            loss_sum += float(loss) * n
            loss_n += n
    ordered = all(p[2] is not None for p in parts)
    if ordered:
        index = np.concatenate([np.asarray(p[2], dtype=np.int64) for p in parts])
        _, first = np.unique(index, return_index=True)  # sorted dataset order, first occurrence
        order = first
        num_samples = len(order)
    else:
        order = None
        num_samples = sum(int(p[1]) for p in parts)
    return EvalOutput(
        loss=loss_sum / loss_n if loss_n else None,
        predictions=_merge([p[3] for p in parts], order),
        label_ids=_merge([p[4] for p in parts], order),
        num_samples=num_samples,
        inputs=_merge([p[5] if len(p) > 5 else None for p in parts], order),
        losses=_merge([p[6] if len(p) > 6 else None for p in parts], order),
    )


def _merge(values: list[Any], order: np.ndarray | None) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, tuple):
        return tuple(_merge([v[i] if v is not None else None for v in values], order)
                     for i in range(len(first)))
    if isinstance(first, torch.Tensor):
        present = [v.detach().cpu().numpy() for v in present]
        first = present[0]
    if isinstance(first, np.ndarray):
        merged = concat_padded(present)  # processes may have padded to different lengths
        return merged if order is None else merged[order]
    merged_list = [item for v in present for item in v]
    if isinstance(first, list) and first and isinstance(first[0], np.ndarray):
        return merged_list  # eval_do_concat_batches=False: one array per batch, rank after rank
    return merged_list if order is None else [merged_list[i] for i in order]
