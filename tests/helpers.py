"""Small reusable test helpers: tiny datasets and models, scripted evaluation metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["checkpoint_steps", "RegressionDataset", "TinyRegressor", "ScriptedMetric", "scripted_trainer", "tiny_trainer_parts"]


class RegressionDataset(torch.utils.data.Dataset):
    """``n`` items ``{"x": float[dim], "labels": float}`` of a fixed linear target with noise."""

    def __init__(self, n: int = 32, dim: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.arange(1, dim + 1, dtype=torch.float32) / dim
        self.y = self.x @ w + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class TinyRegressor(torch.nn.Module):
    """A linear layer with the Hugging Face contract: ``model(x=..., labels=...)`` → ``{loss, logits}``."""

    def __init__(self, dim: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.linear(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


class ScriptedMetric:
    """A ``compute_metrics`` whose value is scripted by the trainer's global step.

    ``ScriptedMetric({2: 1.0, 4: 0.5}, name="score")`` returns ``{"score": 1.0}`` at step 2 and so
    on; a step without a value returns *default*. Set ``.trainer`` after building the Trainer.
    """

    def __init__(self, values: Mapping[int, float], name: str = "score", default: float = float("nan")):
        self.values = dict(values)
        self.name = name
        self.default = default
        self.trainer: Any = None
        self.calls: list[int] = []

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        step = self.trainer.state.global_step
        self.calls.append(step)
        return {self.name: self.values.get(step, self.default)}


def tiny_trainer_parts(n: int = 32, dim: int = 4, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``Trainer``: a fresh model and train/eval datasets."""
    return {
        "model": TinyRegressor(dim, seed),
        "train_dataset": RegressionDataset(n, dim, seed),
        "eval_dataset": RegressionDataset(8, dim, seed + 1),
    }


def tracker_series(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """What the reporters must have received from *log_history*: ``{name: [(step, value), ...]}``.

    Every numeric value of every entry, named as trackers show it (``eval_loss`` → ``eval/loss``,
    anything else ``x`` → ``train/x``), at the entry's ``step``, in logging order.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            series.setdefault(name, []).append((entry["step"], float(value)))
    return series


def scripted_trainer(args: Any, values: Mapping[int, float], name: str = "score", **kw: Any) -> Any:
    """A Trainer on the tiny parts whose ``compute_metrics`` is a :class:`ScriptedMetric`."""
    from hooktrain import Trainer

    metric = ScriptedMetric(values, name=name)
    trainer = Trainer(args=args, compute_metrics=metric, **tiny_trainer_parts(), **kw)
    metric.trainer = trainer
    return trainer


def checkpoint_steps(output_dir: Any) -> list[int]:
    """The steps of the ``checkpoint-N`` directories in *output_dir*, in order."""
    from pathlib import Path

    return sorted(int(p.name.split("-")[1]) for p in Path(output_dir).glob("checkpoint-*") if p.is_dir())
