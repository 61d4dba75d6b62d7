"""Continuous-embedding diffusion: the forward process composes to its closed form, the posterior
is consistent with it, rounding is the nearest neighbour, simplices round-trip, self-conditioning
detaches, and the sampler loop follows its table of timesteps."""

from __future__ import annotations

import pytest
import torch

from genloom.toolkit.embedding_diffusion import (
    GaussianSchedule,
    clamp_to_embeddings,
    ddim_step,
    EmbeddingDiffusionHead,
    distance_logits,
    partial_noise,
    posterior_step,
    project_to_simplex,
    q_posterior,
    q_sample,
    q_step,
    renoise_step,
    reverse_timesteps,
    round_to_tokens,
    rounding_loss,
    sample_loop,
    self_conditioned,
    simplex,
    simplex_tokens,
)


@pytest.mark.parametrize("kind", ["sqrt", "cosine", "linear"])
def test_schedule_is_one_at_zero_decreasing_and_positive(kind):
    s = GaussianSchedule(50, kind)
    ab = s.alpha_bar(torch.arange(51))
    assert float(ab[0]) == 1.0 and bool((ab[1:] < ab[:-1]).all()) and float(ab[-1]) > 0
    beta = s.beta(torch.arange(1, 51))
    assert bool((beta > 0).all()) and bool((beta < 1).all())


def _iterated_coefficients(schedule, t_end, step=q_step):
    """Run q_step t_end times on a scalar x0 = 1 with each step's noise as a unit basis vector:
    x_t = a x0 + sum_k c_k eps_k, so the iterated marginal is N(a x0, sum c_k^2) exactly."""
    x = torch.zeros(1, 1, t_end + 1, dtype=torch.float64)
    x[..., 0] = 1.0  # component 0 carries x0, component k the noise of step k
    for t in range(1, t_end + 1):
        noise = torch.zeros_like(x)
        noise[..., t] = 1.0
        x = step(x, t, schedule, noise)
    return float(x[0, 0, 0]), float((x[0, 0, 1:] ** 2).sum())


@pytest.mark.parametrize("kind", ["sqrt", "cosine"])
def test_closed_form_marginal_equals_iterated_single_steps(kind):
    """sqrt(alpha_bar_t) and 1 - alpha_bar_t from composing t single steps, exactly (1e-12)."""
    s = GaussianSchedule(40, kind)
    for t_end in (1, 7, 40):
        mean_coefficient, variance = _iterated_coefficients(s, t_end)
        ab = float(s.alpha_bar(t_end))
        assert abs(mean_coefficient - ab**0.5) < 1e-12 and abs(variance - (1 - ab)) < 1e-12
        # the closed form itself: q_sample's coefficients are the same numbers
        x0, noise = torch.ones(1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64)
        assert abs(float(q_sample(x0, t_end, s, noise)) - ab**0.5) < 1e-12
    # a broken variant: steps whose variance is alpha_bar_{t-1} - alpha_bar_t (not beta_t) miss the marginal
    def wrong_step(x, t, schedule, noise):
        b = schedule.alpha_bar(t - 1) - schedule.alpha_bar(t)
        return (1 - b).sqrt() * x + b.sqrt() * noise

    m, v = _iterated_coefficients(s, 40, wrong_step)
    assert abs(m - float(s.alpha_bar(40)) ** 0.5) > 1e-3 or abs(v - (1 - float(s.alpha_bar(40)))) > 1e-3


def test_monte_carlo_marginal_of_iterated_steps():
    """200k chains of 10 random steps: mean and variance within 4 standard errors of the closed form."""
    s = GaussianSchedule(10, "sqrt")
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000, 1, 1), 2.0, dtype=torch.float64)
    for t in range(1, 11):
        x = q_step(x, t, s, torch.randn(x.shape, generator=g, dtype=torch.float64))
    ab = float(s.alpha_bar(10))
    n = x.numel()
    assert abs(float(x.mean()) - 2.0 * ab**0.5) < 4 * ((1 - ab) / n) ** 0.5
    assert abs(float(x.var()) - (1 - ab)) < 4 * (2 * (1 - ab) ** 2 / n) ** 0.5


