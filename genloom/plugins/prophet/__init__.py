"""Prophet: diffusion language models know the answer before decoding (2025, arXiv:2508.19982).

What the paper does. Masked diffusion language models often have the final answer fixed long
before the last refinement step ("early answer convergence"). Prophet is a training-free
early-commit rule on top of an existing sampler: at every step it measures how decided the model
is on the answer positions by the gap between the top-1 and top-2 candidates, and when this gap
exceeds a threshold that depends on how far decoding has progressed (strict early, lenient late)
it goes "all-in": every remaining masked token is decoded in this one step (its current argmax
prediction) and decoding stops.

What this plugin implements. Decoder ``prophet`` on the core's propose/verify/commit loop: the
standard confidence-based masked-diffusion sampler (the same schedule as the ``masked-diffusion``
decoder, one network call per step, newly completed left prefix committed each step) plus the
early-commit check on the very logits of each step, so the check costs no extra network call.
The gap is averaged (or its minimum taken) over the still-masked answer positions: the last
``answer_length`` positions of the canvas (None: the whole generated region); if none of them is
masked any more, over all masked positions. The threshold is staged by decoding progress
(``thresholds`` for progress below each of ``progress_boundaries``, then the last one).
With every threshold ``.inf`` the decoder is exactly the baseline sampler (tested token for token
and call for call); with finite thresholds it never takes more steps than the baseline.

What it simplifies, and where it departs from the property statement. The early-commit tokens are
the current predictions (argmax, or the Gumbel draw at temperature > 0). The gap can be measured
on probabilities (``gap_space: probability``, the default, as this project's technique table
states it) or on logits (``gap_space: logit``); our reading of the paper is that its staged
thresholds (values well above 1) are gaps between the two largest logits, so use ``logit`` with
thresholds of that size to follow it. Toy scale; answer positions are a fixed suffix instead of
being found by parsing the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig
from genloom.core.constraints import ALLOW_INFINITY, Ge, PositiveInt, Probability

PAPER = records.Paper(title="Diffusion Language Models Know the Answer Before Decoding", year=2025, arxiv="2508.19982")


@dataclass
class ProphetConfig(CanvasDecoderConfig):
    """Confidence-based masked-diffusion sampling with Prophet's early commit."""

    thresholds: tuple[Annotated[float, Ge(0), ALLOW_INFINITY], ...] = (0.9, 0.7, 0.5)
    """Gap thresholds for decoding progress below each of progress_boundaries, then after the last
    (one more threshold than boundaries). '.inf' never commits early."""
    progress_boundaries: tuple[Probability, ...] = (0.33, 0.67)
    """Fractions of the step budget at which the threshold changes (increasing, in (0, 1))."""
    gap_space: Literal["probability", "logit"] = "probability"
    """Measure the top-1 minus top-2 gap on probabilities or on logits."""
    reduce: Literal["mean", "min"] = "mean"
    """How the per-position gaps of the answer positions are combined."""
    answer_length: PositiveInt | None = None
    """The answer is the last answer_length positions of the canvas (None: all generated positions)."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.thresholds) != len(self.progress_boundaries) + 1:
            raise ValueError(f"thresholds needs one more entry than progress_boundaries "
                             f"(got {len(self.thresholds)} thresholds, {len(self.progress_boundaries)} boundaries)")
        if any(math.isnan(t) for t in self.thresholds):
            raise ValueError("thresholds must not be nan")
        b = list(self.progress_boundaries)
        if any(not 0.0 < x < 1.0 for x in b) or b != sorted(b):
            raise ValueError(f"progress_boundaries must be increasing and inside (0, 1), got {self.progress_boundaries}")
        if self.answer_length is not None and self.answer_length < 1:
            raise ValueError(f"answer_length must be at least 1, got {self.answer_length}")


@hookimpl
def genloom_decoders():
    return [records.decoder("prophet", "genloom.plugins.prophet.decoder:build", ProphetConfig,
                            "Masked-diffusion sampling that decodes everything at once when the top-2 gap is large.", PAPER)]
