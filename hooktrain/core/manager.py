"""The plugin manager: one per Trainer. Loads built-ins, entry points and user plugin objects."""

from __future__ import annotations

import importlib
import inspect
import logging
import operator
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from hooktrain.core import hookspecs
from hooktrain.core.errors import ArgumentError, HooktrainError, PluginLoadError
from hooktrain.core.markers import PROJECT
from hooktrain.core.registry import Registry
from hooktrain.core.reporter import REPORTER_METHODS
from hooktrain.plugins import BUILTINS

logger = logging.getLogger("hooktrain")

ENTRY_POINT_GROUP = "hooktrain"
DISABLE_AUTOLOAD_ENV = "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "HOOKTRAIN_TRACE"
OWN_DISTRIBUTION = "hooktrain"

#: The built-in plugins: (name, module), in registration order, from the one list in
#: :data:`hooktrain.plugins.BUILTINS`; registered through the same ``_register`` path as others.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = tuple((b.name, b.module) for b in BUILTINS)

#: Plugins that ``disable_plugins`` cannot switch off, with what they provide. Their hooks can
#: still be replaced: a plugin that answers the same ``firstresult`` hooks wins over them.
ESSENTIAL_PLUGINS: Mapping[str, str] = {
    "training": "the default training step, backward, optimizer step and evaluation loop",
}


class HookCallOrderError(HooktrainError, TypeError):
    """A call site passes a hook's arguments in another order than the hook's specification."""


class UnmarkedHookWarning(UserWarning):
    """A registered plugin has a method named like a hook but not marked ``@hookimpl``."""


