"""The loop: hook order, HF step arithmetic, logged values, schedules, reproducibility, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hooktrain import ArgumentError, Trainer, TrainingArguments, hookimpl, hookspec
from hooktrain.core import hookspecs
from hooktrain.core.data import iterate_batches
from hooktrain.core.errors import PluginLoadError
from hooktrain.core.grads import grad_clearer
from hooktrain.core.loop import STEP_HOOKS
from hooktrain.core.losses import LossWindow
from hooktrain.core.manager import HookCallOrderError, PluginManager, UnmarkedHookWarning
from hooktrain.plugins.schedulers import lr_lambda


class Items(torch.utils.data.Dataset):
    """``n`` items of a learnable 4-class problem, with the item index for order checks."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :4]).argmax(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i], "index": i}


class Net(torch.nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 4)
        )

    def forward(self, x, labels=None, index=None):
        logits = self.body(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


class Recorder:
    """Records every event (and each micro-batch) in order."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.micro: list[int] = []
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.windows: list[int] = []  # micro-batches per optimizer step

    @hookimpl
    def on_train_begin(self, state):
        self.calls.append(("on_train_begin", state.global_step))

    @hookimpl
    def on_epoch_begin(self, state):
        self.calls.append(("on_epoch_begin", state.global_step))

    @hookimpl
    def on_step_begin(self, trainer, state):
        self.calls.append(("on_step_begin", state.global_step))
        self.windows.append(0)
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    @hookimpl
    def on_step_end(self, state):
        self.calls.append(("on_step_end", state.global_step))

    @hookimpl
    def on_log(self, state, logs):
        self.calls.append(("on_log", state.global_step, tuple(sorted(logs))))

    @hookimpl
    def on_evaluate(self, state, metrics):
        self.calls.append(("on_evaluate", state.global_step))

    @hookimpl
    def on_save(self, state, checkpoint_dir):
        self.calls.append(("on_save", state.global_step))

    @hookimpl
    def on_epoch_end(self, state):
        self.calls.append(("on_epoch_end", state.global_step))

    @hookimpl
    def on_train_end(self, state, status):
        self.calls.append(("on_train_end", state.global_step, status))

    @hookimpl(wrapper=True)
    def training_step(self, batch):
        self.micro.append(len(batch["x"]))
        self.windows[-1] += 1
        loss = yield
        self.losses.append(float(loss.detach()))
        return loss

    def names(self):
        return [c[0] for c in self.calls]


def make(tmp_path, n=10, plugins=(), eval_ds=None, model=None, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, report_to="none",
        save_strategy="no", disable_tqdm=True, learning_rate=1e-2, logging_steps=500,
    )
    args = TrainingArguments(**{**defaults, **kw})
    return Trainer(model or Net(), args, train_dataset=Items(n), eval_dataset=eval_ds, plugins=list(plugins))


# ---- hook order ----------------------------------------------------------------------------


def test_event_order_plain_run(tmp_path):
    rec = Recorder()
    make(tmp_path, n=3, plugins=[rec], num_train_epochs=1).train()
    assert rec.names() == [
        "on_train_begin", "on_epoch_begin",
        "on_step_begin", "on_step_end", "on_step_begin", "on_step_end", "on_step_begin", "on_step_end",
        "on_epoch_end", "on_log", "on_train_end",
    ]
    assert rec.calls[-1] == ("on_train_end", 3, "completed")
    assert rec.micro == [1, 1, 1]


def test_event_order_with_accumulation_eval_and_logging(tmp_path):
    """HF's exp1: 10 batches, GA 3 → 4 steps/epoch (last window partial), 1.5 epochs → 6 steps."""
    rec = Recorder()
    trainer = make(
        tmp_path, n=10, plugins=[rec], gradient_accumulation_steps=3, num_train_epochs=1.5,
        logging_steps=2, eval_strategy="steps", eval_steps=3, eval_ds=Items(4),
    )
    trainer.train()
    assert trainer.state.max_steps == 6
    assert rec.windows == [3, 3, 3, 1, 3, 3]  # the last window of epoch 1 holds the one remaining batch
    steps = [c for c in rec.calls if c[0] in ("on_log", "on_evaluate")]
    assert [(c[0], c[1]) for c in steps] == [
        ("on_log", 2), ("on_log", 3), ("on_evaluate", 3), ("on_log", 4),
        ("on_log", 6), ("on_log", 6), ("on_evaluate", 6), ("on_log", 6),
    ]
    epochs = [e["epoch"] for e in trainer.state.log_history if "loss" in e]
    assert epochs == [0.6, 1.0, 1.6]  # HF: epoch counted in micro-batches
    assert rec.names().count("on_epoch_begin") == 2 and rec.names().count("on_epoch_end") == 2


@pytest.mark.parametrize("kw,expected", [
    ({"eval_strategy": "steps", "eval_steps": 3}, [3, 6, 8]),  # HF's forced evaluation of the last step
    ({"eval_strategy": "steps", "eval_steps": 2, "eval_delay": 5}, [6, 8]),
    ({"eval_strategy": "steps", "eval_steps": 4, "eval_on_start": True}, [0, 4, 8]),
    ({"eval_strategy": "steps", "eval_steps": 0.25}, [2, 4, 6, 8]),  # a ratio of max_steps, rounded up
    ({"eval_strategy": "epoch"}, [2, 4, 6, 8]),
    ({"eval_strategy": "epoch", "eval_delay": 3}, [6, 8]),  # epochs, for the epoch strategy
    ({"eval_strategy": "no", "eval_on_start": True}, [0]),  # as in HF: a sanity check of any run
])
def test_evaluation_cadence(tmp_path, kw, expected):
    rec = Recorder()
    make(tmp_path, n=4, plugins=[rec], per_device_train_batch_size=2, num_train_epochs=4,
         eval_ds=Items(3), **kw).train()
    assert [c[1] for c in rec.calls if c[0] == "on_evaluate"] == expected


def test_eval_batches_use_the_eval_batch_size(tmp_path):
    sizes = []

    class Sizes:
        @hookimpl(wrapper=True)
        def evaluation_loop(self, dataloader):
            sizes.extend(len(batch["x"]) for batch in dataloader)
            return (yield)

    trainer = make(tmp_path, n=4, plugins=[Sizes()], eval_ds=Items(7), per_device_eval_batch_size=3)
    assert trainer.evaluate()["eval_loss"] > 0 and sizes == [3, 3, 1]


def test_full_determinism_turns_on_deterministic_kernels(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        runs = []
        for i in range(2):
            torch.manual_seed(0)  # the model's initial weights
            trainer = make(tmp_path / str(i), n=8, full_determinism=True, num_train_epochs=1, seed=7,
                           model=Net(dropout=0.5))
            assert torch.are_deterministic_algorithms_enabled()
            trainer.train()
            runs.append([p.detach().clone() for p in trainer.model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    finally:
        torch.use_deterministic_algorithms(before)


def test_event_order_with_eval_and_save_every_step(tmp_path):
    rec = Recorder()
    make(tmp_path, n=4, plugins=[rec], per_device_train_batch_size=2, num_train_epochs=1, logging_steps=1,
         eval_strategy="steps", eval_steps=1, eval_ds=Items(2), save_strategy="steps", save_steps=1,
         save_async=False).train()  # with save_async, on_save follows at a later step boundary
    per_step = ["on_step_begin", "on_step_end", "on_log", "on_log", "on_evaluate", "on_save"]
    assert rec.names() == [
        "on_train_begin", "on_epoch_begin", *per_step, *per_step, "on_epoch_end", "on_log", "on_train_end",
    ]
    logs = [c[2] for c in rec.calls if c[0] == "on_log"]
    assert "loss" in logs[0] and "eval_loss" in logs[1] and "train_loss" in logs[-1]  # train, eval, summary


def test_should_stop_ends_the_run_early(tmp_path):
    class StopAt3:
        @hookimpl
        def should_stop(self, state):
            return "enough" if state.global_step == 3 else None

    rec = Recorder()
    trainer = make(tmp_path, n=10, plugins=[rec, StopAt3()], num_train_epochs=2)
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.state.stop_reason == "enough"
    assert rec.calls[-1] == ("on_train_end", 3, "stopped")
    assert {"stop_reason": "enough", "epoch": 0.3, "step": 3} in trainer.state.log_history


def test_exception_fires_on_exception_then_failed_train_end_and_reraises(tmp_path):
    seen = []

    class Boom:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == 2:
                raise RuntimeError("boom")

        @hookimpl
        def on_exception(self, error):
            seen.append(("exception", str(error)))

        @hookimpl
        def on_train_end(self, status):
            seen.append(("end", status))

    with pytest.raises(RuntimeError, match="boom"):
        make(tmp_path, plugins=[Boom()]).train()
    assert seen == [("exception", "boom"), ("end", "failed")]


def test_keyboard_interrupt_ends_the_run_cleanly(tmp_path):
    ends = []

    class CtrlC:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == 2:
                raise KeyboardInterrupt

        @hookimpl
        def on_train_end(self, status):
            ends.append(status)

    trainer = make(tmp_path, plugins=[CtrlC()])
    result = trainer.train()
    assert ends == ["stopped"] and result.global_step == 2
    assert "interrupted" in trainer.state.stop_reason


def test_on_log_gets_a_fresh_dict_per_plugin(tmp_path):
    seen = []

    class Mutator:
        @hookimpl
        def on_log(self, logs):
            logs["polluted"] = 1.0

    class Reader:
        @hookimpl
        def on_log(self, logs):
            seen.append(dict(logs))

    trainer = make(tmp_path, n=4, plugins=[Reader(), Mutator()], logging_steps=2)
    trainer.train()
    assert seen and all("polluted" not in logs for logs in seen)
    assert all("polluted" not in e for e in trainer.state.log_history)


# ---- step arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, bs, ga, epochs, max_steps, drop_last, expected_steps, expected_windows",
    [
        (10, 1, 3, 1.5, -1, False, 6, [3, 3, 3, 1, 3, 3]),
        (10, 2, 1, 1.0, -1, False, 5, [1] * 5),
        (11, 2, 1, 1.0, -1, False, 6, [1] * 6),
        (11, 2, 1, 1.0, -1, True, 5, [1] * 5),
        (8, 2, 2, 2.0, -1, False, 4, [2, 2, 2, 2]),
        (8, 1, 3, 1.0, -1, False, 3, [3, 3, 2]),
        (8, 1, 1, 3.0, 5, False, 5, [1] * 5),  # max_steps overrides epochs
        (8, 1, 2, 1.0, 7, False, 7, [2, 2, 2, 2, 2, 2, 2]),  # spans 2 epochs
        (6, 1, 4, 0.5, -1, False, 1, [4]),  # ceil(0.5 * 2)
    ],
)
def test_step_accounting(tmp_path, n, bs, ga, epochs, max_steps, drop_last, expected_steps, expected_windows):
    rec = Recorder()
    trainer = make(
        tmp_path, n=n, plugins=[rec], per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        num_train_epochs=epochs, max_steps=max_steps, dataloader_drop_last=drop_last,
    )
    result = trainer.train()
    assert result.global_step == trainer.state.max_steps == expected_steps
    assert rec.windows == expected_windows


@pytest.mark.parametrize(
    "logging_steps, first, expected",
    [
        (3, False, [3, 6, 9]),
        (3, True, [1, 3, 6, 9]),
        (0.25, False, [3, 6, 9]),  # ceil(10 * 0.25) = 3
        (0.5, False, [5, 10]),
        (1, False, list(range(1, 11))),
    ],
)
def test_logging_cadence(tmp_path, logging_steps, first, expected):
    trainer = make(tmp_path, n=10, num_train_epochs=1, logging_steps=logging_steps, logging_first_step=first)
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == expected


def test_logged_loss_is_the_mean_step_loss_of_the_window_and_lr_is_the_one_used(tmp_path):
    rec = Recorder()
    trainer = make(
        tmp_path, n=12, plugins=[rec], gradient_accumulation_steps=2, logging_steps=2,
        warmup_steps=2, num_train_epochs=1,
    )
    trainer.train()
    step_losses = [sum(rec.losses[i : i + 2]) / 2 for i in range(0, len(rec.losses), 2)]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    for entry in logs:
        s = entry["step"]
        assert entry["loss"] == pytest.approx((step_losses[s - 2] + step_losses[s - 1]) / 2, rel=1e-5)
        assert entry["learning_rate"] == pytest.approx(rec.lrs[s - 1])
        assert entry["grad_norm"] > 0
    assert logs[0]["learning_rate"] == pytest.approx(0.005)  # step 2 of warm-up 2: 1/2 × lr
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(sum(step_losses) / 6, rel=1e-5)


def test_grad_norm_is_pre_clip(tmp_path):
    trainer = make(tmp_path, n=4, max_grad_norm=1e-6, logging_steps=1, learning_rate=0.0, num_train_epochs=1)
    trainer.train()
    assert all(e["grad_norm"] > 1e-3 for e in trainer.state.log_history if "grad_norm" in e)


def test_nonfinite_losses_are_counted_and_filtered(tmp_path):
    class NanOnStep3:
        def __init__(self):
            self.step = 0

        @hookimpl(wrapper=True)
        def training_step(self, trainer):
            loss = yield
            # the value is NaN, the gradient stays finite (so the weights stay finite)
            return loss + (float("nan") - loss.detach()) if trainer.state.global_step == 2 else loss

    def run(filter_):
        trainer = make(tmp_path, n=4, plugins=[NanOnStep3()], logging_steps=4, learning_rate=0.0,
                       logging_nan_inf_filter=filter_, num_train_epochs=1, max_grad_norm=0.0)
        trainer.train()
        return [e for e in trainer.state.log_history if "loss" in e][0]

    kept = run(True)
    assert math.isfinite(kept["loss"]) and kept["nonfinite_steps"] == 1
    raw = run(False)
    assert math.isnan(raw["loss"]) and raw["nonfinite_steps"] == 1


# ---- schedules ------------------------------------------------------------------------------

HF_REFERENCE = {  # transformers' get_scheduler, N=10, W=2, base lr 1.0: the LR used at steps 0..9
    "linear": ({}, None, [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]),
    "cosine": ({}, None, [0.0, 0.5, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381]),
    "cosine_with_restarts": (
        {"num_cycles": 2}, None, [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0, 0.8536, 0.5, 0.1464]
    ),
    "polynomial": ({}, 0.1, [0.0, 0.5, 1.0, 0.7891, 0.6062, 0.4516, 0.325, 0.2266, 0.1562, 0.1141]),
    "inverse_sqrt": ({}, None, [0.0, 0.5, 1.0, 0.8165, 0.7071, 0.6325, 0.5774, 0.5345, 0.5, 0.4714]),
    "constant_with_warmup": ({}, None, [0.0, 0.5] + [1.0] * 8),
    "constant": ({}, None, [1.0] * 10),
}


BASE_LR = 0.02  # not 1.0: an absolute learning_rate_end and a factor of the base LR must differ


@pytest.mark.parametrize("name", sorted(HF_REFERENCE))
def test_schedule_matches_hf_reference(tmp_path, name):
    """The LR used at each step of a real run, with HF's reference factors (§4) times the base LR."""
    kwargs, lr_end, expected = HF_REFERENCE[name]
    rec = Recorder()
    make(
        tmp_path, n=10, plugins=[rec], learning_rate=BASE_LR, lr_scheduler_type=name, warmup_steps=2,
        lr_scheduler_kwargs=kwargs or None, power=2.0 if name == "polynomial" else 1.0,
        learning_rate_end=None if lr_end is None else lr_end * BASE_LR, num_train_epochs=1, optim="sgd",
    ).train()
    assert [lr / BASE_LR for lr in rec.lrs] == pytest.approx(expected, abs=1e-4)


def test_cosine_learning_rate_end_is_the_floor(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="cosine", learning_rate=BASE_LR,
                             learning_rate_end=0.1 * BASE_LR, warmup_steps=0)
    factor = lr_lambda(args, 10, BASE_LR)
    assert factor(10) == pytest.approx(0.1) and factor(0) == pytest.approx(1.0)


def test_warmup_ratio_rounds_up(tmp_path):
    rec = Recorder()
    make(tmp_path, n=10, plugins=[rec], learning_rate=1.0, warmup_ratio=0.25, num_train_epochs=1, optim="sgd").train()
    # ceil(10 * 0.25) = 3 warm-up steps: 0, 1/3, 2/3, then decay from 1.0
    assert rec.lrs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


# ---- reproducibility and learning ------------------------------------------------------------


def test_same_seed_gives_bit_identical_weights(tmp_path):
    def run(seed):
        torch.manual_seed(123)  # model init is the user's; the run's randomness is the seed's
        trainer = make(tmp_path, n=24, model=Net(dropout=0.3), per_device_train_batch_size=4, seed=seed,
                       num_train_epochs=2, gradient_accumulation_steps=2)
        trainer.train()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_data_order_depends_only_on_seed_and_epoch(tmp_path):
    orders = []

    class Order:
        @hookimpl(tryfirst=True)
        def training_step(self, batch):
            orders[-1].extend(batch["index"].tolist())

    for data_seed in (1, 1, 2):
        orders.append([])
        make(tmp_path, n=8, plugins=[Order()], per_device_train_batch_size=2, data_seed=data_seed,
             num_train_epochs=2).train()
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0][:8]) == list(range(8)) and orders[0][:8] != orders[0][8:]


def test_model_learns_a_real_task(tmp_path):
    def acc(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=8, learning_rate=1e-2,
        report_to="none", save_strategy="no", disable_tqdm=True, eval_strategy="epoch", logging_strategy="epoch",
    )
    trainer = Trainer(Net(), args, train_dataset=Items(512), eval_dataset=Items(256, seed=1), compute_metrics=acc)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert after["eval_accuracy"] > 0.9
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0]


