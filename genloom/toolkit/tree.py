"""Token-tree speculative decoding: draft a tree, verify it with the target in one pass.

Shared by the decoders of the parallel-decoding family that propose trees (STree, SpecInfer-style
tree speculation...). The config fields (``draft``, ``branching``, ``greedy``, ``seed``) are
:class:`genloom.toolkit.tree_config.TreeDraftConfig`.

A tree has a static shape (:class:`TreeShape`): node 0 is the root, the last committed token that
the target has not consumed yet; every node at depth d has ``branching[d]`` children; nodes are
numbered breadth first, so a parent always precedes its children and every root-to-leaf path has
``len(branching)`` drafted tokens.

One round of :class:`TreeSpeculativeDecoder`:

1. ``propose``: the draft consumes the tokens committed last round, then drafts the tree level by
   level, each level in one draft pass under the tree attention pattern
   (:class:`genloom.core.pattern.TreePattern`): the children of a node are drawn i.i.d. from the
   draft's distribution at that node (greedy: its top-k tokens);
2. ``verify``: :func:`target_tree_logits` gives the target's distribution at every node in ONE
   target pass -- through the backbone's own tree method (``forward_tree``) when it has one, else
   under the tree pattern when the backbone serves it and its state can keep a subset of its last
   advance (:meth:`genloom.core.state.KVCache.keep`), else by verifying each root-to-leaf path as
   a batch row (any backbone, any state: the fallback that makes every backbone a tree target);
   :func:`verify_greedy` or :func:`verify_sampling` walks the tree from the root;
3. the session commits the accepted path and one more token;
4. ``advance``: the target keeps the accepted path's state only; the draft returns to its snapshot.

The sampling rule is multi-draft rejection sampling (SpecInfer, Miao et al. 2024, Alg. 2, with
i.i.d. children): at node u with target law p and draft law q, child j (token x_j ~ q) is accepted
with probability ``min(1, r_j(x_j) / q(x_j))`` where ``r_1 = p`` and ``r_{j+1} = norm(max(0, r_j - q))``
after each rejection; when every child is rejected the token is drawn from the last residual. Each
step is one exact speculative-sampling step for the current residual law with an independent
draft, so the committed tokens follow the target's law.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from genloom.core.generation import Commit, Decoder, Session, pad_left
from genloom.core.pattern import tree, tree_ancestors
from genloom.core.state import KVCache, State, StaticKVCache
from genloom.toolkit.acceptance import ExactAcceptance
from genloom.toolkit.draft import DraftModelDecoder
from genloom.toolkit.tree_config import TreeDraftConfig

__all__ = [
    "TreeDraftConfig", "TreeShape", "TreeResult", "TreeDecoder", "TreeSpeculativeDecoder", "serves_tree",
    "target_tree_logits", "process_nodes", "verify_greedy", "verify_sampling", "verify_static",
]


class TreeShape:
    """A static token-tree topology from children-per-depth ``branching`` (breadth-first numbering)."""

    def __init__(self, branching):
        self.branching = tuple(int(k) for k in branching)
        parents, depth, level = [-1], [0], [0]
        for d, k in enumerate(self.branching):
            nxt = []
            for u in level:
                for _ in range(k):
                    nxt.append(len(parents))
                    parents.append(u)
                    depth.append(d + 1)
            level = nxt
        self.parents = tuple(parents)
        self.depth = torch.tensor(depth)
        self.size = len(parents)
        self.max_depth = len(self.branching)
        first = [0] * self.size
        for i in range(self.size - 1, 0, -1):
            first[parents[i]] = i
        self.first_child = torch.tensor(first)
        """(N,) index of each node's first child (0 for leaves)."""
        self.levels = [[i for i in range(self.size) if depth[i] == d] for d in range(self.max_depth + 1)]
        paths = []
        for leaf in self.levels[-1]:
            path, u = [], leaf
            while u >= 0:
                path.append(u)
                u = parents[u]
            paths.append(path[::-1])
        self.paths = torch.tensor(paths)
        """(P, D + 1) node indices of every root-to-leaf path."""
        path_of = torch.zeros(self.size, dtype=torch.long)
        for p in range(len(paths) - 1, -1, -1):
            path_of[self.paths[p]] = p
        self.path_of = path_of
        """(N,) the first root-to-leaf path through each node."""
        self.ancestors = tree_ancestors(self.parents)[0]
        """(N, N) bool: ``ancestors[i, j]`` when node j is node i or one of its ancestors."""

    def ancestors_mask(self, node: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: the nodes on the root-to-``node[b]`` path (the root and ``node`` included)."""
        return self.ancestors.to(node.device)[node]


class TreeResult(NamedTuple):
    """Outcome of verifying one tree per sequence of a batch."""

    node: torch.Tensor
    """(B,) the deepest accepted node (0: only the root)."""
    num_accepted: torch.Tensor
    """(B,) accepted drafted tokens = the depth of ``node``."""
    next_token: torch.Tensor
    """(B,) the token after the accepted path (residual draw, or bonus token at a leaf)."""

    def tokens(self, shape: TreeShape, tree_tokens: torch.Tensor) -> torch.Tensor:
        """(B, D + 1): the accepted path's drafted tokens, then ``next_token`` (``num_accepted + 1`` are committed)."""
        rows = shape.paths.to(tree_tokens.device)[shape.path_of.to(tree_tokens.device)[self.node]][:, 1:]
        out = torch.cat([tree_tokens.gather(1, rows), tree_tokens.new_zeros(rows.shape[0], 1)], 1)
        return out.scatter(1, self.num_accepted[:, None], self.next_token[:, None])


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    mass = (p - q).clamp_min(0)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), p)