@dataclass
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version(OWN_DISTRIBUTION)
    except Exception:
        from hooktrain import __version__

        return __version__


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with hooktrain's load order, registries, listing and hook callers.

    Hooks are called in three ways, all through pluggy's public API:

    * ``pm.hook.<name>(**kwargs)``: every call that is not per step;
    * :meth:`call_each`: each plugin's implementation on its own, to isolate failures
      (``on_train_end``) or give each its own copy of a dict (``on_log``); :meth:`each_plugin`
      gives the per-plugin callers themselves (registries use it to credit each name to its
      plugin);
    * :meth:`step_callers`: the per-step hooks, called positionally in an order checked against
      the specs; a single plain implementation is called directly.

    ``changes`` counts registrations, unregistrations and monitoring changes; callers built
    from the registrations are rebuilt when it moves.
    """

    def __init__(self, *, blocked: Iterable[str] = (), specs: Iterable[ModuleType | type] = (hookspecs,)):
        super().__init__(PROJECT)
        for module in specs:
            self.add_hookspecs(module)
        self.origins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {}
        self.changes = 0
        self._monitors = 0
        self._each_cache: dict[str, tuple[int, list[tuple[object, pluggy.HookCaller]]]] = {}
        blocked = list(blocked)
        refused = [name for name in blocked if name in ESSENTIAL_PLUGINS]
        if refused:
            raise ArgumentError([
                f"disable_plugins={blocked!r} is invalid: {name!r} is essential "
                f"({ESSENTIAL_PLUGINS[name]}) and cannot be disabled; replace its hooks with a "
                "plugin of your own instead" for name in refused
            ])
        for name in blocked:
            self.set_blocked(name)
        if os.environ.get(TRACE_ENV):
            trace_log = logging.getLogger("hooktrain.hooks")
            self.trace.root.setwriter(trace_log.debug)
            self.enable_tracing()

    # ---- registration -----------------------------------------------------------------

    def _register(self, plugin: object, name: str, distribution: str, version: str, builtin: bool) -> None:
        if isinstance(plugin, type):
            raise PluginLoadError(
                f"plugin {name!r} is the class {plugin.__qualname__}, not an instance: forgot ()?"
            )
        if self.is_blocked(name):
            return
        try:
            self.register(plugin, name=name)
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {name!r} from {distribution} {version} failed to register: {exc}. "
                f"Disable it with disable_plugins=[{name!r}] or {DISABLE_AUTOLOAD_ENV}=1."
            ) from exc
        self.origins[name] = PluginInfo(name, distribution, version, builtin)

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            self.changes += 1
            self._warn_unmarked(plugin, registered)
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        removed = super().unregister(plugin, name)
        self.changes += 1
        return removed

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        undo = super().add_hookcall_monitoring(before, after)
        self._monitors += 1
        self.changes += 1  # observed calls must all go through pluggy: rebuild the step callers

        def undo_and_count() -> None:
            undo()
            self._monitors -= 1
            self.changes += 1

        return undo_and_count

    def _warn_unmarked(self, plugin: object, name: str) -> None:
        """Warn about methods named like a hook that lack ``@hookimpl`` (pluggy ignores them)."""
        for hook_name, caller in vars(self.hook).items():
            if hook_name.startswith("_") or not caller.has_spec():
                continue
            found = inspect.getattr_static(plugin, hook_name, None)
            if found is None or not (callable(found) or isinstance(found, (staticmethod, classmethod))):
                continue
            if self.parse_hookimpl_opts(plugin, hook_name) is None:
                warnings.warn(
                    f"plugin {name!r} has a method {hook_name!r} named like the hook but not marked "
                    f"@hookimpl, so it is never called; mark it with @hooktrain.hookimpl or rename it",
                    UnmarkedHookWarning, stacklevel=3,
                )

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if name in REPORTER_METHODS:  # reporter methods, called by the reporting plugin; never hooks
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def load_builtins(self) -> None:
        version = _own_version()
        for name, module_name in BUILTIN_PLUGINS:
            if self.is_blocked(name):
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:  # not shipped in this build
                    continue
                raise
            self._register(module, name, OWN_DISTRIBUTION, version, builtin=True)

    def load_entrypoints(self) -> None:
        """Register every third-party plugin of the ``hooktrain`` entry-point group."""
        if os.environ.get(DISABLE_AUTOLOAD_ENV, "").lower() in ("1", "true", "yes"):
            return
        from importlib.metadata import distributions

        seen: set[str] = set()
        for dist in distributions():
            ours = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not ours:  # most distributions: their metadata is not even parsed
                continue
            dist_name = dist.metadata["Name"] or "?"
            if dist_name.lower() in (OWN_DISTRIBUTION, *seen):
                continue
            seen.add(dist_name.lower())
            for ep in ours:
                if self.is_blocked(ep.name):
                    continue
                if self.get_plugin(ep.name) is not None:
                    raise PluginLoadError(
                        f"plugin name {ep.name!r} from {dist_name} is already taken by "
                        f"{self.origins[ep.name].distribution}"
                    )
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginLoadError(
                        f"plugin {ep.name!r} ({ep.value}) from {dist_name} {dist.version} failed to "
                        f"load: {type(exc).__name__}: {exc}. Disable it with "
                        f"disable_plugins=[{ep.name!r}] or {DISABLE_AUTOLOAD_ENV}=1."
                    ) from exc
                self._register(plugin, ep.name, dist_name, dist.version, builtin=False)

    def add_plugins(self, plugins: Iterable[object]) -> None:
        """Register plugin objects passed to ``Trainer(plugins=[...])``."""
        for i, plugin in enumerate(plugins):
            name = getattr(plugin, "name", None) if not isinstance(plugin, ModuleType) else None
            if not isinstance(name, str):
                name = f"{getattr(plugin, '__name__', type(plugin).__name__)}-{i}"
            self._register(plugin, name, "Trainer(plugins=...)", "", builtin=False)

    def plugin_label(self, plugin: object) -> str:
        name = self.get_name(plugin) or repr(plugin)
        info = self.origins.get(name)
        if info is None:
            return f"plugin {name!r}"
        return f"plugin {name!r} ({info.distribution} {info.version})".replace(" )", ")")

    # ---- registries -------------------------------------------------------------------

    def fill_registries(self) -> dict[str, Registry]:
        """Call every ``register_*`` hook implementation, attributing each name to its plugin."""
        self.registries = {
            "reporters": Registry("reporter", "report_to"),
            "save_policies": Registry("save policy", "save_strategy"),
        }
        for kind, registry in self.registries.items():
            for plugin, call in reversed(self.each_plugin(f"register_{kind}")):  # oldest first
                call(register=registry.registrar(self.plugin_label(plugin)))
        return self.registries

    # ---- calling ----------------------------------------------------------------------

    def each_plugin(self, hook_name: str) -> list[tuple[object, pluggy.HookCaller]]:
        """``(plugin, caller)`` for each plugin implementing *hook_name*, in pluggy's calling order.

        Each caller (pluggy's ``subset_hook_caller``) calls that plugin's implementation alone,
        through pluggy: a wrapper runs, tracing and monitoring see the call. Cached until the
        registrations change.
        """
        cached = self._each_cache.get(hook_name)
        if cached is not None and cached[0] == self.changes:
            return cached[1]
        impls = getattr(self.hook, hook_name).get_hookimpls()
        plugins = list(dict.fromkeys(impl.plugin for impl in reversed(impls)))
        callers = [
            (plugin, self.subset_hook_caller(hook_name, [p for p in plugins if p is not plugin]))
            for plugin in plugins
        ]
        self._each_cache[hook_name] = (self.changes, callers)
        return callers

    def call_each(
        self, hook_name: str, /, *, fresh: str | None = None, isolate: bool = False, **kwargs: Any
    ) -> list[BaseException]:
        """Call each plugin's implementation of *hook_name* on its own (see :meth:`each_plugin`).

        *fresh* names a dict argument that each implementation gets its own shallow copy of.
        With *isolate*, an implementation that raises is logged and the others still run; the
        errors are returned. Without it the first error propagates.
        """
        errors: list[BaseException] = []
        original = kwargs.get(fresh) if fresh is not None else None
        for plugin, call in self.each_plugin(hook_name):
            if original is not None:
                kwargs[fresh] = dict(original)  # type: ignore[index]
            try:
                call(**kwargs)
            except Exception as exc:
                if not isolate:
                    raise
                logger.error("%s failed in %s: %r", self.plugin_label(plugin), hook_name, exc)
                errors.append(exc)
        return errors

    def step_callers(self, orders: Mapping[str, tuple[str, ...]]) -> dict[str, Callable[..., Any]]:
        """For each hook of *orders*, a callable equivalent to ``self.hook.<name>`` that takes the
        hook's arguments **positionally, in the given order**, for the current registrations.

        Each order must be the hook's spec order, else :class:`HookCallOrderError`: a call site
        cannot silently pass arguments in a stale order. The per-step hooks are called thousands of
        times per run: with no implementation the callable is a no-op; with one plain
        implementation (no wrapper, no tracing or monitoring) it is that function, given the
        subset of arguments it takes, skipping pluggy's dispatch; otherwise it calls through
        pluggy. Rebuild when ``changes`` moves.
        """
        wrong = []
        for hook_name, order in orders.items():
            spec = getattr(self.hook, hook_name).spec
            spec_names = tuple(spec.argnames) if spec is not None else None
            if tuple(order) != spec_names:
                wrong.append(f"{hook_name}: called with ({', '.join(order)}), specified as "
                             f"({', '.join(spec_names or ())})")
        if wrong:
            raise HookCallOrderError(
                "hook calls whose arguments do not match the hook specifications:\n  "
                + "\n  ".join(wrong)
            )
        return {hook_name: self._positional(hook_name) for hook_name in orders}

    def _positional(self, hook_name: str) -> Callable[..., Any]:
        caller = getattr(self.hook, hook_name)
        spec_names = tuple(caller.spec.argnames)
        impls = caller.get_hookimpls()
        if not impls:
            return _noop
        if len(impls) == 1 and not (impls[0].wrapper or impls[0].hookwrapper) and not self._monitors:
            function, names = impls[0].function, tuple(impls[0].argnames)
            if names == spec_names:
                return function
            positions = [spec_names.index(n) for n in names]
            if not positions:
                return lambda *a: function()
            if len(positions) == 1:
                (i,) = positions
                return lambda *a: function(a[i])
            pick = operator.itemgetter(*positions)
            return lambda *a: function(*pick(a))
        return lambda *a: caller(**dict(zip(spec_names, a, strict=True)))

    def implemented(self, hook_name: str) -> bool:
        """Whether any registered plugin implements *hook_name*."""
        return bool(getattr(self.hook, hook_name).get_hookimpls())

    # ---- listing ----------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every registered plugin with its hooks and the registry names it provides."""
        if not self.registries:
            self.fill_registries()
        result = []
        for name, plugin in self.list_name_plugin():
            info = self.origins.get(name) or PluginInfo(name, "?", "", builtin=False)
            callers = self.get_hookcallers(plugin) or []
            info.hooks = sorted(c.name for c in callers)
            label = self.plugin_label(plugin)
            info.registers = {
                kind: [n for n in reg.names() if reg.provider(n) == label]
                for kind, reg in self.registries.items()
            }
            info.registers = {k: v for k, v in info.registers.items() if v}
            result.append(info)
        return sorted(result, key=lambda i: (not i.builtin, i.name))


def _noop(*_: Any) -> None:
    return None


def build_manager(*, plugins: Iterable[object] = (), blocked: Iterable[str] = ()) -> PluginManager:
    """The standard load order: built-ins, entry points, then the given plugin objects."""
    manager = PluginManager(blocked=blocked)
    manager.load_builtins()
    manager.load_entrypoints()
    manager.add_plugins(plugins)
    manager.check_pending()
    return manager
