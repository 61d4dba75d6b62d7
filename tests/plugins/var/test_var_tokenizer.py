"""The var-vq tokenizer: multi-scale residual quantization (VAR Algorithm 1) and its reconstruction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.plugins.var import VarVQConfig
from genloom.plugins.var.tokenizer import MultiScaleVQ
from genloom.testing import build, check_tokenizer

SCALES = (1, 2, 3, 4)


def make(seed: int = 0, **fields) -> MultiScaleVQ:
    torch.manual_seed(seed)
    config = VarVQConfig(**{"codebook_size": 32, "latent_channels": 8, "hidden_channels": 8, **fields})
    tok = MultiScaleVQ(config, (1, 8, 8))
    with torch.no_grad():  # spread the codebook so that many codes are in use before any training
        tok.codebook.weight.normal_()
    return tok.eval()


def test_fhat_fed_to_the_decoder_is_the_sum_of_the_scale_contributions():
    tok = make()
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    seen = []
    tok.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        _, ids, _ = tok(images)
        contributions = [tok.scale_contribution(k, ids[k]) for k in range(len(SCALES))]
    (f_hat,) = seen
    assert [i.shape for i in ids] == [(5, s * s) for s in SCALES]
    # phi_k(up(z_k)) summed over the scales, coarse to fine, is exactly what the decoder receives
    total = contributions[0]
    for c in contributions[1:]:
        total = total + c
    assert torch.equal(f_hat, total)
    torch.testing.assert_close(f_hat, torch.stack(contributions).sum(0), atol=1e-6, rtol=0)
    # ...and decode_ids rebuilds the same f_hat from the ids alone
    assert torch.equal(tok.ids_to_fhat(ids), f_hat)
    # every scale contributes (the property is not satisfied by a single dominant term)
    assert all(c.abs().max() > 1e-3 for c in contributions)


def test_each_scale_quantizes_the_residual_left_by_the_coarser_scales():
    tok = make(1)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        f = tok.encoder(images)
        ids = tok.encode(images)
        residual = f.clone()
        for k, side in enumerate(SCALES):
            down = F.interpolate(residual, size=(side, side), mode="area") if side != 4 else residual
            vectors = down.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            nearest = torch.cdist(vectors, tok.codebook.weight).argmin(1).view(4, side * side)
            assert torch.equal(ids[k], nearest), f"scale {k + 1} did not take the nearest codes of its residual"
            z = tok.codebook.weight[nearest].view(4, side, side, -1).permute(0, 3, 1, 2)
            up = F.interpolate(z, size=(4, 4), mode="bicubic", align_corners=False) if side != 4 else z
            residual = residual - tok.phi[k](up)
        # what is left is f - f_hat
        torch.testing.assert_close(residual, f - tok.ids_to_fhat(ids), atol=1e-5, rtol=0)


def test_flat_encode_decode_layout_and_partial_scales():
    tok = make()
    image = torch.rand(1, 8, 8) * 2 - 1
    flat = tok.encode(image)
    assert len(flat) == 30 and all(0 <= i < 32 for i in flat)
    assert flat == torch.cat(tok.encode(image[None]), 1)[0].tolist()
    assert tok.decode(flat).shape == (1, 8, 8)
    # a sequence cut inside scale 3 decodes from the complete scales 1 and 2
    parts = tok.split_scales(torch.tensor([flat[:9]]))
    assert [p.shape[1] for p in parts] == [1, 4]
    torch.testing.assert_close(tok.decode(flat[:9]), tok.decode_ids(parts)[0])


def test_teacher_forcing_inputs_are_the_resized_fhat_of_coarser_scales():
    tok = make(2)
    ids = [torch.randint(32, (3, s * s)) for s in SCALES]
    with torch.no_grad():
        features = tok.embed_scales(ids)
        assert features.shape == (3, 4 + 9 + 16, 8)
        offset = 0
        for k in range(1, len(SCALES)):
            f_hat = tok.ids_to_fhat(ids[:k])
            side = SCALES[k]
            expect = (F.interpolate(f_hat, size=(side, side), mode="area") if side != 4 else f_hat).flatten(2).transpose(1, 2)
            torch.testing.assert_close(features[:, offset:offset + side * side], expect, atol=1e-6, rtol=0)
            offset += side * side


def test_save_and_load_rebuild_the_tokenizer_without_the_data(tmp_path):
    tok = make(3)
    tok.fitted.fill_(True)
    tok.save(tmp_path)
    again = MultiScaleVQ(tok.config)  # as a run directory rebuilds it: no image shape known
    assert again.image_shape is None
    again.load(tmp_path)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    assert [torch.equal(a, b) for a, b in zip(tok.encode(images), again.encode(images))] == [True] * 4
    assert bool(again.fitted) and again.fit(None) == []  # a fitted tokenizer never refits


def test_conformance_kit_tokenizer():
    images = [torch.rand(1, 8, 8) * 2 - 1 for _ in range(3)]
    tok = check_tokenizer({"name": "var-vq", "image_shape": [1, 8, 8], "codebook_size": 16}, images, lossless=False)
    assert tok.vocab_size == 16 and tok.seq_len == 30
    built, ctx = build("tokenizer", {"name": "var-vq", "scales": [1, 2, 4]}, {"channels": 3, "height": 16, "width": 16})
    assert built.image_shape == (3, 16, 16)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="scales"):
        VarVQConfig(scales=(1, 3, 2))
    with pytest.raises(ValueError, match="image_shape"):
        VarVQConfig(image_shape=(1, 12, 12))  # 12 / 4 = 3 is not a power of two
    with pytest.raises(ValueError, match="phi_ratio"):
        VarVQConfig(phi_ratio=1.5)


@pytest.fixture(scope="module")
def fitted():
    """A tokenizer fitted for 200 steps on the digits' training split (about 20 s on one busy core)."""
    from genloom.plugins.baseline.images import build_digits
    from genloom.plugins.baseline.images_config import DigitsConfig

    torch.manual_seed(0)
    data = build_digits(DigitsConfig(image_size=8))
    tok = MultiScaleVQ(VarVQConfig(fit_steps=200, fit_batch_size=32, hidden_channels=16, fit_lr=3e-3), (1, 8, 8))
    losses = tok.fit(data)
    return tok, data, losses


@pytest.mark.slow
def test_fit_trains_and_freezes(fitted):
    tok, _, losses = fitted
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, f"fit did not learn: loss {first:.3f} -> {last:.3f}"
    assert not any(p.requires_grad for p in tok.parameters()) and bool(tok.fitted)


@pytest.mark.slow
def test_reconstruction_error_falls_as_scales_are_added_on_held_out_digits(fitted):
    tok, data, _ = fitted
    images = data.load("test").images
    with torch.no_grad():
        ids = tok.encode(images)
        f = tok.encoder(images)
        pixel = [F.mse_loss(tok.decode_ids(ids[:k]), images).item() for k in range(1, 5)]
        latent = [F.mse_loss(tok.ids_to_fhat(ids[:k]), f).item() for k in range(1, 5)]
    print("held-out pixel MSE by scales used:", [round(e, 4) for e in pixel], "latent:", [round(e, 4) for e in latent])
    assert all(a > b for a, b in zip(pixel, pixel[1:])), pixel
    assert all(a > b for a, b in zip(latent, latent[1:])), latent
    # all four scales reconstruct better than the mean image does (per-pixel variance about 0.29)
    assert pixel[-1] < 0.8 * ((images - images.mean(0)) ** 2).mean().item()
