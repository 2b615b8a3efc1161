"""Small reusable test helpers: tiny datasets and models, scripted evaluation metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["checkpoint_steps", "RegressionDataset", "TinyRegressor", "ScriptedMetric", "scripted_trainer",
           "tiny_trainer_parts", "TokenData", "TokenLM", "pad_tokens"]


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


class TokenData(torch.utils.data.Dataset):
    """``n`` token sequences of 1 to 7 tokens ``{"input_ids", "labels"}`` whose first token is not
    a target (its label is -100, like a prompt), so the windows hold unequal numbers of targets."""

    def __init__(self, n: int = 16, vocab: int = 11, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, 8, (n,), generator=g)
        self.items = []
        for length in lengths.tolist():
            ids = torch.randint(0, vocab, (length,), generator=g)
            labels = ids.roll(-1).clone()
            labels[0] = -100
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def pad_tokens(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` with 0 and ``labels`` with -100 to the longest sequence of the batch."""
    pad = torch.nn.utils.rnn.pad_sequence
    return {"input_ids": pad([x["input_ids"] for x in items], batch_first=True, padding_value=0),
            "labels": pad([x["labels"] for x in items], batch_first=True, padding_value=-100)}


class TokenLM(torch.nn.Module):
    """A per-token model (embedding, then a linear layer to the vocabulary) with a token-level
    cross-entropy: the mean over the batch's targets, or with ``num_items_in_batch`` (taken through
    ``**kwargs``, as transformers models do) their sum divided by it. ``kwargs=False`` builds the
    same model with a forward that takes no ``**kwargs``. ``seen`` records every count received."""

    def __init__(self, vocab: int = 11, dim: int = 8, seed: int = 0, kwargs: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)
        self.seen: list[int | None] = []
        self.sums: list[float] = []  # each call's summed loss over its targets
        self.targets: list[int] = []  # each call's number of targets (labels that are not -100)
        if not kwargs:
            self.forward = self._forward_plain  # type: ignore[method-assign]

    def forward(self, input_ids, labels=None, **kwargs):
        return self._forward(input_ids, labels, kwargs.get("num_items_in_batch"))

    def _forward_plain(self, input_ids, labels=None):
        return self._forward(input_ids, labels, None)

    def _forward(self, input_ids, labels, num_items):
        logits = self.head(self.embed(input_ids))
        out = {"logits": logits}
        if labels is not None:
            flat = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            self.seen.append(None if num_items is None else int(num_items))
            summed = torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="sum")
            self.sums.append(float(summed.detach()))
            self.targets.append(int(labels.ne(-100).sum()))
            out["loss"] = summed / (labels.ne(-100).sum() if num_items is None else num_items)
        return out
