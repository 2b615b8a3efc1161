"""Many processes on torch.distributed: real ``torchrun`` launches of two gloo processes on the CPU.

Each test launches ``tests/dist_scripts/train_ddp.py`` under ``python -m torch.distributed.run``
(``--standalone`` picks a free rendezvous port) and reads back what the processes wrote: their
final weights, log histories and metrics, the TensorBoard events and the checkpoints.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hooktrain import ArgumentError, Trainer, TrainingArguments
from hooktrain.core.data import ResumableBatchSampler
from hooktrain.plugins.distributed import merge_eval_outputs

SCRIPT = Path(__file__).parent / "dist_scripts" / "train_ddp.py"
LAUNCH_TIMEOUT = 40  # seconds per torchrun launch; a hang fails the test instead of blocking CI


class Launch:
    def __init__(self, returncode: int, output: str, seconds: float, out: Path):
        self.returncode, self.output, self.seconds, self.out = returncode, output, seconds, out

    def result(self, rank: int) -> dict:
        return json.loads((self.out / f"result_rank{rank}.json").read_text())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONUNBUFFERED="1")
    return env


def launch(out: Path, nproc: int | None = 2, timeout: float = LAUNCH_TIMEOUT, **cfg) -> Launch:
    """Run the child script under torchrun with *nproc* processes (``None``: one plain process)."""
    config = json.dumps({"out": str(out), **cfg})
    if nproc is None:
        cmd = [sys.executable, str(SCRIPT), config]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "--monitor_interval=0.1", str(SCRIPT), config]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers share this session
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired as late:  # a rank outside the session still holds the pipe
            partial = late.output or b""
            output = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        pytest.fail(f"{cmd[3:5]} did not end within {timeout} s:\n{output[-4000:]}")
    return Launch(proc.returncode, output, time.monotonic() - start, out)


def _weights(result: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in result["weights"].items()}


def _losses(result: dict) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in result["log_history"] if "loss" in e]


def _eval(result: dict) -> dict:
    return next(e for e in result["log_history"] if "eval_loss" in e)


# ---- one 2-process run and its single-process reference, shared by several tests ------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    # two micro-batches per step: the first backward of each window runs under no_sync()
    cfg = dict(steps=8, ga=2, eval=True, tokens=True)
    saving = dict(save_steps=4, report_to=["tensorboard"])
    ddp = launch(base / "ddp", batch=2, **cfg, **saving)
    assert ddp.returncode == 0, ddp.output[-6000:]
    single = launch(base / "single", nproc=None, batch=4, **cfg)
    assert single.returncode == 0, single.output[-6000:]
    return ddp, single


def test_two_processes_train_like_one_with_twice_the_batch(runs):
    ddp, single = runs
    r0, r1, ref = ddp.result(0), ddp.result(1), single.result(0)
    assert (r0["rank"], r1["rank"], r0["world_size"], r1["local_rank"]) == (0, 1, 2, 1)
    assert r0["wrapped"] == "DistributedDataParallel" and ref["wrapped"] == "MLP"
    # gradients are exchanged once per optimizer step, not per micro-batch (no_sync on the first)
    assert r0["allreduce_buckets"] == r1["allreduce_buckets"] == 8  # 8 steps x 1 bucket, not 16
    # the replicas stay identical, and equal the single process that saw the same global batches
    for name, value in _weights(r0).items():
        np.testing.assert_array_equal(value, _weights(r1)[name])
        np.testing.assert_allclose(value, _weights(ref)[name], rtol=1e-5, atol=1e-6)
    # the logged loss is the mean over both processes: every rank logs the global batch's loss
    for result in (r0, r1):
        got, want = _losses(result), _losses(ref)
        assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)
        assert result["training_loss"] == pytest.approx(ref["training_loss"], rel=1e-5)


def test_tokens_and_samples_are_counted_over_both_processes(runs):
    """The throughput plugin's counts are exact sums over the processes (docs/throughput.md)."""
    ddp, single = runs
    r0, r1, ref = ddp.result(0), ddp.result(1), single.result(0)
    # 8 steps x (2 per device x 2 processes x 2 accumulation steps) = the single run's 8 x 4 x 2
    assert r0["seen_samples"] + r1["seen_samples"] == 64 == ref["seen_samples"]
    tokens = r0["seen_tokens"] + r1["seen_tokens"]
    assert tokens == ref["seen_tokens"] and 64 < tokens < 5 * 64  # padding left out
    for result in (r0, r1):  # every process holds the run's totals
        assert result["num_input_tokens_seen"] == tokens == ref["num_input_tokens_seen"]
        assert result["total_flos"] == 64.0  # flops_per_sample=1: the samples of both processes
    logs, ref_logs = ([e for e in r["log_history"] if "loss" in e] for r in (r0, ref))
    assert [e["num_input_tokens_seen"] for e in logs] == [e["num_input_tokens_seen"] for e in ref_logs]
    for entry, ref_entry in zip(logs, ref_logs, strict=True):  # each window: the same global batch
        ratio = entry["tokens_per_second"] / entry["samples_per_second"]
        assert ratio == pytest.approx(ref_entry["tokens_per_second"] / ref_entry["samples_per_second"], rel=1e-9)
        assert entry["samples_per_second_per_process"] == pytest.approx(entry["samples_per_second"] / 2, rel=1e-12)


