"""sigma-GPT: autoregressive models in any order, chosen per sample (Pannatier et al., 2024).

What the paper does. A GPT reads its input in a permuted order sigma and is told, besides the
position of each input token, the position of the token it must predict next: a second positional
encoding for the *output*. The input at step t is ``x_{sigma(t)}`` encoded with positions
``sigma(t)`` and ``sigma(t+1)``, the causal transformer predicts ``x_{sigma(t+1)}``, and training
draws a random sigma per sequence (teacher forcing in that order). The model can then condition on
any subset of tokens and generate the rest in any order; with sigma the identity it is a plain
left-to-right GPT. The paper also samples many tokens per pass with a rejection scheme.

What this implementation does.

- head ``sigma-gpt`` (``head.py``): token embedding plus the double positional encoding
  ``E_cur[sigma(t)] + E_next[sigma(t+1)]`` (``genloom.toolkit.anyorder``), output projection;
  ``ordered_logits(model, ids, order)`` is the teacher-forced pass in any order.
- objective ``sigma-gpt`` (``objective.py``): one uniform order per sequence (the source block, or
  the first token of a plain window, stays first and in place), next-position NLL in that order;
  ``order: left-to-right`` trains the plain model.
- decoder ``sigma-gpt`` (``decoder.py``): one position per forward pass with a KV cache, in a
  uniform random order (or left to right), on the shared loop; works with ``generate(source=...)``.
- decoder ``sigma-gpt-burst`` (``burst.py``): token-based rejection sampling. A draft pass gives
  every remaining position's distribution given the known tokens (copies of the last known token
  asking for each position, under an attention pattern in which the copies do not see each other);
  a verify pass reads the drafts in a uniform order; drafts are accepted with probability
  min(1, p/q) until the first rejection, which is resampled from the residual. Two passes commit
  one token or many; the output law is that of random-order decoding.

What it simplifies at toy scale. Learnt absolute position tables of a fixed size
(``max_positions``); the backbone's own rotary encoding (if enabled) counts layout steps, which
is the same for every order. The paper's curriculum from left-to-right to random orders is not
implemented, and the rejection-sampling decoder runs without a cache (each round recomputes the
known tokens) and decodes the rows of a batch one after another. Logits processors are not
applied by the any-order decoder (it has ``greedy`` and ``temperature`` of its own), because they
read the history as a left-to-right prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

_P = "genloom.plugins.sigma_gpt"

PAPER = records.Paper(
    title="σ-GPTs: A New Approach to Autoregressive Models",
    year=2024,
    arxiv="2404.09562",
)


@dataclass
class SigmaHeadConfig:
    """Token embedding with the double (current + next) positional encoding."""

    max_positions: PositiveInt = 256
    """Size of each position table: every sequence (source block + target) must fit."""
    tie_weights: bool = True
    """Share the embedding and output projection matrices."""
    init_std: PositiveFloat = 0.02
    """Initial weight scale of the embeddings and position tables."""


@dataclass
class SigmaObjectiveConfig:
    """Teacher forcing in a random order per sequence."""

    order: Literal["random", "left-to-right"] = "random"
    """``random``: a uniform order per sequence (sigma-GPT); ``left-to-right``: the identity order (a plain GPT)."""


@dataclass
class SigmaDecoderConfig:
    """Any-order decoding, one position per forward pass."""

    order: Literal["random", "left-to-right"] = "random"
    """The order in which the canvas positions are generated (random: uniform, from the session's seed)."""
    greedy: bool = False
    """Pick the most likely token at each position instead of sampling."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature (unused with ``greedy``)."""


@dataclass
class SigmaBurstConfig:
    """Token-based rejection sampling: a draft pass and a verify pass commit one or many tokens."""

    temperature: PositiveFloat = 1.0
    """Sampling temperature of drafts and targets alike (the output law is the tempered model's)."""


@hookimpl
def genloom_heads():
    return [records.head("sigma-gpt", f"{_P}.head:build", SigmaHeadConfig, "sigma-GPT head: token embedding + double positional encoding (current and next position).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("sigma-gpt", f"{_P}.objective:build", SigmaObjectiveConfig, "Next-position prediction in a random order per sequence (teacher forcing, one pass).", PAPER)]


@hookimpl
def genloom_decoders():
    return [
        records.decoder("sigma-gpt", f"{_P}.decoder:build", SigmaDecoderConfig, "Any-order decoding: one position per pass, in a random or left-to-right order.", PAPER),
        records.decoder("sigma-gpt-burst", f"{_P}.burst:build", SigmaBurstConfig, "Token-based rejection sampling: drafts for every position, accepted in a random order.", PAPER),
    ]
