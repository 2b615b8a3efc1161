"""The main job: an MLP classifies scikit-learn's 8x8 handwritten digits (no download).

Run it with ``bash scripts/main-job.sh`` or ``hooktrain train examples/digits/config.yaml``; any
``--training_argument value`` after the config overrides it. ``build(args)`` is the config's
``task``: it returns the ``Trainer`` keyword arguments.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

SPLIT_SEED = 0  # the train/eval split never changes, whatever args.seed is
EVAL_FRACTION = 0.2


class Digits(torch.utils.data.Dataset):
    """Items ``{"pixels": float[64], "labels": int}``."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray):
        self.pixels = torch.as_tensor(pixels, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels[i], "labels": self.labels[i]}


class MLP(torch.nn.Module):
    """64 -> hidden -> hidden -> 10, with the Hugging Face contract: ``{"loss", "logits"}``."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(pixels)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def load_splits() -> tuple[Digits, Digits]:
    """The digits data, split by ``SPLIT_SEED`` and standardised with the training split's statistics."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float32), data.target
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_eval = int(len(y) * EVAL_FRACTION)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0) + 1e-6
    x = (x - mean) / std
    return Digits(x[train_idx], y[train_idx]), Digits(x[eval_idx], y[eval_idx])


def accuracy(eval_pred: Any) -> dict[str, float]:
    predictions, labels = eval_pred
    return {"accuracy": float((np.asarray(predictions).argmax(-1) == np.asarray(labels)).mean())}


def build(args: Any) -> dict[str, Any]:
    if "OMP_NUM_THREADS" not in os.environ:
        # Matrices this small gain nothing from several threads, and on a busy machine the
        # threads' spin-waiting makes each step ~20x slower.
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the model's initial weights follow the run's seed
    train, evaluation = load_splits()
    return {"model": MLP(), "train_dataset": train, "eval_dataset": evaluation, "compute_metrics": accuracy}
