"""AR-Diffusion: auto-regressive diffusion for text generation (Wu et al., 2023).

What the paper does. A continuous (embedding-space) diffusion model for sequence-to-sequence text
in which tokens on the left are denoised earlier than tokens on the right, so generation keeps a
left-to-right dependency while updating every position in parallel. Each token n of an N-token
target has its own timestep ``f(n, t)``, read off a line through a *start point* ``(n_s, t_s)`` and
an *anchor point* ``(n_e, t_e) = (2N, T)``:

    f(n, t) = clip( (t_e - t_s) / (n_e - n_s) * (n - n_s) + t_s, 0, T ),
    (n_s, t_s) = (clip(N - t, 0, N), clip(t - N, 0, T)),   t in [0, N + T].

As the sentence-level t falls from N + T to 0 the start point moves from (0, T) down to (0, 0) and
then right to (N, 0): at every t the timesteps are non-decreasing in n (left tokens less noisy),
every token's timestep falls (the left ones faster) and all reach 0 at t = 0. Training draws t
uniformly and noises each token to ``f(n, t)``; decoding walks t down in K steps (skipping
timesteps), each step moving every token from its current to its next timestep.

What this implementation does.

- objective ``ar-diffusion`` (``objective.py``): the DiffuSeq set-up (``embedding-diffusion`` head,
  source clean and unscored, ``genloom.toolkit.embedding_diffusion.embedding_diffusion_loss``) with
  per-token timesteps ``f(n, t)`` for ``t ~ U[0, N + T]``, N = the target block length.
- decoder ``ar-diffusion`` (``decoder.py``): the table of per-token timesteps for ``steps`` even
  decrements of t (``timesteps.py``: ``token_timesteps``, ``decoding_table``), rows that change
  nothing dropped, and the toolkit's reverse process over it: each step one network evaluation,
  a DDIM (or ancestral) update from every token's timestep to its next one, the source re-imposed.
- ``anchor`` sets ``n_e = anchor * N`` (the paper: 2); ``equal_speeds`` puts the anchor at infinity,
  so every token has the same speed, and the decoder is then exactly synchronous diffusion over the
  same timesteps.

What it simplifies at toy scale. The paper's encoder-decoder transformer becomes one backbone
reading ``[source | target]`` (the prefix form, as DiffuSeq); the target length N is the fixed
target block; the timestep embedding of the source positions is that of t = 0 (clean); no
minimum-Bayes-risk selection over several samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval
from genloom.toolkit.embedding_diffusion_config import EmbeddingDiffusionDecoderConfig, GaussianDiffusionConfig

_P = "genloom.plugins.ar_diffusion_text"

PAPER = records.Paper(
    title="AR-Diffusion: Auto-Regressive Diffusion Model for Text Generation",
    year=2023,
    arxiv="2305.09515",
)


@dataclass
class ArDiffusionConfig(GaussianDiffusionConfig):
    """Per-token timesteps from the movement-speed line: left tokens are denoised first."""

    anchor: Annotated[float, Interval(gt=1)] = 2.0
    """n_e / N, the anchor point's position in target lengths (the paper: 2); larger values make the
    speeds more equal."""
    equal_speeds: bool = False
    """Put the anchor at infinity: every token has the same timestep (synchronous diffusion)."""

    def bind(self, ctx):
        super().bind(ctx)
        ctx.set("ar_diffusion_anchor", float("inf") if self.equal_speeds else self.anchor)


@dataclass
class ArDiffusionDecoderConfig(EmbeddingDiffusionDecoderConfig):
    """Reverse diffusion in which each token moves from its timestep to its next one on the speed line."""

    anchor: Annotated[float, Interval(gt=1)] | None = None
    """n_e / N at decoding (None: the objective's)."""
    equal_speeds: bool = False
    """Decode with every token at the same timestep (synchronous diffusion over the same steps)."""


@hookimpl
def genloom_objectives():
    return [records.objective("ar-diffusion", f"{_P}.objective:build", ArDiffusionConfig,
                              "Embedding diffusion with per-token timesteps on a line: left tokens less noisy.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("ar-diffusion", f"{_P}.decoder:build", ArDiffusionDecoderConfig,
                            "Asynchronous reverse diffusion: left tokens reach t = 0 first, all at the last step.", PAPER)]


