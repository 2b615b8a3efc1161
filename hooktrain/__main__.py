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

A mistake in the configuration or the input (an unknown or invalid argument, a broken config
file, a missing checkpoint to resume from...) prints ``hooktrain <command>: error: ...`` with
every problem found and exits with status 2. ``--traceback`` (anywhere on the command line) or
``HOOKTRAIN_TRACEBACK=1`` shows the Python traceback instead. An error raised by the task's own
code always shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hooktrain.core.errors import ArgumentError, HooktrainError, did_you_mean


def load_task(spec: Any, base: Path) -> Callable[..., dict[str, Any]]:
    """Import ``module:function`` or ``file.py:function`` (relative to the config's folder).

    A spec that names nothing (a missing file, module or function) is an :class:`ArgumentError`;
    an error raised while the task's own module runs propagates unchanged.
    """
    target, _, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not target or not attr:
        raise ArgumentError(f"task={spec!r} is invalid: must look like 'package.module:function' or "
                            "'path/to/file.py:function'")
    if target.endswith(".py"):
        path = (base / target).resolve() if not Path(target).is_absolute() else Path(target)
        if not path.is_file():
            raise ArgumentError(f"task={spec!r}: the file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ArgumentError(f"task={spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))
        # registered like an imported module, so dataclasses, pickling and DataLoader workers find it
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (target == exc.name or target.startswith(exc.name + ".")):
                raise  # the task's module itself imports something missing: its own error
            raise ArgumentError(f"task={spec!r}: no module named {exc.name!r}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ArgumentError(f"task={spec!r}: {target} has no function {attr!r}{did_you_mean(attr, names)}")
    return function


def cmd_train(argv: Sequence[str]) -> int:
    from hooktrain.core.cli import build_parser, load_config_file, parse_args

    if argv and argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    if not argv or argv[0].startswith("-"):
        raise UsageError("the config file comes first: hooktrain train CONFIG.yaml "
                         "[--training_argument value ...] (hooktrain train --help lists the arguments)")
    config_path = Path(argv[0])
    values = load_config_file(config_path)
    task = values.pop("task", None)
    if task is None:
        raise ArgumentError(f"config file {str(config_path)!r} needs a 'task: module:function' entry "
                            "that builds the run")
    args = parse_args(list(argv[1:]), defaults=values)
    build = load_task(task, config_path.parent)
    from hooktrain import Trainer

    trainer = Trainer(args=args, **build(args))
    result = trainer.train()  # resumes when args.resume_from_checkpoint says so ("true" = newest)
    if result.status == "interrupted":  # e.g. preempted: its checkpoint is written; exit for a requeue
        from hooktrain.core.interrupts import EXIT_INTERRUPTED

        if trainer.is_world_process_zero:
            print(f"interrupted at step {result.global_step} ({trainer.state.stop_reason}); resume with "
                  f"--resume_from_checkpoint true; exit status {EXIT_INTERRUPTED}", flush=True)
        return EXIT_INTERRUPTED
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
    from hooktrain.checkpointing import WEIGHTS_BIN_NAME, WEIGHTS_NAME, list_checkpoints

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
TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "HOOKTRAIN_TRACEBACK"


class UsageError(ArgumentError):
    """The command line itself is wrong (no command, an unknown command, a missing config file)."""


def is_user_error(exc: BaseException) -> bool:
    """A mistake in the configuration or the input, as opposed to a bug or a crash: one of
    hooktrain's own errors that is also a ``ValueError`` or ``KeyError``."""
    return isinstance(exc, HooktrainError) and isinstance(exc, (ValueError, KeyError))


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # KeyError's str() quotes its argument
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes")
    argv = [a for a in argv if a != TRACEBACK_FLAG]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--version":
        from hooktrain import __version__

        print(f"hooktrain {__version__}")
        return 0
    prog = f"hooktrain {argv[0]}" if argv[0] in COMMANDS else "hooktrain"
    try:
        if argv[0] not in COMMANDS:
            shown = ", ".join(COMMANDS)
            raise UsageError(f"unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)} "
                             f"(commands: {shown}; hooktrain --help shows their usage)")
        return COMMANDS[argv[0]](argv[1:])
    except Exception as exc:
        if show_traceback or not is_user_error(exc):
            raise
        print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
        if not isinstance(exc, UsageError):
            print(f"({TRACEBACK_FLAG} or {TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