def test_evaluate_returns_prefixed_metrics(tmp_path):
    def metrics(p):
        assert p.predictions.shape == (6, 4) and p.label_ids.shape == (6,)
        predictions, labels = p  # also unpacks as a tuple
        return {"n": float(len(labels))}

    trainer = Trainer(
        Net(), TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=4),
        train_dataset=Items(4), eval_dataset=Items(6), compute_metrics=metrics,
    )
    out = trainer.evaluate()
    assert out["eval_n"] == 6.0 and "eval_loss" in out and "eval_runtime" in out


def test_evaluation_gathers_batches_padded_to_different_lengths(tmp_path):
    """Dynamic padding: each batch as long as its longest sequence; the outputs are padded with -100."""
    lengths = [2, 2, 5, 5, 3]

    def collate(items):
        width = max(len(i) for i in items)
        labels = torch.full((len(items), width), -100)
        for row, item in enumerate(items):
            labels[row, : len(item)] = item
        return {"labels": labels}

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def forward(self, labels):
            logits = self.w.expand(*labels.shape, 3)
            return {"loss": logits.sum() * 0, "logits": logits}

    seen = {}

    def metrics(p):
        seen["shapes"] = (p.predictions.shape, p.label_ids.shape)
        seen["labels"] = p.label_ids
        return {}

    data = [torch.arange(n) % 3 for n in lengths]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=2)
    Trainer(Tagger(), args, train_dataset=data, eval_dataset=data, data_collator=collate,
            compute_metrics=metrics).evaluate()
    assert seen["shapes"] == ((5, 5, 3), (5, 5))
    assert seen["labels"][0].tolist() == [0, 1, -100, -100, -100]  # padded by its batch, then by -100
    assert seen["labels"][4].tolist() == [0, 1, 2, -100, -100]


