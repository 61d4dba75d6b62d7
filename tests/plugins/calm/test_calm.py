"""CALM: the chunk autoencoder round trip, the energy score's propriety, the BrierLM estimator's
mean, ceil(L/K) backbone passes per generation, and cached == full forward over chunk vectors."""

from __future__ import annotations

import inspect
import json
import math
import argparse as argparse_module

import pytest
import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import run
from genloom.plugins.baseline.tokenizers import ByteTokenizer
from genloom.plugins.calm import ChunkAutoencoderConfig, EnergyHeadConfig
from genloom.plugins.calm.head import energy_distance_terms
from genloom.plugins.calm.objective import summarise
from genloom.plugins.calm.tokenizer import ChunkAutoencoder
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit.brier import brier_closed_form, brier_estimate, brier_lm

K = 4
MODEL = {
    "tokenizer": {"name": "calm-chunks", "base": {"name": "bytes"}, "chunk_size": K, "latent_dim": 8, "hidden": 32},
    "head": {"name": "calm-energy", "n_blocks": 2, "model_samples": 4, "target_samples": 8},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "calm"},
    "decoder": {"name": "calm"},
}


@pytest.fixture(scope="module")
def built():
    return tiny_model(base=MODEL, seed=0)


def _text_streams():
    tok = ByteTokenizer()
    train = torch.tensor(tok.encode(inspect.getsource(argparse_module)))
    held_out = torch.tensor(tok.encode(inspect.getsource(json.decoder)))
    return tok, train, held_out


# -- the chunk autoencoder ---------------------------------------------------------------------
def test_briefly_trained_autoencoder_reconstructs_held_out_text():
    """K bytes -> one 32-d vector -> K bytes on a module it never saw; zeroing the latent (the
    decoder then sees no information about the chunk) must fail the same threshold."""
    tok, train, held_out = _text_streams()
    config = ChunkAutoencoderConfig(base={"name": "bytes"}, chunk_size=K, hidden=64, latent_dim=32, fit_steps=150, fit_batch_size=128, fit_lr=1e-2)
    ae = ChunkAutoencoder(config, tok)
    losses = ae.fit_stream(train)
    assert losses[-1] < losses[0]
    assert ae.reconstruction_accuracy(held_out) >= 0.8  # 150 steps; the full recipe reaches >= 99.9% (slow test below)
    assert ae.reconstruction_accuracy(held_out, sample=True, generator=torch.Generator().manual_seed(0)) >= 0.75
    assert all(not p.requires_grad for p in ae.parameters())  # frozen after fit

    chunks = held_out[: len(held_out) // K * K].reshape(-1, K)
    with torch.no_grad():
        zeroed = ae.decode_vectors(torch.zeros(len(chunks), 32))
    assert (zeroed == chunks).double().mean() < 0.5  # broken variant: no latent, no reconstruction


@pytest.mark.slow
def test_configured_autoencoder_reaches_999_per_mille_on_the_validation_split():
    """configs/calm.yaml's autoencoder (BPE 1024, K = 4, l = 64), fitted as assembly fits it, on
    the whole validation split of the standard-library text (the figure of the catalogue page)."""
    from pathlib import Path

    from genloom.plugins.calm.tokenizer import token_stream

    config = Path(__file__).resolve().parents[3] / "configs" / "calm.yaml"
    b = tiny_model(str(config), data=True, seed=0)
    val = token_stream(b.data.load("val", b.model.tokenizer, b.ctx))
    assert b.model.tokenizer.reconstruction_accuracy(val) >= 0.999


def test_autoencoder_round_trips_through_a_run_directory(tmp_path):
    tok, train, held_out = _text_streams()
    config = ChunkAutoencoderConfig(base={"name": "bytes"}, chunk_size=K, hidden=16, latent_dim=8, fit_steps=3, fit_batch_size=8)
    ae = ChunkAutoencoder(config, tok)
    ae.fit_stream(train)
    ae.save(tmp_path)
    again = ChunkAutoencoder(config, ByteTokenizer())
    again.load(tmp_path)
    chunks = held_out[:64].reshape(-1, K)
    assert torch.equal(ae.encode_chunks(chunks), again.encode_chunks(chunks)) and bool(again.fitted)


# -- the energy score --------------------------------------------------------------------------
def _energy(mu, sigma, target_mu=0.0, target_sigma=1.0, n=200, positions=32, seed=0, diversity=True):
    """The energy loss 2 E|X - Y| - E|X - X'| of X ~ N(mu, sigma^2) against Y ~ N(target), by the
    estimator's U-statistics on n model and n target samples at each of ``positions`` independent
    positions (one dimension). Returns the (positions,) estimates; the same seed gives the same
    standard normal draws (common random numbers across laws)."""
    g = torch.Generator().manual_seed(seed)
    x = mu + sigma * torch.randn(n, positions, 1, generator=g, dtype=torch.float64)
    y = target_mu + target_sigma * torch.randn(n, positions, 1, generator=g, dtype=torch.float64)
    fidelity, div = energy_distance_terms(x, y)
    return 2 * fidelity - (div if diversity else 0)


def _closed_form(mu, sigma, target_mu=0.0, target_sigma=1.0):
    """2 E|X - Y| - E|X - X'| for Gaussians: E|D| of D ~ N(m, s^2) is s sqrt(2/pi) e^{-m^2/2s^2} + m (1 - 2 Phi(-m/s))."""
    def folded(m, s):
        return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * 0.5 * math.erfc(m / (s * math.sqrt(2))))
    return 2 * folded(mu - target_mu, math.hypot(sigma, target_sigma)) - folded(0.0, sigma * math.sqrt(2))


