"""Continuous diffusion over token embeddings and logit simplices (Diffusion-LM, DiffuSeq, TESS).

Text is discrete; these techniques diffuse a continuous *representation* of it and map back to
tokens at the end. The pieces every such plugin needs, written once:

**The forward process.** A schedule ``alpha_bar(t)`` on ``t in [0, T]`` (``alpha_bar(0) = 1``,
decreasing) defines the Gaussian marginal

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                  (closed form)

which is what ``T`` single steps ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps`` with
``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` compose to (:func:`q_sample`, :func:`q_step`;
``tests/toolkit/test_embedding_diffusion.py`` checks it exactly). ``t`` may differ per position
(AR-Diffusion); :func:`partial_noise` noises only some positions (DiffuSeq's clean source).

**The reverse update.** Given a prediction ``x0_hat`` of the clean data, a step from ``t`` to
``s < t`` either draws from the forward posterior ``q(x_s | x_t, x0_hat)`` (:func:`q_posterior`,
:func:`posterior_step`, DDPM's ancestral update generalised to skipped steps) or moves
deterministically (:func:`ddim_step`, eta = 0). A position whose ``s == t`` stays exactly as it is.
:func:`sample_loop` walks a table of timesteps (one row per step, one column per position when
positions move at different speeds), calling the network once per row, optionally *clamping*
each prediction to the nearest token (Diffusion-LM's clamping trick) and re-imposing clean
positions (DiffuSeq's source).

**Rounding.** Embeddings go back to tokens through the rounding distribution
``p(w | x) ∝ exp(-||x - E_w||^2)`` (:func:`distance_logits`): its argmax is the nearest token
embedding (:func:`round_to_tokens`), its cross-entropy the rounding loss that keeps learnt
embeddings apart (:func:`rounding_loss`).

**Logit simplices.** TESS diffuses ``k``-logit simplex vectors: token ``w`` is ``+k`` at ``w`` and
``-k`` elsewhere (:func:`simplex`); the argmax of the vector recovers the token exactly
(:func:`simplex_tokens`), and a prediction is projected back to a vertex by its argmax
(:func:`project_to_simplex`).

**Self-conditioning.** The network may read its own previous estimate of ``x_0`` as an extra input;
in training, with probability ``p`` a first pass (no gradient) provides it, otherwise zeros
(:func:`self_conditioned`).

**The networks.** :class:`EmbeddingDiffusionHead` (the learnt embedding space, the input and
output projections, a timestep embedding added per position) and :class:`SimplexDiffusionHead`
(vocabulary-sized logits in and out, the input being the probability-weighted token embedding, with
self-conditioning) run any backbone that serves the ``full`` pattern over ``[source | target]``.
:class:`DiffusionSeq2SeqDecoder` is the shared decoder on the propose/verify/commit loop: the
whole reverse process is one proposal, its forward passes counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from genloom.core.errors import ConfigError, GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.core.model import Head
from genloom.core.pattern import FULL

# -- the forward process ------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianSchedule:
    """``alpha_bar(t)`` for ``t in [0, steps]``: 1 at t = 0, decreasing, at least ``floor``.

    ``kind``: ``"sqrt"`` ``1 - sqrt(u)`` (Diffusion-LM), ``"cosine"`` ``cos^2(pi/2 (u + s)/(1 + s))``
    normalised to 1 at u = 0 (s = 0.008), ``"linear"`` ``1 - u``; ``u = t / steps``. The floor
    keeps ``alpha_bar_T`` positive so every step's ``beta`` is below 1.
    """

    steps: int
    kind: str = "sqrt"
    floor: float = 1e-5

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.kind not in ("sqrt", "cosine", "linear"):
            raise ValueError(f"schedule must be one of sqrt, cosine, linear, got '{self.kind}'")

    def alpha_bar(self, t) -> torch.Tensor:
        """``alpha_bar(t)`` (float64) for real or integer ``t`` in ``[0, steps]``."""
        u = (torch.as_tensor(t, dtype=torch.float64) / self.steps).clamp(0.0, 1.0)
        if self.kind == "sqrt":
            ab = 1.0 - u.sqrt()
        elif self.kind == "cosine":
            s = 0.008
            ab = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
        else:
            ab = 1.0 - u
        return torch.where(u > 0, ab.clamp_min(self.floor), torch.ones_like(ab))

    def beta(self, t) -> torch.Tensor:
        """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``: the variance of the single step into t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 - self.alpha_bar(t) / self.alpha_bar(t - 1)


