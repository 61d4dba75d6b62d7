"""CALM: Continuous Autoregressive Language Models (Shao et al., 2025, arXiv:2510.27688).

What the paper does. A chunk of K tokens is compressed by an autoencoder into ONE continuous
vector z (dimension l) from which the K tokens are reconstructed with over 99.9% accuracy; a
language model then predicts the next *vector* instead of the next token, so generation takes
L/K steps instead of L. The autoencoder is made robust for a generative model to target: it is
variational (posterior N(mu, sigma^2), a KL term of weight beta = 0.001 clipped from below per
dimension at lambda_KL = 0.5, which stops the posterior collapsing dimensions), dropout acts on
the latent and a fraction of the input tokens is masked while it trains. The vector predictor is
a transformer whose input at step i is the previous chunk's K tokens, embedded and compressed by
a small MLP; its output h_i conditions an *energy-based generative head*: a stack of residual MLP
blocks that turns h_i and a uniform noise vector into one sample of z_{i+1} in a single pass.
There is no likelihood, so the head is trained with the energy score, a strictly proper scoring
rule, S(P, y) = E||x' - y||^alpha - 1/2 E||x' - x''||^alpha (alpha = 1), estimated without bias
from N model samples and M samples y_j of the target chunk's posterior:

    L = 2/(NM) sum_ij ||x_i - y_j|| - 1/(N(N-1)) sum_{i != j} ||x_i - x_j||.

Generation samples z, decodes it by the autoencoder (argmax per token), and feeds the K tokens
back. Evaluation is likelihood-free too: BrierLM (100 x the geometric mean of Brier-1..4, each
estimated from two samples, 1[x1=y] + 1[x2=y] - 1[x1=x2], whose mean is 2 p_y - ||p||^2).

What this implementation does.

- Tokenizer ``calm-chunks`` (``tokenizer.py``): wraps any tokenizer node (``base``, BPE by
  default) for text <-> ids and owns the chunk autoencoder: token embeddings -> position-wise
  SwiGLU -> flatten K -> SwiGLU -> (mu, log sigma^2); decoder mirrored, logits through the tied
  embedding. Its ``fit`` (called by assembly before the model trains: genloom's stage for a
  trainable tokenizer) fits the base tokenizer, then trains the autoencoder on the training split
  with the paper's reconstruction + clipped-KL loss, latent dropout and input-token masking, and
  freezes it. ``reconstruction_accuracy`` measures held-out token accuracy.
- Head ``calm-energy`` (``head.py``): the input compression (K embeddings -> MLP -> d_model; ids
  of length L become L/K backbone positions), the energy generator (residual MLP blocks fusing
  h and uniform noise), ``sample`` and the unbiased ``energy_loss`` with N model samples and M
  posterior samples.
- Objective ``calm`` (``objective.py``): chunks 0..n-2 in, the posterior of chunks 1..n-1 as
  targets, causal pattern over chunk positions; in evaluation it also draws two samples per chunk
  for Brier-1..K, and ``genloom evaluate`` reports them with BrierLM (``evaluate_run``).
- Decoder ``calm`` (``decoder.py``): one backbone pass per chunk (prefill, then one per further
  chunk: ceil(L/K) passes for L tokens), each vector decoded into K tokens.
- The backbone is any registered one (the baseline ``transformer`` in the config), run over chunk
  positions with its own KV cache.

What it simplifies at toy scale. A small MLP autoencoder (width 128, l = 128, 0.7M parameters)
over a 1024-token BPE instead of a 75M-parameter one over Llama-3 tokens; the embedded
standard-library text instead of the Pile; the transformer is tiny. The paper's temperature sampling (a rejection algorithm needing only a
sampler) is not implemented: decoding draws from the head at temperature 1, and logits
processors are refused. The target posterior samples y_j are drawn from the frozen autoencoder
(the paper's choice); BrierLM is estimated at chunk-aligned contexts only (where a chunk model
predicts), and the token-level baseline is scored at the same contexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, NonNegativeFloat, PositiveFloat, PositiveInt, Probability, Seed

_P = "genloom.plugins.calm"

PAPER = records.Paper(
    title="Continuous Autoregressive Language Models",
    year=2025,
    arxiv="2510.27688",
    url="https://github.com/shaochenze/calm",
)


@dataclass
class ChunkAutoencoderConfig:
    """CALM's chunk autoencoder over a base tokenizer: K tokens <-> one latent vector."""

    base: dict | str = records.node_field("tokenizer", {"name": "bpe", "vocab_size": 1024})
    """The tokenizer that turns text into ids (its node); the autoencoder works on its ids."""
    chunk_size: PositiveInt = 4
    """K, tokens per chunk (per latent vector, per generation step); published as ctx.chunk_size."""
    latent_dim: PositiveInt = 128
    """l, the dimension of the latent vector z (published as ctx.latent_dim; the paper's 128)."""
    hidden: PositiveInt = 128
    """Width of the autoencoder's MLPs (token embedding and hidden layers)."""
    kl_weight: NonNegativeFloat = 0.001
    """beta, weight of the KL term (paper: 0.001)."""
    kl_clip: NonNegativeFloat = 0.5
    """lambda_KL: each latent dimension's KL counts at least this much (paper: 0.5), so no
    dimension is pushed below it into collapse."""
    latent_dropout: Probability = 0.15
    """Dropout on the latent while the autoencoder trains (robustness to prediction error)."""
    token_dropout: Probability = 0.15
    """Fraction of input tokens masked while the autoencoder trains."""
    fit_steps: PositiveInt = 2000
    """Optimizer steps of the autoencoder's own training (``fit``)."""
    fit_batch_size: PositiveInt = 128
    """Chunks per autoencoder training step."""
    fit_lr: PositiveFloat = 3e-3
    """Peak learning rate of the autoencoder's training (AdamW, 5% warm-up, then cosine decay to 10%)."""
    fit_seed: Seed = 0
    """Seed of the autoencoder's initialisation, batches and noise."""

    def __post_init__(self):
        if isinstance(self.base, dict) and self.base.get("name") in ("calm-chunks", "calm:calm-chunks"):
            raise ValueError("base must be a token-level tokenizer (bpe, bytes...), not calm-chunks itself")

    def bind(self, ctx):
        ctx.set("chunk_size", self.chunk_size)
        ctx.set("latent_dim", self.latent_dim)


