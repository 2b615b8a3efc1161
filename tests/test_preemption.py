"""Preemption: real signals, a checkpoint, a distinct exit status and an exact resume.

The runs use ``tests/dist_scripts/preempt.py``: train_ddp.py's data and a dropout MLP (gradient
accumulation 2, an evaluation every 4 steps, a checkpoint every 3), with a plugin that sends a real
signal to its own process (or to the torchrun agent) at a deterministic point. Most runs are
in-process (the handler, the loop and the checkpoint are the real ones; only the process stays);
``hooktrain train`` runs in a subprocess for the exit status, the second signal that ends the
process, and torchrun. Every resumed run must end with the weights and losses of an uninterrupted
run, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import checkpoint_steps, tiny_trainer_parts

from hooktrain import ArgumentError, Trainer, TrainingArguments, hookimpl
from hooktrain.checkpointing import verify
from hooktrain.plugins.preemption import EXIT_PREEMPTED

SCRIPTS = Path(__file__).parent / "dist_scripts"
sys.path.insert(0, str(SCRIPTS))
import preempt  # noqa: E402  (tests/dist_scripts/preempt.py)

TIMEOUT = 90  # seconds per launch; a hang fails the test instead of blocking CI
ARGS = dict(
    per_device_train_batch_size=4, per_device_eval_batch_size=4, gradient_accumulation_steps=2,
    max_steps=8, learning_rate=0.02, warmup_steps=0, logging_steps=1, seed=7, eval_strategy="steps",
    eval_steps=4, save_strategy="steps", save_steps=3, report_to="none", disable_tqdm=True, use_cpu=True,
)  # 48 samples / batch 4 = 12 micro-batches: 6 optimizer steps per epoch


def train(out: Path, signal_at: dict | None = None, resume: bool = False, plugins: tuple = (),
          **overrides) -> dict:
    """Train in this process; the result :class:`preempt.SignalAt` wrote at the end of ``train()``."""
    args = TrainingArguments(output_dir=str(out), **{**ARGS, **overrides})
    parts = preempt.parts({"dropout": True, **(signal_at or {})})
    parts["plugins"] += list(plugins)
    trainer = Trainer(args=args, **parts)
    trainer.train(resume_from_checkpoint=True if resume else None)
    return json.loads((out / "result_rank0.json").read_text())


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, out: Path):
        self.returncode, self.output, self.out = proc.returncode, proc.stdout + proc.stderr, out

    def result(self, rank: int = 0) -> dict:
        return json.loads((self.out / f"result_rank{rank}.json").read_text())


def hooktrain(out: Path, signal_at: dict | None = None, resume: bool = False, nproc: int | None = None,
              forks=None, **overrides) -> Run:
    """``hooktrain train`` of the preempt task into *out*, under torchrun with *nproc* processes, else
    as ``python -m hooktrain`` in a process of its own session forked by *forks* (the
    ``fork_servers`` fixture: tests/forkserver.py)."""
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps({"task": f"{SCRIPTS / 'preempt.py'}:build", "output_dir": str(out), **ARGS,
                                  **overrides}))
    cli = ["-m", "hooktrain", "train", str(config)] + (["--resume_from_checkpoint", "true"] if resume else [])
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--monitor_interval=0.1", *cli]
    else:
        cmd = [sys.executable, *cli]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PREEMPT_TEST")}
    env.update(OMP_NUM_THREADS="1", HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONUNBUFFERED="1")
    task = {"PREEMPT_TEST": json.dumps({"dropout": True, **(signal_at or {})})}
    if not nproc:
        assert forks is not None, "pass the fork_servers fixture"
        return Run(forks(env).run(*cli[1:], module=True, env=task, new_session=True, timeout=TIMEOUT), out)
    proc = subprocess.run(cmd, env={**env, **task}, capture_output=True, text=True, timeout=TIMEOUT,
                          start_new_session=True)
    return Run(proc, out)


def assert_same_weights(got: dict, want: dict) -> None:
    assert got["weights"].keys() == want["weights"].keys()
    for name in want["weights"]:
        np.testing.assert_array_equal(np.asarray(got["weights"][name]), np.asarray(want["weights"][name]),
                                      err_msg=name)


def series(result: dict, key: str, after: int = 0) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in result["log_history"] if key in e and e["step"] > after]


def assert_resumed_exactly(result: dict, stopped_at: int, reference: dict) -> None:
    assert result["status"] == "completed" and result["global_step"] == 8
    assert_same_weights(result, reference)
    assert series(result, "loss", after=stopped_at) == series(reference, "loss", after=stopped_at)
    assert series(result, "eval_loss") == series(reference, "eval_loss")  # an abandoned one ran again


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    result = train(tmp_path_factory.mktemp("reference"))
    assert result["status"] == "completed"
    return result


# ---- one process ------------------------------------------------------------------------------


@pytest.mark.parametrize("where, signal_at, stopped_at", [
    ("mid-epoch", {"at": "step", "step": 2}, 2),
    ("inside evaluation", {"at": "eval", "step": 4, "item": 4}, 4),  # the 2nd of 4 eval batches
    ("during accumulation", {"at": "micro", "step": 5, "micro": 0}, 4),  # step 5 is dropped
    ("at the very end", {"at": "step", "step": 8}, 8),  # the last step: its evaluation is abandoned
])
def test_sigterm_saves_the_last_step_and_the_resume_is_exact(tmp_path, reference, where, signal_at, stopped_at):
    result = train(tmp_path, signal_at)
    assert result["status"] == "interrupted"
    assert result["stop_reason"] == "preempted by SIGTERM"
    assert result["global_step"] == stopped_at
    assert stopped_at in checkpoint_steps(tmp_path) and not verify(tmp_path / f"checkpoint-{stopped_at}")
    assert result["handler"] == str(signal.SIG_DFL)  # at the end of train(): the one from before
    if where in ("inside evaluation", "at the very end"):
        assert not series(result, "eval_loss", after=stopped_at - 1)  # abandoned: nothing logged
    assert_resumed_exactly(train(tmp_path, resume=True), stopped_at, reference)


def test_sigterm_while_a_background_save_is_in_flight(tmp_path, reference, monkeypatch):
    from hooktrain.checkpointing import writer

    seal = writer.HashingWriter.seal

    def slow_seal(self):  # every file of a background save takes 0.2 s more: checkpoint-3 is in flight
        time.sleep(0.2)
        return seal(self)

    monkeypatch.setattr(writer.HashingWriter, "seal", slow_seal)
    seen: list[bool] = []

    class Look:
        @hookimpl(tryfirst=True)
        def on_step_end(self, state):
            if state.global_step == 4:  # before the signal of step 4 is sent
                seen.append((tmp_path / "checkpoint-3").exists())

    result = train(tmp_path, {"at": "step", "step": 4}, plugins=(Look(),))
    assert seen == [False]  # the signal came while checkpoint-3 was being written
    assert (result["status"], result["global_step"]) == ("interrupted", 4)
    assert checkpoint_steps(tmp_path) == [3, 4]  # waited for, then the synchronous one
    assert not verify(tmp_path / "checkpoint-3") and not verify(tmp_path / "checkpoint-4")
    monkeypatch.undo()
    assert_resumed_exactly(train(tmp_path, resume=True), 4, reference)


def test_hooktrain_train_exits_75_and_the_requeued_job_resumes(tmp_path, reference, fork_servers):
    out = tmp_path / "out"
    run = hooktrain(out, {"at": "step", "step": 2}, forks=fork_servers)
    assert run.returncode == EXIT_PREEMPTED == 75, run.output[-4000:]
    assert run.result()["status"] == "interrupted"
    assert "preempted by SIGTERM at step 2: checkpoint written in" in run.output
    assert "s from the signal to the end of training" in run.output
    assert "resume with --resume_from_checkpoint true; exit status 75" in run.output
    assert checkpoint_steps(out) == [2]
    assert_resumed_exactly(train(out, resume=True), 2, reference)  # what the requeued job does


def test_sigterm_to_the_whole_process_group_with_loader_workers(tmp_path, reference, fork_servers):
    # as SLURM signals every process of a job step: the evaluation's loader workers end at once
    out = tmp_path / "out"
    run = hooktrain(out, {"at": "eval", "step": 4, "item": 4, "to": "group"}, dataloader_num_workers=2, forks=fork_servers)
    assert run.returncode == EXIT_PREEMPTED, run.output[-4000:]
    assert run.result()["global_step"] == 4 and not verify(out / "checkpoint-4")
    assert_resumed_exactly(train(out, resume=True, dataloader_num_workers=2), 4, reference)


def test_a_second_sigterm_during_the_save_ends_the_process_and_corrupts_nothing(tmp_path, reference, fork_servers):
    out = tmp_path / "out"
    run = hooktrain(out, {"at": "step", "step": 5, "twice": True}, forks=fork_servers)
    assert run.returncode == -signal.SIGTERM, run.output[-4000:]  # the default action: ended at once
    assert not (out / "result_rank0.json").exists()
    assert checkpoint_steps(out) == [3] and not verify(out / "checkpoint-3")  # checkpoint-5 never appeared
    assert (out / ".tmp-checkpoint-5").is_dir()  # written, not renamed; the next start removes it
    assert_resumed_exactly(train(out, resume=True), 3, reference)
    assert not (out / ".tmp-checkpoint-5").exists()


# ---- tracker runs continue across the resume -----------------------------------------------------


def strictly_increasing(points: list[tuple[int, float]]) -> bool:
    steps = [step for step, _ in points]
    return all(a < b for a, b in zip(steps, steps[1:], strict=False))


def metrics(scalars: dict) -> dict:
    """Every series but ``train/epoch``, which each log event carries (a training log and an
    evaluation at one step give it twice, resumed or not)."""
    return {k: v for k, v in scalars.items() if k != "train/epoch"}


@pytest.fixture
def wandb_service():
    """Stop wandb's background service after the test (it also leaves WANDB_SERVICE in the env)."""
    yield
    import wandb

    wandb.teardown()


