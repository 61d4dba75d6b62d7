"""Learn2PD: learning to parallel-decode diffusion LLMs (2025, arXiv:2509.25188).

The oracle it approximates is called "Extremely Greedy Parallel" decoding in the paper.

What the paper does. A masked diffusion LM decoded with a fixed schedule (e.g. one token per step)
re-predicts many tokens that are already right. An *oracle* that unmasks every token whose
current prediction equals the final output would decode in far fewer steps with the same output.
Learn2PD approximates it with a lightweight *filter* model trained after the fact: for each
masked position, from the step's confidence features, it predicts whether the current prediction
will be the final token; labels come from decoding runs of the base sampler (1 exactly where the
step's prediction equals the finally decoded token). At inference, positions the filter accepts
are unmasked together with the sampler's own choice. *End-of-Text Prediction* (EoTP) stops the
work on the tail: once EOS is decoded with everything before it decoded, the rest is padding.

What this implementation does.

- ``filter.py``: the features of a masked position (confidence, top-1/top-2 gap, normalised
  entropy, relative position in the block, fraction of the generated region still masked), the
  filter (a two-layer MLP), label collection from runs of the base decoder (:func:`collect`), and
  training with binary cross-entropy (:func:`train_filter`); ``save_filter``/``load_filter``.
- decoder ``learn2pd`` (``decoder.py``): the confidence-based masked-diffusion sampler (the
  ``masked-diffusion`` decoder's schedule) plus every masked position of the current block the
  filter accepts (probability >= ``filter_threshold``), and EoTP through the toolkit's
  :func:`genloom.toolkit.commit.fill_after_eos` (``end_of_text``). ``oracle`` mode (tests and
  benchmarks) accepts exactly the positions whose prediction equals a given reference output and,
  if none does, unmasks the scheduled positions with the reference's tokens: the output then is the
  reference, in fewer steps.

What it simplifies. Toy scale; the filter sees per-position features of one step (the paper
feeds the filter the confidences of the block); labels come from the greedy base sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig

PAPER = records.Paper(title="Learning to Parallel: Accelerating Diffusion Large Language Models via Adaptive Parallel Decoding", year=2025, arxiv="2509.25188")


@dataclass
class Learn2PDConfig(CanvasDecoderConfig):
    """Confidence-based unmasking plus a learned filter that unmasks predictions it deems final, and EoTP."""

    filter_path: str | None = None
    """A filter trained with ``genloom.plugins.learn2pd.filter.train_filter`` (.safetensors); None: no filter."""
    filter_threshold: float = 0.9
    """Unmask a masked position when the filter's probability that its prediction is final is >= this."""
    end_of_text: bool = True
    """End-of-Text Prediction: fill the masks after a fixed EOS with EOS (no step is spent on them)."""

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.filter_threshold <= 1.0:
            raise ValueError(f"filter_threshold must be in (0, 1], got {self.filter_threshold}")


@hookimpl
def genloom_decoders():
    return [records.decoder("learn2pd", "genloom.plugins.learn2pd.decoder:build", Learn2PDConfig,
                            "Masked-diffusion sampling plus a learned filter that unmasks already-final predictions; EoTP.", PAPER)]
