"""Numeric precision: fp16 / bf16 mixed precision (autocast and the fp16 grad scaler), TF32 and
half-precision evaluation.

Reads: fp16, bf16, fp16_full_eval, bf16_full_eval, tf32.

Everything here is opt-in by the arguments; with the defaults the plugin registers nothing and
costs nothing (``tf32=True`` only acts on an Ampere-or-newer CUDA device). The core loop never
sees a dtype: this plugin wraps the ``training_step`` and ``evaluation_loop`` hooks (pluggy
``wrapper=True``) in :func:`torch.autocast` and answers ``backward`` / ``optimizer_step`` with a
:class:`torch.amp.GradScaler` under fp16. See docs/precision.md.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from hooktrain.core.grads import clip_or_measure
from hooktrain.core.markers import hookimpl
from hooktrain.core.types import StepOutcome

logger = logging.getLogger("hooktrain")

__all__ = [
    "GradScalerPlugin",
    "Tf32Flags",
    "autocast_dtype",
    "full_eval_dtype",
    "half_precision",
]

def autocast_dtype(args: Any) -> torch.dtype | None:
    """The mixed-precision dtype of training (``fp16`` / ``bf16``), or ``None``."""
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None


def full_eval_dtype(args: Any) -> torch.dtype | None:
    """The dtype the model is cast to for evaluation (``fp16_full_eval`` / ``bf16_full_eval``)."""
    return torch.float16 if args.fp16_full_eval else torch.bfloat16 if args.bf16_full_eval else None


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# ---- mixed precision ------------------------------------------------------------------------


class Autocast:
    """Runs every training forward pass under ``torch.autocast(device_type, dtype)``.

    The backward pass runs outside autocast, as torch recommends.
    """

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device_type = device_type
        self.dtype = dtype

    @hookimpl(wrapper=True)
    def training_step(self):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return (yield)


class EvalPrecision:
    """Evaluation under autocast; with ``*_full_eval`` the model itself is cast for the evaluation.

    In a full half-precision evaluation the model's floating-point inputs are cast too (its
    labels, ``label_names``, are not), and afterwards every parameter and buffer holds again the
    very tensor it held before (not a copy cast back): the fp32 weights are bitwise untouched.
    """

    def __init__(self, device_type: str, dtype: torch.dtype, cast: bool, label_names: Iterable[str] = ()):
        self.device_type = device_type
        self.dtype = dtype
        self.cast = cast
        self.label_names = frozenset(label_names)

    @hookimpl(wrapper=True)
    def evaluation_loop(self, model):
        with contextlib.ExitStack() as stack:
            if self.cast:
                stack.enter_context(half_precision(model, self.dtype))
                handle = model.register_forward_pre_hook(self._cast_inputs, with_kwargs=True)
                stack.callback(handle.remove)
            stack.enter_context(torch.autocast(self.device_type, dtype=self.dtype))
            return (yield)

    def _cast_inputs(self, module, args, kwargs):
        def cast(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(self.dtype)
            return value

        return tuple(cast(a) for a in args), {
            k: v if k in self.label_names else cast(v) for k, v in kwargs.items()
        }


@contextlib.contextmanager
def half_precision(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """Cast *model*'s floating-point parameters and buffers to *dtype* inside the block.

    On exit each parameter gets its original ``.data`` tensor back and each buffer its original
    tensor object: the weights are bitwise what they were, and the ``Parameter`` objects (held by
    the optimizer, DDP, a compiled wrapper) never change. Costs a *dtype* copy of the weights
    while the block runs. Gradients are left alone.
    """
    params: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    buffers: list[tuple[torch.nn.Module, str, torch.Tensor]] = []
    try:
        for param in model.parameters():  # de-duplicated: tied weights are cast once
            if param.is_floating_point() and param.dtype != dtype:
                params.append((param, param.data))
                param.data = param.data.to(dtype)
        cast_buffers: dict[int, torch.Tensor] = {}
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                    buffers.append((module, name, buf))
                    if id(buf) not in cast_buffers:
                        cast_buffers[id(buf)] = buf.to(dtype)
                    module._buffers[name] = cast_buffers[id(buf)]
        yield model
    finally:
        for param, data in params:
            param.data = data
        for module, name, buf in buffers:
            module._buffers[name] = buf


class GradScalerPlugin:
    """fp16 loss scaling: ``backward`` and ``optimizer_step`` through a :class:`torch.amp.GradScaler`.

    A step whose gradients hold inf/NaN is skipped by the scaler (weights untouched); it is
    reported as ``StepOutcome(skipped=True)``, so the loop does not step the scheduler and counts
    it in ``state.skipped_steps``; each training log carries ``skipped_steps`` (the skips since
    the previous log) when there were any.

    The scaler is also ``trainer.grad_scaler``: the checkpoint plugin stores its state in every
    checkpoint (``scaler.pt``) and restores it on every resume.
    """

    def __init__(self, device_type: str):
        self.scaler = torch.amp.GradScaler(device_type)
        self._scale: float | None = None  # the scale before the next step (one sync per step)
        self._logged_skips = 0

    @hookimpl
    def backward(self, loss):
        self.scaler.scale(loss).backward()
        return True

    @hookimpl
    def optimizer_step(self, trainer, model, optimizer, need_grad_norm):
        scaler = self.scaler
        scaler.unscale_(optimizer)
        norm = clip_or_measure(model, trainer.args.max_grad_norm, need_grad_norm)
        before = self._scale if self._scale is not None else scaler.get_scale()
        scaler.step(optimizer)  # skips optimizer.step() when unscale_ found inf/NaN
        scaler.update()  # ... and then lowers the scale: that is how a skip is seen
        self._scale = scaler.get_scale()
        return StepOutcome(norm, self._scale < before)

    @hookimpl
    def on_train_begin(self, state):
        self._logged_skips = state.skipped_steps
        self._scale = None  # a resume (before this event) may have loaded another scale

    @hookimpl
    def extra_logs(self, state):
        new = state.skipped_steps - self._logged_skips
        self._logged_skips = state.skipped_steps
        return {"skipped_steps": new} if new > 0 else None


def _probe_mixed_precision(device: torch.device, dtype: torch.dtype, scaler: bool) -> str | None:
    """Run a tiny autocast forward (and a GradScaler step) on *device*; ``None`` when it works."""
    try:
        layer = torch.nn.Linear(2, 2).to(device)
        with torch.autocast(device.type, dtype=dtype):
            out = layer(torch.ones(1, 2, device=device))
        if out.dtype != dtype:
            return f"torch.autocast({device.type!r}) ran the matmul in {out.dtype}, not {dtype}"
        if scaler:
            probe = torch.amp.GradScaler(device.type)
            optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
            probe.scale(out.float().sum()).backward()
            probe.unscale_(optimizer)
            probe.step(optimizer)
            probe.update()
    except Exception as exc:  # any failure means "this device cannot do it"
        return f"{type(exc).__name__}: {exc}"
    return None


def _probe_half_forward(device: torch.device, dtype: torch.dtype) -> str | None:
    try:
        torch.nn.Linear(2, 2).to(device=device, dtype=dtype)(torch.ones(1, 2, device=device, dtype=dtype))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _cuda_bf16_supported(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere or newer); emulated bf16 does not count."""
    check = torch.cuda.is_bf16_supported
    with torch.cuda.device(device):
        if "including_emulation" in inspect.signature(check).parameters:
            return bool(check(including_emulation=False))
        return bool(check())