def _per_position(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar, (B,) per-sequence or (B, L) per-position quantity broadcast against (B, L, D) ``like``."""
    value = torch.as_tensor(value, device=like.device)
    while value.dim() < like.dim():
        value = value.unsqueeze(-1)
    return value.to(like.dtype)


def q_sample(x0: torch.Tensor, t, schedule: GaussianSchedule, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise``; ``t`` scalar, (B,) or (B, L)."""
    ab = _per_position(schedule.alpha_bar(t), x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_step(x_previous: torch.Tensor, t, schedule: GaussianSchedule, noise: torch.Tensor) -> torch.Tensor:
    """One forward step into t: ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise`` (t >= 1)."""
    beta = _per_position(schedule.beta(t), x_previous)
    return (1 - beta).sqrt() * x_previous + beta.sqrt() * noise


def partial_noise(x0: torch.Tensor, t, schedule: GaussianSchedule, noise: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """DiffuSeq's partial noising: ``q_sample`` where ``noised`` (B, L) is True, ``x0`` exactly elsewhere."""
    return torch.where(noised[..., None], q_sample(x0, t, schedule, noise), x0)


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t, s, schedule: GaussianSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``q(x_s | x_t, x_0)`` for ``s < t`` (s = t - 1 is DDPM's posterior).

    With ``a = alpha_bar_t / alpha_bar_s``: mean ``sqrt(alpha_bar_s) (1 - a)/(1 - alpha_bar_t) x_0
    + sqrt(a) (1 - alpha_bar_s)/(1 - alpha_bar_t) x_t``, variance ``(1 - alpha_bar_s)(1 - a)/(1 -
    alpha_bar_t)``. Where ``s == t`` the mean is ``x_t`` and the variance 0.
    """
    ab_t, ab_s = _per_position(schedule.alpha_bar(t), x_t), _per_position(schedule.alpha_bar(s), x_t)
    a = ab_t / ab_s
    denominator = (1 - ab_t).clamp_min(1e-300)
    mean = ab_s.sqrt() * (1 - a) / denominator * x0 + a.sqrt() * (1 - ab_s) / denominator * x_t
    variance = (1 - ab_s) * (1 - a) / denominator
    same = ab_t == ab_s
    return torch.where(same, x_t, mean), torch.where(same, torch.zeros_like(variance), variance)


def posterior_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t, s, schedule: GaussianSchedule, noise: torch.Tensor) -> torch.Tensor:
    """The ancestral update: a draw from ``q(x_s | x_t, x0_hat)`` with standard normal ``noise``."""
    mean, variance = q_posterior(x0_hat, x_t, t, s, schedule)
    return mean + variance.sqrt() * noise


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t, s, schedule: GaussianSchedule) -> torch.Tensor:
    """The deterministic update (DDIM, eta = 0): keep the implied noise ``eps_hat`` and move to s,
    ``x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps_hat``; ``x_s = x_t`` where s == t."""
    ab_t, ab_s = _per_position(schedule.alpha_bar(t), x_t), _per_position(schedule.alpha_bar(s), x_t)
    eps_hat = (x_t - ab_t.sqrt() * x0_hat) / (1 - ab_t).clamp_min(1e-300).sqrt()
    return torch.where(ab_t == ab_s, x_t, ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps_hat)


def reverse_timesteps(steps: int, training_steps: int) -> torch.Tensor:
    """(steps + 1,) float64 timesteps from ``training_steps`` down to 0 on an even grid."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(float(training_steps), 0.0, steps + 1, dtype=torch.float64)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (real) timesteps: (...,) -> (..., dim) (sin and cos halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    angles = t.float()[..., None] * freqs
    out = torch.cat([angles.sin(), angles.cos()], -1)
    return nn.functional.pad(out, (0, dim - 2 * half))


# -- rounding -----------------------------------------------------------------------------------


def distance_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(..., V) logits ``-||x - E_w||^2`` of the rounding distribution for (..., D) ``x``, (V, D) ``E``."""
    return -(x.pow(2).sum(-1, keepdim=True) - 2 * x @ weight.t() + weight.pow(2).sum(-1))


def round_to_tokens(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The id of the nearest token embedding (Euclidean) for each vector of (..., D) ``x``."""
    return distance_logits(x, weight).argmax(-1)


def clamp_to_embeddings(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The clamping trick: each vector replaced by its nearest token embedding."""
    return weight[round_to_tokens(x, weight)]


def rounding_loss(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``-log p(ids | x)`` under the rounding distribution over ``mask``ed positions."""
    logits = distance_logits(x.float(), weight.float())
    per = nn.functional.cross_entropy(logits.flatten(0, -2), ids.flatten(), reduction="none").view(ids.shape)
    if mask is None:
        return per.mean()
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp_min(1.0)


# -- logit simplices ----------------------------------------------------------------------------


def simplex(ids: torch.Tensor, vocab_size: int, k: float, dtype=torch.float32) -> torch.Tensor:
    """TESS's almost-one-hot logits: (..., V) with ``+k`` at each id and ``-k`` elsewhere."""
    one_hot = nn.functional.one_hot(ids, vocab_size).to(dtype)
    return k * (2 * one_hot - 1)


def simplex_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The token a (noisy) simplex vector stands for: its argmax."""
    return logits.argmax(-1)


def project_to_simplex(logits: torch.Tensor, k: float) -> torch.Tensor:
    """A prediction mapped back to the simplex vertex of its argmax."""
    return simplex(logits.argmax(-1), logits.shape[-1], k, logits.dtype)


# -- self-conditioning --------------------------------------------------------------------------


def self_conditioned(predict: Callable, x_t: torch.Tensor, *, probability: float, generator: torch.Generator | None = None):
    """Self-conditioning in training: ``(output, previous)``.

    ``predict(x_t, previous)`` is the network; ``previous`` is None (the network reads zeros or
    its input alone) or an earlier estimate. With probability ``probability`` a first pass without
    gradient gives ``previous`` (detached), and the returned output is the second pass that reads
    it; otherwise ``previous`` is None and the output is one plain pass.
    """
    use = probability > 0 and float(torch.rand((), generator=generator)) < probability
    if not use:
        return predict(x_t, None), None
    with torch.no_grad():
        previous = predict(x_t, None).detach()
    return predict(x_t, previous), previous


# -- the sampler loop ---------------------------------------------------------------------------


@dataclass
class SampleResult:
    x0_hat: torch.Tensor
    """The last prediction of the clean data (before any final rounding)."""
    x: torch.Tensor
    """The state at the last timestep (t = 0 everywhere: equal to the clamped last prediction)."""
    passes: int
    """Network evaluations made."""


def renoise_step(x0_hat: torch.Tensor, s, schedule: GaussianSchedule, noise: torch.Tensor) -> torch.Tensor:
    """The update of simplex diffusion (SSD-LM, TESS): forget x_t and noise the prediction afresh to
    level s, ``x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) noise``."""
    return q_sample(x0_hat, s, schedule, noise)


def sample_loop(denoise: Callable, x_T: torch.Tensor, times: torch.Tensor, schedule: GaussianSchedule, *, stochastic: bool = False,
                clamp: Callable | None = None, reimpose: Callable | None = None, generator: torch.Generator | None = None,
                update: str | None = None, noise_scale: float = 1.0) -> SampleResult:
    """Walk the reverse process over ``times`` (K + 1, ...) and return the final prediction.

    Row ``k`` of ``times`` holds the timestep of every position at step k (shape () for a shared
    timestep, (B, 1) per sequence, or (1, L) / (B, L) per position), from the start (row 0) to all zeros (row K). Each step
    ``denoise(x, t)`` predicts x0 (one network evaluation), ``clamp(x0_hat)`` optionally maps it to
    the nearest token representation, and the update moves every position from its ``t`` to its
    next ``s`` (:func:`ddim_step`, or :func:`posterior_step` when ``stochastic``). ``reimpose(x)``
    restores positions that must stay clean (a source) after every update. ``update`` names the rule
    explicitly: ``"ddim"``, ``"posterior"`` (what ``stochastic`` selects) or ``"renoise"``
    (:func:`renoise_step`); fresh noise is standard normal times ``noise_scale``.
    """
    update = update or ("posterior" if stochastic else "ddim")
    if update not in ("ddim", "posterior", "renoise"):
        raise ValueError(f"update must be ddim, posterior or renoise, got '{update}'")
    x = reimpose(x_T) if reimpose is not None else x_T
    x0_hat = x
    for k in range(times.shape[0] - 1):
        t, s = times[k], times[k + 1]
        x0_hat = denoise(x, t)
        if clamp is not None:
            x0_hat = clamp(x0_hat)
        if update == "ddim":
            x = ddim_step(x, x0_hat, t, s, schedule)
        else:
            noise = noise_scale * torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else x.device, dtype=x.dtype).to(x.device)
            x = posterior_step(x, x0_hat, t, s, schedule, noise) if update == "posterior" else renoise_step(x0_hat, s, schedule, noise)
        if reimpose is not None:
            x = reimpose(x)
    return SampleResult(x0_hat=x0_hat, x=x, passes=times.shape[0] - 1)


# -- the networks -------------------------------------------------------------------------------


class TimestepEmbedding(nn.Module):
    """Per-position timestep -> (…, d_model): sinusoidal features, then a two-layer MLP."""

    def __init__(self, d_model: int, scale: float):
        super().__init__()
        self.d_model, self.scale = d_model, scale
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t * self.scale, self.d_model).to(self.mlp[0].weight.dtype))


def _full_backbone(model, h: torch.Tensor) -> torch.Tensor:
    from genloom.core import kernels

    if not model.backbone.supports(FULL):
        raise ConfigError(f"a diffusion denoiser reads the whole sequence at once: the backbone {type(model.backbone).__name__} does not serve the 'full' pattern", path="backbone")
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        return model.backbone(h, pattern=FULL)


class EmbeddingDiffusionHead(Head):
    """The denoiser's ends for diffusion in a learnt embedding space (Diffusion-LM / DiffuSeq).

    ``embed_tokens`` (V, embed_dim) is the space the diffusion runs in; ``in_proj`` lifts a noisy
    vector to the backbone width and a timestep embedding is added per position; ``out_proj``
    predicts the clean vector x0. ``forward(h)`` gives that prediction; the head's distribution over
    tokens is the rounding distribution of a vector (``token_nll``, ``sample``).
    """

    def __init__(self, vocab_size: int, d_model: int, embed_dim: int, training_steps: int, init_std: float = 1.0):
        super().__init__()
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        self.in_proj = nn.Linear(embed_dim, d_model)
        self.time = TimestepEmbedding(d_model, 1000.0 / training_steps)
        self.out_proj = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, embed_dim))

    @property
    def weight(self) -> torch.Tensor:
        return self.embed_tokens.weight

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """x0: the token embeddings in the diffusion space."""
        return self.embed_tokens(ids)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.in_proj(self.embed_tokens(ids))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(h)

    def token_nll(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = distance_logits(outputs.float(), self.weight.float())
        return nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().sample(distance_logits(logits, self.weight), generator)

    def denoise(self, model, x_t: torch.Tensor, t) -> torch.Tensor:
        """x0_hat (B, L, embed_dim) for the noisy vectors (B, L, embed_dim) at timesteps ``t``
        (anything that broadcasts to (B, L): a scalar, (L,), (B, 1) per sequence, (B, L)): one backbone pass under ``full``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[:2])
        h = self.in_proj(x_t) + self.time(t)
        return self(_full_backbone(model, h))


class SimplexDiffusionHead(Head):
    """The denoiser's ends for TESS: (B, L, V) noisy logits in, (B, L, V) clean-logit predictions out.

    The input of position i is ``softmax(x_t^i) E`` (the probability-weighted token embedding); with
    self-conditioning the probabilities are averaged with those of the previous prediction,
    ``(softmax(x_t) + softmax(previous)) / 2 E`` (TESS eq. 6); without it the input is the noisy
    simplex alone. A timestep embedding is added per position.
    """

    def __init__(self, vocab_size: int, d_model: int, training_steps: int, init_std: float = 0.02):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        self.time = TimestepEmbedding(d_model, 1000.0 / training_steps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=init_std)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)

    def inputs(self, x_t: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """The probabilities the network reads: ``softmax(x_t)``, or its average with ``softmax(previous)``."""
        probs = x_t.softmax(-1)
        if previous is not None:
            probs = (probs + previous.softmax(-1)) / 2
        return probs

    def denoise(self, model, x_t: torch.Tensor, t, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Clean-logit prediction (B, L, V) for noisy simplex logits (B, L, V) at timesteps ``t``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[:2])
        h = self.inputs(x_t, previous) @ self.embed_tokens.weight.to(x_t.dtype) + self.time(t).to(x_t.dtype)
        return self(_full_backbone(model, h))


# -- the shared seq2seq decoder -----------------------------------------------------------------


def target_length_of(ctx, who: str) -> tuple[int, int]:
    """(source_length, target_length) published by source-conditioned data, or a ConfigError."""
    source_length, target_length = ctx.get("source_length"), ctx.get("target_length")
    if not source_length or not target_length:
        raise ConfigError(f"{who} generates a target block from a source: it needs source-conditioned data (a data set that publishes source_length and target_length, e.g. 'seq2seq')", path="objective")
    return int(source_length), int(target_length)


class DiffusionSeq2SeqDecoder(Decoder):
    """Diffusion decoding of a fixed target block after a source block, on the shared loop.

    ``start`` checks that each prompt is exactly a source block (``generate(source=...)``);
    ``propose`` runs :meth:`sample` (the whole reverse process; a subclass implements it and counts
    its network evaluations) and returns (B, target_length) ids; ``verify`` commits each row up
    to and including its first end-of-sequence id; every sequence finishes in that round.
    """

    name = "diffusion"

    def start(self, session) -> None:
        source_length = self.ctx.get("source_length") if self.ctx is not None else None
        if not source_length or session.prompt_ids.shape[1] != source_length or not bool(session.prompt_valid.all()):
            raise GenerationError(f"the {self.name} decoder reads exactly one source block of source_length={source_length} tokens per sequence: call generate(source=...) without a target prefix")

    def sample(self, session, source: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def propose(self, session):
        with torch.no_grad():
            return self.sample(session, session.prompt_ids)

    def verify(self, session, proposal) -> Commit:
        eos = session.eos_id if session.eos_id is not None else 0
        tokens = torch.cat([proposal, torch.full_like(proposal[:, :1], eos)], 1)
        is_eos = tokens == eos
        counts = is_eos.int().argmax(1) + 1  # up to and including the first end-of-sequence id
        return Commit(tokens, counts)

    def advance(self, session, commit) -> None:
        session.finished[:] = True  # the whole target came from one reverse process


def embedding_head(model, who: str) -> EmbeddingDiffusionHead:
    """The model's :class:`EmbeddingDiffusionHead`, or a ConfigError naming ``who`` needs it."""
    if not isinstance(model.head, EmbeddingDiffusionHead):
        raise ConfigError(f"{who} diffuses token embeddings: it needs the 'embedding-diffusion' head, got {type(model.head).__name__}", path="head")
    return model.head


def target_positions(batch_size: int, source_length: int, target_length: int, device=None) -> torch.Tensor:
    """(B, S + T) True at the target block (the positions a seq2seq diffusion noises and scores)."""
    noised = torch.zeros(batch_size, source_length + target_length, dtype=torch.bool, device=device)
    noised[:, source_length:] = True
    return noised


def with_clean_source(target_times: torch.Tensor, source_length: int) -> torch.Tensor:
    """Per-position timesteps of ``[source | target]``: 0 (clean) on the source, ``target_times``
    (..., T) on the target; a per-sequence (..., 1) timestep is spread over the target first."""
    return torch.cat([torch.zeros(*target_times.shape[:-1], source_length, dtype=target_times.dtype, device=target_times.device), target_times], -1)


def embedding_diffusion_loss(model, ids: torch.Tensor, t: torch.Tensor, noised: torch.Tensor, schedule: GaussianSchedule, generator=None) -> dict:
    """The Diffusion-LM / DiffuSeq loss over the ``noised`` positions of ``ids`` (B, L) only.

    ``z_0 = Emb(ids)``; ``z_t`` is its partial noising at the per-position timesteps ``t`` (B, L)
    (clean wherever ``noised`` is False); the denoiser predicts ``z_0`` from ``z_t`` in one pass and
    the loss is ``||f(z_t, t) - z_0||^2`` (mean over dimensions) + the rounding loss of the
    prediction + the rounding loss of ``z_0`` (which keeps the learnt embeddings apart), each a mean
    over the noised positions. Returns the loss, ``mse``, the prediction's rounding accuracy
    (``token_accuracy``), and ``_z_t`` / ``_prediction`` for tests.
    """
    head = embedding_head(model, "this objective")
    z0 = head.vectors(ids)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    t = torch.as_tensor(t, device=ids.device).expand(ids.shape)
    z_t = partial_noise(z0, t, schedule, noise, noised)
    prediction = head.denoise(model, z_t, t)
    scored = noised.to(z0.dtype)
    mse = (((prediction - z0) ** 2).mean(-1) * scored).sum() / scored.sum().clamp_min(1.0)
    loss = mse + rounding_loss(prediction, head.weight, ids, noised) + rounding_loss(z0, head.weight, ids, noised)
    with torch.no_grad():
        correct = (round_to_tokens(prediction, head.weight) == ids) & noised
        accuracy = correct.sum() / noised.sum().clamp_min(1)
    return {"loss": loss, "mse": mse.detach(), "token_accuracy": accuracy, "_z_t": z_t, "_prediction": prediction}


def embedding_reverse_process(model, source: torch.Tensor, target_times: torch.Tensor, schedule: GaussianSchedule, *, stochastic: bool = False,
                              clamp: bool = True, generator: torch.Generator | None = None) -> tuple[torch.Tensor, SampleResult]:
    """(B, T) target ids for (B, S) source blocks by the reverse process over the target block.

    ``target_times`` is (K + 1,) for one timestep shared by the target positions, or (K + 1, 1 | B, T)
    per position, from the start down to all zeros. The target block starts as standard normal
    noise; the source block holds its clean embeddings (timestep 0) and is re-imposed after every
    update; with ``clamp`` each prediction is replaced by its nearest token embeddings; the final
    target vectors are rounded to their nearest token embeddings. Also returns the
    :class:`SampleResult` (network evaluations in ``passes``).
    """
    head = embedding_head(model, "this decoder")
    S, T = source.shape[1], int(model.ctx.get("target_length"))
    if target_times.dim() == 1:
        target_times = target_times[:, None, None].expand(-1, 1, T)
    times = with_clean_source(target_times, S)
    source_vectors = head.vectors(source)
    z = torch.randn((source.shape[0], S + T, head.embed_dim), generator=generator, device=generator.device if generator is not None else None, dtype=source_vectors.dtype).to(source.device)

    def reimpose(x):
        return torch.cat([source_vectors, x[:, S:]], 1)

    result = sample_loop(lambda x, t: head.denoise(model, x, t), z, times, schedule, stochastic=stochastic,
                         clamp=(lambda x: clamp_to_embeddings(x, head.weight)) if clamp else None, reimpose=reimpose, generator=generator)
    return round_to_tokens(result.x[:, S:], head.weight), result


def schedule_of(ctx) -> GaussianSchedule:
    """The forward process an objective published (``GaussianDiffusionConfig.bind``), else the default."""
    get = ctx.get if ctx is not None else (lambda key, default=None: default)
    return GaussianSchedule(int(get("diffusion_steps", 1000)), str(get("diffusion_schedule", "sqrt")))


def build_simplex_head(config, ctx) -> SimplexDiffusionHead:
    """Factory of the ``simplex-diffusion`` head (config field ``init_std``)."""
    return SimplexDiffusionHead(ctx.vocab_size, ctx.d_model, schedule_of(ctx).steps, config.init_std)


def build_embedding_head(config, ctx) -> EmbeddingDiffusionHead:
    """Factory of the ``embedding-diffusion`` head (config fields ``embed_dim``, ``init_std``)."""
    return EmbeddingDiffusionHead(ctx.vocab_size, ctx.d_model, config.embed_dim, schedule_of(ctx).steps, config.init_std)
