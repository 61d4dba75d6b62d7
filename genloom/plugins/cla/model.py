"""The CLA backbone: a registered attention backbone with layer ``i`` reading layer ``s * floor(i / s)``."""

from __future__ import annotations

from genloom.toolkit.kv_sharing import build_shared


def cla_layout(n_layers: int, sharing_factor: int) -> list[int]:
    """The producer of each layer under sharing factor ``s`` (CLA-s): the nearest multiple of s at or below it."""
    return [i - i % sharing_factor for i in range(n_layers)]


def build(config, ctx):
    return build_shared(ctx, config.base, lambda n: cla_layout(n, config.sharing_factor))
