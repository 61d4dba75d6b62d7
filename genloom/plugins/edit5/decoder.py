"""EdiT5 decoding on the shared loop: one non-autoregressive pass, then the insertion loop.

``propose`` does the whole edit of each source block (``generate(source=...)`` builds it):

1. one backbone pass over the source block under ``prefix(S)`` (counted as the ``tag-point``
   forward pass) fills the decoding state and gives the encoder states; tagging is the argmax of
   the keep/delete logits, and the pointer scores are decoded greedily into an order of the kept
   tokens (``pointer.greedy_order``: always a permutation of them);
2. the insertion decoder starts from the start token and runs one backbone pass per token
   (``insertion`` forward passes) until it emits the end marker. Each choice is constrained so
   the sequence always parses: a slot marker only for the start or a *kept* token that comes
   later in the decoded order than the previous marker, at least one token after each marker,
   inserted tokens only after a marker, the end marker anywhere but right after a marker;
3. realization merges kept tokens and insertions (``labels.realize``); ``verify`` commits the
   output and an end-of-sequence id, so every sequence finishes in the first round.

A sequence's insertion steps are exactly ``#inserted tokens + #non-empty slots + 1`` (its markers
and the end marker); ``metrics.extra["insertion_steps"]`` lists them per sequence, and the batch's
``insertion`` passes are the largest of them (finished sequences ride along). The logits
processors are not applied: they read the output's history, and the insertion sequence is not the
output.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder

from .head import edit5_head, end_id, hidden
from .labels import parse_insertions, realize
from .pointer import greedy_order


class Edit5Decoder(Decoder):
    exact = None

    def start(self, session) -> None:
        S = self.ctx.get("source_length") if self.ctx is not None else None
        if not S or session.prompt_ids.shape[1] != S or not bool(session.prompt_valid.all()):
            raise GenerationError(f"the edit5 decoder reads exactly one source block of source_length={S} tokens per sequence: call generate(source=...) without a target prefix")

    def allowed(self, head, rank: list[int], last_rank: int, after_marker: bool, seen_marker: bool, end_id: int, vocab: int) -> torch.Tensor:
        """(V,) the tokens the insertion sequence may continue with (module docstring, step 2)."""
        ok = torch.zeros(vocab, dtype=torch.bool)
        if not after_marker:
            for k, r in enumerate(rank):
                if r > last_rank:
                    ok[head.slot_id + k] = True
            ok[end_id] = True
        if seen_marker:
            special = torch.zeros(vocab, dtype=torch.bool)
            special[head.slot_id : head.slot_id + head.source_length + 1] = True
            special[head.start_id] = True
            special[end_id] = True
            ok |= ~special
        return ok

    def edit(self, session):
        """(kept flags, orders, insertion sequences) of the batch: one NAR pass + the insertion loop."""
        model = session.model
        head = edit5_head(model)
        S, end = head.source_length, end_id(self.ctx)
        source = session.prompt_ids
        B = source.shape[0]
        cap = 2 * session.max_new_tokens + 1
        state = model.init_state(B, S + cap + 1)
        session.metrics.count_forward("tag-point")
        h_src = hidden(model, source, state=state)
        keep = head.tag_logits(h_src).argmax(-1).bool().cpu() & (source.cpu() != end)  # padding is never kept
        scores = head.pointer_scores(h_src)
        orders = [greedy_order(scores[b], keep[b].tolist()) for b in range(B)]
        ranks = []
        for b in range(B):
            rank = [-1] * (S + 1)
            rank[0] = 0
            for i, p in enumerate(orders[b]):
                rank[p + 1] = i + 1
            ranks.append(rank)
        sequences: list[list[int]] = [[] for _ in range(B)]
        last_rank, after_marker, seen_marker = [-1] * B, [False] * B, [False] * B
        done = [False] * B
        token = torch.full((B, 1), head.start_id, dtype=torch.long, device=source.device)
        for _ in range(cap):
            session.metrics.count_forward("insertion")
            logits = head.insertion_logits(hidden(model, token, state=state), h_src)[:, -1].float().cpu()
            V = logits.shape[-1]
            mask = torch.stack([self.allowed(head, ranks[b], last_rank[b], after_marker[b], seen_marker[b], end, V) for b in range(B)])
            logits = logits.masked_fill(~mask, float("-inf"))
            choice = logits.argmax(-1) if self.config.greedy else head.sample(logits.to(session.device), session.generator).cpu()
            for b in range(B):
                if done[b]:
                    continue
                c = int(choice[b])
                sequences[b].append(c)
                is_marker = head.slot_id <= c <= head.slot_id + S
                after_marker[b] = is_marker
                if is_marker:
                    seen_marker[b] = True
                    last_rank[b] = ranks[b][c - head.slot_id]
                done[b] = c == end
            if all(done):
                break
            token = choice[:, None].to(source.device)
        session.metrics.extra["insertion_steps"] = [len(s) for s in sequences]
        session.metrics.extra["insertion_markers"] = [sum(head.slot_id <= t <= head.slot_id + S for t in s) for s in sequences]
        session.metrics.extra["inserted_tokens"] = [sum(not head.slot_id <= t <= head.slot_id + S and t != end for t in s) for s in sequences]
        session.metrics.extra["insertion_unfinished"] = sum(not d for d in done)
        return keep, orders, sequences

    def propose(self, session):
        head = edit5_head(session.model)
        keep, orders, sequences = self.edit(session)
        out = []
        for b, seq in enumerate(sequences):
            insertions = parse_insertions(seq, head.slot_id, head.source_length + 1, end_id(self.ctx))
            out.append(realize(session.prompt_ids[b].tolist(), keep[b].tolist(), orders[b], insertions))
        session.metrics.extra["output_tokens"] = [len(o) + 1 for o in out]
        return out

    def verify(self, session, proposal) -> Commit:
        return Commit.sequences(proposal, session.eos_id, session.device)

    def advance(self, session, commit) -> None:
        session.finished[:] = True  # the whole output came from one edit


def build(config, ctx):
    from . import reserve_tokens

    reserve_tokens(ctx)
    return Edit5Decoder(config, ctx)
