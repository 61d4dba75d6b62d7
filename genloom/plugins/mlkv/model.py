"""The MLKV backbone: a registered attention backbone built with a grouped ``kv_source`` layout.

``grouped_layout(L, m)`` splits the layers into ``m`` consecutive groups; the first layer of each
group computes keys/values (with the base's ``n_kv_heads`` heads) and the rest of the group attends
with them. The cache's own accounting then shows ``m * g / (L * h)`` of multi-head attention's bytes.
"""

from __future__ import annotations

from genloom.core.errors import ConfigError
from genloom.toolkit.kv_sharing import base_spec, build_shared, grouped_layout


def build(config, ctx):
    n_layers = base_spec(ctx, config.base).config.n_layers
    if config.kv_layers > n_layers:
        raise ConfigError(f"kv_layers ({config.kv_layers}) cannot exceed the base backbone's n_layers ({n_layers})", path="backbone.kv_layers")
    return build_shared(ctx, config.base, lambda n: grouped_layout(n, config.kv_layers))
