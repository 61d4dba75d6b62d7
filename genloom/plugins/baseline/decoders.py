"""Sampling, greedy and beam-search decoders on the core's propose/verify/commit loop."""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, initial_capacity


class Sampling(Decoder):
    """Ancestral sampling: the core loop's default behaviour."""

    exact = "sampling"


class Greedy(Decoder):
    exact = "greedy"

    def choose(self, session, logits):
        return logits.argmax(-1)


class Beam(Decoder):
    """Beam search with transformers' scoring and stopping rule.

    ``propose`` runs the whole search (reordering the incremental state across the beams each step)
    and ``verify`` commits the returned hypotheses as one block. One step, per prompt:

    1. every live beam's next-token log-probabilities (processors applied to the log-probabilities)
       are added to its running sum, and the best ``(1 + #EOS ids) * num_beams`` candidates are
       kept, so that at least ``num_beams`` of them do not end the sequence;
    2. a candidate among the best ``num_beams`` that ends with an EOS id, or reaches
       ``max_new_tokens``, becomes a finished hypothesis scored ``sum / generated_length **
       length_penalty``; the ``num_beams`` best finished hypotheses are kept;
    3. the best ``num_beams`` candidates that did not finish become the live beams;
    4. the prompt is done when ``num_beams`` hypotheses have finished and none of the live beams can
       beat the worst of them any more (:meth:`improvement_possible`, after ``early_stopping``).

    The ``num_return_sequences`` best finished hypotheses are returned, best first. The session
    holds each prompt ``num_return_sequences`` times in a row (``Generator.generate`` arranges that);
    row ``j`` of a group gets the ``j``-th best hypothesis, and ``metrics.extra['sequence_scores']``
    the scores, row by row.
    """

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.num_beams = config.num_beams
        self.length_penalty = config.length_penalty
        self.early_stopping = getattr(config, "early_stopping", False)
        self.num_return_sequences = getattr(config, "num_return_sequences", 1)

    def _groups(self, session) -> int:
        n = self.num_return_sequences
        if session.batch_size % n:
            raise GenerationError(f"num_return_sequences={n} needs each prompt repeated {n} times in the batch (Generator.generate does that); got a batch of {session.batch_size}")
        return session.batch_size // n

    def start(self, session):
        B, K = self._groups(session), self.num_beams
        rows = torch.arange(B, device=session.device) * self.num_return_sequences
        ids = session.prompt_ids[rows].repeat_interleave(K, 0)
        valid = session.prompt_valid[rows].repeat_interleave(K, 0)
        capacity = initial_capacity(session)
        session.state = session.model.init_state(B * K, capacity)
        logits = session.forward(ids, state=session.state, valid=valid)
        session.scratch["next_logits"] = logits[:, -1]
        session.scratch["beam_history"] = session.history()[rows].repeat_interleave(K, 0)

    def improvement_possible(self, best_live: torch.Tensor, finished_scores: list, length: int, max_length: int) -> bool:
        """Whether the best live beam (running log-prob sum ``best_live`` after ``length`` generated
        tokens) may still enter the ``num_beams`` best finished hypotheses (``finished_scores``, best
        first): it must beat the worst of them, the ``num_beams``-th best."""
        if self.early_stopping == "never" and self.length_penalty > 0:
            length = max_length  # the sum only falls, so dividing by the longest length bounds it
        return bool(best_live / (length ** self.length_penalty) > finished_scores[-1])

    def propose(self, session):
        B, K = self._groups(session), self.num_beams
        device = session.device
        eos = torch.tensor(session.eos_ids, dtype=torch.long, device=device)
        width = max(2, 1 + len(session.eos_ids)) * K
        V_all = session.scratch["next_logits"].shape[-1]
        width = min(width, K * V_all)
        running = torch.zeros(B, K, device=device)
        running[:, 1:] = -1e9  # all beams start identical: expand from the first only
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
        finished: list[list[tuple[torch.Tensor, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        logits = session.scratch["next_logits"]
        hist_prompt = session.scratch["beam_history"]
        max_len = session.max_new_tokens
        for step in range(max_len):
            length = step + 1  # generated tokens of every candidate of this step
            hist = torch.cat([hist_prompt, seqs], 1)
            logp = session.process(torch.log_softmax(logits.float(), -1), hist)  # (B*K, V)
            V = logp.shape[-1]
            cand = (logp.view(B, K, V) + running[:, :, None]).view(B, K * V)
            top, idx = cand.topk(width, dim=-1)
            src, tok = idx // V, idx % V
            ends = torch.isin(tok, eos) if len(session.eos_ids) else torch.zeros_like(tok, dtype=torch.bool)
            if length >= max_len:
                ends = torch.ones_like(ends)
            scored = top / (length ** self.length_penalty)
            for b in range(B):
                full = self.early_stopping is True and len(finished[b]) >= K
                if done[b] or full:
                    continue
                added = False
                for c in range(K):  # only the best num_beams candidates may finish
                    if ends[b, c]:
                        finished[b].append((scored[b, c], seqs[b * K + int(src[b, c])].tolist() + [int(tok[b, c])]))
                        added = True
                if added:
                    finished[b].sort(key=lambda h: -float(h[0]))
                    del finished[b][K:]
            # the live beams: the best num_beams candidates that did not finish
            live_top = top + ends.float() * -1e9
            pick = live_top.topk(K, dim=-1).indices
            running = live_top.gather(1, pick)
            beam_src = src.gather(1, pick)
            new_tok = tok.gather(1, pick)
            order = (torch.arange(B, device=device)[:, None] * K + beam_src).flatten()
            seqs = torch.cat([seqs.index_select(0, order), new_tok.flatten()[:, None]], 1)
            hist_prompt = hist_prompt.index_select(0, order)
            for b in range(B):
                if done[b]:
                    continue
                if len(finished[b]) >= K:
                    if self.early_stopping is True or not self.improvement_possible(running[b, 0], [h[0] for h in finished[b]], length, max_len):
                        done[b] = True
            if all(done) or length >= max_len:
                break
            session.state.reorder(order)
            logits = session.forward(new_tok.flatten()[:, None], state=session.state)[:, -1]
        best, scores = [], []
        for b in range(B):
            for j in range(self.num_return_sequences):
                hyp = finished[b][j] if j < len(finished[b]) else (torch.tensor(float("-inf")), [])
                best.append(hyp[1])
                scores.append(float(hyp[0]))
        session.metrics.extra["sequence_scores"] = scores
        return best

    def verify(self, session, proposal):
        width = max((len(p) for p in proposal), default=0)
        tokens = torch.zeros(session.batch_size, max(width, 1), dtype=torch.long)
        for b, p in enumerate(proposal):
            if p:
                tokens[b, : len(p)] = torch.tensor(p)
        counts = torch.tensor([len(p) for p in proposal])
        return Commit(tokens, counts)

    def advance(self, session, commit):
        session.finished[:] = True  # the whole continuation was committed at once


def build_sampling(config, ctx):
    return Sampling(config, ctx)


def build_greedy(config, ctx):
    return Greedy(config, ctx)


def build_beam(config, ctx):
    return Beam(config, ctx)
