"""The plugin manager and the component registry.

Entry points of group ``genloom`` are loaded once, on the first call of :func:`get_registry`
(never at ``import genloom``). A plugin that fails to import is reported in one line and the
rest keep working; ``GENLOOM_STRICT_PLUGINS=1`` makes the failure fatal.
``GENLOOM_LOAD_PLUGINS`` (a comma list; empty means none) limits which entry points load, and
``GENLOOM_DISABLE_PLUGINS`` (what ``--disable-plugin`` sets) excludes some.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as metadata
import logging
import os
import sys
from collections import defaultdict

import pluggy

from genloom.core import hookspecs
from genloom.core.errors import ConfigError, PluginError, closest
from genloom.core.records import AUX_KINDS, CORE_KINDS, Component, ComponentKind, PluginInfo

log = logging.getLogger("genloom.plugins")

hookimpl = pluggy.HookimplMarker("genloom")
ENTRY_POINT_GROUP = "genloom"

# hook name -> the kind its records must have
KIND_HOOKS = {
    "genloom_tokenizers": "tokenizer",
    "genloom_backbones": "backbone",
    "genloom_heads": "head",
    "genloom_objectives": "objective",
    "genloom_decoders": "decoder",
    "genloom_kernels": "kernel",
    "genloom_logits_processors": "processor",
    "genloom_datasets": "dataset",
    "genloom_callbacks": "callback",
    "genloom_components": None,
}


class Registry:
    """All components offered by the loaded plugins, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.kinds: dict[str, ComponentKind] = {k: ComponentKind(name=k, plugin="genloom") for k in CORE_KINDS + AUX_KINDS}
        self._by_kind: dict[str, dict[str, list[Component]]] = defaultdict(lambda: defaultdict(list))
        self._collect()

    # -- building -----------------------------------------------------------------------
    def _collect(self) -> None:
        """Gather the records of every hook. A plugin whose hook raises, returns something that is
        not a list of records, or offers a component of a kind nobody declared is marked failed
        (one line on stderr, like an import failure) and its components are withdrawn; the other
        plugins keep working. ``GENLOOM_STRICT_PLUGINS=1`` makes each of these fatal."""
        for impl in self.pm.hook.genloom_component_kinds.get_hookimpls():
            if self._is_failed(impl.plugin_name):
                continue
            try:
                kinds = self._records(impl, "genloom_component_kinds", ComponentKind)
                for kind in kinds:
                    if kind.name in self.kinds:
                        other = self.kinds[kind.name].plugin
                        raise PluginError(f"declares component kind '{kind.name}', already declared by '{other}'")
                for kind in kinds:
                    self.kinds[kind.name] = dataclasses.replace(kind, plugin=impl.plugin_name)
            except Exception as exc:
                self._fail(impl.plugin_name, exc)
        self._check_config_keys()
        hooks = dict(KIND_HOOKS)
        for kind in list(self.kinds.values()):
            if kind.hook:
                if not hasattr(self.pm.hook, kind.hook):
                    self._fail(kind.plugin, PluginError(
                        f"declares component kind '{kind.name}' with hook '{kind.hook}', but no hookspec of that name was added "
                        f"(add it with pluginmanager.add_hookspecs in genloom_addhooks)"))
                    continue
                hooks[kind.hook] = kind.name
        for hook_name, kind in hooks.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if self._is_failed(impl.plugin_name):
                    continue
                info = self.plugins.get(impl.plugin_name)
                dist = info.distribution if info else impl.plugin_name
                version = info.version if info else ""
                try:
                    records = self._records(impl, hook_name, Component)
                    for rec in records:
                        if kind is not None and rec.kind != kind:
                            raise PluginError(f"hook {hook_name} returned a record of kind '{rec.kind}', expected '{kind}'")
                        if rec.kind not in self.kinds:
                            raise PluginError(f"offers {rec.kind} '{rec.name}', but no loaded plugin declares the component kind "
                                              f"'{rec.kind}'{_missing_provider_hint()} (known kinds: {', '.join(self.kinds)})")
                except Exception as exc:  # a broken hook is reported like a broken import
                    self._fail(impl.plugin_name, exc)
                    continue
                for rec in records:
                    rec = rec.stamped(impl.plugin_name, dist, version)
                    self._by_kind[rec.kind][rec.key].append(rec)
                    if info is not None:
                        info.components.append(rec)
                if info is not None and hook_name not in info.hooks:
                    info.hooks.append(hook_name)

    @staticmethod
    def _records(impl, hook_name: str, record_type: type) -> list:
        out = impl.function()
        if out is None:
            return []
        if not isinstance(out, (list, tuple)):
            raise PluginError(f"hook {hook_name} returned {_short_repr(out)} ({type(out).__name__}), expected a list of "
                              f"{record_type.__module__}.{record_type.__name__} records")
        for rec in out:
            if not isinstance(rec, record_type):
                raise PluginError(f"hook {hook_name} returned a list holding {_short_repr(rec)} ({type(rec).__name__}), "
                                  f"expected {record_type.__module__}.{record_type.__name__} records")
        return list(out)

    def _is_failed(self, plugin: str) -> bool:
        info = self.plugins.get(plugin)
        return info is not None and info.error is not None

    def _check_config_keys(self) -> None:
        """A declared kind's top-level key may not reuse a built-in key or another declared kind's."""
        from genloom.core.config import COMPONENT_KEYS, LIST_KEYS, SECTION_SCHEMAS, RunConfig

        taken = {k: "genloom" for k in [*COMPONENT_KEYS, *LIST_KEYS, *SECTION_SCHEMAS, *(f.name for f in dataclasses.fields(RunConfig))]}
        for kind in list(self.kinds.values()):
            if kind.plugin == "genloom" or not kind.config_key:
                continue
            if kind.config_key in taken:  # the later plugin is marked failed, like any other broken contract
                self._fail(kind.plugin, PluginError(f"gives component kind '{kind.name}' the top-level config key '{kind.config_key}', "
                                                    f"already used by '{taken[kind.config_key]}'"))
                continue
            taken[kind.config_key] = kind.plugin

    def _fail(self, plugin: str, exc: BaseException) -> None:
        info = self.plugins.get(plugin)
        if info is None:
            info = self.plugins[plugin] = PluginInfo(name=plugin, distribution=plugin, version="", module="")
        info.error = f"{type(exc).__name__}: {exc}"
        info.exception = exc  # type: ignore[attr-defined]
        info.components.clear()
        for by_name in self._by_kind.values():  # withdraw what the plugin offered before it failed
            for key in list(by_name):
                by_name[key] = [r for r in by_name[key] if r.plugin != plugin]
                if not by_name[key]:
                    del by_name[key]
        for name in [k for k, v in self.kinds.items() if v.plugin == plugin]:
            del self.kinds[name]
        _report_failure(plugin, info.distribution, info.version, exc)

    # -- queries ------------------------------------------------------------------------
    def components(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(self.kinds)
        out = []
        for k in kinds:
            for recs in self._by_kind.get(k, {}).values():
                out.extend(recs)
        return sorted(out, key=lambda c: (c.kind, c.key, c.plugin))

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind.get(kind, {}))

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def kernels_for(self, op: str) -> list[Component]:
        recs = [r for rs in self._by_kind.get("kernel", {}).values() for r in rs if r.op == op]
        return sorted(recs, key=lambda r: -r.priority)

    def get(self, kind: str, name: str, *, path: str | None = None) -> Component:
        """The component ``name`` of ``kind``; ``plugin:name`` picks among plugins offering the same name.

        Raises :class:`ConfigError` naming ``path`` with the allowed names, the closest match and
        any plugin that failed to load (its error chained).
        """
        if kind not in self.kinds:
            guess = closest(kind, self.kinds)
            hint = f" Did you mean '{guess}'?" if guess else ""
            raise ConfigError(f"unknown component kind '{kind}'.{hint} Known: {', '.join(self.kinds)}.", path=path)
        plugin = None
        bare = name
        if ":" in name:
            plugin, _, bare = name.partition(":")
        candidates = self._by_kind.get(kind, {}).get(bare, [])
        if plugin is not None:
            candidates = [c for c in candidates if c.plugin == plugin]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            both = " and ".join(f"'{c.qualified_name}' ({c.distribution} {c.version})" for c in candidates)
            raise ConfigError(f"{kind} '{name}' is offered by more than one plugin: {both}. Name one of them as plugin:name.", path=path)
        allowed = self.names(kind)
        listing = ", ".join(f"{n} ({'/'.join(c.plugin for c in self._by_kind[kind][n])})" for n in allowed) or "none"
        msg = f"unknown {kind} '{name}'."
        guess = closest(bare, allowed)
        if guess:
            msg += f" Did you mean '{guess}'?"
        msg += f" Allowed: {listing}."
        failed = self.failed()
        cause = None
        if failed:
            msg += " Plugins that failed to load: " + "; ".join(f"{p.name} ({p.distribution} {p.version}): {p.error}" for p in failed) + "."
            cause = getattr(failed[0], "exception", None)
        err = ConfigError(msg, path=path)
        if cause is not None:
            raise err from cause
        raise err

    def hook(self):
        return self.pm.hook


