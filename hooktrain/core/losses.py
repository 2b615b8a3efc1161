"""Training-loss bookkeeping that never synchronises an accelerator on a step that is not logged."""

from __future__ import annotations

import torch


class LossWindow:
    """Per-step training losses of the current logging window, and of the whole ``train()`` call.

    With ``read_each_step`` (a CPU run, where reading a value waits for nothing) each step's loss
    is read at once into running sums. Otherwise (an accelerator) the 0-d loss tensors stay on
    the device until a log is due, so that no step waits for the device. Keeping tensors is not
    the default on the CPU because holding dozens of small tensors alive across steps slowed the
    W1 benchmark's CPU step by about 4 µs (benchmarks/RESULTS.md).
    """

    COMPACT_EVERY = 4096  # kept tensors are concatenated past this many (logging off or rare)

    def __init__(self, filter_nonfinite: bool, read_each_step: bool):
        self.filter_nonfinite = filter_nonfinite
        self.add = self._read if read_each_step else self._keep
        self.pending: list[torch.Tensor] = []  # device losses not read yet
        self.window_sum = 0.0  # of the counted losses (finite ones only when filtering)
        self.window_finite = 0
        self.window_nonfinite = 0
        self.run_sum = 0.0  # of the counted losses of every closed window (this train() call)
        self.run_counted = 0
        self.run_steps = 0

    def _read(self, step_loss: torch.Tensor) -> None:
        value = step_loss.item()
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            self.window_sum += value
            self.window_finite += 1
        else:
            self.window_nonfinite += 1
            if not self.filter_nonfinite:
                self.window_sum += value

    def _keep(self, step_loss: torch.Tensor) -> None:
        pending = self.pending
        pending.append(step_loss.detach())
        if len(pending) >= self.COMPACT_EVERY:  # bound the memory, still without a sync
            pending[:] = [torch.cat([t.float().reshape(-1) for t in pending])]

    def _read_pending(self) -> None:
        losses = torch.cat([t.double().reshape(-1) for t in self.pending]).cpu()
        self.pending.clear()
        finite = torch.isfinite(losses)
        n_finite = int(finite.sum())
        self.window_finite += n_finite
        self.window_nonfinite += losses.numel() - n_finite
        self.window_sum += float((losses[finite] if self.filter_nonfinite else losses).sum())

    def close(self) -> tuple[float, int, int]:
        """Return ``(mean loss, steps, non-finite steps)`` of the window and start a new one."""
        if self.pending:
            self._read_pending()
        nonfinite = self.window_nonfinite
        steps = self.window_finite + nonfinite
        counted = self.window_finite if self.filter_nonfinite else steps
        mean = self.window_sum / counted if counted else float("nan")
        self.run_sum += self.window_sum
        self.run_counted += counted
        self.run_steps += steps
        self.window_sum, self.window_finite, self.window_nonfinite = 0.0, 0, 0
        return mean, steps, nonfinite

    def mean_over_run(self) -> float:
        """The mean of the counted per-step losses of the whole run (closes the open window): 0.0
        without steps, NaN when no step's loss counted."""
        self.close()
        if not self.run_steps:
            return 0.0
        return self.run_sum / self.run_counted if self.run_counted else float("nan")
