"""The task of tests/test_preemption.py: train_ddp.py's data and model, trained by ``hooktrain train``
(alone or under torchrun), with a real signal sent at a chosen, deterministic point.

    PREEMPT_TEST='<json>' hooktrain train config.json    # config.json: task: <this file>:build

``PREEMPT_TEST`` keys (all optional): ``dropout`` (bool); ``at``: where the signal is sent, one of

* ``"step"``: at the end of optimizer step ``step``;
* ``"micro"``: in micro-batch ``micro`` (0-based) of the accumulation window of step ``step``;
* ``"eval"``: while the evaluation of step ``step`` reads eval sample ``item``;

``signal`` (default ``"SIGTERM"``), ``to`` (``"self"``; ``"group"``: the whole process group, data
loader workers included; ``"agent"``: the parent process, the torchrun agent, and the sender then
waits until the agent has forwarded it), ``rank`` (the process that
sends it; default 0), and ``twice``: send the same signal again when the checkpoint written for the
interruption is complete but not yet renamed into place. Tests also use :func:`parts` in-process.

Each process writes ``<output_dir>/result_rank<R>.json`` at the end of ``train()``: its weights, log
history, status and stop reason.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_ddp import MLP, N_EVAL, N_TRAIN, Data  # noqa: E402

from hooktrain import hookimpl  # noqa: E402


class SignalAt:
    """Sends the signal where ``PREEMPT_TEST`` says, and writes the process's result at the end."""

    name = "test.signal"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.trainer = None
        self.micro = 0

    def _mine(self, where: str) -> bool:
        return self.cfg.get("at") == where and self.trainer.process_index == self.cfg.get("rank", 0)

    def send(self) -> None:
        sig = signal.Signals[self.cfg.get("signal", "SIGTERM")]
        if self.cfg.get("to") == "group":  # every process of the group, as SLURM signals a job step
            os.killpg(os.getpgid(0), sig)
            return
        if self.cfg.get("to") != "agent":
            os.kill(os.getpid(), sig)
            return
        os.kill(os.getppid(), sig)
        # wait until the agent has forwarded it here, so that the run cannot end before
        watch = self.trainer.plugin_manager.get_plugin("preemption.signals")
        deadline = time.monotonic() + 20
        while watch.received is None and time.monotonic() < deadline:
            time.sleep(0.01)

    @hookimpl
    def on_train_begin(self, trainer):
        self.trainer = trainer
        if self.cfg.get("twice"):
            self._second_signal_in_the_save()

    @hookimpl
    def on_step_begin(self):
        self.micro = 0

    @hookimpl(tryfirst=True)
    def training_step(self, trainer):
        if self._mine("micro") and trainer.state.global_step + 1 == self.cfg["step"] and self.micro == self.cfg["micro"]:
            self.send()
        self.micro += 1

    @hookimpl
    def on_step_end(self, state):
        if self._mine("step") and state.global_step == self.cfg["step"]:
            self.send()

    def eval_item(self, index: int) -> None:
        if (self.trainer is not None and self._mine("eval") and self.trainer.state.global_step == self.cfg["step"]
                and index == self.cfg["item"]):
            self.send()

    def _second_signal_in_the_save(self) -> None:
        """Send the signal again just before the checkpoint of the interruption is renamed into
        place: every file written, nothing visible yet."""
        replace, trainer = os.replace, self.trainer

        def signal_then_replace(src, dst, *rest, **kw):
            if (trainer.interrupt_reason is not None
                    and os.path.basename(src) == f".tmp-checkpoint-{trainer.state.global_step}"):
                self.send()  # the handler was put back: this one ends the process
            return replace(src, dst, *rest, **kw)

        os.replace = signal_then_replace

    @hookimpl
    def on_train_end(self, trainer, state, status):
        result = {
            "rank": trainer.process_index,
            "status": status,
            "stop_reason": state.stop_reason,
            "global_step": state.global_step,
            "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
            "log_history": state.log_history,
            "handler": str(signal.getsignal(signal.SIGTERM)),
        }
        with open(os.path.join(trainer.args.output_dir, f"result_rank{trainer.process_index}.json"), "w") as f:
            json.dump(result, f)


class EvalData(Data):
    """The eval set, telling the signal plugin which sample the evaluation reads."""

    def __init__(self, n: int, seed: int, plugin: SignalAt):
        super().__init__(n, seed)
        self.plugin = plugin

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.plugin.eval_item(i)
        return super().__getitem__(i)


def build(args) -> dict:
    """The task of ``hooktrain train``: :func:`parts` of ``$PREEMPT_TEST``."""
    return parts(json.loads(os.environ.get("PREEMPT_TEST") or "{}"))


def parts(cfg: dict) -> dict:
    """``Trainer`` keyword arguments: model, data, metrics and the :class:`SignalAt` plugin."""
    torch.manual_seed(0)
    plugin = SignalAt(cfg)
    eval_ds = EvalData(N_EVAL, 2, plugin)

    def compute_metrics(pred):
        preds, labels = pred
        return {"mse": float(np.mean((preds - labels) ** 2))}

    return {
        "model": MLP(0.2 if cfg.get("dropout") else 0.0),
        "train_dataset": Data(N_TRAIN, seed=1),
        "eval_dataset": eval_ds,
        "compute_metrics": compute_metrics,
        "plugins": [plugin],
    }
