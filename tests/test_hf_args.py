"""Every Hugging Face TrainingArguments name has an answer: implemented, an alias, refused, or an
older spelling accepted with a FutureWarning; and the HF-only fields hooktrain implements."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

from hooktrain import ArgumentError, Trainer, TrainingArguments
from hooktrain.core.cli import parse_args
from hooktrain.core.data import ResumableBatchSampler, group_by_length
from hooktrain.core.hf_names import HF_NAMES

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
HF_FIELDS = [f for f in dataclasses.fields(transformers.TrainingArguments)]


def _table() -> dict[str, tuple[str, str]]:
    """The rows of docs/migrating-from-hf.md's table of every HF field: name -> (answer, text)."""
    text = (ROOT / "docs" / "migrating-from-hf.md").read_text()
    section = text.split("## Every Hugging Face argument", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (.*) \|$", section, re.M)
    return {name: (answer.strip(), rest) for name, answer, rest in rows}


def test_the_table_answers_every_field_of_the_installed_transformers():
    table = _table()
    missing = [f.name for f in HF_FIELDS if f.name not in table]
    assert not missing, f"docs/migrating-from-hf.md has no row for {missing}"
    for name, (answer, _) in table.items():
        if answer.startswith("implemented"):
            assert name in FIELDS, name
        else:
            assert name in HF_NAMES and answer == HF_NAMES[name].kind, (name, answer)
    assert len(table) == len(HF_FIELDS)


def test_every_renamed_name_is_listed_in_the_docs():
    text = (ROOT / "docs" / "migrating-from-hf.md").read_text()
    for entry in HF_NAMES.values():
        if entry.kind == "renamed":
            assert f"`{entry.name}`" in text, entry.name


def test_a_dict_written_by_hugging_face_loads_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = transformers.TrainingArguments(output_dir="hf_out").to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning: v5 writes no deprecated name
        args = TrainingArguments.from_dict(values)
    assert args.output_dir == "hf_out" and args.remove_unused_columns is True
    assert args.train_sampling_strategy == "random" and args.do_train is False


@pytest.mark.parametrize("entry", [e for e in HF_NAMES.values() if e.kind == "renamed" and e.target],
                         ids=lambda e: e.name)
def test_an_older_spelling_warns_and_sets_the_new_field(tmp_path, entry):
    value = {"evaluation_strategy": "steps", "no_cuda": True, "per_gpu_train_batch_size": 3,
             "per_gpu_eval_batch_size": 5, "group_by_length": True, "include_inputs_for_metrics": True,
             "torchdynamo": "eager", "include_tokens_per_second": True}[entry.name]
    with pytest.warns(FutureWarning, match=rf"{entry.name} is a deprecated .*use {entry.target} instead"):
        args = TrainingArguments(output_dir=str(tmp_path), **{entry.name: value})
    expected = entry.convert(value) if entry.convert else value
    assert getattr(args, entry.target) == expected


def test_a_refused_name_with_a_value_is_an_error_with_the_other_problems(tmp_path):
    with pytest.raises(ArgumentError) as info:
        TrainingArguments(output_dir=str(tmp_path), push_to_hub=True, deepspeed="ds.json",
                          use_liger_kernel=True, learning_rate=-1.0)
    problems = info.value.problems
    assert len(problems) == 4
    for name in ("push_to_hub=True", "deepspeed='ds.json'", "use_liger_kernel=True"):
        assert any(p.startswith(f"{name} is not supported by hooktrain") for p in problems), name
    assert any("fsdp" in p for p in problems if p.startswith("deepspeed"))
    assert any(p.startswith("learning_rate=-1.0") for p in problems)
    # the default values pass silently
    TrainingArguments(output_dir=str(tmp_path), push_to_hub=False, hub_strategy="every_save",
                      hub_token="<HUB_TOKEN>", debug="", project="huggingface")


def test_a_name_and_its_field_that_disagree_is_an_error(tmp_path):
    with pytest.warns(FutureWarning), pytest.raises(ArgumentError, match="evaluation_strategy='steps' and eval_strategy='epoch' disagree"):
        TrainingArguments(output_dir=str(tmp_path), evaluation_strategy="steps", eval_strategy="epoch")


def test_an_unknown_name_is_still_an_error_with_a_suggestion(tmp_path):
    with pytest.raises(ArgumentError, match=r"unknown argument 'evalution_strategy'; did you mean 'evaluation_strategy'"):
        TrainingArguments.from_dict({"output_dir": str(tmp_path), "evalution_strategy": "steps"})
    with pytest.raises(ArgumentError, match=r"unknown argument 'remove_unused_column'; did you mean 'remove_unused_columns'"):
        TrainingArguments(output_dir=str(tmp_path), remove_unused_column=False)


def test_replace_and_assignment_take_the_older_names(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path))
    with pytest.warns(FutureWarning):
        assert args.replace(evaluation_strategy="epoch").eval_strategy == "epoch"
    with pytest.warns(FutureWarning):
        args.no_cuda = True
    assert args.use_cpu is True


