"""The reporting bridge end to end: a real Trainer, the real trackers (offline), read back.

Every run here goes through ``Trainer.train()``; what each tracker stored is read back with
its own reader (``tests/readback.py``) and compared with ``state.log_history``: the exact
series and steps, the params, the run name and the end status. Around that: a reporter that
raises, one that is slow, one that hangs at the end, an installed third-party reporter,
``report_to="all"`` and a missing tracker library.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from pathlib import Path

import pytest
from helpers import tiny_trainer_parts, tracker_series
from readback import read_comet, read_mlflow, read_tensorboard, read_wandb, same_series

import hooktrain
from hooktrain import HooktrainError, PluginLoadError, Trainer, TrainingArguments, hookimpl
from hooktrain.plugins.reporting import ReporterError, active_reporters, namespaced

REPO = Path(__file__).resolve().parents[1]
FOUR = ["tensorboard", "wandb", "comet", "mlflow"]


# ---- helpers ------------------------------------------------------------------------------


def make_args(out: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(out), run_name="run-e2e", max_steps=6, logging_steps=2,
        eval_strategy="steps", eval_steps=3, per_device_train_batch_size=4,
        save_strategy="no", disable_tqdm=True, learning_rate=0.05, report_to=["tensorboard"],
    )
    values.update(overrides)
    return TrainingArguments(**values)


def merged(series: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """*series* with repeated identical points merged (wandb keeps one row per step, mlflow
    one point per identical (step, value, time))."""
    out: list[tuple[int, float]] = []
    for point in series:
        if point not in out:
            out.append(point)
    return out


def assert_same_scalars(got: dict, expected: dict, rel: float, merge: bool = False) -> None:
    assert sorted(got) == sorted(expected)
    for key, points in expected.items():
        want, have = (merged(points), merged(got[key])) if merge else (points, got[key])
        assert same_series(have, want, rel=rel), (key, have, want)


def read_all(out: Path, run_name: str) -> dict[str, dict]:
    """Each tracker's run, read from where the reporters write by default."""
    return {
        "tensorboard": read_tensorboard(out / "runs"),
        "wandb": read_wandb(out),
        "comet": read_comet(out / "comet"),
        "mlflow": read_mlflow(f"sqlite:///{out / 'mlflow.db'}", run_name),
    }


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory, mlflow_store):
    """An MLflow SQLite store with its schema and the "hooktrain" experiment created once.

    Creating the schema takes seconds; each test copies this file to ``<output_dir>/mlflow.db``,
    where the reporter's default store is, and only opens it.
    """
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{mlflow_store(path)}").create_experiment("hooktrain")
    return path


def with_mlflow_store(out: Path, template: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, out / "mlflow.db")


class Recorder:
    """A reporter plugin object: remembers every call; optionally raises on call *fail_on* or sleeps."""

    def __init__(self, name: str = "recorder", fail_on: int | None = None, delay: float = 0.0):
        self.name = name
        self.fail_on = fail_on
        self.delay = delay
        self.calls: list[tuple] = []
        self.threads: set[str] = set()

    def _call(self, *record) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(record)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError(f"{self.name} broke on call {self.fail_on}")

    @hookimpl
    def report_run_start(self, run_name, config):
        self._call("start", run_name, config["learning_rate"])

    @hookimpl
    def report_scalars(self, scalars, step):
        self._call("scalars", step, dict(scalars))

    @hookimpl
    def report_run_end(self, status):
        self._call("end", status)

    def series(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for call in self.calls:
            if call[0] == "scalars":
                for key, value in call[2].items():
                    out.setdefault(key, []).append((call[1], value))
        return out


class Registers:
    """A plugin that registers a reporter name whose factory returns *reporter* (or is *factory*)."""

    def __init__(self, name: str, reporter: object = None, factory=None):
        self.reporter_name = name
        self.factory = factory or (lambda args: reporter)

    @hookimpl
    def register_reporters(self, register):
        register(self.reporter_name, self.factory)


class FailAt:
    """Raises in ``on_step_end`` at *step* (a crashing run)."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def on_step_end(self, state):
        if state.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


class StopAt:
    """Answers ``should_stop`` at *step* (a stopped run)."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def should_stop(self, state):
        return f"enough at {self.step}" if state.global_step >= self.step else None


def reporter_warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # never share our wandb-core
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *(p for p in [extra.pop("PYTHONPATH", "")] if p)])
    env.update(extra)
    return env


