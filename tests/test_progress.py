"""The progress plugin: the tqdm bar and the console line of each log event."""

from __future__ import annotations

import logging
import re

from helpers import RegressionDataset, TinyRegressor

from hooktrain import Trainer, TrainingArguments, hookimpl
from hooktrain.plugins.progress import format_logs


def run(tmp_path, **kw):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no",
                             per_device_train_batch_size=4, num_train_epochs=1, logging_steps=2,
                             learning_rate=0.05, **kw)
    Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16)).train()


def test_bar_counts_steps_and_shows_loss_and_learning_rate(tmp_path, capfd):
    run(tmp_path, disable_tqdm=False)
    err = capfd.readouterr().err
    assert re.search(r"train: 100%.*\| 4/4 \[", err), err
    assert re.search(r"loss=\d", err) and "learning_rate=" in err  # the bar's postfix
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 2/4", "step 4/4", "step 4/4"]
    assert "train_runtime" in lines[-1] and "train_loss" in lines[-1]  # the final summary


def test_disable_tqdm_keeps_the_console_lines_only(tmp_path, capfd):
    run(tmp_path, disable_tqdm=True)
    err = capfd.readouterr().err
    assert "train:" not in err and "it/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert len(lines) == 3
    assert re.fullmatch(r"step 2/4 \| loss [\d.e+-]+ \| grad_norm [\d.e+-]+ \| learning_rate [\d.e+-]+ "
                        r"\| epoch 0\.5", lines[0]), lines[0]


def test_messages_are_written_above_the_bar_and_the_handler_is_restored(tmp_path, capfd):
    logger = logging.getLogger("hooktrain")
    handler = logging.StreamHandler()  # stderr, as hooktrain's own console handler
    handler.setLevel(logging.WARNING)  # kept while the bar is up
    logger.addHandler(handler)
    try:
        seen = []

        class Probe:
            @hookimpl
            def on_step_end(self, state):
                if state.global_step == 1:
                    seen.extend(type(h).__name__ for h in logger.handlers)
                    logger.warning("a message during training")
                    logger.info("an info the handler filters out")

        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no",
                                 per_device_train_batch_size=4, max_steps=2)
        Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16), plugins=[Probe()]).train()
        assert "_AboveTheBar" in seen and "StreamHandler" not in seen
        assert handler in logger.handlers  # put back at the end of the run
        err = capfd.readouterr().err
        assert "a message during training" in err and "an info the handler filters out" not in err
    finally:
        logger.removeHandler(handler)


def test_format_logs_leaves_evaluation_timings_to_the_trackers():
    line = format_logs(3, 10, {"eval_loss": 0.123456, "eval_runtime": 1.5, "eval_samples_per_second": 9.0})
    assert line == "step 3/10 | eval_loss 0.1235"
    summary = format_logs(10, 10, {"train_runtime": 2.0, "train_samples_per_second": 5.0, "train_loss": 1.0})
    assert summary == "step 10/10 | train_runtime 2 | train_samples_per_second 5 | train_loss 1"
