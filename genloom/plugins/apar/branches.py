"""APAR branch decoding: every live branch advances by one token per forward pass.

The generated tokens form a tree hanging off the prompt. Node ``i`` has a token and a parent
(``-1``: the prompt). A branch is a chain of nodes; when a branch emits the fork token, a new
branch starts under it with the child token as its first node, and the parent branch goes on. One
step runs the model once over the prompt and every node with the core's
:class:`~genloom.core.pattern.TreePattern`: a node sees the prompt and its own ancestors only, so
sibling branches are mutually invisible and each node's model position is its depth (a root-to-node
path is encoded exactly as the plain sequence it stands for). Each live branch then takes the
argmax at its last node. Steps therefore equal the longest branch, not the total token count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genloom.core.pattern import CAUSAL, tree


@dataclass
class Branch:
    parent_node: int
    """The node the branch hangs off (its fork token's child-token node), -1 for the main branch."""
    nodes: list[int] = field(default_factory=list)
    """Node indices of the branch's tokens (the child token first, for a forked branch)."""
    generated: int = 0
    """Tokens the model generated on this branch (the child token is the decoder's, not counted)."""
    done: bool = False


@dataclass
class BranchTree:
    tokens: list[int]
    parents: list[int]
    branches: list[Branch]
    steps: int
    """Forward passes of the model."""

    def branch_tokens(self, b: int) -> list[int]:
        return [self.tokens[i] for i in self.branches[b].nodes]

    def path(self, node: int) -> list[int]:
        """Tokens from the first generated node to ``node`` (its ancestors then itself)."""
        out = []
        while node >= 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]

    def flat(self) -> list[int]:
        """Every branch's tokens, branches in the order they were started."""
        return [t for b in range(len(self.branches)) for t in self.branch_tokens(b)]


@torch.no_grad()
def decode_branches(model, prompt: list[int], *, fork_id: int, child_id: int, eos_ids=(), max_branch_tokens: int = 32,
                    max_branches: int = 8, pattern_fn=None) -> BranchTree:
    """Greedy parallel decoding of one prompt into a tree of branches (see the module docstring).

    ``pattern_fn(parents, start)`` builds the attention pattern of a step (default: the tree pattern;
    tests swap in a causal one to show that siblings must not see each other).
    """
    pattern_fn = pattern_fn or tree
    device = next(model.parameters()).device
    P = len(prompt)
    tokens: list[int] = []
    parents: list[int] = []
    branches = [Branch(parent_node=-1)]
    steps = 0
    while any(not b.done for b in branches):
        ids = torch.tensor([prompt + tokens], device=device)
        pattern = pattern_fn(tuple(parents), torch.tensor([P], device=device)) if tokens else CAUSAL
        logits = model(ids, pattern=pattern)[0]
        steps += 1
        for b in [b for b in branches if not b.done]:  # branches started this step wait for the next
            last = b.nodes[-1] if b.nodes else b.parent_node
            token = int(logits[P + last if last >= 0 else P - 1].argmax())
            tokens.append(token)
            parents.append(last)
            b.nodes.append(len(tokens) - 1)
            b.generated += 1
            if token in eos_ids or b.generated >= max_branch_tokens:
                b.done = True
            if token == fork_id and len(branches) < max_branches:
                tokens.append(child_id)
                parents.append(len(tokens) - 2)
                branches.append(Branch(parent_node=len(tokens) - 1, nodes=[len(tokens) - 1]))
    return BranchTree(tokens, parents, branches, steps)
