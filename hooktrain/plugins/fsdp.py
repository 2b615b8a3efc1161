"""Sharded training on torch's FSDP2: ``fully_shard`` on a ``DeviceMesh`` instead of DDP.

Reads: fsdp, fsdp_config, and fp16 / bf16 (they become FSDP2's ``MixedPrecisionPolicy``).

Active when ``fsdp`` is set (``full_shard`` or ``shard_grad_op``, optionally ``offload``), in
processes started by ``torchrun``. The distributed plugin still sets up the process group, the
rank and the device, but wraps nothing; this plugin then, when the ``Trainer`` is built:

* builds a one-dimensional ``DeviceMesh`` over every process, explicitly on the device type of
  the run (``cpu`` with gloo, ``cuda`` with NCCL: torch's default mesh follows the accelerator
  and breaks gloo on a GPU host, pytorch#132471);
* calls ``fully_shard`` on each block (``fsdp_config['transformer_layer_cls_to_wrap']``, a
  ``wrap_fn``, a Hugging Face model's ``_no_split_modules``, else the blocks of the first
  ``nn.ModuleList`` or ``nn.Sequential``), innermost first, then on the root: the parameters of
  ``trainer.model`` become ``DTensor`` shards, so the optimizer built from them keeps only this
  process's shard of its state. ``trainer.model_wrapped`` is ``trainer.model`` (under ``offload``
  a thin :class:`OffloadedModel` around it, so that nothing moves the CPU shards to the GPU).

During training the gradients are reduce-scattered after every backward (also inside a
gradient-accumulation window: the accumulated gradients stay sharded), clipping measures the
global norm of the sharded gradients (``torch.nn.utils.clip_grad_norm_`` is ``DTensor``-aware),
and every process runs the same number of evaluation forward passes (a process with fewer
evaluation batches repeats one, its result dropped), because each forward gathers parameters
from all processes. ``save_model()`` gathers the full weights and writes one consolidated
``model.safetensors`` on the main process. Checkpoints hold the sharded state as
``torch.distributed.checkpoint`` files (:mod:`hooktrain.checkpointing.sharded`; the checkpoint
plugin uses it whenever the model's parameters are shards; with several processes they are
written in the background from a host copy of the shards), which resume with any number of
processes. See docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hooktrain.core.data import to_device
from hooktrain.core.markers import hookimpl
from hooktrain.plugins.fsdp_args import SHARDING, resolve_import_path

logger = logging.getLogger("hooktrain")

__all__ = [
    "FsdpRun",
    "full_state_dict",
    "launched",
    "local_bytes",
    "shard_model",
    "wrap_targets",
]

#: environment variables torchrun sets in every process
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process belongs to a launched job: a process group exists, or torchrun's variables are set."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    return all(os.environ.get(name) for name in LAUNCHER_ENV)


def _has_fsdp2() -> bool:
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


# ---- what becomes an FSDP unit -----------------------------------------------------------------


def wrap_targets(model: torch.nn.Module, config: Mapping[str, Any]) -> list[tuple[str, torch.nn.Module]]:
    """The ``(name, module)`` submodules that become their own FSDP unit (the root is always one).

    ``transformer_layer_cls_to_wrap`` (class names) and ``wrap_fn`` (``fn(module) -> bool``) select
    together; without either, a Hugging Face model's ``_no_split_modules`` names the blocks, and
    otherwise the blocks are those gradient checkpointing would pick (the children of the first
    ``nn.ModuleList``, else of the first ``nn.Sequential``).
    """
    names = config.get("transformer_layer_cls_to_wrap")
    fn = resolve_import_path(config["wrap_fn"]) if config.get("wrap_fn") else None
    if names is None and fn is None:
        hf_blocks = getattr(model, "_no_split_modules", None)
        if isinstance(hf_blocks, (list, tuple, set)) and hf_blocks:
            names = sorted(hf_blocks)
    if names is None and fn is None:
        from hooktrain.plugins.gradient_checkpointing import find_checkpoint_targets

        return find_checkpoint_targets(model)
    wanted = set(names or ())
    return [(name, module) for name, module in model.named_modules()
            if module is not model and (type(module).__name__ in wanted or (fn is not None and fn(module)))]


def _target_problems(model: torch.nn.Module, config: Mapping[str, Any]) -> list[str]:
    names = config.get("transformer_layer_cls_to_wrap")
    if not names:
        return []
    present = {type(m).__name__ for m in model.modules()}
    missing = [n for n in names if n not in present]
    if not missing:
        return []
    return [f"fsdp_config['transformer_layer_cls_to_wrap'] names {missing}, which are not module "
            f"classes of {type(model).__name__}; its module classes are: {', '.join(sorted(present))}"]


# ---- sharding --------------------------------------------------------------------------------


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def mixed_precision_dtype(args: Any) -> torch.dtype | None:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def shard_model(
    model: torch.nn.Module,
    mesh: Any,
    targets: Iterable[tuple[str, torch.nn.Module]],
    reshard_after_forward: bool | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    offload: bool = False,
) -> list[str]:
    """``fully_shard`` every target (innermost first), then *model* itself; the unit names.

    ``reshard_after_forward=None`` is torch's default: the blocks reshard after their forward,
    the root does not (its parameters are needed first in the backward).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True) if offload else OffloadPolicy()
    ordered = sorted(targets, key=lambda item: -item[0].count("."))  # bottom-up
    for _, module in ordered:
        fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)
    root_reshard = None if reshard_after_forward is None or reshard_after_forward else False
    fully_shard(model, reshard_after_forward=root_reshard, **kwargs)
    return [name for name, _ in ordered]


def local_bytes(tensors: Iterable[Any]) -> int:
    """Bytes this process holds of *tensors*: a ``DTensor`` counts its local shard only."""
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


