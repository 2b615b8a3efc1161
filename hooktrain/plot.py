"""``hooktrain plot OUTPUT_DIR``: training curves from ``trainer_state.json`` into a PNG (matplotlib)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_NOT_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def find_state(output_dir: str | Path) -> Path:
    """``OUTPUT_DIR/trainer_state.json``, else the one in the newest ``checkpoint-N``."""
    root = Path(output_dir)
    if (root / "trainer_state.json").is_file():
        return root / "trainer_state.json"
    checkpoints = sorted(
        (p for p in root.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for ckpt in reversed(checkpoints):
        if (ckpt / "trainer_state.json").is_file():
            return ckpt / "trainer_state.json"
    raise FileNotFoundError(f"no trainer_state.json in {root} or its checkpoints")


def series(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in log_history if isinstance(e.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot(output_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw loss, learning rate and evaluation metrics; return the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "hooktrain[plot]"') from exc
    state = json.loads(find_state(output_dir).read_text(encoding="utf-8"))
    history = state.get("log_history", [])
    metric_keys = sorted({k for e in history for k in e if k.startswith("eval_") and k not in _NOT_METRICS})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = series(history, key)
        if steps:
            ax.plot(steps, values, marker="o" if key == "eval_loss" else None, ms=3, label=label)
    ax.set(title="loss", xlabel="step")
    ax.legend()
    steps, values = series(history, "learning_rate")
    axes[1].plot(steps, values, color="tab:green")
    axes[1].set(title="learning rate", xlabel="step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for key in metric_keys:
        steps, values = series(history, key)
        axes[2].plot(steps, values, marker="o", ms=3, label=key[5:])
    best = state.get("best_global_step")
    if best is not None:
        for a in axes:
            a.axvline(best, color="grey", ls="--", lw=0.8)
        axes[2].text(best, axes[2].get_ylim()[0], f" best @ {best}", color="grey", va="bottom")
    axes[2].set(title="eval metrics", xlabel="step")
    if metric_keys:
        axes[2].legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out else Path(output_dir) / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
