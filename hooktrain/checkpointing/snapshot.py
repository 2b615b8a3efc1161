"""A consistent copy of everything a checkpoint holds, in host memory hooktrain owns.

:class:`HostBuffers` keeps one host tensor per state tensor and reuses it from save to save
(pinned memory for CUDA tensors, filled by non-blocking copies on the current stream, which a
later optimizer step on that stream cannot overtake). :func:`copy_tree` copies a state dict's
containers at once and collects the tensor copies; CPU tensors that only the optimizer's
``step()`` changes (parameters, optimizer state) may be left to a worker, provided the next
optimizer step waits for them (:class:`~hooktrain.checkpointing.writer.StepGuard`).
"""

from __future__ import annotations

import copy
import math
import mmap
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

Key = tuple[Hashable, ...]


class HostBuffers:
    """Host tensors reused across saves, keyed by where a tensor sits in the checkpoint."""

    def __init__(self) -> None:
        self._buffers: dict[Key, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Host memory held (bytes)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def missing_bytes(self, tensors: dict[Key, torch.Tensor]) -> int:
        """Bytes that would have to be allocated to stage *tensors* (the rest is reused)."""
        return sum(t.numel() * t.element_size() for key, t in tensors.items() if not self._fits(key, t))

    def _fits(self, key: Key, t: torch.Tensor) -> bool:
        buf = self._buffers.get(key)
        return buf is not None and buf.shape == t.shape and buf.dtype == t.dtype

    def get(self, key: Key, like: torch.Tensor) -> torch.Tensor:
        """The buffer for *key*, (re)allocated when *like* has another shape or dtype."""
        if not self._fits(key, like):
            if like.device.type == "cuda":
                self._buffers[key] = torch.empty(like.shape, dtype=like.dtype, device="cpu", pin_memory=True)
            else:
                self._buffers[key] = page_aligned_empty(like.shape, like.dtype)
        return self._buffers[key]

    def drop_unused(self, used: set[Key]) -> None:
        """Free the buffers of tensors that are gone from the state."""
        for key in [k for k in self._buffers if k not in used]:
            del self._buffers[key]


#: below this size a buffer is an ordinary tensor
_PAGE_ALIGNED_MIN = 1 << 16


def page_aligned_empty(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory starts at a page boundary (for tensors of 64 KB or
    more), so that the checkpoint writer can hand it to the disk with ``O_DIRECT`` without copying."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _PAGE_ALIGNED_MIN:
        return torch.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes)  # anonymous: page-aligned; kept alive by the tensor
    return torch.frombuffer(memory, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)


class Stager:
    """Fills :class:`HostBuffers` for one snapshot: copies now, or records CPU copies for later.
    Without buffers (a synchronous save: nothing changes the state while it is written) CPU
    tensors are used as they are and others are copied to the CPU."""

    def __init__(self, buffers: HostBuffers | None, defer: bool = False):
        self.buffers = buffers
        self.defer = defer  # leave deferrable CPU copies to the worker
        self.deferred: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.used: set[Key] = set()
        self.nbytes = 0  # host memory of the copies
        self.tensor_bytes = 0  # bytes of every tensor staged
        self.cuda = False
        self._seen: dict[tuple[Any, ...], torch.Tensor] = {}  # one copy per tensor shared by two names

    def stage(self, t: torch.Tensor, key: Key, deferrable: bool) -> torch.Tensor:
        t = t.detach()
        self.tensor_bytes += t.numel() * t.element_size()
        if self.buffers is None:
            return t if t.device.type == "cpu" else t.cpu()
        identity = (t.untyped_storage().data_ptr(), str(t.device), t.storage_offset(), tuple(t.shape),
                    t.stride(), t.dtype) if t.numel() else None
        if identity is not None and identity in self._seen:
            return self._seen[identity]
        buf = self.buffers.get(key, t)
        self.used.add(key)
        self.nbytes += buf.numel() * buf.element_size()
        if t.device.type == "cuda":
            buf.copy_(t, non_blocking=True)
            self.cuda = True
        elif t.device.type == "cpu" and deferrable and self.defer:
            self.deferred.append((t, buf))
        else:
            buf.copy_(t)
        if identity is not None:
            self._seen[identity] = buf
        return buf

    def finish_deferred(self) -> None:
        """Make the deferred copies (on the worker)."""
        for src, dst in self.deferred:
            dst.copy_(src)
        self.deferred = []


def copy_tree(obj: Any, key: Key, stage: Callable[[torch.Tensor, Key], torch.Tensor]) -> Any:
    """A copy of a state dict: new containers, every tensor replaced by ``stage(tensor, key)``,
    other values copied (immutable ones shared). A module state dict's ``_metadata`` is kept."""
    if isinstance(obj, torch.Tensor):
        return stage(obj, key)
    if isinstance(obj, dict):
        items = ((k, copy_tree(v, (*key, k), stage)) for k, v in obj.items())
        copied: dict[Any, Any] = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            copied._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
        return copied
    if isinstance(obj, list):
        return [copy_tree(v, (*key, i), stage) for i, v in enumerate(obj)]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(copy_tree(v, (*key, i), stage) for i, v in enumerate(obj))
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return obj
    return copy.deepcopy(obj)


def tensors_of(obj: Any, key: Key = ()) -> dict[Key, torch.Tensor]:
    """Every tensor in a state dict, by the key :func:`copy_tree` gives it."""
    found: dict[Key, torch.Tensor] = {}

    def visit(value: Any, at: Key) -> None:
        if isinstance(value, torch.Tensor):
            found[at] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, (*at, k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, (*at, i))

    visit(obj, key)
    return found