def test_compute_loss_replaces_the_model_contract(tmp_path):
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 1)

        def forward(self, x):
            return self.lin(x).squeeze(-1)

    def loss_fn(model, batch):
        return torch.nn.functional.mse_loss(model(batch["x"]), batch["labels"].float())

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=3)
    result = Trainer(Plain(), args, train_dataset=Items(8), compute_loss=loss_fn).train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)


# ---- construction errors ---------------------------------------------------------------------


def test_construction_lists_every_problem(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="epoch", report_to=["tensorbord"])
    with pytest.raises(ArgumentError) as info:
        Trainer(Net(), args, train_dataset=Items(4))
    text = str(info.value)
    assert "eval_dataset" in text and "'tensorbord'" in text and "Did you mean 'tensorboard'" in text


def test_a_plugin_class_instead_of_an_instance_is_a_clear_error(tmp_path):
    with pytest.raises(PluginLoadError, match=r"forgot \(\)"):
        make(tmp_path, plugins=[Recorder])


def test_misspelt_hook_is_an_error(tmp_path):
    class Typo:
        @hookimpl
        def on_step_ends(self):
            pass

    with pytest.raises(Exception, match="on_step_ends"):
        make(tmp_path, plugins=[Typo()])


def test_duplicate_registry_name_names_both_providers(tmp_path):
    class Mine:
        name = "my-reporters"

        @hookimpl
        def register_reporters(self, register):
            register("tensorboard", lambda args: None)

    with pytest.raises(Exception, match=r"'tensorboard' is registered twice.*reporters.tensorboard.*my-reporters"):
        make(tmp_path, plugins=[Mine()])


