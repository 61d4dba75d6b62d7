"""The ``duodecoding`` decoder: the draft drafts ahead in a worker thread while the target verifies.

A *block* is a token tree of shape ``(K, 1, ..., 1)``: node 0 is the root (the last committed
token, not yet consumed by the target), then ``K`` sequences of ``gamma`` drafted tokens, numbered
breadth first (depth ``d`` of sequence ``j`` is node ``1 + (d - 1) K + j``). Per round:

1. ``propose``: the block drafted ahead last round when it is still valid, else a fresh one (the
   draft consumes the tokens committed last round, then drafts);
2. ``verify``: the worker thread drafts the *next* block from sequence 0's leaf, assuming that
   sequence and the draft's own guess of the next token are accepted, while this thread runs the
   target over the tree once and walks it (greedy, or exact rejection sampling);
3. the session commits the accepted path and the next token;
4. ``advance``: the target keeps the accepted path; the drafted-ahead block is kept only when
   every sequence accepted all of sequence 0 and the target's next token is the guess.

The draft samples with its own generator (seeded once from the session's), in a fixed order
within the worker, so the schedule (thread or sequence) does not change a single token.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Session, pad_left
from genloom.toolkit.acceptance import ExactAcceptance, verify_chain
from genloom.toolkit.draft import DraftModelDecoder
from genloom.toolkit.tree import TreeResult, TreeShape, target_tree_logits, verify_greedy, verify_static


@dataclass
class Block:
    """One drafted block (see the module docstring)."""

    tokens: torch.Tensor
    """(B, N) node tokens; node 0 the root."""
    probs: torch.Tensor
    """(B, N, V) the draft's law at every node (the law its child was drawn from; a leaf's law
    gives the guess of the next token)."""
    shape: TreeShape
    extra: torch.Tensor
    """(B,) the extra sequences each row drafted (its candidates ranked 2.. that were spawned)."""
    confidence: torch.Tensor
    """(B,) the draft's top probability at the root."""
    branch: object
    """The draft's state after consuming every sequence (``B * K`` rows)."""
    passes: int
    guess: torch.Tensor | None = None
    """(B,) for a block drafted ahead: the guessed root (the target's next token)."""
    state: object = None
    """For a block drafted ahead: the draft state that has consumed sequence 0 and the guess."""