def _precision_problems(trainer: Any, args: Any) -> list[str]:
    device, problems = trainer.device, []
    dtype = autocast_dtype(args)
    if dtype is not None:
        field = "fp16" if args.fp16 else "bf16"
        if dtype == torch.bfloat16 and device.type == "cuda" and not _cuda_bf16_supported(device):
            problems.append(
                f"bf16=True: the GPU {torch.cuda.get_device_name(device)!r} has no native bf16 (it "
                "needs an Ampere or newer GPU); use fp16=True on this GPU"
            )
        else:
            why = _probe_mixed_precision(device, dtype, scaler=dtype == torch.float16)
            if why:
                other = "bf16=True or a CUDA GPU" if field == "fp16" else "fp16=True or a CUDA GPU"
                problems.append(
                    f"{field}=True: torch {torch.__version__} cannot run {field} mixed precision on "
                    f"{device.type} ({why}); use {other}, or drop {field}"
                )
    eval_dtype = full_eval_dtype(args)
    if eval_dtype is not None:
        field = f"{_dtype_name(eval_dtype)}_full_eval"
        if eval_dtype == torch.bfloat16 and device.type == "cuda" and not _cuda_bf16_supported(device):
            problems.append(f"{field}=True: this GPU has no native bf16; use fp16_full_eval=True")
        else:
            why = _probe_half_forward(device, eval_dtype) or _probe_mixed_precision(
                device, eval_dtype, scaler=False
            )
            if why:
                problems.append(
                    f"{field}=True: torch cannot run a {_dtype_name(eval_dtype)} model on "
                    f"{device.type} ({why}); drop {field}"
                )
    return problems


