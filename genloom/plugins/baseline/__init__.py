"""Baseline components that are no paper's contribution.

Byte-level and BPE tokenizers, a decoder-only transformer (RMSNorm, rotary positions, SwiGLU,
grouped-query attention, KV cache; the Llama layout, so Hugging Face Llama checkpoints convert
by renaming), an encoder-decoder transformer for source-conditioned data, the LM head, the
next-token objective, sampling/greedy/beam decoders, the usual logits processors, embedded data
sets and a few Lightning callbacks. They register through the
same hooks as every other plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

from genloom.core import hookimpl, records
from typing import Annotated
from genloom.core.constraints import AnyFloat, Fraction, Interval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Seed

_P = "genloom.plugins.baseline"


# -- tokenizers ------------------------------------------------------------------------------
@dataclass
class BytesConfig:
    """Byte-level tokenizer: ids 0-255 are bytes; 256 is end-of-sequence."""

    add_eos: bool = True
    """Append the end-of-sequence id after each document."""


@dataclass
class BpeConfig:
    """Byte-level BPE trained with Hugging Face ``tokenizers`` on the data set's training split."""

    vocab_size: PositiveInt = 1024
    """Size of the trained vocabulary (including the end-of-sequence token)."""
    min_frequency: PositiveInt = 2
    max_train_bytes: PositiveInt = 4_000_000
    """Train the merges on at most this many bytes of the training split."""
    add_eos: bool = True

    def __post_init__(self):
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size must be at least 260 (256 bytes + specials), got {self.vocab_size}")


# -- backbone / head / objective ----------------------------------------------------------------
@dataclass
class TransformerConfig:
    """Decoder-only transformer in the Llama layout."""

    d_model: PositiveInt = 256
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 4
    n_heads: PositiveInt = 4
    n_kv_heads: PositiveInt | None = None
    """Key/value heads for grouped-query attention (None: n_heads, i.e. multi-head)."""
    ffn_hidden: PositiveInt | None = None
    """SwiGLU hidden width (None: 8/3 d_model rounded up to a multiple of 32)."""
    rope: bool = True
    """Rotary position embeddings; False gives a position-free (permutation-equivariant) encoder."""
    rope_theta: PositiveFloat = 10000.0
    norm_eps: PositiveFloat = 1e-5
    dropout: Fraction = 0.0
    final_norm: bool = True
    """RMSNorm after the last block (Llama's model.norm)."""
    max_positions: PositiveInt | None = None
    """Positions the model may attend to (prompt + generated tokens); generation refuses to go past
    it. None: no limit (rotary positions extrapolate, quality permitting). ``genloom import hf`` sets
    it from max_position_embeddings."""
    kv_source: list[NonNegativeInt] | None = None
    """Cross-layer key/value sharing: entry i is the layer whose keys/values layer i attends with
    (itself, or an earlier layer that uses its own). A reading layer has no key/value projections
    and its cache holds nothing of its own. None: every layer uses its own."""

    def __post_init__(self):
        if self.kv_source is not None:
            src = list(self.kv_source)
            if len(src) != self.n_layers:
                raise ValueError(f"kv_source must name one source layer per layer (n_layers = {self.n_layers}), got {len(src)} entries")
            for i, j in enumerate(src):
                if not (j <= i and src[j] == j):
                    raise ValueError(f"kv_source[{i}] = {j}: a layer reads itself or an earlier layer that uses its own keys/values")
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"max_positions must be at least 1 (or null), got {self.max_positions}")
        kv = self.n_kv_heads or self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)
        if self.max_positions is not None:
            ctx.set("max_positions", self.max_positions)


