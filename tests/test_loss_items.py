"""Hugging Face's token-level loss with gradient accumulation (``num_items_in_batch``): each
window's loss is normalised by its label tokens, so a window of micro-batches trains like one big
batch. The references are hand-written SGD loops over the same batches, the same run without
accumulation, and transformers' own Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TokenData, TokenLM, pad_tokens

from hooktrain import Trainer, TrainingArguments

LR = 0.5


def _args(tmp_path, batch: int, ga: int, **kw) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / f"run{batch}x{ga}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga, num_train_epochs=2, optim="sgd", learning_rate=LR,
        lr_scheduler_type="constant", max_grad_norm=0, train_sampling_strategy="sequential",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, **kw)


def _train(tmp_path, batch: int, ga: int, model=None, trainer_class=Trainer, trainer_kw=None, **kw):
    model = model if model is not None else TokenLM()
    trainer = trainer_class(model, _args(tmp_path, batch, ga, **kw), train_dataset=TokenData(),
                            data_collator=pad_tokens, **(trainer_kw or {}))
    out = trainer.train()
    return trainer, out


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def _assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    for name, value in a.items():
        np.testing.assert_allclose(value, b[name], rtol=rtol, atol=atol, err_msg=name)


def _reference(counted: bool, batch: int = 2, ga: int = 4, epochs: int = 2):
    """SGD by hand over the same sequential micro-batches: the window's loss is its token mean
    (*counted*) or the mean of the micro-batches' mean losses. Its weights and per-step losses."""
    model, data = TokenLM(), TokenData()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    micro = [pad_tokens([data[i] for i in range(s, min(s + batch, len(data)))]) for s in range(0, len(data), batch)]
    losses = []
    for _ in range(epochs):
        for start in range(0, len(micro), ga):
            window = micro[start:start + ga]
            if counted:
                tokens = sum(int(b["labels"].ne(-100).sum()) for b in window)
                sums = [torch.nn.functional.cross_entropy(model._forward_plain(b["input_ids"])["logits"].flatten(0, 1),
                                                          b["labels"].flatten(), reduction="sum") for b in window]
                loss = sum(sums) / tokens
            else:
                loss = sum(model._forward_plain(**b)["loss"] for b in window) / len(window)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
    return _weights(model), losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """GA=4 with micro-batches of 2, and GA=1 with batches of 8, on the same data."""
    tmp_path = tmp_path_factory.mktemp("loss_items")
    return _train(tmp_path, batch=2, ga=4), _train(tmp_path, batch=8, ga=1)


def test_accumulated_windows_train_like_one_big_batch(runs):
    (accumulated, _), (big, _) = runs
    _assert_same_weights(_weights(accumulated.model), _weights(big.model))
    _assert_same_weights(_weights(accumulated.model), _reference(counted=True)[0])
    # every micro-batch's loss was divided by the window's 4-batch token count
    counts = [sum(int(TokenData()[i]["labels"].ne(-100).sum()) for i in range(s, s + 8)) for s in (0, 8)]
    assert accumulated.model.seen == [counts[0]] * 4 + [counts[1]] * 4 + [counts[0]] * 4 + [counts[1]] * 4
    assert counts[0] != counts[1]  # the windows really differ in tokens


def test_the_logged_loss_is_the_windows_token_mean(runs):
    (accumulated, out), (big, big_out) = runs
    _, ref_losses = _reference(counted=True)
    assert len(_losses(accumulated)) == 4
    np.testing.assert_allclose(_losses(accumulated), ref_losses, rtol=1e-5)
    np.testing.assert_allclose(_losses(accumulated), _losses(big), rtol=1e-5)
    assert out.training_loss == pytest.approx(np.mean(ref_losses), rel=1e-5)
    assert out.training_loss == pytest.approx(big_out.training_loss, rel=1e-5)


