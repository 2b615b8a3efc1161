"""A third-party save policy for hooktrain: save every N minutes of training wall time.

Installed, it registers the save policy ``"walltime"``; select it with
``TrainingArguments(save_strategy="walltime")``. The interval is read from the environment
variable ``HOOKTRAIN_WALLTIME_MINUTES`` (default 30) when the Trainer is built. A checkpoint is
also written at the end of training.

The policy keeps a clock of *training* time (time spent inside ``train()``, summed over resumes)
and stores it in every checkpoint through ``plugin_state``; a resumed run continues that clock
instead of starting from zero, so downtime between a crash and the restart does not count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from hooktrain import hookimpl

ENV = "HOOKTRAIN_WALLTIME_MINUTES"
DEFAULT_MINUTES = 30.0
STATE_KEY = "walltime"


def minutes_from_env() -> float:
    raw = os.environ.get(ENV, "")
    if not raw.strip():
        return DEFAULT_MINUTES
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes >= 0:
        raise ValueError(f"{ENV}={raw!r}: expected a number of minutes >= 0 (0 saves after every step)")
    return minutes


class WalltimePolicy:
    """Answers ``should_save``: yes once ``minutes`` of training time passed since the last save."""

    name = STATE_KEY

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
        self.interval = minutes * 60.0
        self.clock = clock
        self.carried = 0.0  # training seconds of the earlier processes of this run (from a checkpoint)
        self.started: float | None = None
        self.last_save_at = 0.0  # in training seconds
        self.saves = 0

    def training_seconds(self) -> float:
        running = self.clock() - self.started if self.started is not None else 0.0
        return self.carried + running

    @hookimpl
    def on_train_begin(self):
        self.started = self.clock()

    @hookimpl(trylast=True)
    def should_save(self, trigger):
        if trigger == "train_end":
            return True
        if trigger != "step":
            return False
        return self.training_seconds() - self.last_save_at >= self.interval

    @hookimpl
    def on_save(self):
        self.saves += 1
        self.last_save_at = self.training_seconds()

    @hookimpl
    def on_train_end(self):
        self.carried, self.started = self.training_seconds(), None

    @hookimpl
    def plugin_state(self):
        # Asked while a checkpoint is written: the state of a run resumed from that checkpoint,
        # whose last save is that checkpoint itself.
        now = self.training_seconds()
        return STATE_KEY, {"training_seconds": now, "last_save_at": now, "saves": self.saves + 1,
                           "interval_seconds": self.interval}

    @hookimpl
    def load_plugin_state(self, states):
        saved = states.get(STATE_KEY)
        if saved:
            self.carried = float(saved["training_seconds"])
            self.last_save_at = float(saved["last_save_at"])
            self.saves = int(saved["saves"])
            if self.started is not None:  # restored after on_train_begin: restart the running part
                self.started = self.clock()


@hookimpl
def register_save_policies(register):
    register("walltime", lambda args: WalltimePolicy(minutes_from_env()))