def verify_greedy(shape: TreeShape, target_logits: torch.Tensor, tokens: torch.Tensor) -> TreeResult:
    """Walk down while some child equals the target's argmax at its parent (B, N, V logits, (B, N) tokens)."""
    B = tokens.shape[0]
    rows = torch.arange(B, device=tokens.device)
    best = target_logits.argmax(-1)  # (B, N)
    first = shape.first_child.to(tokens.device)
    node = torch.zeros(B, dtype=torch.long, device=tokens.device)
    live = torch.ones(B, dtype=torch.bool, device=tokens.device)
    for k in shape.branching:
        want = best[rows, node]
        base = first[node]
        children = base[:, None] + torch.arange(k, device=tokens.device)
        match = tokens.gather(1, children) == want[:, None]
        found = match.any(1) & live
        node = torch.where(found, children.gather(1, match.int().argmax(1, keepdim=True)).squeeze(1), node)
        live = found
    return TreeResult(node, shape.depth.to(tokens.device)[node], best[rows, node])


def verify_sampling(shape: TreeShape, target_probs: torch.Tensor, draft_probs: torch.Tensor, tokens: torch.Tensor, generator=None) -> TreeResult:
    """Multi-draft rejection sampling down the tree (module docstring).

    ``target_probs`` (B, N, V): the target's law at every node; ``draft_probs`` (B, N, V): the law
    each node's children were drawn from (i.i.d.); ``tokens`` (B, N).
    """
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return _walk(shape, target_probs, tokens, lambda node, x: draft_probs[rows, node], ExactAcceptance(), generator)


def verify_static(shape: TreeShape, target_probs: torch.Tensor, tokens: torch.Tensor, rule=None, generator=None) -> TreeResult:
    """Rejection sampling down a tree whose children were chosen deterministically (static top-k trees).

    A chosen child ``x`` is a draft whose law is the point mass on ``x``, so at node u with residual
    law ``r`` (first the target's ``p``) child j is accepted with ``rule.accept_probability(r, 1_x, x)``
    -- ``r(x)`` for the exact rule -- and after a rejection ``r`` becomes ``norm(max(0, r - 1_x))``
    (``r`` with ``x`` removed). Each step is an exact speculative step for ``r``, so with
    :class:`genloom.toolkit.acceptance.ExactAcceptance` (``rule=None``) the committed tokens follow
    the target's law whatever the children are. A relaxed rule raises each child's acceptance by at
    most its ``delta``, so a node's token law moves by at most ``delta`` per child tested.
    ``target_probs`` (B, N, V), ``tokens`` (B, N).
    """
    if rule is None:
        rule = ExactAcceptance()
    V = target_probs.shape[-1]
    return _walk(shape, target_probs, tokens, lambda node, x: torch.nn.functional.one_hot(x, V).to(target_probs.dtype), rule, generator)


