"""MLflow reporter (``report_to="mlflow"``), written with its own ``MlflowClient``.

No process-global state of mlflow's fluent API (active run, tracking URI) is used or changed.

* tracking URI: ``$MLFLOW_TRACKING_URI``, else an embedded SQLite store,
  ``sqlite:///<absolute output_dir>/mlflow.db`` (a SQLite path whose directory is not
  writable is refused at once; mlflow itself would retry for ~100 s).
* experiment: ``$MLFLOW_EXPERIMENT_NAME``, else ``"hooktrain"``, created when missing.
* run: a new run named after the run name; params are the arguments dict (names
  sanitised to mlflow's alphabet, values as strings truncated to mlflow's 6000 characters,
  sent in batches of 100).
* metrics are buffered and sent with ``log_batch`` (one transaction instead of one per
  value: SQLite costs ~2.5 ms per call) after each batch of events the bridge hands over
  (``report_flush``) or every 1000 values, and at the end; the run is then terminated as ``FINISHED`` (completed), ``KILLED``
  (stopped, preempted) or ``FAILED``.
* resuming (``report_resume``): the stored ``run_id`` is reopened (status ``RUNNING`` again,
  params not logged again) and finished as usual. mlflow cannot delete metric values, so values
  the interrupted run logged after its checkpoint stay beside the new ones of the same steps (a
  preempted run has none: its checkpoint is its last step). A run id the tracking store does not
  know (another ``MLFLOW_TRACKING_URI``) starts a new run tagged ``hooktrain.resumed_from``.

Bounded HTTP: mlflow's defaults retry a dead tracking server for about four minutes per
call. Unless they are already set, the reporter sets (process-wide, before mlflow is
imported) ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` so an unreachable server fails within seconds. Set them
yourself to change that.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from hooktrain.core.markers import hookimpl
from hooktrain.core.reporter import Reporter
from hooktrain.plugins.reporters import installed, missing_library

logger = logging.getLogger("hooktrain")

NAME = "mlflow"
DEFAULT_EXPERIMENT = "hooktrain"
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "preempted": "KILLED", "failed": "FAILED"}
_BAD_CHARS = re.compile(r"[^/\w.\- :]")

# Fallbacks for mlflow's limits (mlflow.utils.validation) should a version lack them.
_PARAM_VALUE_LENGTH = 6000
_KEY_LENGTH = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def available() -> bool:
    """Whether mlflow is installed (used by ``report_to="all"``); nothing is imported."""
    return installed("mlflow")


def sanitize_key(key: str, max_length: int = _KEY_LENGTH) -> str:
    """*key* as a valid mlflow param/metric name (``train/loss`` stays as is)."""
    name = posixpath.normpath(_BAD_CHARS.sub("_", str(key))).lstrip("/")
    if name in ("", ".") or name.startswith(".."):
        name = "_" + name
    return name[:max_length]


def _param_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:///…`` URI, or ``None`` (in-memory or another store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


class MlflowReporter(Reporter):
    """Log one run to an MLflow tracking store through a private ``MlflowClient``."""

    name = NAME

    def __init__(self, args: Any):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise missing_library(NAME, "mlflow", "mlflow", exc) from exc
        validation: Any
        try:
            from mlflow.utils import validation
        except ImportError:  # pragma: no cover - an mlflow without the module: keep the fallbacks
            validation = None
        self._value_length = getattr(validation, "MAX_PARAM_VAL_LENGTH", _PARAM_VALUE_LENGTH)
        self._key_length = getattr(validation, "MAX_ENTITY_KEY_LENGTH", _KEY_LENGTH)
        self._params_per_batch = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", _PARAMS_PER_BATCH)
        self._metrics_per_batch = getattr(validation, "MAX_METRICS_PER_BATCH", _METRICS_PER_BATCH)

        self._client_class = MlflowClient
        self._metric = Metric
        self._param = Param
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            db = os.path.join(os.path.abspath(os.fspath(args.output_dir)), "mlflow.db")
            uri = "sqlite:///" + db
        self.tracking_uri: str = uri
        self.experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.client: Any = None
        self.run_id: str | None = None
        self._resume_id: str | None = None
        self._buffer: list[Any] = []

    # ---- the reporter interface ----------------------------------------------------------

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            parent = os.path.dirname(os.path.abspath(db))
            os.makedirs(parent, exist_ok=True)
            if not os.access(parent, os.W_OK):
                raise PermissionError(f"mlflow reporter: {parent!r} is not writable ({self.tracking_uri})")
        client = self._client_class(tracking_uri=self.tracking_uri)
        resume_id, self._resume_id = self._resume_id, None
        if resume_id is not None and self._reopen(client, resume_id):
            self.client, self.run_id = client, resume_id
            return
        experiment_id = self._experiment_id(client)
        tags = {"hooktrain.resumed_from": resume_id} if resume_id is not None else None
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.client, self.run_id = client, run.info.run_id

        params: dict[str, str] = {}
        for key, value in config.items():
            params[sanitize_key(key, self._key_length)] = _param_value(value)[: self._value_length]
        items = [self._param(k, v) for k, v in params.items()]
        size = self._params_per_batch
        for i in range(0, len(items), size):
            client.log_batch(self.run_id, params=items[i : i + size])

    def run_state(self) -> dict[str, Any] | None:
        return {"run_id": self.run_id} if self.run_id is not None else None

    def report_resume(self, run: dict[str, Any], step: int) -> None:
        self._resume_id = run.get("run_id")

    def _reopen(self, client: Any, run_id: str) -> bool:
        """Mark the stored run as running again; False when this tracking store does not have it."""
        try:
            client.get_run(run_id)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            logger.warning("mlflow: run %s is not in %s (%s); starting a new run tagged "
                           "hooktrain.resumed_from", run_id, self.tracking_uri, exc)
            return False
        client.update_run(run_id, status="RUNNING")
        return True

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        timestamp = int(time.time() * 1000)
        step = int(step)
        metrics = [
            self._metric(sanitize_key(k, self._key_length), float(v), timestamp, step)
            for k, v in scalars.items()
        ]
        self._buffer.extend(metrics)
        if len(self._buffer) >= self._metrics_per_batch:
            self.flush()

    def report_flush(self) -> None:
        if self.client is not None:
            self.flush()

    def report_artifact(self, path: str, name: str, step: int) -> None:
        if self.client is not None:
            self.client.log_artifacts(self.run_id, path, artifact_path=name)

    def report_run_end(self, status: str) -> None:
        if self.client is None:
            return
        try:
            self.flush()
        finally:
            client, run_id = self.client, self.run_id
            self.client = None
            client.set_terminated(run_id, _STATUS.get(status, "KILLED"))

    # ---- helpers --------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the buffered metrics (one ``log_batch`` per 1000 values)."""
        while self._buffer:
            batch = self._buffer[: self._metrics_per_batch]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._buffer[: len(batch)]

    def _experiment_id(self, client: Any) -> str:
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        db = _sqlite_path(self.tracking_uri)
        if db is not None:  # artifacts beside the embedded store, not in ./mlruns of the CWD
            location = Path(os.path.dirname(os.path.abspath(db)), "mlflow-artifacts").as_uri()
        try:
            return client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # created concurrently by another process: take that one
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise
            return experiment.experiment_id


@hookimpl
def register_reporters(register: Any) -> None:
    register(NAME, MlflowReporter)
