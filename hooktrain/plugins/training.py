"""The default training step, backward, optimizer step (with ``max_grad_norm`` clipping) and evaluation loop.

Every hook here is ``trylast``: a plugin that implements the same hook replaces it.
Reads: max_grad_norm, label_smoothing_factor, average_tokens_across_devices,
torch_empty_cache_steps, label_names, prediction_loss_only, logging_nan_inf_filter,
include_for_metrics, batch_eval_metrics, eval_do_concat_batches, use_cache.
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import torch

from hooktrain.core.data import concat_padded, iterate_batches, to_device
from hooktrain.core.grads import clip_or_measure, forget_parameters
from hooktrain.core.markers import hookimpl
from hooktrain.core.types import EvalOutput, EvalPrediction, LossItems, StepOutcome


@hookimpl(trylast=True)
def training_step(trainer, model, batch, num_items_in_batch):
    if num_items_in_batch is None:  # a Trainer subclass's compute_loss(model, batch) keeps working
        loss, _ = trainer.compute_loss(model, batch)
    else:
        loss, _ = trainer.compute_loss(model, batch, num_items_in_batch=num_items_in_batch)
    return loss


class LabelSmoothing:
    """Replaces the model's loss by a label-smoothed cross-entropy of its logits (HF's LabelSmoother):
    the mean over the micro-batch's labels, or their sum divided by ``num_items_in_batch``. A
    transformers causal LM's logits at position i are scored against label i + 1, as in HF."""

    def __init__(self, epsilon: float, label_name: str, shift: bool = False):
        self.epsilon = epsilon
        self.label_name = label_name
        self.shift = shift

    @hookimpl
    def training_step(self, trainer, model, batch, num_items_in_batch):
        labels = batch.get(self.label_name) if isinstance(batch, dict) else None
        if labels is None:
            return None
        _, outputs = trainer.compute_loss(model, batch)
        logits = _logits(outputs)
        if logits is None:  # not None: the default training_step would run the forward again
            raise ValueError(
                "label_smoothing_factor needs the model's logits: return 'logits' from forward "
                "(a dict or an object with .logits)")
        if self.shift:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
            label_smoothing=self.epsilon, reduction="mean" if num_items_in_batch is None else "sum",
        )
        return loss if num_items_in_batch is None else loss / num_items_in_batch


class LossItemCounter:
    """Hugging Face's ``num_items_in_batch``: each window's loss is normalised by the number of its
    labels that are not -100 (``labels[..., 1:]`` for a transformers causal LM, ``shift_labels``
    when the batches hold them), summed over the processes with ``average_tokens_across_devices``.

    Registered when the loss can take the count: the model's forward takes ``**kwargs`` (or
    ``model.accepts_loss_kwargs`` says so), or ``compute_loss=`` takes ``num_items_in_batch``. A
    window without ``labels``, or a ``training_step`` implementation (or a ``Trainer.compute_loss``
    override) that does not take ``num_items_in_batch``, keeps the mean of the micro-batch means.
    """

    def __init__(self, shifts_labels: bool, across_processes: bool):
        self.shifts_labels = shifts_labels
        self.across_processes = across_processes
        self._checked = (-1, False)  # (plugin manager changes, every training step takes the count)

    def _steps_take_count(self, trainer) -> bool:
        pm = trainer.plugin_manager
        if self._checked[0] != pm.changes:
            impls = pm.hook.training_step.get_hookimpls()
            takes = all("num_items_in_batch" in i.argnames for i in impls if not (i.wrapper or i.hookwrapper))
            self._checked = (pm.changes, takes and _takes_count(type(trainer).compute_loss, kwargs=False))
        return self._checked[1]

    @hookimpl
    def count_loss_items(self, trainer, batches):
        first = batches[0]
        if not isinstance(first, dict) or "labels" not in first or not self._steps_take_count(trainer):
            return None
        try:
            counted = [b["shift_labels"] if "shift_labels" in b else b["labels"][..., 1:] if self.shifts_labels
                       else b["labels"] for b in batches]
            count = sum(labels.ne(-100).sum() for labels in counted)
        except (TypeError, AttributeError, KeyError):  # labels that are not tensors: no count
            return None
        count = count.to(trainer.device, non_blocking=True)
        if self.across_processes and trainer.world_size > 1:
            torch.distributed.all_reduce(count)  # the sum over the processes
            return LossItems(count, float(trainer.world_size))  # DDP/FSDP average the gradients
        return LossItems(count)