@dataclass
class EncoderDecoderConfig:
    """Encoder-decoder transformer over the prefix-LM layout: an encoder reads the source block
    bidirectionally, a causal decoder with cross-attention reads the target (docs/seq2seq.md). Needs
    source-conditioned data (it reads ``ctx.source_length``)."""

    d_model: PositiveInt = 256
    """Model width; published to later components as ``ctx.d_model``."""
    encoder_layers: PositiveInt = 2
    """Bidirectional layers over the source block (run once per request)."""
    decoder_layers: PositiveInt = 2
    """Causal layers over the target, each with cross-attention to the encoder output."""
    n_heads: PositiveInt = 4
    n_kv_heads: PositiveInt | None = None
    """Key/value heads for grouped-query attention, self- and cross-attention (None: n_heads)."""
    ffn_hidden: PositiveInt | None = None
    """SwiGLU hidden width (None: 8/3 d_model rounded up to a multiple of 32)."""
    rope: bool = True
    """Rotary position embeddings in the encoder and in the decoder's self-attention."""
    rope_theta: PositiveFloat = 10000.0
    norm_eps: PositiveFloat = 1e-5
    dropout: Fraction = 0.0

    def __post_init__(self):
        kv = self.n_kv_heads or self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@dataclass
class LmHeadConfig:
    """Token embedding in, logits out."""

    tie_weights: bool = True
    """Share the embedding matrix with the output projection."""
    init_std: PositiveFloat = 0.02


@dataclass
class NextTokenConfig:
    """Next-token prediction (causal language modelling)."""

    label_smoothing: Probability = 0.0


# -- KV-cache policies (the cache_policy kind) ---------------------------------------------------
@dataclass
class CachePolicyConfig:
    """Budget fields every cache policy shares (both None: unlimited)."""

    budget: PositiveInt | None = None
    """Tokens each layer may hold per sequence (the tokens of the latest advance always stay)."""
    budget_bytes: PositiveInt | None = None
    """Bytes the keys/values of one sequence may take, all layers together (turned into tokens per layer)."""
    storage: Literal["model", "bfloat16", "float16", "float8"] = "model"
    """The dtype the cache stores keys/values in ("model": the model's, exact; a narrower one holds each
    token in fewer bytes, read back in the model's dtype; float8 is e4m3)."""


@dataclass
class WindowPolicyConfig(CachePolicyConfig):
    """Sliding window with attention sinks: the first ``sinks`` tokens and the most recent ones."""

    sinks: NonNegativeInt = 4
    """How many of the earliest held tokens always stay (the attention sinks)."""


@dataclass
class HeavyHitterPolicyConfig(CachePolicyConfig):
    """H2O (arXiv 2306.14048): the recent window plus the heavy hitters, the entries with the largest
    attention mass accumulated over every query so far (summed over heads)."""

    recent_fraction: Probability = 0.5
    """Share of the room kept for the most recent tokens (the rest goes to heavy hitters; the paper splits half and half)."""
    sinks: NonNegativeInt = 0
    """How many of the earliest held tokens always stay (attention sinks), besides the heavy hitters."""
    decay: Probability = 1.0
    """Factor on the accumulated mass at every advance before this advance's is added (1: the plain
    sum of H2O; 0: only the latest queries' attention counts)."""


@dataclass
class SnapKVPolicyConfig(CachePolicyConfig):
    """SnapKV (arXiv 2404.14469): the last ``window`` queries vote on the earlier entries (attention
    probabilities pooled over ``kernel`` neighbours per head, summed over heads); the window and the
    best-voted entries stay."""

    window: PositiveInt = 32
    """Observation window: how many of the latest queries vote, and how many of the latest tokens always stay."""
    kernel: PositiveInt = 7
    """Pooling width over neighbouring entries (1: no pooling), so that a kept entry keeps its context."""
    pooling: Literal["max", "avg"] = "max"
    """How the votes of neighbouring entries are pooled."""
    sinks: NonNegativeInt = 0
    """How many of the earliest held tokens always stay (attention sinks)."""


# -- decoders ---------------------------------------------------------------------------------
@dataclass
class SamplingConfig:
    """Ancestral sampling from the head's distribution (after the processors)."""


@dataclass
class GreedyConfig:
    """Take the most likely token at each step."""


