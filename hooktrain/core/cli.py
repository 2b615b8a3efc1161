"""Command-line flags for ``TrainingArguments``, generated from its field metadata.

The parser is plain :mod:`argparse` rather than jsonargparse or tyro so that Hugging Face
command lines keep working unchanged: bare boolean flags (``--bf16``) next to ``--bf16 false``,
space-separated lists (``--report_to wandb mlflow``), JSON dict values (``--optim_args '{...}'``)
and ``none`` for optional values — and so that the CLI costs no extra dependency. Converters
never fail: a value that does not convert is passed on as text, so ``TrainingArguments``
reports every bad flag together, in its own words, with suggestions.

A config file (YAML or JSON, the first positional argument or ``--config``) gives the base
values and flags override them. ``render_arguments_markdown()`` produces ``docs/arguments.md``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hooktrain.core.args import GROUPS, OWNERS, TrainingArguments, load_config_file
from hooktrain.core.errors import ArgumentError, did_you_mean
from hooktrain.core.hf_names import HF_NAMES
from hooktrain.core.settings import ArgSpec, argument_specs

__all__ = ["build_parser", "load_config_file", "parse_args", "render_arguments_markdown"]

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
_NONE = {"none", "null"}


def _converter(spec: ArgSpec) -> Any:
    def convert(text: str) -> Any:
        low = text.strip().lower()
        if spec.optional and spec.kind != "list" and low in _NONE:
            return None
        if spec.kind == "bool":
            return True if low in _TRUE else False if low in _FALSE else text
        for cast in {"int": (int, float), "float": (float,)}.get(spec.kind, ()):
            try:
                number = cast(text)
            except ValueError:
                continue
            return int(number) if spec.kind == "int" and float(number).is_integer() else number
        return text

    convert.__name__ = spec.kind  # argparse shows it in "invalid <name> value" messages
    return convert


def _with_choices(spec: ArgSpec, quote: str = "") -> str:
    if spec.choices is None:
        return spec.help
    named = ", ".join(f"{quote}{c}{quote}" for c in spec.choices if c is not None)
    return f"{spec.help} {'Built in' if spec.open_choices else 'One of'}: {named}."


def _group_description(owner: str) -> str:
    if owner == "core":
        return "read by the core (training loop, data loading, logging and evaluation)"
    return f"read by the {owner} plugin"


def build_parser(defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per field, in one argument group per owner plugin.

    *defaults* replaces field defaults in the ``--help`` text (``parse_args`` also applies them).
    The parsed namespace holds only the flags actually given (``argparse.SUPPRESS``), so flags can
    be layered over a config file: pass ``vars(namespace)`` to ``TrainingArguments.from_dict``.
    """
    defaults = dict(defaults or {})
    parser = argparse.ArgumentParser(
        prog="hooktrain train", description="Training arguments (Hugging Face flag names).",
        argument_default=argparse.SUPPRESS, allow_abbrev=False)
    parser.add_argument("config_file", nargs="?", metavar="CONFIG",
                        help="YAML or JSON file of arguments (put it first); flags override it")
    parser.add_argument("--config", dest="config", metavar="CONFIG",
                        help="same as the positional CONFIG")
    groups = {o: parser.add_argument_group(o, _group_description(o)) for o in OWNERS}
    for spec in argument_specs(TrainingArguments):
        group = groups.get(spec.owner) or parser.add_argument_group(spec.owner)
        default = defaults.get(spec.name, spec.default)
        text = _with_choices(spec)
        required = spec.required and default is None
        text += " (required)" if required else f" [default: {default!r}]"
        metavar = {"dict": "JSON", "str": "TEXT", "float": "NUMBER"}.get(spec.kind, "INT")
        kw: dict[str, Any] = {"dest": spec.name, "help": text.replace("%", "%%"),
                              "type": _converter(spec), "metavar": metavar}
        if spec.kind == "bool":
            kw.update(nargs="?", const=True, metavar="true|false|none" if spec.optional
                      else "true|false")
            group.add_argument(f"--{spec.name}", **kw)
            group.add_argument(f"--no_{spec.name}", dest=spec.name, action="store_const",
                               const=False, help=argparse.SUPPRESS)
        else:
            if spec.kind == "list":
                kw.update(nargs="+", metavar="NAME")
            group.add_argument(f"--{spec.name}", **kw)
    _add_hf_names(parser)
    return parser


