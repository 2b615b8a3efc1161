"""Data loading: the Trainer's data loaders, a seedable, resumable batch sampler, the default
collator, and padded concatenation of gathered arrays."""

from __future__ import annotations

import math
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from hooktrain.core.columns import drop_unused_columns, sample_lengths


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices whose order depends only on ``(seed, epoch)``.

    ``set_epoch(e)`` picks the permutation; ``skip_batches(n)`` makes the next iteration start
    at batch ``n`` without touching the skipped data (exact mid-epoch resume). With several
    processes each rank takes every ``world_size``-th index of the padded permutation, as
    ``DistributedSampler`` does; with ``pad=False`` (evaluation) the permutation is not padded,
    so every sample is seen exactly once and the shards may differ in length by one.
    ``skip_samples(n)`` starts the next iteration after the first ``n`` samples of the order (read
    by any number of processes before): the rest of the order, padded to a multiple of the processes
    from the order's start, is dealt as above; on this sampler's own batches it is ``skip_batches``.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        lengths: list[int] | None = None,
        group_size: int = 0,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.lengths = lengths  # group_by_length: similar lengths in a batch, the longest first
        self.group_size = group_size or batch_size
        self.epoch = 0
        self._skip = 0
        self._skip_samples = 0
        self.per_rank = math.ceil(num_samples / world_size) if pad else len(range(rank, num_samples, world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """Start the next iteration at batch *n* (for one iteration only)."""
        self._skip = n

    def skip_samples(self, n: int) -> None:
        """Start the next iteration after the first *n* samples of the epoch's order, over all
        processes (for one iteration only): exact after any number of processes read them."""
        per_batch = self.batch_size * self.world_size
        self._skip, self._skip_samples = (n // per_batch, 0) if n % per_batch == 0 else (0, n)

    def indices(self, skip: int = 0) -> list[int]:
        """This process's indices of the epoch, after the first *skip* samples of the order."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
            if self.lengths is not None:
                order = group_by_length(order, self.lengths, self.group_size)
        else:
            order = list(range(self.num_samples))
        if skip:
            rest = order[skip:]
            short = -len(rest) % self.world_size if self.pad else 0
            return (rest + (order * math.ceil(short / len(order)))[:short])[self.rank :: self.world_size]
        if self.world_size > 1:
            if self.pad:
                total = self.per_rank * self.world_size
                order = (order * math.ceil(total / max(len(order), 1)))[:total]  # N < world too
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        (start, self._skip), (skip, self._skip_samples) = (self._skip, 0), (self._skip_samples, 0)
        order = self.indices(skip)
        size = self.batch_size
        end = len(self) if not skip else len(order) // size if self.drop_last else math.ceil(len(order) / size)
        for b in range(start, end):
            yield order[b * size : (b + 1) * size]


def group_by_length(order: list[int], lengths: Sequence[int], group_size: int) -> list[int]:
    """*order* cut into mega-batches (50 groups, or fewer to make 4), each sorted by length, longest
    first, and the longest sample of all moved to the front (an out-of-memory shows at once), as
    Hugging Face's ``LengthGroupedSampler`` does."""
    mult = max(min(len(order) // (group_size * 4), 50), 1)
    size = mult * group_size
    megas = [sorted(order[i : i + size], key=lambda j: lengths[j], reverse=True)
             for i in range(0, len(order), size)]
    if megas:
        top = max(range(len(megas)), key=lambda m: lengths[megas[m][0]])
        megas[0][0], megas[top][0] = megas[top][0], megas[0][0]
    return [i for mega in megas for i in mega]


def iterate_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of *loader*, as ``iter(loader)`` yields them.

    A plain single-process ``DataLoader`` over a map-style dataset (hooktrain's own, unless
    ``get_train_dataloader`` is overridden) is read directly (batch sampler, ``__getitems__`` or
    ``__getitem__``, collate): the same batches in the same order, without the profiler range
    ``DataLoader.__next__`` opens for every batch, which alone costs about 4 µs on a CPU. Any
    other loader (workers, pinned memory, an iterable dataset, a subclass) is iterated as is.
    """
    if not (
        type(loader) is torch.utils.data.DataLoader
        and loader.num_workers == 0
        and not loader.pin_memory
        and loader.batch_sampler is not None
        and not isinstance(loader.dataset, torch.utils.data.IterableDataset)
    ):
        return iter(loader)
    return _read_batches(loader.dataset, loader.batch_sampler, loader.collate_fn)


def _read_batches(dataset: Any, batch_sampler: Iterable[list[int]], collate: Any) -> Iterator[Any]:
    getitems = getattr(dataset, "__getitems__", None)  # what torch's own fetcher prefers
    for indices in batch_sampler:
        yield collate(getitems(indices) if getitems else [dataset[i] for i in indices])


def default_collate(items: Sequence[Any]) -> Any:
    """Stack a list of dict items per key (tensors, numbers); other item types go to torch's collate."""
    first = items[0]
    if isinstance(first, Mapping):
        out = {}
        for key in first:
            values = [item[key] for item in items]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                out[key] = torch.stack(values)
            elif isinstance(v0, (bool, int, float)):
                out[key] = torch.tensor(values)
            else:
                out[key] = torch.utils.data.default_collate(values)
        return out
    return torch.utils.data.default_collate(list(items))


class PlainDicts:
    """A collator whose mapping batches that are not dicts (transformers' ``BatchEncoding``, from
    ``DataCollatorWithPadding``) become dicts, which ``model(**batch)`` and the plugins expect."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        batch = self.collate(items)
        return dict(batch) if isinstance(batch, Mapping) and not isinstance(batch, dict) else batch


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (dict, list, tuple or tensor) to *device*."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def make_loader(
    dataset: Any, args: Any, batch_size: int, train: bool, collate_fn: Any, pin_memory: bool,
    *, rank: int = 0, world_size: int = 1, forward: Any = None, worker_init: Sequence[Callable[[int], Any]] = (),
) -> torch.utils.data.DataLoader:
    """The Trainer's loader of *dataset*: shuffled by a seeded :class:`ResumableBatchSampler` for
    training (padded to a multiple of the processes; ``train_sampling_strategy``), in order for
    evaluation. Data without a length (an iterable dataset) is batched as it comes. With
    ``remove_unused_columns`` and the *forward* model the batches are fed to, only the columns it
    takes are kept (:mod:`hooktrain.core.columns`). Each worker process (``dataloader_num_workers``)
    first calls every function of *worker_init* with its worker id. Never draws from the global RNG."""
    if forward is not None and args.remove_unused_columns:
        dataset, collate_fn = drop_unused_columns(dataset, collate_fn, forward, args.label_names)
    if collate_fn is not default_collate:
        collate_fn = PlainDicts(collate_fn)
    seed = args.data_seed if args.data_seed is not None else args.seed
    kwargs: dict[str, Any] = dict(
        collate_fn=collate_fn, num_workers=args.dataloader_num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )
    if args.dataloader_num_workers > 0:
        kwargs["persistent_workers"] = args.dataloader_persistent_workers
        kwargs["prefetch_factor"] = args.dataloader_prefetch_factor
        kwargs["multiprocessing_context"] = args.dataloader_multiprocessing_context
        if worker_init:
            kwargs["worker_init_fn"] = partial(_init_worker, tuple(worker_init))
            blocked = {s for f in worker_init for s in getattr(f, "blocked_signals", ())}
            if blocked and hasattr(signal, "pthread_sigmask"):
                kwargs["multiprocessing_context"] = _blocking_context(args.dataloader_multiprocessing_context, blocked)
    drop_last = train and args.dataloader_drop_last
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs)
    strategy = args.train_sampling_strategy if train else "sequential"
    lengths = sample_lengths(dataset, args.length_column_name) if strategy == "group_by_length" else None
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, shuffle=strategy != "sequential", seed=seed, drop_last=drop_last,
        rank=rank, world_size=world_size, pad=train, lengths=lengths,
        group_size=batch_size * args.gradient_accumulation_steps,
    )
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **kwargs)


def _init_worker(functions: tuple[Callable[[int], Any], ...], worker_id: int) -> None:
    for function in functions:
        function(worker_id)


@dataclass(frozen=True)
class WorkerSetup:
    """A worker-init function of a plugin, and the signals a worker keeps blocked from its start
    until the function has run (it would otherwise meet them with torch's worker handlers)."""

    init: Callable[[int], Any]
    blocked_signals: tuple[int, ...] = ()

    def __call__(self, worker_id: int) -> None:
        self.init(worker_id)


def _blocking_context(method: str | None, signals: set[int]) -> Any:
    """A multiprocessing context whose processes start with *signals* blocked (the mask is
    inherited across fork and exec); the parent's mask is restored right after each start."""
    base = multiprocessing.get_context(method)

    class Process(base.Process):  # type: ignore[name-defined,misc]
        def start(self) -> None:
            before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            try:
                super().start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)

    context = type("BlockingContext", (type(base),), {"Process": Process})
    return context()


PAD_INDEX = -100  # what pads predictions and labels of different lengths (HF's padding_index)


def concat_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the first axis; arrays whose other dimensions differ (batches padded
    to their own longest sequence) are first padded with ``PAD_INDEX`` to the largest, as HF does."""
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        size = tuple(max(dims) for dims in zip(*shapes, strict=True))
        padded = []
        for a in arrays:
            out = np.full((a.shape[0], *size), PAD_INDEX, dtype=a.dtype)
            out[(slice(None), *(slice(0, n) for n in a.shape[1:]))] = a
            padded.append(out)
        arrays = padded
    return np.concatenate(arrays)
