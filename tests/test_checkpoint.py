"""Checkpoints: layout, manifest and verification, fallback on corruption, no unpickling, rotation,
the overwrite guard, save_only_model, save_model, the save policies and ``hooktrain checkpoints``."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import ScriptedMetric, TinyRegressor, checkpoint_steps, tiny_trainer_parts

from hooktrain import ArgumentError, CheckpointError, Trainer, TrainingArguments, hookimpl
from hooktrain.checkpointing import load_model_weights, rotate_checkpoints, tidy_output_dir, verify
from hooktrain.checkpointing.format import FORMAT
from hooktrain.checkpoints_cli import main as checkpoints_main


def make_trainer(out: Path, plugins=(), model=None, n: int = 16, metric=None, **overrides) -> Trainer:
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=6, save_steps=2,
        report_to="none", disable_tqdm=True, logging_steps=100,
    )
    settings.update(overrides)
    parts = tiny_trainer_parts(n=n)
    if model is not None:
        parts["model"] = model
    trainer = Trainer(args=TrainingArguments(**settings), plugins=plugins, compute_metrics=metric, **parts)
    if metric is not None:
        metric.trainer = trainer
    return trainer


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


class Counter:
    """A plugin with state: counts optimizer steps, stored in checkpoints."""

    name = "counter"

    def __init__(self):
        self.count = 0
        self.loaded = None

    @hookimpl
    def on_step_end(self):
        self.count += 1

    @hookimpl
    def plugin_state(self):
        return "counter", {"count": self.count}

    @hookimpl
    def load_plugin_state(self, states):
        self.loaded = dict(states)
        self.count = states["counter"]["count"]


# ---- layout, manifest, verification ------------------------------------------------------------


def test_layout_manifest_and_contents(tmp_path):
    counter = Counter()
    trainer = make_trainer(tmp_path, plugins=[counter])
    trainer.train()
    assert checkpoint_steps(tmp_path) == [2, 4, 6]
    ckpt = tmp_path / "checkpoint-4"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.pt", "plugin_state.json", "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.json",
    ]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["global_step"] == 4 and manifest["world_size"] == 1
    assert set(manifest["versions"]) == {"hooktrain", "torch", "python"}
    assert set(manifest["files"]) == {p.name for p in ckpt.iterdir()} - {"manifest.json"}
    for name, record in manifest["files"].items():
        assert (ckpt / name).stat().st_size == record["size"]
    assert verify(ckpt) == []
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["max_steps"] == 6 and "log_history" in state
    assert TrainingArguments.from_json(ckpt / "training_args.json").max_steps == 6
    assert json.loads((ckpt / "plugin_state.json").read_text())["counter"] == {"count": 4}
    rng = torch.load(ckpt / "rng_state.pth", weights_only=True)  # plain containers and tensors only
    assert set(rng) >= {"python", "numpy", "cpu"}
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.load(ckpt / "scheduler.pt", weights_only=True)
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_restores_weights_optimizer_scheduler_state_and_plugin_state(tmp_path):
    first = make_trainer(tmp_path, plugins=[Counter()], max_steps=4)
    first.train()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}

    counter = Counter()
    second = make_trainer(tmp_path, plugins=[counter], max_steps=4)
    second.optimizer = second.plugin_manager.hook.create_optimizer(
        trainer=second, model=second.model, args=second.args)
    path = second.plugin_manager.hook.resume_checkpoint(trainer=second, checkpoint=True)
    assert path == tmp_path / "checkpoint-4"
    for name, value in second.model.state_dict().items():
        assert torch.equal(value, saved[name])
    assert second.state.global_step == 4 and second.state.log_history == first.state.log_history[:-1]
    assert counter.loaded == {"counter": {"count": 4}} and counter.count == 4
    assert second.optimizer.state_dict()["state"].keys() == first.optimizer.state_dict()["state"].keys()


def test_plugin_state_not_restored_when_disabled(tmp_path):
    make_trainer(tmp_path, plugins=[Counter()], max_steps=2).train()
    counter = Counter()
    trainer = make_trainer(tmp_path, plugins=[counter], max_steps=3,
                           restore_callback_states_from_checkpoint=False)
    trainer.train(resume_from_checkpoint=True)
    assert counter.loaded is None and counter.count == 1


def test_pytorch_model_bin_when_save_safetensors_is_off(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_safetensors=False).train()
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "pytorch_model.bin").is_file() and not (ckpt / "model.safetensors").exists()
    trainer = make_trainer(tmp_path, max_steps=4, save_safetensors=False)
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert checkpoint_steps(tmp_path) == [2, 4]


class Wide(torch.nn.Module):
    """Weights and optimizer tensors of a few MB each (not just the tiny files of the other tests)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)
        self.wide = torch.nn.Linear(512, 1024)

    def forward(self, x, labels):
        logits = self.linear(x).squeeze(-1) + 0 * self.wide(torch.zeros(1, 512)).sum()
        return {"loss": torch.nn.functional.mse_loss(logits, labels), "logits": logits}