@dataclass
class BeamConfig:
    """Beam search over the model's log-probabilities (the processors act on the log-probabilities,
    as in transformers); a finished hypothesis scores ``sum log p / generated_length**length_penalty``."""

    num_beams: PositiveInt = 4
    length_penalty: AnyFloat = 1.0
    """Hypothesis score = log-prob / length**length_penalty (length counts generated tokens, EOS included)."""
    early_stopping: bool | Literal["never"] = False
    """False: stop once the num_beams-th best finished hypothesis scores at least what the best live
    beam would score at its current length (transformers' default heuristic); True: stop as soon as
    num_beams hypotheses have finished; 'never': stop only when no live beam can reach the
    num_beams-th best finished score within max_new_tokens (an exact bound)."""
    num_return_sequences: PositiveInt = 1
    """Hypotheses returned per prompt, best first (at most num_beams)."""

    def __post_init__(self):
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences must be between 1 and num_beams ({self.num_beams}), got {self.num_return_sequences}")


# -- processors ------------------------------------------------------------------------------
@dataclass
class TemperatureConfig:
    temperature: PositiveFloat = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use the greedy decoder for temperature 0)")


@dataclass
class TopKConfig:
    k: PositiveInt = 50
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most likely tokens."""


@dataclass
class TopPConfig:
    p: Annotated[float, Interval(gt=0, le=1)] = 0.9
    """Keep the smallest set of most likely tokens whose mass reaches p (1.0 keeps everything)."""
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most likely tokens."""


@dataclass
class MinPConfig:
    p: Probability = 0.05
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most likely tokens."""


@dataclass
class TypicalConfig:
    """Locally typical sampling ("Locally Typical Sampling", 2023)."""

    p: Annotated[float, Interval(gt=0, le=1)] = 0.9
    """Mass of the kept set, chosen by closeness of each token's surprisal to the entropy (1.0 keeps everything)."""
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most typical tokens."""


@dataclass
class EpsilonConfig:
    """Epsilon sampling ("Truncation Sampling as Language Model Desmoothing", 2022)."""

    epsilon: Annotated[float, Interval(gt=0, lt=1)] = 3e-4
    """Drop tokens whose probability is below epsilon."""
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most likely tokens."""


@dataclass
class EtaConfig:
    """Eta sampling ("Truncation Sampling as Language Model Desmoothing", 2022)."""

    epsilon: Annotated[float, Interval(gt=0, lt=1)] = 3e-4
    """Drop tokens whose probability is below min(epsilon, sqrt(epsilon) * exp(-entropy))."""
    min_tokens_to_keep: PositiveInt = 1
    """Keep at least this many of the most likely tokens."""


@dataclass
class NoRepeatNGramConfig:
    n: PositiveInt = 3
    """Forbid a token that would repeat an n-gram of prompt + generated text."""


@dataclass
class RepetitionPenaltyConfig:
    penalty: PositiveFloat = 1.2
    """Divide positive (multiply negative) logits of tokens already in the sequence by this."""


# -- data ---------------------------------------------------------------------------------------
@dataclass
class TextDataConfig:
    seq_len: PositiveInt = 256
    """Tokens per training window (the model sees seq_len inputs and seq_len targets)."""
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt | None = None
    num_workers: NonNegativeInt = 0


@dataclass
class PyStdlibConfig(TextDataConfig):
    """The Python standard library's own ``.py`` files as bytes, split by file."""

    max_train_bytes: PositiveInt = 8_000_000
    """Use at most this many bytes of training files (chosen deterministically)."""
    max_eval_bytes: PositiveInt = 400_000
    val_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05

    def bind(self, ctx):
        ctx.set("seq_len", self.seq_len)


@dataclass
class TextFilesConfig(TextDataConfig):
    """Your own local text files or folders (recursively), split by file."""

    paths: list[str] = field(default_factory=list)
    glob: str = "*"
    val_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05
    max_train_bytes: PositiveInt | None = None

    def __post_init__(self):
        if not self.paths:
            raise ValueError("paths must list at least one file or folder")

    def bind(self, ctx):
        ctx.set("seq_len", self.seq_len)


