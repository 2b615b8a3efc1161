"""A tiny training run for tests/test_distributed.py: launched by torchrun, or alone as the reference.

    python tests/dist_scripts/train_ddp.py '<json config>'

Config keys (all optional but ``out``): ``out`` output dir, ``batch`` per-device batch size,
``steps`` max_steps, ``ga`` gradient accumulation, ``dropout`` (bool), ``eval`` (evaluate at the
last step and after train()), ``tokens`` (the items also hold ``input_ids`` and a padding
``attention_mask``, counted with ``include_num_input_tokens_seen="non_padding"`` and
``flops_per_sample=1``), ``report_to``, ``save_steps`` (0 = no checkpoints), ``resume``,
``ddp_timeout``, and the faults: ``kill_at`` / ``raise_at`` / ``stall_at`` (a step) on rank
``fault_rank`` (default 1): SIGKILL itself, raise ``RuntimeError``, or sleep 300 s there;
``kill_in_persist_at`` (a step): SIGKILL itself while the background thread writes its random-state
file of that step's checkpoint (the other process then waits for it to agree on the checkpoint).

``items`` (a list of booleans): instead, train a token model whose loss takes
``num_items_in_batch`` (tests/helpers.py TokenLM) once per value of
``average_tokens_across_devices``, and write what each run's model received.

Each process writes ``<out>/result_rank<R>.json``: its final weights, log history and metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import numpy as np
import torch

from hooktrain import Trainer, TrainingArguments, hookimpl

N_TRAIN, N_EVAL, DIM = 48, 13, 6


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, tokens: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = torch.sin(self.x.sum(dim=1)) + 0.1 * torch.randn(n, generator=g)
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"x": self.x[i], "labels": self.y[i]}
        if self.tokens:  # 5 token ids, of which 1 + i % 5 are real (the model ignores them)
            item["input_ids"] = (i + torch.arange(5)) % 11
            item["attention_mask"] = (torch.arange(5) <= i % 5).long()
        return item


class MLP(torch.nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(DIM, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1)
        )

    def forward(self, x, labels=None, input_ids=None, attention_mask=None):
        logits = self.net(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


class Faults:
    """Fault injection at the end of an optimizer step on one rank."""

    name = "test.faults"

    def __init__(self, cfg: dict):
        self.cfg = cfg

    @hookimpl
    def on_step_end(self, trainer, state):
        cfg, step = self.cfg, state.global_step
        if trainer.process_index != cfg.get("fault_rank", 1):
            return
        if cfg.get("kill_at") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.get("raise_at") == step:
            raise RuntimeError(f"injected failure on rank {trainer.process_index} at step {step}")
        if cfg.get("stall_at") == step:
            time.sleep(300)


def kill_in_persist(step: int) -> None:
    """SIGKILL this process while its background save of checkpoint-*step* writes its RNG file."""
    import threading

    import hooktrain.checkpointing.writer as writer

    class Killing(writer.HashingWriter):
        def write(self, data):
            if self.path.parent.name == f".tmp-checkpoint-{step}" and self.path.name.startswith("rng_state"):
                assert threading.current_thread() is not threading.main_thread(), "not a background save"
                os.kill(os.getpid(), signal.SIGKILL)
            return super().write(data)

    writer.HashingWriter = Killing  # type: ignore[misc]


class SeenBatches:
    """What this process trained on: samples and real tokens (the ones of attention_mask)."""

    name = "test.seen"

    def __init__(self) -> None:
        self.samples = self.tokens = 0

    @hookimpl
    def on_train_batch(self, batch):
        self.samples += len(batch["x"])
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())


def train_items(cfg: dict) -> None:
    """One short token-model run per value of average_tokens_across_devices in ``cfg["items"]``."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from helpers import TokenData, TokenLM, pad_tokens

    out: dict = {}
    for average in cfg["items"]:
        model = TokenLM()
        args = TrainingArguments(
            output_dir=os.path.join(cfg["out"], str(average)), per_device_train_batch_size=cfg["batch"],
            gradient_accumulation_steps=2, num_train_epochs=2, optim="sgd", learning_rate=0.5,
            lr_scheduler_type="constant", max_grad_norm=0, train_sampling_strategy="sequential",
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
            average_tokens_across_devices=average, seed=7)
        trainer = Trainer(model, args, train_dataset=TokenData(), data_collator=pad_tokens)
        result = trainer.train()
        out[str(average)] = {
            "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "training_loss": result.training_loss, "seen": model.seen, "sums": model.sums,
            "targets": model.targets,
        }
    os.makedirs(cfg["out"], exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(cfg["out"], f"result_rank{rank}.json"), "w") as fp:
        json.dump(out, fp)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg.get("items"):
        return train_items(cfg)
    if cfg.get("kill_in_persist_at") and int(os.environ.get("RANK", "0")) == cfg.get("fault_rank", 1):
        kill_in_persist(cfg["kill_in_persist_at"])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    model = MLP(0.2 if cfg.get("dropout") else 0.0)
    eval_ds = Data(N_EVAL, seed=2)
    save_steps = cfg.get("save_steps", 0)

    def compute_metrics(pred):
        preds, labels = pred
        return {
            "mse": float(np.mean((preds - labels) ** 2)),
            "n": float(len(preds)),
            "in_order": float(np.array_equal(labels, eval_ds.y.numpy())),
        }

    args = TrainingArguments(
        output_dir=cfg["out"],
        per_device_train_batch_size=cfg.get("batch", 4),
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=cfg.get("ga", 1),
        max_steps=cfg.get("steps", 8),
        learning_rate=0.02,
        warmup_steps=0,
        logging_steps=1,
        seed=7,
        eval_strategy="steps" if cfg.get("eval") else "no",
        eval_steps=cfg.get("steps", 8),
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=cfg.get("report_to", "none"),
        disable_tqdm=True,
        ddp_timeout=cfg.get("ddp_timeout", 60),
        use_cpu=True,  # gloo on CPU processes, also on a machine with a GPU
        include_num_input_tokens_seen="non_padding" if cfg.get("tokens") else "no",
        flops_per_sample=1.0 if cfg.get("tokens") else None,  # total_flos then counts the samples
    )
    seen = SeenBatches()
    trainer = Trainer(
        model=model, args=args, train_dataset=Data(N_TRAIN, seed=1, tokens=bool(cfg.get("tokens"))),
        eval_dataset=eval_ds, compute_metrics=compute_metrics, plugins=[Faults(cfg), seen],
    )
    allreduces = []  # gradient exchanges: one per optimizer step when no_sync() skips the others
    if isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            allreduces.append(bucket.index())
            return allreduce_hook(state, bucket)

        trainer.model_wrapped.register_comm_hook(None, counting_hook)
    result = trainer.train(resume_from_checkpoint=cfg.get("resume") or None)
    allreduce_count = len(allreduces)
    after = trainer.evaluate() if cfg.get("eval") else None
    out = {
        "rank": trainer.process_index,
        "pid": os.getpid(),
        "world_size": trainer.world_size,
        "local_rank": trainer.local_process_index,
        "wrapped": type(trainer.model_wrapped).__name__,
        "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
        "log_history": trainer.state.log_history,
        "training_loss": result.training_loss,
        "allreduce_buckets": allreduce_count,
        "eval_after_train": after,
        "seen_samples": seen.samples,
        "seen_tokens": seen.tokens,
        "num_input_tokens_seen": trainer.state.num_input_tokens_seen,
        "total_flos": trainer.state.total_flos,
    }
    os.makedirs(cfg["out"], exist_ok=True)
    path = os.path.join(cfg["out"], f"result_rank{trainer.process_index}.json")
    with open(path, "w") as fp:
        json.dump(out, fp)


if __name__ == "__main__":
    main()
