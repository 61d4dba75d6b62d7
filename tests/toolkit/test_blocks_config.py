"""The block-diffusion config bases: checks that name the field, binding publishes/takes block_size."""

from __future__ import annotations

import pytest

from genloom.toolkit.blocks_config import BlockDecoderConfig, BlockObjectiveConfig


class _Ctx(dict):
    def add_special_token(self, name):
        self.setdefault("special", []).append(name)

    def set(self, key, value):
        self[key] = value


def test_objective_binding_publishes_block_size_and_checks_fields():
    ctx = _Ctx()
    BlockObjectiveConfig(block_size=3).bind(ctx)
    assert ctx["block_size"] == 3 and ctx["special"] == ["mask"]
    with pytest.raises(ValueError, match="block_size"):
        BlockObjectiveConfig(block_size=0)
    with pytest.raises(ValueError, match="mask_rate_min"):
        BlockObjectiveConfig(mask_rate_min=0.8, mask_rate_max=0.2)


def test_decoder_takes_the_objective_block_size_and_checks_fields():
    cfg = BlockDecoderConfig()
    cfg.bind(_Ctx(block_size=5))
    assert cfg.block_size == 5
    from genloom.core.config import convert
    from genloom.core.constraints import Violation

    hints = __import__("typing").get_type_hints(BlockDecoderConfig, include_extras=True)
    for field, value in (("block_size", 0), ("threshold", 1.5), ("temperature", -1.0)):  # declared once, checked by the core
        with pytest.raises(Violation, match="out of range"):
            convert(value, hints[field], field)
        convert({"block_size": 3, "threshold": 0.5, "temperature": 0.0}[field], hints[field], field)
