"""Progress bar and console log lines (main process only). Reads: disable_tqdm.

The bar shows the loss, the learning rate and, from the throughput plugin's figures, tokens/s
(samples/s when the batches have no tokens) and MFU; the console line leaves the rates and the
memory figures of a training log to the bar and the trackers (the end-of-run summary shows all).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hooktrain.core.markers import hookimpl

#: The endings of the keys a training or evaluation log shows in the trackers but not on its
#: console line: timings, rates and memory figures.
_NOT_ON_THE_LINE = ("_runtime", "_per_second", "_per_process", "_mib")


def format_logs(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One concise console line for a log event."""
    parts = [f"step {step}/{max_steps}"]
    summary = "train_runtime" in logs
    for key, value in logs.items():
        if not summary and (key.endswith(_NOT_ON_THE_LINE) or key == "mfu"):
            continue  # timings, rates and memory: on the bar and in the trackers
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


class ConsoleLog:
    """A line per log event on stderr (through the bar, when there is one)."""

    def __init__(self, bar: ProgressBar | None):
        self.bar = bar

    @hookimpl
    def on_log(self, state, logs):
        line = format_logs(state.global_step, state.max_steps, logs)
        bar = self.bar.bar if self.bar is not None else None
        if bar is not None:
            postfix = bar_postfix(logs)
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


def bar_postfix(logs: dict[str, Any]) -> dict[str, str]:
    """The bar's figures from a training log: loss, learning rate, tokens/s (else samples/s), MFU."""
    postfix = {k: f"{logs[k]:.4g}" for k in ("loss", "learning_rate") if isinstance(logs.get(k), float)}
    for key, label in (("tokens_per_second", "tokens/s"), ("samples_per_second", "samples/s")):
        if isinstance(logs.get(key), float):
            postfix[label] = f"{logs[key]:.4g}"
            break
    if isinstance(logs.get("mfu"), float):
        postfix["mfu"] = f"{logs['mfu']:.1%}"
    return postfix


class _AboveTheBar(logging.Handler):
    """Writes hooktrain's log messages above the bar instead of through it."""

    def __init__(self, bar: Any, replaced: logging.Handler):
        super().__init__(replaced.level)  # the replaced handler's level, format and filters
        self.bar = bar
        self.setFormatter(replaced.formatter)
        self.filters = list(replaced.filters)

    def emit(self, record: logging.LogRecord) -> None:
        self.bar.write(self.format(record), file=sys.stderr)


class ProgressBar:
    """A tqdm bar over optimizer steps: step count, loss, LR, ETA."""

    def __init__(self) -> None:
        self.bar: Any = None
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    @hookimpl
    def on_train_begin(self, state):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", dynamic_ncols=True)
        logger = logging.getLogger("hooktrain")
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                above = _AboveTheBar(tqdm, handler)
                logger.removeHandler(handler)
                logger.addHandler(above)
                self._swapped.append((handler, above))

    @hookimpl
    def on_step_end(self):
        self.bar.update(1)

    @hookimpl
    def on_train_end(self):
        logger = logging.getLogger("hooktrain")
        for handler, above in self._swapped:
            logger.removeHandler(above)
            logger.addHandler(handler)
        self._swapped = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@hookimpl
def configure(trainer, args):
    if not trainer.is_world_process_zero:
        return
    bar = None
    if not args.disable_tqdm:
        bar = ProgressBar()
        trainer.plugin_manager.register(bar, name="progress.bar")
    trainer.plugin_manager.register(ConsoleLog(bar), name="progress.console")
