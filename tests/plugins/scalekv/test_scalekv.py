"""ScaleKV on the var plugin's VAR model (built through the registry): with unlimited budgets the
output equals uncompressed VAR exactly; with budgets, each layer keeps at most its class's budget of
earlier-scale tokens (drafters more, refiners less) while the current scale always stays, so the
cache's size follows the budget, not the number of tokens generated. A tight budget changes the
output: the exactness check can fail."""

import torch

from genloom.core.generation import run
from genloom.plugins.scalekv.policy import ScaleKV
from genloom.testing import tiny_model

SCALES = (1, 2, 3, 4)
VAR = {
    "tokenizer": {"name": "var-vq", "scales": list(SCALES), "codebook_size": 32, "latent_channels": 8, "hidden_channels": 8, "image_shape": [1, 8, 8], "fit_steps": 0},
    "head": {"name": "next-scale"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 3, "n_heads": 2, "rope": False},
    "objective": {"name": "next-scale"},
}


def var_model():
    built = tiny_model(base=VAR, seed=0)
    built.model.eval().double()
    return built


def generate(built, policy, cfg_scale=1.5):
    model = built.model
    model.backbone.cache_policy = policy
    states, seen = [], []
    init = model.backbone.init_state
    model.backbone.init_state = lambda *a, **k: (states.append(init(*a, **k)), states[-1])[1]
    try:
        out = run(model, [[0], [0]], built.ctx.build("decoder", {"name": "next-scale", "cfg_scale": cfg_scale}), max_new_tokens=sum(s * s for s in SCALES),
                  seed=0, processors=[lambda logits, hist: (seen.append(logits.clone()), logits)[1]])
    finally:
        model.backbone.cache_policy = None
        del model.backbone.init_state
    return out.ids, seen, states[-1]


def test_unlimited_budgets_are_uncompressed_var_exactly():
    built = var_model()
    ids, logits, plain = generate(built, None)
    got, got_logits, state = generate(built, ScaleKV())
    assert got == ids and all(torch.equal(a, b) for a, b in zip(got_logits, logits))
    assert state.stats["evicted"] == 0 and all("dispersion" in r for r in state.rows)
    tight, tight_logits, _ = generate(built, ScaleKV(budget_refiner=1, budget_drafter=1, drafters=1))  # the broken comparison
    assert tight != ids or not all(torch.allclose(a, b, atol=1e-9) for a, b in zip(tight_logits, logits))


def test_cache_size_follows_the_budget_not_the_tokens():
    built = var_model()
    refiner, drafter = 2, 6
    sizes = []
    policy = ScaleKV(budget_refiner=refiner, budget_drafter=drafter, drafters=1)
    evict = policy.evict

    def watched(cache, layer, held, q):  # what each layer keeps from earlier scales, and its class
        keep = evict(cache, layer, held, q)
        kept = held.valid.sum(1) if keep is None else keep.sum(1)
        sizes.append((layer, policy.is_drafter(cache, layer).clone(), kept.clone()))
        return keep

    policy.evict = watched
    _, _, state = generate(built, policy)
    assert sizes
    for layer, is_drafter, kept in sizes:
        assert bool((kept <= torch.where(is_drafter, drafter, refiner)).all())
    assert any(bool(d.any()) for _, d, _ in sizes) and any(bool((~d).any()) for _, d, _ in sizes)  # both classes occur
    total = sum(s * s for s in SCALES)
    last = SCALES[-1] ** 2
    held = [state.held(i).size for i in range(3)]
    assert max(held) <= drafter + last < total  # bounded by the budget plus the current scale
    full_bytes = 3 * 2 * 2 * 16 * 8 * total * 4  # 3 layers, keys and values, 4 rows (guidance), 2 heads x 16, float64
    assert sum(state.layer_nbytes()) <= 3 * 2 * 4 * 2 * 16 * 8 * (drafter + last) < full_bytes
