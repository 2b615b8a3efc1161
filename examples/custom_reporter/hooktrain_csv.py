"""A third-party reporter for hooktrain: every reported scalar as one row of a CSV file.

Installed, it registers the reporter ``"csv"``; select it with
``TrainingArguments(report_to=["csv"])`` (next to other reporters if you like). It writes

* ``<output_dir>/metrics.csv`` — header ``step,name,value``, then one row per scalar, in the
  order they were reported (``train/loss``, ``eval/loss``… at the global step);
* ``<output_dir>/run.json`` — ``{"run_name": ..., "status": ...}``: written at the start with
  ``"status": "running"`` and rewritten with the end status (``completed``, ``stopped``,
  ``failed``).

``CsvReporter`` implements three methods of the reporter interface (``hooktrain.Reporter``);
the ``register_reporters`` hook adds it to the registry under its name. hooktrain calls the
methods from a background thread, one call at a time and in order, so the reporter needs no
locking, and may flush after every call without slowing the training down.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from hooktrain import Reporter, hookimpl

NAME = "csv"


class CsvReporter(Reporter):
    """Appends the run's scalars to ``metrics.csv`` in the run's output directory."""

    name = NAME

    def __init__(self, args: Any):
        # Built when the Trainer is built (report_to selects "csv"); open nothing yet.
        self.output_dir = os.fspath(args.output_dir)
        self.path = os.path.join(self.output_dir, "metrics.csv")
        self.run_name: str | None = None
        self._file: Any = None
        self._writer: Any = None

    def _write_run(self, status: str) -> None:
        with open(os.path.join(self.output_dir, "run.json"), "w", encoding="utf-8") as f:
            json.dump({"run_name": self.run_name, "status": status}, f)

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        self.run_name = run_name
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["step", "name", "value"])
        self._write_run("running")

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.writerow([step, name, repr(float(value))])
        self._file.flush()

    def report_run_end(self, status: str) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = self._writer = None
        self._write_run(status)


@hookimpl
def register_reporters(register):
    register(NAME, CsvReporter)