def test_aliases_of_hugging_face_v5(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), activation_checkpointing=True,
                             enable_jit_checkpoint=True, preemption_signals=["SIGTERM"])
    assert args.gradient_checkpointing is True and args.preemption_signals == ["SIGTERM"]
    with pytest.raises(ArgumentError, match="enable_jit_checkpoint=True and preemption_signals=\\[\\] disagree"):
        TrainingArguments(output_dir=str(tmp_path), enable_jit_checkpoint=True, preemption_signals=[])


def test_the_command_line_and_yaml_take_hugging_face_names(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\nevaluation_strategy: epoch\npush_to_hub: false\n"
                      "activation_checkpointing: true\n")
    with pytest.warns(FutureWarning, match="evaluation_strategy"):
        args = parse_args([str(config), "--per_gpu_train_batch_size", "4", "--no_cuda"])
    assert (args.eval_strategy, args.per_device_train_batch_size, args.use_cpu) == ("epoch", 4, True)
    assert args.gradient_checkpointing is True
    with pytest.raises(ArgumentError, match="push_to_hub=True is not supported"):
        parse_args(["--output_dir", str(tmp_path), "--push_to_hub"])


def test_hf_argument_parser_builds_hooktrain_arguments(tmp_path):
    parser = transformers.HfArgumentParser((TrainingArguments,))
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--do_train", "--eval_strategy", "epoch", "--learning_rate", "1e-3",
         "--report_to", "none", "--include_for_metrics", "inputs", "loss", "--bf16", "false"])
    assert isinstance(args, TrainingArguments)
    assert (args.do_train, args.do_eval, args.eval_strategy, args.learning_rate) == (True, False, "epoch", 1e-3)
    assert args.include_for_metrics == ["inputs", "loss"] and args.report_to == []


def test_new_fields_are_checked(tmp_path):
    with pytest.raises(ArgumentError) as info:
        TrainingArguments(output_dir=str(tmp_path), include_for_metrics=["input"],
                          train_sampling_strategy="batch_rebalance", dataloader_multiprocessing_context="spawn",
                          log_level_replica="loud")
    text = str(info.value)
    assert "include_for_metrics=['input'] is invalid: 'input' is not one of 'inputs', 'loss'" in text
    assert "train_sampling_strategy='batch_rebalance' is not supported by hooktrain: use 'group_by_length'" in text
    assert "dataloader_multiprocessing_context='spawn' is invalid: needs dataloader_num_workers > 0" in text
    assert "log_level_replica='loud' is not one of" in text


# ---- behaviour of the HF-only fields ------------------------------------------------------------


def test_group_by_length_batches_similar_lengths_longest_first():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (400,), generator=gen).tolist()
    order = group_by_length(torch.randperm(400, generator=gen).tolist(), lengths, 8)
    assert sorted(order) == list(range(400))
    assert lengths[order[0]] == max(lengths)
    spread = [max(lengths[i] for i in order[b:b + 8]) - min(lengths[i] for i in order[b:b + 8])
              for b in range(8, 400, 8)]
    random_spread = [max(lengths[b:b + 8]) - min(lengths[b:b + 8]) for b in range(8, 400, 8)]
    assert sum(spread) < sum(random_spread) / 5
    # the same (seed, epoch) gives the same order: a resume reads the same batches
    a = ResumableBatchSampler(400, 8, seed=3, lengths=lengths)
    b = ResumableBatchSampler(400, 8, seed=3, lengths=lengths)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(50, 2)

    def forward(self, input_ids, labels=None):
        logits = self.emb(input_ids)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def _pad(items):
    longest = max(len(i["input_ids"]) for i in items)
    ids = torch.tensor([i["input_ids"] + [0] * (longest - len(i["input_ids"])) for i in items])
    return {"input_ids": ids, "labels": torch.tensor([i["labels"] for i in items])}


