"""Read a logged run back with each tracker's own reader, in one common shape.

Every ``read_*`` function returns::

    {"run_name": str | None,
     "params": {name: value},                  # the run's config as the tracker stores it
     "scalars": {name: [(step, value), ...]},  # in logging order, tracker noise removed
     "status": ...}                            # the end status as the tracker records it

plus a few tracker-specific keys (documented per function). Non-finite values come back as
floats (``nan``, ``inf``) wherever the tracker keeps them.

The trackers are imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import time
import zipfile
from typing import Any

__all__ = ["read_comet", "read_mlflow", "read_tensorboard", "read_wandb", "same_series"]


def same_series(got: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 1e-6) -> bool:
    """Whether two ``[(step, value)]`` series match: same steps, values within *rel* (NaN == NaN)."""
    if len(got) != len(expected):
        return False
    for (gs, gv), (es, ev) in zip(got, expected, strict=True):
        if gs != es:
            return False
        if isinstance(ev, float) and math.isnan(ev):
            if not math.isnan(gv):
                return False
        elif not math.isclose(gv, ev, rel_tol=rel, abs_tol=0.0):
            return False
    return True


# ---- TensorBoard ------------------------------------------------------------------------


def read_tensorboard(logdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the run written into *logdir* (all its event files) with ``EventAccumulator``.

    ``params`` is the JSON of the ``args`` text; ``run_name`` and ``status`` are the texts of
    those tags. Extra keys: ``hparams`` (the hparams plugin's session values; bools read as
    1.0/0.0) and ``hparams_status`` (the session-end status name, e.g. ``"STATUS_SUCCESS"``).
    Values are float32, so compare with a relative tolerance of about 1e-6.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    acc = EventAccumulator(os.fspath(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()

    def text(tag: str) -> str | None:
        full = f"{tag}/text_summary"
        if full not in tags["tensors"]:
            return None
        event = acc.Tensors(full)[-1]
        return event.tensor_proto.string_val[0].decode()

    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    args_text = text("args")
    hparams: dict[str, Any] = {}
    hparams_status = None
    try:
        content = acc.PluginTagToContent("hparams")
    except KeyError:
        content = {}
    if "_hparams_/session_start_info" in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        for key, value in data.session_start_info.hparams.items():
            kind = value.WhichOneof("kind")
            hparams[key] = getattr(value, kind) if kind else None
    if "_hparams_/session_end_info" in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
        hparams_status = api_pb2.Status.Name(data.session_end_info.status)
    return {
        "run_name": text("run_name"),
        "params": json.loads(args_text) if args_text is not None else {},
        "scalars": scalars,
        "status": text("status"),
        "hparams": hparams,
        "hparams_status": hparams_status,
    }


# ---- wandb ------------------------------------------------------------------------------

_WANDB_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version 0
_BLOCK = 32 * 1024
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def _wandb_file(root: str | os.PathLike[str]) -> str:
    root = os.fspath(root)
    if os.path.isfile(root):
        return root
    found = {os.path.realpath(p) for p in glob.glob(os.path.join(root, "**", "*.wandb"), recursive=True)}
    if not found:
        raise FileNotFoundError(f"no .wandb file under {root}")
    return max(found, key=os.path.getmtime)


def _wandb_payloads(path: str) -> list[bytes]:
    """The record payloads of a ``.wandb`` transaction log (LevelDB log framing)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, ident, version = _WANDB_HEADER.unpack_from(data, 0)
    if magic != b":W&B" or ident != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a wandb transaction log")
    payloads: list[bytes] = []
    pending = b""
    pos = _WANDB_HEADER.size
    while pos + _RECORD_HEADER.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _RECORD_HEADER.size:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding: the rest of the block is empty
            pos += left_in_block
            continue
        start = pos + _RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:  # a torn tail (the writer was killed)
            break
        pos = start + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
            pending = b""
    return payloads


