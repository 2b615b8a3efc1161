"""Write docs/arguments.md from the TrainingArguments field metadata (run from anywhere)."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hooktrain.core.cli import render_arguments_markdown  # noqa: E402

(ROOT / "docs" / "arguments.md").write_text(render_arguments_markdown(), encoding="utf-8")
