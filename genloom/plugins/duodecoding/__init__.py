"""DuoDecoding (Lv et al. 2025): heterogeneous speculative decoding with dynamic multi-sequence drafting.

What the paper does. The draft model runs on the CPU and the target on the GPU, *in parallel*:
while the target verifies the current block, the draft keeps drafting the next block as if the
whole block (and its own guess of the bonus token) were accepted; on a rejection that work is
thrown away. The draft budget (tokens per round) is chosen from the two devices' measured costs
so that neither side idles, and when the draft's first token is uncertain it drafts several
sequences whose first tokens are its top-k candidates, verified together by the target as a tree.
The output stays lossless.

What this implementation does. Decoder ``duodecoding`` (module ``decoder.py``):

- the draft of the next block runs in a ``concurrent.futures`` worker thread while the target's
  verification pass runs in the calling thread (two CPU workers stand in for CPU + GPU); the
  draft samples with a generator of its own (seeded once from the session's generator), so the
  concurrent and the sequential schedule (``concurrent: false``) give the same tokens;
- a round's block is a token tree of shape ``(K, 1, ..., 1)`` (``K`` sequences of ``gamma``
  tokens) whose first tokens are the draft's top candidates. Which candidates start a sequence:
  ``threshold: null`` (default) is the paper's rule as its Figure 2 describes it -- candidate k
  (rank 2..``top_k``) spawns when ``p_{1,k} > p_{1,1} p_{2,1}``, the product of the top-1
  probabilities at sequence 0's first two positions; a number spawns all ``top_k`` candidates when
  the first-token confidence ``p_{1,1}`` is below it. ``K`` is one plus the batch's largest spawn
  count; a row with fewer repeats its top-1 token in the spare slots (a repeated candidate is a
  provable no-op of the rule). Deeper tokens are drawn from the draft (``greedy``: argmax);
- verification through :mod:`genloom.toolkit.tree` (one target pass via ``target_tree_logits``):
  greedy with ``verify_greedy``; sampling with ``verify_static`` at the first level (rejection
  sampling over deterministic candidates, residual after each rejection) then
  :func:`genloom.toolkit.acceptance.verify_chain` along the chosen sequence: each step is an exact
  speculative step, so the output follows the target's law;
- the pre-drafted next block is reused only when every sequence of the batch accepted its whole
  first sequence AND the target's next token equals the draft's guess; otherwise it is discarded;
- the hardware-aware budget: with ``draft_cost`` and ``target_cost`` (measured seconds per
  forward pass) the budget is ``gamma = max(1, round(target_cost / draft_cost) - 1)``: the draft
  spends ``gamma + 1`` passes per round ahead of the target (the bonus-token guess, then ``gamma``
  drafts), which then matches one target verification pass, so neither worker waits.

What it simplifies. The budget formula is our reading of "hardware-aware optimal draft budget"
(the abstract gives no formula). Both models run on the CPU (threads, not devices); the
pre-drafted block is reused for the batch as a whole (for one sequence this is the paper's rule);
no logits processors (each tree branch would need its own history).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt, Probability
from genloom.toolkit.draft_config import DraftModelConfig

_P = "genloom.plugins.duodecoding"

PAPER = records.Paper(
    title="DuoDecoding: Hardware-aware Heterogeneous Speculative Decoding with Dynamic Multi-Sequence Drafting",
    year=2025,
    arxiv="2503.00784",
)


def draft_budget(target_cost: float, draft_cost: float) -> int:
    """Drafts per round so the draft's ``gamma + 1`` passes take one target pass: ``max(1, round(t/d) - 1)``."""
    return max(1, round(target_cost / draft_cost) - 1)


@dataclass
class DuoDecodingConfig(DraftModelConfig):
    """DuoDecoding (fields draft, gamma, seed from DraftModelConfig)."""

    top_k: PositiveInt = 3
    """At most this many sequences per round; their first tokens are the draft's top-k candidates."""
    threshold: Probability | None = None
    """null: the paper's rule -- candidate k (rank 2..top_k) starts a sequence when its probability
    exceeds ``p_{1,1} * p_{2,1}`` (the top-1 probabilities at the first two positions of sequence 0).
    A number: all ``top_k`` candidates when the first-token confidence ``p_{1,1}`` is below it (0: never)."""
    greedy: bool = False
    """Draft and verify with argmax: the output equals the target's greedy decoding."""
    concurrent: bool = True
    """Draft the next block in a worker thread while the target verifies (false: the same work in sequence)."""
    draft_cost: PositiveFloat | None = None
    """Measured cost of one draft forward pass (seconds); with ``target_cost`` it sets ``gamma`` by the budget formula."""
    target_cost: PositiveFloat | None = None
    """Measured cost of one target verification pass (seconds); with ``draft_cost`` it sets ``gamma``."""

    def __post_init__(self):
        super().__post_init__()
        if (self.draft_cost is None) != (self.target_cost is None):
            raise ValueError("draft_cost and target_cost must be given together (the budget formula needs both), or neither")
        if self.draft_cost is not None:
            self.gamma = draft_budget(self.target_cost, self.draft_cost)


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "duodecoding",
            f"{_P}.decoder:build",
            DuoDecodingConfig,
            "DuoDecoding: the draft drafts the next block in parallel with verification; top-k sequences when unsure (exact).",
            PAPER,
        )
    ]
