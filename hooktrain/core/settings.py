"""How a config group declares its settings; ``TrainingArguments`` is composed from the groups.

A group is a class decorated with :func:`config_group` whose fields are made with :func:`arg`
(default, help text, choices, bounds, per-field normalisation). The module that holds it may
also define two functions, both optional:

* ``derive(a, c)``: fill derived defaults with ``c.put(name, value)`` (remembered, so that
  ``replace()`` and assignment derive them again);
* ``check(a, c)``: cross-field rules, each problem reported with ``c.problem(text)``.

``a`` is the whole ``TrainingArguments`` being validated, and ``c`` a :class:`Checks`. Each
built-in group lives in ``hooktrain/plugins/<group>_args.py`` (torch-free) and is listed in
:data:`hooktrain.plugins.BUILTINS`; the core's own fields are in :mod:`hooktrain.core.args`.
The owner of a field is the group that declares it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from hooktrain.core.errors import did_you_mean

__all__ = [
    "NAME_CHARS",
    "ArgSpec",
    "Checks",
    "Invalid",
    "arg",
    "argument_specs",
    "check_steps_for_strategy",
    "config_group",
    "int_or_ratio",
    "is_name",
    "json_safe",
]

NAME_CHARS = "letters, digits, '_', '-', '.'"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_GROUP_MARK = "__hooktrain_config_group__"


class Invalid(ValueError):
    """Raised by a field's ``parse``/``normalise`` function: the text is the whole problem."""


def is_name(text: str) -> bool:
    """Whether *text* is a plugin, reporter or policy name (letters, digits, ``_-.``)."""
    return bool(_NAME_RE.match(text))


class _Metadata(dict):  # type: ignore[type-arg]
    """A field's metadata, whose ``keys()`` show only ``help``: Hugging Face's ``HfArgumentParser``
    passes ``dict(field.metadata)`` to ``argparse.add_argument``, so scripts that parse
    ``TrainingArguments`` with it work unchanged. ``items()`` and lookups see every option."""

    def keys(self) -> Any:
        return {"help": None}.keys()


def arg(
    default: Any,
    help: str,
    *,
    factory: Callable[[], Any] | None = None,
    choices: tuple[Any, ...] | None = None,
    open_choices: bool = False,
    required: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    parse: Callable[[Any], Any] | None = None,
    normalise: Callable[[Any], Any] | None = None,
) -> Any:
    """A field of a config group.

    :param default: the default value (``factory`` instead for a mutable one).
    :param help: one line for ``--help`` and ``docs/arguments.md``.
    :param choices: the allowed values; ``open_choices`` also allows any other name (a registry
        that plugins fill, checked when the ``Trainer`` starts).
    :param required: ``None`` is an error (the default stands for "not given").
    :param ge: the bounds ``ge``/``gt``/``le``/``lt`` (``>=``, ``>``, ``<=``, ``<``) for numbers;
        ``None`` passes when the field is optional.
    :param nonempty: a string must not be blank.
    :param parse: runs on the raw value before the type check (e.g. another input form);
        raise :class:`Invalid` for a bad value.
    :param normalise: runs on the type-checked value and returns its canonical form; raise
        :class:`Invalid` for a bad value.
    """
    metadata: dict[str, Any] = _Metadata(help=help)
    options = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "parse": parse,
               "normalise": normalise}
    metadata.update({k: v for k, v in options.items() if v is not None})
    if choices is not None:
        metadata["open_choices"] = open_choices
    if required:
        metadata["required"] = True
    if nonempty:
        metadata["nonempty"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_T = typing.TypeVar("_T", bound=type)

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover - type checkers read the branch above
    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda f: f


@dataclass_transform()
def config_group(cls: _T) -> _T:
    """Make *cls* a dataclass of settings that ``TrainingArguments`` is composed from."""
    # only the fields matter: __init__, __repr__ and __eq__ are made once, for TrainingArguments
    if cls.__doc__ is None:  # else dataclass() builds one with inspect.signature (slow to import)
        cls.__doc__ = f"Settings declared in {cls.__module__}."
    out: Any = dataclass(init=False, repr=False, eq=False)(cls)
    setattr(out, _GROUP_MARK, True)
    return typing.cast("_T", out)


def is_config_group(obj: object) -> bool:
    return isinstance(obj, type) and obj.__dict__.get(_GROUP_MARK, False)


def set_owner(group: type, owner: str) -> None:
    """Stamp *owner* into the metadata of the fields *group* declares itself."""
    own = group.__dict__.get("__annotations__", {})
    for f in fields(group):
        if f.name in own:
            f.metadata = types.MappingProxyType(_Metadata([*f.metadata.items(), ("owner", owner)]))


# ---------------------------------------------------------------------- field specs
@dataclass(frozen=True)
class ArgSpec:
    """What the validator, the CLI and the docs need to know about one field."""

    name: str
    kind: str  # bool | int | float | str | list | dict | any
    optional: bool
    owner: str
    help: str
    type_text: str
    default: Any
    choices: tuple[Any, ...] | None
    open_choices: bool
    required: bool
    metadata: typing.Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)


