"""The ``best-of-n`` decoder of ``genloom_reward_kind`` (its torch code, imported only when built)."""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder, run


class BestOfN(Decoder):
    """Draws ``n`` samples per prompt on the shared loop and commits the highest-scoring one at once."""

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.reward = ctx.build("reward", config.reward, path="decoder.reward") if config.reward is not None else ctx.reward

    def start(self, session):
        prompts = [session.prompt_ids[b][session.prompt_valid[b]].tolist() for b in range(session.batch_size)]
        n = self.config.n
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=session.generator))
        inner = run(session.model, [p for p in prompts for _ in range(n)], Decoder(), max_new_tokens=session.max_new_tokens,
                    processors=session.processors, seed=seed, eos_id=session.eos_ids)
        scores = torch.tensor(self.reward(inner.ids), dtype=torch.float64).view(session.batch_size, n)
        chosen = scores.argmax(1)
        session.metrics.count_forward("target", inner.metrics.forward_passes.get("target", 0))
        session.metrics.extra["candidates"] = [inner.ids[b * n:(b + 1) * n] for b in range(session.batch_size)]
        session.metrics.extra["scores"] = scores.tolist()
        session.scratch["best"] = [inner.ids[b * n + int(chosen[b])] for b in range(session.batch_size)]
        self.ctx.hook.genloom_best_of_n_chosen(scores=scores, chosen=chosen)

    def propose(self, session):
        best = session.scratch["best"]
        width = max(1, max(len(s) for s in best))
        tokens = torch.zeros(session.batch_size, width, dtype=torch.long, device=session.device)
        for b, seq in enumerate(best):
            tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens

    def verify(self, session, proposal):
        counts = torch.tensor([len(s) for s in session.scratch["best"]], dtype=torch.long, device=session.device)
        return Commit(proposal, counts)

    def advance(self, session, commit):
        session.finished[:] = True  # everything was committed in one step
