"""Sparse-to-Dense: top-K sparse attention drafts, dense verification.

Properties: the output equals dense greedy decoding token for token with fewer dense passes than
tokens; the broken variant (committing the sparse model's tokens without dense verification, i.e.
greedy decoding under top-K attention) leaves dense greedy decoding, so the verification is what
makes the output exact. The kernel equals the reference when K covers every key.
"""

import pytest
import torch

from genloom.core import kernels
from genloom.core.generation import run
from genloom.core.pattern import CAUSAL
from genloom.plugins.sparse_to_dense.sparse_attention import budget
from genloom.testing import check_decoder, tiny_model

VOCAB = 16
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [2, 7, 3, 3, 8, 1, 0, 4], [5, 0, 1, 9, 9, 9, 2]]
CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.02, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=CONFIG)
    built.model.eval()
    return built


def test_topk_kernel_is_the_reference_when_k_covers_every_key_and_sparse_otherwise():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=torch.float64) for _ in range(3))
    with kernels.use("attention", "reference") as ref:
        dense = ref(q, k, v, pattern=CAUSAL)
    with kernels.use("attention", "topk-sparse") as sparse, budget(6):
        torch.testing.assert_close(sparse(q, k, v, pattern=CAUSAL), dense, atol=1e-12, rtol=1e-12)
    with kernels.use("attention", "topk-sparse") as sparse, budget(1):
        one = sparse(q, k, v, pattern=CAUSAL)
    # K = 1: every query returns the value of its best allowed key
    scores = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    best = scores.argmax(-1)
    torch.testing.assert_close(one, v.gather(2, best[..., None].expand_as(v)), atol=1e-12, rtol=1e-12)
    assert kernels.select("attention", device=q.device, dtype=q.dtype, pattern=CAUSAL).name != "topk-sparse"  # never chosen unforced


def test_greedy_equals_dense_greedy_with_fewer_dense_passes(target):
    dense = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=40)
    out = run(target.model, PROMPTS, target.ctx.build("decoder", {"name": "sparse-to-dense", "top_k": 2}), max_new_tokens=40)
    assert out.ids == dense.ids
    m = out.metrics
    assert m.forward_passes["target"] < 40 / 2
    assert 0 < m.mean_acceptance_length < 4  # some sparse drafts were rejected by the dense pass
    # broken variant: the sparse model's own greedy tokens (no dense verification) are not dense greedy
    with kernels.use("attention", "topk-sparse"), budget(2):
        sparse_only = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=40)
    assert sparse_only.ids != dense.ids


def test_a_larger_budget_drafts_better(target):
    narrow = run(target.model, PROMPTS, target.ctx.build("decoder", {"name": "sparse-to-dense", "top_k": 1}), max_new_tokens=40)
    wide = run(target.model, PROMPTS, target.ctx.build("decoder", {"name": "sparse-to-dense", "top_k": 128}), max_new_tokens=40)
    assert wide.metrics.mean_acceptance_length == 4  # K covers every key: the draft is the dense model
    assert narrow.metrics.mean_acceptance_length < wide.metrics.mean_acceptance_length


def test_conformance_and_config_errors(target):
    check_decoder(target, {"name": "sparse-to-dense", "gamma": 2})
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="top_k"):
        target.ctx.build("decoder", {"name": "sparse-to-dense", "top_k": 0})
    with pytest.raises(ConfigError, match="gamma"):
        target.ctx.build("decoder", {"name": "sparse-to-dense", "gamma": 0})