# ---- the four trackers, end to end ----------------------------------------------------------


def test_four_trackers_record_the_exact_run(chdir_tmp, mlflow_db):
    out = chdir_tmp / "out"
    with_mlflow_store(out, mlflow_db)
    trainer = Trainer(args=make_args(out, report_to=FOUR), **tiny_trainer_parts())
    result = trainer.train()
    assert result.global_step == 6

    history = trainer.state.log_history
    expected = tracker_series(history)
    # the series the issue names, spelt out: train/loss at the logging steps, eval/loss at the eval steps
    assert [s for s, _ in expected["train/loss"]] == [2, 4, 6]
    assert [s for s, _ in expected["eval/loss"]] == [3, 6]
    assert expected["train/loss"] == [(e["step"], e["loss"]) for e in history if "loss" in e]
    assert expected["eval/loss"] == [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    for key in ("train/learning_rate", "train/grad_norm", "train/epoch", "train/train_loss", "eval/runtime"):
        assert key in expected

    runs = read_all(out, "run-e2e")
    tb, wb, cm, ml = runs["tensorboard"], runs["wandb"], runs["comet"], runs["mlflow"]
    # scalars: TensorBoard stores float32; wandb and mlflow keep one row per repeated point
    assert_same_scalars(tb["scalars"], expected, rel=1e-6)
    assert_same_scalars(cm["scalars"], expected, rel=1e-12)
    assert_same_scalars(wb["scalars"], expected, rel=1e-12, merge=True)
    assert_same_scalars(ml["scalars"], expected, rel=1e-12, merge=True)

    # run name
    assert {name: run["run_name"] for name, run in runs.items()} == dict.fromkeys(FOUR, "run-e2e")
    # params: the full config, as each tracker stores it
    config = trainer.args.to_dict()
    assert tb["params"] == json.loads(json.dumps(config, default=str))
    assert tb["hparams"]["learning_rate"] == pytest.approx(0.05) and tb["hparams"]["max_steps"] == 6
    assert wb["params"]["learning_rate"] == 0.05 and wb["params"]["report_to"] == FOUR
    assert set(wb["params"]) == set(config)
    assert cm["params"]["learning_rate"] == 0.05 and cm["params"]["max_steps"] == 6
    assert ml["params"]["learning_rate"] == "0.05" and ml["params"]["run_name"] == "run-e2e"
    assert set(ml["params"]) == set(config)
    # end status
    assert tb["status"] == "completed" and tb["hparams_status"] == "STATUS_SUCCESS"
    assert wb["status"] == "completed" and wb["exit_code"] == 0
    assert cm["status"] == "completed"
    assert ml["status"] == "FINISHED"


@pytest.mark.parametrize("ending", ["failed", "stopped"])
def test_end_status_of_a_failed_and_a_stopped_run(chdir_tmp, mlflow_db, ending):
    out = chdir_tmp / ending
    with_mlflow_store(out, mlflow_db)
    plugin = FailAt(3) if ending == "failed" else StopAt(3)
    trainer = Trainer(
        args=make_args(out, run_name=f"run-{ending}", report_to=FOUR, eval_strategy="no"),
        plugins=[plugin], **tiny_trainer_parts(),
    )
    if ending == "failed":
        with pytest.raises(RuntimeError, match="crash at step 3"):
            trainer.train()
    else:
        assert trainer.train().global_step == 3
    runs = read_all(out, f"run-{ending}")

    # what was logged before the end is there, and was flushed
    loss = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert loss and loss[0][0] == 2
    for name, run in runs.items():
        assert same_series(run["scalars"]["train/loss"], loss, rel=1e-6), name
        assert run["run_name"] == f"run-{ending}"
    tb, wb, cm, ml = runs["tensorboard"], runs["wandb"], runs["comet"], runs["mlflow"]
    assert tb["status"] == cm["status"] == wb["status"] == ending
    assert wb["exit_code"] == 1
    if ending == "failed":
        assert tb["hparams_status"] == "STATUS_FAILURE" and ml["status"] == "FAILED"
    else:
        assert ml["status"] == "KILLED"


def test_report_to_all_selects_every_importable_reporter_once(chdir_tmp, mlflow_db):
    out = chdir_tmp / "all"
    with_mlflow_store(out, mlflow_db)
    # a registered reporter whose library is "not installed": its module's available() says no
    missing = types.ModuleType("hooktrain_test_missing_tracker")
    missing.available = lambda: False

    def factory(args):
        raise AssertionError("report_to='all' must not build a reporter whose library is missing")

    factory.__module__ = missing.__name__
    sys.modules[missing.__name__] = missing
    extra = Recorder("extra")
    try:
        plugins = [Registers("missing", factory=factory), Registers("extra", extra)]
        trainer = Trainer(args=make_args(out, run_name="run-all", report_to="all", max_steps=2,
                                         eval_strategy="no"), plugins=plugins, **tiny_trainer_parts())
    finally:
        del sys.modules[missing.__name__]
    # comet_ml is an alias of comet: one comet run, not two
    assert sorted(active_reporters(trainer)) == ["comet", "extra", "mlflow", "tensorboard", "wandb"]
    # reporters are objects, not plugins (none of these implements a hook)
    assert not [n for n, _ in trainer.plugin_manager.list_name_plugin() if n.startswith("reporter.")]
    trainer.train()
    loss = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert [s for s, _ in loss] == [2]
    runs = read_all(out, "run-all")
    for name, run in runs.items():
        assert same_series(run["scalars"]["train/loss"], loss, rel=1e-6), name
    assert len(list((out / "comet").glob("*.zip"))) == 1
    assert extra.calls[0] == ("start", "run-all", 0.05) and extra.calls[-1] == ("end", "completed")


# ---- the reporter interface: objects, old-style reporters, reporters that are also plugins ---------


class OldStyleCsvReporter:
    """The reporter docs/writing-plugins.md showed when ``report_*`` were hooks, unchanged:
    a plain class whose methods are marked ``@hookimpl``."""

    def __init__(self, args):
        self.output_dir = os.fspath(args.output_dir)
        self.path = os.path.join(self.output_dir, "metrics.csv")
        self._file = self._writer = None

    @hookimpl
    def report_run_start(self, run_name, config):
        import csv

        os.makedirs(self.output_dir, exist_ok=True)
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["step", "name", "value"])

    @hookimpl
    def report_scalars(self, scalars, step):
        for name, value in scalars.items():
            self._writer.writerow([step, name, repr(float(value))])
        self._file.flush()

    @hookimpl
    def report_run_end(self, status):
        self._file.close()


