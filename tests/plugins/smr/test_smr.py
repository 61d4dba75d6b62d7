"""SMR: with its learnable input memory the SSM stays one causal convolution (FFT form ==
direct convolution == token-by-token recurrence), zero memory is the base SSM exactly, and a
memory that reads the future breaks the equivalence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.plugins.smr import SMRConfig
from genloom.testing import check_backbone

from recurrent_helpers import build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "smr.yaml"
NODE = {"name": "smr", "d_model": 16, "n_layers": 2, "state_size": 4, "memory_steps": 3}
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.state_size=4", "backbone.memory_steps=3"]


def build(memory_scale=0.5, **overrides):
    model = build_double(NODE, **overrides)
    with torch.no_grad():  # a trained-looking, non-zero memory (the initial one is zero)
        gen = torch.Generator().manual_seed(3)
        for block in model.layers:
            block.smr.memory.copy_(torch.randn(block.smr.memory.shape, generator=gen, dtype=torch.float64) * memory_scale)
    return model


def test_ssm_with_smr_is_still_a_convolution_fft_direct_and_recurrent_agree():
    model = build()
    h = inputs(length=19)
    with torch.no_grad():
        with kernels.use("fft_conv", "fft"):
            fft = model(h)
        with kernels.use("fft_conv", "reference"):
            direct = model(h)
        state = model.init_state(2)
        steps = torch.cat([model(h[:, t : t + 1], state=state) for t in range(19)], 1)
    assert err(fft, direct) < 1e-10 and err(steps, fft) < 1e-10
    assert model.layers[0].smr.memory.abs().max() > 0.1  # the memory is really on


def test_zero_memory_is_the_base_ssm_exactly():
    with_smr = build(memory_scale=0.0)
    base = build(memory_scale=0.0, memory_steps=0)
    state = {k: v for k, v in with_smr.state_dict().items() if ".smr." not in k}
    missing, _ = base.load_state_dict(state, strict=False)
    assert all(name.endswith(".smr.memory") for name in missing)  # the base model's memory is empty (0, D)
    h = inputs()
    with torch.no_grad():
        assert torch.equal(with_smr(h), base(h))
        assert err(build()(h), base(h)) > 1e-3  # a non-zero memory does change the layer


def test_a_memory_reading_the_future_breaks_the_equivalence(monkeypatch):
    """Broken variant: replaying u_{t+j} instead of u_{t-j} is no longer causal, so the
    convolution (full) form and token-by-token decoding disagree."""
    from genloom.plugins.smr.model import StateMemoryReplay

    def future_replay(self, u, window=None):
        shifted = torch.nn.functional.pad(u[:, 1:], (0, 0, 0, 1))
        return u + self.memory[0].to(u.dtype) * shifted

    model = build()
    h = inputs(length=12)
    monkeypatch.setattr(StateMemoryReplay, "forward", future_replay)
    with torch.no_grad():
        full = model(h)
        state = model.init_state(2)
        steps = torch.cat([model(h[:, t : t + 1], state=state) for t in range(12)], 1)
    assert err(steps, full) > 1e-3


def test_backbone_contract_with_a_nonzero_memory():
    """The kit's check (which builds the zero-initialised memory), then the same contract by hand
    with a non-zero memory: uneven chunks, per-row rollback, snapshot/restore."""
    check_backbone(NODE, length=11, chunks=(1, 3, 2, 5), tol=1e-10)
    model = build()
    h = inputs(batch=3, length=11)
    with torch.no_grad():
        full = model(h)
        state = model.init_state(3)
        bounds = [0, 1, 4, 6, 11]
        parts = torch.cat([model(h[:, a:b], state=state) for a, b in zip(bounds, bounds[1:])], 1)
        assert err(parts, full) < 1e-10
        state = model.init_state(3)
        model(h[:, :5], state=state)
        snap = state.snapshot()
        model(h[:, 5:9], state=state)
        state.rollback(torch.tensor([5, 7, 9]))
        following = model(h[:, 9:10], state=state)
        for b, kept in enumerate([0, 2, 4]):
            seq = torch.cat([h[b : b + 1, : 5 + kept], h[b : b + 1, 9:10]], 1)
            assert err(following[b, 0], model(seq)[0, -1]) < 1e-10
        state.restore(snap)
        assert err(model(h[:, 5:], state=state), full[:, 5:]) < 1e-10


def test_padding_and_holes_are_exact():
    model = build()
    h = inputs(batch=3, length=12)
    with torch.no_grad():
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[1, :3] = False
        valid[2, 6] = False
        out = model(h, valid=valid)
        assert err(out[1, 3:], model(h[1:2, 3:])[0]) < 1e-10
        assert err(torch.cat([out[2, :6], out[2, 7:]]), model(torch.cat([h[2:3, :6], h[2:3, 7:]], 1))[0]) < 1e-10
        assert err(model(h, valid=valid, state=model.init_state(3))[valid], out[valid]) < 1e-10


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="memory_steps"):
        SMRConfig(memory_steps=-1)
    with pytest.raises(ValueError, match="dt_min"):
        SMRConfig(dt_min=1.0, dt_max=0.1)


def test_shipped_config_trains_and_decoders_run_on_the_state():
    def nonzero_memory(built):
        with torch.no_grad():
            for block in built.model.backbone.layers:
                block.smr.memory.normal_(0, 0.5)

    trains_and_decodes_on_state(CONFIG, SMALL, prepare=nonzero_memory)
