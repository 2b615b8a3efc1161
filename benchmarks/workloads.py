"""perf.md's W2 workload, shared by the benchmarks: an MLP 512 → 2048 → 2048 → 10 (5.27 M
parameters, 63 MB with AdamW's state) on random inputs with 10 classes."""

from __future__ import annotations

import torch

N_FEATURES, N_CLASSES = 512, 10
SIZES = (N_FEATURES, 2048, 2048, N_CLASSES)


class MLP(torch.nn.Module):
    """Linear layers of *sizes* with ReLU between them; ``forward(x, labels)`` gives ``{"loss"}``."""

    def __init__(self, sizes: tuple[int, ...] = SIZES):
        super().__init__()
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}


class Data(torch.utils.data.Dataset):
    """*n* samples ``{"x": (dim,), "labels": ()}``, the same for every run (seed 1234)."""

    def __init__(self, n: int, dim: int = N_FEATURES, classes: int = N_CLASSES):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}
