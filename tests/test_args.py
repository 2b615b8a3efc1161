"""TrainingArguments: defaults, normalisation, validation, revalidation, serialisation, CLI, docs."""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from hooktrain.core.args import OWNERS, TrainingArguments, argument_specs
from hooktrain.core.cli import build_parser, parse_args, render_arguments_markdown
from hooktrain.core.errors import ArgumentError
from hooktrain.plugins.optimizers_args import optimizer_arg_names

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}


def make(**kw):
    kw.setdefault("output_dir", "out")
    return TrainingArguments(**kw)


# ------------------------------------------------------------------------------------ defaults
# name: (default, owner). Seed table wins over HF where they differ (report_to, tf32,
# logging_dir, save_safetensors, optim, learning_rate_end, power, optim_args as a dict).
DEFAULTS = {
    "output_dir": (None, "core"),  # required: None is "not given"
    "per_device_train_batch_size": (8, "core"),
    "per_device_eval_batch_size": (8, "core"),
    "num_train_epochs": (3.0, "core"),
    "max_steps": (-1, "core"),
    "gradient_accumulation_steps": (1, "core"),
    "seed": (42, "core"),
    "data_seed": (None, "core"),
    "full_determinism": (False, "core"),
    "logging_strategy": ("steps", "core"),
    "logging_steps": (500, "core"),
    "logging_first_step": (False, "core"),
    "logging_nan_inf_filter": (True, "core"),
    "eval_strategy": ("no", "core"),
    "eval_steps": (None, "core"),
    "eval_delay": (0.0, "core"),
    "eval_on_start": (False, "core"),
    "prediction_loss_only": (False, "core"),
    "eval_accumulation_steps": (None, "core"),
    "label_names": (None, "core"),
    "dataloader_drop_last": (False, "core"),
    "dataloader_num_workers": (0, "core"),
    "dataloader_pin_memory": (True, "core"),
    "dataloader_persistent_workers": (False, "core"),
    "dataloader_prefetch_factor": (None, "core"),
    "include_num_input_tokens_seen": ("no", "throughput"),
    "flops_per_sample": (None, "throughput"),
    "peak_flops": (None, "throughput"),
    "use_cpu": (False, "core"),
    "torch_empty_cache_steps": (None, "training"),
    "use_cache": (False, "training"),
    "include_for_metrics": ([], "training"),
    "batch_eval_metrics": (False, "training"),
    "eval_do_concat_batches": (True, "training"),
    "ignore_data_skip": (False, "core"),
    "disable_plugins": ([], "core"),
    "log_level": ("passive", "core"),
    "log_level_replica": ("warning", "core"),
    "log_on_each_node": (True, "core"),
    "remove_unused_columns": (True, "core"),
    "train_sampling_strategy": ("random", "core"),
    "length_column_name": ("length", "core"),
    "dataloader_multiprocessing_context": (None, "core"),
    "auto_find_batch_size": (False, "core"),
    "do_train": (False, "core"),
    "do_eval": (False, "core"),
    "do_predict": (False, "core"),
    "max_grad_norm": (1.0, "training"),
    "label_smoothing_factor": (0.0, "training"),
    "average_tokens_across_devices": (True, "training"),
    "learning_rate": (5e-5, "optimizers"),
    "weight_decay": (0.0, "optimizers"),
    "adam_beta1": (0.9, "optimizers"),
    "adam_beta2": (0.999, "optimizers"),
    "adam_epsilon": (1e-8, "optimizers"),
    "optim": ("adamw_hf", "optimizers"),
    "optim_args": (None, "optimizers"),
    "lr_scheduler_type": ("linear", "schedulers"),
    "lr_scheduler_kwargs": (None, "schedulers"),
    "warmup_ratio": (0.0, "schedulers"),
    "warmup_steps": (0, "schedulers"),
    "learning_rate_end": (None, "schedulers"),
    "power": (1.0, "schedulers"),
    "fp16": (False, "precision"),
    "bf16": (False, "precision"),
    "fp16_full_eval": (False, "precision"),
    "bf16_full_eval": (False, "precision"),
    "tf32": (True, "precision"),
    "gradient_checkpointing": (False, "gradient_checkpointing"),
    "gradient_checkpointing_kwargs": (None, "gradient_checkpointing"),
    "torch_compile": (False, "compile"),
    "torch_compile_backend": (None, "compile"),
    "torch_compile_mode": (None, "compile"),
    "disable_tqdm": (False, "progress"),
    "report_to": (["tensorboard"], "reporting"),
    "run_name": (None, "reporting"),
    "logging_dir": (None, "reporting"),
    "report_errors": ("warn", "reporting"),
    "report_timeout": (30.0, "reporting"),
    "report_checkpoints": (False, "reporting"),
    "save_strategy": ("steps", "checkpoint"),
    "save_steps": (500, "checkpoint"),
    "save_total_limit": (None, "checkpoint"),
    "save_safetensors": (True, "checkpoint"),
    "save_async": (True, "checkpoint"),
    "save_only_model": (False, "checkpoint"),
    "save_on_each_node": (False, "checkpoint"),
    "overwrite_output_dir": (False, "checkpoint"),
    "resume_from_checkpoint": (None, "checkpoint"),
    "restore_callback_states_from_checkpoint": (True, "checkpoint"),
    "load_best_model_at_end": (False, "best_model"),
    "metric_for_best_model": (None, "best_model"),
    "greater_is_better": (None, "best_model"),
    "early_stopping_patience": (None, "early_stopping"),
    "early_stopping_threshold": (0.0, "early_stopping"),
    "early_stopping_check_finite": (True, "early_stopping"),
    "early_stopping_stopping_threshold": (None, "early_stopping"),
    "early_stopping_divergence_threshold": (None, "early_stopping"),
    "preemption_signals": (["SIGTERM"], "preemption"),
    "resume_tracker_runs": (True, "preemption"),
    "fsdp": ([], "fsdp"),
    "fsdp_config": (None, "fsdp"),
    "ddp_backend": (None, "distributed"),
    "ddp_timeout": (1800, "distributed"),
    "ddp_find_unused_parameters": (False, "distributed"),
    "ddp_bucket_cap_mb": (None, "distributed"),
    "ddp_broadcast_buffers": (None, "distributed"),
    "ddp_static_graph": (None, "distributed"),
    "local_rank": (-1, "distributed"),
}
RESOLVED = {"output_dir": "out", "logging_dir": os.path.join("out", "runs")}


