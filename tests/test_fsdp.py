"""Sharded training (FSDP2): real ``torchrun`` launches of gloo processes on the CPU.

One launch of ``tests/dist_scripts/train_fsdp.py`` trains the same model with DDP and then with
``fsdp='full_shard'`` in the same two processes; the tests compare what each run wrote. The
argument checks run in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hooktrain import ArgumentError, Trainer, TrainingArguments

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    common = dict(eval=True, ga=2, steps=8)  # two micro-batches a step; clipping at 0.5 acts
    launch = torchrun(2, [
        dict(name="ddp", out=str(base / "ddp"), **common),
        dict(name="fsdp", out=str(base / "fsdp"), fsdp="full_shard", save_model=True, **common),
        dict(name="gc", out=str(base / "gc"), fsdp="full_shard", gc=True, **common),
    ])
    assert launch.returncode == 0, launch.stdout[-6000:]
    return base, launch.stdout


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


def test_gradient_checkpointing_composes_with_fsdp(runs):
    base, _ = runs
    fsdp, gc = result(base / "fsdp", "fsdp", 0), result(base / "gc", "gc", 0)
    assert losses(gc) == losses(fsdp)
    for name, value in arrays(gc["weights"]).items():
        np.testing.assert_array_equal(value, arrays(fsdp["weights"])[name])


def test_save_model_writes_consolidated_weights(runs):
    base, _ = runs
    fsdp = result(base / "fsdp", "fsdp", 0)
    assert sorted(p.name for p in (base / "fsdp").iterdir() if not p.name.startswith("result_")) == [
        "model.safetensors", "training_args.json"]
    # a plain, unsharded model loaded from it gives the sharded model's outputs
    np.testing.assert_array_equal(np.asarray(fsdp["plain_outputs"]), np.asarray(fsdp["outputs"]))


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
