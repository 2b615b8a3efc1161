"""Peak dense FLOP/s of common GPUs per compute dtype, for MFU (the throughput plugin).

The figures are the vendors' datasheet numbers for dense math (the "with sparsity" figures
halved), in FLOP/s per device. ``peak_flops`` in the arguments overrides the table; a device or
dtype that is not here gives no MFU.
"""

from __future__ import annotations

import re

__all__ = ["DTYPES", "PEAK_FLOPS", "lookup_peak_flops"]

DTYPES = ("bf16", "fp16", "tf32", "fp32")

T = 1e12

#: (model name, {dtype: FLOP/s}); the first one found as a whole word in the device name wins, so
#: the more specific names come first ("H100 PCIE" before "H100"). An empty dict: known to differ
#: from its namesakes and not tabulated (no MFU without ``peak_flops``).
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("B200", {"bf16": 2250 * T, "fp16": 2250 * T, "tf32": 1100 * T, "fp32": 75 * T}),
    ("GH200", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 66.9 * T}),
    ("H200 NVL", {"bf16": 835.5 * T, "fp16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    ("H200", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 66.9 * T}),
    ("H100 NVL", {"bf16": 835.5 * T, "fp16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    ("H100 PCIE", {"bf16": 756 * T, "fp16": 756 * T, "tf32": 378 * T, "fp32": 51.2 * T}),
    ("H100", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 66.9 * T}),  # SXM
    ("A100", {"bf16": 312 * T, "fp16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T}),
    ("A10G", {}),
    ("A10", {"bf16": 125 * T, "fp16": 125 * T, "tf32": 62.5 * T, "fp32": 31.2 * T}),
    ("L40S", {"bf16": 362 * T, "fp16": 362 * T, "tf32": 183 * T, "fp32": 91.6 * T}),
    ("L40", {"bf16": 181 * T, "fp16": 181 * T, "tf32": 90.5 * T, "fp32": 90.5 * T}),
    ("L4", {"bf16": 121 * T, "fp16": 121 * T, "tf32": 60 * T, "fp32": 30.3 * T}),
    ("RTX 4090", {"bf16": 165.2 * T, "fp16": 165.2 * T, "tf32": 82.6 * T, "fp32": 82.6 * T}),
    ("RTX 3090", {"bf16": 71 * T, "fp16": 71 * T, "tf32": 35.6 * T, "fp32": 35.6 * T}),
    ("V100 PCIE", {"fp16": 112 * T, "fp32": 14 * T}),
    ("V100", {"fp16": 125 * T, "fp32": 15.7 * T}),  # SXM2
    ("T4", {"fp16": 65 * T, "fp32": 8.1 * T}),
)


def lookup_peak_flops(device_name: str, dtype: str) -> float | None:
    """The table's peak FLOP/s of *device_name* (``torch.cuda.get_device_name()``) for *dtype*
    (one of :data:`DTYPES`); ``None`` when the device or the dtype is not in the table."""
    name = " ".join(device_name.upper().replace("-", " ").replace("_", " ").split())
    for model, peaks in PEAK_FLOPS:
        if re.search(rf"(?<![A-Z0-9]){re.escape(model)}(?![A-Z0-9])", name):
            return peaks.get(dtype)
    return None
