"""TensorBoard reporter (``report_to="tensorboard"``), written with torch's ``SummaryWriter``.

Where it writes: ``$TENSORBOARD_LOGGING_DIR`` when set, else ``args.logging_dir``
(``<output_dir>/runs`` by default). Everything of one run goes into that one directory:

* every reported scalar at the global step, as ``add_scalar`` writes it, the values of one
  ``report_scalars`` call in one event;
* the text ``args`` (the JSON config), ``run_name`` and, at the end, ``status``;
* the hparams plugin's session records (flat scalar settings at the start, the end status
  at the end), so the HPARAMS tab compares runs; TensorBoard finds the metrics itself.

Events are queued and only reach the disk on a flush: the writer is flushed and closed by
``report_run_end``, so a run that never reaches it loses its last few points.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hooktrain.core.markers import hookimpl
from hooktrain.core.reporter import Reporter
from hooktrain.plugins.reporters import installed, missing_library

NAME = "tensorboard"
LOGDIR_ENV = "TENSORBOARD_LOGGING_DIR"

# hparams records take only these value types (bools are stored as 0/1).
_HPARAM_TYPES = (bool, int, float, str)
# status -> the hparams plugin's session status name.
_TB_STATUS = {"completed": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}


def available() -> bool:
    """Whether TensorBoard's writer can be imported (used by ``report_to="all"``)."""
    return installed("tensorboard")


class TensorBoardReporter(Reporter):
    """Write one run's scalars, config and status to a TensorBoard log directory."""

    name = NAME

    def __init__(self, args: Any):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise missing_library(NAME, "tensorboard", "tensorboard", exc) from exc
        self._writer_class: Any = SummaryWriter
        env_dir = os.environ.get(LOGDIR_ENV)
        if env_dir:
            log_dir = os.path.expanduser(env_dir)
        else:
            log_dir = args.logging_dir  # output_dir/runs unless set
        self.log_dir = os.fspath(log_dir)
        self.writer: Any = None
        self._hparams: dict[str, Any] = {}
        self._summary: Any = None
        self._summary_value: Any = None

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import hparams

        self._summary, self._summary_value = Summary, Summary.Value
        self.writer = writer = self._writer_class(log_dir=self.log_dir)
        writer.add_text("run_name", str(run_name), 0)
        writer.add_text("args", json.dumps(config, indent=2, sort_keys=True, default=str), 0)
        self._hparams = {k: v for k, v in config.items() if isinstance(v, _HPARAM_TYPES)}
        _, session_start, _ = hparams(self._hparams, {})
        writer.file_writer.add_summary(session_start)

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        writer = self.writer
        if writer is None:
            return
        # One event holding every value of the call: what add_scalar writes per value (a
        # simple_value), built and written once instead of len(scalars) times.
        value = self._summary_value
        summary = self._summary(value=[value(tag=k, simple_value=v) for k, v in scalars.items()])
        writer.file_writer.add_summary(summary, global_step=step)

    def report_run_end(self, status: str) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.add_text("status", status, 0)
            writer.file_writer.add_summary(_session_end(self._hparams, status))
            writer.flush()
        finally:
            writer.close()


def _session_end(hparam_dict: dict[str, Any], status: str) -> Any:
    """The hparams plugin's session-end record carrying *status* (torch's always says success)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    _, _, summary = hparams(hparam_dict, {})
    plugin_data = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(_TB_STATUS.get(status, "STATUS_UNKNOWN"))
    data.session_end_info.end_time_secs = time.time()
    plugin_data.content = data.SerializeToString()
    return summary


@hookimpl
def register_reporters(register: Any) -> None:
    register(NAME, TensorBoardReporter)
