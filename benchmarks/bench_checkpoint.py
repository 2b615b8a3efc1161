"""Cost of a hooktrain checkpoint save against a hand-written save of the same state (same run, paired).

Workload (perf.md W2): MLP 512→2048→2048→10 (5.27 M parameters) after one AdamW step, so the
state is 63 MB (weights 21 MB, optimizer 42 MB) plus scheduler and RNG. One thread, CPU.

* **hooktrain** — ``trainer.save_checkpoint()``: the ``save_checkpoint`` hook (temporary
  directory, sha256 of every file while it is written, fsync of every file and directory,
  manifest, rename) and ``on_save``.
* **by hand** — what Hugging Face's Trainer does: ``safetensors.torch.save_file`` of the weights,
  ``torch.save`` of the optimizer, scheduler and RNG states, ``trainer_state.json``; no fsync, no
  checksum, no rename.
* **by hand + fsync** — the same plus ``fsync`` of every file and the directory: the price of
  surviving a power loss rather than a process kill, paid by anyone who wants that guarantee.
* **by hand + sha256 manifest + fsync** — also a sha256 of every file (read back after writing)
  in a manifest: hand-written code with hooktrain's guarantees (except the atomic rename).

Repetitions alternate the order (A B, B A, …); every save goes to a new directory, deleted
outside the timing. The table gives the median of the paired ratios (min–max) and the bytes
written. A second table times the resume start-up (``train()`` to the first step) from a
checkpoint near the start and one near the end of a long epoch: skipping is done by the sampler,
so both should cost the same.

    python benchmarks/bench_checkpoint.py [--pairs 11]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch


class MLP(torch.nn.Module):
    def __init__(self, sizes=(512, 2048, 2048, 10)):
        super().__init__()
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, dim: int):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def save_by_hand(trainer, directory: Path, durable: bool, checksums: bool = False) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(trainer.model.state_dict(), directory / "model.safetensors", metadata={"format": "pt"})
    torch.save(trainer.optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(trainer.lr_scheduler.state_dict(), directory / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    torch.save(rng, directory / "rng_state.pth")
    trainer.state.save_to_json(directory / "trainer_state.json")
    if checksums:
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in directory.iterdir()}
        (directory / "manifest.json").write_text(json.dumps(files))
    if durable:
        for path in directory.iterdir():
            fsync(path)
        fsync(directory)


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def bench_save(pairs: int, root: Path) -> list[str]:
    from hooktrain import Trainer, TrainingArguments

    torch.manual_seed(1234)
    out = root / "save"
    args = TrainingArguments(
        output_dir=str(out), max_steps=1, per_device_train_batch_size=64, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=100, max_grad_norm=0.0,
        optim="adamw_torch", warmup_ratio=0.1, log_level="error",
    )
    trainer = Trainer(model=MLP(), args=args, train_dataset=Data(64, 512))
    trainer.train()

    times: dict[str, list[float]] = {"hooktrain": [], "hand": [], "durable": [], "verified": []}
    sizes: dict[str, int] = {}
    counter = [0]

    def hooktrain_save() -> float:
        counter[0] += 1
        trainer.state.global_step = 1000 + counter[0]  # a new checkpoint-N each time
        start = time.perf_counter()
        path = trainer.save_checkpoint()
        elapsed = time.perf_counter() - start
        sizes["hooktrain"] = dir_bytes(path)
        shutil.rmtree(path)
        return elapsed

    def hand_save(name: str) -> float:
        counter[0] += 1
        directory = root / f"hand-{counter[0]}"
        start = time.perf_counter()
        save_by_hand(trainer, directory, durable=name != "hand", checksums=name == "verified")
        elapsed = time.perf_counter() - start
        sizes[name] = dir_bytes(directory)
        shutil.rmtree(directory)
        return elapsed

    runs = {"hooktrain": hooktrain_save, **{name: partial(hand_save, name) for name in ("hand", "durable", "verified")}}
    for fn in runs.values():  # warm-up: page cache, lazy imports
        fn()
    for i in range(pairs):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(runs[name]())

    def ratio(a: str, b: str) -> str:
        r = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"

    rows = [
        "| save (W2, 5.27 M params, AdamW) | median time | vs by hand | vs by hand + fsync "
        "| vs by hand + sha256 + fsync | bytes written |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"hand": "by hand (HF-equivalent)", "durable": "by hand + fsync",
              "verified": "by hand + sha256 manifest + fsync", "hooktrain": "hooktrain `save_checkpoint`"}
    for name in ("hand", "durable", "verified", "hooktrain"):
        rows.append(
            f"| {labels[name]} | {statistics.median(times[name]) * 1000:.1f} ms | {ratio(name, 'hand')} | "
            f"{ratio(name, 'durable')} | {ratio(name, 'verified')} | {sizes[name]:,} |"
        )
    return rows


def bench_resume(root: Path) -> list[str]:
    """Start-up of a resumed run: ``train()`` until the first step begins, early vs late in a long epoch."""
    from hooktrain import Trainer, TrainingArguments, hookimpl

    n, batch, sizes = 400_000, 2, (16, 16, 10)
    steps_per_epoch = n // batch

    class FirstStep:
        def __init__(self):
            self.at: float | None = None

        @hookimpl
        def on_step_begin(self):
            if self.at is None:
                self.at = time.perf_counter()
            raise KeyboardInterrupt  # stop: only the start-up is measured

    def run(step: int) -> float:
        out = root / f"resume-{step}"
        args = TrainingArguments(
            output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=batch,
            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10**9,
            log_level="error",
        )
        trainer = Trainer(model=MLP(sizes), args=args, train_dataset=Data(n, sizes[0]))
        trainer.optimizer = trainer.plugin_manager.hook.create_optimizer(trainer=trainer, model=trainer.model, args=args)
        trainer.state.global_step = step  # a checkpoint "taken" at this step of the epoch
        trainer.save_checkpoint()
        probe = FirstStep()
        resumed = Trainer(model=MLP(sizes), args=args, train_dataset=Data(n, sizes[0]), plugins=[probe])
        start = time.perf_counter()
        resumed.train(resume_from_checkpoint=True)
        assert probe.at is not None and resumed.state.global_step == step
        return probe.at - start

    early, late = steps_per_epoch // 100, steps_per_epoch * 99 // 100
    run(early)  # warm-up
    times = {s: statistics.median(run(s) for _ in range(3)) for s in (early, late)}
    return [
        f"| resume start-up ({n:,} samples, batch {batch}: {steps_per_epoch:,} steps/epoch) | train() → first step |",
        "|---|---|",
        *(f"| from step {s:,} ({s * 100 // steps_per_epoch}% of the epoch) | {t * 1000:.0f} ms |" for s, t in times.items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="also print the raw table lines as JSON")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        lines = bench_save(opts.pairs, Path(tmp)) + [""] + bench_resume(Path(tmp))
    print("\n".join(lines))
    if opts.json:
        print(json.dumps(lines))


if __name__ == "__main__":
    main()