old_style_module = types.ModuleType("hooktrain_old_style_csv")  # the plugin module, as documented


@hookimpl
def _register_old_style(register):
    register("csv", OldStyleCsvReporter)


old_style_module.register_reporters = _register_old_style


def read_csv_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    got: dict[str, list[tuple[int, float]]] = {}
    rows = path.read_text().splitlines()
    assert rows[0] == "step,name,value"
    for row in rows[1:]:
        step, name, value = row.split(",")
        got.setdefault(name, []).append((int(step), float(value)))
    return got


@pytest.mark.parametrize("how", ["plugin_object", "registered"])
def test_an_old_style_reporter_with_hookimpl_markers_works_unchanged(chdir_tmp, how):
    """Passed to the Trainer, or registered by name through a plugin module."""
    out = chdir_tmp / "out"
    args = make_args(out, run_name="csv-run", report_to=["csv"] if how == "registered" else "none")
    plugins = [old_style_module] if how == "registered" else [OldStyleCsvReporter(args)]
    trainer = Trainer(args=args, plugins=plugins, **tiny_trainer_parts())
    trainer.train()
    assert read_csv_series(out / "metrics.csv") == tracker_series(trainer.state.log_history)
    assert len(active_reporters(trainer)) == 1


class Subset(hooktrain.Reporter):
    """A new-style reporter: no markers, two of the five methods, one taking a subset of its arguments."""

    def __init__(self):
        self.steps: list[int] = []
        self.statuses: list[str] = []
        self.threads: set[str] = set()

    def report_scalars(self, step):
        self.threads.add(threading.current_thread().name)
        self.steps.append(step)

    def report_run_end(self, status):
        self.statuses.append(status)


