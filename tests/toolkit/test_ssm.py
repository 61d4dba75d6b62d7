"""genloom.toolkit.ssm.DiagonalSSM: its kernel is the recurrence's impulse response, and the
convolution and recurrence forms agree (also through replay after a partial keep)."""

from __future__ import annotations

import torch

from genloom.toolkit.ssm import DiagonalSSM


def test_convolution_recurrence_and_replay_agree():
    torch.manual_seed(0)
    ssm = DiagonalSSM(3, 4, 0.01, 0.1).double()
    u = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        conv = ssm.convolve(u)
        recur, final, record = ssm.recur(u, None, None)
        assert (conv - recur).abs().max() < 1e-10
        impulse = torch.zeros(1, 6, 3, dtype=torch.float64)
        impulse[:, 0] = 1
        kernel = ssm.kernel(6, torch.float64)
        kernel[:, 0] += ssm.skip
        assert (ssm.recur(impulse, None, None)[0][0].T - kernel).abs().max() < 1e-12
        keep = torch.arange(9)[None, :].expand(2, 9) < torch.tensor([[4], [9]])
        replayed = ssm.replay(ssm.init_state(2, dtype=torch.float64), record, keep)
        assert (replayed[1] - final[1]).abs().max() < 1e-12
        assert (replayed[0] - ssm.recur(u[:1, :4], None, None)[1][0]).abs().max() < 1e-12