def test_at_least_80_fields_and_table_covers_all():
    assert len(dataclasses.fields(TrainingArguments)) >= 80
    assert set(DEFAULTS) == set(FIELDS)


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_default_and_owner(name):
    default, owner = DEFAULTS[name]
    spec = {s.name: s for s in argument_specs()}[name]
    assert spec.default == default and type(spec.default) is type(default)
    assert spec.owner == owner
    value = getattr(make(), name)
    assert value == RESOLVED.get(name, default)


@pytest.mark.parametrize("field", list(FIELDS.values()), ids=list(FIELDS))
def test_metadata(field):
    assert field.metadata["owner"] in OWNERS
    text = field.metadata["help"]
    assert text and "\n" not in text and text.strip() == text


def test_mutable_defaults_are_not_shared():
    a, b = make(), make()
    assert a.report_to is not b.report_to and a.disable_plugins is not b.disable_plugins


def test_output_dir_required():
    with pytest.raises(ArgumentError, match="output_dir is required"):
        TrainingArguments()
    with pytest.raises(ArgumentError, match="output_dir"):
        TrainingArguments(output_dir="  ")
    assert TrainingArguments("o").output_dir == "o"  # positional, like HF
    assert make(output_dir="~/x").output_dir == os.path.expanduser("~/x")


