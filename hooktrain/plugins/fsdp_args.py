"""Settings of sharded training with torch's FSDP2 (:mod:`hooktrain.plugins.fsdp`); torch-free."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from hooktrain.core.errors import did_you_mean
from hooktrain.core.settings import Checks, Invalid, arg, config_group

#: The ``fsdp`` options hooktrain runs (Hugging Face's names) and what each one does.
FSDP_OPTIONS: dict[str, str] = {
    "full_shard": "shard parameters, gradients and optimizer state; each block's parameters are "
                  "gathered for its forward and again for its backward (ZeRO-3)",
    "shard_grad_op": "shard gradients and optimizer state; gathered parameters stay from the "
                     "forward to the backward (reshard_after_forward=False, ZeRO-2-like)",
    "offload": "keep the sharded parameters, gradients and optimizer state in CPU memory "
               "(CUDA only; the optimizer step runs on the CPU)",
    "auto_wrap": "accepted for Hugging Face compatibility: blocks are always wrapped",
}
#: Hugging Face's other options, refused with the reason.
UNSUPPORTED_OPTIONS: dict[str, str] = {
    "no_shard": "that is plain data parallelism: leave fsdp empty and torchrun uses DDP",
    "hybrid_shard": "hybrid sharding (HSDP) is not supported yet; use full_shard",
    "hybrid_shard_zero2": "hybrid sharding (HSDP) is not supported yet; use shard_grad_op",
}
SHARDING = ("full_shard", "shard_grad_op")
#: ``fsdp_config`` keys and their meaning (Hugging Face's names where it has them).
CONFIG_KEYS: dict[str, str] = {
    "transformer_layer_cls_to_wrap": "class name(s) of the blocks that become FSDP units",
    "wrap_fn": "'module:function' (or a module-level function): True for a submodule that "
               "becomes an FSDP unit",
    "reshard_after_forward": "bool; overrides what full_shard / shard_grad_op imply",
    "reduce_dtype": "dtype of the gradient reduce-scatter under bf16/fp16: float32 (default), "
                    "bfloat16 or float16",
    "version": "2 (hooktrain runs FSDP2 only)",
}
REDUCE_DTYPES = ("float32", "bfloat16", "float16")


def _parse_fsdp(value: Any) -> Any:
    if value is None or value is False:
        return []
    if value is True:
        return ["full_shard"]
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, (list, tuple)):  # Hugging Face's FSDPOption members
        return [getattr(v, "value", v) for v in value]
    return value


def _normalise_fsdp(value: list[str]) -> list[str]:
    return list(dict.fromkeys(v.lower() for v in value))


def import_path(fn: Any) -> str:
    """``'module:qualname'`` of a module-level function (how ``wrap_fn`` is stored)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or resolve_import_path(f"{module}:{qualname}") is not fn:
        raise Invalid(
            f"fsdp_config['wrap_fn']={fn!r} is invalid: give a module-level function (or its "
            "'module:function' path) so that training_args.json can name it; a lambda or a "
            "local function cannot be saved")
    return f"{module}:{qualname}"


def resolve_import_path(path: str) -> Any:
    """The object a ``'module:qualname'`` path names; ``None`` when it does not import."""
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


def _parse_fsdp_config(value: Any) -> Any:
    if isinstance(value, os.PathLike) or (
        isinstance(value, str) and value.strip() and not value.strip().startswith("{")
    ):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                value = yaml.safe_load(text)
            else:
                value = json.loads(text)
        except Exception as exc:  # OSError, JSON's ValueError, yaml.YAMLError
            raise Invalid(f"fsdp_config={str(value)!r}: cannot read it as a JSON or YAML file "
                          f"({type(exc).__name__}: {exc})") from None
    if isinstance(value, dict):
        # Hugging Face accepts keys with an 'fsdp_' prefix (accelerate's config names)
        value = {(k[5:] if isinstance(k, str) and k.startswith("fsdp_") else k): v
                 for k, v in value.items()}
        if callable(value.get("wrap_fn")):
            value["wrap_fn"] = import_path(value["wrap_fn"])
        if isinstance(value.get("transformer_layer_cls_to_wrap"), str):
            value["transformer_layer_cls_to_wrap"] = [value["transformer_layer_cls_to_wrap"]]
    return value


