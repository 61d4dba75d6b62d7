"""The conformance kit on this plugin's components."""

from genloom.testing import check_backbone, check_decoder, tiny_model


def test_backbone_contract():
    check_backbone({"name": "example-conv", "d_model": 16})


def test_decoder_contract():
    built = tiny_model(base={
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm"},
        "backbone": {"name": "example-conv", "d_model": 16},
        "objective": {"name": "next-token"},
    })
    check_decoder(built, {"name": "example-topk", "k": 3})
