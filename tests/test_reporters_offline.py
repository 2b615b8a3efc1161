"""The four built-in reporters, run for real (offline) and read back with each tracker's reader.

Each reporter is driven exactly as the reporting bridge drives it: ``report_run_start``,
``report_scalars`` over a few steps (training and evaluation keys, two calls at one step, a
NaN), ``report_run_end``, all from one background thread. The tracker's own reader must then
give back the same series, steps, params, run name and status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pluggy
import pytest
from readback import read_comet, read_mlflow, read_tensorboard, read_wandb, same_series

from hooktrain.core import hookspecs
from hooktrain.core.args import TrainingArguments
from hooktrain.core.markers import PROJECT
from hooktrain.core.reporter import Reporter, reporter_calls
from hooktrain.plugins.reporters import comet, mlflow, tensorboard, wandb

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")

# (step, scalars) in the order the bridge reports them; steps 2 and 4 get two calls.
CALLS: list[tuple[int, dict[str, float]]] = [
    (1, {"train/loss": 2.5, "train/learning_rate": 1e-3}),
    (2, {"train/loss": 2.0, "train/learning_rate": 9e-4}),
    (2, {"eval/loss": 2.25, "eval/accuracy": 0.5}),
    (3, {"train/loss": 1.5, "train/learning_rate": 8e-4}),
    (4, {"train/loss": 1.25, "train/learning_rate": 7e-4}),
    (4, {"eval/loss": 1.75, "eval/accuracy": NAN}),
    (5, {"train/loss": 1.0, "train/learning_rate": 6e-4, "train/grad_norm": 3.0}),
]


def expected_series() -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, scalars in CALLS:
        for key, value in scalars.items():
            series.setdefault(key, []).append((step, value))
    return series


def assert_scalars(got: dict[str, list[tuple[int, float]]], rel: float = 1e-12) -> None:
    expected = expected_series()
    assert sorted(got) == sorted(expected)
    for key, series in expected.items():
        assert same_series(got[key], series, rel=rel), (key, got[key], series)


def make_args(output_dir: str | os.PathLike[str], run_name: str, report_to: str) -> TrainingArguments:
    return TrainingArguments(output_dir=os.fspath(output_dir), run_name=run_name, report_to=[report_to])


def drive(reporter: object, run_name: str, config: dict, status: str) -> None:
    """Call the reporter's hooks as the bridge does, from a background thread."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            reporter.report_run_start(run_name=run_name, config=config)
            for step, scalars in CALLS:
                reporter.report_scalars(scalars=dict(scalars), step=step)
            reporter.report_run_end(status=status)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=body, name="reporting-bridge")
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "reporter hung"
    if errors:
        raise errors[0]


def run_python(forks, code: str):
    """``python -c CODE`` from the repository root, in a process forked from one that imported torch
    and hooktrain and nothing else (*forks*: the ``fork_servers`` fixture, tests/forkserver.py)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return forks(env).run("-c", code=code, cwd=REPO, timeout=120)


# ---- registration, lazy imports, missing libraries ----------------------------------------


def test_modules_register_reporter_names_through_pluggy(tmp_path):
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module in (tensorboard, wandb, mlflow, comet):
        pm.register(module)
    pm.check_pending()

    registered: dict[str, object] = {}
    pm.hook.register_reporters(register=registered.__setitem__)
    assert registered == {
        "tensorboard": tensorboard.TensorBoardReporter,
        "wandb": wandb.WandbReporter,
        "mlflow": mlflow.MlflowReporter,
        "comet": comet.CometReporter,
        "comet_ml": comet.CometReporter,
    }
    assert all(m.available() for m in (tensorboard, wandb, mlflow, comet))
    # a reporter is an object of the reporter interface, not a plugin: it implements no hook
    reporter = tensorboard.TensorBoardReporter(make_args(tmp_path, "r", "tensorboard"))
    assert isinstance(reporter, Reporter)
    assert not [name for name in dir(reporter) if pm.parse_hookimpl_opts(reporter, name) is not None]
    calls, problems = reporter_calls(reporter, "tensorboard")
    assert sorted(calls) == ["report_flush", "report_resume", "report_run_end", "report_run_start", "report_scalars"]
    assert not problems


def test_importing_reporter_modules_imports_no_tracker(fork_servers):
    code = """
import sys
from hooktrain.plugins.reporters import comet, mlflow, tensorboard, wandb
names = []
for m in (comet, mlflow, tensorboard, wandb):
    assert m.available()
    m.register_reporters(register=lambda name, factory: names.append(name))
heavy = ("wandb", "mlflow", "comet_ml", "tensorboard", "torch.utils.tensorboard")
print(sorted(names), sorted(n for n in heavy if n in sys.modules))
"""
    proc = run_python(fork_servers, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "['comet', 'comet_ml', 'mlflow', 'tensorboard', 'wandb'] []"


def test_missing_tracker_library_names_the_extra(tmp_path, fork_servers):
    code = f"""