# ------------------------------------------------------------------------------------ validation
# (changes, field named by the problem). Every rule has bad values here and good values below.
BAD = [
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"per_device_eval_batch_size": -1}, "per_device_eval_batch_size"),
    ({"per_device_train_batch_size": 8.0}, "per_device_train_batch_size"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"num_train_epochs": -1}, "num_train_epochs"),
    ({"num_train_epochs": float("inf")}, "num_train_epochs"),
    ({"num_train_epochs": "3"}, "num_train_epochs"),
    ({"max_steps": 1.5}, "max_steps"),
    ({"max_steps": True}, "max_steps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"data_seed": -5}, "data_seed"),
    ({"full_determinism": 1}, "full_determinism"),
    ({"bf16": "true"}, "bf16"),
    ({"logging_strategy": "step"}, "logging_strategy"),
    ({"logging_steps": 0}, "logging_steps"),
    ({"logging_steps": -1}, "logging_steps"),
    ({"logging_steps": 2.5}, "logging_steps"),
    ({"eval_strategy": "sometimes"}, "eval_strategy"),
    ({"eval_strategy": "steps", "eval_steps": 0}, "eval_steps"),
    ({"eval_strategy": "steps", "eval_steps": 10.5}, "eval_steps"),
    ({"eval_strategy": "steps", "logging_strategy": "no", "logging_steps": 0}, "eval_steps"),
    ({"eval_delay": -1}, "eval_delay"),
    ({"eval_accumulation_steps": 0}, "eval_accumulation_steps"),
    ({"label_names": [1]}, "label_names"),
    ({"dataloader_num_workers": -1}, "dataloader_num_workers"),
    ({"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor"),
    ({"dataloader_num_workers": 2, "dataloader_prefetch_factor": 0}, "dataloader_prefetch_factor"),
    ({"dataloader_persistent_workers": True}, "dataloader_persistent_workers"),
    ({"torch_empty_cache_steps": 0}, "torch_empty_cache_steps"),
    ({"disable_plugins": ["bad name"]}, "disable_plugins"),
    ({"disable_plugins": 3}, "disable_plugins"),
    ({"log_level": "verbose"}, "log_level"),
    ({"max_grad_norm": -0.1}, "max_grad_norm"),
    ({"label_smoothing_factor": 1.0}, "label_smoothing_factor"),
    ({"label_smoothing_factor": -0.1}, "label_smoothing_factor"),
    ({"learning_rate": -1e-5}, "learning_rate"),
    ({"weight_decay": -0.01}, "weight_decay"),
    ({"adam_beta1": 1.0}, "adam_beta1"),
    ({"adam_beta2": -0.5}, "adam_beta2"),
    ({"adam_epsilon": -1e-8}, "adam_epsilon"),
    ({"optim": "adamw"}, "optim"),
    ({"optim_args": {"epss": 1e-6}}, "optim_args"),
    ({"optim": "sgd", "optim_args": {"betas": [0.9, 0.9]}}, "optim_args"),
    ({"optim_args": "not a mapping"}, "optim_args"),
    ({"optim_args": "{bad json"}, "optim_args"),
    ({"optim_args": {"x": object()}}, "optim_args"),
    ({"optim_args": [1, 2]}, "optim_args"),
    ({"lr_scheduler_type": "cosin"}, "lr_scheduler_type"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "lr_scheduler_type"),
    ({"lr_scheduler_kwargs": "k=v"}, "lr_scheduler_kwargs"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"warmup_ratio": -0.1}, "warmup_ratio"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"learning_rate_end": 1e-6}, "learning_rate_end"),  # linear has no end value
    ({"lr_scheduler_type": "constant", "learning_rate_end": 0.0}, "learning_rate_end"),
    ({"lr_scheduler_type": "cosine", "learning_rate_end": 1e-3}, "learning_rate_end"),
    ({"lr_scheduler_type": "polynomial", "learning_rate_end": -1e-7}, "learning_rate_end"),
    ({"lr_scheduler_type": "cosine", "learning_rate_end": 5e-5}, "learning_rate_end"),
    ({"power": 0}, "power"),
    ({"fp16": True, "bf16": True}, "fp16"),
    ({"fp16_full_eval": True, "bf16_full_eval": True}, "fp16_full_eval"),
    ({"torch_compile_mode": "fast"}, "torch_compile_mode"),
    ({"torch_compile_backend": ""}, "torch_compile_backend"),
    ({"gradient_checkpointing_kwargs": 5}, "gradient_checkpointing_kwargs"),
    ({"report_to": ["all", "wandb"]}, "report_to"),
    ({"report_to": ["none", "wandb"]}, "report_to"),
    ({"report_to": [""]}, "report_to"),
    ({"report_to": ["w and b"]}, "report_to"),
    ({"report_to": 5}, "report_to"),
    ({"report_errors": "ignore"}, "report_errors"),
    ({"report_timeout": 0}, "report_timeout"),
    ({"run_name": ""}, "run_name"),
    ({"save_strategy": "every step"}, "save_strategy"),
    ({"save_strategy": 3}, "save_strategy"),
    ({"save_steps": 0}, "save_steps"),
    ({"save_steps": 1.5}, "save_steps"),
    ({"save_total_limit": 0}, "save_total_limit"),
    ({"save_safetensors": None}, "save_safetensors"),
    ({"load_best_model_at_end": True}, "load_best_model_at_end"),
    ({"save_strategy": "best"}, "save_strategy"),
    ({"greater_is_better": "yes"}, "greater_is_better"),
    ({"early_stopping_patience": 3}, "early_stopping_patience"),
    ({"eval_strategy": "epoch", "early_stopping_patience": 0}, "early_stopping_patience"),
    ({"eval_strategy": "epoch", "early_stopping_threshold": -1}, "early_stopping_threshold"),
    ({"early_stopping_stopping_threshold": 0.1}, "early_stopping_stopping_threshold"),
    ({"early_stopping_divergence_threshold": 9.0}, "early_stopping_divergence_threshold"),
    ({"eval_strategy": "epoch", "early_stopping_stopping_threshold": 1.0,
      "early_stopping_divergence_threshold": 0.5}, "early_stopping_divergence_threshold"),
    ({"eval_strategy": "epoch", "metric_for_best_model": "accuracy",
      "early_stopping_stopping_threshold": 0.5,
      "early_stopping_divergence_threshold": 0.9}, "early_stopping_divergence_threshold"),
    ({"ddp_backend": "nccll"}, "ddp_backend"),
    ({"ddp_timeout": 0}, "ddp_timeout"),
    ({"ddp_bucket_cap_mb": 0}, "ddp_bucket_cap_mb"),
    ({"ddp_broadcast_buffers": 1}, "ddp_broadcast_buffers"),
    ({"local_rank": -2}, "local_rank"),
    ({"resume_from_checkpoint": True}, "resume_from_checkpoint"),
]


