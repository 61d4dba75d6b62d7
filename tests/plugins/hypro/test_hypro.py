"""HYPRO: resampling M base-model proposals with softmax(-E) converges to the tilted target
p_AR(x) exp(-E(x)) / Z on a small discrete space (chi-square), and with E = 0 the decoder is plain AR
sampling."""

import itertools
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from genloom.core.generation import run
from genloom.plugins.hypro.model import resample
from genloom.testing import check_model_config, exact_continuations, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "hypro.yaml"
SMALL = ["data.n_types=3", "tokenizer.vocab_size=3", "backbone.d_model=16", "objective.horizon=2", "objective.energy_width=8"]


def _sir_draws(p, energies, m, n, generator):
    """n outcomes of SIR over an enumerated space: m proposals from p, one kept with softmax(-E)."""
    proposals = torch.multinomial(p, n * m, replacement=True, generator=generator).view(n, m)
    return proposals[torch.arange(n), resample(energies[proposals], generator)]


def test_resampling_converges_to_the_tilted_target():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(8, generator=gen, dtype=torch.float64), 0)  # 8 outcomes (3 binary events)
    energies = 2 * torch.rand(8, generator=gen, dtype=torch.float64)
    target = p * torch.exp(-energies)
    target = target / target.sum()
    n = 20000
    counts = torch.bincount(_sir_draws(p, energies, 256, n, gen), minlength=8).double()
    assert chisquare(counts.numpy(), (n * target).numpy()).pvalue > 1e-3
    # broken variants: the weights' sign flipped, or no resampling (M = 1)
    flipped = torch.bincount(_sir_draws(p, -energies, 256, n, gen), minlength=8).double()
    assert chisquare(flipped.numpy(), (n * target).numpy()).pvalue < 1e-6
    single = torch.bincount(_sir_draws(p, energies, 1, n, gen), minlength=8).double()
    assert chisquare(single.numpy(), (n * target).numpy()).pvalue < 1e-6


@pytest.fixture(scope="module")
def built():
    b = tiny_model(CONFIG, SMALL, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a base model with a clearly non-uniform law
        for p in b.model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return b


def _decode(b, energy_fn, rows, m, seed=0):
    dec = b.ctx.build("decoder", {"name": "hypro", "num_proposals": m, "horizon": 2})
    if energy_fn is not None:
        dec.energies = energy_fn
    out = run(b.model.eval(), [[0, 1]] * rows, dec, max_new_tokens=2, seed=seed)
    index = {c: i for i, c in enumerate(itertools.product(range(3), repeat=2))}
    return torch.bincount(torch.tensor([index[tuple(ids)] for ids in out.ids]), minlength=9).double()


def _outcome(proposals):
    """The index of each 2-event continuation over 3 types in itertools.product order."""
    return proposals[..., 0] * 3 + proposals[..., 1]


def _ar_law(b):
    law = exact_continuations(b.model.eval(), [0, 1], 2, vocab=3)
    return torch.tensor([law[c] for c in itertools.product(range(3), repeat=2)], dtype=torch.float64)


def test_with_zero_energy_the_decoder_is_plain_ar_sampling(built):
    law = _ar_law(built)
    assert float(law.max() / law.min()) > 3  # far from uniform, so the checks below can tell laws apart
    zero = lambda session, history, proposals: torch.zeros(proposals.shape[:2])  # noqa: E731
    counts = _decode(built, zero, 3000, 4)
    assert chisquare(counts.numpy(), (3000 * law / law.sum()).numpy()).pvalue > 1e-3
    # the broken variant: weights proportional to the base model's probability (counting it twice): law p^2
    def double_counted(session, history, proposals):
        return -torch.log(law[_outcome(proposals)])

    counts = _decode(built, double_counted, 3000, 4)
    assert chisquare(counts.numpy(), (3000 * law / law.sum()).numpy()).pvalue < 1e-6


@pytest.mark.slow
def test_the_decoder_converges_to_the_energy_tilted_law(built):
    law = _ar_law(built)
    energies = torch.tensor([0.0, 1.5, 0.3, 2.0, 0.8, 0.1, 1.2, 0.5, 1.8], dtype=torch.float64)
    def energy(session, history, proposals):
        return energies[_outcome(proposals)]

    target = law * torch.exp(-energies)
    target = target / target.sum()
    counts = _decode(built, energy, 2000, 64)
    assert chisquare(counts.numpy(), (2000 * target).numpy()).pvalue > 1e-3
    assert chisquare(counts.numpy(), (2000 * law / law.sum()).numpy()).pvalue < 1e-6  # and it is not the AR law


def test_runnable_config_assembles_and_trains_a_batch():
    out = check_model_config(CONFIG, SMALL)
    assert out.model.objective.energy is not None