SEQ2SEQ_TASKS = ("reverse", "sort", "letter-set", "letter-set-shuffled", "addition", "words-to-digits", "digits-to-words", "docstring-signature")


@dataclass
class Seq2SeqConfig:
    """(source, target) pairs: synthetic tasks with exact answers, or docstring -> signature mined
    from the standard library; the model conditions on the source (docs/plugin-guide.md)."""

    task: Literal["reverse", "sort", "letter-set", "letter-set-shuffled", "addition", "words-to-digits", "digits-to-words", "docstring-signature"] = "reverse"
    """reverse / sort a string of letters; its set of distinct letters (letter-set: in order of first appearance; letter-set-shuffled: in
    a random order drawn per pair, so no order can be read from the source); a+b -> the sum; number words <-> digits; a standard-library
    function's docstring summary -> its signature (split by source file)."""
    source_length: PositiveInt = 24
    """Tokens of the source block (shorter sources are left-padded); published as ``ctx.source_length``."""
    target_length: Annotated[int, Interval(ge=2)] = 25
    """Tokens of the target including its end-of-sequence id; published as ``ctx.target_length``."""
    min_length: PositiveInt = 3
    """Shortest letter string (reverse, sort)."""
    max_length: PositiveInt = 12
    """Longest letter string (reverse, sort)."""
    max_digits: Annotated[int, Interval(ge=1, le=6)] = 3
    """Numbers below 10**max_digits (addition, number words; at most 6)."""
    train_size: PositiveInt = 20000
    """Training pairs (fewer when the task has fewer distinct sources)."""
    eval_size: PositiveInt = 500
    """Pairs in each of the validation and test splits."""
    seed: Seed = 0
    """Seed of the synthetic pairs (the splits depend on the source text only)."""
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.05
    test_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.05
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt | None = None
    num_workers: NonNegativeInt = 0

    def __post_init__(self):
        if self.source_length < 1 or self.target_length < 2:
            raise ValueError(f"source_length must be >= 1 and target_length >= 2, got {self.source_length}, {self.target_length}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"min_length must be in 1 .. max_length ({self.max_length}), got {self.min_length}")
        if not 1 <= self.max_digits <= 6:
            raise ValueError(f"max_digits must be in 1 .. 6, got {self.max_digits}")
        if self.train_size < 1 or self.eval_size < 1:
            raise ValueError(f"train_size and eval_size must be >= 1, got {self.train_size}, {self.eval_size}")
        if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be > 0 with a sum below 1, got {self.val_fraction}, {self.test_fraction}")

    def bind(self, ctx):
        ctx.set("source_length", self.source_length)
        ctx.set("target_length", self.target_length)


# -- callbacks -----------------------------------------------------------------------------------
@dataclass
class EarlyStoppingConfig:
    monitor: str = "val/loss"
    patience: NonNegativeInt = 3
    min_delta: NonNegativeFloat = 0.0


@dataclass
class SampleCallbackConfig:
    """Print a generated sample at each validation."""

    prompt: str = ""
    max_new_tokens: PositiveInt = 64


def _toolkit_configs(*names: str):
    """Config classes of the torch-free forecasting toolkit config, or None while it is not present."""
    try:
        mod = importlib.import_module("genloom.toolkit.forecasting_config")
    except ImportError:
        return None
    return tuple(getattr(mod, n) for n in names)


def _optional(module: str, *names: str):
    """Config classes from a sibling module, or None while that module is not present."""
    try:
        mod = importlib.import_module(f"{_P}.{module}")
    except ImportError:
        return None
    return tuple(getattr(mod, n) for n in names)


@hookimpl
def genloom_component_kinds():
    return [records.ComponentKind("cache_policy", "What a KV cache keeps, evicts, retrieves or compresses, under a budget", config_key="cache_policy")]


_H2O = records.Paper("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models", 2023, arxiv="2306.14048")
_SNAPKV = records.Paper("SnapKV: LLM Knows What You are Looking for Before Generation", 2024, arxiv="2404.14469")


@hookimpl
def genloom_components():
    policy = lambda name, factory, config, summary, paper=None: records.Component(  # noqa: E731
        kind="cache_policy", name=name, factory=f"{_P}.cache_policies:{factory}", config=config, summary=summary, paper=paper)
    return [
        policy("full", "build_full", records.NoConfig, "Keep and read every entry (the plain KV cache)."),
        policy("window", "build_window", WindowPolicyConfig, "Sliding window with attention sinks: the earliest and the most recent tokens, within the budget."),
        policy("heavy-hitter", "build_heavy_hitter", HeavyHitterPolicyConfig,
               "H2O: the most recent tokens plus those with the largest accumulated attention mass, within the budget.", _H2O),
        policy("snapkv", "build_snapkv", SnapKVPolicyConfig,
               "SnapKV: the latest queries' pooled attention votes pick the earlier tokens that stay, within the budget.", _SNAPKV),
    ]


@hookimpl
def genloom_tokenizers():
    return [
        records.tokenizer("bytes", f"{_P}.tokenizers:build_bytes", BytesConfig, "Byte-level tokenizer (exact round trip of any bytes)."),
        records.tokenizer("bpe", f"{_P}.tokenizers:build_bpe", BpeConfig, "Byte-level BPE trained with Hugging Face tokenizers on the training split."),
    ] + _time_step_tokenizer() + _point_set_tokenizer()


def _amortized_configs(*names: str):
    """Config classes of the torch-free amortised-inference toolkit config, or None while it is not present."""
    try:
        mod = importlib.import_module("genloom.toolkit.amortized_config")
    except ImportError:
        return None
    return tuple(getattr(mod, n) for n in names)


def _point_set_tokenizer():
    cfgs = _amortized_configs("PointSetTokenizerConfig")
    if not cfgs:
        return []
    return [records.tokenizer("point-set", "genloom.toolkit.amortized:build_point_set_tokenizer", cfgs[0],
                              "Real-valued point sets (in-context / amortised inference tasks) passed through as they are.")]


def _time_step_tokenizer():
    cfgs = _toolkit_configs("TimeStepTokenizerConfig")
    if not cfgs:
        return []
    return [records.tokenizer("time-step", "genloom.toolkit.forecasting_heads:build_time_step_tokenizer", cfgs[0],
                              "One token per time step (its V values), optional per-window normalisation; the last horizon outputs are the forecast.")] + _patch_tokenizer()


def _patch_tokenizer():
    cfgs = _toolkit_configs("PatchTokenizerConfig")
    if not cfgs:
        return []
    return [records.tokenizer("patch", "genloom.toolkit.forecasting_patches:build_patch_tokenizer", cfgs[0],
                              "Channel-independent patch tokens: each variate's window in non-overlapping patches, normalised per window.")]


@hookimpl
def genloom_backbones():
    return [
        records.backbone("transformer", f"{_P}.transformer:build", TransformerConfig, "Decoder-only transformer: RMSNorm, RoPE, SwiGLU, GQA, KV cache."),
        records.backbone("encoder-decoder", f"{_P}.encoder_decoder:build", EncoderDecoderConfig,
                         "Encoder over the source block, causal decoder with cross-attention (memory computed once per request)."),
    ]


@hookimpl
def genloom_heads():
    out = [records.head("lm", f"{_P}.heads:build_lm", LmHeadConfig, "Token embedding and (optionally tied) output projection with a categorical distribution.")]
    cfgs = _optional("series_config", "ForecastHeadConfig")
    if cfgs:
        out.append(records.head("forecast", f"{_P}.forecast:build_forecast_head", cfgs[0], "Projects each variate token's hidden state to the forecast horizon."))
    probabilistic = _toolkit_configs("GaussianHeadConfig", "MixtureHeadConfig", "QuantileHeadConfig")
    if probabilistic:
        heads = "genloom.toolkit.forecasting_heads"
        out.append(records.head("gaussian", f"{heads}:build_gaussian", probabilistic[0], "Gaussian forecast per value (mean and scale), trained by its NLL."))
        out.append(records.head("mixture", f"{heads}:build_mixture", probabilistic[1], "Mixture of K Gaussians per forecast value, trained by its NLL."))
        out.append(records.head("quantile", f"{heads}:build_quantile", probabilistic[2], "Non-crossing forecast quantiles, trained by the pinball loss."))
    patch_head = _toolkit_configs("PatchValueHeadConfig")
    if patch_head:
        out.append(records.head("patch-values", "genloom.toolkit.forecasting_patches:build_patch_value_head", patch_head[0],
                                "Identity head of backbones that embed and project patch values themselves (point forecast, MSE)."))
    return out


@hookimpl
def genloom_objectives():
    out = [records.objective("next-token", f"{_P}.objectives:build_next_token", NextTokenConfig, "Next-token cross-entropy with perplexity and bits-per-byte.")]
    cfgs = _optional("series_config", "MseObjectiveConfig")
    if cfgs:
        out.append(records.objective("mse", f"{_P}.forecast:build_mse_objective", cfgs[0], "Mean squared forecasting error (MAE reported)."))
    nll = _toolkit_configs("NllObjectiveConfig")
    if nll:
        out.append(records.objective("nll", "genloom.toolkit.forecasting_heads:build_nll_objective", nll[0],
                                     "A probabilistic forecasting head's own loss (NLL or pinball); MSE/MAE of its mean reported."))
    next_patch = _toolkit_configs("NextPatchObjectiveConfig")
    if next_patch:
        out.append(records.objective("next-patch", "genloom.toolkit.forecasting_patches:build_next_patch_objective", next_patch[0],
                                     "Generative forecasting: teacher-forced next-patch MSE, autoregressive rollout to any horizon."))
    return out


@hookimpl
def genloom_decoders():
    return [
        records.decoder("sampling", f"{_P}.decoders:build_sampling", SamplingConfig, "Ancestral sampling, one token per step, with a KV cache."),
        records.decoder("greedy", f"{_P}.decoders:build_greedy", GreedyConfig, "Most likely token at each step."),
        records.decoder("beam", f"{_P}.decoders:build_beam", BeamConfig, "Beam search (reorders the incremental state across the batch)."),
    ]


_TYPICAL = records.Paper("Locally Typical Sampling", 2023, arxiv="2202.00666")
_TRUNCATION = records.Paper("Truncation Sampling as Language Model Desmoothing", 2022, arxiv="2210.15191")


@hookimpl
def genloom_logits_processors():
    return [
        records.processor("temperature", f"{_P}.processors:build_temperature", TemperatureConfig, "Divide logits by a temperature."),
        records.processor("top-k", f"{_P}.processors:build_top_k", TopKConfig, "Keep the k most likely tokens."),
        records.processor("top-p", f"{_P}.processors:build_top_p", TopPConfig, "Nucleus: keep the smallest set with probability >= p."),
        records.processor("min-p", f"{_P}.processors:build_min_p", MinPConfig, "Keep tokens with probability >= p x the top probability."),
        records.processor("repetition-penalty", f"{_P}.processors:build_repetition_penalty", RepetitionPenaltyConfig, "Penalise tokens already present in the sequence."),
        records.processor("no-repeat-ngram", f"{_P}.processors:build_no_repeat_ngram", NoRepeatNGramConfig, "Forbid tokens that would repeat an n-gram of the sequence."),
        records.processor("typical", f"{_P}.processors:build_typical", TypicalConfig, "Locally typical sampling: keep tokens whose surprisal is close to the entropy.", paper=_TYPICAL),
        records.processor("epsilon", f"{_P}.processors:build_epsilon", EpsilonConfig, "Epsilon sampling: drop tokens with probability below epsilon.", paper=_TRUNCATION),
        records.processor("eta", f"{_P}.processors:build_eta", EtaConfig, "Eta sampling: an entropy-dependent probability cut-off.", paper=_TRUNCATION),
    ]


@hookimpl
def genloom_datasets():
    out = [
        records.dataset("pystdlib", f"{_P}.data:build_pystdlib", PyStdlibConfig, "The Python standard library's source files as bytes (split by file)."),
        records.dataset("text-files", f"{_P}.data:build_text_files", TextFilesConfig, "Local text files or folders (split by file)."),
        records.dataset("seq2seq", f"{_P}.seq2seq:build_seq2seq", Seq2SeqConfig, "(source, target) pairs: reverse, sort, addition, number words, docstring -> signature."),
    ]
    images = _optional("images_config", "DigitsConfig", "SampleImagesConfig")
    if images:
        out.append(records.dataset("digits", f"{_P}.images:build_digits", images[0], "scikit-learn's 8x8 handwritten digits with labels."))
        out.append(records.dataset("sample-images", f"{_P}.images:build_sample_images", images[1], "scikit-learn's bundled photographs, as patches."))
    series = _optional("series_config", "MacrodataConfig", "SunspotsConfig", "StatsmodelsSeriesConfig")
    if series:
        out.append(records.dataset("statsmodels-series", f"{_P}.series:build_statsmodels_series", series[2], "Any statsmodels data set's columns as a (multivariate) series."))
        out.append(records.dataset("macrodata", f"{_P}.series:build_macrodata", series[0], "statsmodels' US macroeconomic quarterly series (multivariate)."))
        out.append(records.dataset("sunspots", f"{_P}.series:build_sunspots", series[1], "statsmodels' yearly sunspot numbers (univariate)."))
    named = _optional("series_config", "Co2Config", "ElninoConfig", "NileConfig", "ElecEquipConfig", "DanishDataConfig")
    if named:
        out.append(records.dataset("co2", f"{_P}.series:build_co2", named[0], "Mauna Loa CO2, monthly 1958-2001 (univariate, season 12)."))
        out.append(records.dataset("elnino", f"{_P}.series:build_elnino", named[1], "El Nino sea-surface temperature, monthly 1950-2010 (univariate, season 12)."))
        out.append(records.dataset("nile", f"{_P}.series:build_nile", named[2], "Nile flow volume, yearly 1871-1970 (univariate)."))
        out.append(records.dataset("elec-equip", f"{_P}.series:build_elec_equip", named[3], "Euro-area electrical equipment orders, monthly 1995-2016 (univariate, season 12)."))
        out.append(records.dataset("danish-data", f"{_P}.series:build_danish_data", named[4], "Danish money demand, quarterly 1974-1987 (5 variates, season 4)."))
    amortized = _amortized_configs("GpPriorConfig")
    if amortized:
        out.append(records.dataset("gp-prior", "genloom.toolkit.amortized:build_gp_prior", amortized[0],
                                   "Synthetic regression tasks from a Gaussian-process prior (exact posterior as reference)."))
    return out


@hookimpl
def genloom_callbacks():
    return [
        records.callback("early-stopping", f"{_P}.callbacks:build_early_stopping", EarlyStoppingConfig, "Stop when a validation metric stops improving."),
        records.callback("sample", f"{_P}.callbacks:build_sample", SampleCallbackConfig, "Print a generated sample at each validation."),
    ]


@dataclass
class IdsConfig:
    """Token ids as they are (for imported checkpoints without a tokenizer file, and synthetic data)."""

    vocab_size: PositiveInt = 256
    eos_id: NonNegativeInt | list[NonNegativeInt] | None = None
    """End-of-sequence id, or a list of them (generation stops at any; e.g. Llama 3's end-of-turn)."""


@hookimpl(specname="genloom_tokenizers")
def _ids_tokenizer():
    return [records.tokenizer("ids", f"{_P}.tokenizers:build_ids", IdsConfig, "Identity tokenizer over a fixed vocabulary of ids.")]