def test_a_reporter_subclass_implements_only_what_it_needs(chdir_tmp):
    reporter = Subset()
    registered = Subset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(args=make_args(chdir_tmp / "out", report_to=["subset"], eval_strategy="no"),
                          plugins=[reporter, Registers("subset", registered)], **tiny_trainer_parts())
    # methods named report_* are no hooks: no "named like a hook but not marked" warning
    assert not [w for w in caught if "hook" in str(w.message)], [str(w.message) for w in caught]
    trainer.train()
    logged = [e["step"] for e in trainer.state.log_history]
    for rep in (reporter, registered):
        assert rep.steps == logged and rep.statuses == ["completed"]
        assert threading.current_thread().name not in rep.threads
    assert set(active_reporters(trainer)) == {"subset", "Subset-0"}


def test_a_reporter_that_also_implements_hooks_is_registered_for_those_hooks_only(chdir_tmp):
    calls: list[tuple] = []

    class Listening(Recorder):
        @hookimpl
        def on_step_end(self, state):  # a real hook: called by pluggy on the training thread
            calls.append(("step_end", state.global_step, threading.current_thread().name))

    listening = Listening("listening")
    trainer = Trainer(args=make_args(chdir_tmp / "out", report_to=["listening"], eval_strategy="no"),
                      plugins=[Registers("listening", listening)], **tiny_trainer_parts())
    pm = trainer.plugin_manager
    assert pm.get_plugin("reporter.listening") is listening
    hooks = sorted(c.name for c in pm.get_hookcallers(listening))
    assert hooks == ["on_step_end"]  # its report_* methods are not hooks
    trainer.train()
    main = threading.current_thread().name
    assert calls == [("step_end", step, main) for step in range(1, 7)]
    # each report_* call once, from the bridge's thread
    assert [c[0] for c in listening.calls] == ["start", "scalars", "scalars", "scalars", "scalars", "end"]
    assert main not in listening.threads


def test_a_reporter_method_with_an_argument_it_is_never_given_is_an_error(chdir_tmp):
    class Wrong(hooktrain.Reporter):
        def report_scalars(self, scalars, step, epoch):
            pass

        def report_run_end(self, status, reason, verbose=False):  # a defaulted one is fine
            pass

    with pytest.raises(PluginLoadError) as info:
        Trainer(args=make_args(chdir_tmp / "out", report_to=["wrong"]),
                plugins=[Registers("wrong", Wrong())], **tiny_trainer_parts())
    message = str(info.value)
    assert "reporter 'wrong': report_scalars() takes 'epoch'" in message
    assert "report_run_end() takes 'reason'" in message and "verbose" not in message


def test_a_factory_returning_no_reporter_is_an_error(chdir_tmp):
    with pytest.raises(PluginLoadError, match="reporter 'nothing'.*none of the report_\\* methods"):
        Trainer(args=make_args(chdir_tmp / "out", report_to=["nothing"]),
                plugins=[Registers("nothing", object())], **tiny_trainer_parts())


# ---- isolation: a failing, a slow and a hanging reporter ------------------------------------------


