"""The conformance kit on the mamba backbone, its config and the selective_scan backends."""

from __future__ import annotations

from pathlib import Path

import torch

from genloom.testing import check_backbone, check_decoder, check_kernel, check_model_config, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "mamba.yaml"
SMALL = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.d_state=4"]


def test_backbone_contract():
    check_backbone({"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4}, length=11, chunks=(1, 3, 2, 5))


def test_backbone_contract_with_wider_conv_and_explicit_dt_rank():
    check_backbone({"name": "mamba", "d_model": 8, "n_layers": 1, "d_state": 3, "d_conv": 2, "expand": 1, "dt_rank": 3}, length=7, chunks=(2, 4))


def test_chunked_backend_agrees_with_reference():
    torch.manual_seed(0)
    b, l, d, n = 2, 9, 6, 4
    args = (torch.randn(b, l, d), torch.randn(b, l, d) * 0.5, -torch.rand(d, n) * 4, torch.randn(b, l, n), torch.randn(b, l, n))
    check_kernel("selective_scan", "chunked", *args, D=torch.randn(d), z=torch.randn(b, l, d), delta_bias=torch.randn(d), delta_softplus=True, initial_state=torch.randn(b, d, n))


def test_shipped_config_trains_and_decodes():
    torch.manual_seed(0)
    built = check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    assert type(built.model.backbone).__name__ == "Mamba"
    built = tiny_model(CONFIG, SMALL)
    check_decoder(built, {"name": "sampling"}, max_new_tokens=5)
