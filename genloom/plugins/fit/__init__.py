"""FIT: Far-reaching Interleaved Transformers (Chen and Li, 2023).

What the paper does. The data tokens are divided into groups, each a short sequence, and a small
set of latent tokens is introduced per group. Two kinds of ordinary transformer layers are
interleaved: *local* layers run self-attention among the data tokens of one group (a
block-diagonal mask), *global* layers run self-attention among all latent tokens. Cross-attention
moves information between a group's data tokens and its latents (read into the latents, write
back to the data). Attention then costs O(n^2) inside a group of n tokens and, over few latents,
far less than O(L^2) globally (O(L^{4/3}) with the paper's choices), and FIT serves as an
encoder, a diffusion decoder or an autoregressive decoder.

What this implementation does. The autoregressive decoder (causal mode), in :mod:`.model`: each
FIT block runs local layers (the core's ``GroupLocalPattern``, causal inside the group), a read
(group g's latents attend to group g's data tokens), global layers over the latents of all
groups (group-causal: ``block_causal`` with blocks of ``n_latents``) and a write in which the data
tokens of group g attend to the latents of group g - 1. That shift is our choice for causal mode:
the latents of group g have read all of group g, so writing them back into group g would leak
later tokens of the same group; with it, the output at position t depends on inputs <= t only,
information crosses groups only through latent tokens, and group g's outputs ignore every later
group. Attention runs on groups reshaped into batch rows or on flat sequences under the core
patterns (``attention: reshape | mask``, equal). Decoding computes the latents of a group once,
when the next group's first token arrives, and runs the local layers over a KV cache.

What it simplifies. No adaptive computation or latent-only diffusion decoding; learned absolute
positions for data tokens and a learned group embedding for latents; the latents of finished
groups are recomputed by one full pass over the finished groups (exact) instead of being advanced
incrementally; tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

PAPER = records.Paper(title="FIT: Far-reaching Interleaved Transformers", year=2023, arxiv="2305.12689")
_P = "genloom.plugins.fit"


@dataclass
class FitConfig:
    """FIT blocks (local layers, latent read, global layers, latent write) in causal mode."""

    d_model: PositiveInt = 64
    """Model width; published to later components as ``ctx.d_model``."""
    n_heads: PositiveInt = 4
    """Attention heads (must divide d_model)."""
    group_size: PositiveInt = 8
    """Data tokens per group (local attention stays inside a group)."""
    n_latents: PositiveInt = 2
    """Latent tokens per group."""
    n_blocks: PositiveInt = 2
    """FIT blocks (each: local layers, read, global layers, write)."""
    local_layers: PositiveInt = 1
    """Local (group-internal) self-attention layers per block."""
    global_layers: PositiveInt = 1
    """Global self-attention layers over the latents per block."""
    ffn_mult: PositiveInt = 4
    """Feed-forward hidden width = ffn_mult x d_model."""
    max_length: PositiveInt = 1024
    """Longest sequence (learned position embedding of the data tokens)."""
    attention: Literal["reshape", "mask"] = "reshape"
    """``reshape``: groups as batch rows; ``mask``: flat sequences under GroupLocalPattern masks."""
    norm_eps: PositiveFloat = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model, got d_model={self.d_model}, n_heads={self.n_heads}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "fit",
            f"{_P}.model:build",
            FitConfig,
            "FIT (causal): group-local layers, latents read per group, group-causal global layers on latents, shifted write.",
            PAPER,
        )
    ]
