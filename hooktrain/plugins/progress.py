"""Progress bar and console log lines (main process only). Reads: disable_tqdm."""

from __future__ import annotations

import logging
import sys
from typing import Any

from hooktrain.core.markers import hookimpl


def format_logs(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One concise console line for a log event."""
    parts = [f"step {step}/{max_steps}"]
    summary = "train_runtime" in logs
    for key, value in logs.items():
        if not summary and (key.endswith("_runtime") or key.endswith("_per_second")):
            continue  # timing details of an evaluation: in the trackers, not on the console
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
            postfix = {k: f"{logs[k]:.4g}" for k in ("loss", "learning_rate") if isinstance(logs.get(k), float)}
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


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
