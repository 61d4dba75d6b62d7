"""ILM: insertion language models (Patel et al., 2025).

What the paper does. Instead of appending tokens on the right, the model inserts one token at a
time anywhere in the sequence: given the current partial sequence it outputs a joint distribution
over (position, token) pairs and a stop decision. Training deletes a random subset of a
sequence's tokens and teaches the model the distribution of the tokens still missing, over the
gaps they belong to; generation repeats single insertions until the model stops. Outputs have
arbitrary length, can start from given tokens (infilling constraints), and are not bound to a
left-to-right order.

What this implementation does.

- head ``ilm`` (``head.py``): token logits per slot (slot k read from the hidden state just before
  it) and a stop logit, one softmax over all (slot, token) pairs and stop (``joint_log_probs``);
  any backbone that serves the full pattern with a validity mask.
- objective ``ilm`` (``objective.py``): a deletion rate r ~ U(0, 1) per sequence, Bernoulli(r)
  deletions, target mass on (slot, token) equal to the fraction of the missing tokens that are
  that token in that slot (stop when nothing is missing), cross-entropy against it. On
  source-conditioned data the source block is the fixed prefix and the target (without its
  end-of-sequence id) is what is deleted; on plain windows the first token is the prefix.
- decoder ``ilm`` (``decoder.py``): one forward pass per insertion on the shared loop, starting
  from the target prefix as constraints (``genloom.toolkit.anyorder.InsertionCanvas``).

What it simplifies at toy scale. The paper's target form is not the only one possible; we chose
the uniform-over-missing-tokens target written above (the technique list marks the form as
unsure) and a uniform deletion rate; the stop decision is one more logit in the same softmax (our
choice; the paper's parameterisation of stopping is not reproduced). No KV cache: the canvas is
re-read every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat

_P = "genloom.plugins.ilm"

PAPER = records.Paper(
    title="Insertion Language Models: Sequence Generation with Arbitrary-Position Insertions",
    year=2025,
    arxiv="2505.05755",
)


@dataclass
class IlmHeadConfig:
    """Token logits per insertion slot and a stop logit."""

    tie_weights: bool = True
    """Share the embedding and output projection matrices."""
    init_std: PositiveFloat = 0.02
    """Initial weight scale."""


@dataclass
class IlmObjectiveConfig:
    """Random deletions; cross-entropy against the distribution of the missing tokens over slots."""


@dataclass
class IlmDecoderConfig:
    """Repeated single insertions until stop."""

    greedy: bool = False
    """Take the most likely action instead of sampling it."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature (unused with ``greedy``)."""


@hookimpl
def genloom_heads():
    return [records.head("ilm", f"{_P}.head:build", IlmHeadConfig, "ILM head: one distribution over (slot, token) insertions and stop.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("ilm", f"{_P}.objective:build", IlmObjectiveConfig, "Insertion training: random deletions, target mass per slot proportional to its missing tokens.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("ilm", f"{_P}.decoder:build", IlmDecoderConfig, "Insertion decoding: one (slot, token) insertion per pass until stop.", PAPER)]
