"""Non-autoregressive translation with CTC (Libovický & Helcl, 2018).

What the paper does. The decoder does not generate left to right: the encoder states are
upsampled k times (each state projected into k decoder states), a decoder without a causal mask
computes all k x |source| output distributions at once, each over the vocabulary plus a *blank*,
and the model is trained with the CTC loss, which sums over every alignment of the output
positions that collapses (merge repeats, drop blanks) to the target. Decoding is one forward pass:
the best path (argmax per position), collapsed. No target length has to be predicted.

What this implementation does.

- head ``ctc`` (``head.py``): the token embedding, the upsampling projection (each source
  position's vector -> ``upsample_ratio`` decoder inputs, plus a learnt vector per slot), the output
  projection over the vocabulary and the reserved ``blank`` id, and the distribution: CTC negative
  log-likelihood (``genloom.toolkit.ctc``) and best-path collapse. ``parallel_logits(model, source)``
  is the one forward pass: the backbone reads ``[source block | upsampled states]`` under the
  ``full`` pattern and the head scores the upsampled positions.
- objective ``nat-ctc`` (``objective.py``): on source-conditioned data (``genloom.core.data``'s
  ``SourceTargetPairs``), the CTC loss of the target (its end-of-sequence id excluded) given the
  source; reports the batch's exact match of the best path.
- decoder ``nat-ctc`` (``decoder.py``): one forward pass per output on the shared loop, commits
  the collapsed best path and an end-of-sequence id (``generate(source=...)``).

What it simplifies at toy scale. The paper has an encoder and a decoder with cross-attention; here
one backbone (any that serves the ``full`` pattern) reads the source and the upsampled states
together, so the decoder positions see the source through self-attention (the prefix form of
conditioning, docs/plugin-guide.md), and the upsampling projects the source *embeddings* rather
than encoder outputs. No knowledge distillation from an autoregressive teacher and no beam search
with a language model: best-path decoding only.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

_P = "genloom.plugins.nat_ctc"

PAPER = records.Paper(
    title="End-to-End Non-Autoregressive Neural Machine Translation with Connectionist Temporal Classification",
    year=2018,
    arxiv="1811.04719",
)


def _reserve_blank(ctx) -> None:
    ctx.add_special_token("blank")


@dataclass
class CtcHeadConfig:
    """The NAT-CTC head: embedding, upsampling and output projection over the vocabulary + blank."""

    upsample_ratio: PositiveInt = 2
    """Decoder states per source position (the paper's k); the output length is k x source_length."""
    tie_weights: bool = True
    """Share the embedding and output projection matrices."""
    init_std: PositiveFloat = 0.02

    def __post_init__(self):
        if self.upsample_ratio < 1:
            raise ValueError(f"upsample_ratio must be >= 1, got {self.upsample_ratio}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")

    def bind(self, ctx):
        _reserve_blank(ctx)
        ctx.set("upsample_ratio", self.upsample_ratio)


@dataclass
class NatCtcObjectiveConfig:
    """CTC loss of the target given the source, over all k x source_length output positions."""

    def bind(self, ctx):
        _reserve_blank(ctx)


@dataclass
class NatCtcDecoderConfig:
    """One forward pass, best path (argmax per position), collapse repeats and blanks."""

    def bind(self, ctx):
        _reserve_blank(ctx)


@hookimpl
def genloom_heads():
    return [records.head("ctc", f"{_P}.head:build", CtcHeadConfig, "NAT-CTC head: upsampled decoder states scored over the vocabulary + blank (CTC).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("nat-ctc", f"{_P}.objective:build", NatCtcObjectiveConfig, "Non-autoregressive CTC loss of the target given the source (all alignments summed).", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("nat-ctc", f"{_P}.decoder:build", NatCtcDecoderConfig, "Non-autoregressive decoding: one forward pass, best path, collapse.", PAPER)]