def test_every_tracker_continues_its_run_after_a_preemption(tmp_path, reference, wandb_service, mlflow_store):
    import glob

    from mlflow.tracking import MlflowClient
    from readback import read_comet, read_tensorboard, read_wandb

    trackers = ["tensorboard", "wandb", "mlflow", "comet"]
    mlflow_store(tmp_path / "mlflow.db")
    first = train(tmp_path, {"at": "step", "step": 5}, report_to=trackers, run_name="preempted-run")
    assert first["status"] == "interrupted"
    resumed = train(tmp_path, resume=True, report_to=trackers)  # a new run_name: the stored runs win
    assert_resumed_exactly(resumed, 5, reference)
    losses = [step for step, _ in series(reference, "loss")]  # 1 … 8

    tb = read_tensorboard(tmp_path / "runs")  # two events files in one directory: one run
    assert len(glob.glob(str(tmp_path / "runs" / "events.out.tfevents.*"))) == 2
    assert [step for step, _ in tb["scalars"]["train/loss"]] == losses  # every step exactly once
    assert all(strictly_increasing(points) for points in metrics(tb["scalars"]).values())
    assert [step for step, _ in tb["scalars"]["eval/loss"]] == [4, 8]
    assert (tb["status"], tb["hparams_status"], tb["run_name"]) == ("completed", "STATUS_SUCCESS", "preempted-run")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert (run.info.status, run.info.run_name) == ("FINISHED", "preempted-run")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == losses
    for key in metrics(run.data.metrics):
        assert strictly_increasing([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)])

    files = {os.path.realpath(p) for p in glob.glob(str(tmp_path / "wandb" / "*" / "*.wandb"))}  # latest-run: a link
    parts = sorted((read_wandb(path) for path in files),
                   key=lambda part: part["exit_code"] != 1)  # the preempted part first
    assert len(parts) == 2 and parts[0]["run_id"] == parts[1]["run_id"]  # one run, in two parts
    assert [p["status"] for p in parts] == ["preempted", "completed"] and parts[1]["exit_code"] == 0
    for key in metrics(parts[1]["scalars"]):
        assert strictly_increasing(parts[0]["scalars"].get(key, []) + parts[1]["scalars"][key]), key
    assert [s for s, _ in parts[0]["scalars"]["train/loss"] + parts[1]["scalars"]["train/loss"]] == losses

    archives = sorted(glob.glob(str(tmp_path / "comet" / "*.zip")), key=len)  # <key>.zip, then <key>-x.zip
    comet = [read_comet(path) for path in archives]
    assert len(comet) == 2 and comet[0]["experiment"]["offline_id"] == comet[1]["experiment"]["offline_id"]
    assert [c["status"] for c in comet] == ["preempted", "completed"]
    for key in metrics(comet[1]["scalars"]):
        assert strictly_increasing(comet[0]["scalars"].get(key, []) + comet[1]["scalars"][key]), key
    assert [s for s, _ in comet[0]["scalars"]["train/loss"] + comet[1]["scalars"]["train/loss"]] == losses