import sys
for name in ("wandb", "mlflow", "comet_ml", "tensorboard"):
    sys.modules[name] = None  # "not installed"
from hooktrain.core.args import TrainingArguments
from hooktrain.core.errors import PluginLoadError
from hooktrain.plugins.reporters import comet, mlflow, tensorboard, wandb
args = TrainingArguments(output_dir={str(tmp_path)!r})
for module, cls in ((wandb, "WandbReporter"), (mlflow, "MlflowReporter"),
                    (comet, "CometReporter"), (tensorboard, "TensorBoardReporter")):
    assert module.available() is False, module
    try:
        getattr(module, cls)(args)
    except PluginLoadError as exc:
        print(exc)
    else:
        raise SystemExit(f"{{cls}} did not raise")
"""
    proc = run_python(fork_servers, code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == 4
    for line, extra in zip(lines, ("wandb", "mlflow", "comet", "tensorboard"), strict=True):
        assert f'pip install "hooktrain[{extra}]"' in line
        assert f'report_to="{extra}"' in line


# ---- TensorBoard ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "tb_status", "crc"),
    [("completed", "STATUS_SUCCESS", "google_crc32c"), ("failed", "STATUS_FAILURE", "pure Python")],
)
def test_tensorboard_roundtrip(chdir_tmp, monkeypatch, status, tb_status, crc):
    """Also with tensorboard's pure-Python checksums (google_crc32c missing): the reader checks them."""
    monkeypatch.delenv(tensorboard.LOGDIR_ENV, raising=False)
    if crc == "pure Python":
        monkeypatch.setitem(sys.modules, "google_crc32c", None)
    args = make_args("out", "tb-run", "tensorboard")
    config = args.to_dict()
    reporter = tensorboard.TensorBoardReporter(args)
    assert reporter.log_dir == args.logging_dir == os.path.join("out", "runs")
    drive(reporter, "tb-run", config, status)

    back = read_tensorboard(args.logging_dir)
    assert back["run_name"] == "tb-run"
    assert back["status"] == status
    assert back["params"] == config
    assert_scalars(back["scalars"], rel=1e-6)  # stored as float32
    flat = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    assert back["hparams"] == pytest.approx(
        {k: float(v) if not isinstance(v, str) else v for k, v in flat.items()}
    )
    assert back["hparams_status"] == tb_status
    assert len(list(Path(args.logging_dir).iterdir())) == 1  # one events file, no child run


def test_tensorboard_logging_dir_env_overrides(chdir_tmp, monkeypatch):
    monkeypatch.setenv(tensorboard.LOGDIR_ENV, str(chdir_tmp / "from-env"))
    args = make_args("out", "tb-env", "tensorboard")
    reporter = tensorboard.TensorBoardReporter(args)
    drive(reporter, "tb-env", args.to_dict(), "completed")
    assert not Path(args.logging_dir).exists()
    assert read_tensorboard(chdir_tmp / "from-env")["run_name"] == "tb-env"


# ---- wandb ----------------------------------------------------------------------------


@pytest.fixture
def wandb_service():
    """Stop wandb's background service after the test (it also leaves WANDB_SERVICE in the env)."""
    yield
    import wandb as wandb_lib

    wandb_lib.teardown()


def test_wandb_roundtrip_two_concurrent_runs(chdir_tmp, monkeypatch, wandb_service):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "hooktrain-tests")
    args_a = make_args("out-a", "wb-a", "wandb")
    args_b = make_args("out-b", "wb-b", "wandb")
    a, b = wandb.WandbReporter(args_a), wandb.WandbReporter(args_b)
    # b's run is open while a runs: each reporter keeps its own run
    b.report_run_start(run_name="wb-b", config={"seed": 7})
    drive(a, "wb-a", args_a.to_dict(), "stopped")
    b.report_scalars(scalars={"train/loss": 0.5}, step=3)
    b.report_run_end(status="completed")

    back = read_wandb(chdir_tmp / "out-a")
    assert back["run_name"] == "wb-a"
    assert back["project"] == "hooktrain-tests"
    assert back["params"] == args_a.to_dict()
    assert_scalars(back["scalars"])
    assert back["status"] == "stopped"
    assert back["exit_code"] == 1

    other = read_wandb(chdir_tmp / "out-b")
    assert (other["run_name"], other["params"], other["status"], other["exit_code"]) == (
        "wb-b",
        {"seed": 7},
        "completed",
        0,
    )
    assert other["scalars"] == {"train/loss": [(3, 0.5)]}

    # wandb's own Go reader agrees with the proto parser
    leet = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(leet), "leet", "inspect", "--json", back["file"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, WANDB_MODE="offline"),
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line)["history"] for line in proc.stdout.splitlines() if '"type":"history"' in line]
    leet_series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row["item"].items():
            if not key.startswith("_"):
                leet_series.setdefault(key, []).append((row["step"]["num"], float(value)))
    assert_scalars(leet_series)