@pytest.mark.parametrize("safetensors", [True, False])
def test_large_files_verify_and_reload(tmp_path, safetensors):
    trainer = make_trainer(tmp_path, model=Wide(), max_steps=2, save_safetensors=safetensors)
    trainer.train()
    ckpt = tmp_path / "checkpoint-2"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    weights = "model.safetensors" if safetensors else "pytorch_model.bin"
    assert manifest["files"][weights]["size"] > 2 * 2**20 and manifest["files"]["optimizer.pt"]["size"] > 4 * 2**20
    assert verify(ckpt) == []  # every checksum recomputed from the files on disk
    fresh = Wide()
    load_model_weights(fresh, ckpt)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def _supports_o_direct(directory: Path) -> bool:
    probe = directory / ".o_direct_probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0)))
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
@pytest.mark.parametrize("memory", ["bytes", "page-aligned"])
def test_hashing_writer_bytes_and_checksum_at_every_boundary(tmp_path, where, memory):
    """Files around the staging buffer's and the block's edges, written in pieces of every shape,
    come out byte for byte with the checksum of their bytes. Where the file system allows O_DIRECT
    the bytes of a large file bypass the page cache: through the staging buffer, or, for large
    pieces of page-aligned memory at a block boundary of the file (hooktrain's snapshot buffers),
    straight from that memory."""
    import mmap

    from hooktrain.checkpointing.integrity import (
        _ALIGN,
        _IN_PLACE,
        _STAGING_BYTES,
        HashingWriter,
        digest_bytes,
        digest_file,
    )

    directory = tmp_path if where == "tmp_path" else Path(where)
    if not directory.is_dir():
        pytest.skip(f"{where} does not exist here")
    direct = _supports_o_direct(directory)
    generator = torch.Generator().manual_seed(0)
    for size in (0, 1, _ALIGN - 1, _ALIGN, _ALIGN + _IN_PLACE + 5, _STAGING_BYTES - 1, _STAGING_BYTES,
                 2 * _STAGING_BYTES + _ALIGN + 7):
        data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).numpy().tobytes()
        source = memoryview(data)
        if memory == "page-aligned" and size:
            aligned = mmap.mmap(-1, size)
            aligned[:] = data
            source = memoryview(aligned)
        path = directory / f"hooktrain-test-{os.getpid()}-{size}.bin"
        try:
            writer = HashingWriter(path, direct=True)
            pieces, start = [_ALIGN, 3 << 20, 17, 4095, 9 << 20, 1], 0
            for i in range(len(data)):  # small and large pieces, straddling the buffer's end
                if start >= size:
                    break
                n = pieces[i % len(pieces)]
                writer.write(source[start : start + n])
                start += n
            record = writer.seal()
            assert path.read_bytes() == data
            assert record == {"size": size, "xxh3_128": digest_bytes(data)} == {"size": size, "xxh3_128": digest_file(path)}
            in_place = memory == "page-aligned" and size >= _ALIGN + _IN_PLACE
            assert (writer.direct_bytes > 0) == (direct and (size >= _STAGING_BYTES or in_place)), (size, writer.direct_bytes)
        finally:
            source.release()
            path.unlink(missing_ok=True)