def test_energy_estimator_is_unbiased_at_the_training_sample_sizes():
    """With N = M = 8 samples per position (the paper's N), the per-position estimate averages to
    the closed form; the V-statistic (diversity over all N^2 pairs, diagonal zeros included) is
    biased by E|X - X'| / N and fails the same check."""
    for mu, sigma in [(0.0, 1.0), (0.7, 0.5), (-1.0, 2.0)]:
        g = torch.Generator().manual_seed(1)
        x = mu + sigma * torch.randn(8, 20000, 1, generator=g, dtype=torch.float64)
        y = torch.randn(8, 20000, 1, generator=g, dtype=torch.float64)
        fidelity, diversity = energy_distance_terms(x, y)
        per_position = 2 * fidelity - diversity
        se = float(per_position.std()) / math.sqrt(per_position.numel())
        assert abs(float(per_position.mean()) - _closed_form(mu, sigma)) < 4 * se
        v_statistic = 2 * fidelity - diversity * 7 / 8
        assert abs(float(v_statistic.mean()) - _closed_form(mu, sigma)) > 4 * se


def test_energy_loss_is_minimised_by_the_true_law():
    truth = float(_energy(0.0, 1.0).mean())
    for mu, sigma in [(0.3, 1.0), (-0.3, 1.0), (0.0, 0.7), (0.0, 1.4), (0.0, 0.3)]:
        assert float(_energy(mu, sigma).mean()) > truth + 0.01, (mu, sigma)
        assert _closed_form(mu, sigma) > _closed_form(0.0, 1.0)
    # broken variant: without the diversity term the loss is 2 E|X - Y|, minimised by a point
    # mass at the median -- a narrower law beats the true one
    assert float(_energy(0.0, 0.3, diversity=False).mean()) < float(_energy(0.0, 1.0, diversity=False).mean())


def test_energy_head_trains_toward_the_target_law():
    """The head's generator, trained by its energy_loss on a fixed 2-d Gaussian target, matches
    its mean and spread (a point-mass collapse would not)."""
    torch.manual_seed(0)
    from genloom.plugins.calm.head import EnergyHead

    head = EnergyHead(EnergyHeadConfig(n_blocks=2, model_samples=8, target_samples=16), vocab_size=5, d_model=8, chunk_size=2, latent_dim=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    h = torch.zeros(64, 1, 8)
    target_mean = torch.tensor([1.0, -2.0]).expand(64, 1, 2)
    target_logvar = torch.log(torch.tensor([0.25, 1.0])).expand(64, 1, 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = head.energy_loss(h, target_mean, target_logvar, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = head.sample(torch.zeros(4000, 8), g)
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.15)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 1.0]), atol=0.15)


# -- BrierLM ---------------------------------------------------------------------------------------
def test_brier_two_sample_estimator_is_unbiased_for_a_known_categorical():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x1 = torch.multinomial(probs, n, replacement=True, generator=g)
    x2 = torch.multinomial(probs, n, replacement=True, generator=g)
    for y in (0, 3):
        target = torch.full((n,), y)
        est = brier_estimate(x1, x2, target)
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - brier_closed_form(probs, y)) < 4 * se
        # broken variant: without -1[x1 = x2] the mean is 2 p_y, not 2 p_y - ||p||^2
        broken = (x1 == target).double() + (x2 == target).double()
        assert abs(float(broken.mean()) - brier_closed_form(probs, y)) > 20 * se


def test_brier_lm_is_the_geometric_mean_and_summarise_reads_the_sums():
    assert brier_lm([0.5, 0.5, 0.5, 0.5]) == pytest.approx(50.0)
    assert brier_lm([0.8, 0.4, 0.2, 0.1]) == pytest.approx(100 * (0.8 * 0.4 * 0.2 * 0.1) ** 0.25)
    assert brier_lm([0.5, 0.0]) == 0.0
    out = summarise({"total_brier_1": 40.0, "total_brier_2": 20.0, "total_brier_count": 80.0})
    assert out["brier_1"] == 0.5 and out["brier_2"] == 0.25 and out["brier_lm"] == pytest.approx(100 * (0.5 * 0.25) ** 0.5)


def test_ngram_estimates_compare_whole_prefixes():
    from genloom.toolkit.brier import brier_ngram_estimates

    y = torch.tensor([[1, 2, 3]])
    est = brier_ngram_estimates(torch.tensor([[1, 2, 9]]), torch.tensor([[1, 7, 3]]), y)
    assert est.tolist() == [[1.0, 1.0, 0.0]]  # 1-gram: 1+1-1; 2-gram: only x1 right, 1+0-0; 3-gram: none right


