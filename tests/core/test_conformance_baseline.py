"""The baseline components pass the conformance kit."""

import torch

from genloom.testing import check_backbone, check_decoder, check_head, check_kernel, check_objective, check_tokenizer, tiny_model

TINY = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "objective": {"name": "next-token"},
}


def test_bytes_tokenizer_round_trips_any_bytes():
    samples = [bytes(range(256)), b"", "héllo wörld ✓".encode(), b"\xff\xfe\x00"]
    tok = check_tokenizer({"name": "bytes"}, samples, lossless=False)
    for s in samples:
        assert tok.decode_bytes(tok.encode(s)) == s


def test_transformer_backbone_contract():
    check_backbone({"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2})


def test_transformer_without_rope_contract():
    check_backbone({"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "rope": False})


def test_lm_head_contract():
    check_head({"name": "lm"})
    check_head({"name": "lm", "tie_weights": False})


def test_next_token_objective_contract():
    built = tiny_model(base=TINY)
    out = check_objective(built, {"ids": torch.randint(0, 256, (2, 9)), "target_bytes": torch.tensor([8.0, 8.0])})
    assert abs(float(out["bits_per_byte"]) - float(out["loss"].detach()) / 0.6931471805599453) < 1e-4


def test_decoders_contract():
    built = tiny_model(base=TINY)
    for node in ("sampling", "greedy", {"name": "beam", "num_beams": 3}):
        check_decoder(built, node)


def test_attention_backends_agree_with_reference():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k = torch.randn(2, 2, 7, 8)
    v = torch.randn(2, 2, 7, 8)
    check_kernel("attention", "sdpa", q, k, v)
    check_kernel("attention", "flex", q, k, v, grad=False)  # FlexAttention has no backward on CPU