def _walk(shape: TreeShape, target_probs: torch.Tensor, tokens: torch.Tensor, child_law, rule, generator) -> TreeResult:
    """The walk both sampling verifiers share: at each level, the children of the current node are
    tested in order, child ``x`` drawn from ``child_law(node, x)`` (B, V) being accepted with
    ``rule.accept_probability(r, q, x)`` against the residual ``r`` (first the target's law at the
    node), which becomes ``norm(max(0, r - q))`` after each rejection; when every child is rejected
    the token is drawn from the last residual, and a walk that reaches a leaf draws a bonus token."""
    B = tokens.shape[0]
    dev = tokens.device
    rows = torch.arange(B, device=dev)
    first = shape.first_child.to(dev)
    node = torch.zeros(B, dtype=torch.long, device=dev)
    live = torch.ones(B, dtype=torch.bool, device=dev)
    next_token = torch.zeros(B, dtype=torch.long, device=dev)
    for k in shape.branching:
        r = target_probs[rows, node]
        base = first[node]
        moved = torch.zeros(B, dtype=torch.bool, device=dev)
        target = node.clone()
        for j in range(k):
            child = base + j
            x = tokens[rows, child]
            q = child_law(node, x)
            chance = rule.accept_probability(r, q, x)
            u = torch.rand(B, generator=generator, device=dev, dtype=r.dtype)
            testing = live & ~moved
            accept = testing & (u < chance)
            target = torch.where(accept, child, target)
            moved = moved | accept
            r = torch.where((testing & ~accept)[:, None], _residual(r, q), r)
        stop = live & ~moved
        if bool(stop.any()):
            draw = torch.multinomial(r.float() if r.dtype not in (torch.float32, torch.float64) else r, 1, generator=generator).squeeze(1)
            next_token = torch.where(stop, draw, next_token)
        node = target
        live = moved
    if bool(live.any()):  # every level accepted: a bonus token from the leaf's law
        draw = torch.multinomial(target_probs[rows, node], 1, generator=generator).squeeze(1)
        next_token = torch.where(live, draw, next_token)
    return TreeResult(node, shape.depth.to(dev)[node], next_token)


def serves_tree(model, state) -> bool:
    """True when ``model`` verifies a tree in one pass with ``state`` by the tree attention pattern."""
    probe = tree([-1], torch.zeros(1, dtype=torch.long))
    return isinstance(state, KVCache) and model.backbone.supports(probe)


def target_tree_logits(session: Session, model, state: State, tokens: torch.Tensor, shape: TreeShape, name: str = "target"):
    """The target's logits at every node (B, N, V) in one forward pass, and a function that keeps the
    accepted path in ``state``: call it with the deepest accepted node (B,) and, optionally, ``live``
    (B,) bool: a row that is not live (a finished sequence) keeps nothing of the tree in a KV cache,
    so a sequence that finished early does not fill a fixed-size cache while the others decode.

    ``state`` has consumed everything before the root ``tokens[:, 0]``. Three routes, in order: the
    backbone's ``forward_tree(h, parents=..., state=...)`` (with ``state.keep``; a backbone may say
    it cannot at the moment with ``serves_trees()``); the tree attention
    pattern (a backbone that serves it, with a :class:`KVCache`); each root-to-leaf path as a batch
    row (every backbone: the state is expanded with ``reorder``, rolled back within its last advance).
    """
    B = tokens.shape[0]
    backbone = model.backbone
    if hasattr(backbone, "forward_tree") and getattr(backbone, "serves_trees", lambda: True)():
        session.metrics.count_forward(name)
        hidden = backbone.forward_tree(model.head.embed(tokens), parents=shape.parents, state=state)
        logits = model.head(hidden)

        def keep(node, live=None):  # a recurrent state's size does not grow: every row keeps its path
            state.keep(shape.ancestors_mask(node))

        return logits, keep
    if serves_tree(model, state):
        logits = session.forward(tokens, state=state, pattern=tree(shape.parents, state.lengths), model=model, name=name)

        def keep(node, live=None):
            mask = shape.ancestors_mask(node)
            state.keep(mask if live is None else mask & live[:, None])

        return logits, keep
    # fallback: every root-to-leaf path is one batch row
    paths = shape.paths.to(tokens.device)
    P = paths.shape[0]
    before = state.lengths.clone()
    state.reorder(torch.arange(B, device=tokens.device).repeat_interleave(P))
    rows_tokens = tokens[:, paths].reshape(B * P, -1)
    out = session.forward(rows_tokens, state=state, model=model, name=name).reshape(B, P, paths.shape[1], -1)
    path_of, depth = shape.path_of.to(tokens.device), shape.depth.to(tokens.device)
    logits = out[:, path_of, depth]  # (B, N, V): each node read off the first path through it

    def keep(node, live=None):
        state.reorder(torch.arange(B, device=tokens.device) * P + path_of[node])
        kept = depth[node] + 1
        state.rollback(before + (kept if live is None or not isinstance(state, KVCache) else torch.where(live, kept, 0)))

    return logits, keep


