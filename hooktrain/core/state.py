"""TrainerState: the run's progress, saved as ``trainer_state.json`` in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainerState:
    """Progress of a run. Field names follow Hugging Face's ``trainer_state.json`` schema."""

    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    num_train_epochs: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_update_steps_per_epoch: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    stop_reason: str | None = None
    nonfinite_steps: int = 0
    skipped_steps: int = 0
    #: ``{"global_step", "epoch", "samples", "world_size"}``: from that step on, the data follows the
    #: epoch orders dealt to ``world_size`` processes, starting after ``samples`` samples of
    #: ``epoch`` (all zero but the processes unless a resume changed their number); ``None``: a
    #: loader of one's own, or a checkpoint from before this field (the position follows ``global_step``)
    data_origin: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=True) + "\n"

    def save_to_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load_from_json(cls, path: str | Path) -> TrainerState:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def resolve_steps(value: float | None, max_steps: int, default: int = 500) -> int:
    """An interval in steps: a value below 1 is a ratio of *max_steps* (rounded up, as HF does)."""
    if value is None:
        return default
    if 0 < value < 1:
        return max(1, math.ceil(max_steps * value))
    return int(value)