def test_resume_tracker_runs_false_starts_new_runs(tmp_path, mlflow_store):
    mlflow_store(tmp_path / "mlflow.db")
    train(tmp_path, {"at": "step", "step": 5}, report_to=["mlflow"], run_name="first")
    train(tmp_path, resume=True, report_to=["mlflow"], run_name="second", resume_tracker_runs=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("first", "KILLED"), ("second", "FINISHED")]


# ---- in-process: the handlers ------------------------------------------------------------------


class SendAt:
    """Sends *count* real signals to this process at the end of step *step*."""

    def __init__(self, step: int, count: int = 1, sig: signal.Signals = signal.SIGTERM):
        self.step, self.count, self.sig = step, count, sig
        self.during: list = []

    @hookimpl
    def on_step_end(self, state):
        self.during.append(signal.getsignal(self.sig))
        if state.global_step == self.step:
            for _ in range(self.count):
                os.kill(os.getpid(), self.sig)


def _trainer(tmp_path, plugins, **kw) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                             report_to="none", disable_tqdm=True, save_strategy="no", **kw)
    return Trainer(args=args, plugins=plugins, **tiny_trainer_parts())


def test_handlers_are_restored_and_a_second_signal_goes_to_the_previous_one(tmp_path):
    got: list[int] = []

    def previous(signum, frame):
        got.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        sender = SendAt(step=2, count=2, sig=signal.SIGUSR1)
        trainer = _trainer(tmp_path, [sender], preemption_signals=["SIGUSR1"])
        result = trainer.train()
        assert signal.getsignal(signal.SIGUSR1) is previous  # restored after train()
        assert sender.during[0] is not previous  # replaced during train()
        assert got == [signal.SIGUSR1]  # the second signal fell through to the previous handler
        assert result.status == "interrupted" and result.global_step == 2
        assert trainer.state.stop_reason == "preempted by SIGUSR1"
        assert checkpoint_steps(tmp_path) == [2]  # saved although save_strategy="no"
        assert trainer.interrupt_reason is None  # cleared: evaluate() or train() may follow
        again = trainer.train(resume_from_checkpoint=True)  # a later train() handles signals again
        assert again.status == "completed" and again.global_step == 6
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_signal_as_training_ends_changes_nothing(tmp_path, caplog):
    class Late:  # SIGTERM in on_train_end, after the last step and the summary
        @hookimpl
        def on_train_end(self):
            os.kill(os.getpid(), signal.SIGTERM)

    result = _trainer(tmp_path, [Late()]).train()
    assert (result.status, result.global_step) == ("completed", 6)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert "SIGTERM arrived as training ended (status completed, step 6)" in caplog.text


