"""What a hooktrain checkpoint costs against hand-written saves of the same state (same run, paired).

Workload (perf.md W2): MLP 512→2048→2048→10 (5.27 M parameters), AdamW, so the state is 63 MB
(weights 21 MB, optimizer 42 MB) plus scheduler and RNG. One thread, CPU.

1. **Checksums** of the 63 MB of checkpoint bytes: xxh3-128 (``xxhash``, the one used), BLAKE3
   (``blake3``, when installed) and sha256 (earlier versions), one thread.
2. **Durable save, synchronous** (``trainer.save_checkpoint()`` outside ``train()``, as the final
   save and ``save_async=False``: snapshot, files hashed while written, fsync of every file and
   directory, manifest, rename) against **by hand** (``safetensors.torch.save_file`` of the
   weights, ``torch.save`` of optimizer, scheduler and RNG, ``trainer_state.json``: what Hugging
   Face's Trainer does, no fsync) and **by hand + fsync** (the same files, each fsync'd, and the
   directory). Interleaved A B C, C B A, …; each save into a new directory, deleted untimed.
3. **Training-thread blocking per save** with ``save_async=True``: a W2 run saving every 5 steps;
   each save's time on the training thread (taking the snapshot, waiting for a save still in
   flight, and holding the next optimizer step until the snapshot's copies are made), paired with
   a plain hand-written save of the same state made on the training thread 3 steps later (after
   the background save committed).
4. **Whole run**: W2, 100 steps, a checkpoint every 5 steps, wall time from the end of the first
   step (set-up and first-step costs apart) until the run is over (``train()`` returns once the
   final checkpoint is committed) with ``save_async=True`` and ``False``, against a hand-written
   loop (same model, data order, optimizer, schedule) that saves plainly by hand at the same steps,
   and the same loop with the fsyncs of a durable save; all keep the newest two checkpoints. Runs interleaved; the ratios are medians of the pairs.
   Section 3 also gives the step time while a background persist runs against the other steps:
   what the worker thread costs training (the GIL, the CPU and memory bandwidth it shares).
5. Resume start-up (``train()`` to the first step) from a checkpoint near the start and one near
   the end of a long epoch: skipping is done by the sampler, so both should cost the same.

    python benchmarks/bench_checkpoint.py [--pairs 9] [--runs 3] [--only hash,save,blocking,run,resume]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from workloads import MLP, SIZES, Data  # beside this file

BATCH, N_SAMPLES = 64, 12800


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_by_hand(model, optimizer, scheduler, state, directory: Path, durable: bool) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(model.state_dict(), directory / "model.safetensors", metadata={"format": "pt"})
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    torch.save(rng, directory / "rng_state.pth")
    state.save_to_json(directory / "trainer_state.json")
    if durable:
        for path in directory.iterdir():
            fsync(path)
        fsync(directory)


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def ratio(a: list[float], b: list[float]) -> str:
    r = [x / y for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def w2_args(out: Path, **overrides: Any) -> Any:
    from hooktrain import TrainingArguments

    settings = dict(output_dir=str(out), max_steps=1, per_device_train_batch_size=BATCH, save_strategy="no",
                    report_to="none", disable_tqdm=True, logging_steps=1000, max_grad_norm=0.0,
                    optim="adamw_torch", warmup_ratio=0.1, log_level="error", overwrite_output_dir=True)
    settings.update(overrides)
    return TrainingArguments(**settings)


def trained_w2(out: Path) -> Any:
    """A W2 Trainer after one step (the optimizer state exists)."""
    from hooktrain import Trainer

    torch.manual_seed(1234)
    trainer = Trainer(model=MLP(), args=w2_args(out), train_dataset=Data(BATCH, SIZES[0]))
    trainer.train()
    return trainer


# ---- 1. checksums ------------------------------------------------------------------------------


def bench_hash(root: Path) -> list[str]:
    trainer = trained_w2(root / "hash")
    trainer.state.global_step = 7
    path = trainer.save_checkpoint()
    data = b"".join(p.read_bytes() for p in sorted(Path(path).iterdir()) if p.name != "manifest.json")
    candidates: dict[str, Callable[[bytes], Any]] = {}
    import xxhash

    candidates["xxh3-128 (xxhash)"] = lambda b: xxhash.xxh3_128(b).hexdigest()
    try:
        import blake3

        candidates["BLAKE3 (blake3), 1 thread"] = lambda b: blake3.blake3(b).hexdigest()
    except ImportError:
        pass
    candidates["sha256 (hashlib)"] = lambda b: hashlib.sha256(b).hexdigest()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for i in range(7):
        for name in (list(candidates) if i % 2 == 0 else list(reversed(candidates))):
            start = time.perf_counter()
            candidates[name](data)
            times[name].append(time.perf_counter() - start)
    rows = [f"| checksum of the {len(data):,} bytes of a W2 checkpoint | median time | GB/s |", "|---|---|---|"]
    for name, t in times.items():
        m = statistics.median(t)
        rows.append(f"| {name} | {m * 1000:.1f} ms | {len(data) / m / 1e9:.1f} |")
    return rows


# ---- 2. durable synchronous save ------------------------------------------------------------------


def bench_save(pairs: int, root: Path) -> list[str]:
    trainer = trained_w2(root / "save")
    times: dict[str, list[float]] = {"hooktrain": [], "hand": [], "durable": []}
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
        save_by_hand(trainer.model, trainer.optimizer, trainer.lr_scheduler, trainer.state, directory,
                     durable=name == "durable")
        elapsed = time.perf_counter() - start
        sizes[name] = dir_bytes(directory)
        shutil.rmtree(directory)
        return elapsed

    runs: dict[str, Callable[[], float]] = {
        "hooktrain": hooktrain_save, "hand": lambda: hand_save("hand"), "durable": lambda: hand_save("durable")}
    for fn in runs.values():  # warm-up: page cache, lazy imports, the first allocations
        fn()
    for i in range(pairs):
        for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            times[name].append(runs[name]())
    labels = {"hand": "by hand (HF-equivalent, no fsync)", "durable": "by hand + fsync of every file and the directory",
              "hooktrain": "hooktrain, synchronous (final save, `save_async=False`)"}
    rows = ["| save (W2, 5.27 M params, AdamW) | median time | vs by hand | vs by hand + fsync | bytes written |",
            "|---|---|---|---|---|"]
    for name in ("hand", "durable", "hooktrain"):
        rows.append(f"| {labels[name]} | {statistics.median(times[name]) * 1000:.1f} ms | {ratio(times[name], times['hand'])} "
                    f"| {ratio(times[name], times['durable'])} | {sizes[name]:,} |")
    return rows


# ---- 3. blocking per save ------------------------------------------------------------------------


def bench_blocking(root: Path, steps: int) -> list[str]:
    from hooktrain import Trainer, hookimpl
    from hooktrain.plugins.checkpoint import wait_for_checkpoint

    hand_times: list[float] = []
    steps_s: dict[bool, list[float]] = {True: [], False: []}  # step times with / without a persist running

    class HandSave:
        """3 steps after each hooktrain save: a plain hand-written save of the same state. Also
        the time of the steps during which a background persist runs, against the others."""

        def __init__(self):
            self.began = self.held = 0.0
            self.persisting = False

        @hookimpl
        def on_step_begin(self, trainer, state):
            store = trainer.plugin_manager.get_plugin("checkpoint.store")
            self.began, self.held = time.perf_counter(), store._guard.waited_s
            self.persisting = store.inflight is not None and not store.inflight.done()

        @hookimpl
        def on_step_end(self, trainer, state):
            # the saves fall between steps; a step's time without its wait for the snapshot's copy
            # (counted in the save's blocking time above)
            held = trainer.plugin_manager.get_plugin("checkpoint.store")._guard.waited_s - self.held
            steps_s[self.persisting].append(time.perf_counter() - self.began - held)
            if state.global_step % 5 == 3:
                wait_for_checkpoint(trainer)  # nothing in flight while the hand save is timed
                directory = root / f"blocking-hand-{state.global_step}"
                start = time.perf_counter()
                save_by_hand(trainer.model, trainer.optimizer, trainer.lr_scheduler, state, directory, durable=False)
                hand_times.append(time.perf_counter() - start)
                shutil.rmtree(directory)

    torch.manual_seed(1234)
    out = root / "blocking"
    args = w2_args(out, max_steps=steps, save_strategy="steps", save_steps=5, save_total_limit=2, save_async=True)
    trainer = Trainer(model=MLP(), args=args, train_dataset=Data(N_SAMPLES, SIZES[0]), plugins=[HandSave()])
    trainer.train()
    store = trainer.plugin_manager.get_plugin("checkpoint.store")
    blocking = store.stats.per_save_s[:-1]  # the final save is synchronous
    pairs = min(len(blocking), len(hand_times))
    blocking, hand = blocking[1:pairs], hand_times[1:pairs]  # the first save allocates the buffers
    summary = trainer.state.log_history[-1]
    return [
        "| W2, save every 5 steps, `save_async=True` | median | vs a plain hand-written save (paired) |",
        "|---|---|---|",
        f"| plain hand-written save, on the training thread | {statistics.median(hand) * 1000:.1f} ms | 1.00 |",
        f"| hooktrain: training-thread time per save ({len(blocking)} saves) | {statistics.median(blocking) * 1000:.1f} ms "
        f"| **{ratio(blocking, hand)}** |",
        "",
        f"Snapshot host memory: {summary['checkpoint_snapshot_bytes']:,} bytes (reused from save to save); saves that "
        f"waited for the one in flight: {summary['checkpoint_save_waits']} of {summary['checkpoint_saves']}.",
        f"Step time while a background persist runs: {statistics.median(steps_s[True]) * 1000:.1f} ms median "
        f"({len(steps_s[True])} steps), otherwise {statistics.median(steps_s[False]) * 1000:.1f} ms "
        f"({len(steps_s[False])} steps): **{statistics.median(steps_s[True]) / statistics.median(steps_s[False]):.2f}x**.",
    ]


# ---- 4. whole run ----------------------------------------------------------------------------------


def hand_run(out: Path, steps: int, every: int, durable: bool = False) -> tuple[float, list[float]]:
    """A hand-written W2 loop saving plainly by hand every *every* steps (keeping the newest two):
    the wall time from the end of step 1, and each step's time (a save counts in its own step's)."""
    from hooktrain import TrainerState

    torch.manual_seed(1234)
    model = MLP()
    data = Data(N_SAMPLES, SIZES[0])
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(42))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    warmup = math.ceil(0.1 * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    state = TrainerState(max_steps=steps)
    saved: list[Path] = []
    stamps: list[float] = []
    model.train()
    step = 0
    for batch in loader:
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        state.global_step = step
        if step % every == 0:
            directory = out / f"checkpoint-{step}"
            save_by_hand(model, optimizer, scheduler, state, directory, durable=durable)
            saved.append(directory)
            if len(saved) > 2:
                shutil.rmtree(saved.pop(0))
        stamps.append(time.perf_counter())
        if step >= steps:
            break
    return stamps[-1] - stamps[0], [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def hooktrain_run(out: Path, steps: int, every: int, save_async: bool) -> tuple[float, list[float]]:
    """The same run through ``train()``; a step's time counts from the end of the step before,
    so a save (after ``on_step_end``) is in the next step's time, the final one in the last."""
    from hooktrain import Trainer, hookimpl

    stamps: list[float] = []

    class FirstStep:
        @hookimpl
        def on_step_end(self, state):
            stamps.append(time.perf_counter())

    torch.manual_seed(1234)
    args = w2_args(out, max_steps=steps, save_strategy="steps", save_steps=every, save_total_limit=2,
                   save_async=save_async, seed=42)
    trainer = Trainer(model=MLP(), args=args, train_dataset=Data(N_SAMPLES, SIZES[0]), plugins=[FirstStep()])
    trainer.train()  # returns once the final checkpoint is committed
    stamps[-1] = time.perf_counter()  # the last step's time includes the final save
    return stamps[-1] - stamps[0], [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def bench_run(root: Path, runs: int, steps: int) -> list[str]:
    every = 5
    kinds: dict[str, Callable[[Path], tuple[float, list[float]]]] = {
        "hand": lambda out: hand_run(out, steps, every),
        "hand_fsync": lambda out: hand_run(out, steps, every, durable=True),
        "async": lambda out: hooktrain_run(out, steps, every, True),
        "sync": lambda out: hooktrain_run(out, steps, every, False),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    plain: dict[str, list[float]] = {k: [] for k in kinds}  # median time of the steps without a save
    for i in range(runs + 1):  # the first round warms up (imports, page cache)
        for kind in (list(kinds) if i % 2 == 0 else list(reversed(kinds))):
            out = root / f"run-{kind}-{i}"
            elapsed, step_times = kinds[kind](out)
            shutil.rmtree(out, ignore_errors=True)
            if i:
                times[kind].append(elapsed)
                # step_times[j] is step j + 2's time: hand saves in it when (j + 2) % every == 0,
                # hooktrain when it follows a save step, (j + 1) % every == 0
                shift = 2 if kind.startswith("hand") else 1
                plain[kind].append(statistics.median(
                    t for j, t in enumerate(step_times[:-1]) if (j + shift) % every))
    labels = {"hand": "hand-written loop, plain saves", "hand_fsync": "hand-written loop, saves + fsync",
              "async": "hooktrain, `save_async=True`",
              "sync": "hooktrain, `save_async=False`"}
    rows = [f"| W2, {steps} steps, a checkpoint every {every} steps ({runs} runs each): from the end of step 1 "
            "to the end of the run | median wall time | vs hand-written loop | median step without a save "
            "| vs hand-written loop |", "|---|---|---|---|---|"]
    for kind in kinds:
        rows.append(f"| {labels[kind]} | {statistics.median(times[kind]):.2f} s | **{ratio(times[kind], times['hand'])}** "
                    f"| {statistics.median(plain[kind]) * 1000:.1f} ms | {ratio(plain[kind], plain['hand'])} |")
    return rows


# ---- 5. resume start-up ------------------------------------------------------------------------------


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
    parser.add_argument("--pairs", type=int, default=9, help="repetitions of the save comparison")
    parser.add_argument("--runs", type=int, default=3, help="whole runs of each kind")
    parser.add_argument("--steps", type=int, default=100, help="steps of the whole runs")
    parser.add_argument("--only", default="hash,save,blocking,run,resume")
    parser.add_argument("--json", action="store_true", help="also print the table lines as JSON")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    parts = {
        "hash": bench_hash, "save": lambda root: bench_save(opts.pairs, root),
        "blocking": lambda root: bench_blocking(root, opts.steps),
        "run": lambda root: bench_run(root, opts.runs, opts.steps), "resume": bench_resume,
    }
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        for name in opts.only.split(","):
            section = parts[name](Path(tmp)) + [""]
            print("\n".join(section), flush=True)
            lines += section
    if opts.json:
        print(json.dumps(lines))


if __name__ == "__main__":
    main()
