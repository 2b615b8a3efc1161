"""The Trainer's evaluation side: ``evaluate``, ``predict`` and Hugging Face's metrics helpers.

``evaluate`` and ``predict`` run the ``evaluation_loop`` hook over a dataset and prefix the
metrics (``eval_`` / ``test_``); ``evaluate`` logs them and emits ``on_evaluate``, ``predict``
emits ``on_predict`` and returns a :class:`PredictionOutput` ``(predictions, label_ids, metrics)``
as Hugging Face's does. ``log_metrics`` prints a table on the main process, ``save_metrics``
writes ``{split}_results.json`` and merges into ``all_results.json``, and ``create_model_card``
writes ``README.md`` (the last run's hyperparameters and results), the other files HF scripts
write at their end.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, NamedTuple

import torch

from hooktrain.core.types import EvalPrediction

#: The arguments a model card lists (Hugging Face's choice), when the run has them.
CARD_HYPERPARAMETERS = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "seed",
                        "gradient_accumulation_steps", "optim", "lr_scheduler_type", "warmup_steps",
                        "num_train_epochs", "max_steps")


class PredictionOutput(NamedTuple):
    """What :meth:`EvaluationMethods.predict` returns (Hugging Face's ``PredictionOutput``)."""

    predictions: Any
    label_ids: Any
    metrics: dict[str, float] | None


def metrics_format(metrics: dict[str, Any]) -> dict[str, Any]:
    """*metrics* made readable: runtimes as ``h:mm:ss.ff``, floats rounded to 4 places."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if "_runtime" in key and isinstance(value, (int, float)):
            hundredths = int(abs(value - int(value)) * 100)
            out[key] = f"{datetime.timedelta(seconds=int(value))}.{hundredths:02d}"
        elif key == "total_flos" and isinstance(value, (int, float)):
            out[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            out[key] = round(value, 4)
        else:
            out[key] = value
    return out


class EvaluationMethods:
    """Mixed into the ``Trainer``: evaluation, prediction and the metrics files."""

    #: True while :meth:`predict` runs: the evaluation loop gathers the predictions even without
    #: ``compute_metrics``.
    predicting: bool = False

    def _evaluation(self: Any, dataset: Any, prefix: str) -> tuple[Any, dict[str, float]]:
        loader = self.get_eval_dataloader(dataset)
        model = self.model
        was_training = model.training
        model.eval()
        start = time.time()
        try:
            with torch.no_grad():
                out = self.plugin_manager.hook.evaluation_loop(trainer=self, model=model, dataloader=loader)
        finally:
            model.train(was_training)
        metrics: dict[str, float] = {}
        if out.loss is not None:
            metrics["loss"] = out.loss
        if out.metrics is not None:  # computed batch by batch (batch_eval_metrics)
            metrics.update(out.metrics)
        elif self.compute_metrics is not None and out.predictions is not None:
            metrics.update(self.compute_metrics(
                EvalPrediction(out.predictions, out.label_ids, out.inputs, out.losses)))
        runtime = time.time() - start
        metrics.update(
            runtime=round(runtime, 4),
            samples_per_second=round(out.num_samples / runtime, 3) if runtime else 0.0,
            steps_per_second=round(len(loader) / runtime, 3) if runtime else 0.0,
        )
        return out, {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): float(v)
                     for k, v in metrics.items()}

    def evaluate(self: Any, eval_dataset: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate and return ``{prefix}_loss`` plus ``compute_metrics`` results, prefixed."""
        _, metrics = self._evaluation(eval_dataset if eval_dataset is not None else self.eval_dataset,
                                      metric_key_prefix)
        self.log(metrics)
        self.plugin_manager.call_each(
            "on_evaluate", fresh="metrics", trainer=self, args=self.args, state=self.state, metrics=metrics)
        return metrics

    def predict(self: Any, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions (and labels, when the data has them) of *test_dataset*, with
        ``{prefix}_loss``, the timings and ``compute_metrics``' results; emits ``on_predict``.
        Nothing is logged (as in Hugging Face). *ignore_keys* is accepted for compatibility:
        the predictions are the model's ``logits``."""
        if test_dataset is None:
            raise ValueError("predict() needs a test_dataset")
        self.predicting = True
        try:
            out, metrics = self._evaluation(test_dataset, metric_key_prefix)
        finally:
            self.predicting = False
        self.plugin_manager.call_each(
            "on_predict", fresh="metrics", trainer=self, args=self.args, state=self.state, metrics=metrics)
        return PredictionOutput(out.predictions, out.label_ids, metrics)

    def log_metrics(self: Any, split: str, metrics: dict[str, Any]) -> None:
        """Print *metrics* as an aligned table under ``***** {split} metrics *****`` (main process)."""
        if not self.is_world_process_zero or not metrics:
            return
        shown = metrics_format(metrics)
        key_width = max(len(str(k)) for k in shown)
        value_width = max(len(str(v)) for v in shown.values())
        print(f"***** {split} metrics *****")
        for key in sorted(shown):
            print(f"  {key: <{key_width}} = {shown[key]:>{value_width}}")

    def save_metrics(self: Any, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write *metrics* to ``output_dir/{split}_results.json`` and, with *combined*, merge them
        into ``all_results.json`` (main process)."""
        if not self.is_world_process_zero:
            return
        out = self.args.output_dir
        os.makedirs(out, exist_ok=True)
        _write_json(os.path.join(out, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(out, "all_results.json")
            merged: dict[str, Any] = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    merged = json.load(f)
            merged.update(metrics)
            _write_json(path, merged)


    def create_model_card(self: Any, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: Any = None, dataset: Any = None, dataset_args: Any = None) -> None:
        """Write ``output_dir/README.md``: a model card with the run's hyperparameters and its last
        evaluation (main process), where Hugging Face's example scripts call it."""
        if not self.is_world_process_zero:
            return
        args = self.args
        name = model_name or os.path.basename(os.path.normpath(args.output_dir))
        header = {"library_name": "hooktrain", "language": language, "license": license,
                  "base_model": finetuned_from, "tags": ["generated_from_hooktrain", *_listed(tags)],
                  "datasets": _listed(dataset_tags or dataset), "pipeline_tag": (_listed(tasks) or [None])[0]}
        lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in header.items() if v), "---", "", f"# {name}", ""]
        lines.append(f"This model is a fine-tuned version of {finetuned_from}." if finetuned_from
                     else "This model was trained from scratch.")
        evals = [e for e in self.state.log_history if any(k.startswith("eval_") for k in e)]
        if evals:
            lines += ["", "It achieves the following results on the evaluation set:"]
            lines += [f"- {k[5:].replace('_', ' ').title()}: {v:.4f}" for k, v in evals[-1].items()
                      if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
                      and isinstance(v, (int, float))]
        values = args.to_dict()
        hyper = {k: values.get(k) for k in CARD_HYPERPARAMETERS}
        hyper["training_steps"] = self.state.global_step
        lines += ["", "## Training hyperparameters", ""]
        lines += [f"- {k}: {v}" for k, v in hyper.items() if v is not None]
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def push_to_hub(self: Any, *args: Any, **kwargs: Any) -> None:
        """Refused: hooktrain does not upload to the Hugging Face Hub."""
        raise NotImplementedError("hooktrain does not upload to the Hugging Face Hub; upload "
                                  "output_dir yourself (huggingface_hub.upload_folder)")


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _write_json(path: str, values: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=4, sort_keys=True)
    os.replace(tmp, path)
