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
from typing import Any

from genloom.core import hookimpl, records

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
class SpeculativeConfig:
    """Speculative decoding with a draft model."""

    draft: str | dict[str, Any] | None = None
    """The draft model: a run directory, a weights file inside one or a config .yaml (str), or a
    nested model config {tokenizer, head, backbone, ...} (an untrained draft, seeded by ``seed``).
    Its vocabulary must be the target's."""
    gamma: int = 4
    """Draft tokens proposed per round (the target verifies gamma + 1 positions per pass)."""
    greedy: bool = False
    """Draft and verify with argmax: the output equals the target's greedy decoding."""
    seed: int = 0
    """Seed for the initial weights of a draft built from a nested config."""

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"gamma must be at least 1, got {self.gamma}")
        if self.draft is not None and not isinstance(self.draft, (str, dict)):
            raise ValueError(f"draft must be a path (str) or a nested model config (mapping), got {type(self.draft).__name__}")


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
