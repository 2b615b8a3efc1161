"""The grace period a preemption needs: from SIGTERM to the end of the process, on W2.

Workload (perf.md W2): MLP 512→2048→2048→10 (5.27 M parameters, 63 MB of checkpoint with the
AdamW state), batch 64, one thread, trained by ``hooktrain train`` in a child process with
checkpoints every 50 steps (``save_async`` as configured, default on). Once the child has made 30
steps the parent sends it a real SIGTERM at a random point of a step and times, from the moment
it sent the signal, until the process has exited; the child's log gives the time the
synchronous checkpoint took and the time from the signal to the end of ``train()``. Each
repetition is a fresh process; medians and ranges are printed.

    python benchmarks/bench_preemption.py [--reps 5] [--save_async false]

The figure to budget for is "signal → exit": the scheduler's grace period (Kubernetes'
``terminationGracePeriodSeconds``, SLURM's ``--signal=…@N``, torchrun's 30 s) must exceed it with
a margin; it grows with the checkpoint size (write + fsync) and with one step (the stop comes at
the next step boundary).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(args):  # the task of the child's `hooktrain train`
    import torch

    from hooktrain import hookimpl

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path in the child
    from workloads import MLP, Data

    class Ready:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == 30:
                print("READY", flush=True)

    torch.set_num_threads(1)
    torch.manual_seed(1234)
    return {"model": MLP(), "train_dataset": Data(12800), "plugins": [Ready()]}


def one(out: Path, save_async: bool) -> dict:
    config = out / "config.json"
    config.write_text(json.dumps({
        "task": f"{Path(__file__).resolve()}:build", "output_dir": str(out / "run"),
        "per_device_train_batch_size": 64, "max_steps": 100_000, "learning_rate": 1e-3,
        "optim": "adamw_torch", "max_grad_norm": 0.0, "logging_steps": 100_000, "save_strategy": "steps",
        "save_steps": 50, "save_async": save_async, "report_to": "none", "disable_tqdm": True, "seed": 1234,
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hooktrain", "train", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("READY"):
            break
    time.sleep(random.uniform(0, 0.1))  # somewhere in a step
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    exited = time.perf_counter() - sent
    log = "".join(lines) + rest
    found = re.search(r"checkpoint written in ([\d.]+) s; ([\d.]+) s from the signal", log)
    if proc.returncode != 75 or not found:
        raise SystemExit(f"the child did not end as a preemption (exit {proc.returncode}):\n{log[-3000:]}")
    step = re.search(r"interrupted at step (\d+)", log)
    return {"exit_s": exited, "save_s": float(found.group(1)), "train_end_s": float(found.group(2)),
            "step": int(step.group(1)) if step else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--save_async", default="true", choices=("true", "false"))
    opts = parser.parse_args()
    runs = []
    for _ in range(opts.reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one(Path(tmp), opts.save_async == "true"))
        print(runs[-1], file=sys.stderr)

    def row(key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"

    print(f"""
**Preemption grace budget, W2 (63 MB checkpoint), save_async={opts.save_async}** — {opts.reps} fresh processes,
SIGTERM sent by the parent during training; medians (min–max).

| from the signal to | time |
|---|---|
| the checkpoint written (its own duration) | {row("save_s")} |
| the end of `train()` (logged by hooktrain) | {row("train_end_s")} |
| the process's exit (status 75) | {row("exit_s")} |

Command: `python benchmarks/bench_preemption.py --reps {opts.reps} --save_async {opts.save_async}`.
""")


if __name__ == "__main__":
    main()
