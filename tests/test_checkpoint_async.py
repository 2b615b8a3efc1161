"""Checkpoints written in the background (``save_async``): what training sees, and what the disk holds.

The background persist is slowed down (a real one, with a pause before it copies the state and
before it fsyncs each file) so that training really runs on while a checkpoint is written, and a
save really comes due while another is in flight. Full-disk tests write to a real small tmpfs
(or, where mounting is not allowed, under a real file-size limit).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import ScriptedMetric, checkpoint_steps, tiny_trainer_parts

import hooktrain.checkpointing.snapshot as snapshot_module
import hooktrain.checkpointing.writer as writer_module
from hooktrain import CheckpointError, Trainer, TrainingArguments, hookimpl
from hooktrain.checkpointing import read_manifest, verify
from hooktrain.checkpointing.format import checkpoint_step
from hooktrain.checkpointing.integrity import digest_file
from hooktrain.checkpointing.writer import snapshot_fits


class Wider(torch.nn.Module):
    """A model with enough weights for the snapshot copies and the files to take a while."""

    def __init__(self, width: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))

    def forward(self, x, labels=None):
        logits = self.body(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


def make_trainer(out: Path, plugins=(), metric=None, width: int = 64, **overrides) -> Trainer:
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=8, save_steps=1,
                    report_to="none", disable_tqdm=True, logging_steps=100, learning_rate=0.05)
    settings.update(overrides)
    parts = tiny_trainer_parts(n=32)
    parts["model"] = Wider(width)
    trainer = Trainer(args=TrainingArguments(**settings), plugins=list(plugins), compute_metrics=metric, **parts)
    if metric is not None:
        metric.trainer = trainer
    return trainer


@pytest.fixture
def slow_persist(monkeypatch):
    """Pause each background persist before it copies the state (the training thread must not
    step meanwhile) and before each file is fsync'd (training goes on, the next save comes due)."""
    copy, seal = snapshot_module.Stager.finish_deferred, writer_module.HashingWriter.seal

    def late_copy(self):
        time.sleep(0.05)
        copy(self)

    def late_seal(self):
        time.sleep(0.02)
        return seal(self)

    monkeypatch.setattr(snapshot_module.Stager, "finish_deferred", late_copy)
    monkeypatch.setattr(writer_module.HashingWriter, "seal", late_seal)


class Watcher:
    """Records the weights after every optimizer step, and checks every ``on_save``: on the
    training thread, after the commit, in step order."""

    def __init__(self, out: Path):
        self.out = out
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.saves: list[tuple[int, int]] = []  # (checkpoint step, global_step when announced)
        self.problems: list[str] = []

    @hookimpl
    def on_step_end(self, trainer, state):
        self.weights[state.global_step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    @hookimpl
    def on_save(self, state, checkpoint_dir):
        path = Path(checkpoint_dir)
        step = checkpoint_step(path)
        if threading.current_thread() is not threading.main_thread():
            self.problems.append(f"on_save of {path.name} on thread {threading.current_thread().name}")
        if not (path / "manifest.json").is_file() or verify(path):
            self.problems.append(f"on_save of {path.name} before it was committed: {verify(path)}")
        if self.saves and step <= self.saves[-1][0]:
            self.problems.append(f"on_save of {path.name} after checkpoint-{self.saves[-1][0]}")
        self.saves.append((step, state.global_step))


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


# ---- the life cycle ---------------------------------------------------------------------------


def test_background_saves_are_untorn_announced_after_commit_and_waited_for(tmp_path, slow_persist, caplog):
    watcher = Watcher(tmp_path)
    trainer = make_trainer(tmp_path, plugins=[watcher])
    with caplog.at_level(logging.INFO, logger="hooktrain"):
        trainer.train()
    assert watcher.problems == []
    # every save was announced once, in order; all but the final one at a later step boundary
    assert [s for s, _ in watcher.saves] == list(range(1, 9))
    assert all(at > step for step, at in watcher.saves[:-1]) and watcher.saves[-1] == (8, 8)
    # no torn snapshot: each checkpoint holds the weights right after its step, although the
    # training thread went on while it was written
    for step in range(1, 9):
        saved = checkpoint_weights(tmp_path / f"checkpoint-{step}")
        for name, value in watcher.weights[step].items():
            assert torch.equal(saved[name], value), (step, name)
        assert verify(tmp_path / f"checkpoint-{step}") == []
    # a save came due while another was being written: it waited, and that was logged and counted
    summary = trainer.state.log_history[-1]
    assert summary["checkpoint_saves"] == 8 and summary["checkpoint_save_waits"] >= 1
    assert summary["checkpoint_snapshot_bytes"] > 0
    assert any("came due while" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob(".tmp-*"))


def test_save_async_false_saves_on_the_spot(tmp_path):
    watcher = Watcher(tmp_path)
    trainer = make_trainer(tmp_path, plugins=[watcher], max_steps=4, save_async=False)
    trainer.train()
    assert watcher.problems == []
    assert watcher.saves == [(1, 1), (2, 2), (3, 3), (4, 4)]  # each announced at its own step
    assert "checkpoint_saves" not in trainer.state.log_history[-1]


@pytest.mark.parametrize("limit", [1, 2])
def test_rotation_under_async_keeps_the_newest_committed_and_the_best(tmp_path, slow_persist, limit):
    # the best evaluation is at step 2; later ones are worse
    metric = ScriptedMetric({2: 0.9}, name="accuracy", default=0.1)

    class Check:
        def __init__(self):
            self.announced: list[int] = []
            self.problems: list[str] = []

        @hookimpl
        def on_save(self, checkpoint_dir):
            self.announced.append(checkpoint_step(checkpoint_dir))

        @hookimpl
        def on_step_end(self, state):
            on_disk = checkpoint_steps(tmp_path)
            if self.announced and self.announced[-1] not in on_disk:
                self.problems.append(f"step {state.global_step}: newest committed {self.announced[-1]} gone: {on_disk}")
            if 2 in self.announced and 2 not in on_disk:
                self.problems.append(f"step {state.global_step}: the best (checkpoint-2) gone: {on_disk}")

    check = Check()
    trainer = make_trainer(tmp_path, plugins=[check], metric=metric, eval_strategy="steps", eval_steps=1,
                           save_total_limit=limit, metric_for_best_model="accuracy",
                           load_best_model_at_end=True)
    trainer.train()
    assert check.problems == []
    assert trainer.state.best_global_step == 2
    assert checkpoint_steps(tmp_path) == [2, 8]  # the best counts toward the limit (docs/checkpoints.md)
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")


# ---- failures ---------------------------------------------------------------------------------


def _checkpoint_bytes(out: Path) -> int:
    """The bytes a checkpoint of this set-up takes on a tmpfs (whole pages per file)."""
    make_trainer(out, max_steps=1, width=256, save_async=False).train()
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in (out / "checkpoint-1").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """``(directory, limit)``: a tmpfs with room for two checkpoints and a half (``limit`` None),
    or where mounting is not allowed a plain directory and a file-size limit to apply."""
    size = _checkpoint_bytes(tmp_path / "probe")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 5 // 2}", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0 and os.path.ismount(mount)
    try:
        yield mount, (None if mounted else 4096)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)