def test_evaluation_gathers_every_sample_once_in_dataset_order(runs):
    ddp, single = runs
    ref_eval = _eval(single.result(0))
    assert ref_eval["eval_n"] == 13  # 13 samples: the shards are 7 and 6, nothing padded twice
    for rank in (0, 1):
        result = ddp.result(rank)
        for metrics in (_eval(result), result["eval_after_train"]):  # during and after train()
            assert metrics["eval_n"] == 13
            assert metrics["eval_in_order"] == 1.0
            for key in ("eval_loss", "eval_mse"):
                assert metrics[key] == pytest.approx(ref_eval[key], rel=1e-5)


def test_rank_zero_alone_reports_and_logs_the_effective_batch(runs):
    ddp, _ = runs
    lines = [ln for ln in ddp.output.splitlines() if "effective batch" in ln]
    assert len(lines) == 1, ddp.output[-3000:]
    assert "effective batch 8 = 2 per device x 2 processes x 2 accumulation steps" in lines[0]
    assert "2 processes (gloo)" in lines[0]
    # one console line per log event: the progress plugin runs on rank 0 only
    assert sum(ln.startswith("step 3/8 | loss") for ln in ddp.output.splitlines()) == 1


def test_one_set_of_reports_and_checkpoints(runs):
    ddp, _ = runs
    # TensorBoard files are named events.out.tfevents.<time>.<host>.<pid>.<n>.hooktrain: rank 0's only
    events = sorted((ddp.out / "runs").rglob("events.out.tfevents.*"))
    assert events and {e.name.split(".")[-3] for e in events} == {str(ddp.result(0)["pid"])}, events
    checkpoints = sorted(p.name for p in ddp.out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    for name in checkpoints:
        files = {p.name for p in (ddp.out / name).iterdir()}
        assert {"model.safetensors", "trainer_state.json"} <= files
        rng = sorted(f for f in files if f.startswith("rng_state"))
        assert rng == ["rng_state_0.pth", "rng_state_1.pth"], files
        state = json.loads((ddp.out / name / "trainer_state.json").read_text())
        assert state["is_world_process_zero"] is True
    # nothing was left behind by either process (no temporary checkpoint directories)
    assert sorted(p.name for p in ddp.out.iterdir() if p.is_dir()) == ["checkpoint-4", "checkpoint-8", "runs"]


# ---- resume, failures ------------------------------------------------------------------------


def test_kill_and_resume_reaches_the_uninterrupted_weights(tmp_path):
    # dropout makes the result depend on every rank's RNG state, which the resume must restore
    cfg = dict(batch=4, steps=8, save_steps=3, dropout=True)
    whole = launch(tmp_path / "whole", **cfg)
    assert whole.returncode == 0, whole.output[-6000:]

    # rank 1 SIGKILLs itself while its background thread writes its part of checkpoint-6
    killed = launch(tmp_path / "broken", **cfg, kill_in_persist_at=6)
    assert killed.returncode != 0
    assert "Signal 9 (SIGKILL)" in killed.output or "(exitcode: -9) local_rank: 1" in killed.output, \
        killed.output[-4000:]
    assert not list((tmp_path / "broken").glob("result_rank*.json"))
    # checkpoint-6 was begun (its temporary directory), but it never became visible without rank 1's part
    assert sorted(p.name for p in (tmp_path / "broken").glob("checkpoint-*")) == ["checkpoint-3"]
    assert (tmp_path / "broken" / ".tmp-checkpoint-6").is_dir()

    resumed = launch(tmp_path / "broken", **cfg, resume=True)
    assert resumed.returncode == 0, resumed.output[-6000:]
    for rank in (0, 1):
        got, want = _weights(resumed.result(rank)), _weights(whole.result(rank))
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    after = [(s, v) for s, v in _losses(whole.result(0)) if s > 3]
    assert [(s, v) for s, v in _losses(resumed.result(0)) if s > 3] == after


def test_an_exception_on_one_rank_ends_the_job_with_its_error(tmp_path):
    run = launch(tmp_path, batch=4, steps=8, raise_at=3)
    assert run.returncode != 0
    assert run.seconds < 30
    assert not list(tmp_path.glob("result_rank*.json"))  # neither process went on training
    root = run.output.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 1 (local_rank: 1)" in root, run.output[-4000:]
    assert "RuntimeError: injected failure on rank 1 at step 3" in root


def test_a_stalled_rank_fails_the_job_after_ddp_timeout(tmp_path):
    run = launch(tmp_path, batch=4, steps=8, stall_at=3, ddp_timeout=3)  # rank 1 sleeps 300 s
    assert run.returncode != 0
    assert run.seconds < 30, run.output[-3000:]
    assert "Timed out" in run.output


# ---- in-process checks ---------------------------------------------------------------------


def test_one_process_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model, TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert trainer.model_wrapped is model
    assert (trainer.process_index, trainer.world_size, trainer.local_process_index) == (0, 1, 0)
    assert trainer.plugin_manager.get_plugin("distributed.ddp") is None
    assert trainer.mean_over_processes(0.25) == 0.25
    assert not torch.distributed.is_initialized()


def test_nccl_without_cuda_is_an_argument_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, ddp_backend="nccl")
    with pytest.raises(ArgumentError, match="ddp_backend='nccl' needs CUDA"):
        Trainer(torch.nn.Linear(2, 1), args)
    assert not torch.distributed.is_initialized()


