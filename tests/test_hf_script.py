"""Hugging Face code runs unchanged: a run_glue-shaped script with only its import changed, and the
commonest `datasets` flow (text + label columns, .map(tokenizer), DataCollatorWithPadding, a
transformers model), each also run under transformers' own Trainer and compared. No downloads: the
tokenizer is a word-level one built here and the model a tiny BERT made from a config."""

from __future__ import annotations

import json
import logging
import random
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

import hooktrain  # noqa: E402

SCRIPT = Path(__file__).parent / "hf_scripts" / "run_classification.py"
WORDS = ["good", "bad", "movie", "plot", "actor", "scene", "long", "short", "music", "story", "end", "the"]
HF_IMPORT = "from transformers import Trainer, TrainingArguments"
OUR_IMPORT = "from hooktrain import Trainer, TrainingArguments"


def _split(n: int, seed: int) -> datasets.Dataset:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS[2:]) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), "good" if i % 2 else "bad")
        rows.append({"text": " ".join(words), "label": i % 2})
    return datasets.Dataset.from_list(rows)


def _tokenizer():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")


def _model(vocab_size: int):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _accuracy(p):
    return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}


def test_a_datasets_pipeline_trains_as_under_hf(tmp_path, caplog):
    tokenizer = _tokenizer()
    encode = lambda batch: tokenizer(batch["text"], truncation=True, max_length=32)  # noqa: E731
    train = _split(128, 0).map(encode, batched=True)
    test = _split(64, 1).map(encode, batched=True)
    assert train.column_names == ["text", "label", "input_ids", "attention_mask"]
    common = dict(learning_rate=1e-2, num_train_epochs=5, per_device_train_batch_size=16,
                  per_device_eval_batch_size=32, seed=0, report_to="none", use_cpu=True, save_strategy="no",
                  disable_tqdm=True)
    results = {}
    for name, lib in (("hooktrain", hooktrain), ("transformers", transformers)):
        trainer = lib.Trainer(_model(len(tokenizer)), lib.TrainingArguments(output_dir=str(tmp_path / name), **common),
                              train_dataset=train, eval_dataset=test, compute_metrics=_accuracy,
                              data_collator=transformers.DataCollatorWithPadding(tokenizer))
        assert trainer.model.config.use_cache is False  # use_cache=False (the default), as HF sets it
        with caplog.at_level(logging.WARNING, logger="hooktrain"):
            trainer.train()
            results[name] = trainer.evaluate()["eval_accuracy"]
            if name == "hooktrain":
                trainer.evaluate()
    dropped = [r.getMessage() for r in caplog.records if "remove_unused_columns" in r.getMessage()]
    assert dropped == ["remove_unused_columns: dropping the dataset column 'text', which "
                       "BertForSequenceClassification.forward does not take (set remove_unused_columns=False "
                       "to keep it)"]  # once, for the train, eval and later eval loaders
    assert results["hooktrain"] >= 0.95 and results["transformers"] >= 0.95, results
    assert abs(results["hooktrain"] - results["transformers"]) <= 2 / len(test), results  # a sample or two


def test_remove_unused_columns_rules(tmp_path):
    class Plain(torch.nn.Module):  # a bare **kwargs: every key is taken, nothing is dropped
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, x, **kwargs):
            seen.append(sorted(kwargs))
            return {"loss": self.linear(x).sum()}

    class Named(Plain):
        def forward(self, x, labels=None):
            seen.append(["labels"] if labels is not None else [])
            return {"loss": self.linear(x).sum()}

    seen: list[list[str]] = []
    data = [{"x": torch.ones(2), "labels": 1, "note": 3} for _ in range(4)]
    args = hooktrain.TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True)
    hooktrain.Trainer(Plain(), args).evaluate(data)
    assert seen[-1] == ["labels", "note"]
    hooktrain.Trainer(Named(), args).evaluate(data)
    assert seen[-1] == ["labels"]  # "note" dropped at collation, the label kept

    def compute_loss(model, batch):  # the whole batch goes to compute_loss: nothing is dropped
        seen.append(sorted(batch))
        return model.linear(batch["x"]).sum()

    hooktrain.Trainer(Named(), args, compute_loss=compute_loss).evaluate(data)
    assert seen[-1] == ["labels", "note", "x"]
    with pytest.raises(TypeError, match="note"):
        hooktrain.Trainer(Named(), args.replace(remove_unused_columns=False)).evaluate(data)


