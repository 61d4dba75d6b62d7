"""Your LLM Knows the Future: multi-token prediction with mask tokens and gated LoRA (Samragh et al., 2025).

What the paper does. A pretrained autoregressive model is fine-tuned to fill ``m`` special
``<mask>`` tokens appended after the context with the ``m`` tokens that follow the next one. The
fine-tuning goes through *gated* LoRA adapters that act only at mask positions, so the model's
next-token predictions at ordinary positions are exactly those of the original model. A small
sampler MLP turns each mask's hidden state, together with the embedding of the token chosen just
before it, into a coherent draft; auxiliary losses (notably a latent consistency loss that pulls
a mask's hidden state towards the hidden state the base model has where it predicts the same
token) help. At inference the mask predictions are drafts that the same model verifies in its
next forward pass (self-speculative decoding), so quality is unchanged and fewer passes are
needed.

What this implementation does.

- backbone ``mtp-gated-lora``: builds any registered backbone (``base`` node) and replaces its
  ``nn.Linear`` layers (all, or those matching ``targets``) by gated LoRA layers. The gate is
  handed over by the head's ``embed`` (``ids == mask_id``) through a shared gate context; the
  update is computed for the gated rows only and added there, so every ungated output element is
  the base layer's own value and logits at ordinary positions equal the base model's bit-for-bit
  whatever the LoRA weights (tested exactly).
- head ``mtp``: wraps any registered head (``base`` node); adds a learned ``<mask>`` embedding
  (a special token reserved through ``ctx.add_special_token('mask')``) and the sampler, a 2-layer
  MLP on ``[h_mask ; embed(previous token)]`` whose output is added to ``h_mask`` and read out by
  the base head's projection.
- objective ``mtp``: mask blocks after prefixes of the training sequences, in one pass with a
  mask-block attention pattern and the masks' own rotary positions (``layout: blocks``, the
  paper's layout) or as one causal row per prefix (``layout: rows``, any causal backbone); losses:
  sampler cross-entropy (teacher forced), raw cross-entropy of the base projection at the masks,
  latent consistency (MSE to the detached base hidden state), optional next-token loss when the
  base is trained jointly.
- decoder ``mtp``: greedy self-speculative decoding on the core's propose/verify/commit loop,
  quadratic by default (a mask block after every draft, the chunk verified under the core's tree
  attention pattern, the KV cache keeping the accepted chain only with ``KVCache.keep``) or linear
  (``quadratic: false``: the cache rolled back over rejected drafts and the masks). Its output
  equals plain greedy decoding token for token either way.

What it simplifies. Training uses the data's own continuations (the paper fine-tunes on the
model's generations). Decoding is greedy (no sampling mode). The base model is frozen by default
(``train_base: false``); a base trained elsewhere is loaded with ``init_from`` (a run directory)
into the wrapped components, whose ``base`` submodules keep the base model's parameter names. With
``train_base: true`` and ``next_token_weight > 0`` base and MTP parts train jointly from scratch
(what the runnable config does on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveFloat, PositiveInt

_P = "genloom.plugins.mtp"

PAPER = records.Paper(
    title="Your LLM Knows the Future: Uncovering Its Multi-Token Prediction Potential",
    year=2025,
    arxiv="2507.11851",
)


def _bind_nested(ctx, kind: str, node, path: str) -> None:
    """Run the nested component's own ``bind`` now, so values it publishes (``d_model``) exist for
    components built before it."""
    registry = getattr(ctx, "registry", None)
    if registry is None:
        return
    from genloom.core.config import validate_node

    spec = validate_node(registry, kind, node, path)
    if hasattr(spec.config, "bind"):
        spec.config.bind(ctx)


@dataclass
class GatedLoRABackboneConfig:
    """Any registered backbone with gated LoRA adapters on its linear layers."""

    base: dict[str, Any] = records.node_field("backbone", {"name": "transformer"})
    """The backbone to adapt, as a component node ``{name: ..., <fields>}``."""
    rank: PositiveInt = 8
    """LoRA rank r."""
    alpha: PositiveFloat = 16.0
    """LoRA scaling numerator: the update is (alpha / r) B A x."""
    targets: list[str] = field(default_factory=list)
    """fnmatch patterns over the base backbone's module names (e.g. '*.q_proj'); empty: every nn.Linear."""
    train_base: bool = False
    """Also train the base backbone's own weights (the paper keeps them frozen)."""
    init_from: str | None = None
    """A genloom run directory (or its weights file) of a trained base model: its backbone weights initialise the base."""

    def __post_init__(self):
        if "name" not in self.base:
            raise ValueError("base must be a component node with a 'name'")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def bind(self, ctx):
        _bind_nested(ctx, "backbone", self.base, "backbone.base")


