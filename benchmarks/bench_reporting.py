"""What reporting to TensorBoard costs: hooktrain against a raw loop (same run, paired).

Workload: benchmarks/bench_loop.py's (MLP 64→256→256→10, 8192 samples, batch 32, 256 steps,
AdamW + linear warm-up schedule, one thread, fp32, CPU), with a log event after every step.

* raw: bench_loop's hand-written loop that also measures the gradient norm and writes the
  scalars hooktrain logs (``train/loss``, ``train/grad_norm``, ``train/learning_rate``,
  ``train/epoch``) with its own ``SummaryWriter.add_scalar``, on the training thread, then
  closes the writer.
* hooktrain: ``report_to=["tensorboard"]``, ``logging_steps=1``: the reporting plugin hands each
  log event to the TensorBoard reporter's worker thread. Measured with the console log line
  (the default) and with the ``progress`` plugin disabled (the raw loop prints nothing).
* hooktrain without reporters (``report_to="none"``, ``logging_steps=1``), to isolate what the
  reporting adds.

Two measures of every run:

* per step: the median gap between consecutive optimizer-step ends (steps 21…N);
* whole run: raw, from creating the ``SummaryWriter`` to the end of ``close()``; hooktrain, the
  whole ``trainer.train()`` call, which includes the optimizer and scheduler set-up, the
  reporter's start (creating its writer, logging the config) and its end (flushing and closing
  the writer, waiting for its thread). Model and data are built before either clock starts.
  Wall time is the target; the CPU time of the process over the same span (every thread) is
  printed too, as a steadier figure on a shared machine (it misses waiting, which wall time
  catches).

Repetitions interleave the variants; a ratio is the median of the per-repetition ratios. The
training thread's cost per log event is reported two ways: the time spent inside the reporting
plugin's ``on_log`` (timed around that one hook implementation), and the per-step difference
between reporting to TensorBoard and reporting nowhere (which also counts the worker thread's
competition for the interpreter lock).

    python benchmarks/bench_reporting.py [--pairs 15] [--save runs.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_loop  # noqa: E402
from bench_loop import BATCH, STEPS, Data, per_step  # noqa: E402


def raw_loop_with_writer(data) -> tuple[list[float], float, float]:
    """bench_loop.raw_loop, plus the gradient norm and four add_scalar calls per step: the step-end
    stamps, and the wall and CPU seconds from creating the writer to the end of its close()."""
    from torch.utils.tensorboard import SummaryWriter

    model, opt, sched, loader = bench_loop.w1_parts(data)
    stamps = []
    with tempfile.TemporaryDirectory() as logdir:
        begin, cpu = time.perf_counter(), time.process_time()
        writer = SummaryWriter(log_dir=logdir)
        model.train()
        for step, batch in enumerate(loader, start=1):
            loss = model(**batch)["loss"]
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/grad_norm", float(norm), step)
            writer.add_scalar("train/learning_rate", lr, step)
            writer.add_scalar("train/epoch", round(step / len(loader), 4), step)
            stamps.append(time.perf_counter())
        writer.close()
        whole, cpu = time.perf_counter() - begin, time.process_time() - cpu
    return stamps, whole, cpu


def hooktrain_loop(data, report_to: str, console: bool = True,
                   on_log_times: list[float] | None = None) -> tuple[list[float], float, float]:
    """W1 with hooktrain and a log event every step: the step-end stamps, and the wall and CPU
    seconds of the whole ``train()`` call (optionally timing the reporting plugin's on_log)."""
    from hooktrain import Trainer, TrainingArguments, hookimpl

    stamps: list[float] = []

    class Stamp:
        @hookimpl
        def on_step_end(self):
            stamps.append(time.perf_counter())

    torch.manual_seed(1234)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stderr(io.StringIO()):
        args = TrainingArguments(
            output_dir=out, save_strategy="no", report_to=report_to, disable_tqdm=True, max_grad_norm=0.0,
            num_train_epochs=1, per_device_train_batch_size=BATCH, learning_rate=1e-3, optim="adamw_torch",
            lr_scheduler_type="linear", warmup_ratio=0.1, logging_steps=1, seed=1234, run_name="bench",
            disable_plugins=[] if console else ["progress"],
        )
        trainer = Trainer(bench_loop.MLP(), args, train_dataset=data, plugins=[Stamp()])
        if on_log_times is not None:
            _time_bridge_on_log(trainer, on_log_times)
        begin, cpu = time.perf_counter(), time.process_time()
        trainer.train()  # the console lines still get formatted (into the StringIO)
        whole, cpu = time.perf_counter() - begin, time.process_time() - cpu
    return stamps, whole, cpu


def _time_bridge_on_log(trainer, times: list[float]) -> None:
    """Wrap the reporting plugin's on_log implementation with a timer (benchmark instrumentation)."""
    bridge = trainer.plugin_manager.get_plugin("reporting.bridge")
    for impl in trainer.plugin_manager.hook.on_log.get_hookimpls():
        if impl.plugin is bridge:
            inner = impl.function

            def timed(*a, _inner=inner):
                start = time.perf_counter()
                _inner(*a)
                times.append(time.perf_counter() - start)

            impl.function = timed
            return
    raise RuntimeError("no reporting bridge registered")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--save", metavar="JSON", help="also write every run's figures to this file")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    data = Data()
    variants = {
        "raw loop + SummaryWriter": lambda: raw_loop_with_writer(data),
        "hooktrain, tensorboard": lambda: hooktrain_loop(data, "tensorboard"),
        "hooktrain, tensorboard, no console line": lambda: hooktrain_loop(data, "tensorboard", console=False),
        "hooktrain, no reporter": lambda: hooktrain_loop(data, "none"),
        "hooktrain, no reporter, no console line": lambda: hooktrain_loop(data, "none", console=False),
    }
    for run in variants.values():  # warm-up: lazy imports, allocator
        run()
    ms: dict[str, list[float]] = {name: [] for name in variants}
    whole: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    on_log: list[float] = []
    for i in range(opts.pairs):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))  # neither order favoured
        for name in names:
            stamps, seconds, cpu_seconds = variants[name]()
            ms[name].append(per_step(stamps) * 1e3)
            whole[name].append(seconds)
            cpu[name].append(cpu_seconds)
        hooktrain_loop(data, "tensorboard", console=False, on_log_times=on_log)

    raw = raw_name(ms)
    if opts.save:
        with open(opts.save, "w", encoding="utf-8") as f:
            json.dump({"ms_per_step": ms, "whole_run_s": whole, "whole_run_cpu_s": cpu, "on_log_s": on_log}, f)
    print(f"{opts.pairs} interleaved repetitions, {STEPS} steps each, a log event every step, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at the end: {_load()}\n")
    for title, values, unit, scale in (("per step", ms, "ms/step", 1.0), ("whole run", whole, "s", 1.0),
                                       ("whole run, CPU time of the process (every thread)", cpu, "s", 1.0)):
        print(f"{title}:\n")
        print(f"| variant | {unit} (median) | min | max | ratio to raw (median of pairs) |")
        print("|---|---|---|---|---|")
        for name, series in values.items():
            r = [a / b for a, b in zip(series, values[raw], strict=True)]
            rtext = "1" if name == raw else f"**{statistics.median(r):.3f}** ({min(r):.3f}–{max(r):.3f})"
            print(f"| {name} | {statistics.median(series) * scale:.3f} | {min(series) * scale:.3f} | "
                  f"{max(series) * scale:.3f} | {rtext} |")
        print()

    added = [a - b for a, b in zip(ms["hooktrain, tensorboard, no console line"],
                                   ms["hooktrain, no reporter, no console line"], strict=True)]
    added_whole = [a - b for a, b in zip(whole["hooktrain, tensorboard, no console line"],
                                         whole["hooktrain, no reporter, no console line"], strict=True)]
    print("Training thread's cost per log event (reporting to TensorBoard):\n")
    print("| measure | median | p90 |")
    print("|---|---|---|")
    on_log_us = sorted(t * 1e6 for t in on_log)
    p90 = on_log_us[int(0.9 * (len(on_log_us) - 1))]
    print(f"| inside the reporting plugin's on_log (n={len(on_log_us)}) | {statistics.median(on_log_us):.1f} µs | "
          f"{p90:.1f} µs |")
    print(f"| step time, tensorboard − no reporter (paired) | {statistics.median(added) * 1e3:.1f} µs | – |")
    print(f"| whole run, tensorboard − no reporter (paired) | {statistics.median(added_whole) * 1e3:.1f} ms | – |")


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def raw_name(ms: dict[str, list[float]]) -> str:
    return next(iter(ms))


if __name__ == "__main__":
    main()
