"""DiffuSeq: partial noising keeps the source exactly clean at every t, the loss reads target
positions only, sampling re-imposes the source every step and rounds to the nearest embeddings."""

from __future__ import annotations

import pytest
import torch

from genloom.core.data import SourceTargetPairs
from genloom.core.generation import Generator
from genloom.testing import check_objective, tiny_model, train_briefly
from genloom.toolkit import embedding_diffusion as ed
from genloom.toolkit.embedding_diffusion import GaussianSchedule, embedding_diffusion_loss, reverse_timesteps, target_positions, with_clean_source

S, T = 3, 4


def _tiny():
    base = {
        "data": {"name": "seq2seq", "source_length": S, "target_length": T},
        "tokenizer": {"name": "ids", "vocab_size": 7, "eos_id": 0},
        "head": {"name": "embedding-diffusion", "embed_dim": 4},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "diffuseq", "steps": 50},
        "decoder": {"name": "diffuseq", "steps": 6},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double()
    return b


def _batch(pairs=(([1, 2], [3, 4]), ([5, 6, 1], [2]), ([4], [6, 6, 5]))):
    data = SourceTargetPairs(pairs, S, T, pad_id=0, eos_id=0)
    return torch.utils.data.default_collate([data[i] for i in range(len(data))])


def source_is_clean(model, batch, draws: int = 5) -> bool:
    """During the objective's own loss, the denoiser reads z_t[source] == z_0[source] exactly and a
    noised target, for several random t; source positions carry timestep 0."""
    seen = []
    head_type = type(model.head)
    original = head_type.denoise
    head_type.denoise = lambda self, m, x, t: seen.append((x.detach().clone(), t.clone())) or original(self, m, x, t)
    try:
        for seed in range(draws):
            torch.manual_seed(seed)
            model.loss(batch)
    finally:
        head_type.denoise = original
    z0 = model.head.vectors(batch["ids"]).detach()
    return all(torch.equal(x[:, :S], z0[:, :S]) and not torch.equal(x[:, S:], z0[:, S:]) and bool((t[:, S:] >= 1).all()) for x, t in seen)


def test_partial_noising_keeps_the_source_exactly_clean(monkeypatch):
    b = _tiny()
    assert source_is_clean(b.model, _batch())
    # a broken variant: the unconditional forward process (every position noised at the target's t) fails
    monkeypatch.setattr(ed, "with_clean_source", lambda times, S: torch.cat([times[..., :1].expand(*times.shape[:-1], S), times], -1))
    monkeypatch.setattr(ed, "target_positions", lambda B, S, T, device=None: torch.ones(B, S + T, dtype=torch.bool))
    assert not source_is_clean(b.model, _batch())


def test_one_timestep_per_sequence_and_zero_on_the_source(monkeypatch):
    b = _tiny()
    seen = []
    original = type(b.model.head).denoise
    monkeypatch.setattr(type(b.model.head), "denoise", lambda self, model, x, t: seen.append(t.clone()) or original(self, model, x, t))
    b.model.loss(_batch())
    t = seen[0]
    assert t.shape == (3, S + T) and bool((t[:, :S] == 0).all()) and bool((t[:, S:] == t[:, S:S + 1]).all())


def test_the_loss_covers_only_target_positions():
    """The gradient of the loss w.r.t. the prediction is zero at every source position and not at the target."""
    b = _tiny()
    batch = _batch()
    ids = batch["ids"]
    noised = target_positions(3, S, T, ids.device)
    out = embedding_diffusion_loss(b.model, ids, with_clean_source(torch.full((3, T), 20.0), S), noised, GaussianSchedule(50, "sqrt"), torch.Generator().manual_seed(0))
    prediction = out["_prediction"]
    grad, = torch.autograd.grad(out["loss"], prediction)
    assert bool((grad[:, :S] == 0).all()) and bool((grad[:, S:].abs().sum(-1) > 0).all())
    # a broken variant: scoring every position puts gradient on the source
    out = embedding_diffusion_loss(b.model, ids, torch.full((3, S + T), 20.0), torch.ones_like(noised), GaussianSchedule(50, "sqrt"), torch.Generator().manual_seed(0))
    grad, = torch.autograd.grad(out["loss"], out["_prediction"])
    assert bool((grad[:, :S] != 0).any())


