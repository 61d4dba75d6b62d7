"""Sampling, greedy and beam-search decoders on the core's propose/verify/commit loop."""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder


class Sampling(Decoder):
    """Ancestral sampling: the core loop's default behaviour."""

    exact = "sampling"


class Greedy(Decoder):
    exact = "greedy"

    def choose(self, session, logits):
        return logits.argmax(-1)


class Beam(Decoder):
    """Beam search. ``propose`` runs the search to the end (reordering the KV cache across the
    beams each step); ``verify`` commits each sequence's best hypothesis as one block."""

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.num_beams = config.num_beams
        self.length_penalty = config.length_penalty

    def start(self, session):
        B, K = session.batch_size, self.num_beams
        ids = session.prompt_ids.repeat_interleave(K, 0)
        valid = session.prompt_valid.repeat_interleave(K, 0)
        capacity = ids.shape[1] + session.max_new_tokens + 16
        session.state = session.model.init_state(B * K, capacity)
        logits = session.forward(ids, state=session.state, valid=valid)
        session.scratch["next_logits"] = logits[:, -1]

    def propose(self, session):
        B, K = session.batch_size, self.num_beams
        device = session.device
        eos = session.eos_id
        scores = torch.zeros(B, K, device=device)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand from the first only
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
        alive = torch.ones(B, K, dtype=torch.bool, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        logits = session.scratch["next_logits"]
        hist_prompt = session.history().repeat_interleave(K, 0)
        for step in range(session.max_new_tokens):
            hist = torch.cat([hist_prompt, seqs], 1) if seqs.numel() else hist_prompt
            logp = torch.log_softmax(session.process(logits, hist).float(), -1)  # (B*K, V)
            V = logp.shape[-1]
            cand = (scores.reshape(B * K, 1) + logp).reshape(B, K * V)
            cand = cand.masked_fill(~alive.reshape(B, K, 1).expand(B, K, V).reshape(B, K * V), float("-inf"))
            top, idx = cand.topk(2 * K, dim=-1)
            beam_src, tok = idx // V, idx % V
            new_scores = torch.full((B, K), float("-inf"), device=device)
            new_src = torch.zeros(B, K, dtype=torch.long, device=device)
            new_tok = torch.zeros(B, K, dtype=torch.long, device=device)
            for b in range(B):
                j = 0
                for c in range(2 * K):
                    s = float(top[b, c])
                    if s == float("-inf"):
                        break
                    src, t = int(beam_src[b, c]), int(tok[b, c])
                    if eos is not None and t == eos:
                        hyp = seqs[b * K + src].tolist() + [t]
                        finished[b].append((s / len(hyp) ** self.length_penalty, hyp))
                        continue
                    if j < K:
                        new_scores[b, j], new_src[b, j], new_tok[b, j] = s, src, t
                        j += 1
            order = (torch.arange(B, device=device)[:, None] * K + new_src).flatten()
            seqs = torch.cat([seqs.index_select(0, order), new_tok.flatten()[:, None]], 1)
            scores = new_scores
            alive = scores > float("-inf")
            # stop a sequence when its best finished hypothesis beats every live beam's best possible score
            for b in range(B):
                if finished[b] and len(finished[b]) >= K:
                    best_live = float(scores[b].max()) / (seqs.shape[1] ** self.length_penalty)
                    if max(f[0] for f in finished[b]) >= best_live:
                        alive[b] = False
            if not bool(alive.any()) or step == session.max_new_tokens - 1:
                break
            session.state.reorder(order)
            logits = session.forward(new_tok.flatten()[:, None], state=session.state)[:, -1]
        best = []
        for b in range(B):
            pool = list(finished[b])
            for k in range(K):
                if float(scores[b, k]) > float("-inf"):
                    pool.append((float(scores[b, k]) / seqs.shape[1] ** self.length_penalty, seqs[b * K + k].tolist()))
            best.append(max(pool, key=lambda x: x[0])[1] if pool else [])
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
