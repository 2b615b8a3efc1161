"""A Hugging Face ``transformers`` model, built from a config (no hub download), trained by hooktrain.

    hooktrain train examples/hf_model/config.yaml      # a few minutes on CPU
    hooktrain train examples/hf_model/smoke.yaml       # the CI size, seconds

The data are scikit-learn's 8x8 digits read as sequences: each image becomes ``[CLS]`` followed
by 64 tokens, one per pixel, whose id says which pixel it is and how dark (5 levels), and a tiny
``BertForSequenceClassification`` learns the digit (about 92 % eval accuracy after 15 epochs). Nothing special is needed for a ``transformers`` model: it already has the
contract hooktrain expects, ``model(**batch)`` returning an output with ``.loss`` and ``.logits``
when the batch holds ``labels``. At the end the model is also written with ``save_pretrained``
into ``OUTPUT_DIR/hf_model`` and loaded back with ``from_pretrained`` to check the round trip.

Needs ``pip install "hooktrain[hf,examples]"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# No network: never ask the hub for anything (set before transformers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hooktrain import hookimpl  # noqa: E402

LEVELS = 5  # intensities 0..16 are binned into this many levels
CLS = 64 * LEVELS  # ids below CLS are pixel tokens: position * LEVELS + level
PAD = CLS + 1
VOCAB = CLS + 2
SPLIT_SEED = 0
EVAL_FRACTION = 0.2


class DigitTokens(torch.utils.data.Dataset):
    """Items ``{"input_ids": long[65], "attention_mask": long[65], "labels": long}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        levels = images.astype(np.int64) * LEVELS // 17  # 0..16 -> 0..LEVELS-1
        pixels = levels + LEVELS * np.arange(64)[None, :]
        cls = np.full((len(images), 1), CLS)
        self.input_ids = torch.as_tensor(np.concatenate([cls, pixels], axis=1))
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def load_splits(limit: int | None = None) -> tuple[DigitTokens, DigitTokens]:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data.target))
    n_eval = int(len(order) * EVAL_FRACTION)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    if limit is not None:
        eval_idx, train_idx = eval_idx[: limit // 4], train_idx[:limit]
    images = data.data.astype(np.int64)  # integer intensities 0..16
    return (DigitTokens(images[train_idx], data.target[train_idx]),
            DigitTokens(images[eval_idx], data.target[eval_idx]))


def make_model(hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """A randomly initialised BERT classifier from a config: no download, no cache."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB, pad_token_id=PAD, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=80,
        type_vocab_size=1, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def accuracy(eval_pred: Any) -> dict[str, float]:
    predictions, labels = eval_pred
    return {"accuracy": float((np.asarray(predictions).argmax(-1) == np.asarray(labels)).mean())}


class SavePretrained:
    """At the end, ``save_pretrained`` into ``OUTPUT_DIR/hf_model`` and check ``from_pretrained``."""

    @hookimpl(trylast=True)  # after the best model has been loaded back
    def on_train_end(self, trainer, args, status):
        if status == "failed" or not trainer.is_world_process_zero:
            return
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        target = Path(args.output_dir) / "hf_model"
        trainer.model.save_pretrained(target)
        reloaded = type(trainer.model).from_pretrained(target)
        mine, theirs = trainer.model.state_dict(), reloaded.state_dict()
        same = mine.keys() == theirs.keys() and all(
            torch.equal(mine[k], theirs[k].to(mine[k].device)) for k in mine
        )
        print(f"[hf_model] save_pretrained -> {target} (from_pretrained gives the same weights: {same})",
              file=sys.stderr, flush=True)


def _build(args: Any, limit: int | None) -> dict[str, Any]:
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # small matrices: one thread is fastest, and fair to a busy machine
    torch.manual_seed(args.seed)
    train, evaluation = load_splits(limit)
    return {
        "model": make_model(),
        "train_dataset": train,
        "eval_dataset": evaluation,
        "compute_metrics": accuracy,
        "plugins": [SavePretrained()],
    }


def build(args: Any) -> dict[str, Any]:
    return _build(args, limit=None)


def smoke(args: Any) -> dict[str, Any]:
    """The CI size: 256 training images (smoke.yaml trains 48 steps)."""
    return _build(args, limit=256)
