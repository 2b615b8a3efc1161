"""Throughput: samples/s, tokens/s, FLOP/s and MFU, and memory, per logging window and per run.

Reads: include_num_input_tokens_seen, flops_per_sample, peak_flops (and bf16, fp16,
torch_compile, to pick the peak and to know when FLOPs cannot be counted).

Nothing is read off the accelerator per step. Each training micro-batch is counted on the host,
before it moves to the device (``on_train_batch``): its samples (the first tensor's length), its
tokens (the ``numel`` of the main input, ``model.main_input_name`` or ``input_ids``) and its real
tokens (the sum of ``attention_mask`` when there is one). The counts are summed over the
processes only when a window closes: at a training log, before a checkpoint is written (so that
``state.num_input_tokens_seen`` in the checkpoint is exact) and for the end-of-run summary. A
window's time is wall time on the host, less the evaluations and the checkpoint saves made in it.

FLOPs per sample are counted once, over the first optimizer step's micro-batches (forward and
backward), with :func:`hooktrain.plugins.flops.flop_counter`, unless ``flops_per_sample`` gives
them. That step, slowed by the counting, is left out of the rates (its samples, tokens and time),
never out of the counts. See docs/throughput.md for each figure and its formula.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch

from hooktrain.core.markers import hookimpl
from hooktrain.plugins.peak_flops import lookup_peak_flops

logger = logging.getLogger("hooktrain")

MIB = 2**20
MASK_KEY = "attention_mask"
_WHOLE = object()  # "the batch itself" (a batch that is one tensor)


class PeakRss:
    """The peak resident set size of this process since the last :meth:`reset`.

    On Linux ``getrusage``'s ``ru_maxrss`` is the process's RSS high-water mark, which writing
    ``5`` to ``/proc/self/clear_refs`` resets; elsewhere (or where that file cannot be written)
    the peak is the one since the process started. DataLoader worker processes are not included.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            import resource
        except ImportError:  # Windows
            self._resource: Any = None
            return
        self._resource = resource
        if sys.platform.startswith("linux"):
            try:
                self._fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = None

    @property
    def resettable(self) -> bool:
        return self._fd is not None

    def read_mib(self) -> float | None:
        if self._resource is None:
            return None
        peak = self._resource.getrusage(self._resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere

    def reset(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"5")
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FirstStepFlops:
    """Counts the FLOPs of the first optimizer step's micro-batches (forward and backward)."""

    def __init__(self, micro_batches: int):
        self.micro_batches = micro_batches  # of the first step (gradient_accumulation_steps)
        self.seen = 0
        self.samples = 0
        self.mode: Any = None
        self.flops_per_sample: float | None = None
        self.seconds = 0.0  # the counted micro-batches' time, from the first one's start to stop()

    def batch(self, samples: int) -> bool:
        """A micro-batch starts: enter the counter on the first; False (and stopped) once the first
        step's micro-batches are all behind."""
        if self.seen == self.micro_batches:
            self.stop()
            return False
        if self.mode is None:
            from hooktrain.plugins.flops import flop_counter

            self.seconds = -time.perf_counter()
            self.mode = flop_counter()
            self.mode.__enter__()
        self.seen += 1
        self.samples += samples
        return True

    def stop(self) -> None:
        """Leave the counter (idempotent) and fix ``flops_per_sample``."""
        mode, self.mode = self.mode, None
        if mode is None:
            return
        mode.__exit__(None, None, None)
        self.seconds += time.perf_counter()
        if self.samples:
            self.flops_per_sample = mode.get_total_flops() / self.samples


class Window:
    """Counts summed over every process, and the seconds, of one stretch of training."""

    __slots__ = ("samples", "tokens", "real_tokens", "flops", "seconds")

    def __init__(self) -> None:
        self.samples = self.tokens = self.real_tokens = 0
        self.flops = 0.0
        self.seconds = 0.0

    def add(self, other: Window) -> None:
        self.samples += other.samples
        self.tokens += other.tokens
        self.real_tokens += other.real_tokens
        self.flops += other.flops
        self.seconds += other.seconds


class Throughput:
    """Counts what the loop trains on and reports rates and memory in the training logs."""

    def __init__(self, mode: str, flops_per_sample: float | None, peak_flops: float | None, count_flops: bool):
        self.mode = mode
        self.given_flops_per_sample = flops_per_sample
        self.given_peak = peak_flops
        self.count_flops = count_flops
        self.rss: PeakRss | None = None  # open from on_train_begin to on_train_end
        self._reset_run()

    def _reset_run(self) -> None:
        # this process's counts since the last flush (the hot path adds to these), and those of
        # the micro-batches whose FLOPs were counted (left out of the rates)
        self.samples = self.tokens = self.real_tokens = 0
        self.unrated = [0, 0, 0]
        self.has_tokens = False
        self._keys: tuple[Any, Any, bool] | None = None  # (sample key, token key, has a mask)
        self.counts_main_input = False
        self._watch: FirstStepFlops | None = None  # while the first step's FLOPs are counted
        self.counted: FirstStepFlops | None = None
        self.window = Window()  # summed over processes since the last log
        self.run = Window()
        self.started = 0.0  # perf_counter at the window's start; 0: not training
        self.excluded = 0.0  # seconds of evaluation and saving in the window
        self.peaks: dict[str, float] = {}
        self.peak: float | None = None
        self._peak_known = False

    # ---- the run --------------------------------------------------------------------------

    @hookimpl
    def on_train_begin(self, trainer, args):
        self._reset_run()
        self.world_size = trainer.world_size
        self.main_input = getattr(trainer.model, "main_input_name", "input_ids")
        if self.given_flops_per_sample is None and self.count_flops:
            self._watch = self.counted = FirstStepFlops(args.gradient_accumulation_steps)
        self.cuda = trainer.device if trainer.device.type == "cuda" else None
        self.rss = PeakRss()
        self._reset_memory()
        self.started = time.perf_counter()

    @hookimpl
    def on_train_batch(self, batch):
        """The hot path: a few attribute reads and additions per micro-batch."""
        keys = self._keys
        if keys is None:
            keys = self._keys = self._batch_keys(batch)
        sample_key, token_key, masked = keys
        samples = 1 if sample_key is None else (batch if sample_key is _WHOLE else batch[sample_key]).shape[0]
        self.samples += samples
        tokens = real = 0
        if token_key is not None:
            tokens = batch[token_key].numel()
            real = int(batch[MASK_KEY].sum()) if masked else tokens
            self.tokens += tokens
            self.real_tokens += real
        if self._watch is not None:  # the first step: FLOPs being counted
            self._watched(samples, tokens, real)

    def _watched(self, samples: int, tokens: int, real: int) -> None:
        """A micro-batch while FLOPs are counted: counted too (and left out of the rates), or the
        first one after the counted step (the counting ends)."""
        if self._watch is not None and self._watch.batch(samples):
            self.unrated = [self.unrated[0] + samples, self.unrated[1] + tokens, self.unrated[2] + real]
        else:
            self._stop_counting()

    def _batch_keys(self, batch: Any) -> tuple[Any, Any, bool]:
        """Where the samples and tokens are in batches shaped like *batch*: the samples are the
        length of the main input (else of the first tensor), the tokens the main input's elements
        (else the attention mask's)."""
        if isinstance(batch, torch.Tensor):
            return (_WHOLE if batch.dim() else None), None, False
        mapping = isinstance(batch, Mapping)  # a dict, or transformers' BatchEncoding
        items = batch.items() if mapping else enumerate(batch) if isinstance(batch, (list, tuple)) else ()
        sample_key = next((k for k, v in items if isinstance(v, torch.Tensor) and v.dim()), None)
        token_key: Any = None
        masked = mapping and isinstance(batch.get(MASK_KEY), torch.Tensor)
        if mapping and isinstance(batch.get(self.main_input), torch.Tensor):
            token_key = sample_key = self.main_input
            self.counts_main_input = True
        elif masked:
            token_key = MASK_KEY
        if not self.counts_main_input and self.mode != "no":
            logger.warning(
                "include_num_input_tokens_seen=%r counts the model's main input %r, which the batches "
                "do not have: num_input_tokens_seen stays unchanged (set main_input_name on the model)",
                self.mode, self.main_input)
        self.has_tokens = token_key is not None
        return sample_key, token_key, masked

    # ---- flushing counts into the window and the state -------------------------------------

    def _flush(self, trainer: Any, state: Any, seconds: float = 0.0) -> None:
        """Sum this process's counts since the last flush over the processes: all of them go into
        the state, those outside the FLOP-counted step into the window's rates. Every process
        calls it at the same points."""
        self._stop_counting()
        per_sample = self.flops_per_sample or 0.0
        counts = [self.samples, self.tokens, self.real_tokens]
        rated = [n - u for n, u in zip(counts, self.unrated, strict=True)]
        values = [*map(float, counts), *map(float, rated), per_sample * counts[0], per_sample * rated[0], seconds]
        self.samples = self.tokens = self.real_tokens = 0
        self.unrated = [0, 0, 0]
        if self.world_size > 1:
            mean = trainer.plugin_manager.hook.reduce_mean(
                trainer=trainer, value=torch.tensor(values, dtype=torch.float64))
            if mean is not None:  # sums, but the seconds: the processes' mean
                values = [float(v) * self.world_size for v in mean.tolist()[:8]] + [float(mean[8])]
        _, tokens, real = (round(v) for v in values[:3])
        got = Window()
        got.samples, got.tokens, got.real_tokens = (round(v) for v in values[3:6])
        got.flops, got.seconds = values[7], values[8]
        self.window.add(got)
        if self.counts_main_input and self.mode != "no":
            state.num_input_tokens_seen += tokens if self.mode == "all" else real
        state.total_flos += values[6]

    @property
    def flops_per_sample(self) -> float | None:
        if self.given_flops_per_sample is not None:
            return self.given_flops_per_sample or None  # 0: no FLOP figures
        return self.counted.flops_per_sample if self.counted is not None else None

    def _stop_counting(self) -> None:
        """End the FLOP count (idempotent); its time is not the window's."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
            if self.started:
                self.excluded += watch.seconds

    def _close_window(self, trainer: Any, state: Any) -> Window:
        """Flush and end the current window; its totals (seconds: the processes' mean)."""
        self._stop_counting()
        now = time.perf_counter()
        # a window without a training step (after the last log: a final evaluation, the end of
        # the run) holds no training time; every process sees the same steps
        stepped = bool(self.samples or self.window.samples)
        seconds = max(now - self.started - self.excluded, 0.0) if self.started and stepped else 0.0
        self._flush(trainer, state, seconds)
        window, self.window = self.window, Window()
        self.run.add(window)
        self.started, self.excluded = now, 0.0
        return window

    # ---- the figures -------------------------------------------------------------------------

    def _peak_flops(self, trainer: Any) -> float | None:
        if not self._peak_known:
            self._peak_known = True
            self.peak = self.given_peak
            if self.peak is None and self.cuda is not None:
                name = torch.cuda.get_device_name(self.cuda)
                dtype = compute_dtype(trainer.args)
                self.peak = lookup_peak_flops(name, dtype)
                if self.peak is None:
                    logger.info("no peak FLOP/s known for %s in %s: no MFU (set peak_flops)", name, dtype)
        return self.peak

    def rates(self, trainer: Any, window: Window) -> dict[str, float]:
        """The rates of *window*: over every process, per process, and MFU."""
        if window.seconds <= 0 or window.samples <= 0:
            return {}  # e.g. a window of the FLOP-counted step alone
        world = self.world_size
        logs = {
            "samples_per_second": window.samples / window.seconds,
            "samples_per_second_per_process": window.samples / world / window.seconds,
        }
        if self.has_tokens:
            logs["tokens_per_second"] = window.real_tokens / window.seconds
            logs["tokens_per_second_per_process"] = window.real_tokens / world / window.seconds
        if window.flops:
            flops_per_second = window.flops / window.seconds
            logs["flops_per_second"] = flops_per_second
            peak = self._peak_flops(trainer)
            if peak:
                logs["mfu"] = flops_per_second / world / peak
        return logs

    def memory(self) -> dict[str, float]:
        """Peak memory of this process since the last reset, in MiB; then reset."""
        logs: dict[str, float] = {}
        rss = self.rss.read_mib() if self.rss is not None else None
        if rss is not None:
            logs["host_peak_rss_mib"] = rss
        if self.cuda is not None:
            logs["device_max_allocated_mib"] = torch.cuda.max_memory_allocated(self.cuda) / MIB
            logs["device_max_reserved_mib"] = torch.cuda.max_memory_reserved(self.cuda) / MIB
        for key, value in logs.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        self._reset_memory()
        return logs

    def _reset_memory(self) -> None:
        if self.rss is not None:
            self.rss.reset()
        if self.cuda is not None:
            torch.cuda.reset_peak_memory_stats(self.cuda)

    # ---- where the figures go ------------------------------------------------------------

    @hookimpl
    def extra_logs(self, trainer, state):
        if not self.started:
            return None
        window = self._close_window(trainer, state)
        logs = {**self.rates(trainer, window), **self.memory()}
        if self.mode != "no":
            logs["num_input_tokens_seen"] = state.num_input_tokens_seen
        return logs

    @hookimpl
    def summary_logs(self, trainer, state):
        """Run averages over this ``train()`` call's training time (evaluations and saves excluded)."""
        if not self.started:
            return None
        self._close_window(trainer, state)
        run = self.run
        logs = {f"train_{k}": v for k, v in self.rates(trainer, run).items() if not k.startswith("samples_")}
        logs["train_throughput_runtime"] = round(run.seconds, 4)
        self.memory()
        logs.update({f"train_{k}": v for k, v in self.peaks.items()})
        logs["total_flos"] = state.total_flos
        if self.mode != "no":
            logs["num_input_tokens_seen"] = state.num_input_tokens_seen
        self.started = 0.0
        return logs

    @hookimpl
    def on_log(self, logs):
        """An evaluation's time is not training time."""
        if self.started:
            for key, value in logs.items():
                if key.endswith("_runtime") and not key.startswith("train_") and isinstance(value, (int, float)):
                    self.excluded += float(value)

    @hookimpl(wrapper=True)
    def save_checkpoint(self, trainer, state):
        """The state saved holds every token counted so far; the save's time is not training time."""
        start = time.perf_counter()
        if self.started:
            self._flush(trainer, state)
        try:
            return (yield)
        finally:
            if self.started:
                self.excluded += time.perf_counter() - start

    @hookimpl
    def on_exception(self):
        self._stop_counting()

    @hookimpl
    def on_train_end(self):
        self._stop_counting()
        self.started = 0.0
        if self.rss is not None:
            self.rss.close()
            self.rss = None


def compute_dtype(args: Any) -> str:
    """The dtype of the matrix products: ``bf16``, ``fp16``, ``tf32`` (fp32 with TF32 on) or ``fp32``."""
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9: "tf32", "ieee" or "none"
    if precision in ("tf32", "ieee"):
        return "tf32" if precision == "tf32" else "fp32"
    return "tf32" if matmul.allow_tf32 else "fp32"


@hookimpl
def configure(trainer, args):
    if args.torch_compile and args.flops_per_sample is None:
        logger.info("torch_compile: FLOPs are not counted (a compiled model hides its operations from "
                    "the counter); give flops_per_sample for FLOP/s and MFU")
    trainer.plugin_manager.register(
        Throughput(
            mode=args.include_num_input_tokens_seen,  # "all", "non_padding" or "no"
            flops_per_sample=args.flops_per_sample,
            peak_flops=args.peak_flops,
            count_flops=not args.torch_compile,
        ),
        name="throughput.meter",
    )
