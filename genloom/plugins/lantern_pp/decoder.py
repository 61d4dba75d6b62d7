"""The ``lantern-pp`` decoder: a static draft tree verified with relaxed acceptance.

One round (the walk of :class:`genloom.toolkit.tree.TreeSpeculativeDecoder`, with a static tree):

1. ``propose``: the draft consumes the tokens committed last round, then drafts the tree level by
   level; every node at depth d gets the draft's ``branching[d]`` most likely tokens as children,
   whatever their probabilities (static tree drafting: the topology never depends on the draft's
   confidence);
2. ``verify``: the target scores every node in one pass; :func:`genloom.toolkit.tree.verify_static`
   walks down the tree: a child ``x`` passes with the rule's probability against the current
   residual law ``r`` (exact: ``r(x)``; relaxed: ``min(1, r(A(x)))`` within ``delta``), a rejected
   child is removed from ``r``; when every child is rejected the token is drawn from ``r``;
3. the session commits the accepted path and one more token (at least one token per target pass);
4. ``advance``: the target keeps the accepted path's cache; the draft returns to its snapshot.

The neighbourhoods come from the target's token latents (the image tokenizer's codebook), as in
``lantern``, through the registry-free toolkit functions.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Session
from genloom.toolkit.acceptance import ExactAcceptance, RelaxedAcceptance
from genloom.toolkit.image_ar import latent_neighbours, token_latents
from genloom.toolkit.tree import TreeSpeculativeDecoder, verify_greedy, verify_static


class StaticTreeDecoder(TreeSpeculativeDecoder):
    """Static top-k tree drafting with (relaxed) point-mass verification (module docstring)."""

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx, draft)
        self.neighbourhood_size = config.neighbourhood_size
        self.delta = config.delta
        self._rules: dict[int, ExactAcceptance] = {}

    @property
    def relaxation_off(self) -> bool:
        return self.neighbourhood_size == 1 or self.delta == 0

    @property
    def exact(self) -> str | None:
        if self.greedy:
            return "greedy"
        return "sampling" if self.relaxation_off else None

    def rule(self, model) -> ExactAcceptance:
        """The acceptance rule for ``model`` (neighbourhoods computed once per model)."""
        if self.relaxation_off:
            return ExactAcceptance()
        if id(model) not in self._rules:
            self._rules[id(model)] = RelaxedAcceptance(latent_neighbours(token_latents(model), self.neighbourhood_size), self.delta)
        return self._rules[id(model)]

    def _children(self, session: Session, q: torch.Tensor, k: int) -> torch.Tensor:
        return q.topk(k, dim=-1).indices  # static: the top-k, never sampled

    def verify(self, session: Session, proposal) -> Commit:
        tokens, _ = proposal
        logits = self.target_logits(session, tokens)  # processed, each node with its own history
        if self.greedy:
            result = verify_greedy(self.shape, logits, tokens)
        else:
            result = verify_static(self.shape, torch.softmax(logits.double(), -1), tokens, self.rule(session.model), session.generator)
        session.metrics.record_acceptance(result.num_accepted, self.shape.max_depth, ~session.finished)
        session.scratch["result"] = result
        return Commit(result.tokens(self.shape, tokens), result.num_accepted + 1)


def build(config, ctx):
    return StaticTreeDecoder(config, ctx)
