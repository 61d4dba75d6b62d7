"""The ``apar`` decoder on the core's loop: one round decodes each prompt's branch tree in parallel
(:func:`.branches.decode_branches`) and commits the branches one after another (in the order they
were started; a branch's closing EOS is left out so later branches are kept). Forward passes are counted as ``target``, one per parallel step."""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, Session
from genloom.plugins.apar.branches import decode_branches


class AparDecoder(Decoder):
    """Greedy parallel decoding of forked branches (siblings mutually invisible)."""

    exact = None  # the output is a tree of branches, not one sequence

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.trees = []

    def start(self, session: Session) -> None:
        if session.processors:
            raise GenerationError("the apar decoder decodes each branch greedily from the model's own logits and applies no logits processors "
                                  "(each forked branch would need its own history); drop the processors")
        self.trees = []

    def propose(self, session: Session) -> torch.Tensor:
        cfg, flats = self.config, []
        self.trees = []
        for b in range(session.batch_size):
            prompt = session.prompt_ids[b][session.prompt_valid[b]].tolist()
            result = decode_branches(session.model, prompt, fork_id=cfg.fork_id, child_id=cfg.child_id,
                                     eos_ids=tuple(session.eos_ids), max_branch_tokens=cfg.max_branch_tokens,
                                     max_branches=cfg.max_branches)
            session.metrics.count_forward("target", result.steps)
            self.trees.append(result)
            flats.append([t for t in result.flat() if t not in session.eos_ids])  # EOS ends a branch, not the output
        width = max(len(f) for f in flats)
        out = torch.zeros(session.batch_size, width, dtype=torch.long, device=session.device)
        for b, f in enumerate(flats):
            out[b, : len(f)] = torch.tensor(f, dtype=torch.long)
        session.scratch["counts"] = torch.tensor([len(f) for f in flats], device=session.device)
        return out

    def verify(self, session: Session, proposal: torch.Tensor) -> Commit:
        return Commit(proposal, session.scratch["counts"])

    def advance(self, session: Session, commit: Commit) -> None:
        session.finished[:] = True  # the whole tree was committed


def build(config, ctx) -> AparDecoder:
    return AparDecoder(config, ctx)
