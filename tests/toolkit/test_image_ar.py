"""The raster-order image AR setting (genloom.toolkit.image_ar): tokenizer ``raster-vq``, objective ``raster-next-token``."""

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.core.generation import run
from genloom.testing import tiny_model

QUANTIZER = {"name": "var-vq", "scales": [4], "codebook_size": 16, "latent_channels": 4, "hidden_channels": 8, "fit_steps": 5}
CONFIG = {
    "data": {"name": "digits", "image_size": 8, "batch_size": 8},
    "tokenizer": {"name": "raster-vq", "quantizer": QUANTIZER},
    "head": {"name": "lm", "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "raster-next-token"},
}


@pytest.fixture(scope="module")
def built():
    return tiny_model(base=CONFIG, data=True, seed=0)


def test_vocabulary_is_codebook_then_class_tokens(built):
    tok = built.model.tokenizer
    assert tok.codebook_size == 16 and tok.num_classes == 10 and tok.vocab_size == built.ctx.vocab_size == 26
    assert tok.class_token(3) == 19 and built.ctx.seq_len == 17
    with pytest.raises(ValueError, match="class label"):
        tok.class_token(10)
    latents = tok.token_latents()
    assert latents.shape == (26, 4)
    assert torch.equal(latents[:16], tok.quantizer.codebook.weight) and bool(torch.isnan(latents[16:]).all())


def test_raster_order_ids_decode_to_the_quantizer_reconstruction(built):
    tok = built.model.tokenizer
    images = built.data.load("val").images[:3]
    ids = tok.encode_images(images)
    assert ids.shape == (3, 16) and int(ids.max()) < 16
    # raster order: the ids are the quantizer's one 4x4 map read row by row
    assert torch.equal(ids, tok.quantizer.encode(images)[0])
    assert tok.encode(images[0]) == ids[0].tolist()
    image = tok.decode([tok.class_token(2)] + ids[0].tolist())  # a generated sequence keeps its class token
    assert torch.allclose(image, tok.decode_batch(ids[:1])[0])
    assert image.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="16 code ids"):
        tok.decode(ids[0, :5].tolist())


def test_objective_scores_the_image_tokens_after_the_class_token(built):
    data = built.data.load("train")
    batch = {"image": data.images[:4], "label": data.labels[:4]}
    seq = built.model.objective.sequences(built.model, batch)
    assert seq.shape == (4, 17) and seq[:, 0].tolist() == (16 + data.labels[:4]).tolist()
    out = built.model.loss(batch)
    assert torch.isfinite(out["loss"]) and out["_tokens"] == 4 * 16
    out["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in built.model.head.parameters())
    # the loss is the mean NLL of each image token given the class token and the earlier tokens
    with torch.no_grad():
        logits = built.model(seq[:, :-1])
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
    assert torch.allclose(out["loss"].detach(), nll, atol=1e-5)


def test_class_conditional_generation_decodes_to_images(built):
    tok = built.model.tokenizer
    model = built.model.eval()
    out = run(model, [[tok.class_token(c)] for c in range(3)], built.ctx.build("decoder", "sampling"), max_new_tokens=16, seed=0)
    assert all(len(ids) == 16 for ids in out.ids)
    codes = [[min(i, 15) for i in ids] for ids in out.ids]  # an untrained head may emit class tokens
    assert tok.decode(codes[0]).shape == (1, 8, 8)


def test_save_load_and_quantizer_from(built, tmp_path):
    tok = built.model.tokenizer
    tok.save(tmp_path / "tokenizer")
    other = tiny_model(base={**CONFIG, "tokenizer": {"name": "raster-vq", "quantizer": QUANTIZER, "quantizer_from": str(tmp_path)}}, seed=5)
    assert other.model.tokenizer.num_classes == 10 and other.ctx.vocab_size == 26
    assert torch.equal(other.model.tokenizer.quantizer.codebook.weight, tok.quantizer.codebook.weight)
    images = built.data.load("val").images[:4]
    assert torch.equal(other.model.tokenizer.encode_images(images), tok.encode_images(images))
    with pytest.raises(ConfigError, match="quantizer_from"):
        tiny_model(base={**CONFIG, "tokenizer": {"name": "raster-vq", "quantizer": QUANTIZER, "quantizer_from": str(tmp_path / "nowhere")}})


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="quantizer.scales"):
        tiny_model(base={**CONFIG, "tokenizer": {"name": "raster-vq", "quantizer": {**QUANTIZER, "scales": [2, 4]}}})
    with pytest.raises(ConfigError, match="quantizer"):
        tiny_model(base={**CONFIG, "tokenizer": {"name": "raster-vq", "quantizer": {"scales": [4]}}})


def test_generate_samples_writes_a_class_grid(built, tmp_path):
    from genloom.core.generation import Generator

    gen = Generator(built)
    path = built.model.tokenizer.generate_samples(gen, n=2, out=tmp_path / "grid.png")
    from matplotlib import image as mpimg

    picture = mpimg.imread(str(path))
    assert picture.shape[:2] == (2 * 9 + 1, 10 * 9 + 1)
