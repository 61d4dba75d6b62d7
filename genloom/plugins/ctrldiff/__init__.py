"""CtrlDiff: dynamic block prediction and controllable generation for diffusion LMs (2025, arXiv:2505.14455).

What the paper does. A semi-autoregressive diffusion LM generates blocks left to right and
denoises each block in parallel; CtrlDiff lets a small policy choose the length of each next
block from the local context, trained with reinforcement learning (a reward trading quality
against the number of denoising steps), and adds classifier guidance tailored to discrete
diffusion: the denoiser's clean-token distribution is reweighted per token,
``p(x0 | xt) * p(y | x0)^gamma`` (renormalised), so generation is conditioned on an attribute y
after training, without retraining the model.

What this implementation does. Decoder ``ctrldiff`` (``decoder.py``): masked-canvas decoding in
blocks whose lengths the policy picks per sequence from ``block_sizes`` (the last block is clipped,
so lengths sum to the generated length); each block is decoded in ``steps_per_block`` steps with
the confidence rule; guidance through the toolkit's ``guided_logits`` with a per-token attribute
classifier (``attribute_tokens``: the tokens of the attribute get ``log attribute_strength``,
others ``log (1 - attribute_strength)``). ``policy.py``: the policy (an MLP over the confidences of
the next positions at the block start), REINFORCE training with a mean baseline (:func:`train_policy`;
reward = agreement with a careful one-token-per-step decode minus ``cost`` x network steps per
token), save/load.

What it simplifies. Toy scale; the model is a full-attention masked-diffusion model decoded semi-
autoregressively (the paper's is a block-diffusion model with a KV cache); the attribute
classifier is a fixed per-token likelihood, not a trained classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig

PAPER = records.Paper(title="CtrlDiff: Boosting Large Diffusion Language Models with Dynamic Block Prediction and Controllable Generation",
                      year=2025, arxiv="2505.14455")


@dataclass
class CtrlDiffConfig(CanvasDecoderConfig):
    """Semi-autoregressive decoding with policy-chosen block lengths and classifier guidance."""

    block_sizes: tuple[int, ...] = (2, 4, 8)
    """The block lengths the policy chooses from."""
    steps_per_block: int = 2
    """Denoising steps per block (larger blocks: fewer steps per token)."""
    policy_path: str | None = None
    """A policy trained with genloom.plugins.ctrldiff.policy.train_policy (.safetensors); None: block_length (or the first size) always."""
    gamma: float = 0.0
    """Guidance strength: p(x0|xt) * p(y|x0)^gamma; 0 is unguided, exactly."""
    attribute_tokens: str = ""
    """The attribute y: text whose tokens the classifier favours (empty: no classifier)."""
    attribute_strength: float = 0.9
    """p(y | x0^i = v) for a token v of the attribute (1 - this for the others)."""

    def __post_init__(self):
        super().__post_init__()
        self.block_sizes = tuple(self.block_sizes)
        if not self.block_sizes or any(b < 1 for b in self.block_sizes):
            raise ValueError(f"block_sizes must be sizes >= 1, got {self.block_sizes}")
        if self.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be at least 1, got {self.steps_per_block}")
        if not 0.0 < self.attribute_strength < 1.0:
            raise ValueError(f"attribute_strength must be in (0, 1), got {self.attribute_strength}")
        if self.gamma != 0 and not self.attribute_tokens:
            raise ValueError("gamma != 0 needs attribute_tokens (the attribute the classifier scores)")


@hookimpl
def genloom_decoders():
    return [records.decoder("ctrldiff", "genloom.plugins.ctrldiff.decoder:build", CtrlDiffConfig,
                            "Blocks whose lengths a trained policy picks, with discrete classifier guidance p(x0|xt) p(y|x0)^gamma.", PAPER)]
