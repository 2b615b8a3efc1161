"""The throughput plugin: samples, tokens, FLOPs, MFU and memory, in the logs, the bar and the plot.

Counts are checked exactly (padding, gradient accumulation, a short last window, a real SIGKILL
and resume); FLOPs against the analytic 6·N·tokens (+ attention) estimate. The two-process counts
are checked on tests/test_distributed.py's shared torchrun run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from hooktrain import Trainer, TrainingArguments, hookimpl

HERE = Path(__file__).resolve()
SEQ, VOCAB = 6, 32


class Tokens(torch.utils.data.Dataset):
    """``n`` sequences of ``SEQ`` token ids; item *i* has ``1 + i % SEQ`` real tokens, then padding."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def real(self, i: int) -> int:
        return 1 + i % SEQ

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (3 * i + torch.arange(SEQ)) % VOCAB
        mask = (torch.arange(SEQ) < self.real(i)).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": ids}


class TinyLM(torch.nn.Module):
    """Embedding and a linear head; the loss over the real (unmasked) tokens."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.head(self.embed(input_ids))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        return {"loss": (loss * attention_mask.flatten()).sum() / attention_mask.sum(), "logits": logits}


def train(tmp_path, model=None, data=None, plugins=(), **kw):
    settings = dict(output_dir=str(tmp_path), report_to="none", save_strategy="no", disable_tqdm=True,
                    per_device_train_batch_size=3, learning_rate=0.01, num_train_epochs=1, logging_steps=2)
    args = TrainingArguments(**{**settings, **kw})
    trainer = Trainer(model if model is not None else TinyLM(), args,
                      train_dataset=data if data is not None else Tokens(22), plugins=list(plugins))
    result = trainer.train()
    return trainer, result


def training_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "loss" in e]


# ---- samples and tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [True, "all", "non_padding"])
def test_tokens_are_counted_exactly_with_padding_and_accumulation(tmp_path, mode):
    data = Tokens(22)  # batches of 3: 7 full ones and one of 1; windows of 2 micro-batches
    trainer, result = train(tmp_path, data=data, include_num_input_tokens_seen=mode, num_train_epochs=2,
                            gradient_accumulation_steps=2, logging_steps=3, flops_per_sample=1.0)
    real = sum(data.real(i) for i in range(22))
    want = 2 * (22 * SEQ if mode in (True, "all") else real)  # every sample twice
    assert trainer.state.num_input_tokens_seen == want
    assert result.metrics["num_input_tokens_seen"] == want  # in the summary too
    seen = [e["num_input_tokens_seen"] for e in training_logs(trainer)]
    assert [e["step"] for e in training_logs(trainer)] == [3, 6] and seen == sorted(seen) and seen[-1] < want
    # flops_per_sample=1 turns total_flos into the number of samples trained on
    assert trainer.state.total_flos == 2 * 22
    for entry in training_logs(trainer):
        # one window's rates share its seconds: their ratios are exact counts
        assert entry["flops_per_second"] / entry["samples_per_second"] == pytest.approx(1.0, rel=1e-12)
        # tokens/s counts the real tokens (an attention mask is present), whatever the mode
        assert entry["tokens_per_second"] / entry["samples_per_second"] <= SEQ
        assert entry["samples_per_second_per_process"] == entry["samples_per_second"]  # one process
    summary = result.metrics
    # the runtime is rounded to 0.1 ms, which is a few per mille of this short run
    assert summary["train_tokens_per_second"] * summary["train_throughput_runtime"] == pytest.approx(
        2 * real, rel=1e-3, abs=summary["train_tokens_per_second"] * 5e-5)


def test_tokens_per_second_are_the_real_tokens_of_each_window(tmp_path):
    data = Tokens(12)  # batch 3, no shuffling effect on the sums: check each window against its batches
    seen: list[list[int]] = []

    class Batches:
        @hookimpl
        def on_train_batch(self, batch):
            seen.append([int(batch["attention_mask"].sum()), batch["input_ids"].shape[0]])

    trainer, _ = train(tmp_path, data=data, plugins=[Batches()], logging_steps=2)
    logs = training_logs(trainer)
    assert len(logs) == 2 and len(seen) == 4
    # the first step, slowed by counting its FLOPs, is left out of the rates: window 1 is step 2
    for window, entry in zip((seen[1:2], seen[2:]), logs, strict=True):
        tokens, samples = sum(t for t, _ in window), sum(s for _, s in window)
        assert entry["tokens_per_second"] / entry["samples_per_second"] == pytest.approx(tokens / samples, rel=1e-12)
    assert "num_input_tokens_seen" not in logs[0]  # include_num_input_tokens_seen="no" (the default)
    assert trainer.state.num_input_tokens_seen == 0


def test_all_counts_the_main_input_named_by_the_model(tmp_path, caplog):
    class Pixels(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"pixel_values": torch.ones(2, 5), "labels": torch.tensor(float(i))}

    class Regressor(torch.nn.Module):
        main_input_name = "pixel_values"

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(10, 1)

        def forward(self, pixel_values, labels):
            return {"loss": torch.nn.functional.mse_loss(self.lin(pixel_values.flatten(1)).squeeze(-1), labels)}

    trainer, _ = train(tmp_path / "named", model=Regressor(), data=Pixels(), include_num_input_tokens_seen="all",
                       per_device_train_batch_size=4)
    assert trainer.state.num_input_tokens_seen == 8 * 10  # numel of pixel_values
    Regressor.main_input_name = "input_ids"  # HF's default name, absent from the batches: a warning
    trainer, _ = train(tmp_path / "absent", model=Regressor(), data=Pixels(), include_num_input_tokens_seen="all",
                       per_device_train_batch_size=4)
    assert trainer.state.num_input_tokens_seen == 0
    assert "main input 'input_ids', which the batches do not have" in caplog.text


def test_a_mapping_batch_counts_like_a_dict(tmp_path):
    """Collators may return a Mapping that is not a dict (transformers' BatchEncoding is a UserDict)."""
    from collections import UserDict

    data = Tokens(12)

    def collate(items):
        return UserDict({k: torch.stack([item[k] for item in items]) for k in items[0]})

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=3, num_train_epochs=1, logging_steps=2,
                             include_num_input_tokens_seen="non_padding", flops_per_sample=1.0)
    trainer = Trainer(TinyLM(), args, train_dataset=data, data_collator=collate,
                      compute_loss=lambda model, batch: model(**batch)["loss"])
    trainer.train()
    assert trainer.state.num_input_tokens_seen == sum(data.real(i) for i in range(12))
    assert trainer.state.total_flos == 12  # samples: the length of input_ids