def test_posterior_draw_has_the_forward_marginal():
    """If x_t ~ q(x_t | x0) and x_s ~ q(x_s | x_t, x0), then x_s ~ q(x_s | x0) (exact, float64),
    for skipped steps too; the variance is 0 and the mean x_t where s == t."""
    sched = GaussianSchedule(100, "sqrt")
    x0 = torch.tensor([[[1.5]]], dtype=torch.float64)
    for t, s in [(100, 99), (60, 20), (5, 0), (37, 36)]:
        # the posterior mean is linear in x_t: mean = c0 x0 + ct x_t
        m0, var = q_posterior(x0, torch.zeros_like(x0), t, s, sched)
        m1, _ = q_posterior(x0, torch.ones_like(x0), t, s, sched)
        ct = float(m1 - m0)
        ab_t, ab_s = float(sched.alpha_bar(t)), float(sched.alpha_bar(s))
        assert abs(float(m0) + ct * ab_t**0.5 * 1.5 - ab_s**0.5 * 1.5) < 1e-12
        assert abs(ct**2 * (1 - ab_t) + float(var) - (1 - ab_s)) < 1e-12
    xt = torch.randn(2, 3, 4, dtype=torch.float64)
    mean, var = q_posterior(torch.randn_like(xt), xt, 30, 30, sched)
    assert torch.equal(mean, xt) and bool((var == 0).all())
    assert torch.equal(posterior_step(xt, torch.randn_like(xt), 30, 30, sched, torch.randn_like(xt)), xt)


def test_ddim_step_keeps_the_implied_noise_and_recovers_x0_with_a_perfect_prediction():
    sched = GaussianSchedule(100, "cosine")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    xt = q_sample(x0, 80, sched, eps)
    # the perfect x0 prediction moves x_t along its own noise: x_s = q_sample(x0, s, eps)
    assert torch.allclose(ddim_step(xt, x0, 80, 30, sched), q_sample(x0, 30, sched, eps), atol=1e-12)
    assert torch.allclose(ddim_step(xt, x0, 80, 0, sched), x0, atol=1e-12)
    # per-position timesteps (1, L): a position whose t does not change stays exactly as it is
    t, s = torch.tensor([[80.0, 50.0, 0.0]]), torch.tensor([[60.0, 50.0, 0.0]])
    out = ddim_step(xt, torch.randn_like(xt), t, s, sched)
    assert torch.equal(out[:, 1:], xt[:, 1:]) and not torch.equal(out[:, 0], xt[:, 0])


def test_partial_noise_leaves_unnoised_positions_exactly_clean():
    sched = GaussianSchedule(10, "sqrt")
    x0 = torch.randn(2, 5, 3)
    noised = torch.tensor([[False, False, True, True, True]] * 2)
    for t in (1, 5, 10):
        xt = partial_noise(x0, t, sched, torch.randn_like(x0), noised)
        assert torch.equal(xt[:, :2], x0[:, :2]) and not torch.equal(xt[:, 2:], x0[:, 2:])


def test_rounding_is_the_brute_force_nearest_neighbour():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(13, 4, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, 13, dtype=torch.float64)[:, None]
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) * 2
    ids = round_to_tokens(x, weight)
    for i in range(50):
        dists = [float(((x[i] - weight[v]) ** 2).sum()) for v in range(13)]
        assert int(ids[i]) == min(range(13), key=dists.__getitem__)
        assert torch.allclose(distance_logits(x[i], weight), -torch.tensor(dists, dtype=torch.float64), atol=1e-10)
    assert torch.equal(clamp_to_embeddings(x, weight), weight[ids])
    # a broken variant: rounding by dot product (the tied-output-layer argmax) is not the nearest neighbour
    assert not torch.equal((x @ weight.t()).argmax(-1), ids)
    # the rounding loss is the cross-entropy of the distance logits; an embedding rounds to itself
    loss = rounding_loss(weight[:3], weight, torch.arange(3))
    assert abs(float(loss) - float(-distance_logits(weight[:3], weight).log_softmax(-1)[torch.arange(3), torch.arange(3)].mean())) < 1e-6
    assert torch.equal(round_to_tokens(weight, weight), torch.arange(13))