@pytest.mark.parametrize("changes,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_values(changes, name):
    with pytest.raises(ArgumentError) as info:
        make(**changes)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert name in problems[0]


# (changes, expected normalised values)
GOOD = [
    ({"per_device_train_batch_size": 1, "gradient_accumulation_steps": 16}, {}),
    ({"num_train_epochs": 2}, {"num_train_epochs": 2.0}),
    ({"num_train_epochs": 0.5}, {}),
    ({"max_steps": 0}, {}),
    ({"max_steps": 100}, {}),
    ({"seed": 0, "data_seed": 2**32 - 1}, {}),
    ({"logging_steps": 0.1}, {}),
    ({"logging_steps": 10.0}, {"logging_steps": 10}),
    ({"logging_steps": 1}, {}),
    ({"logging_strategy": "no", "logging_steps": 0}, {}),
    ({"logging_strategy": "epoch", "logging_steps": 2.5}, {}),
    ({"eval_strategy": "steps"}, {"eval_steps": 500}),
    ({"eval_strategy": "steps", "logging_steps": 0.25}, {"eval_steps": 0.25}),
    ({"eval_strategy": "steps", "eval_steps": 100.0}, {"eval_steps": 100}),
    ({"eval_strategy": "epoch"}, {"eval_steps": None}),
    ({"eval_delay": 2}, {"eval_delay": 2.0}),
    ({"dataloader_num_workers": 2, "dataloader_prefetch_factor": 4,
      "dataloader_persistent_workers": True}, {}),
    ({"use_cpu": True}, {"dataloader_pin_memory": False}),
    ({"label_names": "target"}, {"label_names": ["target"]}),
    ({"label_names": ("a", "b")}, {"label_names": ["a", "b"]}),
    ({"disable_plugins": ("progress",)}, {"disable_plugins": ["progress"]}),
    ({"log_level": "WARNING"}, {"log_level": "warning"}),
    ({"max_grad_norm": 0}, {"max_grad_norm": 0.0}),
    ({"label_smoothing_factor": 0.1}, {}),
    ({"learning_rate": 0, "weight_decay": 0.1, "adam_beta1": 0, "adam_epsilon": 0}, {}),
    ({"optim": "adamw_torch_fused", "optim_args": {"fused": True, "amsgrad": False}}, {}),
    ({"optim": "sgd", "optim_args": {"momentum": 0.9, "nesterov": True}}, {}),
    ({"optim": "adagrad", "optim_args": {"lr_decay": 0.01}}, {}),
    ({"optim": "rmsprop", "optim_args": {"alpha": 0.9, "centered": True}}, {}),
    ({"optim": "adamw_apex", "optim_args": {"betas": (0.9, 0.95)}},
     {"optim_args": {"betas": [0.9, 0.95]}}),
    ({"optim_args": '{"eps": 1e-6}'}, {"optim_args": {"eps": 1e-6}}),
    ({"optim_args": "eps=1e-6, betas=(0.9,0.99), amsgrad=True, foreach=None"},
     {"optim_args": {"eps": 1e-6, "betas": [0.9, 0.99], "amsgrad": True, "foreach": None}}),
    ({"optim_args": ""}, {"optim_args": None}),
    ({"optim": "OptimizerNames.ADAMW_TORCH"}, {"optim": "adamw_torch"}),
    ({"lr_scheduler_type": "COSINE"}, {"lr_scheduler_type": "cosine"}),
    ({"lr_scheduler_kwargs": '{"num_cycles": 2}'}, {"lr_scheduler_kwargs": {"num_cycles": 2}}),
    ({"warmup_ratio": 1.0}, {}),
    ({"warmup_steps": 10.0}, {"warmup_steps": 10}),
    ({"warmup_steps": 0.1}, {}),
    ({"lr_scheduler_type": "cosine", "learning_rate_end": 0.0}, {}),
    ({"lr_scheduler_type": "cosine_with_restarts", "learning_rate_end": 1e-7}, {}),
    ({"lr_scheduler_type": "polynomial", "learning_rate_end": 1e-7, "power": 2}, {"power": 2.0}),
    ({"fp16": True, "bf16_full_eval": True}, {}),
    ({"bf16": True, "bf16_full_eval": True}, {}),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}},
     {}),
    ({"torch_compile_backend": "inductor"}, {"torch_compile": True}),
    ({"torch_compile_mode": "max-autotune"}, {"torch_compile": True}),
    ({"torch_compile": True}, {"torch_compile_backend": None}),
    ({"report_to": "wandb"}, {"report_to": ["wandb"]}),
    ({"report_to": ["wandb", "mlflow", "wandb"]}, {"report_to": ["wandb", "mlflow"]}),
    ({"report_to": None}, {"report_to": ["tensorboard"]}),
    ({"report_to": "none"}, {"report_to": []}),
    ({"report_to": ["none"]}, {"report_to": []}),
    ({"report_to": []}, {"report_to": []}),
    ({"report_to": "all"}, {"report_to": ["all"]}),
    ({"report_to": ["comet_ml", "my.reporter-2"]}, {}),
    ({"logging_dir": "tb"}, {"logging_dir": "tb"}),
    ({"report_errors": "raise", "report_timeout": 1}, {"report_timeout": 1.0}),
    ({"save_strategy": "my_policy"}, {"save_strategy": "my_policy"}),
    ({"save_strategy": "EPOCH"}, {"save_strategy": "epoch"}),
    ({"save_strategy": "SaveStrategy.BEST", "metric_for_best_model": "accuracy"},
     {"save_strategy": "best", "greater_is_better": True}),
    ({"save_strategy": "no", "save_steps": 0}, {}),
    ({"save_steps": 0.2, "save_total_limit": 1}, {}),
    ({"eval_strategy": "steps", "load_best_model_at_end": True},
     {"metric_for_best_model": "loss", "greater_is_better": False}),
    # HF's "save and eval strategies must match" is deliberately not enforced.
    ({"eval_strategy": "epoch", "save_strategy": "steps", "save_steps": 7,
      "load_best_model_at_end": True}, {}),
    ({"eval_strategy": "steps", "eval_steps": 3, "save_steps": 5, "load_best_model_at_end": True},
     {}),
    ({"metric_for_best_model": "eval_f1"}, {"greater_is_better": True}),
    ({"metric_for_best_model": "eval_loss", "greater_is_better": True}, {"greater_is_better": True}),
    ({"eval_strategy": "epoch", "early_stopping_patience": 2},
     {"metric_for_best_model": "loss", "greater_is_better": False}),
    ({"eval_strategy": "epoch", "early_stopping_stopping_threshold": 0.1,
      "early_stopping_divergence_threshold": 5.0}, {}),
    ({"eval_strategy": "epoch", "metric_for_best_model": "accuracy",
      "early_stopping_stopping_threshold": 0.95, "early_stopping_divergence_threshold": 0.2}, {}),
    ({"ddp_backend": "GLOO", "ddp_timeout": 60, "ddp_bucket_cap_mb": 25,
      "ddp_broadcast_buffers": False, "ddp_static_graph": True}, {"ddp_backend": "gloo"}),
    ({"local_rank": 0}, {}),
    ({"resume_from_checkpoint": "out/checkpoint-10"}, {}),
]


