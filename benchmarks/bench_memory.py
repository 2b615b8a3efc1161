"""Activation memory and time of gradient checkpointing, on the CPU, through the Trainer.

The model is a stack of pre-norm residual MLP blocks (``LayerNorm → Linear(d, 4d) → GELU →
Linear(4d, d)`` plus the skip connection) held in an ``nn.ModuleList``, the shape of a
transformer's feed-forward stack. Each configuration builds a ``Trainer`` with the
``gradient_checkpointing`` arguments, so the measured model is exactly what the precision plugin
prepared, and then runs forward + backward passes of ``trainer.compute_loss`` on one batch.

How memory is measured (the CPU allocator keeps no statistics and ``tracemalloc`` does not see
tensor memory):

* **live tensors** — ``torch.distributed._tools.mem_tracker.MemTracker``, which sees every tensor
  storage created while it is active (a ``TorchDispatchMode``) and when each one is freed. Reported:
  the bytes alive at the end of the forward pass above the weights (the activations kept for the
  backward pass) and the peak over forward + backward above the weights (which also includes the
  gradients and the recomputation's temporaries);
* **saved for backward** — an independent count: the distinct storages autograd packs through
  ``torch.autograd.graph.saved_tensors_hooks`` during the forward pass (with checkpointing, the
  blocks' inner tensors are not saved at all; only the blocks' inputs are).

Time: the median of ``--repeats`` forward + backward passes per configuration, the
configurations taking turns (the memory passes before warm them up). Recomputing the forward
pass of the checkpointed blocks costs about one extra forward, i.e. up to ~33% more compute.

Run: ``python benchmarks/bench_memory.py`` (prints a markdown table; ~1 minute on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from hooktrain import Trainer, TrainingArguments

MiB = 2**20


class Block(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class BlockStack(torch.nn.Module):
    def __init__(self, dim: int, blocks: int):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(blocks))
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        logits = self.head(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


def build(dim: int, blocks: int, out_dir: str, **precision: Any) -> tuple[Trainer, torch.nn.Module]:
    model = BlockStack(dim, blocks)
    args = TrainingArguments(output_dir=out_dir, report_to="none", save_strategy="no", disable_tqdm=True,
                             **precision)
    return Trainer(model=model, args=args), model


def saved_for_backward(trainer: Trainer, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    storages: dict[int, int] = {}
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = trainer.compute_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def live_tensor_memory(trainer: Trainer, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(bytes alive after the forward pass, peak bytes over forward + backward), above the weights."""
    from torch.distributed._tools.mem_tracker import MemTracker

    def total(snapshot: dict[Any, dict[Any, int]]) -> int:
        return sum(v["Total"] for device, v in snapshot.items() if str(device) == "cpu")

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        base = total(tracker.get_tracker_snapshot())
        loss, _ = trainer.compute_loss(model, batch)
        after_forward = total(tracker.get_tracker_snapshot()) - base
        loss.backward()
        del loss
    peak = total(tracker.get_tracker_snapshot("peak")) - base
    model.zero_grad(set_to_none=True)
    return after_forward, peak


def one_pass(trainer: Trainer, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    loss, _ = trainer.compute_loss(model, batch)
    loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args(argv)
    torch.manual_seed(0)
    batch = {"x": torch.randn(opts.batch, opts.dim), "labels": torch.randn(opts.batch)}
    configs = [
        ("off", {}),
        ("on (every block)", {"gradient_checkpointing": True}),
        ("on (every 2nd block)", {"gradient_checkpointing": True,
                                  "gradient_checkpointing_kwargs": {"every_n_layers": 2}}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        built = [(name, *build(opts.dim, opts.blocks, out_dir, **precision)) for name, precision in configs]
        for name, trainer, model in built:
            model.train()
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            saved = saved_for_backward(trainer, model, batch)
            held, peak = live_tensor_memory(trainer, model, batch)
            rows.append([name, weights, saved, held, peak])
        # Time the configurations in turn, so that load from other processes hits them alike.
        times: list[list[float]] = [[] for _ in built]
        for _ in range(opts.repeats):
            for i, (_, trainer, model) in enumerate(built):
                times[i].append(one_pass(trainer, model, batch))
        for row, measured in zip(rows, times, strict=True):
            row.append(statistics.median(measured))
    base = rows[0]
    print(f"Gradient checkpointing, {opts.blocks} pre-norm MLP blocks (d={opts.dim}, hidden={4 * opts.dim}), "
          f"batch {opts.batch}, fp32, CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}; weights {base[1] / MiB:.1f} MiB.\n")
    print("| gradient checkpointing | saved for backward (MiB) | live after forward (MiB) "
          "| peak fwd+bwd above weights (MiB) | activation memory vs off | fwd+bwd time (ms) | time vs off |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, saved, held, peak, seconds in rows:
        print(f"| {name} | {saved / MiB:.1f} | {held / MiB:.1f} | {peak / MiB:.1f} "
              f"| {100 * (held / base[3] - 1):+.0f}% | {1000 * seconds:.0f} | {100 * (seconds / base[5] - 1):+.0f}% |")
    reduction = 1 - rows[1][3] / base[3]
    print(f"\nactivation memory with every block checkpointed: {100 * reduction:.0f}% less "
          f"(target >= 40%: {'met' if reduction >= 0.4 else 'NOT met'})")
    return 0 if reduction >= 0.4 else 1


if __name__ == "__main__":
    sys.exit(main())
