"""Early stopping: the Monitor and the stopping rule as tables, then real training runs.

The metric is scripted by the global step (``ScriptedMetric``) so every table is exact. Values
and thresholds are binary fractions, so "just under" and "just over" the threshold are exact too.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from helpers import scripted_trainer, tiny_trainer_parts

from hooktrain import ArgumentError, Trainer, TrainingArguments, hookimpl
from hooktrain.core.monitor import MetricNotFoundError, Monitor
from hooktrain.plugins.early_stopping import EarlyStopping

NAN, INF = float("nan"), float("inf")


# ---- Monitor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "greater", "name", "greater_is_better"),
    [
        ("loss", None, "eval_loss", False),
        ("eval_loss", None, "eval_loss", False),
        ("accuracy", None, "eval_accuracy", True),
        ("eval_accuracy", None, "eval_accuracy", True),
        ("nll_loss", None, "eval_nll_loss", False),
        ("loss", True, "eval_loss", True),  # an explicit direction wins over the name
        ("accuracy", False, "eval_accuracy", False),
    ],
)
def test_monitor_normalises_name_and_direction(metric, greater, name, greater_is_better):
    m = Monitor(metric, greater)
    assert m.name == name
    assert m.greater_is_better is greater_is_better


# (greater_is_better, threshold, value, best, improvement?)
IMPROVEMENT_TABLE = [
    # lower is better
    (False, 0.0, 0.75, None, True),
    (False, 0.0, 0.75, 1.0, True),
    (False, 0.0, 1.0, 1.0, False),  # equal is no improvement
    (False, 0.0, 1.25, 1.0, False),
    (False, 0.25, 0.75, 1.0, False),  # exactly the threshold: not more than it
    (False, 0.25, 0.8125, 1.0, False),  # just under the threshold
    (False, 0.25, 0.6875, 1.0, True),  # just over the threshold
    (False, 0.25, 1.5, 1.0, False),  # a big change the wrong way
    # higher is better
    (True, 0.0, 1.25, 1.0, True),
    (True, 0.0, 0.75, 1.0, False),
    (True, 0.25, 1.25, 1.0, False),  # exactly the threshold
    (True, 0.25, 1.1875, 1.0, False),  # just under
    (True, 0.25, 1.3125, 1.0, True),  # just over
    (True, 0.25, 0.5, 1.0, False),
    # non-finite values never improve, whatever the direction
    (False, 0.0, NAN, None, False),
    (False, 0.0, NAN, 1.0, False),
    (False, 0.0, -INF, 1.0, False),
    (True, 0.0, INF, 1.0, False),
]


@pytest.mark.parametrize(("greater", "threshold", "value", "best", "expected"), IMPROVEMENT_TABLE)
def test_monitor_is_improvement(greater, threshold, value, best, expected):
    assert Monitor("m", greater, threshold).is_improvement(value, best) is expected


def test_monitor_missing_metric_lists_available_keys():
    m = Monitor("accuracy")
    with pytest.raises(MetricNotFoundError) as info:
        m.value({"eval_loss": 1.0, "eval_acc": 0.5})
    message = str(info.value)
    assert "'eval_accuracy'" in message
    assert "eval_acc, eval_loss" in message
    assert isinstance(info.value, KeyError)  # code that caught HF's KeyError still works
    assert m.value({"eval_accuracy": 0.25}) == 0.25


def test_monitor_rejects_bad_settings():
    with pytest.raises(ValueError):
        Monitor("")
    with pytest.raises(ValueError):
        Monitor("loss", threshold=-0.5)


# ---- the stopping rule --------------------------------------------------------------------


def run_rule(rule: EarlyStopping, values: list[float]) -> tuple[list[int], int | None, str | None]:
    """Feed *values* at steps 1, 2, …; return the counters, the stop index (1-based) and reason."""
    counters = []
    for i, value in enumerate(values, start=1):
        reason = rule.update(value, step=i)
        counters.append(rule.counter)
        if reason:
            return counters, i, reason
    return counters, None, None


# (greater_is_better, threshold, patience, values, counters after each, stop index or None)
PATIENCE_TABLE = [
    # lower is better, no threshold: equal values count as "no improvement"
    (False, 0.0, 2, [1.0, 0.5, 0.5, 0.5], [0, 0, 1, 2], 4),
    (False, 0.0, 2, [1.0, 0.5, 0.75, 0.25, 0.5, 0.5], [0, 0, 1, 0, 1, 2], 6),
    (False, 0.0, 1, [1.0, 1.0], [0, 1], 2),
    (False, 0.0, 3, [1.0, 0.75, 0.5, 0.25], [0, 0, 0, 0], None),
    # lower is better, threshold 0.25: gains just under it count against the patience
    (False, 0.25, 3, [1.0, 0.8125, 0.75, 0.6875], [0, 1, 2, 0], None),  # 0.3125 > 0.25 resets
    (False, 0.25, 3, [1.0, 0.8125, 0.875, 0.75], [0, 1, 2, 3], 4),  # 0.25 is not more than 0.25
    # the best only moves on a counted improvement: small steps add up (not HF's moving best)
    (False, 0.25, 4, [1.0, 0.875, 0.8125, 0.6875], [0, 1, 2, 0], None),
    # higher is better, threshold 0.25
    (True, 0.25, 2, [1.0, 1.1875, 1.3125, 1.5], [0, 1, 0, 1], None),
    (True, 0.25, 2, [1.0, 1.1875, 1.25], [0, 1, 2], 3),
    (True, 0.0, 2, [0.5, 0.25, 0.75, 0.75, 0.5], [0, 1, 0, 1, 2], 5),
]


@pytest.mark.parametrize(("greater", "threshold", "patience", "values", "counters", "stop"), PATIENCE_TABLE)
def test_patience_and_threshold_table(greater, threshold, patience, values, counters, stop):
    rule = EarlyStopping(Monitor("m", greater, threshold), patience=patience)
    got_counters, got_stop, reason = run_rule(rule, values)
    assert got_counters == counters
    assert got_stop == stop
    if stop is not None:
        assert reason.startswith(f"early stopping: eval_m did not improve by more than {threshold} for {patience}")


def test_patience_reason_names_best_and_its_step():
    rule = EarlyStopping(Monitor("loss"), patience=3)
    _, stop, reason = run_rule(rule, [0.5, 0.412, 0.5, 0.45, 0.42])
    assert stop == 5
    assert reason == (
        "early stopping: eval_loss did not improve by more than 0.0 for 3 evaluations "
        "(best 0.412 at step 2)"
    )


# (greater_is_better, stopping threshold, divergence threshold, values, stop index, reason start)
THRESHOLD_TABLE = [
    (False, 0.25, None, [1.0, 0.5, 0.25, 0.125], 4, "early stopping: eval_m=0.125 reached the stopping threshold 0.25"),
    (True, 0.75, None, [0.5, 0.75, 0.875], 3, "early stopping: eval_m=0.875 reached the stopping threshold 0.75"),
    (False, None, 2.0, [1.0, 2.0, 2.5], 3, "early stopping: eval_m=2.5 diverged beyond 2.0"),
    (True, None, 0.25, [0.5, 0.25, 0.125], 3, "early stopping: eval_m=0.125 diverged beyond 0.25"),
    (False, 0.25, 2.0, [1.0, 0.75, 1.5], None, None),
]


@pytest.mark.parametrize(("greater", "stop_at", "diverge_at", "values", "stop", "reason"), THRESHOLD_TABLE)
def test_stopping_and_divergence_thresholds(greater, stop_at, diverge_at, values, stop, reason):
    rule = EarlyStopping(Monitor("m", greater), patience=None, stopping_threshold=stop_at,
                         divergence_threshold=diverge_at)
    _, got_stop, got_reason = run_rule(rule, values)
    assert got_stop == stop
    assert got_reason == reason


@pytest.mark.parametrize(("value", "word"), [(NAN, "nan"), (INF, "inf"), (-INF, "-inf")])
def test_non_finite_metric_stops(value, word):
    rule = EarlyStopping(Monitor("loss"), patience=10)
    _, stop, reason = run_rule(rule, [1.0, value])
    assert (stop, reason) == (2, f"early stopping: eval_loss is {word}")
    assert rule.best == 1.0  # a non-finite value never becomes the best


def test_non_finite_metric_only_counts_without_check_finite():
    rule = EarlyStopping(Monitor("loss"), patience=2, check_finite=False)
    counters, stop, reason = run_rule(rule, [1.0, NAN, NAN])
    assert counters == [0, 1, 2]
    assert stop == 3 and "did not improve" in reason


def test_rule_state_round_trips_and_checks_the_metric():
    rule = EarlyStopping(Monitor("loss"), patience=3)
    run_rule(rule, [1.0, 1.5])
    saved = json.loads(json.dumps(rule.state_dict()))
    assert saved == {"metric": "eval_loss", "best": 1.0, "best_step": 1, "counter": 1}
    again = EarlyStopping(Monitor("eval_loss"), patience=3)
    again.load_state_dict(saved)
    assert (again.best, again.best_step, again.counter) == (1.0, 1, 1)
    other = EarlyStopping(Monitor("accuracy"), patience=3)
    other.load_state_dict(saved)  # another metric's count means nothing here
    assert (other.best, other.counter) == (None, 0)


# ---- configuration errors come before training ----------------------------------------------


def test_early_stopping_without_evaluation_is_rejected(tmp_path):
    with pytest.raises(ArgumentError, match="early_stopping_patience=2 needs an evaluation"):
        TrainingArguments(output_dir=str(tmp_path), early_stopping_patience=2, report_to="none")


def test_unknown_metric_without_compute_metrics_is_rejected_at_construction(tmp_path):
    args = make_args(tmp_path, early_stopping_patience=2, metric_for_best_model="accuracy")
    with pytest.raises(ArgumentError, match="metric_for_best_model='accuracy' is not produced"):
        Trainer(args=args, **tiny_trainer_parts())


def test_metric_defaults_to_eval_loss(tmp_path):
    args = make_args(tmp_path, early_stopping_patience=2)
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False
    trainer = Trainer(args=args, **tiny_trainer_parts())
    rule = trainer.plugin_manager.get_plugin("early_stopping.rule")
    assert rule.monitor.name == "eval_loss" and not rule.monitor.greater_is_better


def test_inactive_without_the_arguments(tmp_path):
    trainer = Trainer(args=make_args(tmp_path), **tiny_trainer_parts())
    assert trainer.plugin_manager.get_plugin("early_stopping.rule") is None


# ---- real training runs ---------------------------------------------------------------------


def make_args(tmp_path: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=20, per_device_train_batch_size=4,
        eval_strategy="steps", eval_steps=2, save_strategy="no", logging_steps=2,
        report_to="none", disable_tqdm=True, learning_rate=1e-2,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)



def test_training_stops_after_patience(tmp_path, caplog):
    args = make_args(tmp_path, early_stopping_patience=3, metric_for_best_model="score",
                     greater_is_better=True, early_stopping_threshold=0.125)
    # steps 2, 4: improvements; 6: +0.125 (not more than the threshold); 8, 10: worse
    trainer = scripted_trainer(args, {2: 0.5, 4: 0.75, 6: 0.875, 8: 0.5, 10: 0.5, 12: 1.0})
    with caplog.at_level(logging.INFO, logger="hooktrain"):
        result = trainer.train()
    reason = ("early stopping: eval_score did not improve by more than 0.125 for 3 evaluations "
              "(best 0.75 at step 4)")
    assert result.global_step == 10
    assert trainer.state.stop_reason == reason
    assert f"stopping at step 10: {reason}" in caplog.text
    assert any(e.get("stop_reason") == reason and e["step"] == 10 for e in trainer.state.log_history)


def test_training_stops_on_nan_metric(tmp_path):
    args = make_args(tmp_path, early_stopping_patience=5)  # monitors eval_loss
    nan_at = {6}

    class NanLoss:  # a real plugin that replaces the evaluation loss with NaN at step 6
        name = "nan-eval"

        @hookimpl(wrapper=True)
        def evaluation_loop(self, trainer):
            out = yield
            if trainer.state.global_step in nan_at:
                out.loss = NAN
            return out

    trainer = Trainer(args=args, plugins=[NanLoss()], **tiny_trainer_parts())
    result = trainer.train()
    assert result.global_step == 6
    assert trainer.state.stop_reason == "early stopping: eval_loss is nan"
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4, 6] and math.isnan(evals[-1]["eval_loss"])


def test_stopping_threshold_ends_a_run(tmp_path):
    args = make_args(tmp_path, early_stopping_stopping_threshold=0.25, metric_for_best_model="score",
                     greater_is_better=False)
    trainer = scripted_trainer(args, {2: 1.0, 4: 0.5, 6: 0.125, 8: 0.0})
    assert trainer.train().global_step == 6
    assert trainer.state.stop_reason == "early stopping: eval_score=0.125 reached the stopping threshold 0.25"


def test_evaluate_outside_training_does_not_count(tmp_path):
    args = make_args(tmp_path, early_stopping_patience=1, max_steps=4)
    trainer = Trainer(args=args, **tiny_trainer_parts())
    rule = trainer.plugin_manager.get_plugin("early_stopping.rule")
    trainer.evaluate()
    trainer.evaluate()
    assert (rule.best, rule.counter) == (None, 0)


# ---- non-finite training losses are counted in the logs -------------------------------------


@pytest.mark.parametrize("filtered", [True, False])
def test_nan_loss_step_is_counted_and_filtered(tmp_path, filtered):
    args = make_args(tmp_path, eval_strategy="no", max_steps=8, logging_steps=4,
                     logging_nan_inf_filter=filtered, learning_rate=1e-3)
    seen: dict[int, float] = {}
    holder: dict[str, Trainer] = {}

    def compute_loss(model, batch):
        step = holder["t"].state.global_step + 1  # the step this forward pass belongs to
        loss = model(**batch)["loss"]
        if step == 3:  # a NaN value; the gradient stays that of the finite loss
            loss = loss + NAN
        seen[step] = float(loss.detach())
        return loss

    trainer = Trainer(args=args, compute_loss=compute_loss, **tiny_trainer_parts())
    holder["t"] = trainer
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logs] == [4, 8]
    first, second = logs
    assert first["nonfinite_steps"] == 1 and "nonfinite_steps" not in second
    assert trainer.state.nonfinite_steps == 1
    assert math.isnan(seen[3]) and all(math.isfinite(seen[s]) for s in (1, 2, 4, 5, 6, 7, 8))
    if filtered:
        assert first["loss"] == pytest.approx((seen[1] + seen[2] + seen[4]) / 3, rel=1e-6)
    else:
        assert math.isnan(first["loss"])
    assert second["loss"] == pytest.approx(sum(seen[s] for s in (5, 6, 7, 8)) / 4, rel=1e-6)


# ---- resume in the middle of a patience count -------------------------------------------------


class HaltAt:
    """A real plugin that ends a run at a given step, as an interruption would."""

    name = "halt"

    def __init__(self, step: int):
        self.step = step

    @hookimpl(tryfirst=True)
    def should_stop(self, state):
        return "halted by the test" if state.global_step == self.step else None


# lower is better: best 0.5 at step 4, then no improvement
RESUME_VALUES = {2: 1.0, 4: 0.5, 6: 0.75, 8: 0.75, 10: 0.75, 12: 0.75, 14: 0.75, 16: 0.75}


def resume_args(tmp_path: Path, **overrides) -> TrainingArguments:
    return make_args(tmp_path, save_strategy="steps", save_steps=2, early_stopping_patience=3,
                     metric_for_best_model="score", greater_is_better=False, **overrides)


@pytest.mark.parametrize("restore", [True, False])
def test_resume_continues_the_patience_count(tmp_path, restore):
    args = resume_args(tmp_path, restore_callback_states_from_checkpoint=restore)
    first = scripted_trainer(args, RESUME_VALUES, plugins=[HaltAt(6)])
    assert first.train().global_step == 6
    assert first.state.stop_reason == "halted by the test"
    checkpoint = tmp_path / "out" / "checkpoint-6"
    # the checkpoint of step 6 already counts step 6's evaluation
    saved = json.loads((checkpoint / "plugin_state.json").read_text())["early_stopping"]
    assert saved == {"metric": "eval_score", "best": 0.5, "best_step": 4, "counter": 1}

    second = scripted_trainer(args, RESUME_VALUES)
    result = second.train(resume_from_checkpoint=str(checkpoint))
    if restore:  # steps 8 and 10 bring the count to 3
        assert result.global_step == 10
        assert second.state.stop_reason == (
            "early stopping: eval_score did not improve by more than 0.0 for 3 evaluations "
            "(best 0.5 at step 4)")
    else:  # a fresh count: step 8 is its first best, 10, 12, 14 count
        assert result.global_step == 14
        assert second.state.stop_reason.endswith("for 3 evaluations (best 0.75 at step 8)")
    # the stop step's checkpoint is written before the stop decision (as in HF); save_state() keeps it
    second.save_state()
    final = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert final["stop_reason"] == second.state.stop_reason
    assert final["log_history"][-2]["stop_reason"] == second.state.stop_reason  # before the summary
