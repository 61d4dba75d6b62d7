"""AR-Diffusion (text): at every decoding step the token timesteps are non-decreasing in position
and all reach 0 at the last step; left tokens move first; equal speeds are synchronous diffusion."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.data import SourceTargetPairs
from genloom.core.generation import Generator
from genloom.plugins.ar_diffusion_text.timesteps import decoding_table, token_timesteps
from genloom.testing import check_objective, tiny_model, train_briefly
from genloom.toolkit import embedding_diffusion as ed

S, T = 3, 4


def _tiny(anchor=2.0, equal_speeds=False):
    base = {
        "data": {"name": "seq2seq", "source_length": S, "target_length": T},
        "tokenizer": {"name": "ids", "vocab_size": 7, "eos_id": 0},
        "head": {"name": "embedding-diffusion", "embed_dim": 4},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "ar-diffusion", "steps": 50, "anchor": anchor, "equal_speeds": equal_speeds},
        "decoder": {"name": "ar-diffusion", "steps": 12},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double().eval()
    return b


def speed_line_holds(table: torch.Tensor, steps: int) -> bool:
    """Every row non-decreasing in position, every token's timestep non-increasing over the steps,
    the first row all-T, the last all-0, and some row strictly increasing somewhere (asynchronous)."""
    return (bool((table[:, 1:] >= table[:, :-1]).all()) and bool((table[1:] <= table[:-1]).all())
            and bool((table[0] == steps).all()) and bool((table[-1] == 0).all()) and bool((table[:, 1:] > table[:, :-1]).any()))


@pytest.mark.parametrize("anchor", [1.5, 2.0, 5.0])
@pytest.mark.parametrize("length", [1, 4, 9])
def test_decoding_timesteps_follow_the_speed_line(anchor, length):
    table = decoding_table(20, length, 100, anchor)
    assert bool((decoding_table(20, length, 100, math.inf) == decoding_table(20, length, 100, math.inf)[:, :1]).all())
    if length > 1:
        assert speed_line_holds(table, 100)
    # left tokens are denoised first: the first token reaches 0 no later than the last
    first_zero = [int((table[:, n] == 0).nonzero()[0]) for n in range(length)]
    assert first_zero == sorted(first_zero)
    # the paper's closed form at three points of the path: (0, T), the corner (0, 0), (N, 0)
    assert torch.equal(token_timesteps(length + 100, length, 100, anchor), torch.full((length,), 100.0, dtype=torch.float64))
    n = torch.arange(1, length + 1, dtype=torch.float64)
    assert torch.allclose(token_timesteps(length, length, 100, anchor), 100 * n / (anchor * length))
    assert bool((token_timesteps(0, length, 100, anchor) == 0).all())


def test_a_broken_line_fails_the_check():
    """Broken variant: an anchor to the left of the start point (slope < 0) puts right tokens ahead."""
    assert speed_line_holds(decoding_table(20, 6, 100, 2.0), 100)
    assert not speed_line_holds(decoding_table(20, 6, 100, 0.5), 100)


def test_training_timesteps_are_the_line_at_a_uniform_sentence_t():
    b = _tiny()
    objective = b.model.objective
    g = torch.Generator().manual_seed(0)
    times = objective.token_times(2000, generator=g).double()
    assert times.shape == (2000, T) and bool((times[:, 1:] >= times[:, :-1]).all())
    # the first token is clean more often than the last; both are fully noisy equally often
    assert float((times[:, 0] == 0).float().mean()) > float((times[:, -1] == 0).float().mean())


def test_equal_speeds_are_synchronous_diffusion():
    """equal_speeds (anchor at infinity): every row of the table is constant, and the decoder's output equals the toolkit's
    synchronous reverse process over the same timesteps (same seed), token for token."""
    b = _tiny(equal_speeds=True)
    decoder = b.decoder
    table = decoder.table(ed.schedule_of(b.ctx))
    assert bool((table == table[:, :1]).all()) and float(table[0, 0]) == 50 and float(table[-1, 0]) == 0
    sources = [[1, 2], [3], [4, 5, 6]]
    result = Generator(b).generate(source=sources, max_new_tokens=T + 1, seed=3)
    blocks = torch.tensor([[0] * (S - len(s)) + s for s in sources])
    with torch.no_grad():
        ids, sync = ed.embedding_reverse_process(b.model, blocks, table[:, 0], ed.schedule_of(b.ctx), clamp=True, generator=torch.Generator().manual_seed(3))
        _, per_token = ed.embedding_reverse_process(b.model, blocks, table[:, None, :], ed.schedule_of(b.ctx), clamp=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(per_token.x, sync.x) and torch.equal(per_token.x0_hat, sync.x0_hat)  # the per-token path, bit for bit
    expected = [row.tolist() + [0] for row in ids]
    assert result.ids == [e[: e.index(0) + 1] for e in expected]
    assert result.metrics.forward_passes == {"target": sync.passes}
    # and the asynchronous table is not synchronous: some row holds different timesteps
    assert bool((_tiny(anchor=2.0).decoder.table(ed.schedule_of(b.ctx)) != table[:1, :1]).any())


def test_objective_contract_and_bad_configs():
    b = _tiny()
    data = SourceTargetPairs([([1, 2], [3, 4]), ([5], [6])], S, T, pad_id=0, eos_id=0)
    check_objective(b, torch.utils.data.default_collate([data[i] for i in range(2)]))
    with pytest.raises(Exception, match="anchor"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "embedding-diffusion"}, "backbone": {"name": "transformer"}, "objective": {"name": "ar-diffusion", "anchor": 1.0}})


@pytest.mark.slow
def test_trains_on_the_reverse_task():
    """Reverse strings of 3-8 letters, 1000 steps of 64 pairs; held-out test split exact match of
    generate(source=...) with 20 reverse steps (the recipe of benchmarks/seq2seq_table.py)."""
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": {"name": "embedding-diffusion", "embed_dim": 16}, "objective": {"name": "ar-diffusion", "steps": 1000}, "decoder": {"name": "ar-diffusion", "steps": 20},
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    b = train_briefly(tiny_model(base=base, data=True, seed=0), 1000, lr=3e-3)
    model = b.model
    test = b.data.load("test", model.tokenizer, b.ctx)
    with torch.no_grad():
        result = Generator(b).generate(source=[s for s, _ in test.pairs], max_new_tokens=9, seed=0)
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    assert result.metrics.forward_passes == {"target": 20}
    assert exact >= 0.9  # measured 0.995 (docs/seq2seq.md)