def test_eval_shards_are_not_padded_and_merge_back_in_order():
    n, world = 11, 3
    shards = [ResumableBatchSampler(n, 2, shuffle=False, rank=r, world_size=world, pad=False).indices()
              for r in range(world)]
    assert [len(s) for s in shards] == [4, 4, 3]
    preds = np.arange(n, dtype=np.float32) * 10
    labels = np.arange(n)
    parts = [(float(np.mean(preds[s])), len(s), s, preds[s], (labels[s], labels[s] + 1)) for s in shards]
    out = merge_eval_outputs(parts)
    np.testing.assert_array_equal(out.predictions, preds)
    np.testing.assert_array_equal(out.label_ids[0], labels)
    np.testing.assert_array_equal(out.label_ids[1], labels + 1)
    assert out.num_samples == n and out.loss == pytest.approx(float(np.mean(preds)))


def test_padded_shards_count_each_sample_once():
    # training-style shards pad the permutation: index 0 comes twice; the merge keeps one
    n, world = 5, 2
    shards = [ResumableBatchSampler(n, 4, shuffle=True, seed=3, rank=r, world_size=world).indices()
              for r in range(world)]
    assert sorted(shards[0] + shards[1]) != list(range(n))  # one sample twice
    preds = np.arange(n) ** 2
    out = merge_eval_outputs([(None, len(s), s, preds[s], None) for s in shards])
    np.testing.assert_array_equal(out.predictions, preds)
    assert out.num_samples == n and out.loss is None and out.label_ids is None


def test_average_tokens_across_devices(tmp_path):
    """A loss normalised by num_items_in_batch (Hugging Face's meaning): True counts the window's
    label tokens over both processes, so two processes train like one with their joint batch;
    False normalises each process by its own tokens (DDP then averages the two token means)."""
    ddp = launch(tmp_path / "ddp", batch=2, items=[True, False])
    assert ddp.returncode == 0, ddp.output[-6000:]
    script = runpy.run_path(str(SCRIPT))  # the single-process reference runs here, in this process
    script["train_items"]({"out": str(tmp_path / "single"), "batch": 4, "items": [True]})
    ref = json.loads((tmp_path / "single" / "result_rank0.json").read_text())["True"]
    runs = {average: (ddp.result(0)[average], ddp.result(1)[average]) for average in ("True", "False")}

    def window_sums(run, key):  # per optimizer step: 2 micro-batches of 2 per process
        return np.add.reduceat(run[key], range(0, len(run[key]), 2))

    # True: both processes' models got the joint count, and the weights and losses are the single run's
    r0, r1 = runs["True"]
    joint = window_sums(r0, "targets") + window_sums(r1, "targets")
    assert r0["seen"] == r1["seen"] == np.repeat(joint, 2).tolist()
    assert np.repeat(window_sums(ref, "targets"), 2).tolist() == ref["seen"]
    assert window_sums(ref, "targets").tolist() == joint.tolist()  # the same global windows
    for name, value in r0["weights"].items():
        np.testing.assert_allclose(value, r1["weights"][name], rtol=0, atol=0)
        np.testing.assert_allclose(value, ref["weights"][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r0["losses"], ref["losses"], rtol=1e-5)
    assert r0["training_loss"] == pytest.approx(ref["training_loss"], rel=1e-5)
    # False: each process's count is its own; the logged loss is the mean of the two token means
    f0, f1 = runs["False"]
    for run in (f0, f1):
        assert run["seen"] == np.repeat(window_sums(run, "targets"), 2).tolist()
    means = [window_sums(run, "sums") / window_sums(run, "targets") for run in (f0, f1)]
    np.testing.assert_allclose(f0["losses"], (means[0] + means[1]) / 2, rtol=1e-5)
    assert window_sums(f0, "targets").tolist() != window_sums(f1, "targets").tolist()  # unequal shares
    assert not np.allclose(f0["weights"]["head.weight"], r0["weights"]["head.weight"], rtol=1e-4)
