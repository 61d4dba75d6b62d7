"""Diffusion Guided Language Modeling (2024).

What the paper does. Controllable generation in two stages. A diffusion model over a continuous
*semantic proposal* -- the sentence embedding ``z`` of the continuation, from a frozen pretrained
sentence encoder -- generates ``z`` conditioned on the prefix. An autoregressive language model
then writes the continuation conditioned on ``z`` through a few soft-prompt vectors mapped from
``z`` and prepended to its input (trained on noise-corrupted embeddings so it tolerates the
diffusion model's errors). An attribute (sentiment, toxicity...) is controlled plug-and-play: a
logistic-regression classifier ``p(y | z) = sigma(w.z + b)`` is fitted on the embedding space and
its gradient guides the diffusion sampler; the language model is never touched, so controlling a
new attribute costs one logistic regression.

What this implementation does.

- backbone ``dglm`` (``model.py``): the AR decoder (any registered backbone, by default the
  transformer) plus the parts of the proposal: a small trainable sentence encoder (a registered
  backbone read with the ``full`` pattern, mean-pooled over valid tokens, projected and scaled to
  norm ``sqrt(latent_dim)``), the soft-prompt map ``z -> k`` vectors of the decoder's width, and
  the proposal denoiser (a residual MLP on ``[z_t, t, prefix features]`` predicting ``z_0``, cosine
  schedule of ``genloom.toolkit.embedding_diffusion``). Its ``forward`` is the AR decoder's, so the
  soft prefix is just the first ``k`` rows of ``h`` and the KV cache carries it.
- objective ``dglm`` (``objective.py``): each window is split into a prefix (``prefix_length``
  tokens) and its continuation; ``z = encode(continuation)``; the reconstruction loss is the
  decoder's NLL of the continuation given ``[soft(z_noisy) | prefix]`` (``z_noisy`` the forward
  process at a random ``t <= decoder_noise * T``), and the diffusion loss is the squared error of
  the denoiser's ``z_0`` prediction from ``z_t`` at a uniform ``t`` given the prefix features
  (both ``z`` and the features detached, so the encoder is shaped by reconstruction only).
- decoder ``dglm`` (``decoder.py``): samples ``z`` by the reverse process conditioned on the
  prompt (ancestral or DDIM steps through ``sample_loop``), optionally guided, then decodes the
  text autoregressively after the prefill ``[soft(z) | prompt]``; works with ``genloom generate``.
- ``classifier.py``: ``LogisticAttribute`` with the analytic gradient
  ``d/dz log p(y | z) = w (y - sigma(w.z + b))``, fitted by scikit-learn's ``LogisticRegression``
  on encoded continuations of the standard library's source labelled by a keyword rule (the
  attribute "the continuation contains ``keyword``").

What it simplifies at toy scale. The pretrained Sentence-T5 encoder is replaced by a small one
trained jointly with the decoder (reconstruction through the soft prompt); the diffusion
transformer with cross-attention to the prefix is a residual MLP conditioned on the prefix's
mean-pooled encoder features; text is bytes of the standard library and the attribute a keyword
instead of sentiment or toxicity. Guidance is applied to each step's clean prediction:
``z0_hat + s * grad log p(y | z0_hat)`` (our choice for a classifier trained on clean embeddings;
scale 0 is unguided sampling exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, Interval, NonNegativeFloat, PositiveFloat, PositiveInt, Seed

_P = "genloom.plugins.dglm"

PAPER = records.Paper(title="Diffusion Guided Language Modeling", year=2024, arxiv="2408.04220")


@dataclass
class DglmBackboneConfig:
    """The AR decoder with a soft-prompt prefix, a sentence encoder and the proposal denoiser."""

    base: dict[str, Any] = records.node_field("backbone", {"name": "transformer"})
    """The AR decoder's backbone (publishes ``d_model``); its first ``prompt_vectors`` inputs are the soft prompt."""
    encoder: dict[str, Any] = records.node_field("backbone", {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4})
    """The sentence encoder's backbone, read with the ``full`` pattern and mean-pooled (its width is its own ``d_model``)."""
    latent_dim: Annotated[int, Interval(ge=2)] = 32
    """Dimensions of the semantic proposal ``z`` (scaled to norm ``sqrt(latent_dim)``)."""
    prompt_vectors: PositiveInt = 4
    """``k``: soft-prompt vectors the decoder reads before the prefix."""
    diffusion_steps: Annotated[int, Interval(ge=2)] = 1000
    """``T`` of the proposal's forward process (cosine schedule)."""
    denoiser_width: PositiveInt = 256
    """Hidden width of the proposal denoiser's residual MLP."""
    denoiser_layers: PositiveInt = 3
    """Residual blocks of the proposal denoiser."""

    def bind(self, ctx):
        from .model import base_spec

        spec = base_spec(ctx, self.base, "backbone.base")
        if spec is not None and hasattr(spec.config, "bind"):
            spec.config.bind(ctx)


