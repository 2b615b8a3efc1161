"""The optimizers plugin: names, weight-decay groups, optim_args, user optimizers, early errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import RegressionDataset

from hooktrain import ArgumentError, Trainer, TrainingArguments, hookimpl


class Block(torch.nn.Module):
    """Parameters of every kind the weight-decay split has to tell apart."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 8)
        self.ln = torch.nn.LayerNorm(8)  # a norm module: weight and bias without decay
        self.bn = torch.nn.BatchNorm1d(8)
        self.final_norm = torch.nn.Parameter(torch.ones(8))  # a norm by name only
        self.head = torch.nn.Linear(8, 1, bias=False)
        self.frozen = torch.nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, x, labels):
        h = self.bn(self.ln(self.proj(x))) * self.final_norm
        pred = self.head(h + 0 * self.frozen(h)).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(pred, labels)}


def trainer(tmp_path, model=None, optimizers=(None, None), plugins=(), **kw):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no",
                             disable_tqdm=True, per_device_train_batch_size=8, **kw)
    return Trainer(model or Block(), args, train_dataset=RegressionDataset(32),
                   optimizers=optimizers, plugins=list(plugins))


def built_optimizer(tmp_path, **kw):
    t = trainer(tmp_path, max_steps=1, **kw)
    t.train()
    return t.model, t.optimizer


def names_of(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_weight_decay_skips_biases_and_norm_weights_and_frozen_parameters(tmp_path):
    model, opt = built_optimizer(tmp_path, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names_of(model, decay["params"]) == ["head.weight", "proj.weight"]
    assert names_of(model, no_decay["params"]) == [
        "bn.bias", "bn.weight", "final_norm", "ln.bias", "ln.weight", "proj.bias"
    ]


def test_no_weight_decay_is_one_group_of_the_trainable_parameters(tmp_path):
    model, opt = built_optimizer(tmp_path, weight_decay=0.0)
    (group,) = opt.param_groups
    assert group["weight_decay"] == 0.0
    assert names_of(model, group["params"]) == sorted(
        n for n, p in model.named_parameters() if p.requires_grad
    )


@pytest.mark.parametrize("optim,cls,expected", [
    ("adamw_hf", torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8, "fused": None}),
    ("adamw_torch", torch.optim.AdamW, {"betas": (0.8, 0.9), "eps": 1e-6}),
    ("adamw_torch_fused", torch.optim.AdamW, {"fused": True}),
    ("fused_adam", torch.optim.AdamW, {"fused": True}),
    ("sgd", torch.optim.SGD, {"momentum": 0}),
    ("adagrad", torch.optim.Adagrad, {}),
    ("rmsprop", torch.optim.RMSprop, {}),
])
def test_each_name_builds_its_torch_optimizer(tmp_path, optim, cls, expected):
    betas = {"adam_beta1": 0.8, "adam_beta2": 0.9, "adam_epsilon": 1e-6} if optim == "adamw_torch" else {}
    _, opt = built_optimizer(tmp_path, optim=optim, learning_rate=0.02, **betas)
    assert type(opt) is cls
    assert opt.defaults["lr"] == 0.02
    assert {k: opt.defaults[k] for k in expected} == expected


def test_optim_args_reach_the_optimizer(tmp_path):
    _, opt = built_optimizer(tmp_path, optim="sgd", optim_args={"momentum": 0.9, "nesterov": True})
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    _, opt = built_optimizer(tmp_path, optim="adamw_torch", optim_args="betas=(0.5,0.6), amsgrad=True")
    assert opt.defaults["betas"] == (0.5, 0.6) and opt.defaults["amsgrad"] is True


def test_user_optimizer_and_scheduler_win(tmp_path):
    model = Block()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []

    class LR:
        @hookimpl
        def on_step_begin(self, trainer):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    t = trainer(tmp_path, model=model, optimizers=(opt, sched), plugins=[LR()], max_steps=3,
                optim="adamw_torch", warmup_steps=2)
    t.train()
    assert t.optimizer is opt and t.lr_scheduler is sched
    assert seen == [0.5, 0.25, 0.125]  # the user's schedule, not hooktrain's warm-up


def test_a_plugin_create_optimizer_replaces_the_builtin(tmp_path):
    class Lion:
        @hookimpl
        def create_optimizer(self, model, args):
            return torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.5)

    t = trainer(tmp_path, plugins=[Lion()], max_steps=1)
    t.train()
    assert type(t.optimizer) is torch.optim.SGD and t.optimizer.defaults["momentum"] == 0.5


def test_apex_without_apex_is_an_error_at_construction(tmp_path):
    if importlib.util.find_spec("apex") is not None:
        pytest.skip("NVIDIA apex is installed here")
    with pytest.raises(ArgumentError, match=r"needs NVIDIA apex .*adamw_torch_fused"):
        trainer(tmp_path, optim="adamw_apex")


def test_weight_decay_in_optim_args_is_refused_with_the_argument_to_use(tmp_path):
    with pytest.raises(ArgumentError, match=r"set weight_decay=0.1 as its own argument"):
        trainer(tmp_path, optim="adamw_torch", optim_args={"weight_decay": 0.1})
