"""TensorBoard reporter (``report_to="tensorboard"``): an event file, with torch's summary builders.

Where it writes: ``$TENSORBOARD_LOGGING_DIR`` when set, else ``args.logging_dir``
(``<output_dir>/runs`` by default). Everything of one run goes into one events file
(``events.out.tfevents.<time>.<host>.<pid>.<n>.hooktrain``) in that directory:

* every reported scalar at the global step, as ``SummaryWriter.add_scalar`` writes it (a
  ``simple_value``, float32), the values of one ``report_scalars`` call in one event;
* the text ``args`` (the JSON config), ``run_name`` and, at the end, ``status``;
* the hparams plugin's session records (flat scalar settings at the start, the end status
  at the end), so the HPARAMS tab compares runs; TensorBoard finds the metrics itself.

Resuming (``report_resume``): the run goes on in the same directory, in a new events file that
starts with a session-restart record at the resumed step + 1 (``SummaryWriter``'s ``purge_step``):
TensorBoard hides every event of the earlier files from that step on, so steps logged after the
checkpoint by the interrupted run are replaced, never doubled. The texts ``run_name`` and ``args``
and the hparams session start are not written again, and a preempted run writes no session end.

The summaries are built by ``torch.utils.tensorboard.summary``, as ``SummaryWriter`` builds
them, but the records are written by the reporter itself, on the reporting worker's thread.
``SummaryWriter`` would hand every event to a writer thread of its own through a 10-event queue
(one more thread competing for the interpreter lock, one hand-over per value), and checksum each
record in pure Python (about 1 µs per byte); the reporter checksums with ``google_crc32c`` when it
is installed. The file is flushed after each batch of events (``report_flush``, at most every
50 ms while logs keep coming) and closed by ``report_run_end``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
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
_FILE_NUMBER = itertools.count()  # two event files of one process and second never share a name


def available() -> bool:
    """Whether TensorBoard's writer can be imported (used by ``report_to="all"``)."""
    return installed("tensorboard")


class TensorBoardReporter(Reporter):
    """Write one run's scalars, config and status to a TensorBoard log directory."""

    name = NAME

    def __init__(self, args: Any):
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import summary
        except ImportError as exc:
            raise missing_library(NAME, "tensorboard", "tensorboard", exc) from exc
        self._event, self._summary = Event, Summary
        self._builders = summary  # torch's summary builders: text(), hparams()
        env_dir = os.environ.get(LOGDIR_ENV)
        if env_dir:
            log_dir = os.path.expanduser(env_dir)
        else:
            log_dir = args.logging_dir  # output_dir/runs unless set
        self.log_dir = os.fspath(log_dir)
        self.path: str | None = None  # the events file of the open run
        self._file: Any = None
        self._records: _Records | None = None
        self._session_end: Any = None
        self._purge_step: int | None = None  # resuming: hide the earlier files' events from here on

    def _write(self, summary: Any, step: int | None = None) -> None:
        event = self._event(summary=summary, wall_time=time.time())
        if step is not None:
            event.step = step
        self._records.write(event.SerializeToString())  # type: ignore[union-attr]

    def run_state(self) -> dict[str, Any] | None:
        return {"log_dir": os.path.abspath(self.log_dir)}

    def report_resume(self, run: dict[str, Any], step: int) -> None:
        self.log_dir = run.get("log_dir") or self.log_dir
        self._purge_step = int(step) + 1

    def report_run_start(self, run_name: str, config: dict[str, Any]) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_FILE_NUMBER)}.hooktrain")
        path = os.path.join(self.log_dir, name)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by report_run_end
        self.path, self._records = path, _Records(self._file)
        self._records.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        text, hparams = self._builders.text, self._builders.hparams
        flat = {k: v for k, v in config.items() if isinstance(v, _HPARAM_TYPES)}
        _, session_start, self._session_end = hparams(flat, {})
        purge, self._purge_step = self._purge_step, None
        if purge is not None:  # continuing the run: TensorBoard drops the earlier events from here on
            restart = self._event(wall_time=time.time(), step=purge)
            restart.session_log.status = restart.session_log.START
            self._records.write(restart.SerializeToString())
        else:
            self._write(text("run_name", str(run_name)), 0)
            self._write(text("args", json.dumps(config, indent=2, sort_keys=True, default=str)), 0)
            self._write(session_start)
        self._file.flush()

    def report_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self._records is None:
            return
        # One event holding every value of the call, each as add_scalar writes it.
        value = self._summary.Value
        self._write(self._summary(value=[value(tag=k, simple_value=v) for k, v in scalars.items()]), int(step))

    def report_flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def report_run_end(self, status: str) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            self._write(self._builders.text("status", status), 0)
            if status != "preempted":  # a preempted session goes on when the run resumes
                self._write(_with_status(self._session_end, status))
        finally:
            self._records = None
            file.close()


class _Records:
    """Writes TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of the
    data), the format of TensorBoard's event files, to an open binary file.

    The checksums come from ``google_crc32c`` (C, shipped with ``hooktrain[tensorboard]``) when it
    is installed, else from tensorboard's pure-Python CRC-32C, which costs about 1 µs per byte.
    """

    def __init__(self, file: Any):
        self._file_write = file.write
        self._crc = _crc32c()

    def _masked(self, data: bytes) -> bytes:
        crc = self._crc(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file_write(header + self._masked(header) + data + self._masked(data))


def _crc32c() -> Any:
    try:
        import google_crc32c

        if getattr(google_crc32c, "implementation", "c") == "c":
            return google_crc32c.value
    except ImportError:
        pass
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

    return crc32c


def _with_status(session_end: Any, status: str) -> Any:
    """The hparams plugin's session-end record carrying *status* (torch's always says success)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    plugin_data = session_end.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(_TB_STATUS.get(status, "STATUS_UNKNOWN"))
    data.session_end_info.end_time_secs = time.time()
    plugin_data.content = data.SerializeToString()
    return session_end


@hookimpl
def register_reporters(register: Any) -> None:
    register(NAME, TensorBoardReporter)