def test_without_preemption_signals_the_handler_is_left_alone(tmp_path):
    sender = SendAt(step=99)
    result = _trainer(tmp_path, [sender], preemption_signals=[]).train()
    assert result.status == "completed"
    assert set(sender.during) == {signal.getsignal(signal.SIGTERM)}


def test_preemption_signals_are_validated_all_at_once():
    assert TrainingArguments("out", preemption_signals=["term", "SIGUSR1", "usr1"]).preemption_signals == [
        "SIGTERM", "SIGUSR1"]
    assert TrainingArguments("out", preemption_signals="SIGUSR2").preemption_signals == ["SIGUSR2"]
    assert TrainingArguments("out").preemption_signals == ["SIGTERM"]
    assert TrainingArguments("out", preemption_signals="none").preemption_signals == []  # the command line's []
    with pytest.raises(ArgumentError) as caught:
        TrainingArguments("out", preemption_signals=["SIGKILL", "SIGNOPE", "SIGINT"])
    message = str(caught.value)
    for part in ("preemption_signals=", "'SIGKILL' cannot be caught", "'SIGNOPE' is not a signal",
                 "'SIGINT' is not allowed", "SIGTERM", "[] ('none') to turn the handling off"):
        assert part in message


# ---- two processes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_torchrun_agent_stops_both_ranks_at_one_checkpoint(tmp_path):
    whole = hooktrain(tmp_path / "whole", nproc=2)
    assert whole.returncode == 0, whole.output[-4000:]

    out = tmp_path / "out"
    # rank 1 sends SIGTERM to the agent at the end of step 3, and waits until the agent forwards it
    run = hooktrain(out, {"at": "step", "step": 3, "to": "agent", "rank": 1}, nproc=2)
    assert run.returncode != 0, run.output[-4000:]
    results = [run.result(rank) for rank in (0, 1)]
    assert [r["status"] for r in results] == ["interrupted"] * 2, run.output[-4000:]
    assert [r["global_step"] for r in results] == [4, 4]  # agreed after step 4; its evaluation abandoned
    assert checkpoint_steps(out) == [3, 4] and not verify(out / "checkpoint-4")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(out / "checkpoint-4"))  # one checkpoint

    resumed = hooktrain(out, resume=True, nproc=2)
    assert resumed.returncode == 0, resumed.output[-4000:]
    for rank in (0, 1):
        assert_same_weights(resumed.result(rank), whole.result(rank))
        assert series(resumed.result(rank), "eval_loss") == series(whole.result(rank), "eval_loss")
    assert series(resumed.result(), "loss", after=4) == series(whole.result(), "loss", after=4)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_one_checkpoint(tmp_path):
    run = hooktrain(tmp_path / "out", {"at": "step", "step": 3, "rank": 1}, nproc=2)  # rank 1 only
    assert run.returncode != 0, run.output[-4000:]
    results = [run.result(rank) for rank in (0, 1)]
    assert [(r["status"], r["global_step"]) for r in results] == [("interrupted", 4)] * 2  # agreed after step 4
    assert [r["stop_reason"] for r in results] == [
        "preempted by SIGTERM (received by another process)", "preempted by SIGTERM"]
    assert checkpoint_steps(tmp_path / "out") == [3, 4] and not verify(tmp_path / "out" / "checkpoint-4")


def test_status_is_interrupted_when_a_plugin_interrupts(tmp_path):
    class Interrupt:
        @hookimpl
        def on_step_end(self, trainer, state):
            if state.global_step == 3:
                trainer.request_interrupt("enough")

    trainer = _trainer(tmp_path, [Interrupt()])
    result = trainer.train()
    assert (result.status, result.global_step, trainer.state.stop_reason) == ("interrupted", 3, "enough")
    assert checkpoint_steps(tmp_path) == []  # only the preemption plugin saves on its own interrupts
    assert "eval_loss" in trainer.evaluate()  # the request is cleared: nothing interrupts this
