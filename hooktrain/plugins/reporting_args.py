"""Settings of reporting to experiment trackers (:mod:`hooktrain.plugins.reporting`); torch-free."""

from __future__ import annotations

import os
from typing import Any

from hooktrain.core.settings import Checks, Invalid, arg, config_group

DEFAULT_REPORTERS = ("tensorboard",)
REPORT_ERRORS = ("warn", "raise")


def _default_reporters(value: Any) -> Any:
    return list(DEFAULT_REPORTERS) if value is None else value


def _report_to(items: list[str]) -> list[str]:
    """Repeats dropped; ``'all'`` and ``'none'`` stand alone; ``['none']`` is ``[]``."""
    items = list(dict.fromkeys(items))
    if any(i in ("all", "none") for i in items) and len(items) > 1:
        raise Invalid(f"report_to={items!r} is invalid: 'all' and 'none' cannot be combined with "
                      "other names")
    return [] if items == ["none"] else items


@config_group
class ReportingArguments:
    report_to: list[str] = arg(
        None, "Reporter names, 'all' (every installed reporter) or 'none'; a string is one name; "
        "None means the default ['tensorboard'].", factory=lambda: list(DEFAULT_REPORTERS),
        parse=_default_reporters, normalise=_report_to)
    run_name: str | None = arg(
        None, "Run name shown by the reporters; None lets each reporter choose.", nonempty=True)
    logging_dir: str | None = arg(
        None, "TensorBoard log directory; None means output_dir/runs.", nonempty=True)
    report_errors: str = arg(
        "warn", "What a failing reporter does: 'warn' logs and disables it, 'raise' stops training.",
        choices=REPORT_ERRORS)
    report_timeout: float = arg(
        30.0, "Seconds the reporters may take to flush at the end of training.", gt=0)
    report_checkpoints: bool = arg(
        False, "Also store every checkpoint as an artifact in the trackers that keep files (wandb, "
        "comet, mlflow).")


def derive(a: Any, c: Checks) -> None:
    if c.ok("output_dir", "logging_dir") and a.logging_dir is None and a.output_dir:
        c.put("logging_dir", os.path.join(a.output_dir, "runs"))
