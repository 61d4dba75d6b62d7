"""LANTERN++: static tree drafting with relaxed acceptance for visual AR models (arXiv 2502.06352, 2025).

What the paper does. Tree speculative decoding for visual AR models fails with *dynamic* trees
(EAGLE-2): the draft's confidence on image tokens is uniformly low, so a confidence-driven tree
stays shallow. LANTERN++ drafts a *static* tree instead -- a fixed topology, the top-k draft tokens
as children at every depth regardless of their probabilities -- and verifies it with LANTERN's
relaxed acceptance (a draft passes if the target's mass on its latent neighbourhood, within a
total-variation budget, covers it), so deeper paths are accepted.

What this implementation does.

- decoder ``lantern-pp`` (``decoder.py``): a draft model drafts the static tree of
  ``branching`` (children per depth) level by level under the tree attention pattern
  (:class:`genloom.toolkit.tree.TreeSpeculativeDecoder`); the target verifies every node in one
  pass and :func:`genloom.toolkit.tree.verify_static` walks down it. The children are chosen, not
  sampled, so each is a draft with a point-mass law: child ``x`` passes with ``r(x)`` (exact) or
  ``min(1, r(A(x)))`` limited by ``delta`` (relaxed,
  :class:`genloom.toolkit.acceptance.RelaxedAcceptance`), where ``r`` is the target's law with the
  rejected siblings removed and renormalised; when all children fail, the token is drawn from ``r``.
  With ``neighbourhood_size: 1`` or ``delta: 0`` the output law is exactly the target's;
  ``greedy: true`` verifies with the target's argmax (its greedy output, token for token).
- The image AR setting is the ``lantern`` plugin's (tokenizer ``raster-vq``, objective
  ``raster-next-token``, from the registry).

What it simplifies, and one choice. The tree topology is a full tree given by children per depth
(the paper's static trees are hand-tuned sparse trees); the draft is a small separate model, not an
EAGLE head. Verification of deterministic children (our choice): the test ``min(1, p(x) / q(x))``
with the draft's probabilities is exact only for children sampled from ``q`` (the tests show its
bias on a top-k tree), so every child is verified as a point-mass draft (``r(x)``), which is exact
with the relaxation off. With it on, each tested child moves the node's token law by at most
``delta`` (a node whose ``b`` children are tested: at most ``b * delta``).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt, Probability
from genloom.toolkit.tree_config import TreeDraftConfig

PAPER = records.Paper(
    title="LANTERN++: Enhancing Relaxed Speculative Decoding with Static Tree Drafting for Visual Auto-regressive Models",
    year=2025,
    arxiv="2502.06352",
)


@dataclass
class LanternPPConfig(TreeDraftConfig):
    """Static tree drafting with relaxed acceptance (fields draft, branching, greedy, seed from TreeDraftConfig)."""

    neighbourhood_size: PositiveInt = 8
    """k: how many nearest tokens in latent space (the token itself included) A(x) may hold; 1 is exact."""
    delta: Probability = 0.2
    """Total-variation budget: the relaxation raises a child's acceptance probability by at most delta; 0 is exact."""


@hookimpl
def genloom_decoders():
    return [records.decoder(
        "lantern-pp", "genloom.plugins.lantern_pp.decoder:build", LanternPPConfig,
        "LANTERN++: a static top-k draft tree verified in one pass with relaxed acceptance (exact with the relaxation off).", PAPER)]