# -- the model: objective, cached forward, decoding ---------------------------------------------
def _ids(batch, chunks, seed=0):
    return torch.randint(0, 256, (batch, chunks * K), generator=torch.Generator().manual_seed(seed))


def test_objective_scores_chunk_vectors_and_reports_brier_in_evaluation(built):
    ids = _ids(2, 6)
    batch = {"ids": torch.cat([ids, ids[:, :1]], 1), "mask": torch.ones(2, 6 * K, dtype=torch.bool)}
    batch["mask"][1, 10:] = False  # row 1: tokens 11.. are padding, so chunk 1 (tokens 4..7) is its only complete target
    out = check_objective(built, batch)
    assert float(out["_chunks"]) == 5 + 1
    built.model.eval()
    try:
        with torch.no_grad():
            out = built.model.loss(batch)
    finally:
        built.model.train()
    assert float(out["_brier_count"]) == 6 and all(f"_brier_{m}" in out for m in range(1, K + 1))


def test_cached_chunk_by_chunk_equals_full_forward_float64(built):
    model = built.model.double().eval()
    try:
        ids = _ids(2, 7, seed=1)
        with torch.no_grad():
            full = model.hidden(ids)
            state = model.init_state(2, 16)
            steps = [model.hidden(ids[:, :2 * K], state=state)]  # a prefill of two chunks, then one chunk at a time
            steps += [model.hidden(ids[:, c * K:(c + 1) * K], state=state) for c in range(2, 7)]
            broken = torch.cat([model.hidden(ids[:, c * K:(c + 1) * K], state=model.init_state(2, 4)) for c in range(7)], 1)
        assert full.shape == (2, 7, 16)
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10, rtol=0)
        assert not torch.allclose(broken, full, atol=1e-3)  # broken variant: a fresh state per chunk forgets the context
    finally:
        model.float().train()


@pytest.mark.parametrize("new_tokens", [1, 4, 5, 11, 16])
def test_generation_takes_ceil_l_over_k_backbone_passes(built, new_tokens):
    built.model.eval()
    result = run(built.model, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], built.decoder, max_new_tokens=new_tokens, seed=0, eos_id=None)
    built.model.train()
    assert [len(r) for r in result.ids] == [new_tokens, new_tokens]
    assert result.metrics.forward_passes["target"] == math.ceil(new_tokens / K)


def test_decoder_is_reproducible_and_refuses_processors(built):
    built.model.eval()
    try:
        check_decoder(built, {"name": "calm"}, max_new_tokens=9)
        with pytest.raises(GenerationError, match="processors"):
            run(built.model, [[1, 2]], built.decoder, max_new_tokens=4, processors=[lambda logits, history: logits])
    finally:
        built.model.train()


def test_decoded_chunks_come_from_the_autoencoder(built):
    """The tokens a step commits are the autoencoder's decoding of the vector the head drew."""
    built.model.eval()
    try:
        result = run(built.model, [[1, 2, 3, 4]], built.decoder, max_new_tokens=K, seed=3, eos_id=None)
        model = built.model
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            h = model.hidden(torch.tensor([[1, 2, 3, 4]]))[:, -1]
            expected = model.tokenizer.decode_vectors(model.head.sample(h, g))
        assert result.ids[0] == expected[0].tolist()
    finally:
        built.model.train()


def test_config_errors_name_the_field():
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model_samples"):
        tiny_model(base={**MODEL, "head": {"name": "calm-energy", "model_samples": 1}})
    with pytest.raises(ConfigError, match="calm-chunks"):
        tiny_model(base={**MODEL, "tokenizer": {"name": "bytes"}})


def test_evaluate_a_run_reports_brier_lm_from_the_split_sums(tmp_path, capsys):
    """``genloom evaluate RUN`` on a calm run: the core's split evaluation plus the objective's
    ``summarise`` (mean Brier-n = total / count, BrierLM), with the core's options and out= file."""
    import json as json_mod
    from pathlib import Path

    from genloom.core import cli

    config = Path(__file__).resolve().parents[3] / "configs" / "calm.yaml"
    run = tmp_path / "run"
    overrides = ["tokenizer.base.name=bytes", "tokenizer.fit_steps=20", "tokenizer.latent_dim=8", "tokenizer.hidden=16", "head.target_samples=8",
                 "backbone.d_model=16", "data.max_train_bytes=20000", "data.max_eval_bytes=4000", "trainer.max_steps=2", "trainer.val_every_steps=2",
                 "logger=none", f"run_dir={run}"]
    assert cli.main(["train", str(config), *overrides, "--no-sample"]) == 0
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(run), "max_batches=2", f"out={out}"]) == 0
    metrics = json_mod.loads(out.read_text())["metrics"]
    assert metrics["brier_1"] == pytest.approx(metrics["total_brier_1"] / metrics["total_brier_count"])
    assert "brier_lm" in metrics and "| brier_lm |" in capsys.readouterr().out
    assert cli.main(["evaluate", str(run), "max_batches=2", f"out={out}"]) == 2  # an existing file is kept