def test_a_model_without_loss_kwargs_keeps_the_mean_of_the_micro_batch_means(tmp_path):
    plain, _ = _train(tmp_path, batch=2, ga=4, model=TokenLM(kwargs=False))
    assert "training.loss_items" not in dict(plain.plugin_manager.list_name_plugin())
    ref_weights, ref_losses = _reference(counted=False)
    _assert_same_weights(_weights(plain.model), ref_weights)
    np.testing.assert_allclose(_losses(plain), ref_losses, rtol=1e-5)
    counted_weights, _ = _reference(counted=True)
    assert not all(np.allclose(v, counted_weights[k], rtol=1e-4) for k, v in ref_weights.items())


def test_compute_loss_receives_the_count_only_when_it_takes_it(tmp_path):
    received = []

    def with_count(model, batch, num_items_in_batch=None):
        received.append(num_items_in_batch)
        logits = model(input_ids=batch["input_ids"])["logits"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")
        return loss / num_items_in_batch

    def without_count(model, batch):
        return model._forward_plain(**batch)["loss"]

    counted, _ = _train(tmp_path, batch=2, ga=4, model=TokenLM(kwargs=False), trainer_kw={"compute_loss": with_count})
    assert len(received) == 16 and all(int(n) > 0 for n in received)
    _assert_same_weights(_weights(counted.model), _reference(counted=True)[0])
    plain, _ = _train(tmp_path, batch=2, ga=4, model=TokenLM(), trainer_kw={"compute_loss": without_count})
    _assert_same_weights(_weights(plain.model), _reference(counted=False)[0])


def test_a_subclass_compute_loss_without_the_count_keeps_todays_loss(tmp_path):
    class Subclass(Trainer):
        def compute_loss(self, model, batch):  # the pre-count signature
            return super().compute_loss(model, batch)

    trainer, _ = _train(tmp_path, batch=2, ga=4, trainer_class=Subclass)
    assert set(trainer.model.seen) == {None}
    _assert_same_weights(_weights(trainer.model), _reference(counted=False)[0])


def test_label_smoothing_divides_by_the_windows_tokens(tmp_path):
    accumulated, _ = _train(tmp_path, batch=2, ga=4, label_smoothing_factor=0.1)
    big, _ = _train(tmp_path, batch=8, ga=1, label_smoothing_factor=0.1)
    _assert_same_weights(_weights(accumulated.model), _weights(big.model))
    np.testing.assert_allclose(_losses(accumulated), _losses(big), rtol=1e-5)
    plain, _ = _train(tmp_path, batch=8, ga=1)
    assert _losses(big)[0] > _losses(plain)[0]  # smoothed: the loss of the same first window is higher


def test_a_transformers_causal_lm_trains_as_under_hf_trainer(tmp_path):
    """A tiny Llama (random weights, no download) with variable-length padded labels, GA=4: the
    counted labels skip each row's first position (labels[..., 1:]), as HF counts them."""
    transformers = pytest.importorskip("transformers")

    def model():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
        return transformers.LlamaForCausalLM(config)

    def collate(items):  # labels = the inputs (the model shifts them), padded with -100
        pad = torch.nn.utils.rnn.pad_sequence
        ids = [x["input_ids"] for x in items]
        return {"input_ids": pad(ids, batch_first=True), "labels": pad(ids, batch_first=True, padding_value=-100),
                "attention_mask": pad([torch.ones_like(x) for x in ids], batch_first=True)}

    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, num_train_epochs=2, optim="sgd",
                  learning_rate=LR, lr_scheduler_type="constant", train_sampling_strategy="sequential",
                  logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
    runs = {}
    for name, lib in (("hooktrain", __import__("hooktrain")), ("transformers", transformers)):
        trainer = lib.Trainer(model(), lib.TrainingArguments(output_dir=str(tmp_path / name), **common),
                              train_dataset=TokenData(), data_collator=collate)
        out = trainer.train()
        runs[name] = (trainer, out)
    (ours, our_out), (theirs, their_out) = runs["hooktrain"], runs["transformers"]
    _assert_same_weights(_weights(ours.model), _weights(theirs.model), rtol=1e-4, atol=1e-5)
    hf_losses = [e["loss"] for e in theirs.state.log_history if "loss" in e]
    np.testing.assert_allclose(_losses(ours), hf_losses, rtol=1e-4, atol=1e-4)  # HF rounds to 4 digits
    assert our_out.training_loss == pytest.approx(their_out.training_loss, rel=1e-4)
