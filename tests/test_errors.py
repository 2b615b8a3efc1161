"""hooktrain's configuration and input errors are ValueErrors (or KeyErrors), keeping their classes.

Code that guards a run with ``except ValueError`` (as with Hugging Face's Trainer) catches them; a
damaged checkpoint stays a plain CheckpointError.
"""

from __future__ import annotations

import pytest
from helpers import tiny_trainer_parts

from hooktrain import Trainer, TrainingArguments
from hooktrain.core.errors import (
    ArgumentError,
    CheckpointError,
    CheckpointSettingError,
    NameConflictError,
    UnknownNameError,
)
from hooktrain.core.monitor import MetricNotFoundError


def args(tmp_path, **kw):
    kw = {"max_steps": 2, "save_steps": 1, "report_to": "none", "disable_tqdm": True, **kw}
    return TrainingArguments(output_dir=str(tmp_path / "out"), **kw)


def test_error_classes():
    for cls in (ArgumentError, UnknownNameError, NameConflictError, CheckpointSettingError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(CheckpointSettingError, CheckpointError)
    assert issubclass(MetricNotFoundError, KeyError)
    assert not issubclass(CheckpointError, ValueError)  # a damaged checkpoint is not an input error


def test_fresh_run_into_an_output_dir_with_checkpoints(tmp_path):
    Trainer(args=args(tmp_path), **tiny_trainer_parts()).train()
    with pytest.raises(ValueError, match="already holds checkpoints") as info:
        Trainer(args=args(tmp_path), **tiny_trainer_parts()).train()
    assert isinstance(info.value, CheckpointSettingError)


def test_resume_from_a_path_that_does_not_exist(tmp_path):
    trainer = Trainer(args=args(tmp_path), **tiny_trainer_parts())
    with pytest.raises(ValueError, match="no such directory") as info:
        trainer.train(resume_from_checkpoint=str(tmp_path / "nope"))
    assert isinstance(info.value, CheckpointSettingError) and "nope" in str(info.value)


def test_resume_newest_without_any_checkpoint(tmp_path):
    trainer = Trainer(args=args(tmp_path), **tiny_trainer_parts())
    with pytest.raises(ValueError, match="holds no checkpoint-N") as info:
        trainer.train(resume_from_checkpoint=True)
    assert isinstance(info.value, CheckpointSettingError)


def test_metric_the_evaluation_does_not_produce(tmp_path):
    a = args(tmp_path, eval_strategy="steps", eval_steps=1, metric_for_best_model="accuracy",
             load_best_model_at_end=True)
    with pytest.raises(KeyError) as info:  # compute_metrics is opaque: found out at the evaluation
        Trainer(args=a, compute_metrics=lambda pred: {"mse": 0.5}, **tiny_trainer_parts()).train()
    assert isinstance(info.value, MetricNotFoundError) and "accuracy" in str(info.value)


def test_epochs_zero_is_a_value_error():
    with pytest.raises(ValueError, match="num_train_epochs=0 with max_steps=-1"):
        TrainingArguments(output_dir="out", num_train_epochs=0)