def test_sampling_reimposes_the_source_every_step_and_rounds_to_nearest(monkeypatch):
    b = _tiny()
    model = b.model.eval()
    source = torch.tensor([[0, 1, 2], [4, 5, 6]])
    source_vectors = model.head.vectors(source)
    seen, predictions = [], []
    original = type(model.head).denoise

    def spy(self, m, x, t):
        seen.append((x.detach().clone(), t.clone()))
        out = original(self, m, x, t)
        predictions.append(out.detach().clone())
        return out

    monkeypatch.setattr(type(model.head), "denoise", spy)
    schedule = GaussianSchedule(50, "sqrt")
    with torch.no_grad():
        ids, result = ed.embedding_reverse_process(model, source, reverse_timesteps(6, 50), schedule, stochastic=True, clamp=False, generator=torch.Generator().manual_seed(0))
    assert result.passes == 6 and torch.allclose(torch.stack([t[0, -1] for _, t in seen]), torch.linspace(50, 0, 7, dtype=torch.float64)[:-1])
    assert all(torch.equal(x[:, :S], source_vectors) for x, _ in seen)
    # the last step lands on the last prediction (t = 0); the output is its nearest-embedding rounding
    assert torch.allclose(result.x[:, S:], predictions[-1][:, S:], atol=1e-12)
    brute = torch.tensor([[min(range(7), key=lambda v: float(((x - model.head.weight[v].detach()) ** 2).sum())) for x in row] for row in predictions[-1][:, S:]])
    assert torch.equal(ids, brute)


def test_generate_counts_steps_and_commits_up_to_eos():
    b = _tiny()
    b.model.eval()
    result = Generator(b).generate(source=[[1, 2], [3], [4, 5, 6]], max_new_tokens=T, seed=0)
    assert result.metrics.forward_passes == {"target": 6}
    for ids in result.ids:
        assert 1 <= len(ids) <= T + 1 and (0 not in ids[:-1])


def test_objective_contract_and_bad_configs():
    b = _tiny()
    check_objective(b, _batch())
    with pytest.raises(Exception, match="source-conditioned"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "embedding-diffusion"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "diffuseq"}})
    with pytest.raises(Exception, match="embedding-diffusion"):
        tiny_model(base={"data": {"name": "seq2seq", "source_length": S, "target_length": T}, "tokenizer": {"name": "ids", "vocab_size": 7, "eos_id": 0}, "head": {"name": "lm"},
                         "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "diffuseq"}}).model.loss(_batch())
    with pytest.raises(Exception, match="steps"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "embedding-diffusion"}, "backbone": {"name": "transformer"}, "objective": {"name": "diffuseq", "steps": 1}})


@pytest.mark.slow
def test_trains_on_the_reverse_task():
    """Reverse strings of 3-8 letters, 1000 steps of 64 pairs; held-out test split exact match of
    generate(source=...) with 20 reverse steps (the recipe of benchmarks/seq2seq_table.py)."""
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": {"name": "embedding-diffusion", "embed_dim": 16}, "objective": {"name": "diffuseq", "steps": 1000}, "decoder": {"name": "diffuseq", "steps": 20},
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    b = train_briefly(tiny_model(base=base, data=True, seed=0), 1000, lr=3e-3)
    model = b.model
    test = b.data.load("test", model.tokenizer, b.ctx)
    with torch.no_grad():
        result = Generator(b).generate(source=[s for s, _ in test.pairs], max_new_tokens=9, seed=0)
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    assert result.metrics.forward_passes == {"target": 20}
    assert exact >= 0.9  # measured 1.000 (docs/seq2seq.md)
