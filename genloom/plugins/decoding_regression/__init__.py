"""Decoding-based Regression (Song, Bahri et al., 2025).

What the paper does: a regression target is written as a short string of number tokens and a
causal sequence model, conditioned on the features, is trained on it with the ordinary
next-token cross-entropy; a prediction is made by decoding. Because the model outputs a whole
distribution over number strings it captures arbitrary (multi-modal, heavy-tailed) predictive
densities, and a point estimate is a statistic of decoded samples (mean or median). The paper
shows this is as accurate as a regression head on tabular tasks. One of its tokenisations is
IEEE-like and needs no normalisation of the targets: a sign token, an exponent token, then the
mantissa digits.

What this implementation does:

- tokenizer ``number``: y -> ``[sign, exponent, d_1, ..., d_K]`` (sign in {+, -}; exponent e in
  [-max_exponent, max_exponent] as one token; K mantissa digits, y ~ sign * d_1.d_2...d_K * 10^e,
  rounded to K significant digits, so the relative error is at most 0.5 * 10^-(K-1) inside the
  exponent range; smaller magnitudes become 0, larger ones are an error);
- head ``number-decoder``: embeds the features as a prefix token (``Linear(features, d_model)``)
  and the number tokens (an embedding table), and maps hidden states to logits over the number
  vocabulary; each position's logits are restricted to the tokens allowed there (sign, exponent,
  digit), so every decoded string is a valid number;
- backbone: the baseline causal ``transformer`` from the registry;
- objective ``number-ce``: the cross-entropy of the K + 2 number tokens given the features
  prefix; ``predict(model, x, num_samples)`` decodes samples by constrained ancestral sampling
  and returns their mean (``sample_numbers`` gives the samples themselves);
- data set ``diabetes``: scikit-learn's diabetes regression data (442 patients, 10 features,
  standardised with the training split's statistics; a seeded random 70/10/20 split).

What it simplifies: one tokenisation (the IEEE-like one; the paper also studies a normalised
base-B one), a tiny transformer instead of the paper's decoders on top of larger encoders, the
mean of 64 samples as the point estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(
    title="Decoding-based Regression",
    year=2025,
    arxiv="2501.19383",
)

_P = "genloom.plugins.decoding_regression"


@dataclass
class NumberTokenizerConfig:
    """Sign, exponent and mantissa-digit tokens for a real number."""

    mantissa_digits: int = 3
    """K: significant digits kept (relative error <= 0.5 * 10^-(K-1))."""
    max_exponent: int = 4
    """Exponents from -max_exponent to max_exponent are representable; smaller magnitudes become 0."""

    def __post_init__(self):
        if self.mantissa_digits < 1:
            raise ValueError(f"mantissa_digits must be at least 1, got {self.mantissa_digits}")
        if self.max_exponent < 0:
            raise ValueError(f"max_exponent must be >= 0, got {self.max_exponent}")

    def bind(self, ctx) -> None:
        ctx.set("number_length", self.mantissa_digits + 2)


@dataclass
class NumberDecoderHeadConfig:
    """Features as a prefix token, number tokens embedded; logits restricted to the tokens allowed at each position."""

    features: int | None = None
    """Number of input features (None: the data set's)."""
    d_model: int | None = None
    """Hidden width (None: the backbone's)."""

    def __post_init__(self):
        for name in ("features", "d_model"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def bind(self, ctx) -> None:
        if self.features is None:
            self.features = ctx.num_features
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class NumberCeConfig:
    """Next-token cross-entropy of the number tokens given the features."""

    num_samples: int = 64
    """Decoded samples averaged by ``predict`` for a point estimate."""

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")


@dataclass
class DiabetesConfig:
    """scikit-learn's diabetes regression data: 10 standardised features, disease progression after a year."""

    val_fraction: float = 0.1
    """Share of the patients used for validation."""
    test_fraction: float = 0.2
    """Share of the patients used for testing."""
    split_seed: int = 0
    """Seed of the random split."""
    batch_size: int = 64
    """Training samples per batch."""
    eval_batch_size: int | None = None
    """Samples per evaluation batch (None: batch_size)."""

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 0.5 or not 0.0 < self.test_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5) and test_fraction in (0, 0.5), got {self.val_fraction}, {self.test_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def bind(self, ctx) -> None:
        ctx.set("num_features", 10)


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("number", f"{_P}.tokenizer:build", NumberTokenizerConfig,
                              "A real number as sign, exponent and mantissa-digit tokens.", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("number-decoder", f"{_P}.model:build_head", NumberDecoderHeadConfig,
                         "Features prefix + number-token embedding; per-position constrained logits.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("number-ce", f"{_P}.model:build_objective", NumberCeConfig,
                              "Cross-entropy of the number tokens given the features; predictions by decoding.", PAPER)]


@hookimpl
def genloom_datasets():
    return [records.dataset("diabetes", f"{_P}.data:build", DiabetesConfig,
                            "scikit-learn's diabetes regression data (442 x 10 features, one target).", PAPER)]
