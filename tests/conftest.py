"""Shared test setup.

The trackers run for real but offline: no account, no network, no file outside a
session temporary directory. The environment is set at import time, before any test module
imports a tracker (``COMET_DISABLE_AUTO_LOGGING`` only works before ``import comet_ml``).
A variable already set by the caller wins.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

TRACKER_HOME = tempfile.mkdtemp(prefix="hooktrain-tests-")
atexit.register(shutil.rmtree, TRACKER_HOME, ignore_errors=True)

OFFLINE_ENV = {
    # wandb: offline, quiet, no helper processes, nothing under $HOME
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_CONSOLE": "off",
    "WANDB_X_DISABLE_STATS": "true",
    "WANDB_X_DISABLE_META": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_X_SAVE_REQUIREMENTS": "false",
    "WANDB_CACHE_DIR": os.path.join(TRACKER_HOME, "wandb-cache"),
    "WANDB_CONFIG_DIR": os.path.join(TRACKER_HOME, "wandb-config"),
    "WANDB_DATA_DIR": os.path.join(TRACKER_HOME, "wandb-data"),
    # comet: no import hooks, no Sentry, no announcements or INFO lines
    "COMET_DISABLE_AUTO_LOGGING": "1",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_DISABLE_ANNOUNCEMENT": "true",
    "COMET_LOGGING_CONSOLE": "ERROR",
    # mlflow: no telemetry, a dead server fails at once
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "DO_NOT_TRACK": "true",
    # caches that default to $HOME (mlflow telemetry, matplotlib imported by comet)
    "XDG_CONFIG_HOME": os.path.join(TRACKER_HOME, "xdg-config"),
    "MPLCONFIGDIR": os.path.join(TRACKER_HOME, "matplotlib"),
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    """Run the test inside ``tmp_path``: trackers' CWD-relative defaults land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def fork_servers():
    """``fork_servers(env)``: a :class:`forkserver.ForkServer` with that environment, started on
    first use and shared by the whole session (one ``import torch`` for many child processes); the
    three used last are kept (each holds an imported torch in memory)."""
    from forkserver import ForkServer

    servers: dict[tuple, ForkServer] = {}

    def get(env: dict[str, str]) -> ForkServer:
        key = tuple(sorted(env.items()))
        server = servers.pop(key, None) or ForkServer(env)
        servers[key] = server  # the newest last
        while len(servers) > 3:
            servers.pop(next(iter(servers))).close()
        return server

    yield get
    for server in servers.values():
        server.close()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """``mlflow_store(path)`` puts an empty MLflow SQLite store at *path* (folders made) and returns it.

    mlflow itself creates the store once per session (its schema takes seconds: dozens of
    migrations); each test then gets a copy, so its run opens an existing store, as every run after
    a user's first does. The main-job test (test_examples.py) still lets mlflow create its store.
    """
    import shutil
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    template = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()

    def copy_to(path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, path)
        return path

    return copy_to