@pytest.mark.parametrize("changes,expected", GOOD, ids=[str(i) for i in range(len(GOOD))])
def test_good_values(changes, expected):
    a = make(**changes)
    for name, value in changes.items():
        if name not in expected and not isinstance(value, tuple):
            assert getattr(a, name) == value, name  # kept as given (maybe int -> float)
    for name, value in expected.items():
        got = getattr(a, name)
        assert got == value and type(got) is type(value), (name, got)
    json.dumps(a.to_dict())  # always JSON-safe


class IntervalStrategy(enum.Enum):
    STEPS = "steps"
    EPOCH = "epoch"


class HasValue:
    value = "epoch"


@pytest.mark.parametrize("value", ["STEPS", "Steps", "IntervalStrategy.STEPS", IntervalStrategy.STEPS])
def test_strategy_enum_forms(value):
    a = make(logging_strategy=value, eval_strategy=value, save_strategy=value)
    assert (a.logging_strategy, a.eval_strategy, a.save_strategy) == ("steps",) * 3


def test_strategy_value_attribute():
    assert make(eval_strategy=HasValue()).eval_strategy == "epoch"


def test_unknown_choice_suggests_closest():
    with pytest.raises(ArgumentError, match="did you mean 'cosine'"):
        make(lr_scheduler_type="cosin")
    with pytest.raises(ArgumentError, match="allowed: lr, betas, eps"):
        make(optim_args={"epss": 1})


def test_every_problem_is_listed():
    with pytest.raises(ArgumentError) as info:
        TrainingArguments(learning_rate=-1, optim="adamw", fp16=True, bf16=True, seed="x",
                          eval_strategy="no", load_best_model_at_end=True, save_total_limit=0,
                          report_to=["all", "x"], logging_steps=2.5)
    problems = info.value.problems
    for name in ("output_dir", "learning_rate", "optim", "fp16", "seed", "load_best_model_at_end",
                 "save_total_limit", "report_to", "logging_steps"):
        assert sum(name in p for p in problems) >= 1, (name, problems)
    assert len(problems) == 9
    assert str(info.value).startswith("9 invalid settings")
    assert "learning_rate=-1.0" in str(info.value)  # names field, value and what is allowed