@pytest.mark.parametrize("how", ["plugin_object", "registered"])
def test_a_failing_reporter_is_switched_off_and_the_others_get_everything(chdir_tmp, caplog, how):
    out = chdir_tmp / "out"
    flaky = Recorder("flaky", fail_on=3)
    if how == "plugin_object":  # a reporter passed to the Trainer directly
        plugins, report_to = [flaky], ["tensorboard"]
    else:  # a reporter registered by name and selected with report_to
        plugins, report_to = [Registers("flaky", flaky)], ["flaky", "tensorboard"]
    trainer = Trainer(args=make_args(out, report_to=report_to, max_steps=8, logging_steps=1),
                      plugins=plugins, **tiny_trainer_parts())
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        result = trainer.train()

    assert result.global_step == 8  # the training went on
    warnings = reporter_warnings(caplog, "flaky")
    assert len(warnings) == 1, caplog.text
    assert "switched off" in warnings[0] and "broke on call 3" in warnings[0]
    # it got exactly its three calls: nothing more once switched off
    assert [c[0] for c in flaky.calls] == ["start", "scalars", "scalars", "end"]  # then only its end
    assert flaky.threads and threading.current_thread().name not in flaky.threads
    # the healthy reporter beside it has every scalar and the end status
    tb = read_tensorboard(out / "runs")
    assert_same_scalars(tb["scalars"], tracker_series(trainer.state.log_history), rel=1e-6)
    assert tb["status"] == "completed"


class Slow:
    """Makes each training step take a little time (so the bridge's worker surely runs meanwhile)."""

    @hookimpl
    def on_step_end(self):
        time.sleep(0.01)


def test_tracker_names_of_logged_values():
    logs = {"loss": 0.5, "epoch": 1.0, "eval_loss": 0.4, "test_accuracy": 0.9, "eval_": 1,
            "stop_reason": "patience", "flag": True}
    assert namespaced(logs) == {"train/loss": 0.5, "train/epoch": 1.0, "eval/loss": 0.4,
                                "test/accuracy": 0.9, "train/eval_": 1.0}


def test_a_failed_reporter_still_gets_its_run_end(chdir_tmp):
    flaky = Recorder("flaky", fail_on=2)
    trainer = Trainer(args=make_args(chdir_tmp / "out", report_to="none", max_steps=6, logging_steps=1,
                                     eval_strategy="no"), plugins=[flaky], **tiny_trainer_parts())
    trainer.train()
    assert [c[0] for c in flaky.calls] == ["start", "scalars", "end"]  # closes its files and runs
    assert flaky.calls[-1] == ("end", "completed")


def test_mlflow_sends_what_it_buffered_without_waiting_for_the_next_event(chdir_tmp, mlflow_db):
    """A log event reaches the store while training sits between log events (nothing lost to a kill)."""
    out = chdir_tmp / "out"
    with_mlflow_store(out, mlflow_db)
    seen: dict[str, bool] = {}

    class WaitAtStep3:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step != 3:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not seen.get("step2"):
                try:
                    run = read_mlflow(f"sqlite:///{out / 'mlflow.db'}", "run-e2e")
                    seen["step2"] = [s for s, _ in run["scalars"].get("train/loss", [])] == [2]
                except LookupError:  # the reporter's thread has not created the run yet
                    pass
                time.sleep(0.1)

    trainer = Trainer(args=make_args(out, report_to=["mlflow"], max_steps=4, eval_strategy="no"),
                      plugins=[WaitAtStep3()], **tiny_trainer_parts())
    trainer.train()
    assert seen["step2"]


def test_report_errors_raise_makes_a_failing_reporter_fatal(chdir_tmp):
    out = chdir_tmp / "out"
    flaky = Recorder("flaky", fail_on=3)
    trainer = Trainer(
        args=make_args(out, report_to=["flaky", "tensorboard"], report_errors="raise", max_steps=40,
                       logging_steps=1, eval_strategy="no"),
        plugins=[Registers("flaky", flaky), Slow()], **tiny_trainer_parts(),
    )
    with pytest.raises(ReporterError, match="flaky") as info:
        trainer.train()
    assert isinstance(info.value, HooktrainError)
    assert "broke on call 3" in str(info.value)
    assert trainer.state.global_step < 40  # fatal during the training, not after it
    tb = read_tensorboard(out / "runs")
    assert tb["status"] == "failed"
    # what was logged before the failure still reached the healthy reporter
    assert_same_scalars(tb["scalars"], tracker_series(trainer.state.log_history), rel=1e-6)