def test_disable_plugins_blocks_a_builtin(tmp_path):
    trainer = make(tmp_path, disable_plugins=["progress"])
    assert trainer.plugin_manager.get_plugin("progress") is None


def test_an_essential_plugin_cannot_be_disabled(tmp_path):
    with pytest.raises(ArgumentError, match=r"disable_plugins=\['progress', 'training'\].*'training' is essential "
                       r"\(the default training step"):
        make(tmp_path, disable_plugins=["progress", "training"])


def test_a_method_named_like_a_hook_without_the_marker_warns(tmp_path):
    class Forgetful:
        name = "forgetful"

        def on_step_end(self, state):  # no @hookimpl: pluggy would silently never call it
            pass

        @hookimpl
        def on_log(self, logs):
            pass

        def _on_evaluate(self):  # private: not a hook name, no warning
            pass

    with pytest.warns(UnmarkedHookWarning) as caught:
        make(tmp_path, plugins=[Forgetful()])
    messages = [str(w.message) for w in caught if issubclass(w.category, UnmarkedHookWarning)]
    assert len(messages) == 1
    assert "plugin 'forgetful'" in messages[0] and "'on_step_end'" in messages[0]


def _specs_with(**replaced):
    """hooktrain's hook specifications with some replaced (a module, as pluggy reads them)."""
    import types

    module = types.ModuleType("changed_hookspecs")
    for name in hookspecs.__all__:
        setattr(module, name, replaced.get(name, getattr(hookspecs, name)))
    return module


