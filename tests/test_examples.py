"""The examples, run as a user runs them: ``python -m hooktrain train CONFIG.yaml ...`` in a child
process (forked from one that imported torch and hooktrain: tests/forkserver.py).

Short modes keep the file well under two minutes: digits in full once (the main job as the README
runs it: its summary, artefacts, trackers and ≥ 95 % accuracy are all checked on that one run) and
for 20 steps with flags, tiny_gpt's CI size with a real SIGKILL and a resume, hf_model's CI size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import checkpoint_steps
from readback import read_mlflow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def hooktrain_train(fork_servers, config: Path, *flags: str, env: dict[str, str] | None = None,
                    timeout: float = 120):
    """``python -m hooktrain train CONFIG FLAGS...`` from the repository root, in a process forked
    from one that imported torch and hooktrain (tests/forkserver.py); *env* is added to its
    environment. The result has ``returncode``, ``stdout`` and ``stderr``, as from subprocess."""
    return fork_servers(dict(os.environ)).run("hooktrain", "train", config, *flags, module=True, cwd=ROOT,
                                              env=env, timeout=timeout)


def check_ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc.stdout


def read_state(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))


def losses(state: dict[str, Any]) -> list[tuple[int, str, float]]:
    return [(e["step"], k, e[k]) for e in state["log_history"] for k in ("loss", "eval_loss") if k in e]


# ---- digits: the main job --------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory, fork_servers) -> tuple[Path, str]:
    """The main job as the README runs it (only output_dir differs), once for the tests below."""
    out = tmp_path_factory.mktemp("main-job") / "digits"
    return out, check_ok(hooktrain_train(fork_servers, EXAMPLES / "digits/config.yaml", "--output_dir", str(out)))


def test_digits_summary_and_artefacts(digits):
    out, stdout = digits
    state = read_state(out)
    last = state["global_step"]
    epochs = [45 * epoch for epoch in range(1, last // 45 + 1)]  # 45 steps per epoch, one evaluation each
    assert last % 45 == 0 and len(epochs) >= 4  # early stopping needs 3 evaluations after the best

    # the summary says where everything is
    for line in (f"finished: {last} steps", f"last evaluation (step {last})", "best: step", "checkpoints:",
                 "tensorboard:", "mlflow:", "plot:"):
        assert line in stdout, f"{line!r} missing from the summary:\n{stdout}"
    assert "eval_accuracy" in stdout
    assert f"sqlite:///{out.resolve()}/mlflow.db" in stdout

    # the final model, the state, the newest checkpoint and the plot
    for name in ("model.safetensors", "trainer_state.json", "training_args.json"):
        assert (out / name).is_file()
        assert (out / f"checkpoint-{last}" / name).is_file()
    png = out / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [e["step"] for e in state["log_history"] if "eval_accuracy" in e] == epochs

    # TensorBoard holds the run's scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {out / 'runs'}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/accuracy" in tags, tags
    assert [e.step for e in acc.Scalars("eval/accuracy")] == epochs

    # mlflow's embedded store holds a finished run with the same metrics (read with mlflow's client)
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (only,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run = read_mlflow(uri, only.info.run_name)
    assert state["stop_reason"].startswith("early stopping")
    assert run["status"] == "KILLED"  # the reporter ends a run that something stopped as KILLED (mlflow's word)
    assert [step for step, _ in run["scalars"]["eval/accuracy"]] == epochs
    assert run["params"]["learning_rate"] == "0.002"

    # `hooktrain plot` draws the same curves again from the saved state
    replot = subprocess.run([sys.executable, "-m", "hooktrain", "plot", str(out), "--out", str(out / "again.png")],
                            capture_output=True, text=True, timeout=120)
    assert replot.returncode == 0, replot.stderr[-2000:]
    assert (out / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hooktrain.plot import series

    logged = [(e["step"], e["eval_accuracy"]) for e in state["log_history"] if "eval_accuracy" in e]
    assert list(zip(*series(state["log_history"], "eval_accuracy"), strict=True)) == logged


def test_digits_full_run_reaches_95_percent_and_keeps_the_best(digits):
    import torch

    out, stdout = digits
    state = read_state(out)
    assert state["best_metric"] >= 0.95, stdout
    assert f"best: step {state['best_global_step']} with accuracy" in stdout
    # early stopping ended the run before the 20 epochs (900 steps) of the config
    assert state["stop_reason"].startswith("early stopping") and state["global_step"] < 900
    # save_total_limit=2 keeps the best and the newest
    assert checkpoint_steps(out) == sorted({state["best_global_step"], state["global_step"]})

    # the saved model is the best one: evaluate it independently of the trainer
    sys.path.insert(0, str(EXAMPLES / "digits"))
    sys.modules.pop("task", None)  # another test's task.py (hooktrain train registers it as "task")
    try:
        import task as digits
    finally:
        sys.path.remove(str(EXAMPLES / "digits"))
        sys.modules.pop("task", None)
    from safetensors.torch import load_file

    model = digits.MLP()
    model.load_state_dict(load_file(out / "model.safetensors"))
    model.eval()
    _, evaluation = digits.load_splits()
    with torch.no_grad():
        predicted = model(evaluation.pixels)["logits"].argmax(-1)
    accuracy = (predicted == evaluation.labels).float().mean().item()
    assert accuracy == pytest.approx(state["best_metric"], abs=1e-6)
    assert accuracy >= 0.95


def _setup_is_current() -> bool:
    """Whether scripts/setup.sh would do nothing (its stamp matches): then the README's commands are cheap."""
    import hashlib

    stamp = ROOT / ".venv" / ".hooktrain-setup"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "scripts/setup.sh").read_bytes())
    return stamp.is_file() and stamp.read_text().strip() == digest.hexdigest()