@dataclass
class EnergyHeadConfig:
    """CALM's input compression and energy-based generative head."""

    hidden: PositiveInt | None = None
    """Width of the generator's residual MLP blocks (None: the backbone's d_model)."""
    n_blocks: PositiveInt = 3
    """Residual MLP blocks of the generator (the paper: a quarter of the transformer's layers)."""
    noise_dim: PositiveInt | None = None
    """Dimension of the uniform noise epsilon ~ U[-1/2, 1/2] (None: the hidden width)."""
    model_samples: Annotated[int, Interval(ge=2)] = 8
    """N, samples drawn from the head per position for the energy loss (paper: 8; at least 2
    for the diversity term)."""
    target_samples: PositiveInt = 100
    """M, samples of the target chunk's posterior per position (paper: 100)."""
    alpha: Annotated[float, Interval(gt=0, lt=2)] = 1.0
    """Exponent of the energy score (strictly proper for 0 < alpha < 2; paper: 1)."""


@dataclass
class CalmObjectiveConfig:
    """Energy-score training over chunk vectors, Brier-n in evaluation."""

    eval_brier: bool = True
    """Draw two samples per chunk in evaluation for Brier-1..K (``genloom evaluate``: BrierLM)."""


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("calm-chunks", f"{_P}.tokenizer:build_tokenizer", ChunkAutoencoderConfig,
                              "CALM chunk autoencoder: K tokens <-> one continuous vector (over a base tokenizer).", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("calm-energy", f"{_P}.head:build_head", EnergyHeadConfig,
                         "CALM energy head: K tokens compressed in, a latent vector sampled out (energy score).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("calm", f"{_P}.objective:build_objective", CalmObjectiveConfig,
                              "CALM next-vector prediction with the energy loss; Brier-n/BrierLM in evaluation.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("calm", f"{_P}.decoder:build_decoder", records.NoConfig,
                            "CALM decoding: one backbone pass per K-token chunk (sample a vector, decode it).", PAPER)]
