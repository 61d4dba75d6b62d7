"""Config of the probabilistic forecasting heads and the ``nll`` objective (torch-free).

The heads and the objective live in :mod:`genloom.toolkit.forecasting_heads`; the baseline plugin
registers them (heads ``gaussian``, ``mixture``, ``quantile``; objective ``nll``) so every
forecaster can swap its point head for a distribution without code of its own.

Every head embeds a token's ``lookback`` features into ``d_model`` (like the point ``forecast``
head) and maps a hidden state to the parameters of a distribution over each of the ``horizon``
future values of its token.

:class:`EncoderDecoderForecasterConfig` is the shared validation and binding of the encoder-decoder
forecasting Transformers' backbone configs (Autoformer, Informer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genloom.core.constraints import PositiveFloat, PositiveInt, Probability


@dataclass
class TimeStepTokenizerConfig:
    """One token per time step: the V values measured at that step (the usual Transformer view of a series).

    Binding publishes ``token_features`` and ``token_outputs`` (both V), so a ``forecast`` or
    probabilistic head embeds V values per token and predicts V values per token; the tokenizer's
    decode keeps the last ``horizon`` output tokens as the forecast.
    """

    instance_norm: bool = True
    """Normalise each variate of each window by its own lookback mean/std and undo it on the forecast."""
    eps: PositiveFloat = 1e-5
    """Added to the variance before the square root (instance_norm only)."""
    horizon: PositiveInt | None = None
    """Output tokens kept as the forecast (None: the data set's horizon)."""

    def __post_init__(self):
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        if "num_variates" in ctx:  # without a data set the head's lookback/horizon fields must say V
            ctx.set("token_features", ctx.num_variates)
            ctx.set("token_outputs", ctx.num_variates)


class EncoderDecoderForecasterConfig:
    """Base of encoder-decoder forecaster configs (a dataclass subclass declares the fields).

    The subclass declares ``d_model``, ``n_heads``, ``factor`` (> 0), ``label_len`` (None: half
    the lookback), ``horizon`` (None: the data set's horizon), ``dropout`` in [0, 1) and the
    integer fields named in ``positive_fields`` (each at least 1). Binding fills ``horizon`` and
    ``label_len``, checks that ``label_len`` fits in the lookback and publishes ``ctx.d_model``.
    """

    positive_fields: tuple[str, ...] = ("d_model", "n_heads", "encoder_layers", "decoder_layers", "ffn_hidden")

    def __post_init__(self):
        for name in self.positive_fields:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if self.label_len is not None and self.label_len < 0:
            raise ValueError(f"label_len must be >= 0, got {self.label_len}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        if self.label_len is None:
            self.label_len = ctx.lookback // 2
        if self.label_len > ctx.get("lookback", self.label_len):
            raise ValueError(f"label_len ({self.label_len}) cannot exceed the lookback ({ctx.lookback})")
        ctx.set("d_model", self.d_model)


@dataclass
class ProbabilisticHeadConfig:
    """Fields every probabilistic forecasting head shares."""

    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's d_model from the build context)."""
    lookback: PositiveInt | None = None
    """Features per input token (None: the tokenizer's ``token_features``, else the data set's lookback)."""
    horizon: PositiveInt | None = None
    """Forecast values per token (None: the tokenizer's ``token_outputs``, else the data set's horizon)."""
    min_scale: PositiveFloat = 1e-3
    """Lower bound added to every predicted scale (keeps the likelihood finite)."""

    def __post_init__(self):
        for name in ("d_model", "lookback", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.min_scale <= 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale}")

    def bind(self, ctx) -> None:
        if self.d_model is None:
            self.d_model = ctx.d_model
        if self.lookback is None:
            self.lookback = ctx.get("token_features", None) or ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.get("token_outputs", None) or ctx.horizon


@dataclass
class GaussianHeadConfig(ProbabilisticHeadConfig):
    """A Gaussian N(mu, sigma^2) per forecast value; trained by its negative log-likelihood."""


@dataclass
class MixtureHeadConfig(ProbabilisticHeadConfig):
    """A mixture of ``components`` Gaussians per forecast value; trained by its negative log-likelihood."""

    components: PositiveInt = 3
    """Number of mixture components K."""

    def __post_init__(self):
        super().__post_init__()
        if self.components < 1:
            raise ValueError(f"components must be at least 1, got {self.components}")


@dataclass
class QuantileHeadConfig(ProbabilisticHeadConfig):
    """Non-crossing quantiles per forecast value; trained by the pinball (quantile) loss."""

    levels: list[Probability] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9])
    """Quantile levels in (0, 1), strictly increasing."""

    def __post_init__(self):
        super().__post_init__()
        if not self.levels:
            raise ValueError("levels must name at least one quantile level")
        if any(not 0.0 < q < 1.0 for q in self.levels):
            raise ValueError(f"levels must lie in (0, 1), got {self.levels}")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])):
            raise ValueError(f"levels must be strictly increasing, got {self.levels}")


@dataclass
class NllObjectiveConfig:
    """The probabilistic head's own loss (negative log-likelihood or pinball) of the target window."""

    pattern: Literal["full", "causal"] = "full"
    """Attention pattern over the tokens: variate tokens see each other ('full'); 'causal' for causal mixers."""


@dataclass
class PatchTokenizerConfig:
    """Channel-independent patch tokens: each variate's window cut into non-overlapping patches.

    A window (B, lookback, V) becomes tokens (B * V, lookback / patch_len, patch_len): every
    variate is its own sequence (the channel-independence of PatchTST and its successors).
    Binding publishes ``patch_len`` and ``token_features`` = ``token_outputs`` = ``patch_len``.
    """

    patch_len: PositiveInt = 4
    """Steps per patch (the lookback must be a multiple of it)."""
    instance_norm: bool = True
    """Normalise each variate of each window by its own lookback mean/std and undo it on the forecast."""
    eps: PositiveFloat = 1e-5
    """Added to the variance before the square root (instance_norm only)."""
    horizon: PositiveInt | None = None
    """Forecast steps kept by ``decode`` (None: the data set's horizon)."""

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        lookback = ctx.get("lookback", None)
        if lookback is not None and lookback % self.patch_len:
            from genloom.core.errors import ConfigError

            raise ConfigError(f"patch_len ({self.patch_len}) must divide the data set's lookback ({lookback})", path="tokenizer.patch_len")
        ctx.set("patch_len", self.patch_len)
        ctx.set("token_features", self.patch_len)
        ctx.set("token_outputs", self.patch_len)


@dataclass
class PatchValueHeadConfig:
    """The identity head of backbones that embed and project patch values themselves."""


@dataclass
class NextPatchObjectiveConfig:
    """Generative forecasting by next-patch prediction: teacher-forced MSE, autoregressive rollout to any horizon."""

    target_only: bool = False
    """Score only the predictions of the target window's patches (False: every next patch of lookback + target)."""