# ---- Comet ----------------------------------------------------------------------------


@pytest.fixture
def comet_env(monkeypatch):
    for name in ("COMET_API_KEY", "COMET_START_ONLINE", "COMET_OFFLINE_DIRECTORY", "COMET_PROJECT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMET_CONFIG", os.devnull)  # ignore a ~/.comet.config


def test_comet_offline_roundtrip(chdir_tmp, comet_env):
    args = make_args("out", "comet-run", "comet")
    config = args.to_dict()
    reporter = comet.CometReporter(args)
    assert reporter.online is False  # no API key
    assert reporter.offline_directory == str(chdir_tmp / "out" / "comet")
    drive(reporter, "comet-run", config, "failed")

    back = read_comet(reporter.offline_directory)
    assert back["run_name"] == "comet-run"
    assert back["status"] == "failed"
    assert back["params"] == config
    assert_scalars(back["scalars"])
    assert back["experiment"]["project_name"] == "hooktrain"
    assert not Path(".cometml-runs").exists()  # no stray auto-logged experiment


def test_comet_online_or_offline_from_comet_config(tmp_path, comet_env, monkeypatch):
    args = make_args(tmp_path, "c", "comet")
    monkeypatch.setenv("COMET_API_KEY", "not-a-real-key")
    online = comet.CometReporter(args)
    assert online.online is True and online.offline_directory is None

    monkeypatch.setenv("COMET_START_ONLINE", "false")
    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("COMET_PROJECT_NAME", "proj")
    offline = comet.CometReporter(args)
    assert offline.online is False
    assert offline.offline_directory == str(tmp_path / "elsewhere")
    assert offline.project_name == "proj"


# ---- MLflow ---------------------------------------------------------------------------


def test_mlflow_roundtrip_statuses_and_params(chdir_tmp, monkeypatch, mlflow_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    expected_uri = "sqlite:///" + str(mlflow_store(chdir_tmp / "out" / "mlflow.db"))
    runs = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
    for status in runs:
        args = make_args("out", f"ml-{status}", "mlflow")
        config = args.to_dict()
        config.update({f"extra_{i}": i for i in range(120)})  # > 100 params: several batches
        config.update({"long": "x" * 7000, "bad key?": [1, 2]})
        reporter = mlflow.MlflowReporter(args)
        assert reporter.tracking_uri == expected_uri
        drive(reporter, f"ml-{status}", config, status)
        assert reporter.run_id

    for status, mlflow_status in runs.items():
        back = read_mlflow(expected_uri, f"ml-{status}")
        assert back["run_name"] == f"ml-{status}"
        assert back["status"] == mlflow_status
        assert back["experiment_name"] == "hooktrain"
        assert_scalars(back["scalars"])
        params = back["params"]
        assert len(params) == len(config)
        assert params["long"] == "x" * 6000
        assert params["bad key_"] == "[1, 2]"
        assert params["extra_119"] == "119"
        assert params["learning_rate"] == str(config["learning_rate"])
        assert params["report_to"] == '["mlflow"]'
        assert params["run_name"] == f"ml-{status}"


def test_mlflow_metrics_are_batched(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(mlflow_store(tmp_path / "m.db")))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "batched")
    reporter = mlflow.MlflowReporter(make_args(tmp_path / "unused", "b", "mlflow"))
    reporter.report_run_start(run_name="b", config={})
    calls = []
    real = reporter.client.log_batch
    monkeypatch.setattr(reporter.client, "log_batch", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    for step in range(1, 201):
        reporter.report_scalars(scalars={"train/loss": 1.0 / step}, step=step)
    reporter.report_run_end(status="completed")
    assert 1 <= len(calls) <= 3  # not one transaction per value
    back = read_mlflow("sqlite:///" + str(tmp_path / "m.db"), "b")
    assert back["experiment_name"] == "batched"
    assert back["scalars"]["train/loss"] == [(s, 1.0 / s) for s in range(1, 201)]
    assert not (tmp_path / "unused").exists()


def test_mlflow_unwritable_store_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    reporter = mlflow.MlflowReporter(make_args(blocker / "out", "x", "mlflow"))
    start = time.monotonic()
    with pytest.raises(OSError):
        reporter.report_run_start(run_name="x", config={})
    assert time.monotonic() - start < 5


def test_mlflow_bounds_http_retries_unless_set(tmp_path, monkeypatch):
    for name in mlflow.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    mlflow.MlflowReporter(make_args(tmp_path, "x", "mlflow"))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_wandb_relative_output_dir_follows_the_current_directory(tmp_path, monkeypatch, wandb_service):
    """wandb-core outlives a run and keeps the working directory of the first one: a relative
    output_dir must still land under the working directory of *this* run."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        args = make_args("out", f"wb-{name}", "wandb")
        drive(wandb.WandbReporter(args), f"wb-{name}", {"seed": 1}, "completed")
        assert read_wandb(tmp_path / name / "out")["run_name"] == f"wb-{name}"