def test_train_sampling_strategy_in_a_run(tmp_path):
    data = [{"input_ids": list(range(1, 2 + (i * 7) % 17)), "labels": i % 2} for i in range(256)]
    seen = []

    def collate(items):
        seen.append([len(i["input_ids"]) for i in items])
        return _pad(items)

    spreads = {}
    for strategy in ("group_by_length", "sequential", "random"):
        seen.clear()
        args = TrainingArguments(output_dir=str(tmp_path / strategy), report_to="none", max_steps=32,
                                 per_device_train_batch_size=8, train_sampling_strategy=strategy,
                                 disable_tqdm=True, save_strategy="no")
        Trainer(Tokens(), args, train_dataset=data, data_collator=collate).train()
        spreads[strategy] = sum(max(b) - min(b) for b in seen)  # the padding's measure
        if strategy == "sequential":
            assert seen[0] == [len(d["input_ids"]) for d in data[:8]]
        elif strategy == "group_by_length":
            assert seen[0][0] == max(len(d["input_ids"]) for d in data)
    assert spreads["group_by_length"] < spreads["random"] / 2


def test_include_for_metrics_batch_eval_metrics_and_unconcatenated_batches(tmp_path):
    data = [{"input_ids": [1 + i % 7, 2, 3], "labels": i % 2} for i in range(20)]
    base = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=8,
                             include_for_metrics=["inputs", "loss"])
    got = {}

    def whole(p):
        predictions, labels, inputs, losses = p  # HF's unpacking order
        got.update(inputs=inputs, losses=losses)
        return {"accuracy": float((predictions.argmax(-1) == labels).mean())}

    model = Tokens()
    full = Trainer(model, base, data_collator=_pad, compute_metrics=whole).evaluate(data)
    assert got["inputs"].shape == (20, 3) and got["losses"].shape == (20,)
    assert (got["inputs"][:, 0] == [1 + i % 7 for i in range(20)]).all()

    sums = {"right": 0, "n": 0, "calls": []}

    def per_batch(p, compute_result):
        sums["right"] += int((p.predictions.argmax(-1) == p.label_ids).sum())
        sums["n"] += len(p.label_ids)
        sums["calls"].append(compute_result)
        return {"accuracy": sums["right"] / sums["n"]} if compute_result else {}

    batched = Trainer(model, base.replace(batch_eval_metrics=True), data_collator=_pad,
                      compute_metrics=per_batch).evaluate(data)
    assert sums["calls"] == [False, False, True]
    assert batched["eval_accuracy"] == pytest.approx(full["eval_accuracy"])

    lists = Trainer(model, base.replace(eval_do_concat_batches=False), data_collator=_pad,
                    compute_metrics=lambda p: {"batches": len(p.predictions)}).evaluate(data)
    assert lists["eval_batches"] == 3


def test_auto_find_batch_size_trains_again_smaller_after_running_out_of_memory(tmp_path, caplog):
    class Greedy(Tokens):
        def forward(self, input_ids, labels=None):
            if input_ids.shape[0] > 5:  # a real allocation the CPU allocator refuses
                torch.empty(2**50, dtype=torch.uint8)
            return super().forward(input_ids, labels)

    data = [{"input_ids": [1, 2, 3], "labels": i % 2} for i in range(30)]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8,
                             auto_find_batch_size=True, num_train_epochs=1, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(Greedy(), args, train_dataset=data, data_collator=_pad)
    out = trainer.train()
    assert trainer.args.per_device_train_batch_size == 5  # 8 -> 7 -> 6 -> 5 (90 %, rounded down)
    assert args.per_device_train_batch_size == 8  # the caller's arguments are left alone
    assert out.global_step == 6 and trainer.state.max_steps == 6
    assert "auto_find_batch_size: out of memory with per_device_train_batch_size=8" in caplog.text
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        Trainer(Greedy(), args.replace(auto_find_batch_size=False), train_dataset=data, data_collator=_pad).train()


def test_log_level_replica_on_the_other_processes():
    from hooktrain.core.console import log_level_of

    args = TrainingArguments(output_dir="x", log_level="info", log_level_replica="error")
    assert log_level_of(args, 0, 0) == ("info", True)
    assert log_level_of(args, 3, 1) == ("error", False)
    assert log_level_of(args, 4, 0) == ("info", True)  # first process of the second machine
    assert log_level_of(args.replace(log_on_each_node=False), 4, 0) == ("error", False)


def test_scripts_read_hugging_face_names_from_the_arguments(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length", use_cpu=True)
    assert args.push_to_hub is False and args.hub_token is None and args.hub_strategy == "every_save"
    assert args.group_by_length is True and args.no_cuda is True and args.evaluation_strategy == "no"
    assert args.activation_checkpointing is False and args.deepspeed is None
    with pytest.raises(AttributeError, match="no attribute 'push_to_hubb'"):
        getattr(args, "push_to_hubb")  # noqa: B009
