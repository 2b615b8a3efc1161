"""Which dataset columns reach the model, and how long each training sample is.

``remove_unused_columns`` (Hugging Face's rule): the loss comes from ``model(**batch)``, so a
column the model's ``forward`` does not name (a ``text`` column next to ``input_ids``) is dropped
before the collator sees it; ``label``, ``label_ids`` and ``label_names`` are kept. A
``datasets.Dataset`` loses the columns themselves (they are never read); another dataset of dicts
loses the keys at collation. A forward with a bare ``**kwargs`` takes any key, so nothing is
dropped; Hugging Face's models type theirs (``**kwargs: Unpack[TransformersKwargs]``) and keep only
their named inputs, as in Hugging Face's Trainer.

``group_by_length`` needs each training sample's length: a ``datasets.Dataset``'s
``length_column_name`` column when it has one, else the length of each item's ``input_ids``.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

logger = logging.getLogger("hooktrain")

_warned: set[tuple[str, tuple[str, ...]]] = set()


def is_hf_dataset(dataset: Any) -> bool:
    """Whether *dataset* is a ``datasets.Dataset`` (without importing ``datasets``)."""
    return type(dataset).__module__.startswith("datasets.") and hasattr(dataset, "column_names") \
        and hasattr(dataset, "remove_columns")


def forward_inputs(model: Any, label_names: Iterable[str] | None) -> frozenset[str] | None:
    """The batch keys *model*'s ``forward`` takes (plus the label keys); ``None``: any key."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: keep everything
        return None
    names = set()
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            if not _typed(p.annotation):  # a bare **kwargs takes every key
                return None
        elif p.kind is not p.VAR_POSITIONAL:
            names.add(p.name)
    return frozenset(names | {"label", "label_ids", *(label_names or ())})


def _typed(annotation: Any) -> bool:
    """Whether a ``**kwargs`` annotation is ``Unpack[SomeTypedDict]`` (a closed set of keys)."""
    if isinstance(annotation, str):
        return "Unpack[" in annotation
    return "Unpack" in repr(typing.get_origin(annotation))


def _warn_once(model: Any, dropped: Collection[str], where: str) -> None:
    name = type(model).__name__
    key = (name, tuple(sorted(dropped)))
    if dropped and key not in _warned:
        _warned.add(key)
        names = ", ".join(repr(c) for c in sorted(dropped))
        what = where if len(dropped) == 1 else where + "s"
        logger.warning("remove_unused_columns: dropping the %s %s, which %s.forward does not take "
                       "(set remove_unused_columns=False to keep %s)", what, names, name,
                       "it" if len(dropped) == 1 else "them")


class KeepKeys:
    """A collator that first drops the keys of each dict item that the model does not take."""

    def __init__(self, collate: Callable[[list[Any]], Any], keep: frozenset[str], model: Any):
        self.collate = collate
        self.keep = keep
        self.model = model

    def __call__(self, items: list[Any]) -> Any:
        if items and isinstance(items[0], Mapping) and not items[0].keys() <= self.keep:
            _warn_once(self.model, [k for k in items[0] if k not in self.keep], "item key")
            items = [{k: v for k, v in item.items() if k in self.keep} for item in items]
        return self.collate(items)


def drop_unused_columns(dataset: Any, collate: Callable[[list[Any]], Any], model: Any,
                        label_names: Iterable[str] | None) -> tuple[Any, Callable[[list[Any]], Any]]:
    """*dataset* and *collate* that give the model only what its ``forward`` takes."""
    keep = forward_inputs(model, label_names)
    if keep is None:
        return dataset, collate
    if is_hf_dataset(dataset):
        dropped = [c for c in dataset.column_names if c not in keep]
        if dropped and len(dropped) == len(dataset.column_names):
            raise ValueError(
                f"remove_unused_columns: no column of the dataset ({', '.join(dataset.column_names)}) "
                f"is an input of {type(model).__name__}.forward ({', '.join(sorted(keep))}); rename "
                "them, or set remove_unused_columns=False")
        _warn_once(model, dropped, "dataset column")
        return (dataset.remove_columns(dropped) if dropped else dataset), collate
    return dataset, KeepKeys(collate, keep, model)


def sample_lengths(dataset: Any, column: str, input_name: str = "input_ids") -> list[int]:
    """The length of every sample, for ``train_sampling_strategy='group_by_length'``."""
    if is_hf_dataset(dataset) and column in dataset.column_names:
        return [int(n) for n in dataset[column]]
    first = dataset[0]
    if not isinstance(first, Mapping) or input_name not in first:
        raise ValueError(
            f"train_sampling_strategy='group_by_length' needs each sample's length: items that are "
            f"dicts with {input_name!r}, or a datasets.Dataset with a {column!r} column "
            "(length_column_name)")
    return [len(dataset[i][input_name]) for i in range(len(dataset))]
