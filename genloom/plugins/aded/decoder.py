"""The ``aded`` decoder: tri-gram drafts updated online, verified as a token tree by the target.

Per round, for every sequence:

1. ``propose``: from the last two committed tokens, the tri-gram table (:mod:`.trigram`) drafts a
   static tree breadth first: each node's children are the top candidates after (its parent's
   token, its token), by the exploration/exploitation score;
2. ``verify``: the target scores the whole tree in one pass (:class:`genloom.toolkit.tree.TreeDecoder`:
   tree attention, a backbone's tree method, or per-path rows) and walks down while a child
   equals its argmax: the output is the target's greedy decoding;
3. the session commits the accepted path and the target's next token;
4. ``advance``: the target keeps the accepted path's state, and the committed tokens are counted
   into the table, so drafts follow what the target actually produces.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Session
from genloom.plugins.aded.trigram import TrigramTable
from genloom.toolkit.tree import TreeDecoder, TreeShape


class AdedDecoder(TreeDecoder):
    """Greedy tree speculation with drafts from an online tri-gram table of the target's outputs."""

    exact = "greedy"

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.shape = TreeShape(config.branching)
        self.greedy = True
        self.table = TrigramTable(config.exploration)
        self.persist = config.persist

    def start_drafting(self, session: Session) -> None:
        if not self.persist:
            self.table = TrigramTable(self.config.exploration)
        seqs = [ids[valid].tolist() for ids, valid in zip(session.prompt_ids, session.prompt_valid)]
        for seq in seqs:
            self.table.update(seq)
        session.scratch["aded_seqs"] = seqs

    def draft_tree(self, session: Session):
        shape = self.shape
        parents = shape.parents
        first = shape.first_child.tolist()
        rows = []
        for seq in session.scratch["aded_seqs"]:
            tokens = [0] * shape.size
            tokens[0] = seq[-1]
            for d, k in enumerate(shape.branching):
                for u in shape.levels[d]:
                    a = tokens[parents[u]] if parents[u] >= 0 else (seq[-2] if len(seq) > 1 else None)
                    tokens[first[u]:first[u] + k] = self.table.children(a, tokens[u], k)
            rows.append(tokens)
        return torch.tensor(rows, dtype=torch.long, device=session.device), None

    def drafted(self, session: Session, commit: Commit) -> None:
        for seq, row, kept in zip(session.scratch["aded_seqs"], commit.tokens.tolist(), session.last_kept.tolist()):
            if kept:  # the tokens the session kept (fewer than committed when the sequence stopped)
                start = len(seq)
                seq.extend(row[:kept])
                self.table.update(seq, start)


def build(config, ctx):
    return AdedDecoder(config, ctx)