# ---- FLOPs and MFU ------------------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class GPT(torch.nn.Module):
    def __init__(self, dim=64, heads=4, layers=2, seq=32, vocab=64):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Parameter(torch.zeros(seq, dim))
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids, labels):
        x = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(x)
        return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())}


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n=16, seq=32, vocab=64):
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def analytic_flops_per_sample(model: GPT, seq: int) -> float:
    """6·N per token (N: the weights of the matrix products, embeddings excluded), plus the
    attention's 2·2·T·d multiply-adds per token and layer, forward and twice that backward."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    dim, layers = model.embed.embedding_dim, len(model.blocks)
    return seq * (6 * n + 3 * 4 * seq * dim * layers)


def test_flops_of_a_small_transformer_are_within_5_percent_of_6N_plus_attention(tmp_path):
    from hooktrain.plugins.flops import count_flops

    model, batch = GPT(), Sequences()[0:4]
    counted = count_flops(lambda: model(**batch)["loss"].backward()) / 4
    want = analytic_flops_per_sample(model, 32)
    assert counted == pytest.approx(want, rel=0.05)
    # the attention is counted on a CPU too (torch's own counter misses the CPU kernel)
    without_attention = want - 3 * 4 * 32 * 64 * 2 * 32
    assert counted > without_attention * 1.05

    # the plugin counts the same per sample over the first step's 2 micro-batches
    trainer, result = train(tmp_path, model=GPT(), data=Sequences(), per_device_train_batch_size=2,
                            gradient_accumulation_steps=2, max_steps=4, logging_steps=2)
    per_sample = [e["flops_per_second"] / e["samples_per_second"] for e in training_logs(trainer)]
    assert per_sample == pytest.approx([counted, counted], rel=1e-9)
    assert trainer.state.total_flos == pytest.approx(counted * 16, rel=1e-9)  # 4 steps x 4 samples
    assert result.metrics["total_flos"] == trainer.state.total_flos


def test_mfu_is_flops_per_second_over_the_given_peak(tmp_path):
    trainer, result = train(tmp_path, peak_flops=2e9, flops_per_sample=3e6)
    logs = training_logs(trainer)
    assert logs
    for entry in logs:
        assert entry["flops_per_second"] == pytest.approx(3e6 * entry["samples_per_second"], rel=1e-12)
        assert entry["mfu"] == pytest.approx(entry["flops_per_second"] / 2e9, rel=1e-12)
    summary = result.metrics
    assert summary["train_mfu"] == pytest.approx(summary["train_flops_per_second"] / 2e9, rel=1e-12)
    # on a CPU without a peak: FLOP/s, but no MFU
    trainer, result = train(tmp_path / "no-peak", flops_per_sample=3e6)
    assert all("flops_per_second" in e and "mfu" not in e for e in training_logs(trainer))
    assert "train_mfu" not in result.metrics


def test_flops_per_sample_zero_turns_the_flop_figures_off(tmp_path):
    trainer, result = train(tmp_path, flops_per_sample=0.0)
    assert all("flops_per_second" not in e for e in training_logs(trainer))
    assert trainer.state.total_flos == 0.0


def test_the_peak_table_knows_common_gpus_by_their_torch_names():
    from hooktrain.plugins.peak_flops import lookup_peak_flops

    assert lookup_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert lookup_peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert lookup_peak_flops("NVIDIA H200", "tf32") == pytest.approx(494.7e12)
    assert lookup_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5e12)
    assert lookup_peak_flops("NVIDIA L4", "fp16") == pytest.approx(121e12)
    assert lookup_peak_flops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on Volta
    assert lookup_peak_flops("NVIDIA RTX A1000", "bf16") is None  # not an A100
    assert lookup_peak_flops("NVIDIA A10G", "bf16") is None  # not an A10 either
    assert lookup_peak_flops("Some Accelerator", "bf16") is None


# ---- what is excluded, and memory ---------------------------------------------------------------


def test_evaluation_time_is_not_training_time(tmp_path):
    def slow_metrics(_):
        time.sleep(0.25)
        return {"n": 1.0}

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=3, max_steps=8, logging_steps=2, eval_strategy="steps",
                             eval_steps=2, flops_per_sample=0)  # no FLOP count: step 1 is in the rates
    trainer = Trainer(TinyLM(), args, train_dataset=Tokens(30), eval_dataset=Tokens(3), compute_metrics=slow_metrics)
    summary = trainer.train().metrics
    evaluation = sum(e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e)
    assert evaluation > 4 * 0.25
    assert summary["train_throughput_runtime"] < summary["train_runtime"] - 0.9 * evaluation
    # the windows' seconds (6 samples each) add up to the run's training time, evaluations excluded
    seconds = [6 / e["samples_per_second"] for e in training_logs(trainer)]
    assert len(seconds) == 4 and sum(seconds) == pytest.approx(summary["train_throughput_runtime"], abs=1e-3)


def test_memory_figures_are_present_and_follow_each_window(tmp_path):
    from hooktrain.plugins.throughput import PeakRss

    held: list[torch.Tensor] = []

    class Allocate:  # ~256 MiB touched during step 3, freed at step 4
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == 3:
                held.append(torch.ones(64 * 2**20))
            elif held:
                held.clear()

    trainer, result = train(tmp_path, plugins=[Allocate()], max_steps=6, logging_steps=2)
    rss = [e["host_peak_rss_mib"] for e in training_logs(trainer)]
    assert len(rss) == 3 and all(30 < v < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20 for v in rss)
    assert rss[1] > rss[0] + 200  # the window of steps 3-4 held the 256 MiB
    if PeakRss().resettable:  # Linux: the peak is reset at each log
        assert rss[2] < rss[1] - 200
    assert result.metrics["train_host_peak_rss_mib"] == max(rss)
    assert not any(k.startswith("device_") for e in training_logs(trainer) for k in e)  # no CUDA here


# ---- where the figures show ----------------------------------------------------------------------


def test_the_bar_shows_tokens_per_second(tmp_path, capfd):
    train(tmp_path, disable_tqdm=False, peak_flops=1e12)
    err = capfd.readouterr().err
    assert "tokens/s=" in err and "mfu=" in err
    lines = [line for line in err.splitlines() if line.startswith("step 2/")]
    assert lines and "per_second" not in lines[0] and "_mib" not in lines[0]  # the line stays short


def test_the_plot_has_a_throughput_and_memory_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from hooktrain.plot import plot

    trainer, _ = train(tmp_path, num_train_epochs=2)
    trainer.save_state()
    path = plot(tmp_path, tmp_path / "with.png")
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    for entry in state["log_history"]:
        for key in ("tokens_per_second", "samples_per_second", "host_peak_rss_mib"):
            entry.pop(key, None)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "trainer_state.json").write_text(json.dumps(state))
    without = plot(bare, tmp_path / "without.png")
    # one panel more: 5 inches wide at 110 dpi
    assert imread(path).shape[1] - imread(without).shape[1] == 550


# ---- kept across a real kill and resume ---------------------------------------------------------


def child(out: str, kill_at: int) -> None:
    """Train 3 epochs of 4 steps (26 samples, batch 4, accumulation 2), saving every 4 steps and
    logging every 3 (so a save falls between logs); SIGKILL itself at the end of step *kill_at*
    (0: never) once checkpoint-4 is complete (saves may be written in the background), resuming
    from the newest checkpoint when there is one."""

    class Kill:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == kill_at:
                deadline = time.monotonic() + 60
                while not (Path(out) / "checkpoint-4").is_dir() and time.monotonic() < deadline:
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGKILL)

    args = TrainingArguments(
        output_dir=out, num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=0.01, save_strategy="steps", save_steps=4, logging_steps=3, report_to="none",
        disable_tqdm=True, include_num_input_tokens_seen="non_padding", seed=3,
    )
    trainer = Trainer(TinyLM(), args, train_dataset=Tokens(26), plugins=[Kill()])
    trainer.train(resume_from_checkpoint=any(Path(out).glob("checkpoint-*")))
    trainer.save_state()


def test_num_input_tokens_seen_survives_a_kill_and_resume(tmp_path, fork_servers):
    from helpers import checkpoint_steps

    env = {**os.environ, "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}

    def run(kill_at: int):  # this file as a script, forked from a process that imported torch
        return fork_servers(env).run(HERE, tmp_path, kill_at, timeout=120)

    epoch = sum(Tokens(26).real(i) for i in range(26))  # real tokens of one epoch
    killed = run(kill_at=6)  # checkpoint-4 written (after the log of step 3), then killed in epoch 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint_steps(tmp_path) == [4]

    def saved(step: int) -> int:
        return json.loads((tmp_path / f"checkpoint-{step}" / "trainer_state.json").read_text())["num_input_tokens_seen"]

    assert saved(4) == epoch  # flushed at the save, one step after the last log
    resumed = run(kill_at=0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_steps(tmp_path) == [4, 8, 12]
    assert [saved(4), saved(8), saved(12)] == [epoch, 2 * epoch, 3 * epoch]
    final = json.loads((tmp_path / "trainer_state.json").read_text())
    assert final["num_input_tokens_seen"] == 3 * epoch  # steps 5-6 of the killed run are not counted twice
    first = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["total_flos"]
    assert first > 0 and math.isclose(final["total_flos"], 3 * first, rel_tol=1e-12)  # FLOPs likewise


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]))
