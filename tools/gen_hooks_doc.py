"""Write docs/hooks.md from the hook specifications (their signatures and docstrings)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from hooktrain.core import hookspecs

SECTIONS = [
    ("Plugin system and registries", "every implementation runs",
     ["validate_args", "configure", "register_reporters", "register_save_policies"]),
    ("Events", "every implementation runs; the return value is ignored",
     ["on_train_begin", "on_epoch_begin", "on_step_begin", "on_train_batch", "on_step_end", "on_log",
      "on_evaluate", "on_predict", "on_save", "on_epoch_end", "on_train_end", "on_exception", "on_interrupt"]),
    ("Contributions", "every implementation runs; the loop merges what they return",
     ["extra_logs", "summary_logs", "protected_checkpoints", "plugin_state", "load_plugin_state"]),
    ("Decisions", "firstresult: the first non-None answer wins; built-in answers are trylast",
     ["should_save", "should_stop", "should_end_epoch", "count_loss_items"]),
    ("Actions", "firstresult, with a trylast built-in you can replace or wrap",
     ["create_optimizer", "create_scheduler", "training_step", "backward", "optimizer_step",
      "evaluation_loop", "reduce_mean", "save_checkpoint", "save_model", "resume_checkpoint"]),
]

INTRO = """# Hooks

Every hook hooktrain calls, generated from `hooktrain/core/hookspecs.py`
(`python tools/gen_hooks_doc.py`; a test fails when this page is stale). Implement a hook by
writing a function or method with the hook's name, marked `@hooktrain.hookimpl`; it may accept
any subset of the hook's keyword arguments. A misspelt hook name is an error when the
`Trainer` is built.

`@hookimpl(tryfirst=True)` / `@hookimpl(trylast=True)` order implementations;
`@hookimpl(wrapper=True)` wraps the others (`result = yield`) — the precision plugin wraps
`training_step` in autocast that way.

Reporters are not hooks. A reporter is an object with `report_*` methods (`hooktrain.Reporter`),
added to the reporter registry by `register_reporters` and called by the reporting plugin on a
thread of its own; see [reporters.md](reporters.md#writing-a-reporter).
"""


def render() -> str:
    out = [INTRO]
    listed = [n for _, _, names in SECTIONS for n in names]
    missing = sorted(set(hookspecs.__all__) - set(listed))
    if missing:
        raise SystemExit(f"hooks not placed in a section: {missing}")
    for title, rule, names in SECTIONS:
        out.append(f"\n## {title}\n\n_{rule}._\n")
        for name in names:
            spec = getattr(hookspecs, name)
            params = ", ".join(inspect.signature(spec).parameters)
            opts = getattr(spec, "hooktrain_spec", {}) or {}
            kind = "firstresult" if opts.get("firstresult") else "all implementations"
            doc = inspect.getdoc(spec) or ""
            body, _, params_doc = doc.partition(":param")
            args = re.findall(r":param (\w+): (.+)", ":param" + params_doc if params_doc else "")
            out.append(f"\n### `{name}({params})`\n\n*{kind}*\n\n{body.strip()}\n")
            if args:
                out.append("\n" + "\n".join(f"- `{a}`: {d}" for a, d in args) + "\n")
    return "".join(out)


if __name__ == "__main__":
    Path(__file__).resolve().parents[1].joinpath("docs", "hooks.md").write_text(render(), encoding="utf-8")