# ---- the full weights --------------------------------------------------------------------------


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU, on the main process (``{}`` elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def write_consolidated(state_dict: Mapping[str, torch.Tensor], args: Any, output_dir: Path) -> None:
    """``model.safetensors`` (or ``pytorch_model.bin``) and ``training_args.json`` into *output_dir*,
    each written beside and renamed into place: what the checkpoint plugin's ``save_model`` writes."""
    from hooktrain.checkpointing.contents import state_dict_files, write_model

    write_model(output_dir, state_dict_files(dict(state_dict), args.save_safetensors), args.to_json())


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class OffloadedModel(torch.nn.Module):
    """``trainer.model_wrapped`` under ``offload``: forwards to the sharded model, whose shards stay on the CPU."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


# ---- the plugin --------------------------------------------------------------------------------


class FsdpRun:
    """One process of a sharded run: balanced evaluation passes and the consolidated ``save_model``."""

    def __init__(self, run: Any, mesh: Any, units: list[str], options: list[str], precision: str):
        self.run = run  # the distributed plugin's DistributedRun: ranks, device, barrier
        self.mesh = mesh
        self.units = units
        self.options = options
        self.precision = precision

    @hookimpl
    def on_train_begin(self, trainer):
        if trainer.is_world_process_zero:
            params = list(trainer.model.parameters())
            full = sum(p.numel() * p.element_size() for p in params)
            logger.info(
                "fsdp: %s over %d processes (%s mesh), %d units + root, %s; this process holds "
                "%s of the %s of parameters", " ".join(self.options), self.run.world_size,
                self.mesh.device_type, len(self.units), self.precision, _size(local_bytes(params)), _size(full))

    def _max_over_processes(self, value: int) -> int:
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.run.device)
        self.run._wait(dist.all_reduce(tensor, op=dist.ReduceOp.MAX, async_op=True), tensor)
        return int(tensor.item())

    @hookimpl(wrapper=True, trylast=True)  # innermost: before the distributed plugin gathers
    def evaluation_loop(self, trainer, model, dataloader):
        try:
            mine = len(dataloader)
        except TypeError:  # an iterable dataset: every process reads the whole stream
            return (yield)
        most = self._max_over_processes(mine)  # before the loop: its forwards gather parameters
        out = yield
        if most > mine:  # each forward gathers parameters: every process must run as many
            batch = next(iter(dataloader), None)
            if batch is None:
                batch = dataloader.collate_fn([dataloader.dataset[0]])
            batch = to_device(batch, trainer.device)
            for _ in range(most - mine):
                trainer.compute_loss(model, batch)  # dropped: it only keeps the collectives in step
        return out

    @hookimpl
    def save_model(self, trainer, output_dir):
        """Gather the full weights (every process) and write them consolidated (the main process)."""
        state_dict = full_state_dict(trainer.model)
        out = Path(output_dir)
        if trainer.is_world_process_zero:
            write_consolidated(state_dict, trainer.args, out)
        trainer.barrier()
        return out


@hookimpl
def validate_args(trainer, args):
    if not args.fsdp:
        return None
    problems = []
    if not _has_fsdp2():
        problems.append(f"fsdp={args.fsdp!r} needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); "
                        f"this is torch {torch.__version__}")
    if not launched():
        problems.append(
            f"fsdp={args.fsdp!r} needs processes started by a launcher (torchrun sets "
            f"{', '.join(LAUNCHER_ENV)}; they are not set): run `torchrun --nproc_per_node=N "
            "your_script.py` (N=1 works too), or leave fsdp empty")
    if "offload" in args.fsdp and trainer.device.type != "cuda":
        problems.append(f"fsdp={args.fsdp!r}: 'offload' moves the shards from GPU memory to the CPU, "
                        "but this run is on the CPU already; drop 'offload'")
    if isinstance(trainer.model, torch.nn.Module):
        problems += _target_problems(trainer.model, args.fsdp_config or {})
    return problems


@hookimpl
def configure(trainer, args):
    if not args.fsdp:
        return
    from torch.distributed.device_mesh import init_device_mesh

    from hooktrain.plugins.distributed import DistributedRun

    pm = trainer.plugin_manager
    run = pm.get_plugin("distributed.ddp")
    if run is None:  # one process under torchrun: the distributed plugin stayed off
        run = DistributedRun(trainer, args)
        pm.register(run, name="distributed.ddp")
    config = args.fsdp_config or {}
    mesh = init_device_mesh(trainer.device.type, (run.world_size,))
    reshard = config.get("reshard_after_forward")
    if reshard is None and "shard_grad_op" in args.fsdp:
        reshard = False
    dtype = mixed_precision_dtype(args)
    reduce_dtype = _dtype(config.get("reduce_dtype", "float32")) if dtype is not None else None
    model = trainer.model
    units = shard_model(model, mesh, wrap_targets(model, config), reshard_after_forward=reshard,
                        param_dtype=dtype, reduce_dtype=reduce_dtype, offload="offload" in args.fsdp)
    # with offload the shards live in CPU memory: a wrapper keeps the Trainer from moving the
    # model (its own parameters) to the GPU, which FSDP refuses
    trainer.model_wrapped = OffloadedModel(model) if "offload" in args.fsdp else model
    sharding = next((s for s in SHARDING if s in args.fsdp), SHARDING[0])
    options = [sharding, *(o for o in args.fsdp if o not in SHARDING and o != "auto_wrap")]
    precision = "fp32" if dtype is None else (
        f"params {str(dtype).removeprefix('torch.')}, reduce {str(reduce_dtype).removeprefix('torch.')}")
    pm.register(FsdpRun(run, mesh, units, options, precision), name="fsdp.run")
