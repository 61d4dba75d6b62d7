"""A tiny byte model and synthetic text for the blockwise-parallel tests (trains in seconds on a CPU)."""

from __future__ import annotations

import torch

from genloom.core import config as config_mod
from genloom.core.model import assemble

CYCLE = b"abcdefghijklmnopqrstuvwxyz0123456789"  # distinct bytes: the next byte follows from the last
SENTENCES = [
    b"the quick brown fox jumps over the lazy dog. ",
    b"pack my box with five dozen liquor jugs! ",
    b"how vexingly quick daft zebras jump; ",
    b"sphinx of black quartz, judge my vow? ",
]


def periodic(repeats: int = 60) -> torch.Tensor:
    return torch.tensor(list(CYCLE * repeats), dtype=torch.long)


def sentences(repeats: int = 40, seed: int = 0) -> torch.Tensor:
    """The sentences in a random order: the next byte depends on the context."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(len(SENTENCES), (repeats,), generator=g).tolist()
    return torch.tensor(list(b"".join(SENTENCES[i] for i in order)), dtype=torch.long)


def batches(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    while True:
        start = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
        yield {"ids": torch.stack([data[s : s + seq_len + 1] for s in start.tolist()])}


def model_config(d_model: int = 32, n_layers: int = 2, block_size: int = 4, freeze_base: bool = True) -> dict:
    return {
        "tokenizer": {"name": "bytes"},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 4},
        "head": {"name": "blockwise-parallel", "block_size": block_size},
        "objective": {"name": "blockwise-parallel", "freeze_base": freeze_base},
        "decoder": {"name": "blockwise-parallel"},
    }


def build(cfg: dict | None = None):
    validated = config_mod.validate(config_mod.compose(base=cfg or model_config()))
    return assemble(validated, data=False)


def train(model, data, steps: int, loss_fn, *, params=None, lr: float = 1e-2, batch_size: int = 16, seq_len: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    it = batches(data, batch_size, seq_len, g)
    model.train()
    out = {}
    for _ in range(steps):
        out = loss_fn(model, next(it))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return {k: float(v.detach()) for k, v in out.items()}


def next_token_loss(model, batch):
    ids = batch["ids"]
    logits = model(ids[:, :-1])
    return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())}
