"""Hybrid decoding: a fast light decoder drafts the whole hypothesis, the full decoder verifies it
in one pass and corrects it where it is wrong.

What the paper does. A Transformer encoder-decoder speech recogniser gets a second, lightweight
decoder attached to its (frozen) encoder and fine-tuned alone. At inference the fast decoder
writes a complete hypothesis quickly; the full decoder then checks the whole hypothesis in one
parallel (teacher-forced) pass and, where its own choice differs, selectively corrects the output
from there, after which the fast decoder continues. The full decoder runs a handful of parallel
passes instead of one step per token, so decoding is more than twice as fast at the same word
error rate, and the full decoder's check also removes the fast decoder's repetitions.

What this implementation does. Decoder ``hybrid-decoding`` on the core loop, with the fast
decoder as a second genloom model sharing the tokenizer (``draft``: a run directory, weights, a
config or a nested config, loaded with :mod:`genloom.toolkit.draft`). One round, per sequence:

1. the fast decoder consumes the tokens committed last round and drafts greedily until it emits
   an end-of-sequence id or the sequence's token budget is used up: the whole remaining hypothesis;
2. the full decoder runs once over ``[last committed token, draft]`` and takes its greedy choice at
   every position (logits processors applied, each position with its own history); the longest
   agreeing prefix is accepted and the full decoder's token at the first disagreement is the
   correction (or, when all agree, its next token);
3. the full decoder's state rolls back over the rejected draft, the fast decoder restores its
   snapshot; the next round drafts the rest of the hypothesis after the correction.

The output equals the full decoder's greedy decoding token for token, and at batch 1 the full
decoder runs ``1 + corrections`` verification passes (``metrics.extra['corrections']``) after its
prefill. Conditional generation (the paper's speech -> text) uses the core's source conditioning:
``generate(source=...)`` puts the source block in front and both decoders continue after it.

What it simplifies. The fast decoder is a separate small model over the same prefix-LM layout
(the source block plays the encoder output), not a head attached to a shared encoder and
fine-tuned on it; the toy task is text (or the embedded sequence-to-sequence data), not speech.
Correction granularity is one token (the full decoder's choice at the first disagreement, then the
fast decoder redrafts); the paper's detailed correction of a longer segment by the full decoder is
not reproduced. Greedy only (no beam search in either decoder). Sequences of a batch that finished
keep being computed until all finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import Seed

_P = "genloom.plugins.hybrid_decoding"

PAPER = records.Paper(
    title="Hybrid Decoding: Rapid Pass and Selective Detailed Correction for Sequence Models",
    year=2025,
    arxiv="2508.19671",
)


@dataclass
class HybridDecodingConfig:
    """A fast decoder drafts the whole hypothesis; the full decoder verifies it in one pass and corrects it."""

    draft: str | dict[str, Any] | None = None
    """The fast (light) decoder: a run directory, a weights file inside one or a config .yaml (str),
    or a nested model config {tokenizer, head, backbone, ...}. Its vocabulary must be the model's."""
    seed: Seed = 0
    """Seed for the initial weights of a fast decoder built from a nested config."""

    def __post_init__(self):
        if self.draft is not None and not isinstance(self.draft, (str, dict)):
            raise ValueError(f"draft must be a path (str) or a nested model config (mapping), got {type(self.draft).__name__}")


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "hybrid-decoding",
            f"{_P}.decoder:build",
            HybridDecodingConfig,
            "Hybrid decoding: a fast decoder drafts the whole hypothesis, the full decoder verifies it in one pass and corrects it (greedy, exact).",
            PAPER,
        )
    ]