def _takes_count(function: Any, kwargs: bool = True) -> bool:
    """Whether *function* takes ``num_items_in_batch`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_items_in_batch" or (kwargs and p.kind is p.VAR_KEYWORD) for p in params)


def _model_takes_count(model: Any) -> bool:
    """Hugging Face's ``model_accepts_loss_kwargs``: ``model.accepts_loss_kwargs`` when set, else
    whether its ``forward`` takes ``**kwargs`` (or, here, a ``num_items_in_batch`` parameter)."""
    accepts = getattr(model, "accepts_loss_kwargs", None)
    return bool(accepts) if accepts is not None else _takes_count(model.forward)


def _transformers_model(model: Any) -> bool:
    """A transformers model (transformers is then imported already: this never imports it)."""
    pretrained = getattr(sys.modules.get("transformers"), "PreTrainedModel", None)
    return pretrained is not None and isinstance(model, pretrained)


def _loss_shifts_labels(model: Any) -> bool:
    """Whether the model's own loss scores logits i against labels i + 1 (HF's rule: its
    ``loss_type`` maps to the causal-LM loss, and it is not an encoder-decoder)."""
    if not _transformers_model(model):
        return False
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    return LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss and not encoder_decoder


def _causal_lm(model: Any) -> bool:
    """A transformers causal LM by HF's table (HF's label smoother shifts the labels for those)."""
    if not _transformers_model(model):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


class CacheEmptier:
    """``torch_empty_cache_steps``: release the accelerator's cached memory every N steps."""

    def __init__(self, every: int):
        self.every = every

    @hookimpl
    def on_step_end(self, trainer, state):
        if state.global_step % self.every == 0 and trainer.device.type == "cuda":
            torch.cuda.empty_cache()


@hookimpl
def validate_args(trainer, args):
    if args.label_smoothing_factor > 0 and trainer.compute_loss_func is not None:
        return [f"label_smoothing_factor={args.label_smoothing_factor} smooths the model's own logits; "
                "with compute_loss=... apply the smoothing inside compute_loss instead"]
    return None


@hookimpl
def configure(trainer, args):
    pm = trainer.plugin_manager
    config = getattr(trainer.model, "config", None)
    if config is not None and hasattr(config, "__dict__"):  # a transformers model: HF's Trainer sets it too
        config.use_cache = args.use_cache
    if args.label_smoothing_factor > 0:
        pm.register(LabelSmoothing(args.label_smoothing_factor, (args.label_names or ["labels"])[0],
                                   _causal_lm(trainer.model)), name="training.label_smoothing")
    loss_fn = trainer.compute_loss_func
    if _takes_count(loss_fn) if loss_fn is not None else _model_takes_count(trainer.model):
        pm.register(LossItemCounter(_loss_shifts_labels(trainer.model), args.average_tokens_across_devices),
                    name="training.loss_items")
    if args.torch_empty_cache_steps:
        pm.register(CacheEmptier(args.torch_empty_cache_steps), name="training.empty_cache")


@hookimpl(trylast=True)
def backward(trainer, loss):
    loss.backward()
    return True


@hookimpl
def on_train_begin(trainer):
    forget_parameters(trainer.model_wrapped)  # listed afresh for each run (clip_or_measure)


_STEPPED = StepOutcome(None, False)


@hookimpl(trylast=True)
def optimizer_step(trainer, model, optimizer, need_grad_norm):
    norm = clip_or_measure(model, trainer.args.max_grad_norm, need_grad_norm)
    optimizer.step()
    return _STEPPED if norm is None else StepOutcome(norm, False)


def _logits(outputs: Any) -> Any:
    if outputs is None or isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return outputs.get("logits")
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, (tuple, list)) and len(outputs) > 1:
        logits = outputs[1]
    return logits


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        values = list(batch.values())
    else:
        values = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 1


def _concat(chunks: list[torch.Tensor], concat: bool = True) -> Any:
    if not chunks:
        return None
    arrays = [c.numpy() for c in chunks]
    return concat_padded(arrays) if concat else arrays


