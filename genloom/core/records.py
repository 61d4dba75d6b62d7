"""Typed records that plugins return from their hooks.

A record describes a component without building it: its name, a lazy factory
(``"module:attr"``, imported only when the component is built), its config dataclass, a one-line
summary and the paper it implements. The plugin manager stamps each record with the plugin,
distribution and version that supplied it.

Keep config dataclasses in torch-free modules (a plugin's ``__init__.py`` or ``config.py``) so
that listing and validating configs never imports torch.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The six core component kinds, in build order.
CORE_KINDS = ("tokenizer", "head", "backbone", "objective", "decoder", "kernel")
#: Further kinds the core manages the same way (contributed by their own hooks).
AUX_KINDS = ("processor", "dataset", "callback")


@dataclass(frozen=True)
class Paper:
    """The paper a component implements."""

    title: str
    year: int | None = None
    arxiv: str | None = None
    url: str | None = None

    def cite(self) -> str:
        parts = [self.title]
        if self.year:
            parts.append(f"({self.year})")
        if self.arxiv:
            parts.append(f"arXiv:{self.arxiv}")
        return " ".join(parts)


@dataclass
class NoConfig:
    """Config of a component that has no fields."""


@dataclass(frozen=True)
class Component:
    """One buildable component of some kind.

    Fields a plugin sets:

    - ``kind``: one of the core kinds or a kind declared with :class:`ComponentKind`;
    - ``name``: the name a config node gives (``{name: ..., <fields>}``); unique per plugin and kind;
    - ``factory``: ``"module:attr"``, imported only when the component is built; ``attr`` is called
      as ``attr(config, ctx)`` with the validated config dataclass and the
      :class:`~genloom.core.context.BuildContext`, and returns the component;
    - ``config``: the config dataclass the node is validated against (fields with docstrings;
      ``__post_init__`` raises ``ValueError`` naming the field; optional ``bind(self, ctx)``);
    - ``summary``: one line for ``genloom components``; ``paper``: the :class:`Paper`;
    - ``op`` and ``priority`` (kernels only): the operation the backend implements, and the order
      of automatic selection (higher first).

    Stamped by the plugin manager (do not set): ``plugin``, ``distribution``, ``version``.
    """

    kind: str
    name: str
    factory: str
    config: type = NoConfig
    summary: str = ""
    paper: Paper | None = None
    op: str | None = None
    priority: int = 0
    # Stamped by the plugin manager:
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}" if self.plugin else self.name

    @property
    def key(self) -> str:
        """Registry key within the kind (kernels are keyed ``op/backend``)."""
        return f"{self.op}/{self.name}" if self.kind == "kernel" and self.op else self.name

    def stamped(self, plugin: str, distribution: str, version: str) -> "Component":
        return dataclasses.replace(self, plugin=plugin, distribution=distribution, version=version)

    def load_factory(self):
        """Import the factory; a module that fails to import (or lacks the attribute) is a
        :class:`~genloom.core.errors.PluginError` naming the component, its plugin and distribution."""
        import importlib

        from genloom.core.errors import PluginError

        module, _, attr = self.factory.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            source = f"plugin '{self.plugin}' ({self.distribution} {self.version})" if self.plugin else "its plugin"
            raise PluginError(f"could not import {self.kind} '{self.name}' from {source}: factory '{self.factory}' failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        return obj

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "config": self.config.__name__,
            "paper": dataclasses.asdict(self.paper) if self.paper else None,
        }
        if self.kind == "kernel":
            out.update(op=self.op, priority=self.priority)
        return out


def _kind_record(kind: str):
    def make(name: str, factory: str, config: type = NoConfig, summary: str = "", paper: Paper | None = None, **extra) -> Component:
        return Component(kind=kind, name=name, factory=factory, config=config, summary=summary, paper=paper, **extra)

    make.__name__ = kind
    make.__doc__ = f"A :class:`Component` record of kind ``{kind}``."
    return make


tokenizer = _kind_record("tokenizer")
backbone = _kind_record("backbone")
head = _kind_record("head")
objective = _kind_record("objective")
decoder = _kind_record("decoder")
processor = _kind_record("processor")
dataset = _kind_record("dataset")
callback = _kind_record("callback")


def kernel(op: str, name: str, factory: str, config: type = NoConfig, summary: str = "", paper: Paper | None = None, priority: int = 0) -> Component:
    """A kernel record: backend ``name`` of operation ``op``."""
    return Component(kind="kernel", name=name, factory=factory, config=config, summary=summary, paper=paper, op=op, priority=priority)


@dataclass(frozen=True)
class ComponentKind:
    """A component kind a plugin adds (beside the six core kinds), returned by ``genloom_component_kinds``.

    - ``name``: the kind (``reward``), as records' ``kind`` and ``genloom components KIND`` name it;
    - ``summary``: one line for listings;
    - ``config_key``: the top-level config key holding one node of this kind (or a list of nodes,
      if ``many``). Assembly validates, binds and builds that node right after the tokenizer,
      before the head, backbone, objective and decoder, and publishes the built component in the
      build context as ``ctx.<config_key>`` (a list if ``many``) for the components that use it;
      ``Built.declared[config_key]`` holds it too. None: the kind is only built on demand
      (``ctx.build(kind, node)``, or a :func:`node_field` of another component's config);
    - ``hook``: the name of a hookspec of the plugin's own (added in ``genloom_addhooks``) whose
      implementations return this kind's records; the registry collects and stamps them like the
      core kinds' hooks. Records of the kind may also come from the generic ``genloom_components``;
    - ``plugin``: stamped by the registry with the declaring plugin.
    """

    name: str
    summary: str = ""
    config_key: str | None = None
    many: bool = False
    plugin: str = ""
    hook: str | None = None


#: ``dataclasses.field`` metadata key marking a field as a component node (see :func:`node_field`).
NODE_KIND = "genloom_kind"


def node_field(kind: str, default: Any = None, *, many: bool = False):
    """A config dataclass field that holds a component node of ``kind`` (or a list of them, if ``many``).

    Config validation checks the node against the registry like a top-level one (unknown names,
    fields and types are errors naming the nested path, e.g. ``decoder.reward.name``); the field
    keeps the node as given (a name or ``{name: ..., <fields>}``), and the factory builds it with
    ``ctx.build(kind, node)``. ``default`` may be None (no node), a name or a node; annotate the
    field ``dict | str | None`` (or ``list`` if ``many``)::

        base: dict | str = records.node_field("backbone", {"name": "transformer"})
    """
    metadata = {NODE_KIND: kind, "genloom_many": many}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None
    components: list[Component] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        papers = {c.paper.cite() for c in self.components if c.paper}
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "ok": self.error is None,
            "error": self.error,
            "hooks": self.hooks,
            "papers": sorted(papers),
            "components": [{"kind": c.kind, "name": c.key} for c in self.components],
        }
