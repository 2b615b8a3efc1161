"""Precision and memory: bf16/fp16 autocast, the fp16 grad scaler, half-precision evaluation,
TF32 flags (plugin ``precision``), gradient checkpointing (``gradient_checkpointing``) and
torch.compile (``compile``) — all measured on real CPU runs."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import RegressionDataset, TinyRegressor
from safetensors.torch import load_file

from hooktrain import ArgumentError, Trainer, TrainingArguments, hookimpl
from hooktrain.plugins.gradient_checkpointing import (
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    find_checkpoint_targets,
)
from hooktrain.plugins.precision import Tf32Flags, half_precision


def make_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=4, logging_steps=1, learning_rate=0.05, optim="adamw_torch",
        use_cpu=True,  # the CPU behaviour, also where a GPU is present (benchmarks/gpu.py covers CUDA)
    )
    base.update(kw)
    return TrainingArguments(**base)


class SmallDataset(torch.utils.data.Dataset):
    """Inputs ~0.1 and labels 0: even fp16 loss scaling at 65536 never overflows by itself."""

    def __init__(self, n=24, dim=4):
        g = torch.Generator().manual_seed(0)
        self.x = 0.1 * torch.randn(n, dim, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": torch.tensor(0.0)}


class Block(torch.nn.Module):
    """A pre-norm residual MLP block with dropout (several saved activations inside)."""

    def __init__(self, dim, dropout):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        return x + self.fc2(self.drop(torch.nn.functional.gelu(self.fc1(self.norm(x)))))


class BlockNet(torch.nn.Module):
    def __init__(self, dim=4, hidden=16, depth=3, dropout=0.2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Linear(dim, hidden)
        self.blocks = torch.nn.ModuleList(Block(hidden, dropout) for _ in range(depth))
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, labels=None):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        logits = self.head(h).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


class StepWeights:
    """Snapshots of every parameter after each optimizer step, and the logs."""

    def __init__(self):
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.logs: dict[int, dict] = {}

    @hookimpl
    def on_train_begin(self, trainer, state):
        self.weights[state.global_step] = [p.detach().clone() for p in trainer.model.parameters()]

    @hookimpl
    def on_step_end(self, trainer, state):
        self.weights[state.global_step] = [p.detach().clone() for p in trainer.model.parameters()]

    @hookimpl
    def on_log(self, state, logs):
        if "loss" in logs:
            self.logs[state.global_step] = logs


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def output_dtypes(module, store):
    """Record the dtype of *module*'s output at each call, tagged train/eval."""
    return module.register_forward_hook(
        lambda m, i, o: store.append(("train" if m.training else "eval", o.dtype))
    )


# ---- bf16 / fp16 autocast -----------------------------------------------------------------


@pytest.mark.parametrize("flag, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_the_matmuls_in_half_on_cpu(tmp_path, flag, dtype):
    model = TinyRegressor()
    seen: list = []
    output_dtypes(model.linear, seen)
    trainer = Trainer(
        model=model, args=make_args(tmp_path, max_steps=3, **{flag: True}),
        train_dataset=SmallDataset(), eval_dataset=SmallDataset(8),
    )
    trainer.train()
    trainer.evaluate()
    assert seen == [("train", dtype)] * 3 + [("eval", dtype)]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    has_scaler = trainer.plugin_manager.get_plugin("precision.grad_scaler") is not None
    assert has_scaler == (flag == "fp16")


def test_default_precision_registers_nothing_and_runs_fp32(tmp_path):
    model = TinyRegressor()
    seen: list = []
    output_dtypes(model.linear, seen)
    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=SmallDataset())
    trainer.train()
    assert seen == [("train", torch.float32)] * 2
    assert not [n for n, _ in trainer.plugin_manager.list_name_plugin() if n.startswith("precision.")]