def test_report_errors_raise_at_the_final_summary_still_ends_every_run(chdir_tmp):
    """A reporter that breaks at its start, seen only at the summary (no log event before it)."""
    out = chdir_tmp / "out"

    class FailsAtStart(Recorder):
        @hookimpl
        def report_run_start(self, run_name, config):
            raise RuntimeError("cannot open the run")

    trainer = Trainer(args=make_args(out, report_to=["tensorboard"], report_errors="raise", max_steps=4,
                                     logging_strategy="no", eval_strategy="no"),
                      plugins=[FailsAtStart("opener")], **tiny_trainer_parts())
    with pytest.raises(ReporterError, match="cannot open the run"):
        trainer.train()
    assert read_tensorboard(out / "runs")["status"] == "failed"  # the healthy reporter was closed
    assert not [t for t in threading.enumerate() if t.name.startswith("hooktrain-report")]


def test_report_errors_raise_makes_a_failing_run_end_fatal_after_training(chdir_tmp):
    out = chdir_tmp / "out"

    class FailsAtEnd(Recorder):
        @hookimpl
        def report_run_end(self, status):
            raise RuntimeError("cannot close the run")

    trainer = Trainer(args=make_args(out, report_to=["tensorboard"], report_errors="raise", max_steps=4),
                      plugins=[FailsAtEnd("closer")], **tiny_trainer_parts())
    with pytest.raises(ReporterError, match="cannot close the run"):
        trainer.train()
    assert trainer.state.global_step == 4  # the training itself completed
    assert read_tensorboard(out / "runs")["status"] == "completed"  # the healthy reporter was closed


def test_a_slow_reporter_does_not_slow_the_training_steps(chdir_tmp):
    out = chdir_tmp / "out"
    slow = Recorder("slow", delay=0.2)
    stamps: list[float] = []

    class Stamps:
        @hookimpl
        def on_train_begin(self):
            stamps.append(time.perf_counter())

        @hookimpl
        def on_step_end(self):
            stamps.append(time.perf_counter())

    trainer = Trainer(args=make_args(out, report_to="none", max_steps=8, logging_steps=1, eval_steps=4),
                      plugins=[slow, Stamps()], **tiny_trainer_parts())
    begin = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - begin

    n_calls = len(slow.calls)
    assert n_calls == 1 + 8 + 2 + 1 + 1  # start, 8 training logs, 2 evaluations, summary, end
    sleeping = 0.2 * n_calls
    steps = stamps[-1] - stamps[0]  # from on_train_begin to the last step
    # the steps ran while the reporter slept: eleven 0.2 s calls were due before the last step
    assert steps < 0.2 * 3, (steps, sleeping)
    # train() waited for it at the end (flush), and everything arrived, in order
    assert total >= sleeping - 0.05
    assert slow.series() == tracker_series(trainer.state.log_history)
    assert slow.calls[0] == ("start", "run-e2e", 0.05) and slow.calls[-1] == ("end", "completed")


def test_a_reporter_hanging_at_the_end_is_abandoned_after_report_timeout(chdir_tmp, caplog):
    out = chdir_tmp / "out"
    release = threading.Event()

    class Hang(Recorder):
        @hookimpl
        def report_run_end(self, status):
            self._call("end", status)
            release.wait(60)  # a tracker that never answers

    hang = Hang("hang")
    trainer = Trainer(args=make_args(out, report_to=["tensorboard"], report_timeout=1.0),
                      plugins=[hang], **tiny_trainer_parts())
    try:
        with caplog.at_level(logging.WARNING, logger="hooktrain"):
            begin = time.perf_counter()
            result = trainer.train()
            elapsed = time.perf_counter() - begin
    finally:
        release.set()
    assert result.global_step == 6
    assert 1.0 <= elapsed < 8.0, elapsed
    warnings = reporter_warnings(caplog, "report_timeout")
    assert len(warnings) == 1 and "'hang'" in warnings[0] and "abandoned" in warnings[0]
    assert hang.calls[-1] == ("end", "completed")
    tb = read_tensorboard(out / "runs")
    assert tb["status"] == "completed"
    assert_same_scalars(tb["scalars"], tracker_series(trainer.state.log_history), rel=1e-6)