class FillTheDiskAfter:
    """Under a file-size limit (no tmpfs): lower it after *step*, so that later saves fail."""

    def __init__(self, step: int, limit: int | None):
        self.step, self.limit, self.before = step, limit, None

    @hookimpl
    def on_step_end(self, state):
        if self.limit is not None and state.global_step == self.step and self.before is None:
            self.before = resource.getrlimit(resource.RLIMIT_FSIZE)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.before[1]))

    def restore(self):
        if self.before is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.before)


@pytest.mark.parametrize("save_async", [True, False])
def test_full_disk_says_so_and_keeps_the_earlier_checkpoints(small_disk, caplog, save_async):
    out, limit = small_disk
    fill = FillTheDiskAfter(5, limit)
    trainer = make_trainer(out, plugins=[fill], width=256, save_steps=2, save_async=save_async)
    try:
        with caplog.at_level(logging.WARNING, logger="hooktrain"), pytest.raises(CheckpointError) as caught:
            trainer.train()
    finally:
        fill.restore()
    message = str(caught.value)
    full = "disk full" if limit is None else "file size limit reached"
    assert full in message and "checkpoint-6" in message, message
    assert "bytes" in message and "free" in message
    assert "the earlier checkpoints are intact (checkpoint-2, checkpoint-4)" in message
    if save_async:
        assert "background save of checkpoint-6 failed" in message
    # stopped at the next boundary after the failure; on a slow machine that is step 8, whose save
    # waits for the failing one in flight
    assert trainer.state.global_step in ((6, 7, 8) if save_async else (6,))
    assert checkpoint_steps(out) == [2, 4]
    assert verify(out / "checkpoint-2") == [] and verify(out / "checkpoint-4") == []
    assert not list(out.glob(".tmp-*")), "the failed save's temporary directory is removed"
    if limit is None:  # on the tmpfs the free space was known to be short before writing
        assert any("checkpoint-6 needs about" in r.getMessage() for r in caplog.records)


def test_a_failing_background_persist_stops_training_at_the_next_boundary(tmp_path, monkeypatch):
    real = writer_module.publish

    def refuse(tmp, final):
        if final.name == "checkpoint-6":
            raise PermissionError(13, "Permission denied", str(final))
        return real(tmp, final)

    monkeypatch.setattr(writer_module, "publish", refuse)
    watcher = Watcher(tmp_path)
    trainer = make_trainer(tmp_path, plugins=[watcher], save_steps=3)
    with pytest.raises(CheckpointError, match=r"background save of checkpoint-6 failed: could not write .*"
                                              r"checkpoint-6: PermissionError.*checkpoints are intact \(checkpoint-3\)"):
        trainer.train()
    assert trainer.state.global_step in (7, 8)  # the next boundary, or the final save that waits for it
    assert checkpoint_steps(tmp_path) == [3] and verify(tmp_path / "checkpoint-3") == []
    assert not list(tmp_path.glob(".tmp-*"))
    assert [s for s, _ in watcher.saves] == [3] and watcher.problems == []


# ---- formats --------------------------------------------------------------------------------------


def test_sha256_manifests_of_earlier_versions_still_verify_and_resume(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_steps=2).train()
    ckpt = tmp_path / "checkpoint-2"
    manifest = read_manifest(ckpt)
    assert all(set(r) == {"size", "xxh3_128"} for r in manifest["files"].values())
    for name, record in manifest["files"].items():  # what an earlier version wrote
        manifest["files"][name] = {"size": record["size"], "sha256": digest_file(ckpt / name, "sha256")}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert verify(ckpt) == []
    resumed = make_trainer(tmp_path, max_steps=3, save_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    data = bytearray((ckpt / "optimizer.pt").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "optimizer.pt").write_bytes(bytes(data))
    assert verify(ckpt) == [f"{ckpt / 'optimizer.pt'}: sha256 differs from the manifest (corrupted or modified)"]


def test_snapshot_memory_check():
    assert snapshot_fits(10, None) and snapshot_fits(75, 100) and not snapshot_fits(76, 100)


