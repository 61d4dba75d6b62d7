"""Speculative sampling (Leviathan, Kalman & Matias 2023; Chen et al. 2023).

What the papers do. A small *draft* model proposes ``gamma`` tokens autoregressively; the large
*target* model scores all of them in one parallel forward pass. Draft token ``x_i ~ q_i`` is
accepted with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection the token is
resampled from the residual ``norm(max(0, p_i - q_i))``, and when all ``gamma`` drafts pass, one
bonus token is drawn from the target's next distribution. Each round commits between 1 and
``gamma + 1`` tokens for one target pass, and the committed tokens are distributed exactly as if
sampled from the target alone (the acceptance probability at a position is ``1 - TV(p, q)``).

What this implementation does.

- ``sampling.py``: the math as batched torch functions -- one-position accept/resample, block
  verification of ``gamma`` drafts (rows of a batch accept different numbers), greedy block
  verification.
- decoder ``speculative`` on the core's propose/verify/commit loop: the draft is any genloom
  model, loaded from a run directory or a config file (``genloom.core.generation.load_model``)
  or built from a nested model config. ``propose`` runs the draft ``gamma`` times (the first
  call also consumes the tokens committed last round); ``verify`` runs the target once on
  ``[last committed token, x_1..x_gamma]`` and applies the block rule; the session commits;
  ``advance`` rolls the target's state back over the rejected drafts (``State.rollback`` within
  its latest advance) and restores the draft's snapshot, so any backbone's state works. Logits
  processors (temperature, top-k...) are applied to target and draft logits alike, with the
  history each draft position sees, and the output follows the *processed* target distribution.
  ``greedy: true`` drafts and verifies with argmax: the output equals the target's greedy
  decoding token for token. Metrics: target and draft forward passes, tokens per target pass,
  acceptance lengths and per-position acceptance rates.

What it simplifies. The target's distribution is taken as the softmax of its (processed)
logits, i.e. a categorical head; a head with another output distribution is not supported.
Sequences that have finished keep being computed with the batch until all finish.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.draft_config import DraftModelConfig

_P = "genloom.plugins.speculative"

PAPER = records.Paper(
    title="Fast Inference from Transformers via Speculative Decoding",
    year=2023,
    arxiv="2211.17192",
)
#: The concurrent formulation of the same rule (speculative sampling).
CHEN_2023 = records.Paper(
    title="Accelerating Large Language Model Decoding with Speculative Sampling",
    year=2023,
    arxiv="2302.01318",
)


@dataclass
class SpeculativeConfig(DraftModelConfig):
    """Speculative decoding with a draft model (fields draft, gamma, seed from DraftModelConfig)."""

    greedy: bool = False
    """Draft and verify with argmax: the output equals the target's greedy decoding."""


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "speculative",
            f"{_P}.decoder:build",
            SpeculativeConfig,
            "Speculative sampling: a draft model proposes gamma tokens, the target verifies them in one pass (exact).",
            PAPER,
        )
    ]