def test_evaluate_outside_train_gets_its_own_finished_run(chdir_tmp):
    out = chdir_tmp / "out"
    rec = Recorder("rec")
    trainer = Trainer(args=make_args(out, report_to="none", max_steps=2, eval_strategy="no"),
                      plugins=[rec], **tiny_trainer_parts())
    trainer.evaluate()
    trainer.train()
    trainer.evaluate()
    runs: list[list[tuple]] = []
    for call in rec.calls:
        if call[0] == "start":
            runs.append([])
        runs[-1].append(call[:2] if call[0] != "scalars" else (call[0], call[1], sorted(call[2])))
    assert len(runs) == 3, rec.calls
    eval_keys = ["eval/loss", "eval/runtime", "eval/samples_per_second", "eval/steps_per_second", "train/epoch"]
    assert runs[0] == [("start", "run-e2e"), ("scalars", 0, eval_keys), ("end", "completed")]
    assert runs[1][0] == ("start", "run-e2e") and runs[1][-1] == ("end", "completed")
    assert runs[2] == [("start", "run-e2e"), ("scalars", 2, eval_keys), ("end", "completed")]


# ---- a third-party reporter, installed; a missing tracker library -------------------------------


def test_installed_custom_reporter_is_selected_by_name(tmp_path, fork_servers):
    source = tmp_path / "src"
    shutil.copytree(REPO / "examples" / "custom_reporter", source)  # build outside the repository
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from helpers import tiny_trainer_parts
        from hooktrain import Trainer, TrainingArguments
        from hooktrain.__main__ import main
        args = TrainingArguments(output_dir={str(out)!r}, run_name="csv-run", report_to=["csv"],
                                 max_steps=4, logging_steps=1, eval_strategy="steps", eval_steps=2,
                                 save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4)
        trainer = Trainer(args=args, **tiny_trainer_parts())
        trainer.train()
        print("HISTORY", json.dumps(trainer.state.log_history))
        sys.stdout.flush()
        main(["plugins"])
    """)
    # python -c, forked from a process that imported torch and hooktrain (tests/forkserver.py)
    proc = fork_servers(subprocess_env()).run("-c", code=script, cwd=tmp_path, timeout=120,
                                              env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    history_line = next(line for line in proc.stdout.splitlines() if line.startswith("HISTORY "))
    history = json.loads(history_line[len("HISTORY "):])
    # `hooktrain plugins` shows the plugin, its distribution and the reporter name it registers
    listing = proc.stdout[proc.stdout.index("\n", proc.stdout.index("HISTORY ")):]
    assert "hooktrain-csv 0.1.0" in listing and "reporters: csv" in listing, listing

    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value"
    got: dict[str, list[tuple[int, float]]] = {}
    for row in rows[1:]:
        step, name, value = row.split(",")
        got.setdefault(name, []).append((int(step), float(value)))
    expected = tracker_series(history)
    assert got == expected
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4] and [s for s, _ in got["eval/loss"]] == [2, 4]
    assert json.loads((out / "run.json").read_text()) == {"run_name": "csv-run", "status": "completed"}


def test_a_missing_tracker_library_is_an_error_naming_the_extra(tmp_path, fork_servers):
    script = textwrap.dedent(f"""
        import sys
        for name in ("wandb", "comet_ml", "mlflow"):
            sys.modules[name] = None  # as if these were not installed
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from helpers import tiny_trainer_parts
        from hooktrain import PluginLoadError, Trainer, TrainingArguments
        from hooktrain.plugins.reporting import active_reporters

        def args(report_to):
            return TrainingArguments(output_dir={str(tmp_path / 'out')!r}, report_to=report_to,
                                     max_steps=1, save_strategy="no", disable_tqdm=True)
        try:
            Trainer(args=args(["tensorboard", "wandb"]), **tiny_trainer_parts())
        except PluginLoadError as exc:
            print("ERROR", exc)
        trainer = Trainer(args=args("all"), **tiny_trainer_parts())
        print("ALL", sorted(active_reporters(trainer)))
    """)
    proc = fork_servers(subprocess_env()).run("-c", code=script, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("ERROR", "ALL")))
    assert 'pip install "hooktrain[wandb]"' in lines["ERROR"] and "wandb" in lines["ERROR"]
    # report_to="all" quietly leaves out what is not installed
    assert lines["ALL"] == "['tensorboard']"


def test_a_nan_loss_is_reported_as_nan(chdir_tmp):
    """A NaN loss is reported as NaN (not dropped, not turned into a string)."""
    out = chdir_tmp / "out"
    rec = Recorder("rec")

    def nan_loss(model, batch):
        return model(**batch)["loss"] * float("nan")

    trainer = Trainer(args=make_args(out, report_to="none", max_steps=2, logging_steps=1, eval_strategy="no",
                                     logging_nan_inf_filter=False),
                      plugins=[rec], compute_loss=nan_loss, **tiny_trainer_parts())
    trainer.train()
    losses = rec.series()["train/loss"]
    assert [s for s, _ in losses] == [1, 2] and all(math.isnan(v) for _, v in losses)


def test_a_slow_artifact_store_neither_holds_up_training_nor_loses_its_checkpoint(chdir_tmp):
    stored: list[tuple[str, bool]] = []
    release = threading.Event()

    class SlowStore(Recorder):
        @hookimpl
        def report_artifact(self, path, name, step):
            released = release.wait(10)  # training must reach step 6 meanwhile (saving, rotating)
            stored.append((name, released, (Path(path) / "model.safetensors").is_file()))

    steps_done = []

    class Release:
        @hookimpl
        def on_step_end(self, state):
            steps_done.append(state.global_step)
            if state.global_step == 6:
                release.set()

    out = chdir_tmp / "out"
    trainer = Trainer(args=make_args(out, report_to="none", report_checkpoints=True, save_strategy="steps",
                                     save_steps=2, save_total_limit=1, eval_strategy="no"),
                      plugins=[SlowStore("slow"), Release()], **tiny_trainer_parts())
    trainer.train()
    assert steps_done == [1, 2, 3, 4, 5, 6]  # training reached step 6 while checkpoint-2 was stored
    assert stored == [(f"checkpoint-{n}", True, True) for n in (2, 4, 6)]


def test_report_checkpoints_stores_each_checkpoint_as_an_artifact(chdir_tmp, mlflow_store):
    import zipfile

    from mlflow.tracking import MlflowClient

    out = chdir_tmp / "out"
    mlflow_store(out / "mlflow.db")  # no experiment yet: the reporter makes it, with its artifact folder
    trainer = Trainer(
        args=make_args(out, report_to=["mlflow", "comet", "wandb"], report_checkpoints=True,
                       save_strategy="steps", save_steps=3, save_total_limit=1),
        **tiny_trainer_parts(),
    )
    trainer.train()
    # mlflow: every checkpoint, stored beside the embedded store (rotation deleted the local copy)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = read_mlflow(f"sqlite:///{out / 'mlflow.db'}", "run-e2e")
    stored = {a.path for a in client.list_artifacts(run["run_id"])}
    assert stored == {"checkpoint-3", "checkpoint-6"}
    files = {a.path for a in client.list_artifacts(run["run_id"], "checkpoint-3")}
    assert "checkpoint-3/model.safetensors" in files and "checkpoint-3/manifest.json" in files
    assert (out / "mlflow-artifacts").is_dir() and not (chdir_tmp / "mlruns").exists()
    # comet: the offline archive holds the checkpoint files as a model
    archive = max((out / "comet").glob("*.zip"), key=os.path.getmtime)
    with zipfile.ZipFile(archive) as z:
        messages = [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]
    uploads = [m for m in messages if m.get("type") == "file_upload" or "file_upload" in json.dumps(m)[:200]]
    assert any("model.safetensors" in json.dumps(m) for m in uploads)
    # wandb: the run completed normally with the artifacts logged (no reporter was switched off)
    wb = read_wandb(out)
    assert wb["status"] == "completed"
    assert [s for s, _ in wb["scalars"]["train/loss"]] == [2, 4, 6]
    record = Path(wb["file"]).read_bytes()  # the run's log records the artifacts and their aliases
    assert b"checkpoint-3" in record and b"checkpoint-6" in record and b"-checkpoints" in record
