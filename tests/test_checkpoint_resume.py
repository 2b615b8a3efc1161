"""Exact resume after a real SIGKILL: mid-epoch, at an epoch boundary and in the middle of a save.

Each run is a child process (this file run as a script). The killed run dies by
``os.kill(os.getpid(), SIGKILL)``; the resumed run continues with ``resume_from_checkpoint=True``.
Its final weights must be bit-identical to an uninterrupted run's, with dropout, shuffling,
gradient accumulation 2 (and a short last window) and a cosine schedule with warm-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import checkpoint_steps

HERE = Path(__file__).resolve()
STEPS_PER_EPOCH = 4  # 26 samples / batch 4 = 7 micro-batches; windows of 2, 2, 2, 1
TOTAL_STEPS = 12  # 3 epochs


def child(out: str, kill: str, at: int, resume: bool) -> None:
    """Train into *out*, resuming from its newest checkpoint when *resume*; die at the end of step
    *at* (``kill="step"``), right after the first file of checkpoint-*at* is written
    (``kill="save"``) or just before the complete checkpoint-*at* is renamed into place
    (``kill="publish"``); the final weights go to ``out/final``."""
    import torch

    import hooktrain.plugins.checkpoint as checkpoint
    from hooktrain import Trainer, TrainingArguments, hookimpl

    class Items(torch.utils.data.Dataset):
        def __init__(self, n: int):
            g = torch.Generator().manual_seed(3)
            self.x = torch.randn(n, 8, generator=g)
            self.y = self.x[:, :4].argmax(1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 4)
            )

        def forward(self, x, labels):
            logits = self.body(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    class KillAtStep:
        @hookimpl
        def on_step_end(self, state):
            if state.global_step == at:
                os.kill(os.getpid(), signal.SIGKILL)

    plugins = [KillAtStep()] if kill == "step" else []
    if kill == "save":
        write_file = checkpoint.write_file

        def write_then_die(path, *rest):
            record = write_file(path, *rest)
            if path.parent.name == f".tmp-checkpoint-{at}":
                os.kill(os.getpid(), signal.SIGKILL)
            return record

        checkpoint.write_file = write_then_die
    if kill == "publish":  # every file, the manifest and the fsyncs done; the rename not yet
        replace = os.replace

        def die_before_rename(src, dst, *rest, **kw):
            if os.path.basename(src) == f".tmp-checkpoint-{at}":
                os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst, *rest, **kw)

        checkpoint.os.replace = die_before_rename

    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out, num_train_epochs=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="cosine",
        warmup_ratio=0.25, save_strategy="steps", save_steps=1, logging_steps=1, seed=7,
        report_to="none", disable_tqdm=True,
    )
    trainer = Trainer(model=Net(), args=args, train_dataset=Items(26), plugins=plugins)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(os.path.join(out, "final"))
    trainer.save_state()


def run_child(out: Path, kill: str = "none", at: int = 0, resume: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE), str(out), kill, str(at), str(int(resume))],
        capture_output=True, text=True, env=env, timeout=120,
    )


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def assert_same_weights(expected_dir: Path, got_dir: Path, what: str) -> None:
    import torch

    expected, got = weights(expected_dir), weights(got_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs: {what}"


def step_logs(out: Path) -> dict[int, tuple[float, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: (e["loss"], e["learning_rate"]) for e in history if "learning_rate" in e}


def test_sigkill_at_several_points_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "uninterrupted"
    done = run_child(reference)
    assert done.returncode == 0, done.stderr
    assert checkpoint_steps(reference) == list(range(1, TOTAL_STEPS + 1))

    out = tmp_path / "killed"
    # (how it dies, at which step, the newest complete checkpoint it leaves, what that point is)
    stages = [
        ("step", 5, 4, "killed after the first step of epoch 2: resumes at an epoch boundary"),
        ("step", 7, 6, "killed mid-epoch: resumes mid-epoch, from a resumed run"),
        ("save", 10, 9, "killed while writing checkpoint-10: resumes from checkpoint-9"),
        ("publish", 11, 10, "killed with checkpoint-11 written but not renamed: resumes from checkpoint-10"),
    ]
    for i, (kill, at, newest, where) in enumerate(stages):
        killed = run_child(out, kill, at, resume=i > 0)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert checkpoint_steps(out) == list(range(1, newest + 1)), where
        partial = out / f".tmp-checkpoint-{at}"
        if kill == "save":
            assert partial.is_dir() and len(list(partial.iterdir())) == 1, "one file written, then killed"
            assert not (partial / "manifest.json").exists()
        if kill == "publish":  # complete, but never visible as checkpoint-11
            assert (partial / "manifest.json").is_file()
        for step in checkpoint_steps(out):  # every checkpoint so far equals the uninterrupted run's
            assert_same_weights(reference / f"checkpoint-{step}", out / f"checkpoint-{step}", f"step {step}, {where}")

    resumed = run_child(out, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".tmp-*")), "the killed save's directory is removed at the next start"
    assert checkpoint_steps(out) == list(range(1, TOTAL_STEPS + 1))
    for step in range(1, TOTAL_STEPS + 1):
        assert_same_weights(reference / f"checkpoint-{step}", out / f"checkpoint-{step}", f"step {step}")
    assert_same_weights(reference / "final", out / "final", "final weights")
    # the steps after the last resume saw the same data, dropout masks and learning rates
    ref_logs, logs = step_logs(reference), step_logs(out)
    for step in range(10, TOTAL_STEPS + 1):
        assert logs[step] == ref_logs[step], step


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])))
