"""The plugin manager: one per Trainer. Loads built-ins, entry points and user plugin objects."""

from __future__ import annotations

import importlib
import logging
import operator
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from hooktrain.core import hookspecs
from hooktrain.core.errors import PluginLoadError
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
    """pluggy's manager with hooktrain's load order, registries, listing and fast callers."""

    def __init__(self, *, blocked: Iterable[str] = ()):
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {}
        for name in blocked:
            self.set_blocked(name)
        self._plain_hookexec = self._inner_hookexec  # replaced by tracing and call monitoring
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
            for impl in getattr(self.hook, f"register_{kind}").get_hookimpls():
                register = registry.registrar(self.plugin_label(impl.plugin))
                impl.function(*[register for _ in impl.argnames])
        return self.registries

    # ---- calling ----------------------------------------------------------------------

    def call_each(self, hook_name: str, **kwargs: Any) -> list[BaseException]:
        """Call every implementation even if some raise; return the errors (logged)."""
        errors: list[BaseException] = []
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            try:
                self._hookexec(hook_name, [impl], kwargs, False)  # wrappers, tracing, monitoring
            except Exception as exc:  # one plugin's teardown must not stop the others
                logger.error("%s failed in %s: %r", self.plugin_label(impl.plugin), hook_name, exc)
                errors.append(exc)
        return errors

    def call_with_copy(self, hook_name: str, copied: str, **kwargs: Any) -> None:
        """Call every implementation, each with its own shallow copy of ``kwargs[copied]``."""
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            self._hookexec(hook_name, [impl], {**kwargs, copied: dict(kwargs[copied])}, False)

    def fast_caller(self, hook_name: str) -> Callable[..., Any]:
        """A callable equivalent to ``self.hook.<hook_name>``, taking the hook's arguments
        **positionally, in the spec's order**, for the current registrations.

        Hot-path hooks are called thousands of times per run: with no implementation the call
        is a no-op; with one plain implementation it calls that function directly (passing it
        the subset of arguments it takes), skipping pluggy's dispatch. Rebuild after changing
        registrations.
        """
        caller = getattr(self.hook, hook_name)
        spec_names = tuple(caller.spec.argnames)
        impls = caller.get_hookimpls()
        if not impls:
            return _noop
        if len(impls) == 1 and not (impls[0].wrapper or impls[0].hookwrapper) and not self._observed():
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

    def _observed(self) -> bool:
        """Whether hook calls are traced or monitored (then every call goes through pluggy)."""
        return self._inner_hookexec is not self._plain_hookexec

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