class InfAt(TinyRegressor):
    """The loss of the k-th training forward is multiplied by inf: that step's gradients are inf/NaN."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        if self.training:
            self.calls += 1
            if self.calls == self.k:
                out["loss"] = out["loss"] * float("inf")
        return out


def test_fp16_scaler_skips_exactly_the_step_with_inf_gradients(tmp_path):
    rec = StepWeights()
    trainer = Trainer(
        model=InfAt(3), args=make_args(tmp_path, fp16=True, max_steps=6, logging_nan_inf_filter=False),
        train_dataset=SmallDataset(), plugins=[rec],
    )
    scaler = trainer.plugin_manager.get_plugin("precision.grad_scaler").scaler
    trainer.train()
    w = rec.weights
    assert not same(w[1], w[0]) and not same(w[2], w[1])
    assert same(w[3], w[2])  # step 3 skipped: weights untouched
    assert not same(w[4], w[3]) and not same(w[5], w[4]) and not same(w[6], w[5])
    assert trainer.state.skipped_steps == 1
    assert [s for s, logs in rec.logs.items() if "skipped_steps" in logs] == [3]
    assert rec.logs[3]["skipped_steps"] == 1
    lr = {s: logs["learning_rate"] for s, logs in rec.logs.items()}
    assert lr[1] > lr[2] > lr[3]
    assert lr[4] == lr[3]  # the scheduler did not step on the skipped step
    assert lr[5] < lr[4]
    assert trainer.lr_scheduler.last_epoch == 5
    assert scaler.get_scale() == 65536.0 / 2  # one back-off, nothing else
    history = [e for e in trainer.state.log_history if "skipped_steps" in e]
    assert [(e["step"], e["skipped_steps"]) for e in history] == [(3, 1)]


def test_fp16_first_step_overflow_is_a_skip_too(tmp_path):
    """Large residuals: the initial scale (65536) overflows fp16 gradients, as on GPUs."""
    ds = RegressionDataset(24)
    ds.y = ds.y + 1000.0
    trainer = Trainer(model=TinyRegressor(), args=make_args(tmp_path, fp16=True, max_steps=4),
                      train_dataset=ds)
    trainer.train()
    scaler = trainer.plugin_manager.get_plugin("precision.grad_scaler").scaler
    assert trainer.state.skipped_steps >= 1
    assert scaler.get_scale() == 65536.0 / 2 ** trainer.state.skipped_steps


def test_grad_scaler_state_is_in_every_checkpoint(tmp_path):
    args = make_args(tmp_path, fp16=True, max_steps=3).replace(save_strategy="steps", save_steps=3)
    trainer = Trainer(model=InfAt(2), args=args, train_dataset=SmallDataset())
    trainer.train()
    saved = torch.load(tmp_path / "out" / "checkpoint-3" / "scaler.pt", weights_only=True)
    assert saved["scale"] == 32768.0 and saved["_growth_tracker"] == 1  # one good step since the back-off
    assert saved == trainer.plugin_manager.get_plugin("precision.grad_scaler").scaler.state_dict()


class StopAt:
    def __init__(self, step):
        self.step = step

    @hookimpl
    def should_stop(self, state):
        return "test stop" if state.global_step == self.step else None


def test_fp16_resume_from_a_checkpoint_continues_exactly(tmp_path):
    """A run stopped at step 3 and resumed from checkpoint-3 ends with the same weights and scaler
    state as one uninterrupted 6-step run (one skipped step before the checkpoint)."""
    def trainer(out, *plugins):
        args = make_args(tmp_path, output_dir=str(tmp_path / out), fp16=True, max_steps=6,
                         save_strategy="steps", save_steps=3)
        return Trainer(model=InfAt(2), args=args, train_dataset=SmallDataset(), plugins=plugins)

    full = trainer("full")
    full.train()

    first = trainer("split", StopAt(3))
    first.train()
    assert (tmp_path / "split" / "checkpoint-3").is_dir()
    second = trainer("split")
    second.model.calls = 3  # its injected inf already happened before the checkpoint
    second.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-3"))
    assert second.state.global_step == 6
    assert same(list(second.model.parameters()), list(full.model.parameters()))
    assert second.grad_scaler.state_dict() == full.grad_scaler.state_dict()
    assert second.grad_scaler.get_scale() == 32768.0
    assert second.state.skipped_steps == full.state.skipped_steps == 1


# ---- half-precision evaluation ----------------------------------------------------------


class NormNet(torch.nn.Module):
    """Linear + BatchNorm (float buffers) + an integer buffer, tied weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 4)
        self.out.weight = self.fc.weight  # tied

    def forward(self, x, labels=None):
        logits = self.out(self.bn(self.fc(x))).sum(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits.float(), labels)
        return out