def _short_repr(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing_provider_hint() -> str:
    """Which entry points did not load (disabled or failed): one of them may declare a missing hook or kind."""
    skipped = [ep.name for ep in _entry_points() if not _allowed(ep.name)] + list(_FAILED_IMPORTS)
    if not skipped:
        return " (is the plugin that provides it installed?)"
    return f" (the plugin that provides it may be one that did not load: {', '.join(sorted(set(skipped)))})"


_FAILED_IMPORTS: dict[str, str] = {}


def _report_failure(name: str, dist: str, version: str, exc: BaseException) -> None:
    line = f"genloom: plugin '{name}' ({dist} {version}) failed to load: {type(exc).__name__}: {exc}"
    if os.environ.get("GENLOOM_STRICT_PLUGINS", "") not in ("", "0"):
        raise PluginError(line) from exc
    print(line, file=sys.stderr)


def _entry_points():
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen = set()
    for ep in eps:
        key = (ep.name, ep.value)
        if key in seen:  # an editable install can list the same entry point twice
            continue
        seen.add(key)
        yield ep


def _allowed(name: str) -> bool:
    only = os.environ.get("GENLOOM_LOAD_PLUGINS")
    if only is not None:
        allowed = {p.strip() for p in only.split(",") if p.strip()}
        if name not in allowed:
            return False
    disabled = {p.strip() for p in os.environ.get("GENLOOM_DISABLE_PLUGINS", "").split(",") if p.strip()}
    return name not in disabled


def make_plugin_manager(extra: dict[str, object] | None = None, *, entry_points: bool = True) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A fresh plugin manager with the entry-point plugins (and ``extra`` name -> module/object) registered."""
    pm = pluggy.PluginManager("genloom")
    pm.add_hookspecs(hookspecs)
    _FAILED_IMPORTS.clear()
    infos: dict[str, PluginInfo] = {}
    if entry_points:
        for ep in _entry_points():
            if not _allowed(ep.name):
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value)
            infos[ep.name] = info
            try:
                plugin = ep.load()
            except Exception as exc:
                info.error = f"{type(exc).__name__}: {exc}"
                info.exception = exc  # type: ignore[attr-defined]
                _FAILED_IMPORTS[ep.name] = dist
                _report_failure(ep.name, dist, version, exc)
                continue
            try:
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # pluggy refuses malformed hook implementations
                info.error = f"{type(exc).__name__}: {exc}"
                info.exception = exc  # type: ignore[attr-defined]
                _report_failure(ep.name, dist, version, exc)
    for name, plugin in (extra or {}).items():
        if isinstance(plugin, str):
            plugin = importlib.import_module(plugin)
        infos[name] = PluginInfo(name=name, distribution=name, version="", module=getattr(plugin, "__name__", repr(plugin)))
        pm.register(plugin, name=name)
    pm.hook.genloom_addhooks.call_historic(kwargs={"pluginmanager": pm})
    _isolate_unknown_hooks(pm, infos)
    return pm, infos


def _isolate_unknown_hooks(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    """pluggy's ``check_pending``, per plugin: a hook implementation that matches no hookspec (a
    typo, or a hook added by a plugin that is not installed or did not load) marks its plugin failed
    and unregisters it; the others keep working. Strict mode makes it fatal."""
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is None:
            continue
        unknown = []
        for caller in pm.get_hookcallers(plugin) or []:
            if not caller.has_spec() and any(not i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin):
                unknown.append(caller.name)
        if not unknown:
            continue
        hooks = ", ".join(sorted(unknown))
        exc = PluginError(f"implements {hooks}, which no loaded plugin declares: a misspelled hook name, or a hook added by a "
                          f"plugin that is not installed{_missing_provider_hint()}")
        pm.unregister(plugin=plugin)
        info = infos.get(name) or infos.setdefault(name, PluginInfo(name=name, distribution=name, version="", module=""))
        info.error = f"{type(exc).__name__}: {exc}"
        info.exception = exc  # type: ignore[attr-defined]
        _report_failure(name, info.distribution, info.version, exc)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry; loads the entry-point plugins on first call."""
    global _REGISTRY
    if _REGISTRY is None:
        pm, infos = make_plugin_manager()
        _REGISTRY = Registry(pm, infos)
    return _REGISTRY


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (tests use this); returns the previous one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, registry
    return old


def registry_with(*plugins, entry_points: bool = True) -> Registry:
    """A registry with extra in-process plugins (modules or objects with hookimpls) beside the entry points."""
    extra = {}
    for i, p in enumerate(plugins):
        name = getattr(p, "__name__", None) or f"plugin{i}"
        extra[name] = p
    pm, infos = make_plugin_manager(extra, entry_points=entry_points)
    return Registry(pm, infos)
