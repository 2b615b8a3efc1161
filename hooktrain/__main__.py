"""The ``hooktrain`` command (also ``python -m hooktrain``).

    hooktrain train CONFIG.yaml [--any_training_argument value ...]
    hooktrain plugins [--json]
    hooktrain checkpoints OUTPUT_DIR [--json]
    hooktrain plot OUTPUT_DIR [--out FILE]

A training config is a YAML (or JSON) file of ``TrainingArguments`` plus ``task``: the
``"module:function"`` or ``"path/to/file.py:function"`` that builds the run. It is called with the
``TrainingArguments`` and returns a dict of ``Trainer`` keyword arguments (``model``,
``train_dataset``, ``eval_dataset``, ``compute_metrics``, ``data_collator``, ``compute_loss``,
``plugins``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def load_task(spec: str, base: Path) -> Callable[..., dict[str, Any]]:
    """Import ``module:function`` or ``file.py:function`` (relative to the config's folder)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise SystemExit(f"task must look like 'package.module:function' or 'file.py:function', got {spec!r}")
    if target.endswith(".py"):
        path = (base / target).resolve() if not Path(target).is_absolute() else Path(target)
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise SystemExit(f"cannot load task file {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))
        # registered like an imported module, so dataclasses, pickling and DataLoader workers find it
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, attr)


def cmd_train(argv: Sequence[str]) -> int:
    from hooktrain import Trainer
    from hooktrain.core.cli import load_config_file, parse_args

    if argv and argv[0] in ("-h", "--help"):
        from hooktrain.core.cli import build_parser

        build_parser().print_help()
        return 0
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: hooktrain train CONFIG.yaml [--training_argument value ...]")
    config_path = Path(argv[0])
    values = load_config_file(config_path)
    task = values.pop("task", None)
    if task is None:
        raise SystemExit(f"{config_path}: needs a 'task: module:function' entry that builds the run")
    args = parse_args(list(argv[1:]), defaults=values)
    build = load_task(task, config_path.parent)
    trainer = Trainer(args=args, **build(args))
    result = trainer.train()  # resumes when args.resume_from_checkpoint says so ("true" = newest)
    trainer.save_model()
    trainer.save_state()
    print_summary(trainer, result)
    return 0


def print_summary(trainer: Any, result: Any) -> None:
    """What a user wants after a run: final metrics, the best step, where everything is."""
    args, state = trainer.args, trainer.state
    if not trainer.is_world_process_zero:
        return
    out = Path(args.output_dir).resolve()
    lines = ["", "=" * 72, f"finished: {state.global_step} steps, train_loss {result.training_loss:.4f}"]
    if state.stop_reason:
        lines.append(f"stopped early: {state.stop_reason}")
    evals = [e for e in state.log_history if "eval_loss" in e]
    if evals:
        final = {k: round(v, 4) for k, v in evals[-1].items() if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))}
        lines.append(f"last evaluation (step {evals[-1]['step']}): {final}")
    if state.best_global_step is not None:
        lines.append(
            f"best: step {state.best_global_step} with {args.metric_for_best_model} = {state.best_metric:.4f}"
            + (" (weights loaded into the model)" if args.load_best_model_at_end else "")
        )
    from hooktrain.plugins.checkpoint import WEIGHTS_BIN_NAME, WEIGHTS_NAME, list_checkpoints

    checkpoints = [p.name for _, p in list_checkpoints(out)]
    weights = WEIGHTS_NAME if args.save_safetensors else WEIGHTS_BIN_NAME
    lines.append(f"model:        {out}  ({weights}, training_args.json)")
    lines.append(f"checkpoints:  {', '.join(checkpoints) or 'none'}  (list them: hooktrain checkpoints {out})")
    if "tensorboard" in args.report_to or "all" in args.report_to:
        lines.append(f"tensorboard:  {args.logging_dir}  (view: tensorboard --logdir {args.logging_dir})")
    from hooktrain.plugins.reporting import active_reporters

    for name, reporter in active_reporters(trainer).items():
        uri = getattr(reporter, "tracking_uri", None)
        if name == "mlflow" and uri:
            lines.append(f"mlflow:       {uri}  (view: mlflow ui --backend-store-uri {uri})")
    try:
        from hooktrain.plot import plot

        lines.append(f"plot:         {plot(out)}")
    except ImportError:
        lines.append('plot:         skipped (pip install "hooktrain[plot]")')
    lines.append("=" * 72)
    print("\n".join(lines), flush=True)


def cmd_plugins(argv: Sequence[str]) -> int:
    from dataclasses import asdict

    from hooktrain.core.manager import build_manager

    parser = argparse.ArgumentParser(prog="hooktrain plugins", description="List every plugin.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(argv)
    infos = build_manager().describe()
    if opts.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    for info in infos:
        origin = f"{info.distribution} {info.version}".strip()
        print(f"{info.name}  [{origin}{', built-in' if info.builtin else ''}]")
        print(f"    hooks: {', '.join(info.hooks) or '-'}")
        for kind, names in info.registers.items():
            print(f"    {kind.replace('_', ' ')}: {', '.join(names)}")
    return 0


def cmd_plot(argv: Sequence[str]) -> int:
    from hooktrain.plot import plot

    parser = argparse.ArgumentParser(prog="hooktrain plot", description="Plot trainer_state.json curves.")
    parser.add_argument("output_dir")
    parser.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/training.png)")
    opts = parser.parse_args(argv)
    print(plot(opts.output_dir, opts.out))
    return 0


def cmd_checkpoints(argv: Sequence[str]) -> int:
    from hooktrain.checkpoints_cli import main as checkpoints_main

    return checkpoints_main(list(argv))


COMMANDS = {"train": cmd_train, "plugins": cmd_plugins, "plot": cmd_plot, "checkpoints": cmd_checkpoints}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
