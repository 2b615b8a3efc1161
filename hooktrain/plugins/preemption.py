"""Preemption: a signal ends training with a checkpoint, a clean exit and a resume (docs/preemption.md).

Reads: preemption_signals, gradient_accumulation_steps, ddp_timeout.

While ``train()`` runs, each signal of ``preemption_signals`` (default ``SIGTERM``; ``[]`` turns
this plugin off) has a handler that only records the signal and asks the loop to stop
(``trainer.request_interrupt``). It also puts back the handler it replaced, so a second signal of
the same kind does what it did before (by default: end the process at once). Every replaced
handler is put back when ``train()`` ends.

The loop stops at its next check point: before an optimizer step, between the micro-batches of
an accumulation window (the step is dropped), or between evaluation batches (the evaluation is
abandoned; the checkpoint says so and the resumed run evaluates that step again first). Then, in
``on_interrupt``, this plugin waits for a checkpoint being written in the background and writes a
synchronous checkpoint of the last completed step unless that step is saved already (whatever
``save_strategy`` says), and ``train()`` returns with the status
``"interrupted"`` and ``state.stop_reason`` = ``"preempted by SIGTERM"``; ``hooktrain train`` exits
with :data:`EXIT_PREEMPTED`. The time from the signal to the end of ``train()`` is logged.

A dropped step is rewound exactly: with gradient accumulation (one process) the torch random
state (CPU and the current CUDA device) is kept at the start of each step and put back before the
checkpoint, so the resumed run draws the same dropout masks as an uninterrupted one. Python's and
NumPy's generators are not kept (a few µs of torch state per step; theirs would cost ~150 µs):
a forward pass that draws from them is not rewound.

Data loader workers (``dataloader_num_workers``) ignore these signals unless the main process sends
them: a scheduler that signals every process of a job (SLURM) would otherwise end them before the
main process saves (:func:`shield_worker`).

Several processes: the handler only records the signal. After every optimizer step the processes
agree, with one small all-reduce on a CPU (gloo) group, whether any of them got one; then all of
them stop before the same step and write one checkpoint together. A signal that reaches only some
processes, or only the ``torchrun`` agent (which forwards it), ends them all. A signal the
processes cannot agree on within ``ddp_timeout`` seconds (another process failed or hangs, as when
torchrun ends a failed job) goes back to the handler from before ``train()``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any

import torch

from hooktrain.checkpointing import checkpoint_step
from hooktrain.core.data import WorkerSetup
from hooktrain.core.interrupts import EXIT_INTERRUPTED, TrainingInterrupted
from hooktrain.core.markers import hookimpl
from hooktrain.plugins.checkpoint import STORE_NAME, save_checkpoint_now, wait_for_checkpoint

logger = logging.getLogger("hooktrain")

#: The exit status of ``hooktrain train`` after a preemption (75, EX_TEMPFAIL): schedulers requeue
#: on it (SkyPilot's ``recover_on_exit_codes``, a SLURM ``scontrol requeue`` script).
EXIT_PREEMPTED = EXIT_INTERRUPTED

STOP_PREFIX = "preempted by "
STATE_KEY = "preemption"


def stop_reason(sig: signal.Signals, here: bool = True) -> str:
    """``state.stop_reason`` of a run ended by *sig* (received by this process or another one)."""
    return STOP_PREFIX + sig.name + ("" if here else " (received by another process)")


def shield_worker(names: tuple[str, ...], main_pid: int, worker_id: int) -> None:
    """In a data loader worker: a preemption signal from anyone but the main process is ignored.

    A scheduler that signals every process of a job (SLURM) would otherwise end the workers at
    once, and the main process would fail on its next batch instead of saving. The signals are
    blocked and taken by a thread that ends the worker only when the main process sent one (as
    torch's own worker handler does for SIGTERM), so the main process still ends its workers.
    """
    if not hasattr(signal, "sigwaitinfo"):  # Windows: no such signals to shield from
        return
    signals = {signal.Signals[name] for name in names}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def take() -> None:
        while True:
            if signal.sigwaitinfo(signals).si_pid == main_pid:
                os._exit(0)

    threading.Thread(target=take, name="hooktrain-worker-signals", daemon=True).start()


class SignalWatch:
    """Installs the handlers for one ``train()`` and turns a received signal into a checkpoint."""

    name = "preemption.signals"

    def __init__(self, names: list[str]):
        self.signals = [signal.Signals[n] for n in names]
        self.received: signal.Signals | None = None  # the first signal this process got
        self.received_at: float | None = None  # time.monotonic() of it
        self.agree_across_processes = False  # the loop is stopped by StepAgreement instead
        self.agreement_timeout: float | None = None  # seconds the processes get to agree (ddp_timeout)
        self._watching = False
        self.rewind: StepRewind | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._trainer: Any = None
        self._interrupted = False  # this plugin asked for the interrupt of this train()
        self._saved_step: int | None = None
        self._save_seconds: float | None = None
        self._abandoned_eval: int | None = None  # the step whose evaluation the interrupt abandoned
        self._evaluate_on_resume = False

    # ---- the handlers -----------------------------------------------------------------

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("preemption_signals: train() runs outside the main thread, where Python "
                           "cannot install signal handlers; %s will not save a checkpoint",
                           ", ".join(s.name for s in self.signals))
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        """The handler: record the signal and ask for an interrupt; nothing else (no I/O, no lock)."""
        sig = signal.Signals(signum)
        self._put_back(sig)  # a second signal of this kind goes where it went before train()
        if self.received is None:
            self.received, self.received_at = sig, time.monotonic()
            if not self.agree_across_processes:
                self.request(stop_reason(sig))

    def request(self, reason: str) -> None:
        self._interrupted = True
        self._trainer.request_interrupt(reason)

    def _put_back(self, sig: signal.Signals) -> None:
        previous = self._previous.pop(sig, None)
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def _restore(self) -> None:
        """Put back every handler this plugin replaced and still holds."""
        for sig in list(self._previous):
            if signal.getsignal(sig) == self._handle:
                self._put_back(sig)
            else:  # somebody replaced ours meanwhile: theirs stays
                del self._previous[sig]

    # ---- the run --------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def on_train_begin(self, trainer, state):
        self._trainer = trainer
        self.received = self.received_at = None
        self._interrupted = False
        self._save_seconds = None
        self._abandoned_eval = None
        self._saved_step = state.global_step if state.global_step > 0 else None  # resumed from it
        self._install()
        if self.agree_across_processes and self.agreement_timeout is not None:
            self._watching = True
            threading.Thread(target=self._watch_agreement, name="hooktrain-preemption", daemon=True).start()

    @hookimpl(specname="on_train_begin", trylast=True)
    def evaluate_again(self, trainer):
        """Resumed from a checkpoint whose evaluation was abandoned: run that evaluation now."""
        if self._evaluate_on_resume:
            self._evaluate_on_resume = False
            logger.info("evaluating step %d again: its evaluation was abandoned by the preemption",
                        trainer.state.global_step)
            trainer.evaluate()

    @hookimpl(wrapper=True)
    def evaluation_loop(self, trainer):
        try:
            return (yield)
        except TrainingInterrupted:
            self._abandoned_eval = trainer.state.global_step
            raise

    @hookimpl
    def plugin_state(self, trainer):
        if self._interrupted and self._abandoned_eval == trainer.state.global_step:
            return STATE_KEY, {"evaluate_on_resume": True}
        return None

    @hookimpl
    def load_plugin_state(self, states):
        self._evaluate_on_resume = bool((states.get(STATE_KEY) or {}).get("evaluate_on_resume"))

    def _watch_agreement(self) -> None:
        """Several processes: a signal the processes cannot agree on within ``ddp_timeout`` (another
        process failed or hangs, e.g. torchrun ending the job after a failure) goes back to the
        handler from before ``train()``: by default it ends this process, as it would have at once."""
        while self._watching:
            time.sleep(0.25)
            received, at = self.received, self.received_at
            if received is None or at is None or self._interrupted or not self._watching:
                continue
            if time.monotonic() - at > self.agreement_timeout:  # type: ignore[operator]
                logger.error("%s was not agreed on by every process within ddp_timeout=%ss (another process "
                             "failed or hangs): handing it back", received.name, self.agreement_timeout)
                self._watching = False
                os.kill(os.getpid(), received)  # its handler from before train() is in place again

    @hookimpl
    def on_save(self, checkpoint_dir):
        self._saved_step = checkpoint_step(checkpoint_dir)  # an async save may end steps later

    @hookimpl
    def on_interrupt(self, trainer, state):
        if not self._interrupted:
            return  # another plugin's interrupt
        start = time.monotonic()
        if self.rewind is not None:
            self.rewind.rewind(state)
        self._save_last_step(trainer, state)
        self._save_seconds = time.monotonic() - start

    def _save_last_step(self, trainer: Any, state: Any) -> None:
        """Wait for a save in flight, then write the last completed step synchronously if it is
        not saved yet."""
        pm = trainer.plugin_manager
        if pm.get_plugin(STORE_NAME) is not None:
            wait_for_checkpoint(trainer)  # its on_save tells which step it was
            if self._saved_step != state.global_step:
                save_checkpoint_now(trainer)
        elif pm.implemented("save_checkpoint"):  # a storage plugin of one's own
            if self._saved_step != state.global_step:
                trainer.save_checkpoint()
        else:
            logger.warning("preempted at step %d, but no plugin saves checkpoints ('checkpoint' is "
                           "disabled): there is nothing to resume from", state.global_step)

    @hookimpl(trylast=True)  # after every other plugin (the reporters) has ended its part
    def on_train_end(self, state, status):
        self._watching = False
        self._restore()
        if self.received is None or self.received_at is None:
            return
        took = time.monotonic() - self.received_at
        if status == "interrupted" and self._interrupted:
            saved = (f"checkpoint written in {self._save_seconds:.2f} s"
                     if self._save_seconds is not None else "no checkpoint")
            logger.warning("%s at step %d: %s; %.2f s from the signal to the end of training",
                           state.stop_reason, state.global_step, saved, took)
        else:
            logger.warning("%s arrived as training ended (status %s, step %d); %.2f s from the "
                           "signal to the end of training", self.received.name, status,
                           state.global_step, took)


class StepAgreement:
    """Several processes: after each optimizer step, stop all of them if any got a signal.

    One all-reduce (MAX) of one number per handled signal, on a gloo group of CPU tensors: the
    default group when it is gloo, else one of its own, so that no accelerator is synchronised.
    """

    name = "preemption.agreement"

    def __init__(self, watch: SignalWatch, timeout_s: float):
        import torch.distributed as dist

        self.watch = watch
        self._dist = dist
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(
            backend="gloo", timeout=timedelta(seconds=timeout_s))
        self._votes = torch.zeros(len(watch.signals), dtype=torch.uint8)

    def vote(self) -> signal.Signals | None:
        """A signal some process got (this one's first), or ``None``; every process must call it."""
        watch, votes = self.watch, self._votes
        votes.zero_()
        if watch.received is not None:
            votes[watch.signals.index(watch.received)] = 1
        self._dist.all_reduce(votes, op=self._dist.ReduceOp.MAX, group=self._group)
        if watch.received is not None:
            return watch.received
        return watch.signals[int(votes.argmax())] if bool(votes.any()) else None

    @hookimpl
    def on_step_end(self):
        agreed = self.vote()
        if agreed is not None:
            self.watch.request(stop_reason(agreed, here=agreed == self.watch.received))


class StepRewind:
    """One process with gradient accumulation: the torch random state at the start of each step,
    put back when the step is dropped, so the checkpoint holds the state of the last completed step."""

    name = "preemption.rewind"

    def __init__(self) -> None:
        self._step = -1  # global_step when the kept state was taken
        self._cpu: torch.Tensor | None = None
        self._cuda: tuple[torch.device, torch.Tensor] | None = None

    @hookimpl
    def on_step_begin(self, trainer, state):
        self._step = state.global_step
        self._cpu = torch.get_rng_state()
        device = trainer.device
        if device.type == "cuda":
            self._cuda = (device, torch.cuda.get_rng_state(device))

    def rewind(self, state: Any) -> None:
        """Put the kept state back if a step began after the last completed one (it was dropped)."""
        if self._step != state.global_step or self._cpu is None:
            return
        torch.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state(self._cuda[1], self._cuda[0])


@hookimpl
def configure(trainer, args):
    if not args.preemption_signals:
        return
    pm = trainer.plugin_manager
    watch = SignalWatch(args.preemption_signals)
    pm.register(watch, name=SignalWatch.name)
    # workers start with the signals blocked, so one arriving before shield_worker runs waits for it
    trainer.worker_init_fns.append(WorkerSetup(partial(shield_worker, tuple(args.preemption_signals), os.getpid()),
                                               tuple(watch.signals)))
    if trainer.world_size > 1:  # the distributed plugin's configure ran first
        watch.agree_across_processes = True
        watch.agreement_timeout = args.ddp_timeout
        pm.register(StepAgreement(watch, args.ddp_timeout), name=StepAgreement.name)
    elif args.gradient_accumulation_steps > 1:
        watch.rewind = StepRewind()
        pm.register(watch.rewind, name=StepRewind.name)


__all__ = ["EXIT_PREEMPTED", "SignalWatch", "StepAgreement", "StepRewind", "shield_worker", "stop_reason"]
