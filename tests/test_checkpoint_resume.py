"""Exact resume after a real SIGKILL: mid-epoch, at an epoch boundary, and at every stage of a
checkpoint being written in the background (``save_async``).

Each run is a child process (this file run as a script, forked from a process that imported torch:
tests/forkserver.py). The killed run dies by
``os.kill(os.getpid(), SIGKILL)``; the resumed run continues with ``resume_from_checkpoint=True``.
Its final weights must be bit-identical to an uninterrupted run's, with dropout, shuffling,
gradient accumulation 2 (and a short last window) and a cosine schedule with warm-up. The
uninterrupted reference saves synchronously, so the background checkpoints are also compared
with synchronous ones.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from helpers import checkpoint_steps

HERE = Path(__file__).resolve()
STEPS_PER_EPOCH = 4  # 26 samples / batch 4 = 7 micro-batches; windows of 2, 2, 2, 1
TOTAL_STEPS = 12  # 3 epochs


def child(out: str, kill: str, at: int, resume: bool) -> None:
    """Train into *out*, resuming from its newest checkpoint when *resume*; die at the end of step
    *at* once the save in flight is committed (``kill="step"``), or while checkpoint-*at* is
    persisted in the background (``before_files``, ``mid_file``, ``before_manifest``,
    ``before_rename``); ``kill="sync"`` trains without
    dying and saves synchronously. The final weights go to ``out/final``."""
    import threading

    import torch

    import hooktrain.checkpointing.writer as writer
    from hooktrain import Trainer, TrainingArguments, hookimpl
    from hooktrain.plugins.checkpoint import wait_for_checkpoint

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
        def on_step_end(self, trainer, state):
            if state.global_step == at:
                wait_for_checkpoint(trainer)  # the newest visible checkpoint is then the last step's
                os.kill(os.getpid(), signal.SIGKILL)

    def die_if(point: str, path: Path) -> None:
        """SIGKILL at *point* of checkpoint-*at*'s persist, which must run in the background."""
        if kill == point and path.name == f".tmp-checkpoint-{at}":
            assert threading.current_thread() is not threading.main_thread(), "not a background save"
            os.kill(os.getpid(), signal.SIGKILL)

    class Killing(writer.HashingWriter):
        def __init__(self, path, *rest, **options):
            die_if("before_files", path.parent)
            if path.name == "manifest.json":
                die_if("before_manifest", path.parent)
            super().__init__(path, *rest, **options)

        def write(self, data):
            if self.path.name == "optimizer.pt" and self.size > 0:
                die_if("mid_file", self.path.parent)  # some of its bytes written
            return super().write(data)

    writer.HashingWriter = Killing  # type: ignore[misc]
    replace = os.replace

    def die_before_rename(src, dst, *rest, **kw):  # every file, the manifest and the fsyncs done
        die_if("before_rename", Path(src))
        return replace(src, dst, *rest, **kw)

    os.replace = die_before_rename

    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out, num_train_epochs=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="cosine",
        warmup_ratio=0.25, save_strategy="steps", save_steps=1, logging_steps=1, seed=7,
        report_to="none", disable_tqdm=True, save_async=kill != "sync",
    )
    trainer = Trainer(model=Net(), args=args, train_dataset=Items(26),
                      plugins=[KillAtStep()] if kill == "step" else [])
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(os.path.join(out, "final"))
    trainer.save_state()


def run_child(fork_servers, out: Path, kill: str = "none", at: int = 0, resume: bool = False):
    """This file as a script, in a process forked from one that imported torch (tests/forkserver.py)."""
    env = {**os.environ, "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    return fork_servers(env).run(HERE, out, kill, at, int(resume), timeout=120)


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


def test_sigkill_at_several_points_then_resume_is_bit_identical(tmp_path, fork_servers):
    reference = tmp_path / "uninterrupted"
    done = run_child(fork_servers, reference, "sync")
    assert done.returncode == 0, done.stderr
    assert checkpoint_steps(reference) == list(range(1, TOTAL_STEPS + 1))

    out = tmp_path / "killed"
    # (how it dies, at which step, what that point is); it leaves checkpoint-1 … checkpoint-(at - 1)
    stages = [
        ("step", 3, "killed after step 3: resumes mid-epoch"),
        ("before_files", 5, "killed with checkpoint-5's directory made, before any file: resumes at an "
                            "epoch boundary, from a resumed run"),
        ("mid_file", 7, "killed halfway through checkpoint-7's optimizer.pt"),
        ("before_manifest", 9, "killed with checkpoint-9's files written and fsync'd, before the manifest"),
        ("before_rename", 11, "killed with checkpoint-11 complete, before the rename"),
    ]
    for i, (kill, at, where) in enumerate(stages):
        killed = run_child(fork_servers, out, kill, at, resume=i > 0)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert checkpoint_steps(out) == list(range(1, at)), where
        partial = out / f".tmp-checkpoint-{at}"
        left = sorted(p.name for p in partial.iterdir()) if partial.is_dir() else None
        expected_left = {
            "step": None,
            "before_files": [],
            "before_manifest": ["model.safetensors", "optimizer.pt", "plugin_state.json", "rng_state.pth",
                                "scheduler.pt", "trainer_state.json", "training_args.json"],
        }
        if kill in expected_left:
            assert left == expected_left[kill], where
        elif kill == "mid_file":
            assert left is not None and "optimizer.pt" in left and "manifest.json" not in left, where
        else:  # complete, but never visible as checkpoint-11
            assert left is not None and "manifest.json" in left, where
        for step in checkpoint_steps(out):  # every checkpoint so far equals the uninterrupted run's
            assert_same_weights(reference / f"checkpoint-{step}", out / f"checkpoint-{step}", f"step {step}, {where}")

    resumed = run_child(fork_servers, out, resume=True)
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
