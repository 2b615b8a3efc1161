"""Per-step overhead of hooktrain's loop against a hand-written PyTorch loop (same run, paired).

Workload W1: MLP 64→256→256→10, 8192 synthetic samples, batch 32, 256 optimizer steps,
AdamW(lr 1e-3) + linear schedule with ceil(10%) warm-up, no clipping, one thread, fp32, CPU.
hooktrain: save_strategy="no", report_to="none", disable_tqdm=True, max_grad_norm=0.
Both loops shuffle with their own seeded generator and stack dict items per key.
Per-step time = median gap between consecutive optimizer-step ends (steps 21…N), so data
loading, the step, the scheduler and every hook are included. Repetitions alternate
hooktrain / raw; the reported figure is the median of the paired ratios.

hooktrain skips two profiler ranges that torch opens on every step (``DataLoader.__next__``,
``Optimizer.zero_grad``; hooktrain/core/data.py, hooktrain/core/grads.py). A third loop, "raw +
shortcuts", is the hand-written loop with the same two shortcuts, so that hooktrain's own cost
(hooktrain / raw + shortcuts) is reported too, not only the net figure.

    python benchmarks/bench_loop.py [--pairs 7]
    python benchmarks/bench_loop.py --tiny     # the loop's own Python cost, in µs per step
    python benchmarks/bench_loop.py --throughput [--pairs 31]

``--throughput``: what the throughput plugin (hooktrain/plugins/throughput.py) costs. W1 with a
training log every 10 steps, the plugin on (the default) against the same run with
``disable_plugins=["throughput"]``, interleaved, in the order on/off then off/on. Two ratios
(on / off, median of the pairs): the per-step time as above (steps 21…N; the 9 steps in 10 without
a log), and the mean step time of steps 21…N, log steps included (what a log costs the plugin:
summing its counts over the processes, reading the memory peaks). Then the one-time cost of
counting the FLOPs: the first optimizer step (from ``on_train_begin`` to its end) with the plugin
counting against the plugin off, for W1 and for a small transformer (benchmarks/gpu.py's, 2 blocks,
d=128, 128 tokens, batch 8). Last, the plugin's own work timed directly (the fastest of 7 repeats,
which a busy machine disturbs least): the loop's ``on_train_batch`` caller with the plugin and
without (a no-op), on a W1 batch and on a batch of 8 x 512 tokens with an attention mask, and one
log's ``extra_logs``; set against W1's step time in the same process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from functools import partial
from typing import Any

import torch

STEPS, BATCH, N = 256, 32, 8192


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(N, 64, generator=g)
        self.y = torch.randint(0, 10, (N,), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        )

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def w1_parts(data) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, torch.utils.data.DataLoader]:
    """The hand-written W1 setup: model, AdamW, linear warm-up schedule, shuffled loader."""
    torch.manual_seed(1234)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    warm = math.ceil(0.1 * STEPS)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: t / max(1, warm) if t < warm else max(0.0, (STEPS - t) / max(1, STEPS - warm))
    )
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, sampler=sampler, collate_fn=collate)
    return model, opt, sched, loader


def hand_written(model, opt, sched, loader, shortcuts: bool = False) -> list[float]:
    """The plain loop, stamping the end of every optimizer step; *shortcuts*: read the batches and
    clear the gradients as hooktrain does (without torch's per-step profiler ranges)."""
    from hooktrain.core.data import iterate_batches
    from hooktrain.core.grads import grad_clearer

    batches = iterate_batches(loader) if shortcuts else loader
    zero_grad = grad_clearer(opt, model) if shortcuts else partial(opt.zero_grad, set_to_none=True)
    stamps = []
    model.train()
    for batch in batches:
        model(**batch)["loss"].backward()
        opt.step()
        sched.step()
        zero_grad()
        stamps.append(time.perf_counter())
    return stamps


def raw_loop(data, shortcuts: bool = False) -> list[float]:
    return hand_written(*w1_parts(data), shortcuts=shortcuts)


def with_hooktrain(model, data, settings: dict[str, Any], before_train=None) -> list[float]:
    """Train *model* with hooktrain, stamping the end of every optimizer step; *before_train(trainer)*
    runs just before ``train()``."""
    from hooktrain import Trainer, TrainingArguments, hookimpl

    stamps: list[float] = []

    class Stamp:
        @hookimpl
        def on_step_end(self):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        base = dict(save_strategy="no", report_to="none", disable_tqdm=True, max_grad_norm=0.0, num_train_epochs=1)
        args = TrainingArguments(output_dir=out, **{**base, **settings})
        trainer = Trainer(model, args, train_dataset=data, plugins=[Stamp()])
        if before_train is not None:
            before_train(trainer)
        trainer.train()
    return stamps


def hooktrain_loop(data, before_train=None, **overrides) -> list[float]:
    """hooktrain on the W1 workload; *overrides* change the arguments (benchmarks/bench_reporting.py)."""
    torch.manual_seed(1234)
    settings = dict(per_device_train_batch_size=BATCH, learning_rate=1e-3, optim="adamw_torch",
                    lr_scheduler_type="linear", warmup_ratio=0.1, logging_steps=50, seed=1234)
    return with_hooktrain(MLP(), data, {**settings, **overrides}, before_train)


class TinyData(torch.utils.data.Dataset):
    """For ``--tiny``: a workload so small that the per-step Python cost is what is measured."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(4096, 2, generator=g)
        self.y = torch.randint(0, 2, (4096,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.cross_entropy(self.lin(x), labels)}


def raw_tiny(data, shortcuts: bool = False) -> list[float]:
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(data, batch_size=1, sampler=sampler, collate_fn=collate)
    return hand_written(model, opt, sched, loader, shortcuts)


def hooktrain_tiny(data) -> list[float]:
    torch.manual_seed(0)
    settings = dict(per_device_train_batch_size=1, optim="sgd", learning_rate=0.1,
                    lr_scheduler_type="constant", logging_steps=100_000)
    return with_hooktrain(Tiny(), data, settings)


def first_step_seconds(model_factory, data, settings: dict[str, Any]) -> float:
    """Seconds from ``on_train_begin`` to the end of the first optimizer step."""
    from hooktrain import hookimpl

    begin: list[float] = []

    class Begin:
        @hookimpl
        def on_train_begin(self):
            begin.append(time.perf_counter())

    torch.manual_seed(1234)
    stamps = with_hooktrain(model_factory(), data, {"max_steps": 3, "logging_steps": 10, **settings},
                            lambda trainer: trainer.plugin_manager.register(Begin()))
    return stamps[0] - begin[0]


def throughput_cost(pairs: int) -> None:
    """The throughput plugin on against off on W1 (log every 10 steps), and its one-time FLOP count."""
    data = Data()
    off = {"disable_plugins": ["throughput"]}
    hooktrain_loop(data, logging_steps=10), hooktrain_loop(data, logging_steps=10, **off)  # warm-up
    step_ratios, mean_ratios, ms = [], [], {"on": [], "off": []}
    for i in range(pairs):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        stamps = {name: hooktrain_loop(data, logging_steps=10, **(off if name == "off" else {})) for name in order}
        step = {name: per_step(st) for name, st in stamps.items()}
        mean = {name: (st[-1] - st[20]) / (len(st) - 21) for name, st in stamps.items()}
        step_ratios.append(step["on"] / step["off"])
        mean_ratios.append(mean["on"] / mean["off"])
        for name in ms:
            ms[name].append(step[name] * 1e3)
        print(f"pair {i + 1}: per-step on {step['on'] * 1e3:.4f} off {step['off'] * 1e3:.4f} ms; "
              f"mean on {mean['on'] * 1e3:.4f} off {mean['off'] * 1e3:.4f} ms", flush=True)
    print("\n| W1, log every 10 steps | median | min | max |\n|---|---|---|---|")
    for name, values in ms.items():
        print(f"| plugin {name} ms/step | {statistics.median(values):.4f} | {min(values):.4f} | {max(values):.4f} |")
    print(f"| on / off, per step (paired) | **{statistics.median(step_ratios):.4f}** | "
          f"{min(step_ratios):.4f} | {max(step_ratios):.4f} |")
    print(f"| on / off, mean step incl. log steps (paired) | **{statistics.median(mean_ratios):.4f}** | "
          f"{min(mean_ratios):.4f} | {max(mean_ratios):.4f} |")

    from gpu import TinyGPT, Tokens

    def gpt():
        return TinyGPT(vocab=256, dim=128, heads=4, layers=2, seq=128)

    workloads = {"W1 MLP": (MLP, data, dict(per_device_train_batch_size=BATCH)),
                 "transformer": (gpt, Tokens(64, 128, 256), dict(per_device_train_batch_size=8))}
    print("\n| first step | counting FLOPs ms | plugin off ms | one-time cost ms |\n|---|---|---|---|")
    for name, (factory, dataset, settings) in workloads.items():
        first_step_seconds(factory, dataset, settings)  # warm-up
        counting, plain = [], []
        for _ in range(5):
            counting.append(first_step_seconds(factory, dataset, settings))
            plain.append(first_step_seconds(factory, dataset, {**settings, **off}))
        c, p = statistics.median(counting) * 1e3, statistics.median(plain) * 1e3
        print(f"| {name} | {c:.2f} | {p:.2f} | **{c - p:.2f}** |")
    plugin_work(data)


def plugin_work(data) -> None:
    """The throughput plugin's per-micro-batch and per-log work, timed directly (min of 7 repeats)."""
    import timeit

    from hooktrain import Trainer, TrainingArguments

    def best(fn, number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=7)) / number

    def caller(plugin_on: bool) -> tuple[Any, Any]:
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no",
                                 disable_tqdm=True, disable_plugins=[] if plugin_on else ["throughput"])
        trainer = Trainer(MLP(), args, train_dataset=data)
        meter = trainer.plugin_manager.get_plugin("throughput.meter")
        if meter is not None:
            meter.on_train_begin(trainer, args)
            meter._watch = None  # the one-time FLOP count is measured above
        return trainer, trainer.plugin_manager.step_callers({"on_train_batch": ("trainer", "batch")})["on_train_batch"]

    w1_batch = collate([data[i] for i in range(BATCH)])
    ids = torch.randint(0, 1000, (8, 512))
    token_batch = {"input_ids": ids, "attention_mask": (torch.arange(512) < 400).long().expand(8, 512).clone(),
                   "labels": ids}
    (t_on, on), (t_off, off) = caller(True), caller(False)
    print("\n| the plugin's own work | µs |\n|---|---|")
    for name, batch in (("W1 batch", w1_batch), ("8 x 512 tokens + attention_mask", token_batch)):
        t_on.plugin_manager.get_plugin("throughput.meter")._keys = None  # the batch's keys afresh
        with_plugin = best(partial(on, t_on, batch), 20_000)
        without = best(partial(off, t_off, batch), 20_000)
        print(f"| on_train_batch, {name}: with the plugin {with_plugin * 1e6:.2f}, without (no-op) "
              f"{without * 1e6:.2f} | **{(with_plugin - without) * 1e6:.2f}** |")
    meter = t_on.plugin_manager.get_plugin("throughput.meter")
    per_log = best(lambda: meter.extra_logs(t_on, t_on.state), 200)
    print(f"| extra_logs, one log (sums, rates, peak RSS read and reset) | **{per_log * 1e6:.1f}** |")
    step = min(per_step(hooktrain_loop(data, logging_steps=10, disable_plugins=["throughput"])) for _ in range(5))
    meter._keys = None
    added = best(partial(on, t_on, w1_batch), 20_000) - best(partial(off, t_off, w1_batch), 20_000)
    print(f"\nW1 step without the plugin (fastest of 5 runs): {step * 1e6:.0f} µs; the plugin adds "
          f"{added * 1e6:.2f} µs per step (**{added / step:.2%}**) and {per_log * 1e6 / 10:.1f} µs per step "
          f"averaged over a log every 10 steps ({per_log / 10 / step:.2%})")


