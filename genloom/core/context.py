"""The build context: derived values passed from component to component.

Components are bound and built in a fixed order, so configs never repeat a derived number by
hand (vocabulary size, model width, sequence layout, special token ids):

- bind (configs only, cheap): data, tokenizer, the plugin-declared kinds' nodes, objective,
  decoder, backbone, head -- a config dataclass's optional ``bind(self, ctx)`` publishes values
  (``ctx.set``) and reads others;
- build: tokenizer, the plugin-declared kinds' nodes (each published as ``ctx.<config_key>``),
  head, backbone, objective, decoder -- ``factory(config, ctx)``.

A component reaches the plugin manager through ``ctx.hook`` (pluggy's hook relay), e.g. to call a
hook a plugin added with ``genloom_addhooks``: ``ctx.hook.genloom_my_hook(x=...)``.
"""

from __future__ import annotations

from typing import Any

from genloom.core.errors import ConfigError

BIND_ORDER = ("data", "tokenizer", "objective", "decoder", "backbone", "head")
BUILD_ORDER = ("tokenizer", "head", "backbone", "objective", "decoder")


class BuildContext:
    """Derived values with provenance. Attribute access reads a value (``ctx.vocab_size``)."""

    def __init__(self, registry=None, values: dict[str, Any] | None = None, kernels: dict[str, str] | None = None):
        object.__setattr__(self, "_values", dict(values or {}))
        object.__setattr__(self, "_setters", {k: "initial" for k in (values or {})})
        object.__setattr__(self, "_special", {})
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "kernels", dict(kernels or {}))
        object.__setattr__(self, "current", None)  # config path being bound/built

    def __getstate__(self):
        # the registry (a plugin manager holding modules) is not pickled; it is looked up again on use
        state = {k: v for k, v in self.__dict__.items() if k != "registry"}
        return state

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "registry", None)

    def __getattr__(self, key: str):
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        if key.startswith("__") and key.endswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(key)
        raise ConfigError(
            f"{self.current or 'a component'} needs '{key}', which no earlier component provides "
            f"(known: {', '.join(sorted(values)) or 'none'}). Set it in the component's config or use a component that provides it.",
            path=self.current,
        )

    def __setattr__(self, key, value):
        if key == "current":
            object.__setattr__(self, key, value)
        else:
            self.set(key, value)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str, default=None):
        return self._values.get(key, default)

    def set(self, key: str, value, by: str | None = None) -> None:
        self._values[key] = value
        self._setters[key] = by or self.current or "?"

    def setdefault(self, key: str, value):
        if key not in self._values:
            self.set(key, value)
        return self._values[key]

    @property
    def hook(self):
        """The plugin manager's hook relay (``pluggy``'s ``pm.hook``): call any hook, including a
        plugin's own hookspecs, as ``ctx.hook.genloom_name(arg=...)`` (a list of results, or one
        result for a ``firstresult`` hook)."""
        if self.registry is None:
            from genloom.core.plugins import get_registry

            object.__setattr__(self, "registry", get_registry())
        return self.registry.pm.hook

    def provenance(self, key: str) -> str | None:
        return self._setters.get(key)

    def add_special_token(self, name: str) -> int:
        """Reserve an id for a special token (``mask``, ``bos``...) past the tokenizer's vocabulary.

        Returns the same id when called again with the same name; ``vocab_size`` grows by one and
        ``<name>_id`` is set.
        """
        if name in self._special:
            return self._special[name]
        if "vocab_size" not in self._values:
            raise ConfigError(f"special token '{name}' requested before any tokenizer set vocab_size", path=self.current)
        token_id = self._values["vocab_size"]
        self._special[name] = token_id
        self.set("vocab_size", token_id + 1)
        self.set(f"{name}_id", token_id)
        return token_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def build(self, kind: str, node, path: str | None = None):
        """Build another registered component (by name or ``{name: ..., <fields>}``) in this context."""
        from genloom.core.config import validate_node
        from genloom.core.plugins import get_registry

        if self.registry is None:
            object.__setattr__(self, "registry", get_registry())
        spec = validate_node(self.registry, kind, node, path or f"{self.current or kind}.<{kind}>")
        if hasattr(spec.config, "bind"):
            spec.config.bind(self)
        return spec.record.load_factory()(spec.config, self)
