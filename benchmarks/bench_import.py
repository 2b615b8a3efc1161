"""Import cost of hooktrain over ``import torch`` (fresh interpreters, interleaved, medians).

    python benchmarks/bench_import.py [--reps 7]

Also checks that ``import hooktrain`` loads no tracker library, no transformers, no tensorboard.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

PROBE = "import time, sys; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
HEAVY = ("wandb", "mlflow", "comet_ml", "tensorboard", "transformers", "matplotlib")


def timed(stmt: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    reps = parser.parse_args().reps
    torch_only, both = [], []
    for _ in range(reps):
        torch_only.append(timed("import torch"))
        both.append(timed("import torch, hooktrain"))
    deltas = [b - t for b, t in zip(both, torch_only, strict=True)]
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, hooktrain; print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print("| | median s | min | max |\n|---|---|---|---|")
    print(f"| import torch | {statistics.median(torch_only):.3f} | {min(torch_only):.3f} | {max(torch_only):.3f} |")
    print(f"| import torch, hooktrain | {statistics.median(both):.3f} | {min(both):.3f} | {max(both):.3f} |")
    print(f"| **hooktrain over torch** | **{statistics.median(deltas):.3f}** | {min(deltas):.3f} | {max(deltas):.3f} |")
    print(f"\nheavy modules loaded by `import hooktrain`: {loaded}")


if __name__ == "__main__":
    main()