def test_a_spec_whose_argument_order_differs_from_the_call_site_fails_when_the_run_starts(tmp_path):
    @hookspec(firstresult=True)
    def should_save(trainer, args, state, trigger, metrics):  # two parameters swapped
        """Reordered."""

    recorder = Recorder()
    trainer = make(tmp_path, plugins=[recorder], max_steps=2)
    changed = PluginManager(specs=[_specs_with(should_save=should_save)])
    changed.load_builtins()
    changed.register(recorder, name="recorder")
    trainer.plugin_manager = changed  # the same plugins, against the changed specifications
    with pytest.raises(HookCallOrderError, match=r"should_save: called with \(trainer, args, state, metrics, "
                       r"trigger\), specified as \(trainer, args, state, trigger, metrics\)"):
        trainer.train()
    assert recorder.calls == []  # caught before the run began: no event fired
    assert set(STEP_HOOKS) <= set(hookspecs.__all__)


def test_a_plugin_registered_during_the_run_takes_part_from_then_on(tmp_path):
    seen = []

    class Late:
        @hookimpl
        def on_step_begin(self, state):
            seen.append(("begin", state.global_step + 1))

        @hookimpl
        def on_step_end(self, trainer, state):
            seen.append(("end", state.global_step))
            if state.global_step == 4:
                trainer.plugin_manager.unregister(self)

    class Registrar:
        @hookimpl
        def on_train_begin(self, trainer):
            trainer.plugin_manager.register(Late(), name="late.1")

        @hookimpl
        def on_step_end(self, trainer, state):
            if state.global_step == 5:
                trainer.plugin_manager.register(Late(), name="late.2")

    make(tmp_path, plugins=[Registrar()], max_steps=7).train()
    steps = [("begin", s) for s in (1, 2, 3, 4)] + [("end", s) for s in (1, 2, 3, 4)]
    steps += [("begin", s) for s in (6, 7)] + [("end", s) for s in (6, 7)]
    assert sorted(seen) == sorted(steps)
    assert seen[:2] == [("begin", 1), ("end", 1)]