@config_group
class FsdpArguments:
    fsdp: list[str] = arg(
        None, "Shard the model with torch's FSDP2 under torchrun (instead of DDP): 'full_shard' "
        "or 'shard_grad_op', plus 'offload'; a list or a space-separated string; empty = off.",
        factory=list, parse=_parse_fsdp, normalise=_normalise_fsdp)
    fsdp_config: dict[str, Any] | None = arg(
        None, "FSDP settings: a dict, a JSON object or a JSON/YAML file path with "
        "transformer_layer_cls_to_wrap, wrap_fn, reshard_after_forward, reduce_dtype.",
        parse=_parse_fsdp_config)


def fsdp_option_problems(options: list[str]) -> list[str]:
    problems = []
    for option in options:
        if option in UNSUPPORTED_OPTIONS:
            problems.append(f"fsdp option {option!r} is not supported: {UNSUPPORTED_OPTIONS[option]}")
        elif option not in FSDP_OPTIONS:
            problems.append(f"fsdp={options!r} has an unknown option {option!r}: allowed are "
                            f"{', '.join(FSDP_OPTIONS)}{did_you_mean(option, list(FSDP_OPTIONS))}")
    if all(s in options for s in SHARDING):
        problems.append(f"fsdp={options!r}: 'full_shard' and 'shard_grad_op' exclude each other; "
                        "choose one")
    return problems


def fsdp_config_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for key in sorted(set(config) - set(CONFIG_KEYS)):
        problems.append(f"fsdp_config has an unknown key {key!r}: allowed are "
                        f"{', '.join(CONFIG_KEYS)}{did_you_mean(key, list(CONFIG_KEYS))}")
    names = config.get("transformer_layer_cls_to_wrap")
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n for n in names)):
        problems.append(f"fsdp_config['transformer_layer_cls_to_wrap']={names!r} is invalid: "
                        "give a class name or a list of class names")
    fn = config.get("wrap_fn")
    if fn is not None:
        if not isinstance(fn, str) or ":" not in fn:
            problems.append(f"fsdp_config['wrap_fn']={fn!r} is invalid: give 'module:function'")
        elif not callable(resolve_import_path(fn)):
            problems.append(f"fsdp_config['wrap_fn']={fn!r} does not import as a function")
    reshard = config.get("reshard_after_forward")
    if reshard is not None and not isinstance(reshard, bool):
        problems.append(f"fsdp_config['reshard_after_forward']={reshard!r} is invalid: true or false")
    dtype = config.get("reduce_dtype")
    if dtype is not None and dtype not in REDUCE_DTYPES:
        problems.append(f"fsdp_config['reduce_dtype']={dtype!r} is invalid: one of "
                        f"{', '.join(REDUCE_DTYPES)}")
    version = config.get("version")
    if version is not None and version != 2:
        problems.append(f"fsdp_config['version']={version!r}: hooktrain runs FSDP2 only (version 2)")
    return problems


def check(a: Any, c: Checks) -> None:
    if not c.ok("fsdp", "fsdp_config"):
        return
    if not a.fsdp:
        if a.fsdp_config:
            c.problem("fsdp_config is set but fsdp is empty: set fsdp='full_shard' (or "
                      "'shard_grad_op') to shard, or drop fsdp_config")
        return
    for problem in fsdp_option_problems(a.fsdp) + fsdp_config_problems(a.fsdp_config or {}):
        c.problem(problem)
    if c.ok("save_on_each_node") and getattr(a, "save_on_each_node", False):
        c.problem(f"fsdp={a.fsdp!r} with save_on_each_node=True is not supported: a sharded checkpoint "
                  "needs the shards of every process in one directory; put output_dir on a file system "
                  "that every machine sees and drop save_on_each_node")
    if c.ok("torch_compile") and getattr(a, "torch_compile", False):
        c.problem(f"fsdp={a.fsdp!r} with torch_compile=True is not supported: compiling the whole "
                  "sharded model breaks its graph at every FSDP unit; drop torch_compile (or "
                  "compile your blocks yourself before building the Trainer)")
