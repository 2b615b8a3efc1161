"""Hugging Face ``TrainerCallback``s run unchanged in hooktrain (the hf_callbacks plugin).

Where Hugging Face's own ``Trainer`` can run the same configuration here (CPU, offline, the tiny
regressor), the two are compared: event order, stop step, logged steps and checkpoint names.
Tracker callbacks write for real and are read back with each tracker's reader.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers  # noqa: E402
from helpers import RegressionDataset, ScriptedMetric, TinyRegressor, checkpoint_steps  # noqa: E402
from transformers import EarlyStoppingCallback, TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402

from hooktrain import ArgumentError, Trainer, TrainingArguments  # noqa: E402
from hooktrain.plugins.hf_callbacks import ADAPTER_NAME, STATE_KEY  # noqa: E402

EVENTS = ("on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
          "on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
          "on_step_end", "on_evaluate", "on_predict", "on_save", "on_log", "on_prediction_step")
#: synchronous saves, so that on_save comes right after its step's save, as in HF
SYNC = {"save_async": False}


class Recorder(TrainerCallback):
    """Records ``(event, global_step)`` and the keyword arguments of every event."""

    def __init__(self):
        self.events: list[tuple[str, int]] = []
        self.kwargs: dict[str, set[str]] = {}
        self.logs: list[dict] = []


def _recording(event):
    def method(self, args, state, control, **kwargs):
        self.events.append((event, state.global_step))
        self.kwargs.setdefault(event, set()).update(kwargs)
        if event == "on_log":
            self.logs.append(dict(kwargs["logs"]))
    return method


for _event in EVENTS:
    setattr(Recorder, _event, _recording(_event))


def parts(seed: int = 0) -> dict:
    return {"model": TinyRegressor(seed=seed), "train_dataset": RegressionDataset(32),
            "eval_dataset": RegressionDataset(8, seed=1)}


def ours(tmp_path: Path, callbacks=(), name: str = "ours", compute_metrics=None, plugins=(), **kw) -> Trainer:
    settings = dict(output_dir=str(tmp_path / name), report_to="none", disable_tqdm=True, overwrite_output_dir=True,
                    per_device_train_batch_size=4, per_device_eval_batch_size=4, **SYNC)
    args = TrainingArguments(**{**settings, **kw})
    trainer = Trainer(args=args, callbacks=list(callbacks), compute_metrics=compute_metrics,
                      plugins=plugins, **parts())
    if isinstance(compute_metrics, ScriptedMetric):
        compute_metrics.trainer = trainer
    return trainer


def theirs(tmp_path: Path, callbacks=(), compute_metrics=None, **kw) -> transformers.Trainer:
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), report_to="none", disable_tqdm=True,
                                          use_cpu=True, per_device_train_batch_size=4,
                                          per_device_eval_batch_size=4, **kw)
    trainer = transformers.Trainer(args=args, callbacks=list(callbacks), compute_metrics=compute_metrics, **parts())
    if isinstance(compute_metrics, ScriptedMetric):
        compute_metrics.trainer = trainer
    return trainer


SCHEDULE = dict(max_steps=6, gradient_accumulation_steps=2, logging_steps=2, eval_strategy="steps",
                eval_steps=3, save_strategy="steps", save_steps=3)


def test_events_come_in_hf_order_with_hf_arguments(tmp_path):
    """Same schedule (2 epochs of 4 and 2 steps, accumulation 2, logs, evaluations, saves) under
    both trainers: the same events, at the same steps, in the same order."""
    mine, hf = Recorder(), Recorder()
    ours(tmp_path, [mine], **SCHEDULE).train()
    theirs(tmp_path, [hf], **SCHEDULE).train()
    assert mine.events == hf.events
    assert ("on_substep_end", 0) in mine.events and ("on_prediction_step", 3) in mine.events
    standard = {"model", "processing_class", "optimizer", "lr_scheduler", "train_dataloader", "eval_dataloader"}
    for event, names in hf.kwargs.items():
        assert mine.kwargs[event] == names, event
    assert mine.kwargs["on_log"] == standard | {"logs"} and mine.kwargs["on_evaluate"] == standard | {"metrics"}
    # the same log entries (keys of the training and evaluation logs) at the same steps
    assert [sorted(k for k in log if k in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch"))
            for log in mine.logs[:-1]] == [
        sorted(k for k in log if k in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch"))
        for log in hf.logs[:-1]]
    assert checkpoint_steps(tmp_path / "ours") == checkpoint_steps(tmp_path / "hf") == [3, 6]


# lower is better; the best is 0.5 at step 4, then no improvement
SCORES = {2: 1.0, 4: 0.5, 6: 0.6, 8: 0.7, 10: 0.4, 12: 0.3, 14: 0.2, 16: 0.1}
EARLY = dict(max_steps=16, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
             metric_for_best_model="score", greater_is_better=False, load_best_model_at_end=True,
             logging_steps=2)


def test_early_stopping_callback_stops_at_hf_step(tmp_path):
    mine = ours(tmp_path, [EarlyStoppingCallback(early_stopping_patience=2)],
                compute_metrics=ScriptedMetric(SCORES), **EARLY)
    hf = theirs(tmp_path, [EarlyStoppingCallback(early_stopping_patience=2)],
                compute_metrics=ScriptedMetric(SCORES), **EARLY)
    mine.train()
    hf.train()
    assert mine.state.global_step == hf.state.global_step == 8
    assert mine.state.stop_reason == "EarlyStoppingCallback set control.should_training_stop in on_evaluate"
    assert mine.state.best_global_step == hf.state.best_global_step == 4
    assert checkpoint_steps(tmp_path / "ours") == checkpoint_steps(tmp_path / "hf") == [2, 4, 6, 8]
    steps = {name: [e["step"] for e in trainer.state.log_history if name in e]
             for trainer in (mine,) for name in ("loss", "eval_score")}
    assert steps == {name: [e["step"] for e in hf.state.log_history if name in e] for name in ("loss", "eval_score")}
    for out in ("ours", "hf"):  # the best checkpoint records itself as the best, in both
        recorded = json.loads((tmp_path / out / "checkpoint-4" / "trainer_state.json").read_text())
        assert Path(recorded["best_model_checkpoint"]).name == "checkpoint-4", out
    saved = json.loads((tmp_path / "ours" / "checkpoint-8" / "plugin_state.json").read_text())[STATE_KEY]
    assert saved["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 2}


class EveryFlag(TrainerCallback):
    """Uses each control flag once, always answering with a new ``TrainerControl``."""

    def on_step_end(self, args, state, control, **kwargs):
        new = copy.copy(control)
        step = state.global_step
        if step == 1:
            new.should_log = True  # logging_steps is 100: only this request logs
        if step == 2:
            new.should_save = True  # save_strategy="no": only this request saves
        if step == 3:
            new.should_evaluate = True  # eval_strategy="no": only this request evaluates
        if step == 5:
            new.should_epoch_stop = True  # epoch 0 ends after 5 of its 8 steps
        if step == 10:
            new.should_training_stop = True
        return new


FLAGS = dict(num_train_epochs=3, logging_steps=100, eval_strategy="no", save_strategy="no")


def test_a_callback_drives_every_control_flag_as_in_hf(tmp_path):
    rec_mine, rec_hf = Recorder(), Recorder()
    mine = ours(tmp_path, [EveryFlag(), rec_mine], **FLAGS)
    hf = theirs(tmp_path, [EveryFlag(), rec_hf], **FLAGS)
    mine.train()
    hf.train()
    assert mine.state.global_step == hf.state.global_step == 10
    assert mine.state.stop_reason == "EveryFlag set control.should_training_stop in on_step_end"
    assert checkpoint_steps(tmp_path / "ours") == checkpoint_steps(tmp_path / "hf") == [2]

    def when(history, key):
        return [(e["step"], e["epoch"]) for e in history if key in e]

    assert when(mine.state.log_history, "loss") == when(hf.state.log_history, "loss") == [(1, 0.125)]
    assert when(mine.state.log_history, "eval_loss") == when(hf.state.log_history, "eval_loss") == [(3, 0.375)]
    epochs = [(e, s) for e, s in rec_mine.events if e in ("on_epoch_begin", "on_epoch_end")]
    assert epochs == [(e, s) for e, s in rec_hf.events if e in ("on_epoch_begin", "on_epoch_end")]
    assert epochs == [("on_epoch_begin", 0), ("on_epoch_end", 5), ("on_epoch_begin", 5), ("on_epoch_end", 10)]
    assert rec_mine.events == rec_hf.events


@pytest.mark.skipif(not hasattr(Trainer, "predict"), reason="this Trainer has no predict()")
def test_predict_fires_on_prediction_step_and_on_predict(tmp_path):
    rec = Recorder()
    trainer = ours(tmp_path, [rec], max_steps=2)
    trainer.predict(RegressionDataset(8, seed=2))
    assert [e for e, _ in rec.events] == ["on_init_end", "on_prediction_step", "on_prediction_step", "on_predict"]
    assert rec.kwargs["on_predict"] >= {"metrics", "eval_dataloader", "model"}


class SeesCheckpoints(TrainerCallback):
    """What an artifact upload does in on_save: open output_dir/checkpoint-{state.global_step}."""

    def __init__(self):
        self.seen = []

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.seen.append((state.global_step, sorted(p.name for p in path.iterdir())))


def test_on_save_names_the_complete_checkpoint_with_background_saves(tmp_path):
    callback = SeesCheckpoints()
    trainer = ours(tmp_path, [callback], max_steps=6, save_strategy="steps", save_steps=2, save_async=True)
    trainer.train()
    assert [step for step, _ in callback.seen] == [2, 4, 6]
    for step, files in callback.seen:  # complete when announced: the same files as on disk now
        assert files == sorted(p.name for p in (tmp_path / "ours" / f"checkpoint-{step}").iterdir())
        assert "model.safetensors" in files and "trainer_state.json" in files


class LogsOnly(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_log(self, args, state, control, logs, **kwargs):
        self.steps.append(state.global_step)


def test_a_callback_of_one_event_changes_nothing_else(tmp_path):
    """The other events are TrainerCallback's no-ops and are skipped; the schedule is the arguments'."""
    callback = LogsOnly()
    trainer = ours(tmp_path, [callback], max_steps=6, logging_steps=2)
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.state.stop_reason is None
    assert callback.steps == [e["step"] for e in trainer.state.log_history] == [2, 4, 6, 6]


class StopAfterSecondEpoch(TrainerCallback):
    def on_epoch_end(self, args, state, control, **kwargs):
        if state.epoch >= 2:
            control.should_training_stop = True


def test_a_stop_asked_at_an_epoch_end_ends_the_run_there_as_in_hf(tmp_path):
    mine = ours(tmp_path, [StopAfterSecondEpoch()], num_train_epochs=5, save_strategy="epoch")
    hf = theirs(tmp_path, [StopAfterSecondEpoch()], num_train_epochs=5, save_strategy="epoch")
    mine.train()
    hf.train()
    assert mine.state.global_step == hf.state.global_step == 16  # 8 steps per epoch
    assert mine.state.stop_reason == "StopAfterSecondEpoch set control.should_training_stop in on_epoch_end"
    assert checkpoint_steps(tmp_path / "ours") == checkpoint_steps(tmp_path / "hf") == [8, 16]


def test_args_are_hf_training_arguments_with_our_values(tmp_path):
    trainer = ours(tmp_path, [Recorder()], report_to=["tensorboard", "mlflow"], eval_strategy="epoch",
                   save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="accuracy",
                   compute_metrics=lambda p: {"accuracy": 1.0}, logging_dir=str(tmp_path / "logs"))
    args = trainer.plugin_manager.get_plugin(ADAPTER_NAME).args
    assert isinstance(args, transformers.TrainingArguments)
    theirs_dict, ours_dict = args.to_dict(), trainer.args.to_dict()
    shared = set(theirs_dict) & set(ours_dict)
    assert {"output_dir", "logging_dir", "report_to", "metric_for_best_model", "greater_is_better",
            "eval_strategy", "load_best_model_at_end", "optim", "tf32"} <= shared
    assert {k: theirs_dict[k] for k in shared} == {k: ours_dict[k] for k in shared}
    assert args.report_to == ["tensorboard", "mlflow"] and args.greater_is_better is True
    assert args.eval_strategy == transformers.IntervalStrategy.EPOCH and args.logging_dir == str(tmp_path / "logs")


class Counting(TrainerCallback, ExportableState):
    """A stateful callback: counts the optimizer steps it saw."""

    def __init__(self, label: str = "a"):
        self.label = label
        self.steps_seen = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_seen += 1

    def state(self) -> dict:
        return {"args": {"label": self.label}, "attributes": {"steps_seen": self.steps_seen}}


def test_stateful_callbacks_resume_their_state(tmp_path):
    first = Counting()
    stop = EarlyStoppingCallback(early_stopping_patience=5)
    kw = dict(save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=2,
              metric_for_best_model="score", greater_is_better=False)
    ours(tmp_path, [first, stop], compute_metrics=ScriptedMetric({2: 1.0, 4: 2.0}), max_steps=4, **kw).train()
    assert first.steps_seen == 4 and stop.early_stopping_patience_counter == 1

    second, stop2 = Counting(), EarlyStoppingCallback(early_stopping_patience=5)
    resumed = ours(tmp_path, [], compute_metrics=ScriptedMetric({6: 3.0, 8: 4.0}), max_steps=8, **kw)
    resumed.add_callback(second)  # added after the Trainer was built: restored all the same
    resumed.add_callback(stop2)
    resumed.train(resume_from_checkpoint=True)
    assert second.steps_seen == 4 + 4
    assert stop2.early_stopping_patience_counter == 1 + 2


def test_add_pop_remove_callback(tmp_path, caplog):
    trainer = ours(tmp_path, max_steps=2)
    assert trainer.plugin_manager.get_plugin(ADAPTER_NAME) is None  # no callback: nothing imported or run
    trainer.add_callback(Recorder)  # a class is instantiated
    rec = trainer.callbacks[0]
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        trainer.add_callback(Recorder())
    assert "a second Recorder" in caplog.text
    second = trainer.pop_callback(Recorder)
    assert second is rec and trainer.callbacks != [] and trainer.pop_callback(Counting) is None
    trainer.remove_callback(trainer.callbacks[0])
    trainer.add_callback(rec)
    with pytest.raises(ValueError, match="not one of the callbacks"):
        trainer.remove_callback(Recorder())
    trainer.train()
    names = [e for e, _ in rec.events]
    assert names[0] == "on_train_begin" and names[-1] == "on_train_end"  # added after __init__: no on_init_end
    assert names.count("on_step_end") == 2


def test_callbacks_that_cannot_run_are_refused_at_construction(tmp_path):
    from transformers.trainer_jit_checkpoint import JITCheckpointCallback

    with pytest.raises(ArgumentError) as info:
        ours(tmp_path, [object(), JITCheckpointCallback()], report_to=["nope"])
    text = str(info.value)
    assert "callbacks[0]=object is not a transformers.TrainerCallback" in text
    assert "callbacks[1]=JITCheckpointCallback needs Hugging Face's Trainer object" in text
    assert "preemption_signals" in text and "nope" in text  # every problem at once


class ReturnsTrue(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        return True


def test_a_callback_returning_something_else_than_a_control_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"ReturnsTrue.on_step_end returned True; a callback returns None or a TrainerControl"):
        ours(tmp_path, [ReturnsTrue()], max_steps=2).train()


def test_printer_and_progress_callbacks_run(tmp_path, capsys, caplog):
    from transformers import PrinterCallback, ProgressCallback

    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        ours(tmp_path, [ProgressCallback(), PrinterCallback()], max_steps=4, logging_steps=2).train()
    out = capsys.readouterr()
    printed = [line for line in out.out.splitlines() if line.startswith("{")]
    assert any("'loss'" in line for line in printed) and any("'train_loss'" in line for line in printed)
    assert "4/4" in out.err  # the progress bar reached the end
    assert "PrinterCallback prints every log" in caplog.text


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_store):
    """One run with HF's TensorBoard, MLflow and W&B callbacks (hooktrain's reporters off)."""
    import wandb
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    root = tmp_path_factory.mktemp("tracked")
    mlflow_store(root / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MLFLOW_EXPERIMENT_NAME": "hf-callbacks",
           "WANDB_DIR": str(root), "WANDB_PROJECT": "hf-callbacks", "TENSORBOARD_LOGGING_DIR": str(root / "tb")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        trainer = ours(root, [TensorBoardCallback(), MLflowCallback(), WandbCallback()], run_name="hf-cb",
                       max_steps=6, logging_steps=2, eval_strategy="steps", eval_steps=3)
        trainer.train()
        wandb.finish()
    return root, trainer


def _series(trainer, key):
    return [(e["step"], e[key]) for e in trainer.state.log_history if key in e]


def test_tensorboard_callback_writes_event_files_read_back(tracked):
    from readback import read_tensorboard, same_series

    root, trainer = tracked
    run = read_tensorboard(root / "tb")
    assert same_series(run["scalars"]["train/loss"], _series(trainer, "loss"))
    assert same_series(run["scalars"]["eval/loss"], _series(trainer, "eval_loss"))


def test_mlflow_callback_writes_to_sqlite_read_back(tracked):
    from readback import read_mlflow, same_series

    root, trainer = tracked
    run = read_mlflow(f"sqlite:///{root / 'mlflow.db'}", "hf-cb")
    assert run["status"] == "FINISHED" and run["experiment_name"] == "hf-callbacks"
    assert same_series(run["scalars"]["loss"], _series(trainer, "loss"))
    assert same_series(run["scalars"]["eval_loss"], _series(trainer, "eval_loss"))
    assert run["params"]["output_dir"] == trainer.args.output_dir and run["params"]["max_steps"] == "6"


def test_wandb_callback_runs_offline_read_back(tracked):
    from readback import read_wandb, same_series

    root, trainer = tracked
    run = read_wandb(root)
    assert run["run_name"] == "hf-cb" and run["project"] == "hf-callbacks"
    # WandbCallback logs its own step counter and train/global_step beside each row
    global_step = {row: int(step) for row, step in run["scalars"]["train/global_step"]}
    for name, key in (("train/loss", "loss"), ("eval/loss", "eval_loss")):
        got = [(global_step[row], value) for row, value in run["scalars"][name]]
        assert same_series(got, _series(trainer, key)), name
    assert run["params"]["output_dir"] == trainer.args.output_dir


def test_tracker_callback_beside_our_reporter_warns(tmp_path, caplog):
    from transformers.integrations import TensorBoardCallback

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=["tensorboard"])
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        trainer = Trainer(args=args, callbacks=[TensorBoardCallback], **parts())
        trainer.plugin_manager.get_plugin(ADAPTER_NAME).begin(trainer)
    assert "TensorBoardCallback and report_to=['tensorboard'] both log to tensorboard" in caplog.text


def test_hooktrain_stays_free_of_transformers_without_callbacks(tmp_path, fork_servers):
    code = (
        "import sys, torch, hooktrain\n"
        f"args = hooktrain.TrainingArguments(output_dir={str(tmp_path / 'o')!r}, report_to='none', max_steps=1)\n"
        "data = [{'x': torch.zeros(2), 'labels': torch.tensor(0.0)}] * 4\n"
        "loss = lambda m, b: ((m(b['x']).squeeze(-1) - b['labels']) ** 2).mean()\n"
        "hooktrain.Trainer(torch.nn.Linear(2, 1), args, train_dataset=data, compute_loss=loss).train()\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        # without transformers installed, callbacks are a clear error
        "class NoTransformers:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'transformers': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoTransformers())\n"
        "try:\n"
        "    hooktrain.Trainer(torch.nn.Linear(2, 1), args, train_dataset=data, compute_loss=loss, callbacks=[object()])\n"
        "except hooktrain.ArgumentError as error:\n"
        "    assert \"needs transformers: pip install 'hooktrain[hf]'\" in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {**os.environ, "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1"}
    # python -c, forked from a process that imported torch and hooktrain only (tests/forkserver.py)
    done = fork_servers(env).run("-c", code=code, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