def per_step(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps[20:], stamps[21:], strict=False)]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--tiny", action="store_true",
                        help="Linear(2, 2), batch 1, SGD: the loop's own Python cost per step, in µs")
    parser.add_argument("--throughput", action="store_true",
                        help="the throughput plugin on against off (W1, log every 10 steps), and its FLOP count")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    if opts.throughput:
        throughput_cost(opts.pairs)
        return
    if opts.tiny:
        data = TinyData()
        raw_tiny(data), raw_tiny(data, shortcuts=True), hooktrain_tiny(data)  # warm-up
        net, own = [], []
        for _ in range(opts.pairs):
            h, r = per_step(hooktrain_tiny(data)), per_step(raw_tiny(data))
            rs = per_step(raw_tiny(data, shortcuts=True))
            net.append((h - r) * 1e6)
            own.append((h - rs) * 1e6)
            print(f"raw {r * 1e6:.1f}, raw + shortcuts {rs * 1e6:.1f}, hooktrain {h * 1e6:.1f} µs/step")
        print(f"\nhooktrain - raw: **{statistics.median(net):.1f} µs per step**; hooktrain's own cost "
              f"(hooktrain - raw + shortcuts): **{statistics.median(own):.1f} µs per step** (medians of {opts.pairs})")
        return
    data = Data()
    raw_loop(data), raw_loop(data, shortcuts=True)  # warm-up: lazy imports, allocator
    hooktrain_loop(data)
    ms: dict[str, list[float]] = {"raw loop": [], "raw loop + shortcuts": [], "hooktrain": []}
    ratios, own = [], []
    for _ in range(opts.pairs):
        h = per_step(hooktrain_loop(data))
        r = per_step(raw_loop(data))
        rs = per_step(raw_loop(data, shortcuts=True))
        ratios.append(h / r)
        own.append(h / rs)
        for name, value in zip(ms, (r, rs, h), strict=True):
            ms[name].append(value * 1e3)
    print("| | median | min | max |\n|---|---|---|---|")
    for name, values in ms.items():
        print(f"| {name} ms/step | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    print(f"| hooktrain / raw loop (paired) | **{statistics.median(ratios):.3f}** | {min(ratios):.3f} | {max(ratios):.3f} |")
    print(f"| hooktrain / raw loop + shortcuts (paired) | {statistics.median(own):.3f} | {min(own):.3f} | {max(own):.3f} |")


if __name__ == "__main__":
    main()
