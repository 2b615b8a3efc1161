"""``hooktrain checkpoints OUTPUT_DIR [--json]``: the checkpoints of a run and whether each verifies.

One row per ``checkpoint-N`` (and per interrupted save left as ``.tmp-checkpoint-N``), by step:
the step, the epoch, the value of the ranking metric at that step, whether it is the run's best
checkpoint, its size on disk, and whether it verifies against its manifest (with the reasons
when not). Exit status: 0 when every checkpoint verifies, 1 when one does not, 2 when
OUTPUT_DIR does not exist.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hooktrain.checkpointing.format import (
    ARGS_NAME,
    TMP_PREFIX,
    TRAINER_STATE_NAME,
    checkpoint_step,
    list_checkpoints,
    verify,
)
from hooktrain.core.monitor import Monitor


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _metric_at(state: dict[str, Any], name: str, step: int) -> float | None:
    for entry in reversed(state.get("log_history") or []):
        if entry.get("step") == step and name in entry:
            return entry[name]
    return None


def describe(output_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per checkpoint of *output_dir* (see the module docstring), by step."""
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    newest_state: dict[str, Any] = {}
    for step, path in list_checkpoints(out):
        state = newest_state = _read_json(path / TRAINER_STATE_NAME)
        metric = Monitor(_read_json(path / ARGS_NAME).get("metric_for_best_model") or "loss").name
        problems = verify(path)
        rows.append({
            "name": path.name, "path": str(path), "step": step, "epoch": state.get("epoch"),
            "metric": metric, "value": _metric_at(state, metric, step),
            "best_metric": state.get("best_metric"), "best": False,
            "size_bytes": _size(path), "verified": not problems, "problems": problems,
            "incomplete": False,
        })
    left_overs = (  # what an interrupted save or replacement left; the next start of training tidies it
        (TMP_PREFIX, "an interrupted save (removed at the next start of training)"),
        (f"{TMP_PREFIX}replaced-", "set aside by an interrupted replacement (put back at the next start "
                                   "of training)"),
    )
    for prefix, problem in left_overs:
        for path in sorted(out.glob(f"{prefix}checkpoint-*")) if out.is_dir() else []:
            tmp_step = checkpoint_step(path.name.removeprefix(prefix))
            if tmp_step is None or not path.is_dir():
                continue
            rows.append({
                "name": path.name, "path": str(path), "step": tmp_step, "epoch": None, "metric": None,
                "value": None, "best_metric": None, "best": False, "size_bytes": _size(path),
                "verified": False, "problems": [problem], "incomplete": True,
            })
    rows.sort(key=lambda r: (r["step"], r["incomplete"]))
    complete = [r for r in rows if not r["incomplete"]]
    if complete:  # the newest checkpoint's state knows the run's best
        best_step = newest_state.get("best_global_step")
        for row in complete:
            row["best"] = best_step is not None and row["step"] == best_step
    return rows


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _number(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hooktrain checkpoints",
        description="List the checkpoints of OUTPUT_DIR: step, metric, size, and whether each verifies.",
    )
    parser.add_argument("output_dir")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(opts.output_dir)
    if not out.is_dir():
        print(f"hooktrain checkpoints: no such directory: {out}", file=sys.stderr)
        return 2
    rows = describe(out)
    if opts.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no checkpoints in {out}")
    else:
        metric = next((r["metric"] for r in rows if r["metric"]), "metric")
        header = ("checkpoint", "step", "epoch", metric, "best", "size", "verifies")
        table = [header]
        for r in rows:
            verdict = "yes" if r["verified"] else "NO: " + "; ".join(r["problems"])
            table.append((r["name"], str(r["step"]), _number(r["epoch"]), _number(r["value"]),
                          f"best ({_number(r['best_metric'])})" if r["best"] else "",
                          _human(r["size_bytes"]), verdict))
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