def test_digits_overrides_from_the_command_line(tmp_path, fork_servers):
    """Flags after the config override it. Given as the README gives them, to ``bash scripts/main-job.sh``,
    when .venv is set up (as ``bash scripts/test.sh`` leaves it: the command then installs nothing);
    else to ``python -m hooktrain train``, which that script runs."""
    out = tmp_path / "digits"
    flags = ["--max_steps", "20", "--report_to", "none", "--disable_tqdm", "--output_dir", str(out)]
    if _setup_is_current():
        proc = subprocess.run(["bash", "scripts/main-job.sh", *flags], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert "setup:" not in proc.stderr  # set up already: nothing installed
    else:
        proc = hooktrain_train(fork_servers, EXAMPLES / "digits/config.yaml", *flags)
    stdout = check_ok(proc)
    assert "finished: 20 steps" in stdout
    assert "tensorboard:" not in stdout and "mlflow:" not in stdout
    args = json.loads((out / "training_args.json").read_text())
    assert args["max_steps"] == 20 and args["report_to"] in ([], ["none"])
    assert not (out / "mlflow.db").exists()
    assert (out / "model.safetensors").is_file()


def test_digits_rejects_a_misspelt_flag(capsys, tmp_path):
    from hooktrain.__main__ import main  # what the console script runs

    assert main(["train", str(EXAMPLES / "digits/config.yaml"), "--num_train_epoch", "2",
                 "--output_dir", str(tmp_path)]) == 2
    assert "--num_train_epochs" in capsys.readouterr().err  # the suggestion


# ---- tiny_gpt: accumulation, cosine + warmup, bf16, gradient checkpointing, kill and resume ----


def test_tiny_gpt_smoke_kill_and_resume(tmp_path, fork_servers):
    config = EXAMPLES / "tiny_gpt/smoke.yaml"
    quiet = {"TINY_GPT_SAMPLE": "0"}

    # an uninterrupted run: the reference (it also prints a generated sample at the end)
    whole = tmp_path / "whole"
    proc = hooktrain_train(fork_servers, config, "--output_dir", str(whole))
    check_ok(proc)
    assert "[tiny_gpt] sample after step 12:\ndef " in proc.stderr
    reference = read_state(whole)
    assert reference["global_step"] == 12
    args = json.loads((whole / "training_args.json").read_text())
    assert args["bf16"] and args["gradient_checkpointing"] and args["gradient_accumulation_steps"] == 2
    assert args["lr_scheduler_type"] == "cosine" and args["warmup_ratio"] > 0
    lrs = [e["learning_rate"] for e in reference["log_history"] if "learning_rate" in e]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[-1] < lrs[peak] / 10  # warmup, then cosine decay

    # the same run, SIGKILLed right after step 7: checkpoints 3 and 6 survive, nothing else.
    # checkpoint-6 is written in the background (save_async) while step 7 runs: on a busy machine
    # (slow fsyncs) the kill can come before it is committed, and then checkpoint-3 is the newest
    run = tmp_path / "run"
    killed = hooktrain_train(fork_servers, config, "--output_dir", str(run), env={**quiet, "TINY_GPT_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "simulated crash: SIGKILL at step 7" in killed.stderr
    survived = checkpoint_steps(run)
    assert survived in ([3, 6], [3])
    newest = survived[-1]
    assert not (run / "trainer_state.json").exists()

    # resume from the newest checkpoint: the run ends exactly like the uninterrupted one
    resumed = hooktrain_train(fork_servers, config, "--output_dir", str(run), "--resume_from_checkpoint", "true", env=quiet)
    check_ok(resumed)
    # really resumed (smoke.yaml sets overwrite_output_dir, so a silent restart would delete and redo)
    assert "resumed from" in resumed.stderr and f"checkpoint-{newest} (step {newest})" in resumed.stderr
    assert "deleting" not in resumed.stderr
    state = read_state(run)
    assert state["global_step"] == 12
    assert losses(state) == losses(reference)


# ---- hf_model: a transformers model through hooktrain -------------------------------------------


def test_hf_model_smoke(tmp_path, fork_servers):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    proc = hooktrain_train(fork_servers, EXAMPLES / "hf_model/smoke.yaml", "--output_dir", str(out),
                           env={"HF_HUB_OFFLINE": "1"})
    stdout = check_ok(proc)
    assert "from_pretrained gives the same weights: True" in proc.stderr
    assert (out / "hf_model" / "config.json").is_file()
    state = read_state(out)
    assert state["global_step"] == 48
    accuracies = [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e]
    assert len(accuracies) == 3
    assert accuracies[-1] > max(0.2, accuracies[0])  # it learns (chance is 0.1)
    assert f"best: step {state['best_global_step']} with accuracy" in stdout
    config = json.loads((out / "hf_model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]


# ---- hf_callbacks: an HF-style script with transformers' callbacks -----------------------------


def test_hf_callbacks_script(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf_callbacks"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "hf_callbacks/train.py"), "--output_dir", str(out),
         "--num_train_epochs", "4", "--target_accuracy", "0.95"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=180)
    stdout = check_ok(proc)
    state = read_state(out)
    assert state["stop_reason"] == "StopAtAccuracy set control.should_training_stop in on_evaluate"
    assert state["global_step"] < state["max_steps"] == 180  # 45 steps per epoch
    assert state["best_metric"] >= 0.95 and state["best_global_step"] == state["global_step"]
    assert "stopped by: StopAtAccuracy" in stdout and (out / "model.safetensors").is_file()
    # EarlyStoppingCallback's patience count went into every checkpoint
    plugins = json.loads((out / f"checkpoint-{state['global_step']}" / "plugin_state.json").read_text())
    assert plugins["hf_callbacks"]["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 0}
