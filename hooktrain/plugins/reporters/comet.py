"""Comet reporter (``report_to="comet"``, alias ``"comet_ml"``).

Online or offline, decided from comet's own configuration (environment variables and
``.comet.config``):

* offline (``comet_ml.OfflineExperiment``, no account or network needed) when
  ``COMET_START_ONLINE`` is false, or when no API key is configured. The archive
  ``<key>.zip`` lands in ``$COMET_OFFLINE_DIRECTORY``, else ``<output_dir>/comet``, when the
  run ends; upload it later with ``comet upload``.
* online (``comet_ml.Experiment``) otherwise.

Project: ``$COMET_PROJECT_NAME``, else ``"hooktrain"``. The run name is the experiment
name, the arguments dict its parameters (nested values flattened by comet), scalars are
logged with ``log_metrics(step=...)``, and the end status is the "other" value ``status``.

Resuming (``report_resume``): the stored experiment key is continued, online with
``comet_ml.ExistingExperiment``, offline with ``comet_ml.ExistingOfflineExperiment`` (a second
archive ``<key>-<suffix>.zip`` that ``comet upload`` appends to the same experiment). Comet keeps
every value it was sent, so values the interrupted run logged after its checkpoint stay (a
preempted run has none: its checkpoint is its last step).

Comet's automatic logging (import hooks that patch torch, TensorBoard and mlflow, and would
make a second experiment out of the other reporters' calls) is switched off with
``COMET_DISABLE_AUTO_LOGGING=1`` unless that variable is already set; it only works when
this reporter is the first to import comet_ml. Code, git, environment, stdout and graph
capture are off too: the reporter logs exactly what the Trainer reports.
"""

from __future__ import annotations

import os
from typing import Any

from hooktrain.core.markers import hookimpl
from hooktrain.core.reporter import Reporter
from hooktrain.plugins.reporters import installed, missing_library

NAME = "comet"
ALIASES = ("comet_ml",)
DEFAULT_PROJECT = "hooktrain"

# The experiment logs only what it is given.
_QUIET: dict[str, Any] = {
    "log_code": False,
    "log_graph": False,
    "auto_param_logging": False,
    "auto_metric_logging": False,
    "parse_args": False,
    "auto_output_logging": False,
    "log_env_details": False,
    "log_git_metadata": False,
    "log_git_patch": False,
    "display_summary_level": 0,
}


def available() -> bool:
    """Whether comet_ml is installed (used by ``report_to="all"``).

    No API key is needed: without one the reporter logs offline. Nothing is imported.
    """
    return installed("comet_ml")


class CometReporter(Reporter):
    """Log one run to a Comet experiment, online or offline."""

    name = NAME

    def __init__(self, args: Any):
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        try:
            import comet_ml
            import comet_ml.config
        except ImportError as exc:
            raise missing_library(NAME, "comet_ml", "comet", exc) from exc
        self._comet = comet_ml
        config = comet_ml.config.get_config()
        start_online = config.get_bool(None, "comet.start.online")
        self.online: bool = start_online is not False and bool(config["comet.api_key"])
        self.project_name: str = config["comet.project_name"] or DEFAULT_PROJECT
        default_dir = os.path.join(os.fspath(args.output_dir), "comet")
        self.offline_directory: str | None = (
            None
            if self.online
            else os.path.abspath(config.get_raw(None, "comet.offline_directory", default=default_dir))
        )
        self.experiment: Any = None
        self.experiment_key: str | None = None
        self._resume_key: str | None = None

    def run_state(self) -> dict[str, Any] | None:
        return {"experiment_key": self.experiment_key} if self.experiment_key is not None else None

    def report_resume(self, run: dict[str, Any], step: int) -> None:
        self._resume_key = run.get("experiment_key")

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        experiment: Any
        key, self._resume_key = self._resume_key, None
        comet = self._comet
        if self.offline_directory is None:
            if key is None:
                experiment = comet.Experiment(project_name=self.project_name, **_QUIET)
            else:
                experiment = comet.ExistingExperiment(experiment_key=key, project_name=self.project_name, **_QUIET)
        else:
            os.makedirs(self.offline_directory, exist_ok=True)
            where = {"project_name": self.project_name, "offline_directory": self.offline_directory}
            if key is None:
                experiment = comet.OfflineExperiment(**where, **_QUIET)
            else:
                experiment = comet.ExistingOfflineExperiment(experiment_key=key, **where, **_QUIET)
        self.experiment, self.experiment_key = experiment, experiment.get_key()
        if key is None:
            experiment.set_name(run_name)
        experiment.log_parameters(config)

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.experiment is not None:
            self.experiment.log_metrics(scalars, step=step)

    def report_artifact(self, path: str, name: str, step: int) -> None:
        if self.experiment is not None:
            self.experiment.log_model(name, path)

    def report_run_end(self, status: str) -> None:
        experiment, self.experiment = self.experiment, None
        if experiment is None:
            return
        try:
            experiment.log_other("status", status)
        finally:
            experiment.end()


@hookimpl
def register_reporters(register: Any) -> None:
    register(NAME, CometReporter)
    for alias in ALIASES:
        register(alias, CometReporter)