@dataclass
class DglmObjectiveConfig:
    """Reconstruction through the soft prompt, plus the denoising loss of the proposal."""

    prefix_length: PositiveInt = 16
    """Tokens at the start of each window that form the prefix; the rest is the continuation ``z`` encodes."""
    decoder_noise: Fraction = 0.25
    """The decoder reads ``z`` noised by the forward process at ``t ~ U[0, decoder_noise * T]`` (0: clean)."""
    diffusion_weight: PositiveFloat = 1.0
    """Weight of the diffusion loss beside the reconstruction loss."""

    def bind(self, ctx):
        ctx.set("prefix_length", self.prefix_length)
        if "seq_len" in ctx:
            if self.prefix_length >= ctx.seq_len:
                from genloom.core.errors import ConfigError

                raise ConfigError(f"prefix_length ({self.prefix_length}) must be below data.seq_len ({ctx.seq_len}) to leave a continuation",
                                  path="objective.prefix_length")
            ctx.set("continuation_length", ctx.seq_len + 1 - self.prefix_length)


@dataclass
class DglmDecoderConfig:
    """Sample a (guided) proposal by diffusion, then decode the text autoregressively after its soft prompt."""

    steps: PositiveInt = 50
    """Reverse-process steps (network evaluations) of the proposal sampler."""
    stochastic: bool = True
    """Ancestral (posterior) steps; False: deterministic DDIM steps."""
    guidance_scale: NonNegativeFloat = 0.0
    """``s``: each clean prediction moves by ``s * grad log p(target | z)`` (0: unguided, exactly)."""
    keyword: str = "self"
    """The attribute: the continuation contains this string (labels of the classifier's fit)."""
    target: Annotated[int, Interval(ge=0, le=1)] = 1
    """The class to steer towards: 1 (contains the keyword) or 0 (does not)."""
    classifier_windows: Annotated[int, Interval(ge=10)] = 4000
    """Standard-library continuations encoded to fit the logistic regression (when guidance_scale > 0)."""
    classifier_seed: Seed = 0
    """Seed of the choice of those continuations."""

    def __post_init__(self):
        if not self.keyword:
            raise ValueError("keyword must be a non-empty string (the attribute is 'the continuation contains keyword')")


@hookimpl
def genloom_backbones():
    return [records.backbone("dglm", f"{_P}.model:build", DglmBackboneConfig,
                             "DGLM: AR decoder read after soft-prompt vectors of a proposal z; sentence encoder and z denoiser.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("dglm", f"{_P}.objective:build", DglmObjectiveConfig,
                              "DGLM: continuation reconstruction through soft prompts + denoising loss of its embedding.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("dglm", f"{_P}.decoder:build", DglmDecoderConfig,
                            "DGLM: classifier-guided diffusion proposal, then AR decoding conditioned on it.", PAPER)]