def test_optimizer_arg_names():
    assert "params" not in optimizer_arg_names("adamw_torch")
    assert {"lr", "betas", "eps", "weight_decay", "fused"} <= set(optimizer_arg_names("fused_adam"))
    assert "momentum" in optimizer_arg_names("sgd")
    assert "lr_decay" in optimizer_arg_names("adagrad")
    assert "alpha" in optimizer_arg_names("rmsprop")


def test_module_imports_no_torch_at_top_level():
    for module in ("args.py", "cli.py", "settings.py"):
        tree = ast.parse((ROOT / "hooktrain" / "core" / module).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("torch", "yaml")], (module, names)


def test_arguments_import_only_settings_modules_and_no_torch():
    """Composing TrainingArguments imports each group's settings module, never a plugin module."""
    # the package itself imports the Trainer (and torch): load the args module without it
    code = ("import sys, types; pkg = types.ModuleType('hooktrain'); "
            f"pkg.__path__ = [{str(ROOT / 'hooktrain')!r}]; sys.modules['hooktrain'] = pkg; "
            "import hooktrain.core.args; "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'hooktrain.plugins.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of str
    from hooktrain.plugins import BUILTINS

    assert loaded == sorted(b.settings for b in BUILTINS if b.settings)


def test_owner_is_where_the_field_is_declared():
    from hooktrain.core.args import GROUPS

    for group in GROUPS:
        own = group.cls.__dict__["__annotations__"]
        assert own and all(FIELDS[name].metadata["owner"] == group.owner for name in own)
    assert sum(len(g.cls.__dict__["__annotations__"]) for g in GROUPS) == len(FIELDS)


def test_static_view_of_training_arguments_matches_the_groups():
    """Type checkers see TrainingArguments as a class with explicit bases (args.py, TYPE_CHECKING);
    those bases are the groups composed at run time, in the same order."""
    tree = ast.parse((ROOT / "hooktrain" / "core" / "args.py").read_text())
    static = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments")
    bases = [b.id for b in static.bases if isinstance(b, ast.Name)]
    from hooktrain.core.args import GROUPS

    assert bases == [g.cls.__name__ for g in reversed(GROUPS)] + ["_ArgumentsBehaviour"]
    assert [c.__name__ for c in TrainingArguments.__mro__[1:-1]] == bases


def test_num_train_epochs_zero_without_max_steps_is_rejected():
    with pytest.raises(ArgumentError) as info:
        make(num_train_epochs=0)
    assert len(info.value.problems) == 1
    assert "num_train_epochs=0" in info.value.problems[0] and "max_steps=-1" in info.value.problems[0]
    with pytest.raises(ArgumentError, match="max_steps=0"):
        make(num_train_epochs=0, max_steps=0)
    assert make(num_train_epochs=0, max_steps=5).max_steps == 5  # max_steps wins
    with pytest.raises(ArgumentError, match="num_train_epochs"):
        make().replace(num_train_epochs=0)


# ------------------------------------------------------------------------------------ derived helpers
@pytest.mark.parametrize("steps,ratio,n,expected", [
    (0, 0.0, 100, 0),
    (0, 0.1, 95, 10),  # ceil(9.5)
    (0, 0.05, 10, 1),  # ceil(0.5)
    (10, 0.5, 100, 10),  # warmup_steps wins over the ratio
    (7.9, 0.0, 100, 7),  # absolute float truncated (HF)
    (0.25, 0.0, 10, 3),  # warmup_steps ratio: ceil(2.5)
    (1000, 0.0, 10, 1000),  # not capped: LR never reaches its peak (HF)
])
def test_get_warmup_steps(steps, ratio, n, expected):
    assert make(warmup_steps=steps, warmup_ratio=ratio).get_warmup_steps(n) == expected


def test_batch_size_properties():
    a = make(per_device_train_batch_size=4, per_device_eval_batch_size=16)
    assert (a.train_batch_size, a.eval_batch_size) == (4, 16)


# ------------------------------------------------------------------------------------ revalidation
def test_assignment_is_validated_and_normalised():
    a = make()
    a.report_to = "none"
    assert a.report_to == []
    a.logging_steps = 20.0
    assert a.logging_steps == 20 and isinstance(a.logging_steps, int)


def test_bad_assignment_leaves_object_unchanged():
    a = make(eval_strategy="steps", eval_steps=10)
    before = a.to_dict()
    with pytest.raises(ArgumentError, match="learning_rate"):
        a.learning_rate = -1.0
    with pytest.raises(ArgumentError, match="bf16"):
        a.bf16 = True
        a.fp16 = True  # never reached
    assert a.bf16 is True  # the first assignment was valid
    with pytest.raises(ArgumentError, match="fp16"):
        a.fp16 = True
    with pytest.raises(ArgumentError, match="load_best_model_at_end"):
        a.eval_strategy = "no"
        a.load_best_model_at_end = True
    assert a.to_dict() == {**before, "bf16": True, "eval_strategy": "no", "eval_steps": 10}
    with pytest.raises(AttributeError, match="did you mean 'learning_rate'"):
        a.learnig_rate = 1e-4
    assert not hasattr(a, "learnig_rate")
    with pytest.raises(AttributeError):
        del a.learning_rate
    assert a.learning_rate == 5e-5


def test_methods_can_be_monkeypatched(monkeypatch):
    a = make()
    monkeypatch.setattr(a, "get_warmup_steps", lambda n: 42)
    assert a.get_warmup_steps(10) == 42
    monkeypatch.undo()
    assert a.get_warmup_steps(10) == 0


def test_derived_values_follow_their_sources():
    a = make(eval_strategy="steps", load_best_model_at_end=True)
    assert (a.logging_dir, a.eval_steps, a.metric_for_best_model, a.greater_is_better) == (
        os.path.join("out", "runs"), 500, "loss", False)
    a.output_dir = "elsewhere"
    a.logging_steps = 50
    a.metric_for_best_model = "accuracy"
    assert (a.logging_dir, a.eval_steps, a.greater_is_better) == (
        os.path.join("elsewhere", "runs"), 50, True)
    a.logging_dir = "tb"
    a.output_dir = "third"
    assert a.logging_dir == "tb"  # explicit values are kept
    b = make(torch_compile_mode="default")
    b.torch_compile_mode = None
    assert b.torch_compile is False


def test_replace():
    a = make(learning_rate=1e-4)
    b = a.replace(learning_rate=2e-5, output_dir="b")
    assert (a.learning_rate, a.output_dir) == (1e-4, "out")
    assert (b.learning_rate, b.output_dir, b.logging_dir) == (2e-5, "b", os.path.join("b", "runs"))
    with pytest.raises(ArgumentError, match="warmup_ratio"):
        a.replace(warmup_ratio=2)
    with pytest.raises(ArgumentError, match="did you mean 'seed'"):
        a.replace(sed=1)


def test_copy_and_pickle_keep_state():
    a = make(eval_strategy="steps")
    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert b == a
        b.logging_steps = 7
        assert b.eval_steps == 7 and a.eval_steps == 500


# ------------------------------------------------------------------------------------ serialisation
RICH = dict(
    output_dir="out", report_to=["wandb", "mlflow"], optim="sgd", optim_args={"momentum": 0.9},
    lr_scheduler_type="cosine", learning_rate_end=1e-7, lr_scheduler_kwargs={"num_cycles": 0.5},
    eval_strategy="steps", eval_steps=0.1, load_best_model_at_end=True, label_names=["y"],
    gradient_checkpointing_kwargs={"use_reentrant": False}, save_total_limit=2, bf16=True,
    early_stopping_patience=3, disable_plugins=["progress"], warmup_steps=0.05,
)


def test_to_dict_is_json_safe_and_a_copy():
    a = make(**RICH)
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    d["report_to"].append("x")
    assert a.report_to == ["wandb", "mlflow"]
    assert set(d) == set(FIELDS)


def test_json_round_trip(tmp_path):
    a = make(**RICH)
    text = a.to_json()
    assert json.loads(text) == a.to_dict() and text == json.dumps(a.to_dict(), sort_keys=True, indent=2)
    assert TrainingArguments.from_json(text) == a
    path = tmp_path / "args.json"
    path.write_text(text)
    assert TrainingArguments.from_json(path) == a
    assert TrainingArguments.from_json(str(path)) == a
    assert TrainingArguments.from_dict(a.to_dict()) == a
    assert TrainingArguments.from_json(make().to_json()) == make()


def test_yaml_round_trip(tmp_path):
    yaml = pytest.importorskip("yaml")
    a = make(**RICH)
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(a.to_dict()))
    assert TrainingArguments.from_yaml(path) == a
    path.write_text("output_dir: o\nlearning_rate: 2.0e-5\nreport_to: wandb\nbf16: true\n")
    b = TrainingArguments.from_yaml(path)
    assert (b.learning_rate, b.report_to, b.bf16) == (2e-5, ["wandb"], True)