# ---- TF32 -----------------------------------------------------------------------------------


def tf32_capable(device: torch.device) -> bool:
    """Whether TF32 exists on *device*: a CUDA GPU of compute capability 8.0 (Ampere) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


class Tf32Flags:
    """Sets torch's TF32 switches for CUDA matmuls and cuDNN convolutions, and puts them back.

    Uses the ``fp32_precision`` API where torch has it (2.9+: ``"tf32"`` / ``"ieee"``), else
    ``allow_tf32``; the two must not be mixed, so the previous values are read and restored
    through the same API. Re-entrant: nested :meth:`apply` calls restore at the outermost
    :meth:`restore`; :meth:`restore` without :meth:`apply` does nothing.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._depth = 0
        self._saved: list[tuple[Any, str, Any]] = []

    @staticmethod
    def _switches(enabled: bool) -> list[tuple[Any, str, Any]]:
        backends = torch.backends
        matmul = backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            value = "tf32" if enabled else "ieee"
            switches = [(matmul, "fp32_precision", value)]
            for name in ("conv", "rnn"):
                sub = getattr(backends.cudnn, name, None)
                if sub is not None and hasattr(sub, "fp32_precision"):
                    switches.append((sub, "fp32_precision", value))
            return switches
        return [(matmul, "allow_tf32", enabled), (backends.cudnn, "allow_tf32", enabled)]

    def apply(self) -> None:
        if self._depth == 0:
            switches = self._switches(self.enabled)
            self._saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in switches]
            for obj, attr, value in switches:
                setattr(obj, attr, value)
        self._depth += 1

    def restore(self, all_levels: bool = False) -> None:
        if self._depth == 0:
            return
        self._depth = 0 if all_levels else self._depth - 1
        if self._depth == 0:
            for obj, attr, value in reversed(self._saved):
                setattr(obj, attr, value)
            self._saved = []

    # Training holds the flags from on_train_begin to on_train_end (which the loop always calls,
    # also after on_exception); a standalone evaluate() holds them for the evaluation.
    @hookimpl
    def on_train_begin(self):
        self.apply()

    @hookimpl
    def on_exception(self):
        self.restore(all_levels=True)

    @hookimpl
    def on_train_end(self):
        self.restore(all_levels=True)

    @hookimpl(wrapper=True)
    def evaluation_loop(self):
        self.apply()
        try:
            return (yield)
        finally:
            self.restore()


# ---- hooks ----------------------------------------------------------------------------------


@hookimpl
def validate_args(trainer, args):
    if not isinstance(trainer.model, torch.nn.Module):
        return None  # the core reports that
    return _precision_problems(trainer, args)


@hookimpl
def configure(trainer, args):
    pm, device = trainer.plugin_manager, trainer.device
    dtype = autocast_dtype(args)
    if dtype is not None:
        pm.register(Autocast(device.type, dtype), name="precision.autocast")
        if dtype == torch.float16:
            scaler = GradScalerPlugin(device.type)
            pm.register(scaler, name="precision.grad_scaler")
            trainer.grad_scaler = scaler.scaler  # saved / restored by the checkpoint plugin
            if device.type == "cpu" and not _cpu_has_native_fp16():
                logger.warning(
                    "fp16=True on a CPU without native fp16 matmuls (AMX-FP16): it runs, but much "
                    "slower than fp32 (a 1024x1024 matmul measured 75x slower on an AVX-512 CPU); "
                    "bf16=True is the fast half precision on CPUs"
                )
    eval_dtype = full_eval_dtype(args) or dtype
    if eval_dtype is not None:
        pm.register(
            EvalPrecision(device.type, eval_dtype, cast=full_eval_dtype(args) is not None,
                          label_names=args.label_names or ["labels"]),
            name="precision.eval",
        )
    if tf32_capable(device) and args.tf32 is not None:
        pm.register(Tf32Flags(args.tf32), name="precision.tf32")


def _cpu_has_native_fp16() -> bool:
    check = getattr(torch.cpu, "_is_amx_fp16_supported", None)
    return bool(check()) if callable(check) else False
