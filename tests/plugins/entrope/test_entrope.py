"""EntroPE: patch boundaries are exactly the steps where the frozen entropy model's conditional
entropy of the next value exceeds the threshold (and t = 0), the patches tile every window with no
gap or overlap, and the adaptive patch encoder gives one fixed-size vector per variable-length
patch that depends on that patch's steps only."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.entrope import EntropeConfig, EntropyPatchConfig
from genloom.plugins.entrope.model import AdaptivePatchEncoder
from genloom.plugins.entrope.tokenizer import EntropyPatchTokenizer, boundaries_from_entropy, entropy, patch_spans
from genloom.toolkit.forecasting_patches import fold_channels

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "entrope.yaml"
L = 24


def _series(n=400, v=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)[:, None]
    regime = (torch.arange(n) // 37 % 2).double()[:, None]  # alternating calm and noisy stretches
    return torch.sin(t / 4) + regime * torch.randn(n, v, generator=g, dtype=torch.float64) + 0.05 * torch.randn(n, v, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def tokenizer():
    tok = EntropyPatchTokenizer(EntropyPatchConfig(lookback=L, horizon=4, fit_steps=60, n_bins=16))
    tok.fit_values(_series())
    return tok


def _reference_entropies(tok, sequence):
    """H_t recomputed one prefix at a time: the model's distribution of step t given steps < t only."""
    bins = tok.bins(sequence[None])
    out = []
    with torch.no_grad():
        for t in range(sequence.shape[0]):
            prefix = torch.cat([bins[:, :t], torch.zeros_like(bins[:, :1])], dim=1)  # step t's own bin is a placeholder
            out.append(entropy(tok.model(prefix)[0, t]))
    return torch.stack(out)


def _check_boundaries(tok, flags_of):
    x = _series(n=L * 4, seed=3).reshape(4, L, 2)
    tokens, _ = tok.encode(x)
    flags = flags_of(tokens)
    sequences = fold_channels(tok.normalise(x)[0])
    for row in range(sequences.shape[0]):
        expected = _reference_entropies(tok, sequences[row]) > tok.threshold
        expected[0] = True
        if not torch.equal(flags[row].bool(), expected):
            return False
    return True


def test_boundaries_are_exactly_where_the_conditional_entropy_exceeds_the_threshold(tokenizer):
    assert _check_boundaries(tokenizer, lambda tokens: tokens[..., 1])
    x = _series(n=L * 4, seed=3).reshape(4, L, 2)
    flags = tokenizer.encode(x)[0][..., 1]
    assert 0 < flags[:, 1:].mean() < 1  # some steps start patches, some do not


def test_a_patcher_reading_the_entropy_one_step_late_is_caught(tokenizer):
    # broken variant: the boundary at t uses H_{t-1} (the entropy already seen), not the next step's
    def late(tokens):
        entropies = tokenizer.entropies(tokens[..., 0])
        return boundaries_from_entropy(torch.cat([entropies[:, :1], entropies[:, :-1]], dim=1), tokenizer.threshold)

    assert not _check_boundaries(tokenizer, late)


def tiles(spans, length) -> bool:
    """The spans cover 0..length-1 in order, each step exactly once, none empty."""
    covered = [s for start, end in spans for s in range(start, end)]
    return covered == list(range(length)) and all(end > start for start, end in spans)


def test_patches_tile_the_window_without_gaps_or_overlaps(tokenizer):
    tokens, _ = tokenizer.encode(_series(n=L * 4, seed=5).reshape(4, L, 2))
    for spans, values in zip(patch_spans(tokens[..., 1]), tokens[..., 0]):
        assert tiles(spans, L)
        assert torch.equal(torch.cat([values[s:e] for s, e in spans]), values)
        # broken variants: a span that stops one step short (a gap) or runs one step long (an overlap)
        assert not tiles([(s, e - 1) if i == 0 else (s, e) for i, (s, e) in enumerate(spans)], L)
        assert not tiles([(s, e + 1) if i == 0 else (s, e) for i, (s, e) in enumerate(spans)], L)


def test_the_adaptive_encoder_gives_one_fixed_size_vector_per_patch_from_its_own_steps():
    torch.manual_seed(0)
    encoder = AdaptivePatchEncoder(EntropeConfig(d_model=8, n_heads=2, lookback=12, horizon=4)).double()
    values = torch.randn(1, 12, dtype=torch.float64)
    flags = torch.zeros(1, 12, dtype=torch.float64)
    flags[0, [0, 2, 7, 8]] = 1  # patches of 2, 5, 1 and 4 steps
    patches, valid = encoder(values, flags)
    assert patches.shape == (1, 4, 8) and valid.all()
    changed = values.clone()
    changed[0, 7:] += 3.0  # only patches 2 and 3 change
    moved = encoder(changed, flags)[0]
    assert torch.equal(moved[0, :2], patches[0, :2])
    assert (moved[0, 2:] - patches[0, 2:]).abs().max() > 1e-3
    # the same values cut at other boundaries give other patch vectors
    other = flags.clone()
    other[0, 2] = 0
    assert encoder(values, other)[0].shape == (1, 3, 8)


def test_the_tokenizer_is_fitted_on_the_training_split_only_and_saved_with_the_run(tmp_path, tokenizer):
    from genloom.plugins.baseline.series import SeriesData
    from genloom.plugins.baseline.series_config import NileConfig

    values = _series(n=200, v=1).numpy()
    changed = values.copy()
    data = SeriesData(values, ["x"], NileConfig(), name="s", season=1)
    changed[data.borders["train"][1]:] *= 50
    a, b = (EntropyPatchTokenizer(EntropyPatchConfig(lookback=16, horizon=4, fit_steps=20)) for _ in range(2))
    a.fit(data)
    b.fit(SeriesData(changed, ["x"], NileConfig(), name="s", season=1))
    assert a.threshold == b.threshold
    tokenizer.save(tmp_path)
    other = EntropyPatchTokenizer(EntropyPatchConfig(lookback=L, horizon=4, n_bins=16))
    other.load(tmp_path)
    x = _series(n=L * 2, seed=7).reshape(2, L, 2)
    assert other.fitted and torch.equal(other.encode(x)[0], tokenizer.encode(x)[0])


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(CONFIG, ["tokenizer.fit_steps=20"])
    x, y = built.data.load("test").tensors()
    with torch.no_grad():
        assert built.model.objective.predict(built.model, x[:3]).shape == y[:3].shape
