"""MaM on 8-bit Ising data: normalisation, self-consistency and fit of the learnt marginals.

The recipe of configs/mam.yaml: 2-layer d_model=32 transformer, 600 AdamW steps of 256 vectors at a
one-cycle learning rate of 3e-3, seed 0, one thread. Prints the total mass of the 256 full-state
marginals, the mean and max |log p(x_S) - logsumexp_{x_i} log p(x_S, x_i)| over 256 random (S, i),
KL(true law || learnt full-state law) and the forward passes one marginal costs.

    python benchmarks/mam_bits.py [steps]
"""

from __future__ import annotations

import sys

import torch

from genloom.plugins.mam.data import all_states
from genloom.plugins.mam.head import marginal_log_prob
from genloom.testing import tiny_model

D = 8


def main(steps: int = 600):
    base = {"data": {"name": "ising-bits", "bits": D, "batch_size": 256}, "tokenizer": {"name": "ids", "vocab_size": 2}, "head": {"name": "mam"},
            "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2}, "objective": {"name": "mam"}}
    b = tiny_model(base=base, data=True, seed=0)
    m = b.model
    loader = torch.utils.data.DataLoader(b.data.load("train", m.tokenizer, b.ctx), batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    torch.manual_seed(0)
    step = 0
    while step < steps:
        for batch in loader:
            loss = m.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
    m.eval()
    xs = all_states(D)
    calls = []
    handle = m.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        full = marginal_log_prob(m, xs, torch.ones_like(xs, dtype=torch.bool)).double()
        passes = len(calls)
        handle.remove()
        true = b.data.log_probs()
        g = torch.Generator().manual_seed(1)
        observed = torch.rand(len(xs), D, generator=g) < 0.5
        i = torch.randint(0, D, (len(xs),), generator=g)
        observed.scatter_(1, i[:, None], False)
        joint = [marginal_log_prob(m, xs.scatter(1, i[:, None], v), observed.scatter(1, i[:, None], True)) for v in (0, 1)]
        residual = (marginal_log_prob(m, xs, observed) - torch.stack(joint).logsumexp(0)).abs()
    print(f"mass over 256 states: {float(full.exp().sum()):.3f}")
    print(f"self-consistency |residual|: mean {float(residual.mean()):.3f}, max {float(residual.max()):.3f}")
    print(f"KL(true || learnt): {float((true.exp() * (true - full)).sum()):.4f} nats")
    print(f"forward passes for the 256 full-state marginals (one batch): {passes} (an any-order ARM: {D}, one per factor)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