def test_label_smoothing_raises_the_loss_of_a_confident_model(tmp_path):
    def first_loss(eps):
        torch.manual_seed(0)
        trainer = make(tmp_path, n=8, label_smoothing_factor=eps, max_steps=1, logging_steps=1,
                       per_device_train_batch_size=8, learning_rate=0.0)
        trainer.train()
        return trainer.state.log_history[0]["loss"]

    plain, smoothed = first_loss(0.0), first_loss(0.2)
    x, y = Items(8).x, Items(8).y
    torch.manual_seed(0)
    logits = Net().body(x)
    assert plain == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    expected = float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.2))
    assert smoothed == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_needs_logits_and_runs_one_forward_per_step(tmp_path):
    def loss_only(model, batch):
        return model(batch["x"], batch["labels"])["loss"]

    with pytest.raises(ArgumentError, match="apply the smoothing inside compute_loss"):
        Trainer(Net(), TrainingArguments(output_dir=str(tmp_path), report_to="none", label_smoothing_factor=0.1),
                train_dataset=Items(4), compute_loss=loss_only)

    class NoLogits(Net):
        calls = 0

        def forward(self, x, labels=None, index=None):
            NoLogits.calls += 1
            return {"loss": super().forward(x, labels)["loss"]}

    with pytest.raises(ValueError, match="needs the model's logits"):
        make(tmp_path, n=4, model=NoLogits(), label_smoothing_factor=0.1, max_steps=1).train()
    assert NoLogits.calls == 1