@pytest.mark.parametrize("flag, dtype", [("bf16_full_eval", torch.bfloat16), ("fp16_full_eval", torch.float16)])
def test_full_eval_runs_in_half_and_leaves_fp32_weights_bitwise_untouched(tmp_path, flag, dtype):
    model = NormNet()
    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=2, **{flag: True}),
                      train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1))
    trainer.train()
    tensors = {n: (t, t.data_ptr(), t.detach().clone()) for n, t in model.state_dict(keep_vars=True).items()}
    weight_dtypes: list = []
    model.fc.register_forward_pre_hook(lambda m, i: weight_dtypes.append(m.weight.dtype))
    metrics = trainer.evaluate()
    assert weight_dtypes and set(weight_dtypes) == {dtype}  # the model really was half
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    after = model.state_dict(keep_vars=True)
    for name, (obj, ptr, value) in tensors.items():
        assert after[name] is obj, name  # same Parameter / buffer object
        assert after[name].data_ptr() == ptr, name  # the very storage, not a copy
        assert after[name].dtype == value.dtype and torch.equal(after[name].detach(), value), name
    assert model.out.weight is model.fc.weight


class NormFirst(torch.nn.Module):
    """Float inputs go straight into a LayerNorm (which autocast on the CPU does not cast)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(4)
        self.fc = torch.nn.Linear(4, 1)
        self.seen: list = []

    def forward(self, x, labels=None):
        self.seen.append((x.dtype, None if labels is None else labels.dtype))
        logits = self.fc(self.norm(x)).squeeze(-1)
        return {"logits": logits, "loss": torch.nn.functional.mse_loss(logits.float(), labels)}


def test_full_eval_casts_the_inputs_but_not_the_labels(tmp_path):
    model = NormFirst()
    trainer = Trainer(model=model, args=make_args(tmp_path, bf16_full_eval=True),
                      eval_dataset=RegressionDataset(8))
    metrics = trainer.evaluate()
    assert model.seen == [(torch.bfloat16, torch.float32)]
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    model.seen.clear()
    model(torch.randn(2, 4), torch.zeros(2))  # the input cast is gone after the evaluation
    assert model.seen == [(torch.float32, torch.float32)] and model.fc.weight.dtype == torch.float32


def test_full_eval_during_training_does_not_change_training(tmp_path):
    def final_weights(**kw):
        model = NormNet()
        trainer = Trainer(
            model=model, args=make_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1, **kw),
            train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1),
        )
        trainer.train()
        return [t.detach().clone() for t in model.state_dict().values()], trainer.state.log_history

    plain, plain_log = final_weights()
    half, half_log = final_weights(bf16_full_eval=True)
    assert same(plain, half)
    plain_eval = [e["eval_loss"] for e in plain_log if "eval_loss" in e]
    half_eval = [e["eval_loss"] for e in half_log if "eval_loss" in e]
    assert len(half_eval) == 4 and half_eval != plain_eval  # bf16 numerics, close to fp32
    assert half_eval == pytest.approx(plain_eval, rel=0.05)


def test_half_precision_restores_even_when_the_evaluation_fails():
    model = NormNet()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), half_precision(model, torch.float16):
        assert model.fc.weight.dtype == torch.float16
        assert model.bn.running_mean.dtype == torch.float16
        assert model.bn.num_batches_tracked.dtype == torch.int64  # integers are left alone
        raise RuntimeError("boom")
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


# ---- TF32 ---------------------------------------------------------------------------------


def _tf32_switches():
    return [(obj, attr, getattr(obj, attr)) for obj, attr, _ in Tf32Flags._switches(True)]


def test_tf32_is_a_no_op_on_cpu(tmp_path):
    before = _tf32_switches()
    seen = []

    class Probe:
        @hookimpl
        def on_step_end(self):
            seen.append(_tf32_switches())

    for tf32 in (True, False):
        trainer = Trainer(model=TinyRegressor(), args=make_args(tmp_path, max_steps=1, tf32=tf32),
                          train_dataset=SmallDataset(), plugins=[Probe()])
        assert trainer.plugin_manager.get_plugin("precision.tf32") is None
        trainer.train()
    assert seen == [before, before] and _tf32_switches() == before


def test_tf32_flags_are_set_then_restored():
    """The flag switching itself (torch keeps these switches even in a CPU build)."""
    before = _tf32_switches()
    flags, off = Tf32Flags(True), Tf32Flags(False)
    try:
        flags.restore()  # never applied: nothing happens
        assert _tf32_switches() == before
        flags.apply()
        on = _tf32_switches()
        assert all(value in (True, "tf32") for _, _, value in on)
        flags.apply()  # nested (an evaluation inside training)
        flags.restore()
        assert _tf32_switches() == on
        flags.restore()
        assert _tf32_switches() == before
        off.apply()
        assert all(value in (False, "ieee") for _, _, value in _tf32_switches())
        off.restore(all_levels=True)
        assert _tf32_switches() == before
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 - reading the legacy switch still works
    finally:
        for obj, attr, value in before:
            setattr(obj, attr, value)


# ---- gradient checkpointing -------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients_and_training_with_dropout(tmp_path):
    def run(checkpointing):
        model = BlockNet(dropout=0.3)
        calls: list = []
        model.blocks[1].fc1.register_forward_hook(lambda *a: calls.append(1))
        grads = {}

        class Grads:  # the gradients of the first micro-batch of each step, before the update
            @hookimpl
            def on_step_begin(self):
                grads.clear()

            @hookimpl(tryfirst=True)
            def optimizer_step(self, model):
                grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

        trainer = Trainer(
            model=model, args=make_args(tmp_path, max_steps=3, gradient_checkpointing=checkpointing),
            train_dataset=RegressionDataset(12), plugins=[Grads()],
        )
        trainer.train()
        return grads, [p.detach().clone() for p in model.parameters()], len(calls)

    grads_ck, weights_ck, calls_ck = run(True)
    grads, weights, calls = run(False)
    assert calls == 3 and calls_ck == 6  # the block's forward really ran again in backward
    assert grads.keys() == grads_ck.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_ck[name]), name
    assert same(weights, weights_ck)


def test_gradient_checkpointing_saves_activation_memory():
    """Bytes that autograd keeps for the backward pass, counted with saved_tensors_hooks."""
    def saved_bytes(model):
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(torch.randn(64, 4), torch.zeros(64))["loss"]
        loss.backward()
        return sum(seen.values())

    model = BlockNet(hidden=64, depth=6, dropout=0.1)
    plain = saved_bytes(model)
    enable_gradient_checkpointing(model)
    checkpointed = saved_bytes(model)
    assert checkpointed < 0.5 * plain


def test_checkpoint_targets_follow_the_documented_order():
    net = BlockNet()
    assert [n for n, _ in find_checkpoint_targets(net)] == ["blocks.0", "blocks.1", "blocks.2"]
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(2, 2))
    assert [n for n, _ in find_checkpoint_targets(seq)] == ["0", "3"]  # parameterless layers skipped

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Linear(2, 2)
            self.body = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 2))

    assert [n for n, _ in find_checkpoint_targets(Wrapper())] == ["body.0", "body.2"]
    assert [n for n, _ in find_checkpoint_targets(net, modules="LayerNorm")] == [
        "blocks.0.norm", "blocks.1.norm", "blocks.2.norm"]
    # nested matches: only the outermost block is checkpointed
    assert [n for n, _ in find_checkpoint_targets(net, modules=["Block", "Linear"])] == [
        "inp", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert find_checkpoint_targets(TinyRegressor()) == []


def test_checkpointed_model_keeps_state_dict_keys_and_copies(tmp_path):
    model = BlockNet(dropout=0.0)
    keys = list(model.state_dict())
    enable_gradient_checkpointing(model, {"modules": ["Block"]})
    assert list(model.state_dict()) == keys
    enable_gradient_checkpointing(model, {"modules": ["Block"]})  # idempotent
    x = torch.randn(3, 4)
    reference = model(x)["logits"]
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        forward = clone.blocks[0].forward
        assert forward.module is clone.blocks[0]  # points at the copy, not the original
        assert torch.equal(clone(x)["logits"], reference)
    disable_gradient_checkpointing(model)
    assert "forward" not in model.blocks[0].__dict__
    assert torch.equal(model(x)["logits"], reference)


def test_gradient_checkpointing_kwargs_reach_torch_checkpoint(tmp_path):
    model = BlockNet(dropout=0.0)
    Trainer(model=model, args=make_args(tmp_path, gradient_checkpointing=True,
                                        gradient_checkpointing_kwargs={"use_reentrant": True}),
            train_dataset=RegressionDataset(8))
    assert model.blocks[0].forward.kwargs == {"use_reentrant": True}
    model2 = BlockNet()
    Trainer(model=model2, args=make_args(tmp_path, gradient_checkpointing=True), train_dataset=RegressionDataset(8))
    assert model2.blocks[0].forward.kwargs == {"use_reentrant": False}


def test_every_n_layers_and_offload_for_plain_modules():
    model = BlockNet(depth=5, dropout=0.0)
    names = enable_gradient_checkpointing(model, {"every_n_layers": 2, "offload": True})
    assert names == ["blocks.0", "blocks.2", "blocks.4"]
    assert ["forward" in b.__dict__ for b in model.blocks] == [True, False, True, False, True]
    x, y = torch.randn(6, 4), torch.randn(6)
    model(x, y)["loss"].backward()
    checkpointed = {n: p.grad.clone() for n, p in model.named_parameters()}
    disable_gradient_checkpointing(model)
    model.zero_grad()
    model(x, y)["loss"].backward()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, checkpointed[n]), n


@pytest.mark.parametrize("kwargs, message", [
    (None, "nothing to checkpoint in TinyRegressor"),
    ({"modules": ["Block"]}, "matches no submodule of TinyRegressor; its module classes are: Linear, TinyRegressor"),
    ({"reentrant": False}, "unknown keys ['reentrant']"),
    ({"modules": [1]}, "give a class name or a list of class names"),
    ({"every_n_layers": 0}, "['every_n_layers']=0 is invalid"),
])
def test_gradient_checkpointing_problems_are_errors_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ArgumentError) as info:
        Trainer(model=TinyRegressor(), args=make_args(tmp_path, gradient_checkpointing=True,
                                                      gradient_checkpointing_kwargs=kwargs),
                train_dataset=RegressionDataset(8))
    assert message in str(info.value)


def test_hugging_face_model_uses_its_own_gradient_checkpointing(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                     resid_pdrop=0.2, embd_pdrop=0.0, attn_pdrop=0.0)

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.arange(i, i + 8) % 50
            return {"input_ids": ids, "labels": ids}

    def run(checkpointing):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=2, gradient_checkpointing=checkpointing),
                          train_dataset=Tokens())
        flag = getattr(model, "is_activation_checkpointing", None)
        if flag is None:
            flag = model.is_gradient_checkpointing
        assert flag == checkpointing
        trainer.train()
        return [p.detach().clone() for p in model.parameters()]

    assert same(run(True), run(False))


# ---- torch.compile ------------------------------------------------------------------------


def test_torch_compile_wraps_once_and_trains_like_eager(tmp_path):
    def run(**kw):
        model = BlockNet(dropout=0.0)
        trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=3, **kw), train_dataset=RegressionDataset(12))
        wrapped = trainer.model_wrapped
        trainer.train()
        return trainer, wrapped, [p.detach().clone() for p in model.parameters()]

    trainer, wrapped, compiled_weights = run(torch_compile_backend="eager", save_strategy="steps", save_steps=3)
    assert trainer.args.torch_compile is True
    assert type(wrapped).__name__ == "OptimizedModule" and wrapped._orig_mod is trainer.model
    assert trainer.model_wrapped is wrapped
    saved = load_file(str(tmp_path / "out" / "checkpoint-3" / "model.safetensors"))
    assert set(saved) == set(BlockNet(dropout=0.0).state_dict())  # the plain module's names
    _, _, eager_weights = run(overwrite_output_dir=True)
    for a, b in zip(compiled_weights, eager_weights, strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_with_checkpointing_and_bf16(tmp_path):
    model = BlockNet(dropout=0.1)
    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=2, torch_compile_backend="aot_eager",
                                                  gradient_checkpointing=True, bf16=True),
                      train_dataset=RegressionDataset(8))
    out = trainer.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))


@pytest.mark.parametrize("kw, message", [
    ({"torch_compile_backend": "no_such_backend"}, "torch_compile_backend='no_such_backend' is not a torch.compile backend"),
    ({"torch_compile_backend": "eager", "torch_compile_mode": "max-autotune"}, "only applies to the 'inductor' backend"),
])
def test_torch_compile_problems_are_errors_at_construction(tmp_path, kw, message):
    with pytest.raises(ArgumentError, match="torch_compile") as info:
        Trainer(model=TinyRegressor(), args=make_args(tmp_path, **kw), train_dataset=RegressionDataset(8))
    assert message in str(info.value)
