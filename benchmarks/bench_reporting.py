"""What reporting to TensorBoard costs a training step: hooktrain against a raw loop (same run, paired).

Workload: benchmarks/bench_loop.py's (MLP 64→256→256→10, 8192 samples, batch 32, 256 steps,
AdamW + linear warm-up schedule, one thread, fp32, CPU), with a log event after every step.

* raw: bench_loop's hand-written loop that also measures the gradient norm and writes the
  scalars hooktrain logs (``train/loss``, ``train/grad_norm``, ``train/learning_rate``,
  ``train/epoch``) with its own ``SummaryWriter.add_scalar``, on the training thread.
* hooktrain: ``report_to=["tensorboard"]``, ``logging_steps=1``: the reporting bridge hands each
  log event to the TensorBoard reporter's worker thread. Measured with the console log line
  (the default) and with the ``progress`` plugin disabled (the raw loop prints nothing).
* hooktrain without reporters (``report_to="none"``, ``logging_steps=1``), to isolate what the
  reporting adds per log event on the training thread.

Per-step time = median gap between consecutive optimizer-step ends (steps 21…N). Repetitions
interleave the variants; a ratio is the median of the per-repetition ratios. The training
thread's cost per log event is reported two ways: the time spent inside the bridge's
``on_log`` (timed around that one hook implementation), and the per-step difference between
reporting to TensorBoard and reporting nowhere (which also counts the worker thread's
competition for the interpreter lock).

    python benchmarks/bench_reporting.py [--pairs 7]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_loop  # noqa: E402
from bench_loop import STEPS, Data, per_step  # noqa: E402


def raw_loop_with_writer(data) -> list[float]:
    """bench_loop.raw_loop, plus the gradient norm and four add_scalar calls per step."""
    from torch.utils.tensorboard import SummaryWriter

    model, opt, sched, loader = bench_loop.w1_parts(data)
    stamps = []
    with tempfile.TemporaryDirectory() as logdir:
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
    return stamps


def hooktrain_loop(data, report_to: str, console: bool = True, on_log_times: list[float] | None = None):
    """bench_loop.hooktrain_loop with a log event every step (optionally timing the bridge's on_log)."""
    with contextlib.redirect_stderr(io.StringIO()):  # the console lines still get formatted
        return bench_loop.hooktrain_loop(
            data, report_to=report_to, logging_steps=1, run_name="bench",
            disable_plugins=[] if console else ["progress"],
            before_train=(lambda t: _time_bridge_on_log(t, on_log_times)) if on_log_times is not None else None,
        )


def _time_bridge_on_log(trainer, times: list[float]) -> None:
    """Wrap the reporting bridge's on_log implementation with a timer (benchmark instrumentation)."""
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
    parser.add_argument("--pairs", type=int, default=7)
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
    on_log: list[float] = []
    for _ in range(opts.pairs):
        for name, run in variants.items():
            ms[name].append(per_step(run()) * 1e3)
        hooktrain_loop(data, "tensorboard", console=False, on_log_times=on_log)

    raw = ms["raw loop + SummaryWriter"]

    def ratio(name: str, base: list[float]) -> tuple[float, float, float]:
        r = [a / b for a, b in zip(ms[name], base, strict=True)]
        return statistics.median(r), min(r), max(r)

    print(f"{opts.pairs} interleaved repetitions, {STEPS} steps each, a log event every step, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| variant | ms/step (median) | min | max | ratio to raw (median of pairs) |")
    print("|---|---|---|---|---|")
    for name, values in ms.items():
        med, lo, hi = ratio(name, raw)
        rtext = "1" if name == raw_name(ms) else f"**{med:.3f}** ({lo:.3f}–{hi:.3f})"
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} | {rtext} |")

    added = [a - b for a, b in zip(ms["hooktrain, tensorboard, no console line"],
                                   ms["hooktrain, no reporter, no console line"], strict=True)]
    print("\nTraining thread's cost per log event (reporting to TensorBoard):\n")
    print("| measure | median | p90 |")
    print("|---|---|---|")
    on_log_us = sorted(t * 1e6 for t in on_log)
    p90 = on_log_us[int(0.9 * (len(on_log_us) - 1))]
    print(f"| inside the bridge's on_log (n={len(on_log_us)}) | {statistics.median(on_log_us):.1f} µs | "
          f"{p90:.1f} µs |")
    print(f"| step time, tensorboard − no reporter (paired) | {statistics.median(added) * 1e3:.1f} µs | – |")


def raw_name(ms: dict[str, list[float]]) -> str:
    return next(iter(ms))


if __name__ == "__main__":
    main()