def _wandb_value(item: Any) -> Any:
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind is None:
        return json.loads(item.value_json) if item.value_json else None
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _wandb_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def read_wandb(root: str | os.PathLike[str], wait: float = 20.0) -> dict[str, Any]:
    """The newest wandb run under *root*, once its exit record is on disk (up to *wait* seconds).

    ``run.finish()`` returns before wandb-core, a separate process, has necessarily written the
    log (or even created it), so a reader right after a run polls briefly. A run that never
    finished (killed) is returned as it is after *wait*.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            run = _read_wandb_now(root)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
        else:
            if run["exit_code"] is not None or time.monotonic() > deadline:
                return run
        time.sleep(0.1)


def _read_wandb_now(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the newest wandb run under *root* (a dir holding ``wandb/``, a run dir, or a file).

    Parses the binary ``run-<id>.wandb`` log with wandb's own protobuf classes (the same data
    as ``wandb leet inspect --json``). ``params`` is the run config (without ``_wandb``);
    ``status`` is the summary value ``status``. Extra keys: ``exit_code`` (``None`` when the
    run never finished), ``summary``, ``project``, ``run_id``, ``file``. History keys
    starting with ``_`` (``_step``, ``_runtime``…) are left out of ``scalars``.
    """
    from wandb.proto import wandb_internal_pb2

    path = _wandb_file(root)
    result: dict[str, Any] = {
        "run_name": None,
        "params": {},
        "scalars": {},
        "status": None,
        "exit_code": None,
        "summary": {},
        "project": None,
        "run_id": None,
        "file": path,
    }
    for payload in _wandb_payloads(path):
        record = wandb_internal_pb2.Record.FromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            result["run_name"] = run.display_name
            result["project"] = run.project
            result["run_id"] = run.run_id
            for item in run.config.update:
                result["params"][_wandb_key(item)] = _wandb_value(item)
        elif kind == "config":
            for item in record.config.update:
                result["params"][_wandb_key(item)] = _wandb_value(item)
            for item in record.config.remove:
                result["params"].pop(_wandb_key(item), None)
        elif kind == "history":
            values = {_wandb_key(i): _wandb_value(i) for i in record.history.item}
            step = int(values.get("_step", record.history.step.num))
            for key, value in values.items():
                if not key.startswith("_"):
                    result["scalars"].setdefault(key, []).append((step, float(value)))
        elif kind == "summary":
            for item in record.summary.update:
                result["summary"][_wandb_key(item)] = _wandb_value(item)
        elif kind == "exit":
            result["exit_code"] = record.exit.exit_code
    result["params"].pop("_wandb", None)
    result["status"] = result["summary"].get("status")
    return result


# ---- Comet ------------------------------------------------------------------------------

_COMET_NOISE_METRICS = ("sys.", "process duration")


def _comet_float(value: Any) -> float:
    return float(value)  # "NaN", "Infinity" and "-Infinity" parse as floats


def read_comet(offline_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the newest offline experiment archive (``<key>.zip``) in *offline_dir*.

    Parses ``messages.json``: ``metric_msg`` (scalars), manual ``parameter_msg`` (params;
    nested values come back flattened as ``a|b``) and ``log_other`` (``Name`` is the run name,
    ``status`` the status). comet's own metrics (``sys.*``, ``process duration``) and
    auto-logged params (``curr_step``) are left out. Extra keys: ``others`` (every log_other),
    ``experiment`` (``experiment.json``), ``file``.
    """
    offline_dir = os.fspath(offline_dir)
    archives = glob.glob(os.path.join(offline_dir, "*.zip")) if os.path.isdir(offline_dir) else [offline_dir]
    if not archives:
        raise FileNotFoundError(f"no comet offline archive in {offline_dir}")
    path = max(archives, key=os.path.getmtime)
    with zipfile.ZipFile(path) as archive:
        experiment = json.loads(archive.read("experiment.json"))
        lines = archive.read("messages.json").decode().splitlines()
    params: dict[str, Any] = {}
    scalars: dict[str, list[tuple[int, float]]] = {}
    others: dict[str, Any] = {}
    for line in lines:
        if not line.strip():
            continue
        message = json.loads(line)
        kind, payload = message.get("type"), message.get("payload", {})
        if kind == "metric_msg":
            metric = payload["metric"]
            name = metric["metricName"]
            if name.startswith(_COMET_NOISE_METRICS):
                continue
            scalars.setdefault(name, []).append((metric["step"], _comet_float(metric["metricValue"])))
        elif kind == "parameter_msg":
            param = payload.get("param") or payload.get("params")
            if param and param.get("source") != "auto-logged":
                params[param["paramName"]] = param["paramValue"]
        elif kind == "log_other":
            others[payload["key"]] = payload["value"]
    return {
        "run_name": others.get("Name"),
        "params": params,
        "scalars": scalars,
        "status": others.get("status"),
        "others": others,
        "experiment": experiment,
        "file": path,
    }


# ---- MLflow -----------------------------------------------------------------------------


def read_mlflow(tracking_uri: str, run_name: str) -> dict[str, Any]:
    """Read the newest run named *run_name*, in any experiment, of the store at *tracking_uri*.

    Uses ``MlflowClient``: each series is sorted by step; params are strings, ``status`` is mlflow's run status
    (``FINISHED``, ``KILLED``, ``FAILED``, ``RUNNING``). Extra keys: ``run_id``, ``tags``,
    ``experiment_name``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs(
        list(experiments),
        filter_string=f"attributes.run_name = '{escaped}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise LookupError(f"no mlflow run named {run_name!r} in {tracking_uri}")
    run = runs[0]
    run_id = run.info.run_id
    scalars = {}
    for key in run.data.metrics:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        scalars[key] = [(m.step, m.value) for m in history]
    return {
        "run_name": run.info.run_name,
        "params": dict(run.data.params),
        "scalars": scalars,
        "status": run.info.status,
        "run_id": run_id,
        "tags": dict(run.data.tags),
        "experiment_name": experiments.get(run.info.experiment_id),
    }
