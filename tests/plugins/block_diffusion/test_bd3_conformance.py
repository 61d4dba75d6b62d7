"""The conformance kit on the block-diffusion components (objective, decoder, the runnable config, the pattern's kernels)."""

from __future__ import annotations

import os

import pytest
import torch

from genloom.plugins.block_diffusion.pattern import BlockDiffusionPattern
from genloom.testing import check_decoder, check_kernel, check_model_config, check_objective, tiny_model

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BASE = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "block-diffusion", "block_size": 4},
    "decoder": {"name": "block-diffusion"},
}


def test_objective_conformance():
    torch.manual_seed(0)
    built = tiny_model(base=BASE)
    out = check_objective(built, {"ids": torch.randint(0, 256, (2, 12))})
    assert {"masked_ce", "mask_rate", "_nats", "_tokens"} <= set(out)


@pytest.mark.parametrize("node", [{"name": "block-diffusion"}, {"name": "block-diffusion", "steps": 2, "cache": False}])
def test_decoder_conformance(node):
    torch.manual_seed(0)
    built = tiny_model(base=BASE)
    result = check_decoder(built, node, max_new_tokens=7)
    assert all(len(seq) == 7 for seq in result.ids)


def test_runnable_config_conformance():
    torch.manual_seed(0)
    overrides = ["backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2", "data.seq_len=16"]
    check_model_config(os.path.join(ROOT, "configs", "block-diffusion.yaml"), overrides, batch={"ids": torch.randint(0, 256, (2, 17)), "mask": torch.ones(2, 16, dtype=torch.bool)})


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_kernel_conformance_on_the_pattern():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    pattern = BlockDiffusionPattern(seq_len=8, block_size=2)
    # FlexAttention has no backward on CPU (torch 2.13): values only here, gradients in the gpu test
    check_kernel("attention", "flex", q, k, v, pattern=pattern, grad=False)
    check_kernel("attention", "sdpa", q, k, v, pattern=pattern)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_kernel_gradients_on_gpu():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 256, 16, device="cuda") for _ in range(3))
    check_kernel("attention", "flex", q, k, v, pattern=BlockDiffusionPattern(seq_len=128, block_size=4), atol=1e-4)