def test_simplex_round_trips_and_projects():
    ids = torch.tensor([[0, 4, 2], [1, 1, 3]])
    s = simplex(ids, 5, k=5.0)
    assert bool(((s == 5) | (s == -5)).all()) and bool(((s == 5).sum(-1) == 1).all())
    assert torch.equal(simplex_tokens(s), ids)
    assert torch.equal(project_to_simplex(torch.randn(2, 3, 5) + 10 * s, 5.0), s)
    # small noise keeps the argmax: the clean vertex is k - (-k) = 2k above every other logit
    assert torch.equal(simplex_tokens(s + torch.rand_like(s) * 4.99), ids)


def test_self_conditioning_detaches_the_first_pass_and_is_off_at_probability_zero():
    w = torch.nn.Parameter(torch.tensor(2.0))
    calls = []

    def predict(x, previous):
        calls.append(previous)
        return w * x + (0 if previous is None else previous)

    x = torch.ones(3)
    out, previous = self_conditioned(predict, x, probability=0.0)
    assert previous is None and calls == [None] and torch.equal(out, w * x)
    calls.clear()
    out, previous = self_conditioned(predict, x, probability=1.0)
    assert len(calls) == 2 and calls[0] is None and not previous.requires_grad
    out.sum().backward()
    assert float(w.grad) == 3.0  # d/dw of sum(w x + stop_grad(w x)): the first pass gives no gradient
    g = torch.Generator().manual_seed(0)
    used = sum(self_conditioned(predict, x, probability=0.5, generator=g)[1] is not None for _ in range(400))
    assert 160 < used < 240


def test_sample_loop_follows_the_table_counts_passes_and_reimposes():
    sched = GaussianSchedule(100, "sqrt")
    x0 = torch.randn(2, 4, 3, dtype=torch.float64)
    seen = []

    def denoise(x, t):
        seen.append(torch.as_tensor(t).clone())
        return x0

    times = reverse_timesteps(5, 100)
    clean = torch.zeros(2, 4, dtype=torch.bool)
    clean[:, 0] = True
    reimpose = lambda x: torch.where(clean[..., None], x0, x)
    out = sample_loop(denoise, torch.randn(2, 4, 3, dtype=torch.float64), times, sched, reimpose=reimpose)
    assert out.passes == 5 and [float(t) for t in seen] == [100, 80, 60, 40, 20]
    assert torch.allclose(out.x, x0, atol=1e-12)  # a perfect denoiser lands on x0 at t = 0
    # stochastic updates with a perfect denoiser also land on x0 (the last posterior has variance 0)
    out = sample_loop(denoise, torch.randn(2, 4, 3, dtype=torch.float64), times, sched, stochastic=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.x, x0, atol=1e-12)


def test_renoise_update_and_unknown_update():
    sched = GaussianSchedule(100, "cosine")
    x0 = torch.randn(2, 3, 5, dtype=torch.float64)
    noise = torch.randn_like(x0)
    assert torch.equal(renoise_step(x0, 40, sched, noise), q_sample(x0, 40, sched, noise))
    # the renoise loop with a perfect predictor ends on x0 (alpha_bar(0) = 1 removes the noise)
    out = sample_loop(lambda x, t: x0, torch.randn_like(x0), reverse_timesteps(4, 100), sched, update="renoise", noise_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.x, x0)
    with pytest.raises(ValueError, match="update"):
        sample_loop(lambda x, t: x0, x0, reverse_timesteps(2, 100), sched, update="euler")


def test_the_embedding_head_distribution_is_the_rounding_distribution():
    head = EmbeddingDiffusionHead(vocab_size=6, d_model=8, embed_dim=3, training_steps=100).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    ids = torch.randint(0, 6, (2, 4))
    expected = -distance_logits(x, head.weight).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    assert torch.allclose(head.token_nll(x, ids).double(), expected, atol=1e-5)
    # a draw concentrates on the nearest embedding when x sits on it
    scaled = EmbeddingDiffusionHead(vocab_size=6, d_model=8, embed_dim=3, training_steps=100, init_std=10.0).double()
    on = scaled.weight[torch.tensor([[1, 4]])].detach()
    assert torch.equal(scaled.sample(on, torch.Generator().manual_seed(0)), torch.tensor([[1, 4]]))
