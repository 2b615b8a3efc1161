"""Hugging Face argument names that are not ``TrainingArguments`` fields, and what each one means here.

One table, :data:`HF_NAMES`, gives every such name one answer:

* ``renamed``: an older Hugging Face spelling (``evaluation_strategy``, ``no_cuda`` …). It is
  accepted with a ``FutureWarning`` naming the field that replaces it, and sets that field.
* ``alias``: Hugging Face's current name for something hooktrain calls otherwise
  (``activation_checkpointing`` → ``gradient_checkpointing``, ``enable_jit_checkpoint`` →
  ``preemption_signals``). Accepted without a warning.
* ``ignored``: a switch whose every value describes what hooktrain already does (accepted).
* ``refused``: a feature hooktrain does not have (the Hub, DeepSpeed, Liger, trackio …). Its
  default value is accepted silently, so a dict written by Hugging Face's ``to_dict()`` loads; any
  other value is an :class:`~hooktrain.core.errors.ArgumentError` that says what to use instead.

``TrainingArguments`` (its constructor, ``from_dict``, ``replace``, attribute assignment and the
``hooktrain train`` command line / YAML) translates these names with :func:`translate` before
its own checks. Torch-free, cheap to import.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HF_NAMES", "HFName", "read_as", "translate"]


@dataclass(frozen=True)
class HFName:
    """One Hugging Face name: its kind, the hooktrain field it sets, and what it is."""

    name: str
    kind: str  # "renamed" | "alias" | "refused" | "ignored"
    note: str  # renamed/alias: what it is; refused: why, and what to use instead; ignored: why
    target: str | None = None  # the field a renamed name or an alias sets
    unset: tuple[Any, ...] = (None,)  # values that mean "not set": accepted, change nothing
    convert: Callable[[Any], Any] | None = None  # value -> the target field's value
    history: str = ""  # where the name comes from (Hugging Face version)


def _bool_to(true_value: Any) -> Callable[[Any], Any]:
    return lambda v: true_value if v else None


_HUB = "hooktrain does not upload to the Hugging Face Hub; push the saved output_dir yourself " \
       "(huggingface_hub.upload_folder)"
_TRACKIO = "hooktrain has no trackio reporter; use report_to with tensorboard, wandb, mlflow or " \
           "comet, or register your own reporter (docs/reporters.md)"
_ACCEL_DEFAULTS = {"split_batches": False, "dispatch_batches": None, "even_batches": True,
                   "use_seedable_sampler": True, "non_blocking": False,
                   "gradient_accumulation_kwargs": None}

_TABLE: tuple[HFName, ...] = (
    # ---- older spellings (Hugging Face renamed them) -------------------------------------------
    HFName("evaluation_strategy", "renamed", "", "eval_strategy",
           history="v4.41 renamed it, v5 removed it"),
    HFName("no_cuda", "renamed", "", "use_cpu",
           history="v4.34 renamed it, v5 removed it"),
    HFName("use_mps_device", "renamed", "the device is chosen automatically (CUDA when available, "
           "else the CPU); use_cpu=True forces the CPU", None, unset=(None, False, True),
           history="v4.34 deprecated it, v5 removed it"),
    HFName("per_gpu_train_batch_size", "renamed", "", "per_device_train_batch_size", history="v4 deprecated it, v5 removed it"),
    HFName("per_gpu_eval_batch_size", "renamed", "", "per_device_eval_batch_size", history="v4 deprecated it, v5 removed it"),
    HFName("group_by_length", "renamed", "group_by_length=True is "
           "train_sampling_strategy='group_by_length'", "train_sampling_strategy",
           unset=(None, False), convert=_bool_to("group_by_length"), history="v5 replaced it"),
    HFName("include_inputs_for_metrics", "renamed", "include_inputs_for_metrics=True is "
           "include_for_metrics=['inputs']", "include_for_metrics", unset=(None, False),
           convert=_bool_to(["inputs"]), history="v4.46 replaced it, v5 removed it"),
    HFName("torchdynamo", "renamed", "", "torch_compile_backend",
           history="v4.29 deprecated it, v5 removed it"),
    HFName("fp16_backend", "renamed", "hooktrain's mixed precision is torch.amp (Hugging Face's "
           "'auto' backend); fp16 or bf16 turn it on", None, unset=(None, "auto"),
           history="v4 renamed it half_precision_backend; v5 removed both"),
    HFName("half_precision_backend", "renamed", "hooktrain's mixed precision is torch.amp (Hugging "
           "Face's 'auto' backend); fp16 or bf16 turn it on", None, unset=(None, "auto"),
           history="v5 removed it"),
    HFName("push_to_hub_token", "renamed", _HUB, None, history="v4 renamed it hub_token"),
    HFName("push_to_hub_model_id", "renamed", _HUB, None, history="v4 renamed it hub_model_id"),
    HFName("push_to_hub_organization", "renamed", _HUB, None, history="v4 folded it into hub_model_id"),
    HFName("include_tokens_per_second", "renamed", "the throughput plugin logs tokens_per_second "
           "whenever the batches hold tokens; include_num_input_tokens_seen counts them into the "
           "state", "include_num_input_tokens_seen",
           unset=(None, False), convert=_bool_to("all"), history="v5 removed it"),
    # ---- Hugging Face's current names for hooktrain fields -------------------------------------
    HFName("activation_checkpointing", "alias", "Hugging Face v5's name of gradient_checkpointing",
           "gradient_checkpointing"),
    HFName("activation_checkpointing_kwargs", "alias", "Hugging Face v5's name of "
           "gradient_checkpointing_kwargs", "gradient_checkpointing_kwargs"),
    HFName("enable_jit_checkpoint", "alias", "checkpoint on SIGTERM before the process is killed: "
           "hooktrain's preemption handling, on by default (preemption_signals=['SIGTERM'])",
           "preemption_signals", unset=(None, False), convert=_bool_to(["SIGTERM"])),
    # ---- features hooktrain does not have ------------------------------------------------------
    HFName("push_to_hub", "refused", _HUB, unset=(None, False)),
    HFName("hub_token", "refused", _HUB, unset=(None, "<HUB_TOKEN>")),
    HFName("hub_private_repo", "refused", _HUB),
    HFName("hub_model_id", "refused", _HUB),
    HFName("hub_strategy", "refused", _HUB, unset=(None, "every_save")),
    HFName("hub_always_push", "refused", _HUB, unset=(None, False)),
    HFName("hub_revision", "refused", _HUB),
    HFName("deepspeed", "refused", "hooktrain does not run DeepSpeed; shard a large model with "
           "fsdp (docs/distributed.md)"),
    HFName("use_liger_kernel", "refused", "hooktrain does not patch models with Liger kernels; apply "
           "liger_kernel's patch to your model yourself, or try torch_compile", unset=(None, False)),
    HFName("liger_kernel_config", "refused", "hooktrain does not patch models with Liger kernels"),
    HFName("project", "refused", _TRACKIO, unset=(None, "huggingface")),
    HFName("trackio_space_id", "refused", _TRACKIO, unset=(None, "trackio")),
    HFName("trackio_bucket_id", "refused", _TRACKIO),
    HFName("trackio_static_space_id", "refused", _TRACKIO),
    HFName("optim_target_modules", "refused", "hooktrain's optimizers (optim) do not include the "
           "GaLore/APOLLO family that targets modules; pass your optimizer with "
           "Trainer(optimizers=(optimizer, None))"),
    HFName("neftune_noise_alpha", "refused", "hooktrain does not add NEFTune noise to embeddings; "
           "register a forward hook on the embedding layer (a small plugin) instead"),
    HFName("accelerator_config", "refused", "hooktrain does not use accelerate; its data loading "
           "already splits batches per process (DDP) and its sampler is seedable",
           unset=(None, {}, _ACCEL_DEFAULTS)),
    HFName("parallelism_config", "refused", "hooktrain has data parallelism (DDP) and fsdp, not "
           "accelerate's tensor/context parallelism"),
    HFName("debug", "refused", "hooktrain has no underflow/overflow or TPU debug modes; register a "
           "plugin with forward hooks to inspect activations", unset=(None, "", [])),
    HFName("skip_memory_metrics", "refused", "hooktrain does not add memory metrics to the "
           "results; read torch.cuda.max_memory_allocated() in a plugin's on_train_end",
           unset=(None, True)),
    HFName("dataloader_in_order", "refused", "hooktrain's data loaders always yield the batches in "
           "order", unset=(None, True)),
    HFName("eval_use_gather_object", "ignored", "hooktrain's distributed evaluation always gathers "
           "each process's outputs as objects (any nesting, any shape)", unset=(None, False, True)),
    HFName("tpu_num_cores", "refused", "hooktrain does not train on TPUs"),
    HFName("tpu_metrics_debug", "refused", "hooktrain does not train on TPUs", unset=(None, False)),
    HFName("use_ipex", "refused", "hooktrain does not use Intel Extension for PyTorch; use "
           "torch_compile", unset=(None, False)),
    HFName("jit_mode_eval", "refused", "hooktrain does not trace models with torch.jit; use "
           "torch_compile", unset=(None, False)),
    HFName("use_legacy_prediction_loop", "refused", "hooktrain has one evaluation loop (the "
           "evaluation_loop hook)", unset=(None, False)),
    HFName("past_index", "refused", "hooktrain does not feed a model's past states back (Hugging "
           "Face removed it in v5)", unset=(None, -1)),
    HFName("fsdp_min_num_params", "refused", "set fsdp_config instead (docs/distributed.md)",
           unset=(None, 0)),
    HFName("fsdp_transformer_layer_cls_to_wrap", "refused", "set fsdp_config instead "
           "(docs/distributed.md)"),
    HFName("mp_parameters", "refused", "hooktrain does not run on SageMaker model parallelism",
           unset=(None, "")),
    HFName("ray_scope", "refused", "hooktrain has no hyperparameter search; run your search "
           "library around Trainer", unset=(None, "last")),
    HFName("split_batches", "refused", "hooktrain does not use accelerate; each process reads "
           "per_device_train_batch_size samples", unset=(None, False)),
    HFName("dispatch_batches", "refused", "hooktrain does not use accelerate; each process reads "
           "its own shard of the data"),
    HFName("xpu_backend", "refused", "use ddp_backend (Hugging Face renamed it)"),
    HFName("sharded_ddp", "refused", "use fsdp (docs/distributed.md)", unset=(None, "", [], False)),
    HFName("fp16_opt_level", "refused", "hooktrain's mixed precision is torch.amp, not apex",
           unset=(None, "O1")),
)

#: Every Hugging Face name that is not a hooktrain field, by name.
HF_NAMES: dict[str, HFName] = {n.name: n for n in _TABLE}

_NONE_BY_DEFAULT = {"hub_token", "accelerator_config"}


def read_as(entry: HFName, fields: Any) -> Any:
    """What ``args.<name>`` reads for a Hugging Face name (scripts read ``training_args.push_to_hub``):
    the field it sets (converted back: ``group_by_length`` is ``train_sampling_strategy ==
    'group_by_length'``), else Hugging Face's default."""
    if entry.target is not None:
        value = getattr(fields, entry.target)
        if entry.convert is None:
            return value
        return value == entry.convert(True)
    if entry.name in _NONE_BY_DEFAULT:
        return None
    return next((u for u in entry.unset if u is not None), None)