@dataclass
class MTPHeadConfig:
    """A registered head plus the <mask> embedding and the sampler MLP."""

    base: dict[str, Any] = records.node_field("head", {"name": "lm"})
    """The head to extend, as a component node ``{name: ..., <fields>}``."""
    sampler_hidden: PositiveInt | None = None
    """Hidden width of the sampler MLP (None: 2 x d_model)."""
    train_base: bool = False
    """Also train the base head's own weights (the paper keeps them frozen)."""
    init_from: str | None = None
    """A genloom run directory (or its weights file) of a trained base model: its head weights initialise the base
    head (the <mask> row, new to the vocabulary, keeps its initial value)."""

    def __post_init__(self):
        if "name" not in self.base:
            raise ValueError("base must be a component node with a 'name'")
        if self.sampler_hidden is not None and self.sampler_hidden < 1:
            raise ValueError(f"sampler_hidden must be >= 1, got {self.sampler_hidden}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        _bind_nested(ctx, "head", self.base, "head.base")


@dataclass
class MTPObjectiveConfig:
    """Train the gated LoRA, mask embedding and sampler on masked-input rows."""

    n_masks: PositiveInt = 4
    """Mask tokens appended after each prefix (future tokens predicted beyond the next one)."""
    layout: Literal["blocks", "rows"] = "blocks"
    """'blocks': one pass, mask blocks after the sequence with their own attention pattern and positions
    (the paper's; needs a backbone serving any pattern); 'rows': one causal row per prefix (any causal backbone)."""
    cuts_per_sequence: PositiveInt = 4
    """Prefixes per training sequence that get a block of masks."""
    min_prefix: PositiveInt = 1
    """Shortest prefix a row may have (layout 'rows')."""
    sampler_weight: NonNegativeFloat = 1.0
    """Weight of the sampler's cross-entropy."""
    mask_ce_weight: NonNegativeFloat = 1.0
    """Weight of the cross-entropy of the base projection at the mask positions."""
    consistency_weight: NonNegativeFloat = 0.1
    """Weight of the latent consistency loss (MSE between mask and base hidden states)."""
    next_token_weight: NonNegativeFloat = 0.0
    """Weight of the plain next-token loss (only useful with train_base in head and backbone)."""

    def __post_init__(self):
        if self.n_masks < 1:
            raise ValueError(f"n_masks must be >= 1, got {self.n_masks}")
        if self.cuts_per_sequence < 1:
            raise ValueError(f"cuts_per_sequence must be >= 1, got {self.cuts_per_sequence}")
        if self.min_prefix < 1:
            raise ValueError(f"min_prefix must be >= 1, got {self.min_prefix}")
        for name in ("sampler_weight", "mask_ce_weight", "consistency_weight", "next_token_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        ctx.set("mtp_n_masks", self.n_masks)


@dataclass
class MTPDecoderConfig:
    """Greedy self-speculative decoding with mask-token drafts."""

    n_masks: PositiveInt | None = None
    """Mask tokens (drafts) per step (None: the objective's n_masks, else 4)."""
    quadratic: bool = True
    """Quadratic decoding: a mask block after every draft in the chunk, so every step has fresh
    drafts whatever was accepted (one pass of (m + 1)^2 tokens); false: linear decoding (m + 1 + m
    tokens, no drafts after a partial acceptance)."""

    def __post_init__(self):
        if self.n_masks is not None and self.n_masks < 1:
            raise ValueError(f"n_masks must be >= 1, got {self.n_masks}")


@hookimpl
def genloom_backbones():
    return [records.backbone("mtp-gated-lora", f"{_P}.model:build_backbone", GatedLoRABackboneConfig,
                             "Any backbone with LoRA adapters active only at <mask> positions (ordinary positions stay bit-exact).", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("mtp", f"{_P}.model:build_head", MTPHeadConfig,
                         "A base head plus a learned <mask> embedding and the sampler MLP for multi-token drafts.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("mtp", f"{_P}.objective:build", MTPObjectiveConfig,
                              "Masked-input multi-token prediction: sampler CE, mask CE and latent consistency.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("mtp", f"{_P}.decoder:build", MTPDecoderConfig,
                            "Greedy self-speculative decoding: mask tokens draft, the base model verifies (equals greedy).", PAPER)]
