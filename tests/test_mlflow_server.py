"""The mlflow reporter against a real ``mlflow server`` on 127.0.0.1, and that server dying.

One server (SQLite backend and artifact store in a temporary directory) serves the module.
The first test trains with ``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`` and reads the run
back over HTTP with ``MlflowClient``. The second kills the server (its whole process group:
mlflow, uvicorn and the job runner) in the middle of a run: the mlflow reporter must fail
within a bounded time, with a warning, be switched off, and the training and a TensorBoard
reporter beside it must finish with nothing lost.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import tiny_trainer_parts, tracker_series
from readback import read_mlflow, read_tensorboard, same_series

from hooktrain import Trainer, TrainingArguments, hookimpl

pytestmark = pytest.mark.slow  # starts a real server: ~10 s on an idle machine, more under load

MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT = 60.0
# what the reporter sets when these are unset (hooktrain/plugins/reporters/mlflow.py)
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group (it is the group leader)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log
        self.killed_at: float | None = None  # time.time(), comparable with log records

    def kill(self) -> None:
        """SIGTERM the group, as an operator (or an OOM killer, or a redeploy) would."""
        self.killed_at = time.time()
        kill_group(self.proc)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_store):
    if not MLFLOW.exists():
        pytest.skip(f"no mlflow executable at {MLFLOW}")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "server.log"
    mlflow_store(root / "db.sqlite")  # the server opens an existing store: no schema to create first
    cmd = [
        str(MLFLOW), "server",
        "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
        "--artifacts-destination", str(root / "art"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "not healthy in 60 s"
                pytest.fail(f"mlflow server could not start ({state}): {tail}")  # installed: must run
            time.sleep(0.25)
        yield Server(proc, url, log)
    finally:
        kill_group(proc)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for_run(url: str, run_name: str, n_params: int, timeout: float = 60.0) -> dict:
    """Poll the server until run *run_name* exists with its *n_params* params; return it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = read_mlflow(url, run_name)
        except LookupError:
            run = {"params": {}}
        if len(run["params"]) >= n_params or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def make_args(out: Path, run_name: str, report_to: list[str], **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(out), run_name=run_name, report_to=report_to, max_steps=6, logging_steps=2,
        eval_strategy="steps", eval_steps=3, per_device_train_batch_size=4, save_strategy="no",
        disable_tqdm=True, learning_rate=0.05,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_run_logged_to_a_tracking_server_reads_back_over_http(server, chdir_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "served")
    trainer = Trainer(args=make_args(chdir_tmp / "out", "served-run", ["mlflow"]), **tiny_trainer_parts())
    trainer.train()
    assert not (chdir_tmp / "out" / "mlflow.db").exists()  # nothing went to the local default store

    run = read_mlflow(server.url, "served-run")
    assert run["experiment_name"] == "served"
    assert run["status"] == "FINISHED"
    assert run["params"]["learning_rate"] == "0.05" and run["params"]["max_steps"] == "6"
    assert set(run["params"]) == set(trainer.args.to_dict())
    expected = tracker_series(trainer.state.log_history)
    assert [s for s, _ in expected["train/loss"]] == [2, 4, 6]
    assert [s for s, _ in expected["eval/loss"]] == [3, 6]
    assert sorted(run["scalars"]) == sorted(expected)
    for key, points in expected.items():
        # mlflow stores identical points (step, value) once when they share a millisecond
        # timestamp, twice otherwise: compare the distinct points
        want, got = list(dict.fromkeys(points)), list(dict.fromkeys(run["scalars"][key]))
        assert same_series(got, want, rel=1e-12), (key, got, want)


def test_server_killed_mid_run_switches_the_reporter_off(server, chdir_tmp, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    for name in HTTP_ENV:  # exercise the reporter's own bounds, not the test suite's
        monkeypatch.delenv(name, raising=False)
    kill_step, max_steps = 4, 24

    seen_before_kill: dict = {}

    class KillServer:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == kill_step:
                # the run is live on the server (created, its params stored)...
                n_params = len(trainer.args.to_dict())
                seen_before_kill.update(wait_for_run(server.url, "killed-run", n_params))
                server.kill()  # ...when the server goes away
            elif state.global_step > kill_step:
                time.sleep(0.1)  # the run goes on for a while after the server died

    out = chdir_tmp / "out"
    trainer = Trainer(
        args=make_args(out, "killed-run", ["mlflow", "tensorboard"], max_steps=max_steps, logging_steps=1,
                       eval_steps=8),
        plugins=[KillServer()], **tiny_trainer_parts(),
    )
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        begin = time.monotonic()
        result = trainer.train()
        total = time.monotonic() - begin

    assert server.killed_at is not None and server.proc.poll() is not None
    assert seen_before_kill["status"] == "RUNNING", "the run had not started on the server before the kill"
    assert result.global_step == max_steps  # the training finished
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and "'mlflow'" in r.getMessage()]
    assert len(failures) == 1, caplog.text  # warned once: switched off after the first failure
    message = failures[0].getMessage()
    assert "switched off" in message
    assert "report_run_start" not in message  # it failed mid-run, not while starting
    # the failure came within a bounded time of the kill (mlflow's defaults retry ~4 min per call)
    failed_after = failures[0].created - server.killed_at
    assert failed_after < 30, failed_after
    assert total < 60, total
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # the reporter's bound was in force

    # the TensorBoard reporter beside it has every scalar, and the run's end
    tb = read_tensorboard(out / "runs")
    expected = tracker_series(trainer.state.log_history)
    assert [s for s, _ in expected["train/loss"]] == list(range(1, max_steps + 1))
    assert sorted(tb["scalars"]) == sorted(expected)
    for key, points in expected.items():
        assert same_series(tb["scalars"][key], points, rel=1e-6), key
    assert tb["status"] == "completed"