def _any_value(text: str) -> Any:
    """A flag of :data:`~hooktrain.core.hf_names.HF_NAMES` with no field of its own: a bool, a
    number, ``none`` or JSON when it reads as one, else the text."""
    low = text.strip().lower()
    if low in _NONE:
        return None
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.strip()[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _add_hf_names(parser: argparse.ArgumentParser) -> None:
    """Hidden flags for Hugging Face's other names (older spellings, aliases, refused features):
    ``TrainingArguments`` translates them, or says why not."""
    specs = {s.name: s for s in argument_specs(TrainingArguments)}
    for entry in HF_NAMES.values():
        target = specs.get(entry.target or "")
        convert = _converter(target) if target is not None and entry.convert is None else _any_value
        if target is not None and target.kind == "list" and entry.convert is None:
            parser.add_argument(f"--{entry.name}", dest=entry.name, type=convert, nargs="+",
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{entry.name}", dest=entry.name, type=convert, nargs="?",
                                const=True, help=argparse.SUPPRESS)


def parse_args(
    argv: Sequence[str] | None = None,
    config_file: str | Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> TrainingArguments:
    """Build ``TrainingArguments`` from *defaults* < a config file < command-line flags."""
    parser = build_parser(defaults)
    namespace, extras = parser.parse_known_args(argv)
    given = vars(namespace)
    flags = [f"--{s.name}" for s in argument_specs(TrainingArguments)]
    problems = []
    for i, x in enumerate(extras):
        if x.startswith("-"):
            problems.append(f"unknown flag {x.split('=')[0]!r}{did_you_mean(x.split('=')[0], flags)}")
        elif i == 0 or not extras[i - 1].startswith("-") or "=" in extras[i - 1]:
            problems.append(f"unexpected value {x!r}")  # (a value right after an unknown flag is its)
    files = [f for f in (config_file, given.pop("config_file", None), given.pop("config", None))
             if f is not None]
    if len(files) > 1:
        problems.append(f"more than one config file given: {', '.join(map(str, files))}")
    if problems:
        raise ArgumentError(problems)
    values = dict(defaults or {})
    if files:
        values.update(load_config_file(files[0]))
    values.update(given)
    return TrainingArguments.from_dict(values)


def render_arguments_markdown() -> str:
    """The text of ``docs/arguments.md``: every field, grouped by owner plugin."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    specs = argument_specs(TrainingArguments)
    modules = {g.owner: g.cls.__module__.replace(".", "/") + ".py" for g in GROUPS}
    lines = [
        "# Training arguments", "",
        "<!-- Generated by tools/gen_arguments_doc.py from the field metadata; do not edit. -->",
        "",
        f"`TrainingArguments` has {len(specs)} fields. Each belongs to the config group that declares",
        "it: the core, or the plugin of the same name, whose settings module is named below.",
        "Every field is also a command-line flag (`--name value`; booleans accept a bare `--name`,",
        "`--name false` or `--no_name`; lists take several values; dicts take JSON).",
    ]
    for owner in [*OWNERS, *sorted({s.owner for s in specs} - set(OWNERS))]:
        rows = [s for s in specs if s.owner == owner]
        if not rows:
            continue
        lines += ["", f"## {owner}", "", f"Declared in `{modules[owner]}`.", "",
                  "| name | type | default | help |", "|---|---|---|---|"]
        for s in rows:
            default = "required" if s.required else f"`{s.default!r}`"
            text = _with_choices(s, quote="`")
            lines.append(f"| `{s.name}` | `{cell(s.type_text)}` | {cell(default)} | {cell(text)} |")
    return "\n".join(lines) + "\n"