def test_from_dict_rejects_unknown_names():
    with pytest.raises(ArgumentError, match="did you mean 'learning_rate'"):
        TrainingArguments.from_dict({"output_dir": "o", "learnig_rate": 1e-4})
    with pytest.raises(ArgumentError, match="mapping"):
        TrainingArguments.from_dict(["output_dir"])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ CLI
def test_cli_hf_style_flags():
    a = parse_args(["--output_dir", "o", "--learning_rate", "2e-5", "--report_to", "wandb", "mlflow",
                    "--bf16", "--optim_args", '{"eps": 1e-6}', "--num_train_epochs", "1",
                    "--save_steps", "100", "--max_steps", "50"])
    assert (a.learning_rate, a.report_to, a.bf16, a.optim_args) == (
        2e-5, ["wandb", "mlflow"], True, {"eps": 1e-6})
    assert (a.num_train_epochs, a.save_steps, a.max_steps) == (1.0, 100, 50)


@pytest.mark.parametrize("argv,expected", [
    (["--bf16"], True),
    (["--bf16", "true"], True),
    (["--bf16", "True"], True),
    (["--bf16", "false"], False),
    (["--bf16", "0"], False),
    (["--no_bf16"], False),
    ([], False),
])
def test_cli_bools(argv, expected):
    assert parse_args(["--output_dir", "o", *argv]).bf16 is expected


