"""Weights & Biases reporter (``report_to="wandb"``).

Each reporter object owns its own run (``wandb.init(reinit="create_new")``), so two
Trainers, or two runs in one process, never share or finish each other's run.

* project: ``$WANDB_PROJECT``, else ``"hooktrain"``; the run's display name is the run name;
  the config is the arguments dict.
* files: under ``$WANDB_DIR``, else ``args.output_dir`` (wandb adds ``wandb/<run>/``).
* every other ``WANDB_*`` variable (``WANDB_MODE=offline``, ``WANDB_ENTITY``, ``WANDB_SILENT``…)
  is read by wandb itself.
* scalars: ``run.log(scalars, step=step)``. Scalars reported twice at one step (training
  logs and evaluation metrics) are merged into one row; wandb drops rows whose step goes
  backwards, so the reporting bridge reports in step order.
* end: the status goes to the run summary (``status``), then
  ``run.finish(exit_code=0)`` for a completed run, ``exit_code=1`` otherwise; a preempted run
  is first marked with ``run.mark_preempting()``.
* resuming (``report_resume``): ``wandb.init(id=<the stored run id>, resume="allow")`` continues
  the run (offline: a new ``offline-run-…`` directory of the same run id, merged by ``wandb
  sync``); the arguments update its config. wandb accepts no step at or below the last one of a
  resumed run, so scalars up to the resumed step (an evaluation of that step run again) are not
  sent again; steps the interrupted run logged after its checkpoint cannot be replaced.
"""

from __future__ import annotations

import os
from typing import Any

from hooktrain.core.markers import hookimpl
from hooktrain.core.reporter import Reporter
from hooktrain.plugins.reporters import installed, missing_library

NAME = "wandb"
DEFAULT_PROJECT = "hooktrain"



def available() -> bool:
    """Whether wandb is installed (used by ``report_to="all"``); nothing is imported."""
    return installed("wandb")


class WandbReporter(Reporter):
    """Log one run to Weights & Biases (online, offline or disabled, as wandb is configured)."""

    name = NAME

    def __init__(self, args: Any):
        try:
            import wandb
        except ImportError as exc:
            raise missing_library(NAME, "wandb", "wandb", exc) from exc
        self._wandb = wandb
        # absolute: wandb-core is a long-lived process of its own, which resolves a relative
        # path against *its* working directory (the one of the first run in this process)
        self.dir = os.path.abspath(os.fspath(os.environ.get("WANDB_DIR") or args.output_dir))
        self.project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.run: Any = None
        self._resume_id: str | None = None
        self._skip_through = -1  # resumed: steps up to the checkpoint's are in the run already

    def run_state(self) -> dict[str, Any] | None:
        run = self.run
        return {"id": run.id, "project": run.project} if run is not None else None

    def report_resume(self, run: dict[str, Any], step: int) -> None:
        self._resume_id = run.get("id")
        self.project = run.get("project") or self.project
        self._skip_through = int(step)

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        # wandb silently falls back to /tmp when it cannot write ``dir``: fail loudly instead.
        os.makedirs(self.dir, exist_ok=True)
        if not os.access(self.dir, os.W_OK):
            raise PermissionError(f"wandb reporter: directory {self.dir!r} is not writable")
        resume_id, self._resume_id = self._resume_id, None
        if resume_id is None:
            self._skip_through = -1
            self.run = self._wandb.init(
                project=self.project, name=run_name, config=config, dir=self.dir, reinit="create_new",
            )
            return
        self.run = self._wandb.init(
            project=self.project, id=resume_id, resume="allow", dir=self.dir, reinit="create_new",
        )
        self.run.config.update(config, allow_val_change=True)  # e.g. resume_from_checkpoint

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        if step > self._skip_through:
            self.run.log(scalars, step=step)  # the bridge's steps never go backwards within a run

    def report_artifact(self, path: str, name: str, step: int) -> None:
        if self.run is None:
            return
        artifact = self._wandb.Artifact(name=f"{self.run.id}-checkpoints", type="model")
        artifact.add_dir(path)  # copies the files to wandb's staging area
        logged = self.run.log_artifact(artifact, aliases=[name, "latest"])
        if not getattr(self.run, "offline", False):
            logged.wait()  # online: uploaded before rotation may delete the checkpoint

    def report_run_end(self, status: str) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.summary["status"] = status
            if status == "preempted":
                run.mark_preempting()
        finally:
            run.finish(exit_code=0 if status == "completed" else 1)


@hookimpl
def register_reporters(register: Any) -> None:
    register(NAME, WandbReporter)
