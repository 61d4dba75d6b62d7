"""FutureFill: generation through the future buffer equals naive convolutional generation token
for token, with sub-quadratic convolution work; the state contract; decoding; config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.kernels.fft_conv import ConvStream
from genloom.plugins.futurefill import FutureFillConfig
from genloom.testing import check_backbone

from recurrent_helpers import build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "futurefill.yaml"
NODE = {"name": "futurefill", "d_model": 16, "n_layers": 2, "filter_length": 64, "block_size": 4}
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.filter_length=64", "backbone.block_size=3"]


def build(**overrides):
    return build_double(NODE, **overrides)


def decode(model, h):
    state = model.init_state(h.shape[0])
    with torch.no_grad():
        return torch.cat([model(h[:, t : t + 1], state=state) for t in range(h.shape[1])], 1), state


def test_futurefill_generation_equals_naive_generation():
    """Token by token, the FutureFill state and the naive direct-sum state give the same outputs
    as each other and as the full FFT forward (float64), and the same greedy tokens."""
    futurefill = build()
    naive = build(decoding="naive")
    naive.load_state_dict(futurefill.state_dict())
    h = inputs(length=30)
    fast, fast_state = decode(futurefill, h)
    slow, slow_state = decode(naive, h)
    with torch.no_grad():
        full = futurefill(h)
    assert err(fast, slow) < 1e-10 and err(fast, full) < 1e-10
    assert fast_state.streams[0][0].flushed == 28  # seven flushes of 4-token blocks happened
    assert slow_state.streams[0][0].flushed == 0


def test_a_flush_off_by_one_step_breaks_generation(monkeypatch):
    """Broken variant: folding a finished block's contributions one step too late."""
    futurefill, naive = build(), build(decoding="naive")
    naive.load_state_dict(futurefill.state_dict())
    h = inputs(length=20)
    reference, _ = decode(naive, h)
    real_flush = ConvStream._flush

    def late_flush(self):
        real_flush(self)
        self.future = torch.nn.functional.pad(self.future, (0, 0, 1, 0))[:, : self.future.shape[1]]

    monkeypatch.setattr(ConvStream, "_flush", late_flush)
    broken, _ = decode(futurefill, h)
    assert err(broken, reference) > 1e-3


def test_convolution_work_is_sub_quadratic():
    """Multiply-adds of token-by-token generation: naive grows 4x per doubling of L (quadratic);
    FutureFill with blocks of ~sqrt(2 L log2 L) grows about 2.8x (L^1.5), and its share of the
    naive work falls as L grows (0.70, 0.51, 0.34 at L = 512, 1024, 2048)."""
    def work(length, naive):
        k = torch.randn(2, length, dtype=torch.float64)
        block = 1 << 40 if naive else max(1, int(math.sqrt(2 * length * math.log2(length))))
        stream = ConvStream(k, 1, block=block)
        for t in range(length):
            stream.feed(torch.zeros(1, 1, 2, dtype=torch.float64))
        return stream.work

    naive = [work(L, True) for L in (512, 1024, 2048)]
    fast = [work(L, False) for L in (512, 1024, 2048)]
    assert all(3.9 < b / a < 4.1 for a, b in zip(naive, naive[1:]))
    assert all(b / a < 3.3 for a, b in zip(fast, fast[1:])), fast
    shares = [f / n for f, n in zip(fast, naive)]
    assert shares[0] > shares[1] > shares[2] and shares[2] < 0.4, shares


@pytest.mark.parametrize("decoding", ["futurefill", "naive"])
def test_backbone_contract(decoding):
    check_backbone({**NODE, "block_size": 3, "decoding": decoding}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_padding_per_row_rollback_and_reorder():
    model = build(block_size=3)
    h, alt = inputs(batch=3, length=12), inputs(batch=3, length=12, seed=5)
    with torch.no_grad():
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[1, :3] = False
        valid[2, 6] = False
        out = model(h, valid=valid)
        assert err(out[1, 3:], model(h[1:2, 3:])[0]) < 1e-10
        assert err(torch.cat([out[2, :6], out[2, 7:]]), model(torch.cat([h[2:3, :6], h[2:3, 7:]], 1))[0]) < 1e-10
        stateful = model(h, valid=valid, state=model.init_state(3))
        assert err(stateful[valid], out[valid]) < 1e-10
        state = model.init_state(3)
        model(h[:, :6], state=state)
        model(alt[:, 6:11], state=state)  # crosses flushes
        state.rollback(torch.tensor([6, 8, 11]))
        state.reorder(torch.tensor([2, 1, 0]))
        following = model(h[[2, 1, 0], 11:12], state=state)
        for row, (b, kept) in enumerate([(2, 5), (1, 2), (0, 0)]):
            seq = torch.cat([h[b : b + 1, :6], alt[b : b + 1, 6 : 6 + kept], h[b : b + 1, 11:12]], 1)
            assert err(following[row, 0], model(seq)[0, -1]) < 1e-10


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="decoding must be one of"):
        FutureFillConfig(decoding="fast")
    with pytest.raises(ValueError, match="block_size"):
        FutureFillConfig(block_size=0)


def test_shipped_config_trains_and_decoders_run_on_the_state():
    trains_and_decodes_on_state(CONFIG, SMALL)
    assert kernels.implementation("fft_conv_stream", "futurefill") is not None
