"""``hooktrain plot OUTPUT_DIR``: training curves from ``trainer_state.json`` into a PNG (matplotlib).

Up to four panels: training and evaluation loss (log scale when the loss spans more than a decade
and a half), the learning rate, every evaluation metric other than the loss, and throughput and
memory (tokens/s, else samples/s, with the peak memory of each logging window on a second axis and
the mean MFU in the title; see docs/throughput.md). Panels with nothing to show are left out. A
dashed line marks the best step; the best value of ``metric_for_best_model`` gets a star. For
people without a tracker UI: ``hooktrain plot out/digits`` writes ``out/digits/training.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hooktrain.core.monitor import BUILTIN_EVAL_METRICS

_LOG_SCALE_RATIO = 30.0  # max/min of the loss beyond which the loss panel uses a log scale


def find_state(output_dir: str | Path) -> Path:
    """``OUTPUT_DIR/trainer_state.json``, else the one in the newest ``checkpoint-N``."""
    root = Path(output_dir)
    if (root / "trainer_state.json").is_file():
        return root / "trainer_state.json"
    from hooktrain.checkpointing.format import list_checkpoints

    for _, ckpt in reversed(list_checkpoints(root)):
        if (ckpt / "trainer_state.json").is_file():
            return ckpt / "trainer_state.json"
    raise FileNotFoundError(f"no trainer_state.json in {root} or its checkpoints")


def series(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of *key* in the log history (entries without it are skipped)."""
    points = [
        (e["step"], e[key])
        for e in log_history
        if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)
    ]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _wants_log_scale(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > _LOG_SCALE_RATIO


def _best_metric_key(state: dict[str, Any], history: list[dict[str, Any]], metric_keys: list[str]) -> str | None:
    """The eval key whose value at the best step equals ``best_metric`` (the ranked metric)."""
    best_step, best = state.get("best_global_step"), state.get("best_metric")
    if best_step is None or not isinstance(best, (int, float)):
        return None
    for entry in history:
        if entry.get("step") != best_step:
            continue
        for key in ("eval_loss", *metric_keys):
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12):
                return key
    return None


#: The memory series of the throughput panel: (log key, label, colour).
MEMORY_SERIES = (
    ("host_peak_rss_mib", "host RSS peak", "tab:orange"),
    ("device_max_allocated_mib", "device allocated peak", "tab:red"),
    ("device_max_reserved_mib", "device reserved peak", "tab:purple"),
)


def _rate_key(history: list[dict[str, Any]]) -> str | None:
    """The rate the throughput panel draws: tokens/s when logged, else samples/s."""
    for key in ("tokens_per_second", "samples_per_second"):
        if series(history, key)[0]:
            return key
    return None


def _throughput_panel(ax: Any, history: list[dict[str, Any]], rate_key: str) -> None:
    """Tokens/s (or samples/s) per logging window, and peak memory on a second axis, in MiB."""
    steps, values = series(history, rate_key)
    lines = ax.plot(steps, values, color="tab:blue", label=rate_key.replace("_per_second", "/s"))
    ax.set(xlabel="step", ylabel=rate_key.replace("_per_second", " per second"))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    memory = [(series(history, key), label, colour) for key, label, colour in MEMORY_SERIES]
    memory = [(points, label, colour) for points, label, colour in memory if points[0]]
    if memory:
        right = ax.twinx()
        for (mem_steps, mem_values), label, colour in memory:
            lines += right.plot(mem_steps, mem_values, ls="--", color=colour, label=label)
        right.set_ylabel("MiB")
        right.set_ylim(bottom=0)
    title = "throughput and memory"
    mfu = series(history, "mfu")[1]
    if mfu:
        title += f" (mean MFU {sum(mfu) / len(mfu):.1%})"
    ax.set_title(title)
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small")


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
    metric_keys = sorted({k for e in history for k in e if k.startswith("eval_") and k not in BUILTIN_EVAL_METRICS})
    best_step = state.get("best_global_step")
    ranked = _best_metric_key(state, history, metric_keys)

    lr_steps, lr_values = series(history, "learning_rate")
    rate_key = _rate_key(history)
    panels = ["loss"] + (["lr"] if lr_steps else []) + (["metrics"] if metric_keys else [])
    panels += ["throughput"] if rate_key else []
    fig, axes_row = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
    axes = dict(zip(panels, axes_row[0], strict=True))

    ax = axes["loss"]
    all_losses: list[float] = []
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = series(history, key)
        if steps:
            ax.plot(steps, values, marker="o" if key == "eval_loss" else None, ms=3, label=label)
            all_losses += values
    if _wants_log_scale(all_losses):
        ax.set_yscale("log")
    ax.set(title="loss" + (" (log scale)" if ax.get_yscale() == "log" else ""), xlabel="step")
    if all_losses:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", color="grey",
                transform=ax.transAxes)

    if "lr" in axes:
        axes["lr"].plot(lr_steps, lr_values, color="tab:green")
        axes["lr"].set(title="learning rate", xlabel="step")
        axes["lr"].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    if "metrics" in axes:
        ax = axes["metrics"]
        for key in metric_keys:
            steps, values = series(history, key)
            ax.plot(steps, values, marker="o", ms=3, label=key[5:])
        ax.set(title="eval metrics", xlabel="step")
        ax.legend()

    if rate_key is not None:
        _throughput_panel(axes["throughput"], history, rate_key)

    if best_step is not None:
        for a in axes.values():
            a.axvline(best_step, color="grey", ls="--", lw=0.8)
        target = axes["loss"] if ranked == "eval_loss" else axes.get("metrics")
        if ranked is not None and target is not None:
            target.plot([best_step], [state["best_metric"]], marker="*", ms=13, color="gold",
                        markeredgecolor="black", zorder=5, ls="none",
                        label=f"best {ranked[5:]} {state['best_metric']:.4g} @ {best_step}")
            target.legend()
    for a in axes.values():
        a.grid(alpha=0.3)

    title = Path(output_dir).resolve().name
    final = state.get("global_step")
    if final is not None:
        title += f" - {final} steps"
    if state.get("stop_reason"):
        title += " (stopped early)"
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(out) if out else Path(output_dir) / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
