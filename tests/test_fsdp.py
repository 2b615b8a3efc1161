"""Sharded training (FSDP2): real ``torchrun`` launches of gloo processes on the CPU.

Three launches of ``tests/dist_scripts/train_fsdp.py``, shared by the tests (each launch trains
several runs one after the other in the same processes):

1. 2 processes: DDP, then ``fsdp='full_shard'`` with checkpoints every 3 steps and
   ``save_model()``, then the same with gradient checkpointing, ``load_best_model_at_end`` and
   background saves,
   then 3 steps without accumulation (checkpoint-3 is mid-epoch), then the fsdp run again in which
   rank 1 SIGKILLs itself after step 5 (the launch fails there);
2. 1 process: resume the checkpoint-3 of the 3-step run (2 → 1, by epochs), then a fresh
   one-process fsdp run without accumulation;
3. 2 processes: resume the killed run (the same world size), then resume the checkpoint-3 of the
   one-process run (1 → 2, mid-epoch, at a sample count that is not a whole batch of both processes).

The argument checks and the refusal of a tampered checkpoint run in-process.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hooktrain import ArgumentError, Trainer, TrainingArguments
from hooktrain.checkpointing import read_manifest, verify
from hooktrain.checkpointing.sharded import MetadataUnpickler, load_sharded
from hooktrain.core.data import ResumableBatchSampler
from hooktrain.core.errors import CheckpointError
from hooktrain.core.plan import StepPlan

SCRIPT = Path(__file__).parent / "dist_scripts" / "train_fsdp.py"
LAUNCH_TIMEOUT = 90  # seconds per torchrun launch (several runs each); a hang fails the test

#: fp32 tolerance of FSDP against DDP: the same arithmetic, but the gradient reduce-scatter adds
#: in another order than DDP's all-reduce (measured differences: about 1e-7)
RTOL, ATOL = 1e-5, 1e-6


def torchrun(nproc: int, runs: list[dict], timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--monitor_interval=0.1", str(SCRIPT), json.dumps(runs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not end within {timeout} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


def result(out: Path, name: str, rank: int) -> dict:
    return json.loads((out / f"result_{name}_rank{rank}.json").read_text())


def losses(res: dict) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in res["log_history"] if "loss" in e]


def arrays(weights: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in weights.items()}


COMMON = dict(eval=True, ga=2, steps=8)  # two micro-batches a step; clipping at 0.5 acts
SHARDED = dict(fsdp="full_shard", save_steps=3, **COMMON)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    launch = torchrun(2, [
        dict(name="ddp", out=str(base / "ddp"), **COMMON),
        dict(name="fsdp", out=str(base / "fsdp"), save_model=True, **SHARDED),
        dict(name="gc", out=str(base / "gc"), gc=True, best=True, save_async=True, **SHARDED),
        dict(name="two", out=str(base / "two"), **{**SHARDED, "ga": 1, "steps": 3}),
        dict(name="killed", out=str(base / "killed"), kill_at=5, **SHARDED),
    ])
    done = [(base / name / f"result_{name}_rank{r}.json").exists() for name in ("ddp", "fsdp", "gc", "two")
            for r in (0, 1)]
    assert all(done), launch.stdout[-6000:]
    assert launch.returncode != 0 and "Signal 9 (SIGKILL)" in launch.stdout, launch.stdout[-4000:]
    assert not list((base / "killed").glob("result_*"))
    return base, launch.stdout


@pytest.fixture(scope="module")
def resumed(runs):
    base, _ = runs
    one = torchrun(1, [
        dict(name="from2", out=str(base / "from2"), resume=str(base / "two" / "checkpoint-3"),
             **{**SHARDED, "ga": 1, "steps": -1, "epochs": 2, "eval": False}),
        dict(name="one", out=str(base / "one"), **{**SHARDED, "ga": 1}),
    ])
    assert one.returncode == 0, one.stdout[-6000:]
    two = torchrun(2, [
        dict(name="killed", out=str(base / "killed"), resume=True, **SHARDED),
        dict(name="from1", out=str(base / "from1"), resume=str(base / "one" / "checkpoint-3"),
             **{**SHARDED, "ga": 1, "steps": 12}),
    ])
    assert two.returncode == 0, two.stdout[-6000:]
    return base, one.stdout, two.stdout


def test_fsdp_trains_like_ddp(runs):
    base, output = runs
    ddp, fsdp = result(base / "ddp", "ddp", 0), result(base / "fsdp", "fsdp", 0)
    assert (ddp["wrapped"], fsdp["wrapped"]) == ("DistributedDataParallel", "FSDPMLP")
    assert "fsdp: full_shard over 2 processes (cpu mesh), 3 units + root, fp32" in output
    for rank in (0, 1):
        got, want = losses(result(base / "fsdp", "fsdp", rank)), losses(ddp)
        assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=RTOL)
    norms = [(e["grad_norm"], f["grad_norm"]) for e, f in zip(ddp["log_history"], fsdp["log_history"], strict=True)
             if "grad_norm" in e]
    assert max(n for n, _ in norms) > 0.5  # clipping acted: the norm over all shards was measured
    np.testing.assert_allclose([f for _, f in norms], [d for d, _ in norms], rtol=RTOL)
    want = arrays(ddp["weights"])
    for name, value in arrays(fsdp["weights"]).items():  # gathered from the shards
        np.testing.assert_allclose(value, want[name], rtol=RTOL, atol=ATOL)
    # evaluation: rank 0 has 4 batches and rank 1 has 3; each forward gathers parameters from both
    for rank in (0, 1):
        ev = result(base / "fsdp", "fsdp", rank)["eval_after_train"]
        assert ev["eval_loss"] == pytest.approx(ddp["eval_after_train"]["eval_loss"], rel=RTOL)


def test_each_process_holds_half_the_state(runs):
    base, _ = runs
    ddp = result(base / "ddp", "ddp", 0)
    for rank in (0, 1):
        fsdp = result(base / "fsdp", "fsdp", rank)
        for key in ("param_bytes", "grad_bytes", "optim_bytes"):
            assert 0.45 <= fsdp[key] / ddp[key] <= 0.55, (rank, key, fsdp[key], ddp[key])


def test_gradient_checkpointing_and_the_best_model_compose_with_fsdp(runs):
    base, _ = runs
    fsdp, gc = result(base / "fsdp", "fsdp", 0), result(base / "gc", "gc", 0)
    assert losses(gc) == losses(fsdp)  # the checkpointed blocks compute the same gradients
    for name, value in arrays(gc["saved"]["8"]["weights"]).items():  # the final save is synchronous
        np.testing.assert_array_equal(value, arrays(fsdp["weights"])[name])
    # load_best_model_at_end read the best sharded checkpoint back into the sharded model; it was
    # written in the background from a copy of the shards taken at step 3, while training went on
    best = gc["best_global_step"]
    assert best in (3, 6)  # not the last step: the loaded weights differ from the final ones
    assert "checkpoint_saves" in json.dumps(gc["log_history"])  # the background-save summary
    for name, value in arrays(gc["weights"]).items():
        np.testing.assert_array_equal(value, arrays(fsdp["saved"][str(best)]["weights"])[name])


def test_save_model_writes_consolidated_weights(runs):
    base, _ = runs
    fsdp = result(base / "fsdp", "fsdp", 0)
    assert sorted(p.name for p in (base / "fsdp").iterdir() if not p.name.startswith("result_")) == [
        "checkpoint-3", "checkpoint-6", "checkpoint-8", "model.safetensors", "training_args.json"]
    # a plain, unsharded model loaded from it gives the sharded model's outputs
    np.testing.assert_array_equal(np.asarray(fsdp["plain_outputs"]), np.asarray(fsdp["outputs"]))


# ---- sharded checkpoints -------------------------------------------------------------------------


def test_checkpoints_hold_every_shard_in_the_manifest(runs):
    base, _ = runs
    ckpt = base / "fsdp" / "checkpoint-3"
    files = set(read_manifest(ckpt)["files"])
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "rng_state_0.pth", "rng_state_1.pth",
            "scheduler.pt", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "optimizer.pt"}  # sharded instead
    assert files | {"manifest.json"} == {p.name for p in ckpt.iterdir()}
    assert verify(ckpt) == []
    assert not [p for p in (base / "fsdp").iterdir() if p.name.startswith(".tmp-")]


def test_kill_and_resume_with_the_same_processes_is_exact(runs, resumed):
    base, *_ = resumed
    assert sorted(p.name for p in (base / "killed").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6",
                                                                            "checkpoint-8"]
    whole = result(base / "fsdp", "fsdp", 0)
    for rank in (0, 1):
        again = result(base / "killed", "killed", rank)
        assert again["resumed"]["step"] == 3
        assert [x for x in losses(again) if x[0] > 3] == [x for x in losses(whole) if x[0] > 3]
        if rank == 0:  # the gathered weights: on the main process
            for name, value in arrays(again["weights"]).items():
                np.testing.assert_array_equal(value, arrays(whole["weights"])[name])


def epoch_samples(res: dict, epoch: int, until: int | None = None) -> list[int]:
    """The training samples one process read in *epoch* (up to step *until*)."""
    return [i for step, (at, read) in res["samples"].items()
            if math.ceil(at) - 1 == epoch and (until is None or int(step) <= until) for i in read]


@pytest.mark.parametrize(("run", "source", "saved_by", "last"), [("from2", "two", 2, 21), ("from1", "one", 1, 12)])
def test_resume_with_another_number_of_processes_reshards(resumed, run, source, saved_by, last):
    base, one_output, two_output = resumed
    saved = result(base / source, source, 0)["saved"]["3"]
    got = result(base / run, run, 0)
    assert got["world_size"] == 3 - saved_by
    assert got["resumed"]["step"] == 3
    # the weights and the optimizer state are those of the checkpoint, whatever the sharding
    for key in ("weights", "optimizer"):
        want = arrays(saved[key])
        assert set(arrays(got["resumed"][key])) == set(want)
        for name, value in arrays(got["resumed"][key]).items():
            np.testing.assert_array_equal(value, want[name])
    after = [(s, v) for s, v in losses(got) if s > 3]  # the history up to step 3 is the checkpoint's
    assert [s for s, _ in after] == list(range(4, last + 1)) and all(np.isfinite(v) for _, v in after)
    assert got["max_steps"] == last
    output = one_output if run == "from2" else two_output
    assert f"world_size: {saved_by} in the checkpoint, {3 - saved_by} now (fsdp: the model and optimizer " \
           "state are resharded" in output
    # the data: the samples of epoch 0 read before the change and after it are each sample once
    before = [i for r in range(saved_by) for i in epoch_samples(result(base / source, source, r), 0, until=3)]
    rest = [i for r in range(3 - saved_by) for i in epoch_samples(result(base / run, run, r), 0)]
    assert len(before) == 12 * saved_by  # 3 steps of 4 samples per process: mid-epoch
    assert sorted(before + rest) == list(range(48))
    assert f"epoch 0 goes on after the {12 * saved_by} of its 48 samples" in output
    if run == "from2":  # by epochs: the run ends with the next epoch, read whole by one process
        assert sorted(epoch_samples(got, 1)) == list(range(48))
        # 6 steps for the rest of epoch 0, 12 for epoch 1 (a fresh one-process run has 24 steps);
        # the schedule was built again for 21: linear decay from 0.02 to 0 after step 21
        lrs = {e["step"]: e["learning_rate"] for e in got["log_history"] if "learning_rate" in e}
        assert lrs[4] == pytest.approx(0.02 * 18 / 21) and lrs[21] == pytest.approx(0.02 / 21)
    else:  # max_steps given: it stays; the 36 samples left are dealt to two processes, 18 each
        assert len(rest) == 36 and len(epoch_samples(got, 0)) == 18


def test_a_tampered_shard_index_is_refused(runs, tmp_path):
    base, _ = runs
    ckpt = tmp_path / "checkpoint-3"
    shutil.copytree(base / "fsdp" / "checkpoint-3", ckpt)
    manifest = read_manifest(ckpt)
    # the real index unpickles with the restricted unpickler ...
    meta = MetadataUnpickler(io.BytesIO((ckpt / ".metadata").read_bytes())).load()
    assert "model.net.0.weight" in meta.state_dict_metadata
    # ... a pickle that calls anything else does not
    with pytest.raises(pickle.UnpicklingError, match="posix.system is not allowed"):
        MetadataUnpickler(io.BytesIO(pickle.dumps(os.system))).load()
    # and a modified .metadata is refused before anything is read from it
    (ckpt / ".metadata").write_bytes(pickle.dumps(os.system))
    with pytest.raises(CheckpointError, match="differs from the manifest|bytes, the manifest says"):
        load_sharded(ckpt, manifest, torch.nn.Linear(2, 2))


# ---- settings that cannot work: refused when the arguments or the Trainer are built ----------


def test_bad_fsdp_settings_are_refused_together(tmp_path):
    with pytest.raises(ArgumentError) as info:
        TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard shard_grad_op ofload",
                          fsdp_config={"reshard_after_forward": "yes", "min_params": 1},
                          torch_compile=True)
    text = str(info.value)
    assert "unknown option 'ofload'" in text and "did you mean 'offload'" in text
    assert "'full_shard' and 'shard_grad_op' exclude each other" in text
    assert "fsdp_config['reshard_after_forward']='yes' is invalid" in text
    assert "unknown key 'min_params'" in text
    assert "with torch_compile=True is not supported" in text
    with pytest.raises(ArgumentError, match="fsdp_config is set but fsdp is empty"):
        TrainingArguments(output_dir=str(tmp_path), fsdp_config={"reshard_after_forward": True})


def test_fsdp_config_from_a_file_and_hugging_face_forms(tmp_path):
    path = tmp_path / "fsdp.yaml"
    path.write_text("fsdp_transformer_layer_cls_to_wrap: Linear\nreduce_dtype: bfloat16\n")
    args = TrainingArguments(output_dir=str(tmp_path), fsdp=True, fsdp_config=str(path))
    assert args.fsdp == ["full_shard"]
    assert args.fsdp_config == {"transformer_layer_cls_to_wrap": ["Linear"], "reduce_dtype": "bfloat16"}
    assert TrainingArguments(output_dir=str(tmp_path), fsdp="").fsdp == []


def test_fsdp_without_a_launcher_is_refused_at_trainer_build(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, fsdp="full_shard offload",
                             fsdp_config={"transformer_layer_cls_to_wrap": ["Block"]})
    with pytest.raises(ArgumentError) as info:
        Trainer(torch.nn.Sequential(torch.nn.Linear(2, 2)), args)
    text = str(info.value)
    assert "needs processes started by a launcher" in text and "torchrun --nproc_per_node=N" in text
    assert "'offload' moves the shards from GPU memory to the CPU" in text
    assert "names ['Block'], which are not module classes of Sequential" in text
    assert not torch.distributed.is_initialized()


# ---- the data position across a change in the number of processes (no processes needed) -------


def _loader(n: int, batch: int, world: int, rank: int = 0, drop_last: bool = False):
    sampler = ResumableBatchSampler(n, batch, seed=5, rank=rank, world_size=world, drop_last=drop_last)
    return torch.utils.data.DataLoader(range(n), batch_sampler=sampler)


def _steps(n: int, batch: int, ga: int, world: int, epoch: int, skip: int, drop_last: bool = False):
    """The indices each optimizer step reads (all processes) in the rest of *epoch* after *skip* samples."""
    per_rank = []
    for rank in range(world):
        sampler = _loader(n, batch, world, rank, drop_last).batch_sampler
        sampler.set_epoch(epoch)
        sampler.skip_samples(skip)
        per_rank.append(list(sampler))
    assert len({len(b) for b in per_rank}) == 1  # every process has as many batches
    return [[i for b in per_rank for batch_ in b[s:s + ga] for i in batch_] for s in range(0, len(per_rank[0]), ga)]


@pytest.mark.parametrize(("n", "batch", "ga", "old", "new", "drop_last"), [
    (56, 4, 2, 2, 1, False), (56, 4, 1, 1, 2, False), (45, 3, 2, 2, 3, False), (45, 2, 3, 3, 2, False),
    (10, 4, 1, 1, 4, False), (23, 2, 2, 4, 1, False), (7, 3, 1, 1, 2, False), (3, 1, 1, 1, 4, False),
    (50, 4, 2, 1, 3, True), (31, 2, 1, 3, 2, True),
])
def test_a_resume_with_other_processes_reads_the_rest_of_the_epoch_once(n, batch, ga, old, new, drop_last):
    spe_old = StepPlan.of(_loader(n, batch, old, drop_last=drop_last), -1, 2, ga).steps_per_epoch
    spe_new = StepPlan.of(_loader(n, batch, new, drop_last=drop_last), -1, 2, ga).steps_per_epoch
    for stop in range(1, 2 * spe_old):  # every step of two epochs, boundaries included
        origin = StepPlan.of(_loader(n, batch, old, drop_last=drop_last), -1, 2, ga).record()
        assert origin == {"global_step": 0, "epoch": 0, "samples": 0, "world_size": old}
        plan = StepPlan.of(_loader(n, batch, new, drop_last=drop_last), -1, 2, ga, origin, stop)
        epoch, consumed = plan.position(stop)
        assert epoch == stop // spe_old or (consumed == 0 and epoch == stop // spe_old + 1)
        read = [i for s in _steps(n, batch, ga, old, epoch, 0, drop_last)[: stop - epoch * spe_old] for i in s]
        assert len(read) == consumed  # the samples the old processes had read, counted exactly
        rest = _steps(n, batch, ga, new, epoch, consumed, drop_last)
        assert len(rest) == plan.rest(consumed).steps_per_epoch
        assert plan.rest(consumed).epoch_length == plan.batches_per_epoch  # state.epoch: over the whole epoch
        seen = read + [i for s in rest for i in s]
        if drop_last:  # the tail of each process's shard may be dropped; twice only what pads the rest
            assert len(seen) - len(set(seen)) <= -(n - consumed) % new
        else:  # each sample once, plus the padding of the rest, taken from the order's start
            assert sorted(set(seen)) == list(range(n))
            assert len(seen) - n == -(n - consumed) % new
        # the run ends with the last epoch, after every step of it on the new processes
        assert plan.max_steps == stop + len(rest) + (1 - epoch) * spe_new
        assert plan.record() == {"global_step": stop, "epoch": epoch, "samples": consumed, "world_size": new}
        # resumed again later with the same processes: the same position, from the recorded origin
        again = StepPlan.of(_loader(n, batch, new, drop_last=drop_last), -1, 2, ga, plan.record(), stop + 1)
        assert again.max_steps == plan.max_steps and again.position(stop + 1) == plan.position(stop + 1)
        assert plan.position(plan.max_steps - 1)[0] == 1
        # a fractional num_train_epochs: the last epoch has as many steps as in a run on these processes
        half = StepPlan.of(_loader(n, batch, new, drop_last=drop_last), -1, 1.5, ga, origin, stop)
        if epoch == 0:
            assert half.max_steps == stop + len(rest) + math.ceil(1.5 * spe_new) - spe_new
        # max_steps given: it stays
        assert StepPlan.of(_loader(n, batch, new, drop_last=drop_last), 5 * spe_old, 2, ga, origin, stop).max_steps \
            == 5 * spe_old


@pytest.mark.parametrize(("n", "batch", "world"), [(56, 4, 2), (45, 3, 3), (7, 2, 4), (10, 3, 1)])
def test_skipping_whole_batches_of_samples_is_skipping_batches(n, batch, world):
    # a resume with the same processes: skip_samples is today's skip_batches, and the general path agrees
    for rank in range(world):
        sampler = _loader(n, batch, world, rank).batch_sampler
        sampler.set_epoch(1)
        for skip in range(len(sampler) + 1):
            sampler.skip_batches(skip)
            want = list(sampler)
            sampler.skip_samples(skip * batch * world)
            assert list(sampler) == want
            rest = sampler.indices(skip * batch * world) if skip else sampler.indices()
            assert [rest[i:i + batch] for i in range(0, len(rest), batch)] == want