def _main_input(model: Any, batch: Any, label_names: list[str]) -> Any:
    """The model's main input in *batch*: ``model.main_input_name`` (``input_ids`` without one),
    else the batch's first tensor that is not a label."""
    if not isinstance(batch, dict):
        return batch if isinstance(batch, torch.Tensor) else None
    name = getattr(model, "main_input_name", "input_ids")
    if name in batch:
        return batch[name]
    return next((v for k, v in batch.items() if k not in label_names and isinstance(v, torch.Tensor)), None)


@hookimpl(trylast=True)
def evaluation_loop(trainer, model, dataloader):
    """The mean loss and, when something needs them (``compute_metrics``, ``predict()``), the
    predictions and labels (``include_for_metrics``: the inputs and per-sample losses too)."""
    args = trainer.args
    label_names = args.label_names or ["labels"]
    want_predictions = (trainer.compute_metrics is not None or trainer.predicting) and not args.prediction_loss_only
    want_inputs, want_losses = "inputs" in args.include_for_metrics, "loss" in args.include_for_metrics
    per_batch = args.batch_eval_metrics and trainer.compute_metrics is not None  # HF's batch_eval_metrics
    keep = not per_batch or trainer.predicting  # predict() returns the predictions too
    unlabelled = trainer.compute_loss_func is None
    if per_batch and trainer.world_size > 1:
        raise ValueError("batch_eval_metrics=True runs compute_metrics on each process's own batches: "
                         "hooktrain supports it in a single process only; set it to False")
    loss_sum, loss_count, samples = 0.0, 0, 0
    predictions: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    labels: dict[str, list[torch.Tensor]] = {name: [] for name in label_names}
    metrics = None
    # an interrupt abandons the evaluation (core/interrupts), checked before each batch is fetched:
    # a signal sent to the whole process group (SLURM) may have ended the loader's workers
    check_interrupt = trainer.check_interrupt
    batches = iterate_batches(dataloader)
    check_interrupt()
    batch = next(batches, None)
    while batch is not None:
        batch = to_device(batch, trainer.device)
        if unlabelled and isinstance(batch, dict) and not any(n in batch for n in label_names):
            loss, outputs = None, model(**batch)  # prediction data without labels: no loss (HF)
        else:
            loss, outputs = trainer.compute_loss(model, batch)
        size = _batch_size(batch)
        samples += size
        if loss is not None:
            value = float(loss)
            if math.isfinite(value) or not args.logging_nan_inf_filter:
                loss_sum += value * size
                loss_count += size
        check_interrupt()
        following = next(batches, None)
        if want_predictions:
            logits = _logits(outputs)
            kept = len(predictions)
            if logits is not None:
                predictions.append(logits.detach().float().cpu())
            for name in label_names:
                if isinstance(batch, dict) and name in batch:
                    labels[name].append(batch[name].detach().cpu())
            main = _main_input(model, batch, label_names) if want_inputs else None
            if main is not None:
                inputs.append(main.detach().cpu())
            if want_losses and loss is not None:
                losses.append(loss.detach().float().cpu().reshape(1).repeat(size))
            if per_batch and len(predictions) > kept:
                metrics = trainer.compute_metrics(_last_batch(predictions, labels, inputs, losses),
                                                  compute_result=following is None)
                if not keep:
                    for chunks in (predictions, inputs, losses, *labels.values()):
                        chunks.clear()
        batch = following
    concat = args.eval_do_concat_batches
    label_arrays = [_concat(v, concat) for v in labels.values() if v]
    label_ids = label_arrays[0] if len(label_arrays) == 1 else (tuple(label_arrays) or None)
    return EvalOutput(
        loss=loss_sum / loss_count if loss_count else None,
        predictions=_concat(predictions, concat),
        label_ids=label_ids,
        num_samples=samples,
        inputs=_concat(inputs, concat),
        losses=_concat(losses, concat),
        metrics=metrics,
    )


def _last_batch(predictions: list[torch.Tensor], labels: dict[str, list[torch.Tensor]],
                inputs: list[torch.Tensor], losses: list[torch.Tensor]) -> EvalPrediction:
    """The :class:`EvalPrediction` of the batch just gathered (``batch_eval_metrics``)."""
    label_ids = [v[-1].numpy() for v in labels.values() if v]
    return EvalPrediction(
        predictions[-1].numpy(), label_ids[0] if len(label_ids) == 1 else (tuple(label_ids) or None),
        inputs[-1].numpy() if inputs else None, losses[-1].numpy() if losses else None)