class DuoDecoder(DraftModelDecoder):
    """Speculative decoding with concurrent drafting ahead and dynamic multi-sequence drafts."""

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx, draft)
        self.gamma = config.gamma
        self.top_k = config.top_k
        self.threshold = config.threshold
        self.greedy = config.greedy
        self.concurrent = config.concurrent

    @property
    def exact(self) -> str:
        return "greedy" if self.greedy else "sampling"

    # -- drafting (pure functions of the draft model, its state and its generator: thread-safe) ---
    def _pick(self, q: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return q.argmax(-1) if self.greedy else torch.multinomial(q, 1, generator=gen).squeeze(-1)

    def _block(self, state, ids: torch.Tensor, valid, roots: torch.Tensor, gen: torch.Generator) -> Block:
        """Feed ``ids`` (ending with the root) to ``state``, then draft a block from the root."""
        with torch.no_grad():
            logits = self.draft(ids, state=state, valid=valid)[:, -1]
            q0 = torch.softmax(logits.double(), -1)
            B, V = q0.shape
            confidence = q0.max(-1).values
            C = min(self.top_k, V)
            top = q0.topk(C, dim=-1)
            branch = copy.deepcopy(state)  # the sequences grow on a copy: the state keeps committed tokens only
            dev = ids.device
            if self.threshold is None or C == 1:  # paper's rule: needs sequence 0's second-token confidence
                q1 = None
                if C > 1:
                    branch.reorder(torch.arange(B, device=dev).repeat_interleave(C))
                    q1 = torch.softmax(self.draft(top.indices.reshape(B * C, 1), state=branch)[:, -1].double(), -1).reshape(B, C, V)
                    spawn = top.values[:, 1:] > (confidence * q1[:, 0].max(-1).values)[:, None]  # p_{1,k} > p_{1,1} p_{2,1}
                else:
                    spawn = torch.zeros(B, 0, dtype=torch.bool, device=dev)
            else:  # fixed threshold: all top-k candidates when the first-token confidence is low
                q1 = None
                spawn = (confidence < self.threshold)[:, None].expand(B, C - 1)
            count = spawn.sum(1)  # extra sequences per row (the candidates spawned form a prefix of the ranking)
            K = 1 + int(count.max()) if B else 1
            slot = torch.arange(K, device=dev)[None]
            source = torch.where(slot < 1 + count[:, None], slot, torch.zeros_like(slot))  # (B, K) the candidate each slot holds
            first = top.indices.gather(1, source)  # a slot past a row's spawns repeats its top-1: a provable no-op
            shape = TreeShape((K,) + (1,) * (self.gamma - 1))
            tokens = torch.zeros(B, shape.size, dtype=torch.long, device=dev)
            tokens[:, 0] = roots
            tokens[:, 1:K + 1] = first
            probs = torch.zeros(B, shape.size, V, dtype=torch.float64, device=dev)
            probs[:, 0] = q0
            rows = torch.arange(B, device=dev)[:, None]
            if q1 is not None:  # depth 1 was drafted for every candidate: keep the slots' rows
                branch.reorder((rows * C + source).reshape(-1))
                q = q1[rows, source].reshape(B * K, V)
                passes, start = 2, 2
            else:
                branch.reorder(torch.arange(B, device=dev).repeat_interleave(K))
                q, passes, start = None, 1, 1
            x = first.reshape(B * K, 1)
            for d in range(1, self.gamma + 1):
                if d >= start:
                    q = torch.softmax(self.draft(x, state=branch)[:, -1].double(), -1)
                    passes += 1
                probs[:, 1 + (d - 1) * K:1 + d * K] = q.reshape(B, K, V)
                if d < self.gamma:
                    x = self._pick(q, gen)
                    tokens[:, 1 + d * K:1 + (d + 1) * K] = x.reshape(B, K)
                    x = x[:, None]
        return Block(tokens, probs, shape, count, confidence, branch, passes)

    def _ahead(self, block: Block, gen: torch.Generator) -> Block:
        """Draft the next block assuming sequence 0 and the draft's guess of the next token are accepted."""
        K, B = block.shape.branching[0], block.tokens.shape[0]
        guess = self._pick(block.probs[:, 1 + (self.gamma - 1) * K], gen)
        state = copy.deepcopy(block.branch)
        state.reorder(torch.arange(B, device=guess.device) * K)  # sequence 0 of every row
        nxt = self._block(state, guess[:, None], None, guess, gen)
        nxt.guess, nxt.state = guess, state
        return nxt

    # -- the loop ----------------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        if session.processors:
            raise GenerationError("duodecoding applies no logits processors (each drafted sequence would need its own history); "
                                  "drop the processors or use the 'speculative' decoder")
        batch, width = session.prompt_ids.shape
        if width == 0:
            raise ValueError("duodecoding needs a non-empty prompt per sequence")
        self.draft.to(session.device)
        capacity = width + session.max_new_tokens + 2 * (self.gamma + 2) + 16
        session.state = session.model.init_state(batch, capacity)
        state = self.draft.init_state(batch, capacity)
        session.prefill_all_but_last(session.state)  # the last prompt token is the first block's root
        session.prefill_all_but_last(state, model=self.draft, name="draft")
        seed = int(torch.randint(0, 2**62, (1,), generator=session.generator))
        session.scratch["draft_generator"] = torch.Generator(device=session.device).manual_seed(seed)
        session.scratch["draft_state"] = state
        last = session.prompt_ids[:, -1:]
        session.scratch["draft_pending"] = (last, torch.ones_like(last, dtype=torch.bool))
        session.scratch["block"] = None
        extra = session.metrics.extra
        extra.update(duo_rounds=0, duo_low_first_token=0, duo_extra_sequences=0, duo_reused_blocks=0, duo_confidences=[])
        if self.concurrent and getattr(self, "_pool", None) is None:  # one worker, kept for the decoder's life
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genloom-draft")

    def propose(self, session: Session) -> Block:
        block = session.scratch["block"]
        if block is None:
            ids, valid = session.scratch["draft_pending"]
            block = self._block(session.scratch["draft_state"], ids, valid, ids[:, -1], session.scratch["draft_generator"])
            session.metrics.count_forward("draft", block.passes)
        active = ~session.finished
        spawned = block.extra * active.to(block.extra.device)
        extra = session.metrics.extra
        extra["duo_rounds"] += 1
        extra["duo_low_first_token"] += int((spawned > 0).sum())
        extra["duo_extra_sequences"] += int(spawned.sum())
        extra["duo_confidences"].extend(float(c) for c, a in zip(block.confidence.tolist(), active.tolist()) if a)
        session.scratch["proposed"] = block
        return block

    def verify(self, session: Session, block: Block) -> Commit:
        gen = session.scratch["draft_generator"]
        if self.concurrent:  # the draft works ahead while the target verifies
            future = self._pool.submit(self._ahead, block, gen)
        else:
            ahead = self._ahead(block, gen)
        shape, tokens = block.shape, block.tokens
        logits, keep = target_tree_logits(session, session.model, session.state, tokens, shape)
        result = verify_greedy(shape, logits, tokens) if self.greedy else self._verify_sampling(session, block, logits)
        if self.concurrent:
            ahead = future.result()
        session.metrics.count_forward("draft", ahead.passes)  # the guess is fed by the block's first pass
        session.metrics.record_acceptance(result.num_accepted, self.gamma, ~session.finished)
        session.scratch.update(keep=keep, result=result, ahead=ahead)
        return Commit(result.tokens(shape, tokens), result.num_accepted + 1)

    def _verify_sampling(self, session: Session, block: Block, logits: torch.Tensor) -> TreeResult:
        """Exact rejection sampling down the block: first level over the K deterministic candidates
        (``verify_static``), then the chosen sequence as a chain (``verify_chain``)."""
        K, g = block.shape.branching[0], self.gamma
        p = torch.softmax(logits.double(), -1)
        first = verify_static(TreeShape((K,)), p[:, :K + 1], block.tokens[:, :K + 1], generator=session.generator)
        accepted = first.num_accepted > 0
        j = (first.node - 1).clamp_min(0)  # the accepted sequence
        depth_nodes = 1 + torch.arange(g, device=j.device)[None] * K + j[:, None]  # (B, g): its nodes at depth 1..g
        rows = torch.arange(p.shape[0], device=j.device)[:, None]
        n, nxt, _ = verify_chain(ExactAcceptance(), p[rows, depth_nodes], block.probs[rows, depth_nodes[:, :-1]],
                                 block.tokens[rows, depth_nodes[:, 1:]], session.generator)
        node = torch.where(accepted, depth_nodes.gather(1, n[:, None]).squeeze(1), torch.zeros_like(n))
        next_token = torch.where(accepted, nxt, first.next_token)
        return TreeResult(node, block.shape.depth.to(node.device)[node], next_token)

    def _reusable(self, session: Session, block: Block, result: TreeResult, ahead: Block) -> bool:
        """The drafted-ahead block is valid: every row accepted all of sequence 0 and the guess."""
        leaf0 = 1 + (self.gamma - 1) * block.shape.branching[0]
        return bool(((result.node == leaf0) & (result.next_token == ahead.guess)).all())

    def advance(self, session: Session, commit: Commit) -> None:
        result, ahead = session.scratch["result"], session.scratch.pop("ahead")
        session.scratch["keep"](result.node)  # the target keeps the root and the accepted path
        if self._reusable(session, session.scratch["proposed"], result, ahead):
            session.scratch["draft_state"] = ahead.state
            session.scratch["block"] = ahead
            session.metrics.extra["duo_reused_blocks"] += 1
        else:  # discard the work ahead: the draft consumes the committed tokens next round
            session.scratch["block"] = None
            tokens, counts = commit.tokens.tolist(), commit.counts.tolist()
            session.scratch["draft_pending"] = pad_left([row[:c] for row, c in zip(tokens, counts)], device=session.device, min_width=1)


def build(config, ctx):
    return DuoDecoder(config, ctx)