def test_training_puts_the_model_in_train_mode(tmp_path):
    modes = []

    class Mode:
        @hookimpl
        def on_step_begin(self, trainer):
            modes.append(trainer.model.training)

    model = Net(dropout=0.5).eval()  # as from_pretrained hands it over
    make(tmp_path, n=4, plugins=[Mode()], model=model, max_steps=2, eval_strategy="steps", eval_steps=1,
         eval_ds=Items(2)).train()
    assert modes == [True, True]  # also after the evaluation of step 1


@pytest.mark.parametrize("logging_steps", [1, 4])  # 4: the last NaN falls after the last log
def test_train_loss_skips_a_wholly_nonfinite_window_and_counts_every_nonfinite_step(tmp_path, logging_steps):
    class NanOn:
        losses: list[float] = []

        @hookimpl(wrapper=True)
        def training_step(self, trainer):
            loss = yield
            if trainer.state.global_step in (0, 5):
                loss = loss + (float("nan") - loss.detach())
            self.losses.append(float(loss.detach()))
            return loss

    rec = NanOn()
    rec.losses = []
    trainer = make(tmp_path, n=6, plugins=[rec], logging_steps=logging_steps, learning_rate=0.0,
                   num_train_epochs=1, max_grad_norm=0.0)
    result = trainer.train()
    finite = [v for v in rec.losses if math.isfinite(v)]  # with logging_steps=1 step 1's window is all NaN
    assert len(finite) == 4 and result.training_loss == pytest.approx(sum(finite) / 4, rel=1e-6)
    assert trainer.state.nonfinite_steps == 2


