"""Sharded against replicated: memory per process and step time of FSDP2 vs DDP (torchrun, 2 gloo processes, CPU).

Workload: an MLP 512→4096→4096→10 (18.9 M parameters, 75.5 MB in fp32), AdamW, synthetic data,
per-device batch 64, fp32, no clipping, logging, evaluation or checkpoints, ``OMP_NUM_THREADS=1``
in each of the 2 processes. Both runs go through the ``Trainer`` under ``torchrun``: DDP (no
``fsdp``) and ``fsdp='full_shard'`` (each Linear is an FSDP unit, then the root).

Per process it records the bytes it holds of the parameters, of the gradients (largest seen
just before an optimizer step) and of the optimizer state (a ``DTensor`` counts its local shard
only), the peak resident set size (``ru_maxrss``; the figure after ``import torch`` and the data
is given too), and the median step time after the warm-up (``on_step_end`` to ``on_step_end``).
Runs alternate (DDP, FSDP, DDP, …); the ratios are medians of the paired ratios. Targets: FSDP's
parameter + gradient + optimizer bytes ≤ 0.55× DDP's.

    python benchmarks/bench_fsdp.py [--pairs 3] [--steps 20] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

N_FEATURES, HIDDEN, N_CLASSES = 512, 4096, 10


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    import torch

    from hooktrain import Trainer, TrainingArguments, hookimpl
    from hooktrain.plugins.fsdp import local_bytes

    world = int(os.environ.get("WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(args.batch * world * args.steps, N_FEATURES, generator=g)
    y = torch.randint(0, N_CLASSES, (len(x),), generator=g)

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict:
            return {"x": x[i], "labels": y[i]}

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(N_FEATURES, HIDDEN), torch.nn.ReLU(),
                torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, N_CLASSES),
            )

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}

    class Probe:
        def __init__(self):
            self.marks: dict[int, float] = {}
            self.grad_bytes = 0
            self.optim_bytes = 0

        @hookimpl(wrapper=True)
        def optimizer_step(self, trainer, optimizer):
            self.grad_bytes = max(self.grad_bytes, local_bytes(p.grad for p in trainer.model.parameters()))
            outcome = yield
            self.optim_bytes = local_bytes(t for s in optimizer.state.values() for t in s.values())
            return outcome

        @hookimpl
        def on_step_end(self, state):
            self.marks[state.global_step] = time.perf_counter()

    baseline = _rss_mib()
    probe = Probe()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
            learning_rate=1e-3, optim="adamw_torch", max_grad_norm=0.0, logging_steps=10_000,
            save_strategy="no", report_to="none", disable_tqdm=True, seed=1234, use_cpu=True,
            fsdp="full_shard" if args.fsdp else "",
        )
        torch.manual_seed(1234)
        trainer = Trainer(MLP(), targs, train_dataset=Data(), plugins=[probe])
        trainer.train()
    steps = [probe.marks[s] - probe.marks[s - 1] for s in range(args.warmup + 1, args.steps + 1)]
    mine = {
        "param_bytes": local_bytes(trainer.model.parameters()),
        "grad_bytes": probe.grad_bytes,
        "optim_bytes": probe.optim_bytes,
        "peak_rss_mib": _rss_mib(),
        "baseline_rss_mib": baseline,
        "step_s": statistics.median(steps),
    }
    everyone = [None] * world
    torch.distributed.all_gather_object(everyone, mine)
    if trainer.process_index == 0:
        with open(args.result, "w") as fp:
            json.dump(everyone, fp)


def run(fsdp: bool, args: argparse.Namespace) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, "--worker", "--result", result.name, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), *(["--fsdp"] if fsdp else [])]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(result.name) as fp:
            return json.load(fp)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="per-device batch size")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    pairs = []
    for _ in range(args.pairs):
        ddp, fsdp = run(False, args), run(True, args)
        pairs.append((ddp, fsdp))
        print(f"step: DDP {max(r['step_s'] for r in ddp) * 1e3:.0f} ms, FSDP "
              f"{max(r['step_s'] for r in fsdp) * 1e3:.0f} ms; peak RSS DDP "
              f"{max(r['peak_rss_mib'] for r in ddp):.0f} MiB, FSDP {max(r['peak_rss_mib'] for r in fsdp):.0f} MiB",
              file=sys.stderr)

    def med(kind: int, key: str) -> float:  # median over runs of the largest value over the ranks
        return statistics.median(max(r[key] for r in pair[kind]) for pair in pairs)

    def ratio(key: str) -> float:
        return statistics.median(max(r[key] for r in f) / max(r[key] for r in d) for d, f in pairs)

    total = {k: statistics.median(sum(max(r[key] for r in pair[k])
                                      for key in ("param_bytes", "grad_bytes", "optim_bytes")) for pair in pairs)
             for k in (0, 1)}
    rows = [("parameters (MB)", "param_bytes", _mb), ("gradients (MB)", "grad_bytes", _mb),
            ("optimizer state (MB)", "optim_bytes", _mb)]
    lines = [f"| {label} | {fmt(med(0, key))} | {fmt(med(1, key))} | {ratio(key):.3f}× |" for label, key, fmt in rows]
    lines.append(f"| **parameters + gradients + optimizer (MB)** | {_mb(total[0])} | {_mb(total[1])} | "
                 f"**{total[1] / total[0]:.3f}×** |")
    lines.append(f"| peak RSS (MiB) | {med(0, 'peak_rss_mib'):.0f} | {med(1, 'peak_rss_mib'):.0f} | "
                 f"{ratio('peak_rss_mib'):.3f}× |")
    lines.append(f"| peak RSS above the start (MiB) | {med(0, 'peak_rss_mib') - med(0, 'baseline_rss_mib'):.0f} | "
                 f"{med(1, 'peak_rss_mib') - med(1, 'baseline_rss_mib'):.0f} | |")
    lines.append(f"| step time (ms, median) | {med(0, 'step_s') * 1e3:.0f} | {med(1, 'step_s') * 1e3:.0f} | "
                 f"{ratio('step_s'):.2f}× |")
    command = (f"python benchmarks/bench_fsdp.py --pairs {args.pairs} --steps {args.steps} --warmup {args.warmup} "
               f"--batch {args.batch}")
    print(f"""
**FSDP2 vs DDP (2 gloo processes, CPU, OMP_NUM_THREADS=1 each)** — MLP 512→4096→4096→10 (18.9 M
parameters), AdamW, per-device batch {args.batch}, steps {args.warmup + 1}…{args.steps} timed, {args.pairs}
alternating pairs; per process, the larger of the two ranks.

| per process | DDP | FSDP full_shard | FSDP / DDP |
|---|---:|---:|---:|
""" + "\n".join(lines) + f"\n\nCommand: `{command}` (target: parameters + gradients + optimizer ≤ 0.55×).")


if __name__ == "__main__":
    main()