def _run(script: Path, argv: list[str]) -> None:
    old = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old


def test_an_hf_script_runs_with_only_its_import_changed(tmp_path, capsys):
    source = SCRIPT.read_text()
    assert OUR_IMPORT in source
    hf_script = tmp_path / "run_classification_hf.py"
    hf_script.write_text(source.replace(OUR_IMPORT, HF_IMPORT))
    flags = ["--do_train", "--do_eval", "--do_predict", "--num_train_epochs", "5", "--learning_rate", "1e-2",
             "--per_device_train_batch_size", "16", "--report_to", "none", "--seed", "0", "--use_cpu",
             "--save_strategy", "no", "--disable_tqdm", "true"]
    outputs = {}
    for name, script in (("hooktrain", SCRIPT), ("transformers", hf_script)):
        out = tmp_path / name
        _run(script, ["--output_dir", str(out), *flags])
        outputs[name] = out
        printed = capsys.readouterr().out
        for split in ("train", "eval"):
            assert f"***** {split} metrics *****" in printed
        assert {"train_results.json", "eval_results.json", "all_results.json", "predict_results.txt",
                "trainer_state.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    ours, theirs = (json.loads((outputs[n] / "all_results.json").read_text()) for n in ("hooktrain", "transformers"))
    shared = {"train_loss", "train_runtime", "train_samples", "train_samples_per_second", "eval_loss",
              "eval_accuracy", "eval_samples", "eval_runtime"}
    assert shared <= ours.keys() and shared <= theirs.keys()
    assert ours["eval_accuracy"] >= 0.95 and abs(ours["eval_accuracy"] - theirs["eval_accuracy"]) <= 2 / 64
    card = (outputs["hooktrain"] / "README.md").read_text()
    assert "fine-tuned version of a tiny BERT" in card and "- Accuracy: " in card and "- learning_rate: 0.01" in card
    ours_pred, theirs_pred = ((outputs[n] / "predict_results.txt").read_text().splitlines()
                              for n in ("hooktrain", "transformers"))
    assert ours_pred[0] == theirs_pred[0] == "index\tprediction" and len(ours_pred) == len(theirs_pred) == 65
    agree = sum(a == b for a, b in zip(ours_pred[1:], theirs_pred[1:], strict=True))
    assert agree >= 62


def test_predict_fires_on_predict_for_plugins_and_hf_callbacks(tmp_path):
    events = []

    class Watch:
        @hooktrain.hookimpl
        def on_predict(self, metrics):
            events.append(("plugin", sorted(metrics)))

    class Callback(transformers.TrainerCallback):
        def on_predict(self, args, state, control, metrics, **kwargs):
            events.append(("callback", sorted(metrics)))

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x, labels=None):
            logits = self.linear(x)
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return {"loss": loss, "logits": logits}

    data = [{"x": torch.randn(3), "labels": i % 2} for i in range(10)]
    args = hooktrain.TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True)
    trainer = hooktrain.Trainer(Linear(), args, plugins=[Watch()], callbacks=[Callback],
                                compute_metrics=_accuracy)
    out = trainer.predict(data, metric_key_prefix="predict")
    assert out.predictions.shape == (10, 2) and out.label_ids.tolist() == [i % 2 for i in range(10)]
    keys = ["predict_accuracy", "predict_loss", "predict_runtime", "predict_samples_per_second",
            "predict_steps_per_second"]
    assert sorted(out.metrics) == keys
    assert sorted(events) == [("callback", keys), ("plugin", keys)]
    assert trainer.state.log_history == []  # predict() logs nothing, as in HF
    no_labels = trainer.predict([{"x": d["x"]} for d in data])
    assert no_labels.label_ids is None and no_labels.predictions.shape == (10, 2)
    assert trainer.is_world_process_zero and trainer.is_world_process_zero() is True