def test_resume_with_a_loader_of_its_own_reads_past_the_seen_batches(tmp_path):
    class OwnLoader(Trainer):
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_dataset, batch_size=2)  # not resumable

    class Seen:
        def __init__(self):
            self.indices = []

        @hookimpl
        def training_step(self, batch):
            self.indices.extend(int(i) for i in batch["index"])

    def run(seen, **kw):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=4,
                                 per_device_train_batch_size=2, save_strategy="steps", save_steps=2, **kw)
        return OwnLoader(Net(), args, train_dataset=Items(8), plugins=[seen])

    whole = Seen()
    run(whole).train()
    resumed = Seen()
    run(resumed, overwrite_output_dir=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert whole.indices == list(range(8)) and resumed.indices == [4, 5, 6, 7]


def test_resume_mid_epoch_does_not_read_the_skipped_samples(tmp_path):
    class Counted(Items):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    def trainer(**kw):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=5,
                                 per_device_train_batch_size=2, save_strategy="steps", save_steps=3, **kw)
        return Trainer(Net(), args, train_dataset=Counted(20))

    trainer().train()
    Counted.reads = 0
    trainer(overwrite_output_dir=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert Counted.reads == 2 * 2  # steps 4 and 5 only: the sampler starts after the 6 seen samples


def test_iterable_dataset_runs_max_steps_across_passes(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            data = Items(5)
            return iter([data[i] for i in range(5)])

    class Epochs:
        seen: list[float] = []

        @hookimpl
        def on_step_end(self, state):
            self.seen.append(state.epoch)

    rec, epochs = Recorder(), Epochs()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no", disable_tqdm=True,
                             max_steps=4, gradient_accumulation_steps=2, per_device_train_batch_size=1)
    result = Trainer(Net(), args, train_dataset=Stream(), plugins=[rec, epochs]).train()
    # 5 batches per pass: windows 2, 2, then the pass ends with a partial window of 1, then 2
    assert result.global_step == 4 and rec.windows == [2, 2, 1, 2]
    # as HF without a length: micro-batches of the pass / (max_steps × GA), plus the passes done
    assert epochs.seen == [0.25, 0.5, 0.625, 1.25]


def test_iterable_dataset_needs_max_steps(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(ArgumentError, match="max_steps"):
        Trainer(Net(), TrainingArguments(output_dir=str(tmp_path), report_to="none"), train_dataset=Stream())


# ---- the per-step shortcuts: the same results as the torch calls they replace ----------------


@pytest.mark.parametrize("filter_nonfinite", [True, False])
def test_loss_window_reading_each_step_equals_keeping_tensors(filter_nonfinite, monkeypatch):
    monkeypatch.setattr(LossWindow, "COMPACT_EVERY", 3)  # the kept tensors get compacted too
    values = [1.0, 2.5, float("inf"), 4.0, -1.0, float("nan"), 0.5]
    read, kept = LossWindow(filter_nonfinite, read_each_step=True), LossWindow(filter_nonfinite, read_each_step=False)
    windows = []
    for window in (values[:5], values[5:], []):
        for v in window:
            read.add(torch.tensor(v, requires_grad=True) * 1)
            kept.add(torch.tensor(v, requires_grad=True) * 1)
        windows.append((read.close(), kept.close()))
    for got_read, got_kept in windows:
        assert got_read[1:] == got_kept[1:]
        assert got_read[0] == pytest.approx(got_kept[0], nan_ok=True)
    (first, _), (second, _), (empty, _) = windows
    assert first[1:] == (5, 1) and second[1:] == (2, 1)
    if filter_nonfinite:
        assert first[0] == pytest.approx((1.0 + 2.5 + 4.0 - 1.0) / 4) and second[0] == pytest.approx(0.5)
        assert read.mean_over_run() == pytest.approx((1.0 + 2.5 + 4.0 - 1.0 + 0.5) / 5)  # the finite steps
    else:
        assert math.isinf(first[0]) and math.isnan(second[0]) and math.isnan(read.mean_over_run())
    assert math.isnan(empty[0]) and empty[1:] == (0, 0)


class GetItems(Items):
    """A dataset with torch's batched ``__getitems__`` (which DataLoader prefers)."""

    def __init__(self, n):
        super().__init__(n)
        self.calls = 0

    def __getitems__(self, indices):
        self.calls += 1
        return [{**self[i], "batched": 1} for i in indices]


def _same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("dataset", [Items(11), GetItems(11)], ids=["getitem", "getitems"])
def test_iterate_batches_yields_what_iterating_the_dataloader_yields(tmp_path, dataset):
    trainer = Trainer(Net(), TrainingArguments(output_dir=str(tmp_path), report_to="none",  # keep "batched"
                                               per_device_train_batch_size=3, remove_unused_columns=False),
                      train_dataset=dataset)
    loader = trainer.get_train_dataloader()
    for epoch, skip in ((0, 0), (1, 2)):
        loader.batch_sampler.set_epoch(epoch)
        loader.batch_sampler.skip_batches(skip)
        expected = list(loader)
        loader.batch_sampler.skip_batches(skip)
        got = list(iterate_batches(loader))
        _same_batches(got, expected)
        assert len(got) == 4 - skip
    if isinstance(dataset, GetItems):
        assert "batched" in got[0]


def test_iterate_batches_leaves_other_loaders_to_torch():
    class MyLoader(torch.utils.data.DataLoader):
        pass

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([Items(1)[0]])

    data = Items(6)
    subclass = MyLoader(data, batch_size=4)
    stream = torch.utils.data.DataLoader(Stream(), batch_size=1)
    unbatched = torch.utils.data.DataLoader(data, batch_size=None)
    for loader in (subclass, stream, unbatched):
        assert isinstance(iterate_batches(loader), torch.utils.data.dataloader._BaseDataLoaderIter)
    _same_batches(list(iterate_batches(subclass)), list(subclass))


def test_grad_clearer_clears_the_model_and_the_optimizer_and_respects_an_own_zero_grad():
    model = Net()
    outside = torch.nn.Parameter(torch.ones(2))  # optimized, but not a parameter of the model
    # body.0 is trainable but not optimized: its gradient must not pile up either (HF: model.zero_grad)
    opt = torch.optim.AdamW([{"params": model.body[3].parameters()}, {"params": [outside]}])
    (model(torch.randn(2, 8), torch.tensor([0, 1]))["loss"] + outside.sum()).backward()
    grad_clearer(opt, model)()
    assert all(p.grad is None for p in [*model.parameters(), outside])

    class Own(torch.optim.SGD):
        def zero_grad(self, set_to_none=True):
            self.calls = getattr(self, "calls", []) + [set_to_none]

    own = Own(model.body[3].parameters(), lr=0.1)
    model(torch.randn(2, 8), torch.tensor([0, 1]))["loss"].backward()
    grad_clearer(own, model)()
    assert own.calls == [True] and all(p.grad is None for p in model.parameters())
