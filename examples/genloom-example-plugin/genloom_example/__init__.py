"""genloom plugin `example`.

What the paper does, what this implementation does and what it simplifies at toy scale.
The hook implementations and config dataclasses live here; this module imports no torch.
"""

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Gated causal convolution (an example, not a paper)", year=None, arxiv=None)


@dataclass
class ExampleBackboneConfig:
    """A gated causal convolution mixer (replace with your technique)."""

    d_model: int = 32
    """Model width, published to later components as ctx.d_model."""
    kernel_size: int = 3
    """Width of the causal depthwise convolution."""

    def __post_init__(self):
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@dataclass
class ExampleDecoderConfig:
    """Sample from the top-k tokens only."""

    k: int = 5


@hookimpl
def genloom_backbones():
    return [records.backbone("example-conv", "genloom_example.model:build_backbone", ExampleBackboneConfig, "Gated causal convolution backbone.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("example-topk", "genloom_example.model:build_decoder", ExampleDecoderConfig, "Top-k sampling decoder.", PAPER)]