def _is_unset(entry: HFName, value: Any) -> bool:
    return any(value == u and type(value) is type(u) or (value is None and u is None)
               for u in entry.unset)


def translate(values: Mapping[str, Any], *, stacklevel: int = 3) -> tuple[dict[str, Any], list[str]]:
    """*values* with every Hugging Face name of :data:`HF_NAMES` replaced by the field it sets.

    Returns ``(values, problems)``: a refused name set to a non-default value, or a name and its
    field given with different values, is a problem (the caller raises them with its own).
    A renamed name warns (``FutureWarning``) naming the field that replaces it.
    """
    out: dict[str, Any] = {k: v for k, v in values.items() if k not in HF_NAMES}
    problems: list[str] = []
    for name, value in values.items():
        entry = HF_NAMES.get(name)
        if entry is None:
            continue
        if entry.kind == "renamed":
            where = f"; use {entry.target} instead" if entry.target else ""
            why = f" ({entry.note})" if entry.target and entry.note else f": {entry.note}" if entry.note else ""
            warnings.warn(f"{name} is a deprecated Hugging Face argument ({entry.history}){where}{why}",
                          FutureWarning, stacklevel=stacklevel)
        if entry.kind == "ignored" or _is_unset(entry, value):
            continue
        if entry.target is None:
            problems.append(f"{name}={value!r} is not supported by hooktrain: {entry.note}")
            continue
        new = entry.convert(value) if entry.convert is not None else value
        if new is None:
            continue
        if entry.target in out and out[entry.target] != new:
            problems.append(f"{name}={value!r} and {entry.target}={out[entry.target]!r} disagree: "
                            f"{name} is {entry.note}; give only {entry.target}")
            continue
        out[entry.target] = new
    return out, problems
