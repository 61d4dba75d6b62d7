"""The ``gsd`` decoder: speculative Jacobi decoding verified with grouped acceptance.

The round is :class:`genloom.toolkit.jacobi.SpeculativeJacobiDecoder`'s (the target verifies its
own Jacobi window in one pass); only the rule differs: draft ``x`` at a position passes with
``min(1, p(G(x)) / q(G(x)))`` where ``G(x)`` is ``x``'s group when the vocabulary is cut, in the
order of that position's target probabilities, into groups of ``group_size``
(:class:`genloom.toolkit.acceptance.GroupAcceptance`).
"""

from __future__ import annotations

from genloom.toolkit.acceptance import GroupAcceptance
from genloom.toolkit.jacobi import SpeculativeJacobiDecoder


class GroupedSpeculativeDecoder(SpeculativeJacobiDecoder):
    """Speculative Jacobi decoding with dynamic probability-rank groups (module docstring)."""

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.group_size = config.group_size

    def rule(self, model) -> GroupAcceptance:
        return GroupAcceptance(self.group_size)


def build(config, ctx):
    return GroupedSpeculativeDecoder(config, ctx)
