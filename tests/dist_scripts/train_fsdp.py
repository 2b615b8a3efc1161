"""Sharded (FSDP2) training runs for tests/test_fsdp.py, launched by torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/dist_scripts/train_fsdp.py '<json>'

The JSON is a list of runs, trained one after the other in the same processes (one launch, one
process group). Each run: ``name``, ``out`` output dir, ``fsdp`` (option string; empty = DDP),
``steps`` (max_steps), ``epochs`` (num_train_epochs, with ``steps=-1``), ``batch``, ``ga``, ``save_steps`` (0 = none), ``resume`` (True or a checkpoint path), ``kill_at`` (rank
``fault_rank``, default 1, SIGKILLs itself after that step), ``gc`` (gradient checkpointing),
``save_model`` (write and check the consolidated weights), ``best`` (evaluate at every save and
``load_best_model_at_end`` on the eval loss), ``save_async`` (default False: ``on_save`` then
comes at the step saved, and the weights recorded there are the checkpoint's).

Each process writes ``<out>/result_<name>_rank<R>.json``: the log history, the full weights at
the end, at every save and right after a resume (gathered), the optimizer's full state at the same
points, the bytes of parameters, gradients and optimizer state this process holds, and the
training samples each step read on this process (with ``state.epoch`` after the step).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import numpy as np
import torch

from hooktrain import Trainer, TrainingArguments, hookimpl
from hooktrain.plugins.fsdp import full_state_dict, local_bytes

N_TRAIN, N_EVAL, DIM, HIDDEN = 48, 13, 6, 32


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = torch.sin(self.x.sum(dim=1)) + 0.1 * torch.randn(n, generator=g)
        self.read: list[int] = []  # the indices asked for since the last step

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.read.append(int(i))
        return {"x": self.x[i], "labels": self.y[i]}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(DIM, HIDDEN), torch.nn.Tanh(), torch.nn.Dropout(0.1),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1),
        )

    def forward(self, x, labels=None):
        logits = self.net(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(logits, labels)
        return out


def _full_optimizer_state(trainer) -> dict[str, list]:
    """The optimizer state by parameter name, unsharded (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = trainer.model
    sd = get_optimizer_state_dict(model, trainer.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {f"{name}.{key}": value.tolist() for name, state in sd.get("state", {}).items()
            for key, value in state.items() if isinstance(value, torch.Tensor) and value.dim() > 0}


def _gathered(trainer) -> dict[str, list]:
    state = full_state_dict(trainer.model) if trainer.args.fsdp else trainer.model.state_dict()
    return {k: v.tolist() for k, v in state.items()}


class Probe:
    """Records what the tests compare, and the fault injection."""

    name = "test.fsdp_probe"

    def __init__(self, cfg: dict, data: Data):
        self.cfg, self.data = cfg, data
        self.samples: dict[int, tuple[float, list[int]]] = {}
        self.grad_bytes = 0
        self.optim_bytes = 0
        self.saved: dict[int, dict] = {}
        self.resumed: dict | None = None

    @hookimpl
    def on_train_begin(self, trainer, state):
        if state.global_step:  # just resumed
            self.resumed = {"step": state.global_step, "weights": _gathered(trainer),
                            "optimizer": _full_optimizer_state(trainer)}

    @hookimpl(wrapper=True)
    def optimizer_step(self, trainer, model, optimizer):
        self.grad_bytes = max(self.grad_bytes, local_bytes(p.grad for p in trainer.model.parameters()))
        outcome = yield
        self.optim_bytes = local_bytes(t for s in optimizer.state.values() for t in s.values())
        return outcome

    @hookimpl
    def on_save(self, trainer, state):
        self.saved[state.global_step] = {"weights": _gathered(trainer),
                                         "optimizer": _full_optimizer_state(trainer)}

    @hookimpl
    def on_step_end(self, trainer, state):
        self.samples[state.global_step] = (state.epoch, self.data.read)
        self.data.read = []
        if self.cfg.get("kill_at") == state.global_step and trainer.process_index == self.cfg.get("fault_rank", 1):
            os.kill(os.getpid(), signal.SIGKILL)


def train(cfg: dict) -> None:
    torch.manual_seed(0)
    model = MLP()
    save_steps = cfg.get("save_steps", 0)
    args = TrainingArguments(
        output_dir=cfg["out"], per_device_train_batch_size=cfg.get("batch", 4),
        per_device_eval_batch_size=2,  # 13 samples: 4 batches on rank 0, 3 on rank 1
        gradient_accumulation_steps=cfg.get("ga", 1), max_steps=cfg.get("steps", 8),
        num_train_epochs=cfg.get("epochs", 3),
        learning_rate=0.02, max_grad_norm=cfg.get("max_grad_norm", 0.5), logging_steps=1, seed=7,
        eval_strategy="steps" if cfg.get("eval") else "no",
        eval_steps=save_steps if cfg.get("best") else max(cfg.get("steps", 8), 1),
        load_best_model_at_end=bool(cfg.get("best")), metric_for_best_model="loss" if cfg.get("best") else None,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_async=bool(cfg.get("save_async")),
        report_to="none", disable_tqdm=True, ddp_timeout=60, use_cpu=True,
        overwrite_output_dir=not cfg.get("resume"), fsdp=cfg.get("fsdp", ""),
        gradient_checkpointing=bool(cfg.get("gc")),
    )
    data = Data(N_TRAIN, seed=1)
    probe = Probe(cfg, data)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      eval_dataset=Data(N_EVAL, seed=2),
                      compute_metrics=lambda p: {"mse": float(np.mean((p[0] - p[1]) ** 2))},
                      plugins=[probe])
    result = trainer.train(resume_from_checkpoint=cfg.get("resume") or None)
    out = {
        "rank": trainer.process_index,
        "world_size": trainer.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
        "log_history": trainer.state.log_history,
        "max_steps": trainer.state.max_steps,
        "samples": probe.samples,
        "training_loss": result.training_loss,
        "weights": _gathered(trainer),
        "saved": probe.saved,
        "resumed": probe.resumed,
        "best_global_step": trainer.state.best_global_step,
        "param_bytes": local_bytes(trainer.model.parameters()),
        "grad_bytes": probe.grad_bytes,
        "optim_bytes": probe.optim_bytes,
        "eval_after_train": trainer.evaluate() if cfg.get("eval") else None,
    }
    if cfg.get("save_model"):
        trainer.save_model()
        x = Data(N_EVAL, seed=2).x
        trainer.model.eval()
        with torch.no_grad():
            out["outputs"] = trainer.model(x)["logits"].tolist()  # a collective forward under FSDP
        if trainer.is_world_process_zero:
            from safetensors.torch import load_file

            plain = MLP()
            plain.load_state_dict(load_file(os.path.join(cfg["out"], "model.safetensors")))
            plain.eval()
            with torch.no_grad():
                out["plain_outputs"] = plain(x)["logits"].tolist()
    os.makedirs(cfg["out"], exist_ok=True)
    path = os.path.join(cfg["out"], f"result_{cfg['name']}_rank{trainer.process_index}.json")
    with open(path, "w") as fp:
        json.dump(out, fp)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for cfg in json.loads(sys.argv[1]):
        train(cfg)


if __name__ == "__main__":
    main()
