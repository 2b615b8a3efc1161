"""Best-model tracking and ``load_best_model_at_end``, through real training runs and real checkpoints.

The ranked metric is scripted by the global step (``ScriptedMetric``), so which step is best is
known in advance; the weights are compared with what the checkpoint's ``model.safetensors`` holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import scripted_trainer, tiny_trainer_parts
from safetensors.torch import load_file

from hooktrain import ArgumentError, Trainer, TrainingArguments
from hooktrain.core.monitor import MetricNotFoundError


def make_args(tmp_path: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=5, logging_steps=5,
        report_to="none", disable_tqdm=True, learning_rate=5e-2, metric_for_best_model="score",
    )
    settings.update(overrides)
    return TrainingArguments(**settings)



def checkpoints(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    if not out.exists():
        return []
    found = [p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda n: int(n.split("-")[1]))


def saved_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def same_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)


# lower is better: the best is at step 4, which is not a save step (saves every 5)
LOWER = {2: 1.0, 4: 0.25, 6: 0.5, 8: 0.75, 10: 0.5}


def test_best_on_a_non_save_step_is_saved_and_loaded(tmp_path, caplog):
    args = make_args(tmp_path, load_best_model_at_end=True, greater_is_better=False)
    trainer = scripted_trainer(args, LOWER)
    with caplog.at_level(logging.INFO, logger="hooktrain"):
        trainer.train()
    out = tmp_path / "out"
    state = trainer.state
    assert (state.best_metric, state.best_global_step) == (0.25, 4)
    assert state.best_model_checkpoint == str(out / "checkpoint-4")
    # every new best is saved (the first evaluation is one), plus the steps policy's 5 and 10
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-5", "checkpoint-10"]
    best, final = saved_weights(out / "checkpoint-4"), saved_weights(out / "checkpoint-10")
    assert not all(torch.equal(best[k], final[k]) for k in best)  # training moved on after step 4
    assert same_weights(trainer.model, best)
    assert "loaded the best model from step 4 (eval_score=0.25)" in caplog.text
    # the best survives in the saved state: the last checkpoint knows where it is
    last_state = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    assert last_state["best_global_step"] == 4 and last_state["best_metric"] == 0.25
    assert last_state["best_model_checkpoint"] == str(out / "checkpoint-4")
    # save_model() after training writes the best weights
    trainer.save_model(str(tmp_path / "final"))
    assert same_weights(trainer.model, saved_weights(tmp_path / "final"))


def test_greater_is_better_and_strict_improvement(tmp_path):
    args = make_args(tmp_path, save_strategy="no", max_steps=8)
    assert args.greater_is_better is True  # from the name 'score'
    trainer = scripted_trainer(args, {2: 0.5, 4: 0.75, 6: 0.75, 8: 0.25})
    trainer.train()
    state = trainer.state
    assert (state.best_metric, state.best_global_step) == (0.75, 4)  # equal at step 6 is not better
    assert state.best_model_checkpoint is None  # tracking only: nothing was saved
    assert checkpoints(tmp_path) == []


def test_save_total_limit_one_keeps_best_and_newest(tmp_path):
    args = make_args(tmp_path, load_best_model_at_end=True, greater_is_better=False, save_steps=2,
                     save_total_limit=1)
    trainer = scripted_trainer(args, LOWER)
    trainer.train()
    out = tmp_path / "out"
    assert checkpoints(tmp_path) == ["checkpoint-4", "checkpoint-10"]
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-4")
    assert same_weights(trainer.model, saved_weights(out / "checkpoint-4"))


def test_save_strategy_best_saves_only_new_bests(tmp_path):
    args = make_args(tmp_path, save_strategy="best", greater_is_better=False)
    trainer = scripted_trainer(args, {2: 1.0, 4: 0.5, 6: 0.75, 8: 0.25, 10: 0.5})
    trainer.train()
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-8"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "out" / "checkpoint-8")
    assert trainer.state.best_global_step == 8


def test_save_strategy_best_respects_another_plugins_veto(tmp_path):
    from hooktrain import hookimpl

    class NotBefore5:
        @hookimpl
        def should_save(self, state):
            return False if state.global_step < 5 else None

    args = make_args(tmp_path, save_strategy="best", greater_is_better=False)
    scripted_trainer(args, {2: 1.0, 4: 0.5, 6: 0.75, 8: 0.25, 10: 0.5}, plugins=[NotBefore5()]).train()
    assert checkpoints(tmp_path) == ["checkpoint-8"]


def test_save_strategy_no_with_load_best_saves_only_the_bests(tmp_path):
    args = make_args(tmp_path, save_strategy="no", load_best_model_at_end=True, greater_is_better=False)
    trainer = scripted_trainer(args, LOWER)
    trainer.train()
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    assert same_weights(trainer.model, saved_weights(tmp_path / "out" / "checkpoint-4"))


def test_tracking_only_does_not_force_saves(tmp_path):
    # no load_best: a best on a non-save step is tracked but not written, and the state says so
    args = make_args(tmp_path, save_steps=4, greater_is_better=False)
    trainer = scripted_trainer(args, {2: 1.0, 4: 0.5, 6: 0.25, 8: 0.75, 10: 0.5})
    trainer.train()
    assert checkpoints(tmp_path) == ["checkpoint-4", "checkpoint-8", "checkpoint-10"]
    state = trainer.state
    assert (state.best_metric, state.best_global_step, state.best_model_checkpoint) == (0.25, 6, None)
    at_4 = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert at_4["best_model_checkpoint"] == str(tmp_path / "out" / "checkpoint-4")


def test_epoch_evaluation_after_the_steps_save_of_that_step(tmp_path):
    # 32 items / batch 4 = 8 steps per epoch; the steps policy saves step 8 before the epoch's
    # evaluation at step 8 finds a new best: the checkpoint already on disk is the best one.
    args = make_args(tmp_path, max_steps=-1, num_train_epochs=2, eval_strategy="epoch", save_steps=8,
                     load_best_model_at_end=True, greater_is_better=False)
    trainer = scripted_trainer(args, {8: 0.25, 16: 0.5})
    trainer.train()
    out = tmp_path / "out"
    assert checkpoints(tmp_path) == ["checkpoint-8", "checkpoint-16"]
    assert (trainer.state.best_global_step, trainer.state.best_model_checkpoint) == (8, str(out / "checkpoint-8"))
    assert same_weights(trainer.model, saved_weights(out / "checkpoint-8"))


def test_load_best_after_early_stopping(tmp_path, caplog):
    args = make_args(tmp_path, max_steps=20, load_best_model_at_end=True, greater_is_better=False,
                     early_stopping_patience=2)
    trainer = scripted_trainer(args, {2: 1.0, 4: 0.5, 6: 0.25, 8: 0.5, 10: 0.75, 12: 0.125})
    with caplog.at_level(logging.INFO, logger="hooktrain"):
        result = trainer.train()
    assert result.global_step == 10
    assert trainer.state.stop_reason.startswith("early stopping: eval_score did not improve")
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-5", "checkpoint-6",
                                     "checkpoint-10"]
    assert same_weights(trainer.model, saved_weights(tmp_path / "out" / "checkpoint-6"))
    assert "loaded the best model from step 6 (eval_score=0.25)" in caplog.text


def test_metric_name_with_eval_prefix(tmp_path):
    args = make_args(tmp_path, metric_for_best_model="eval_score", save_strategy="no", max_steps=4)
    trainer = scripted_trainer(args, {2: 0.5, 4: 1.0})
    trainer.train()
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (1.0, 4)


def test_missing_metric_fails_at_the_first_evaluation(tmp_path):
    args = make_args(tmp_path, metric_for_best_model="accuracy", save_strategy="no")
    trainer = scripted_trainer(args, {2: 0.5}, name="acc")
    with pytest.raises(MetricNotFoundError) as info:
        trainer.train()
    assert trainer.state.global_step == 2
    message = str(info.value)
    assert "'eval_accuracy' is not in the evaluation's metrics" in message
    assert "eval_acc, eval_loss" in message


def test_metric_without_compute_metrics_rejected_at_construction(tmp_path):
    args = make_args(tmp_path, metric_for_best_model="accuracy")
    with pytest.raises(ArgumentError, match="metric_for_best_model='accuracy' is not produced"):
        Trainer(args=args, **tiny_trainer_parts())
    # loss needs no compute_metrics
    Trainer(args=make_args(tmp_path, metric_for_best_model="loss"), **tiny_trainer_parts())


def test_evaluate_outside_training_does_not_rank(tmp_path):
    args = make_args(tmp_path, metric_for_best_model="loss", save_strategy="no", max_steps=2)
    trainer = Trainer(args=args, **tiny_trainer_parts())
    trainer.evaluate()
    assert trainer.state.best_metric is None
    trainer.train()
    assert trainer.state.best_global_step == 2
    best = trainer.state.best_metric
    trainer.evaluate()
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (best, 2)


def test_best_model_is_restored_with_the_state_on_resume(tmp_path):
    args = make_args(tmp_path, load_best_model_at_end=True, greater_is_better=False)
    scripted_trainer(args, LOWER).train()
    out = tmp_path / "out"
    # a new Trainer resuming from checkpoint-5 knows the best from trainer_state.json
    resumed = scripted_trainer(args, LOWER)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-5"))
    state = resumed.state
    assert (state.best_metric, state.best_global_step) == (0.25, 4)
    assert state.best_model_checkpoint == str(out / "checkpoint-4")
    assert same_weights(resumed.model, saved_weights(out / "checkpoint-4"))