_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


@functools.cache
def _specs(cls: type) -> tuple[ArgSpec, ...]:
    hints = typing.get_type_hints(cls)
    out: list[ArgSpec] = []
    for f in fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        optional = type(None) in args
        if optional:
            rest = [a for a in args if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Any
        origin = typing.get_origin(tp) or tp
        factory = f.default_factory
        default = f.default if factory is dataclasses.MISSING else factory()
        md = f.metadata
        out.append(ArgSpec(
            name=f.name, kind=_KINDS.get(origin, "any"), optional=optional,
            owner=md.get("owner", "core"), help=md.get("help", ""), type_text=str(f.type),
            default=default, choices=md.get("choices"), open_choices=md.get("open_choices", False),
            required=md.get("required", False), metadata=md,
        ))
    return tuple(out)


def argument_specs(cls: type | None = None) -> tuple[ArgSpec, ...]:
    """The :class:`ArgSpec` of every field of *cls* (default ``TrainingArguments``), in order."""
    if cls is None:
        from hooktrain.core.args import TrainingArguments

        cls = TrainingArguments
    return _specs(cls)


# ---------------------------------------------------------------------- normalisation
_KIND_WORDS = {
    "bool": "a bool (True or False)", "int": "an int", "float": "a number", "str": "a string",
    "list": "a list of strings", "dict": "a dict (or a JSON object string)",
}


def normalise(spec: ArgSpec, value: Any) -> Any:
    """The canonical form of *value* for *spec*, or raise :class:`Invalid`."""
    name, kind, md = spec.name, spec.kind, spec.metadata
    if "parse" in md:
        value = md["parse"](value)
    if value is None:
        if spec.required:
            raise Invalid(f"{name} is required: pass {name}='...'")
        if spec.optional:
            return None
        raise Invalid(f"{name}=None is invalid: must be {_KIND_WORDS.get(kind, 'set')}")
    if spec.choices is not None:
        value = _enum_value(value, spec.choices)
    value = _check_kind(spec, value)
    if "normalise" in md and value is not None:
        value = md["normalise"](value)
    return value


def _check_kind(spec: ArgSpec, value: Any) -> Any:
    name, kind = spec.name, spec.kind
    wrong = Invalid(f"{name}={value!r} is invalid: must be {_KIND_WORDS.get(kind, '')}")
    if kind == "bool" and not isinstance(value, bool):
        raise wrong
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise wrong
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if not math.isfinite(value):
            raise Invalid(f"{name}={value!r} is invalid: must be a finite number")
        return float(value)
    if kind == "str" and not isinstance(value, str):
        raise wrong
    if kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise wrong
        for item in items:
            if not is_name(item):
                raise Invalid(f"{name}={value!r} is invalid: {item!r} is not a name ({NAME_CHARS})")
        return list(items)
    if kind == "dict":
        return _check_dict(name, value)
    return value


def _enum_value(value: Any, choices: tuple[Any, ...]) -> Any:
    """Map HF enum members and names (``IntervalStrategy.STEPS``, ``"STEPS"``) to plain strings."""
    if isinstance(value, enum.Enum) or (
        not isinstance(value, str) and isinstance(getattr(value, "value", None), str)
    ):
        value = value.value
    if not isinstance(value, str) or value in choices:
        return value
    for candidate in (value, value.rsplit(".", 1)[-1]):
        if candidate.lower() in choices:
            return candidate.lower()
    return value


def _check_dict(name: str, value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not text.startswith("{"):
            raise Invalid(f"{name}={text!r} is invalid: must be a dict or a JSON object")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Invalid(f"{name}={text!r} is invalid: not a JSON object ({exc})") from exc
    if not isinstance(value, dict):
        raise Invalid(f"{name}={value!r} is invalid: must be {_KIND_WORDS['dict']}")
    try:
        out = json_safe(value)
    except TypeError as exc:
        raise Invalid(f"{name}={value!r} is invalid: {exc}") from None
    return typing.cast("dict[str, Any]", out)


def json_safe(obj: Any) -> Any:
    """A copy of *obj* made of JSON types only (tuples become lists); TypeError otherwise."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("dict keys must be strings")
        return {k: json_safe(v) for k, v in obj.items()}
    raise TypeError(f"{obj!r} ({type(obj).__name__}) is not JSON-serialisable")


def int_or_ratio(value: float) -> float | int:
    """``normalise`` for a step count (an integer >= 1, kept as ``int``) or a ratio in (0, 1)."""
    return int(value) if value >= 1 and float(value).is_integer() else value


# ---------------------------------------------------------------------- checks
class Checks:
    """What a group's ``derive`` and ``check`` functions use (see the module docstring)."""

    def __init__(self, args: Any, bad: set[str], problems: list[str], derived: dict[str, Any]):
        self._args = args
        self._bad = bad
        self._problems = problems
        self._derived = derived

    def ok(self, *names: str) -> bool:
        """Whether every named field passed its type check (rules skip the others)."""
        return not self._bad.intersection(names)

    def problem(self, text: str) -> None:
        """Report a problem; name the fields, their values and what is allowed."""
        self._problems.append(text)

    def put(self, name: str, value: Any) -> None:
        """Set a derived default; ``replace()`` derives it again from the new values."""
        self._derived.setdefault(name, getattr(self._args, name))
        object.__setattr__(self._args, name, value)


def _bounds_text(md: typing.Mapping[str, Any]) -> str:
    low = next(((k, md[k]) for k in ("ge", "gt") if k in md), None)
    high = next(((k, md[k]) for k in ("le", "lt") if k in md), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
    key, bound = low or high or ("", None)
    return f"{ {'ge': '>=', 'gt': '>', 'le': '<=', 'lt': '<'}[key]} {bound}"


def _within(md: typing.Mapping[str, Any], v: float) -> bool:
    return (("ge" not in md or v >= md["ge"]) and ("gt" not in md or v > md["gt"])
            and ("le" not in md or v <= md["le"]) and ("lt" not in md or v < md["lt"]))


def check_field(spec: ArgSpec, value: Any, c: Checks) -> None:
    """The per-field rules of :func:`arg`: choices, bounds, non-empty strings."""
    md, name = spec.metadata, spec.name
    if spec.choices is not None and value not in spec.choices:
        if not spec.open_choices:
            shown = ", ".join(repr(x) for x in spec.choices)
            c.problem(f"{name}={value!r} is not one of {shown}{did_you_mean(value, spec.choices)}")
        elif not is_name(value):
            c.problem(f"{name}={value!r} is invalid: must be a name ({NAME_CHARS})")
    if value is None:
        return
    if any(k in md for k in ("ge", "gt", "le", "lt")) and not _within(md, value):
        c.problem(f"{name}={value!r} is invalid: must be {_bounds_text(md)}"
                  + (" or None" if spec.optional else ""))
    if md.get("nonempty") and not value.strip():
        c.problem(f"{name}={value!r} is invalid: must be a non-empty string"
                  + (" or None" if spec.optional else ""))


def check_steps_for_strategy(a: Any, c: Checks, steps: str, strategy: str, extra: str = "") -> None:
    """Under ``strategy='steps'``, *steps* must be > 0 and an integer or a ratio in (0, 1)."""
    value = getattr(a, steps)
    if not c.ok(steps, strategy) or getattr(a, strategy) != "steps":
        return
    if value is None or value == 0:  # negative values are reported by the bounds
        c.problem(f"{steps}={value!r} is invalid: {strategy}='steps' needs {steps} > 0{extra}")
    elif value > 1 and not float(value).is_integer():
        c.problem(f"{steps}={value!r} is invalid: must be an integer step count or a ratio in (0, 1)")


NEEDS_EVAL = "needs an evaluation: set eval_strategy to 'steps' or 'epoch'"


# ---------------------------------------------------------------------- composition
@dataclass(frozen=True)
class Group:
    """One config group: its owner name, settings class and rule functions."""

    owner: str
    cls: type
    derive: Callable[[Any, Checks], None] | None = None
    check: Callable[[Any, Checks], None] | None = None


def group_of_module(owner: str, module: types.ModuleType) -> Group:
    """The :class:`Group` a settings module declares (exactly one ``@config_group`` class)."""
    classes = [v for v in vars(module).values()
               if is_config_group(v) and v.__module__ == module.__name__]
    if len(classes) != 1:
        raise TypeError(f"{module.__name__} must declare exactly one @config_group class, "
                        f"found {len(classes)}")
    set_owner(classes[0], owner)
    return Group(owner, classes[0], getattr(module, "derive", None), getattr(module, "check", None))


def compose(name: str, module: str, groups: Iterable[Group], base: type) -> type:
    """A dataclass named *name* with every group's fields (in group order) and *base*'s methods."""
    bases = tuple(g.cls for g in reversed(list(groups)))  # dataclasses collects fields base-first
    cls = type(name, (*bases, base), {"__module__": module, "__qualname__": name,
                                      "__doc__": base.__doc__})
    return dataclass(cls)
