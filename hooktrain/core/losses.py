"""Training-loss bookkeeping that never synchronises the device on a step that is not logged."""

from __future__ import annotations

import torch


class LossWindow:
    """Per-step losses of the current logging window, kept on the device until a log is due."""

    def __init__(self, filter_nonfinite: bool):
        self.filter_nonfinite = filter_nonfinite
        self.pending: list[torch.Tensor] = []  # per-step losses (0-d tensors) since the last close
        self.total_loss = 0.0  # sum of the per-step losses of every closed window (this train() call)
        self.total_steps = 0
        self.total_nonfinite = 0

    def add(self, step_loss: torch.Tensor) -> None:
        """Keep one step's loss (no device synchronisation)."""
        pending = self.pending
        pending.append(step_loss)
        if len(pending) >= 4096:  # logging off or rare: bound the memory
            pending[:] = [torch.cat([t.float().reshape(-1) for t in pending])]

    def close(self) -> tuple[float, int, int]:
        """Return ``(mean loss, steps, non-finite steps)`` of the window and start a new one."""
        if not self.pending:
            return float("nan"), 0, 0
        losses = torch.cat([t.float().reshape(-1) for t in self.pending]).cpu()
        self.pending.clear()
        finite = torch.isfinite(losses)
        steps = losses.numel()
        nonfinite = int(steps - int(finite.sum()))
        kept = losses[finite] if self.filter_nonfinite else losses
        mean = float(kept.mean()) if kept.numel() else float("nan")
        if kept.numel():
            self.total_loss += float(kept.sum()) * (steps / kept.numel())
        else:
            self.total_loss = float("nan")
        self.total_steps += steps
        self.total_nonfinite += nonfinite
        return mean, steps, nonfinite

    def mean_over_run(self) -> float:
        self.close()
        return self.total_loss / self.total_steps if self.total_steps else 0.0
