"""Cross-layer key/value sharing: build a registered attention backbone with a ``kv_source`` layout.

Techniques that share keys/values across layers (Cross-Layer Attention, MLKV) differ only in
*which* layers produce keys/values and which read them. The mechanism is the core's
(:class:`~genloom.core.state.KVCache` ``kv_source``: a reading layer gets its source's cache
tensors, same storage) and the baseline transformer's (a reading layer has no key/value
projections). This module builds any registered backbone whose config has a ``kv_source`` field
with a layout computed from its ``n_layers``, and checks the layouts.
"""

from __future__ import annotations

import dataclasses

from genloom.core.errors import ConfigError


def node(value) -> dict:
    """A component node as a dict (a bare name becomes ``{name: ...}``)."""
    return {"name": value} if isinstance(value, str) else dict(value)


def base_spec(ctx, base, path: str = "backbone.base"):
    """The validated spec of the base backbone node; refuses a backbone without ``kv_source``."""
    from genloom.core.config import validate_node
    from genloom.core.plugins import get_registry

    spec = validate_node(ctx.registry or get_registry(), "backbone", node(base), path)
    if not any(f.name == "kv_source" for f in dataclasses.fields(spec.config)):
        raise ConfigError(f"backbone '{spec.record.name}' has no kv_source field: cross-layer sharing needs an attention backbone "
                          f"whose cache layers can read each other's keys/values (e.g. transformer)", path=f"{path}.name")
    return spec


def bind_base(ctx, base, path: str = "backbone.base") -> None:
    """Run the base backbone config's ``bind`` (it publishes ``d_model``) during the wrapper's bind."""
    if getattr(ctx, "registry", None) is None:
        return
    spec = base_spec(ctx, base, path)
    if hasattr(spec.config, "bind"):
        spec.config.bind(ctx)


def build_shared(ctx, base, layout, path: str = "backbone.base"):
    """Build the base backbone with ``kv_source = layout(n_layers)``."""
    spec = base_spec(ctx, base, path)
    src = list(layout(spec.config.n_layers))
    cfg = dataclasses.replace(spec.config, kv_source=src)
    return spec.record.load_factory()(cfg, ctx)


def owner_count(kv_source) -> int:
    """How many layers hold keys/values of their own."""
    return sum(1 for i, s in enumerate(kv_source) if s == i)


def grouped_layout(n_layers: int, n_groups: int) -> list[int]:
    """``n_layers`` split into ``n_groups`` consecutive groups as even as possible (earlier groups one
    layer larger); each layer reads the first layer of its group."""
    if not 1 <= n_groups <= n_layers:
        raise ValueError(f"the number of key/value layers must be between 1 and n_layers ({n_layers}), got {n_groups}")
    base, extra = divmod(n_layers, n_groups)
    out, start = [], 0
    for g in range(n_groups):
        size = base + (1 if g < extra else 0)
        out += [start] * size
        start += size
    return out