def test_cli_none_lists_dicts_and_k_v():
    a = parse_args(["--output_dir", "o", "--greater_is_better", "none", "--report_to", "none",
                    "--data_seed", "None", "--label_names", "y", "z", "--optim_args", "eps=1e-6",
                    "--lr_scheduler_kwargs", '{"num_cycles": 2}', "--ddp_static_graph", "true",
                    "--disable_plugins", "progress", "checkpoint"])
    assert (a.greater_is_better, a.report_to, a.data_seed, a.label_names) == (None, [], None, ["y", "z"])
    assert (a.optim_args, a.lr_scheduler_kwargs, a.ddp_static_graph) == (
        {"eps": 1e-6}, {"num_cycles": 2}, True)
    assert a.disable_plugins == ["progress", "checkpoint"]


def test_cli_bad_values_reported_together():
    with pytest.raises(ArgumentError) as info:
        parse_args(["--output_dir", "o", "--max_steps", "abc", "--bf16", "maybe",
                    "--learning_rate", "fast"])
    assert len(info.value.problems) == 3
    with pytest.raises(ArgumentError, match="did you mean '--learning_rate'"):
        parse_args(["--output_dir", "o", "--learnig_rate", "1e-4"])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("how", ["positional", "flag", "argument"])
def test_cli_config_file_with_overrides(tmp_path, suffix, how):
    path = tmp_path / f"cfg{suffix}"
    path.write_text(json.dumps({"output_dir": "from_file", "learning_rate": 1e-3, "bf16": True,
                                "report_to": ["wandb"]}))  # JSON is also valid YAML
    flags = ["--learning_rate", "2e-5", "--no_bf16"]
    if how == "positional":
        a = parse_args([str(path), *flags])
    elif how == "flag":
        a = parse_args(["--config", str(path), *flags])
    else:
        a = parse_args(flags, config_file=path)
    assert (a.output_dir, a.learning_rate, a.bf16, a.report_to) == ("from_file", 2e-5, False, ["wandb"])


def test_cli_defaults_layer_below_file_and_flags(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 3\n")
    a = parse_args(["--max_steps", "9", str(path)], defaults={"output_dir": "d", "seed": 1, "max_steps": 2})
    assert (a.output_dir, a.seed, a.max_steps) == ("d", 3, 9)
    assert "[default: 'd']" in build_parser({"output_dir": "d"}).format_help()


def test_cli_config_file_errors(tmp_path):
    with pytest.raises(ArgumentError, match="more than one config file"):
        parse_args(["a.yaml", "--config", "b.yaml"])
    with pytest.raises(ArgumentError, match="missing.yaml' does not exist"):
        parse_args([str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ArgumentError, match="cannot read config file .*: line 1, column 2: "):
        parse_args([str(bad)])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ArgumentError, match="must hold a mapping"):
        parse_args([str(listing)])


def test_cli_help_lists_every_field_grouped_with_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for spec in argument_specs():
        assert f"--{spec.name} " in text or f"--{spec.name}\n" in text, spec.name
    for owner in OWNERS:
        assert f"\n{owner}:\n" in text
    flat = " ".join(text.split())
    assert "[default: 5e-05]" in flat and "[default: ['tensorboard']]" in flat
    assert "the core plugin" not in flat and "read by the core (training loop" in flat


# ------------------------------------------------------------------------------------ docs
def test_docs_arguments_md_is_up_to_date():
    doc = ROOT / "docs" / "arguments.md"
    assert doc.read_text(encoding="utf-8") == render_arguments_markdown(), (
        "docs/arguments.md is stale: run `python tools/gen_arguments_doc.py`")


def test_docs_list_every_field_under_its_owner():
    text = render_arguments_markdown()
    for spec in argument_specs():
        section = text.split(f"\n## {spec.owner}\n", 1)[1].split("\n## ", 1)[0]
        assert f"| `{spec.name}` |" in section