def test_hashing_writer_goes_through_the_page_cache_unless_asked(tmp_path):
    """Without ``direct=True`` (a save training waits for) nothing bypasses the page cache."""
    from hooktrain.checkpointing.integrity import _STAGING_BYTES, HashingWriter, digest_bytes

    data = torch.randint(0, 256, (2 * _STAGING_BYTES + 3,), dtype=torch.uint8).numpy().tobytes()
    writer = HashingWriter(tmp_path / "f.bin")
    writer.write(data[:5])
    writer.write(data[5:])
    assert writer.seal() == {"size": len(data), "xxh3_128": digest_bytes(data)}
    assert writer.direct_bytes == 0 and (tmp_path / "f.bin").read_bytes() == data

class Tied(torch.nn.Module):
    """Input and output embeddings share one weight (safetensors refuses shared storage as is)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(6, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, labels):
        logits = self.head(self.proj(self.embed(x)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": torch.tensor(i % 6), "labels": torch.tensor((i + 1) % 6)}


def test_tied_weights_round_trip(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=2, report_to="none",
                             per_device_train_batch_size=4, disable_tqdm=True)
    trainer = Trainer(model=Tied(), args=args, train_dataset=Tokens())
    trainer.train()
    fresh = Tied()
    load_model_weights(fresh, tmp_path / "checkpoint-2")
    assert fresh.head.weight is fresh.embed.weight
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


# ---- corruption, fallback, explicit paths ------------------------------------------------------


def test_corrupted_newest_falls_back_to_the_previous_and_logs_why(tmp_path, caplog):
    make_trainer(tmp_path).train()
    flip_byte(tmp_path / "checkpoint-6" / "model.safetensors")
    (tmp_path / "checkpoint-4" / "rng_state.pth").unlink()  # one file missing
    assert verify(tmp_path / "checkpoint-6") == [
        f"{tmp_path / 'checkpoint-6' / 'model.safetensors'}: xxh3_128 differs from the manifest (corrupted or modified)"
    ]
    assert "rng_state.pth: missing" in verify(tmp_path / "checkpoint-4")[0]

    trainer = make_trainer(tmp_path, max_steps=8)
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        path = trainer.plugin_manager.hook.resume_checkpoint(trainer=trainer, checkpoint=True)
    assert path == tmp_path / "checkpoint-2"
    skipped = [r.getMessage() for r in caplog.records if "not resuming from" in r.getMessage()]
    assert len(skipped) == 2
    assert "checkpoint-6" in skipped[0] and "model.safetensors" in skipped[0] and "xxh3_128" in skipped[0]
    assert "checkpoint-4" in skipped[1] and "rng_state.pth: missing" in skipped[1]


@pytest.mark.parametrize("how", ["newest", "explicit"])
def test_resume_reads_each_file_once(tmp_path, monkeypatch, how):
    import hooktrain.checkpointing.format as fmt

    make_trainer(tmp_path, max_steps=2).train()
    reads: list[str] = []
    real_read_bytes, real_hash = Path.read_bytes, fmt.digest_file
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real_read_bytes(self))
    monkeypatch.setattr(fmt, "digest_file", lambda path, algo: reads.append(f"hash {path.name}") or real_hash(path, algo))
    target = True if how == "newest" else str(tmp_path / "checkpoint-2")
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.plugin_manager.hook.resume_checkpoint(trainer=trainer, checkpoint=target)
    assert trainer.state.global_step == 2
    loaded = [r for r in reads if r != "manifest.json"]
    assert sorted(loaded) == sorted(set(loaded))  # no file read twice, none hashed apart from its read
    assert "model.safetensors" in loaded and "optimizer.pt" in loaded
    assert not [r for r in loaded if r.startswith("hash ")]


def test_explicit_path_that_fails_verification_names_the_file(tmp_path):
    make_trainer(tmp_path, max_steps=4).train()
    flip_byte(tmp_path / "checkpoint-4" / "optimizer.pt", offset=100)
    trainer = make_trainer(tmp_path, max_steps=6)
    with pytest.raises(CheckpointError, match=r"checkpoint-4/optimizer\.pt: xxh3_128"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    shutil.copy(tmp_path / "checkpoint-2" / "manifest.json", tmp_path / "checkpoint-4" / "manifest.json")
    with pytest.raises(CheckpointError, match=r"checkpoint-4/\w+.*(bytes|xxh3_128)"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_resume_true_without_any_valid_checkpoint_names_output_dir(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*no checkpoint-N"):
        trainer.train(resume_from_checkpoint=True)
    (tmp_path / "checkpoint-3").mkdir()  # no manifest: an incomplete or foreign directory
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies: checkpoint-3: .*manifest\.json: missing"):
        make_trainer(tmp_path).train(resume_from_checkpoint=True)


def test_resume_from_args_field(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    trainer = make_trainer(tmp_path, max_steps=4, resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    trainer.train()
    assert trainer.state.global_step == 4 and checkpoint_steps(tmp_path) == [2, 4]


class Payload:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin"])
def test_a_pickle_payload_is_never_executed(tmp_path, name):
    out = tmp_path / "out"
    make_trainer(out, max_steps=2, save_safetensors=name != "pytorch_model.bin").train()
    ckpt = out / "checkpoint-2"
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, ckpt / name)
    # The attacker also fixes the manifest, so the file passes verification.
    manifest = json.loads((ckpt / "manifest.json").read_text())
    import hashlib

    data = (ckpt / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert verify(ckpt) == []

    trainer = make_trainer(out, max_steps=4, save_safetensors=name != "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=f"{name}: refused to load"):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert not marker.exists(), "the payload ran"

    # the payload is real: an unrestricted unpickler would have run it
    canary = tmp_path / "canary"
    torch.save(Payload(canary), tmp_path / "real.pt")
    torch.load(tmp_path / "real.pt", weights_only=False)
    assert canary.exists()


# ---- arguments that change the run's arithmetic ---------------------------------------------------


def test_resume_with_a_different_batch_size_is_an_error_unless_ignore_data_skip(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=2).train()
    with pytest.raises(CheckpointError, match=r"per_device_train_batch_size: 4 in the checkpoint, 2 now.*ignore_data_skip"):
        make_trainer(tmp_path, max_steps=4, per_device_train_batch_size=2).train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match="gradient_accumulation_steps: 1 in the checkpoint, 2 now"):
        make_trainer(tmp_path, max_steps=4, gradient_accumulation_steps=2).train(resume_from_checkpoint=True)
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        trainer = make_trainer(tmp_path, max_steps=4, per_device_train_batch_size=2, ignore_data_skip=True,
                               learning_rate=1e-3, seed=43)
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4
    warning = next(r.getMessage() for r in caplog.records if "different arguments" in r.getMessage())
    assert "per_device_train_batch_size: 4 in the checkpoint, 2 now" in warning
    assert "max_steps: 2 in the checkpoint, 4 now" in warning and "learning_rate" in warning
    assert "seed: 42 in the checkpoint, 43 now" in warning


def test_resume_with_another_number_of_processes_is_an_error(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    manifest = tmp_path / "checkpoint-2" / "manifest.json"  # as if written by a 2-process run
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "world_size": 2}))
    with pytest.raises(CheckpointError, match="world_size: 2 in the checkpoint, 1 now"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


# ---- rotation ----------------------------------------------------------------------------------------


def fake_checkpoints(out: Path, numbers, own: bool = True) -> None:
    for n in numbers:
        d = out / f"checkpoint-{n}"
        d.mkdir(parents=True)
        if own:
            (d / "manifest.json").write_text(json.dumps({"format": FORMAT, "files": {}}))


@pytest.mark.parametrize(
    ("limit", "protected", "kept"),
    [
        (None, (), [2, 4, 6, 8]),
        (1, (), [8]),
        (2, (), [6, 8]),
        (3, (), [4, 6, 8]),
        (4, (), [2, 4, 6, 8]),
        (1, ("checkpoint-2",), [2, 8]),
        (2, ("checkpoint-2",), [2, 8]),
        (3, ("checkpoint-2",), [2, 6, 8]),
        (1, ("checkpoint-8",), [8]),
        (1, ("some/where/checkpoint-4",), [4, 8]),
        (1, ("checkpoint-2", "checkpoint-4"), [2, 4, 8]),
    ],
)
def test_rotation_table(tmp_path, limit, protected, kept):
    fake_checkpoints(tmp_path, [2, 4, 6, 8])
    fake_checkpoints(tmp_path, [1, 100], own=False)  # not hooktrain's: never touched, never counted
    (tmp_path / "notes.txt").write_text("mine")
    rotate_checkpoints(tmp_path, limit, protected)
    assert checkpoint_steps(tmp_path) == sorted([1, 100, *kept])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rotation_orders_by_step_number_not_by_name(tmp_path):
    fake_checkpoints(tmp_path, [9, 10, 100])
    rotate_checkpoints(tmp_path, 2)
    assert checkpoint_steps(tmp_path) == [10, 100]


class ProtectFirst:
    name = "protect-first"

    @hookimpl
    def protected_checkpoints(self):
        return ["checkpoint-2"]


@pytest.mark.parametrize(("limit", "plugins", "kept"), [(1, [], [6]), (1, [ProtectFirst()], [2, 6]),
                                                         (2, [ProtectFirst()], [2, 6])])
def test_rotation_during_training(tmp_path, limit, plugins, kept):
    make_trainer(tmp_path, plugins=plugins, save_total_limit=limit).train()
    assert checkpoint_steps(tmp_path) == kept


def test_save_total_limit_1_keeps_the_best_and_the_latest(tmp_path):
    metric = ScriptedMetric({2: 0.9, 4: 0.1, 6: 0.5}, name="accuracy")
    trainer = make_trainer(
        tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_total_limit=1,
        metric_for_best_model="accuracy", load_best_model_at_end=True, metric=metric)
    trainer.train()
    assert trainer.state.best_global_step == 2
    assert checkpoint_steps(tmp_path) == [2, 8]


# ---- the overwrite guard -------------------------------------------------------------------------------


def test_overwrite_guard(tmp_path):
    make_trainer(tmp_path, max_steps=6, save_steps=3).train()
    assert checkpoint_steps(tmp_path) == [3, 6]
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "checkpoint-99").mkdir()  # not hooktrain's
    (tmp_path / "checkpoint-99" / "weights.bin").write_text("foreign")

    with pytest.raises(CheckpointError, match="already holds checkpoints .*resume_from_checkpoint=True.*overwrite_output_dir=True"):
        make_trainer(tmp_path, max_steps=4).train()
    assert checkpoint_steps(tmp_path) == [3, 6, 99]

    make_trainer(tmp_path, max_steps=4, overwrite_output_dir=True).train()
    assert checkpoint_steps(tmp_path) == [2, 4, 99]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "checkpoint-99" / "weights.bin").read_text() == "foreign"

    resumed = make_trainer(tmp_path, max_steps=6)
    resumed.train(resume_from_checkpoint=True)  # a resume is not refused
    assert checkpoint_steps(tmp_path) == [2, 4, 6, 99]


# ---- atomic replacement and left-overs ------------------------------------------------------------


def test_resaving_a_step_after_resuming_from_an_older_checkpoint_replaces_it(tmp_path):
    make_trainer(tmp_path).train()
    before = (tmp_path / "checkpoint-6").stat().st_ino
    trainer = make_trainer(tmp_path)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert checkpoint_steps(tmp_path) == [2, 4, 6]
    assert (tmp_path / "checkpoint-6").stat().st_ino != before  # a new directory took its place
    assert all(verify(tmp_path / f"checkpoint-{s}") == [] for s in (2, 4, 6))
    assert not list(tmp_path.glob(".tmp-*"))


def test_interrupted_replacement_is_repaired_at_the_next_start(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=4).train()
    # What a crash between "set the old checkpoint-4 aside" and "rename the new one in" leaves:
    os.replace(tmp_path / "checkpoint-4", tmp_path / ".tmp-replaced-checkpoint-4")
    (tmp_path / ".tmp-checkpoint-4").mkdir()
    (tmp_path / ".tmp-checkpoint-4" / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING, logger="hooktrain"):
        tidy_output_dir(tmp_path)
    assert checkpoint_steps(tmp_path) == [2, 4] and verify(tmp_path / "checkpoint-4") == []
    assert not list(tmp_path.glob(".tmp-*"))
    assert any("restored" in r.getMessage() for r in caplog.records)


def test_a_foreign_directory_with_a_checkpoint_name_is_never_replaced(tmp_path):
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoint-2" / "data.txt").write_text("theirs")
    trainer = make_trainer(tmp_path, max_steps=2, overwrite_output_dir=True)
    with pytest.raises(CheckpointError, match="holds checkpoint-2, which hooktrain did not write"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused at the start, not at the save of step 2
    assert (tmp_path / "checkpoint-2" / "data.txt").read_text() == "theirs"
    assert not list(tmp_path.glob(".tmp-*"))
    # met by a resumed run's save (no start-up guard on resume): refused there, still untouched
    (tmp_path / "checkpoint-2").rename(tmp_path / "theirs")
    make_trainer(tmp_path, max_steps=1).train()
    (tmp_path / "theirs").rename(tmp_path / "checkpoint-2")
    with pytest.raises(CheckpointError, match="checkpoint-2 exists and hooktrain did not write it"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)
    assert (tmp_path / "checkpoint-2" / "data.txt").read_text() == "theirs"


# ---- save_only_model and save_model -------------------------------------------------------------------


def test_save_only_model_writes_weights_state_args_and_cannot_resume(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_only_model=True).train()
    ckpt = tmp_path / "checkpoint-2"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "manifest.json", "model.safetensors", "trainer_state.json", "training_args.json"]
    assert verify(ckpt) == []
    with pytest.raises(CheckpointError, match="save_only_model=True.*cannot resume|save_only_model=True and holds no"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(ckpt))
    with pytest.raises(CheckpointError, match="save_only_model=True"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=True)
    fresh = TinyRegressor()
    load_model_weights(fresh, ckpt)


def test_save_model_writes_weights_and_args(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=2, save_strategy="no")
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors", "training_args.json"]
    fresh = TinyRegressor(seed=5)
    load_model_weights(fresh, tmp_path / "final")
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    assert json.loads((tmp_path / "final" / "training_args.json").read_text())["max_steps"] == 2


# ---- save policies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"max_steps": 7, "save_steps": 3}, [3, 6, 7]),  # the forced save of the last step
        ({"max_steps": 6, "save_steps": 0.5}, [3, 6]),  # a ratio of max_steps
        ({"max_steps": -1, "num_train_epochs": 2, "save_strategy": "epoch"}, [4, 8]),
        ({"max_steps": 6, "save_strategy": "epoch"}, [4, 6]),  # the cut-short last epoch too
        ({"max_steps": 6, "save_strategy": "no"}, []),
    ],
)
def test_builtin_policies(tmp_path, overrides, expected):
    make_trainer(tmp_path, **overrides).train()
    assert checkpoint_steps(tmp_path) == expected


def test_best_policy_saves_each_new_best(tmp_path):
    metric = ScriptedMetric({1: 0.5, 2: 0.4, 3: 0.7, 4: 0.6, 5: 0.9, 6: 0.1}, name="accuracy")
    trainer = make_trainer(tmp_path, save_strategy="best", eval_strategy="steps", eval_steps=1,
                           metric_for_best_model="accuracy", metric=metric)
    trainer.train()
    assert checkpoint_steps(tmp_path) == [1, 3, 5]


def test_unknown_save_strategy_lists_the_installed_ones():
    with pytest.raises(ArgumentError, match=r"save_strategy: unknown save policy 'step'.*Did you mean 'steps'.*best, epoch, no, steps"):
        make_trainer(Path("unused"), save_strategy="step")


class Veto:
    name = "veto"

    @hookimpl(tryfirst=True)
    def should_save(self, state):
        return False if state.global_step == 4 else None


class Force:
    name = "force"

    @hookimpl
    def should_save(self, state):
        return True if state.global_step == 1 else None


def test_plugins_force_or_veto_a_save(tmp_path):
    make_trainer(tmp_path, plugins=[Veto(), Force()]).train()
    assert checkpoint_steps(tmp_path) == [1, 2, 6]


# ---- the CLI ------------------------------------------------------------------------------------------------


def test_checkpoints_cli(tmp_path, capsys):
    metric = ScriptedMetric({2: 0.9, 4: 0.2, 6: 0.5}, name="accuracy")
    trainer = make_trainer(tmp_path, eval_strategy="steps", eval_steps=2, metric_for_best_model="accuracy", metric=metric)
    trainer.train()
    assert checkpoints_main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.strip().startswith("checkpoint-")]
    assert len(lines) == 3 and all(line.rstrip().endswith("yes") for line in lines), text
    assert "best" in lines[0] and "0.9" in lines[0]

    flip_byte(tmp_path / "checkpoint-6" / "scheduler.pt")
    (tmp_path / ".tmp-checkpoint-8").mkdir()
    assert checkpoints_main([str(tmp_path), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[0]["best"] is True and rows[0]["best_metric"] == 0.9 and rows[0]["metric"] == "eval_accuracy"
    assert rows[0]["size_bytes"] > 0 and rows[0]["problems"] == [] and rows[0]["verified"] is True
    assert rows[2]["verified"] is False and "scheduler.pt: xxh3_128" in rows[2]["problems"][0]
    assert rows[3]["verified"] is False and rows[3]["incomplete"] is True
    os.replace(tmp_path / "checkpoint-4", tmp_path / ".tmp-replaced-checkpoint-4")  # a crash mid-replacement
    checkpoints_main([str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    aside = [r for r in rows if r["name"] == ".tmp-replaced-checkpoint-4"]
    assert len(aside) == 1 and aside[0]["step"] == 4 and "put back" in aside[0]["problems"][0]

    assert checkpoints_main([str(tmp_path / "nothing-here")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_format_names_imported_from_the_plugin_still_work_with_a_deprecation_warning():
    import hooktrain.checkpointing as library
    import hooktrain.plugins.checkpoint as plugin

    for name in ("verify", "read_manifest", "find_resumable_checkpoint", "rotate_checkpoints"):
        with pytest.warns(DeprecationWarning, match=rf"plugins\.checkpoint\.{name} moved to hooktrain\.checkpointing"):
            assert getattr(plugin, name) is getattr(library, name)
    with pytest.warns(DeprecationWarning, match="FORMAT moved"):
        assert plugin.FORMAT == FORMAT
    with pytest.raises(AttributeError):
        plugin.no_such_name  # noqa: B018