def process_nodes(session: Session, shape: TreeShape, logits: torch.Tensor, tokens: torch.Tensor, nodes) -> torch.Tensor:
    """``logits`` (B, n, V) at the tree nodes ``nodes`` (n indices) after the session's logits
    processors, each node with its own history: the committed history taken when the round started
    (``session.scratch["history"]``; it ends with the root) followed by the drafted tokens on the
    path from the root down to the node. Without processors ``logits`` is returned as is."""
    if not session.processors:
        return logits
    base = session.scratch["history"]
    B, n, V = logits.shape
    nodes = list(nodes)
    depth = shape.depth.tolist()
    out = torch.empty_like(logits)
    for d in sorted({depth[u] for u in nodes}):
        cols = [i for i, u in enumerate(nodes) if depth[u] == d]
        m = len(cols)
        path = shape.paths[shape.path_of[[nodes[i] for i in cols]]][:, 1:d + 1].to(tokens.device)  # (m, d) the drafted ancestors and the node
        history = torch.cat([base.repeat_interleave(m, 0), tokens[:, path].reshape(B * m, d)], 1)
        out[:, cols] = session.process(logits[:, cols].reshape(B * m, V), history).reshape(B, m, V)
    return out


class TreeDecoder(Decoder):
    """The target side of tree speculation on the core loop; subclasses draft the tree.

    A subclass sets ``self.shape`` (:class:`TreeShape`) and ``self.greedy``, and implements
    :meth:`draft_tree` (and, when it keeps state of its own, :meth:`start_drafting` and
    :meth:`drafted`). ``verify`` runs :func:`target_tree_logits` once and walks the tree;
    ``advance`` keeps the accepted path in the target's state.

    Logits processors apply at every node with that node's history (:func:`process_nodes`): the
    target's logits before the walk, and a drafter's (``TreeSpeculativeDecoder``) before it chooses
    children. Greedy decoding then equals greedy decoding of the processed target, and the sampling
    walk is exact for the processed target's law (each step is a speculative-sampling step between
    the processed target and the processed draft law the children were drawn from).
    """

    shape: TreeShape
    greedy: bool = True

    @property
    def exact(self) -> str:
        return "greedy" if self.greedy else "sampling"

    def start(self, session: Session) -> None:
        batch, width = session.prompt_ids.shape
        session.state = session.model.init_state(batch, width + session.max_new_tokens + self.shape.size + 16)
        session.prefill_all_but_last(session.state)  # the last prompt token is the first round's root
        session.scratch["root"] = session.prompt_ids[:, -1]
        self.start_drafting(session)

    def start_drafting(self, session: Session) -> None:
        """Prepare the drafter for a session (after the target's prefill)."""

    def draft_tree(self, session: Session):
        """``(tokens (B, N), draft_probs (B, N, V) or None)``: node 0 is ``session.scratch["root"]``;
        ``draft_probs[:, u]`` is the law node u's children were drawn from (sampling mode only)."""
        raise NotImplementedError

    def drafted(self, session: Session, commit: Commit) -> None:
        """Called after each commit (the drafter learns what was kept)."""

    def propose(self, session: Session):
        session.scratch["history"] = session.history() if session.processors else None
        return self.draft_tree(session)

    def target_logits(self, session: Session, tokens: torch.Tensor) -> torch.Tensor:
        """The target's processed logits at every node (B, N, V), in one target pass; :meth:`advance`
        keeps the accepted path afterwards."""
        logits, session.scratch["keep"] = target_tree_logits(session, session.model, session.state, tokens, self.shape)
        return process_nodes(session, self.shape, logits, tokens, range(self.shape.size))

    def verify(self, session: Session, proposal) -> Commit:
        tokens, draft_probs = proposal
        logits = self.target_logits(session, tokens)
        if self.greedy:
            result = verify_greedy(self.shape, logits, tokens)
        else:
            result = verify_sampling(self.shape, torch.softmax(logits.double(), -1), draft_probs, tokens, session.generator)
        session.metrics.record_acceptance(result.num_accepted, self.shape.max_depth, ~session.finished)
        session.scratch["result"] = result
        return Commit(result.tokens(self.shape, tokens), result.num_accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        result = session.scratch["result"]
        session.scratch["keep"](result.node, ~session.finished)  # the target keeps the root and the accepted path (finished rows: nothing)
        session.scratch["root"] = result.next_token
        self.drafted(session, commit)


def _fork(state: State) -> State:
    """A state holding the same rows as ``state`` that can advance and reorder without changing it.

    A shallow copy suffices for states whose methods rebind their tensors (``KVCache.reorder``,
    recurrent states): the drafting loop reorders the copy before advancing it. A
    :class:`StaticKVCache` reorders and advances in place (its tensors keep their addresses), so a
    shallow copy would write into the original's store and lengths: it gets a copy of its own."""
    return copy.deepcopy(state) if isinstance(state, StaticKVCache) else copy.copy(state)


class TreeSpeculativeDecoder(TreeDecoder, DraftModelDecoder):
    """Draft a token tree with a small model, verify it with the target in one pass (module docstring)."""

    def __init__(self, config: TreeDraftConfig, ctx=None, draft=None):
        DraftModelDecoder.__init__(self, config, ctx, draft)
        self.shape = TreeShape(config.branching)
        self.greedy = config.greedy

    def start_drafting(self, session: Session) -> None:
        batch, width = session.prompt_ids.shape
        self.draft.to(session.device)
        draft_state = self.draft.init_state(batch, width + session.max_new_tokens + self.shape.size + 16)
        session.scratch["draft_tree"] = serves_tree(self.draft, draft_state)
        session.scratch["draft_state"] = draft_state
        session.prefill_all_but_last(draft_state, model=self.draft, name="draft")
        last = session.prompt_ids[:, -1:]
        session.scratch["draft_pending"] = (last, torch.ones_like(last, dtype=torch.bool))

    def _children(self, session: Session, q: torch.Tensor, k: int) -> torch.Tensor:
        """(B, n, k) children tokens drawn from (B, n, V) draft probabilities."""
        if self.greedy:
            return q.topk(k, dim=-1).indices
        flat = q.reshape(-1, q.shape[-1])
        return torch.multinomial(flat, k, replacement=True, generator=session.generator).reshape(*q.shape[:-1], k)

    def draft_tree(self, session: Session):
        shape = self.shape
        state = session.scratch["draft_state"]
        ids, valid = session.scratch["draft_pending"]
        logits = session.forward(ids, state=state, valid=valid, model=self.draft, name="draft")[:, -1:]
        B, V = ids.shape[0], logits.shape[-1]
        tokens = torch.zeros(B, shape.size, dtype=torch.long, device=session.device)
        tokens[:, 0] = session.scratch["root"]
        draft_probs = torch.zeros(B, shape.size, V, dtype=torch.float64, device=session.device)
        if session.scratch["draft_tree"]:  # the nodes below the root under the tree pattern, then back
            session.scratch["draft_snapshot"] = state.snapshot()
            pattern = tree([p - 1 for p in shape.parents[1:]], state.lengths)
            branch = state
        else:  # each node of a level is a batch row of a copy of the state (any draft backbone)
            session.scratch["draft_snapshot"] = None
            branch, pattern = _fork(state), None
        for d, k in enumerate(shape.branching):
            level = torch.tensor(shape.levels[d], device=session.device)
            if d > 0:  # feed this level's nodes (the root was fed with the pending tokens)
                if pattern is not None:
                    logits = session.forward(tokens[:, level], state=branch, pattern=pattern, model=self.draft, name="draft")
                else:
                    logits = session.forward(tokens[:, level].reshape(-1, 1), state=branch, model=self.draft, name="draft").reshape(B, len(level), V)
            q = torch.softmax(process_nodes(session, shape, logits, tokens, shape.levels[d]).double(), -1)  # (B, n_d, V)
            draft_probs[:, level] = q
            children = self._children(session, q, k)  # (B, n_d, k), breadth-first order
            tokens[:, torch.tensor(shape.levels[d + 1], device=session.device)] = children.reshape(B, -1)
            if pattern is None and d + 1 < shape.max_depth:  # one row per child, holding its parent's path
                branch.reorder(torch.arange(B * len(level), device=session.device).repeat_interleave(k))
        return tokens, draft_probs

    def drafted(self, session: Session, commit: Commit) -> None:
        if session.scratch["draft_snapshot"] is not None:
            session.scratch["draft_state"].restore(session.scratch["draft_snapshot"])
        tokens, counts, live = commit.tokens.tolist(), commit.counts.tolist(), (~session.finished).tolist()
        # a finished sequence feeds the draft nothing more (its state stops growing; its drafts are not used)
        session.scratch["draft_pending"] = pad_left([row[:c] if alive else [] for row, c, alive in zip(tokens, counts, live)], device=session.device, min_width=1)
